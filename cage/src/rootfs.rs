//! Root filesystems: the host's system directories, or a rootfs tarball
//! (what `docker export` writes) unpacked once into a content-addressed
//! cache keyed by the tarball's SHA3-256.
//!
//! The cache is bounded: after an archive is unpacked, the least recently
//! used trees beyond [`CACHE_TREES_MAX`] or [`CACHE_BYTES_MAX`] are removed.
//! Each tree has a lease file beside it (`<digest>.lease`, holding the
//! tree's size) that a run holds a shared lock on while the tree may be
//! mounted, and whose modification time says when it was last used; a tree
//! is removed only under an exclusive lock, so never from under a run.
//!
//! Unpacking is defensive: entries are written with no-follow checks on
//! every path component (a symlink in the archive can never redirect a later
//! entry onto the host), `..` and absolute entry paths are refused, hard
//! links must point inside the root, device nodes and FIFOs are dropped,
//! and setuid, setgid and sticky bits are cleared. Symlink *targets* may be
//! absolute: inside the cage they resolve within the new root.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// Which root filesystem a run uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rootfs {
    /// A read-only view of the host's `/usr`, `/bin`, `/lib`, `/lib64`, `/sbin`.
    Host,
    /// A rootfs tarball.
    Tarball(PathBuf),
    /// An image as `docker save` writes it (a tar holding `manifest.json`
    /// and layer tars) or an OCI image layout in a tar (`index.json`,
    /// `blobs/sha256/...`, layers plain or gzipped).
    Image(PathBuf),
}

impl Rootfs {
    /// `host`, or the archive at `path` as an image (it holds a top-level
    /// `manifest.json`, `index.json` or `oci-layout`) or a rootfs tarball.
    pub fn detect(spec: &str) -> Result<Self, RootfsError> {
        if spec == "host" {
            return Ok(Rootfs::Host);
        }
        let path = PathBuf::from(spec);
        let file = File::open(&path).map_err(io(format!("open {}", path.display())))?;
        let mut archive = tar::Archive::new(BufReader::new(file));
        for entry in archive.entries().map_err(io("read the rootfs archive"))? {
            let entry = entry.map_err(io("read the rootfs archive"))?;
            let name = entry.path().map_err(io("read an entry path"))?.to_string_lossy().into_owned();
            if ["manifest.json", "index.json", "oci-layout"].contains(&name.trim_start_matches("./")) {
                return Ok(Rootfs::Image(path));
            }
        }
        Ok(Rootfs::Tarball(path))
    }
}

/// Host directories the `host` rootfs shows. Of `/etc` (host
/// configuration and identity: `hostname`, `machine-id`, users) only
/// Debian's `alternatives`: `/usr/bin/awk`, `which`, `java` and hundreds
/// more are links through it, dangling without it.
pub const HOST_ENTRIES: [&str; 6] = ["usr", "bin", "lib", "lib64", "sbin", "etc/alternatives"];
/// Top-level names the cage provides itself; a rootfs's own are hidden.
pub const RESERVED: [&str; 6] = ["in", "out", "tmp", "proc", "dev", ".old"];
/// Most entries a tarball may hold.
const ENTRIES_MAX: u64 = 1_000_000;
/// Most bytes a tarball may unpack to.
const UNPACKED_BYTES_MAX: u64 = 8 << 30;
/// Most unpacked trees the cache keeps (the one just unpacked and those in
/// use are kept even beyond it).
pub const CACHE_TREES_MAX: usize = 32;
/// Most bytes of unpacked trees the cache keeps, likewise.
pub const CACHE_BYTES_MAX: u64 = 16 << 30;

/// A root filesystem ready to mount: the directory whose top-level entries
/// become `/`, and which of them to show.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The directory.
    pub source: PathBuf,
    /// The top-level names shown.
    pub entries: Vec<String>,
    /// How the witness header names it.
    pub description: String,
    /// The shared lock that keeps an unpacked tree in the cache while a run
    /// may mount it (none for `host`).
    _lease: Option<std::sync::Arc<File>>,
}

/// Why a rootfs cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The archive holds something refused.
    #[error("rootfs archive refused: {0}")]
    Refused(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootfsError {
    let what = what.into();
    move |source| RootfsError::Io { what, source }
}

/// Prepare `rootfs`, unpacking into `cache` if needed.
pub fn prepare(rootfs: &Rootfs, cache: &Path) -> Result<Prepared, RootfsError> {
    match rootfs {
        Rootfs::Host => Ok(Prepared {
            source: PathBuf::from("/"),
            entries: HOST_ENTRIES.iter().map(|e| (*e).to_owned()).collect(),
            description: "host".into(),
            _lease: None,
        }),
        Rootfs::Tarball(path) | Rootfs::Image(path) => {
            let digest = crate::digests::digest(path, Some(cache)).map_err(io(format!("hash {}", path.display())))?;
            let hex = hex::encode(digest);
            let trees = cache.join("rootfs");
            std::fs::create_dir_all(&trees).map_err(io("create the rootfs cache"))?;
            let lease = lease(&trees, &hex)?;
            let dir = trees.join(&hex);
            if !dir.exists() {
                let partial = tempfile::Builder::new()
                    .prefix(".unpacking-")
                    .tempdir_in(&trees)
                    .map_err(io("create an unpack directory"))?;
                let unpacked = if matches!(rootfs, Rootfs::Image(_)) {
                    unpack_image(path, partial.path())
                } else {
                    File::open(path)
                        .map_err(io(format!("open {}", path.display())))
                        .and_then(|file| unpack(BufReader::new(file), partial.path()))
                };
                if let Err(error) = unpacked {
                    // Its lease is collected with whatever else is stale.
                    drop((partial, lease));
                    collect(&trees, "");
                    return Err(error);
                }
                let size = disk_usage(partial.path());
                // Another run may have unpacked the same digest meanwhile:
                // its copy is as good as ours.
                let unpacked = partial.keep();
                if std::fs::rename(&unpacked, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&unpacked);
                }
                // Through the lease held (the lock keeps it the one at its
                // path). Best effort: an unreadable size counts as none.
                let _ = lease
                    .set_len(0)
                    .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&lease, size.to_string().as_bytes(), 0));
                collect(&trees, &hex);
            }
            let mut entries = Vec::new();
            for entry in std::fs::read_dir(&dir).map_err(io("list the rootfs"))? {
                let name = entry.map_err(io("list the rootfs"))?.file_name().to_string_lossy().into_owned();
                if !RESERVED.contains(&name.as_str()) {
                    entries.push(name);
                }
            }
            entries.sort();
            let kind = if matches!(rootfs, Rootfs::Image(_)) { "image" } else { "tarball" };
            Ok(Prepared {
                source: dir,
                entries,
                description: format!("{kind} sha3-256:{hex}"),
                _lease: Some(std::sync::Arc::new(lease)),
            })
        }
    }
}

/// A shared lock on the lease of tree `hex`, taken before the tree is
/// looked at, and marked used now. The lease may be removed between its
/// open and the lock (its tree was being collected): then it is opened
/// again.
fn lease(trees: &Path, hex: &str) -> Result<File, RootfsError> {
    use std::os::unix::fs::MetadataExt;
    let path = trees.join(format!("{hex}.lease"));
    // A collection removes a lease only while holding its exclusive lock,
    // so a few rounds always suffice; the bound only keeps a broken cache
    // directory from spinning.
    for _ in 0..100 {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        file.lock_shared().map_err(io(format!("lock {}", path.display())))?;
        let held = file.metadata().map_err(io("inspect a lease"))?;
        let current = std::fs::metadata(&path);
        if current.is_ok_and(|current| current.ino() == held.ino() && current.dev() == held.dev()) {
            // Best effort: a lease that cannot be touched is only
            // collected sooner.
            let _ = file.set_modified(std::time::SystemTime::now());
            return Ok(file);
        }
    }
    Err(RootfsError::Io {
        what: format!("lock {}", path.display()),
        source: std::io::Error::other("the lease kept being removed"),
    })
}

/// Bytes the tree at `root` takes on disk (not following symlinks).
fn disk_usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(children) = std::fs::read_dir(&dir) else { continue };
        for child in children.flatten() {
            let Ok(meta) = child.metadata() else { continue };
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(child.path());
            }
        }
    }
    total
}

/// Remove the least recently used trees of the cache at `trees` beyond
/// its bounds, sparing `keep` and every tree a run holds a lease on; and
/// what crashed or failed runs left: leases without a tree, trees half
/// removed, unpacks abandoned a day ago. Best effort: what cannot be
/// removed now is tried after the next unpack.
fn collect(trees: &Path, keep: &str) {
    collect_within(trees, keep, CACHE_TREES_MAX, CACHE_BYTES_MAX);
}

fn collect_within(trees: &Path, keep: &str, trees_max: usize, bytes_max: u64) {
    struct Tree {
        hex: String,
        used: std::time::SystemTime,
        size: u64,
    }
    let is_digest = |name: &str| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let abandoned = std::time::SystemTime::now() - std::time::Duration::from_secs(24 * 3600);
    let Ok(listing) = std::fs::read_dir(trees) else { return };
    let mut cached = Vec::new();
    for entry in listing.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let modified = entry.metadata().and_then(|meta| meta.modified()).unwrap_or(std::time::UNIX_EPOCH);
        if name.starts_with(".evicting-") || (name.starts_with(".unpacking-") && modified < abandoned) {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if let Some(hex) = name.strip_suffix(".lease").filter(|hex| is_digest(hex) && *hex != keep) {
            if !trees.join(hex).exists() {
                evict(trees, hex);
            }
        } else if is_digest(&name) {
            // One open for both: a tree without a lease was never used.
            let (mut used, mut size) = (std::time::UNIX_EPOCH, 0);
            if let Ok(mut lease) = File::open(trees.join(format!("{name}.lease"))) {
                used = lease.metadata().and_then(|meta| meta.modified()).unwrap_or(used);
                let mut text = String::new();
                if lease.read_to_string(&mut text).is_ok() {
                    size = text.trim().parse().unwrap_or(0);
                }
            }
            cached.push(Tree { hex: name, used, size });
        }
    }
    cached.sort_by_key(|tree| tree.used);
    let mut count = cached.len();
    let mut bytes: u64 = cached.iter().map(|tree| tree.size).sum();
    for tree in cached {
        if count <= trees_max && bytes <= bytes_max {
            break;
        }
        if tree.hex != keep && evict(trees, &tree.hex) {
            count -= 1;
            bytes -= tree.size;
        }
    }
}

/// Remove tree `hex` and its lease unless a run holds the lease; whether
/// the tree is gone.
fn evict(trees: &Path, hex: &str) -> bool {
    let path = trees.join(format!("{hex}.lease"));
    let Ok(lease) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path) else {
        return false;
    };
    if lease.try_lock().is_err() {
        return false;
    }
    // Out of sight under the lock: a run that takes the lease after this
    // finds no tree and unpacks its own.
    let doomed = trees.join(format!(".evicting-{hex}-{}", std::process::id()));
    match std::fs::rename(trees.join(hex), &doomed) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return false,
    }
    let _ = std::fs::remove_file(&path);
    drop(lease);
    let _ = std::fs::remove_dir_all(&doomed);
    true
}

fn safe_relative(path: &Path) -> Result<PathBuf, RootfsError> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(RootfsError::Refused(format!("entry path {} leaves the root", path.display())))
            }
        }
    }
    Ok(clean)
}

/// Refuse if any existing ancestor of `relative` under `root` is a symlink
/// (so writing it cannot land outside the root).
fn check_no_symlink_parents(root: &Path, relative: &Path) -> Result<(), RootfsError> {
    let mut current = root.to_owned();
    let parents: Vec<_> = relative.parent().map(|p| p.components().collect()).unwrap_or_default();
    for component in parents {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(RootfsError::Refused(format!("entry {} goes through a symlink", relative.display())))
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(RootfsError::Refused(format!("entry {} goes through a file", relative.display())))
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&current).map_err(io("create a directory"))?,
        }
    }
    Ok(())
}

/// Whiteout markers of an image layer: `.wh.NAME` deletes NAME of the
/// layers below; `.wh..wh..opq` empties its directory of them.
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Layer files of an image, bottom first, read from `manifest.json`
/// (`docker save`) or `index.json` (an OCI layout).
fn image_layers(image: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let refused = |reason: String| RootfsError::Refused(reason);
    let read_json = |path: PathBuf| -> Result<serde_json::Value, RootfsError> {
        let text = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| refused(format!("{}: {e}", path.display())))
    };
    let blob = |digest: &str| -> Result<PathBuf, RootfsError> {
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| refused(format!("digest {digest:?} is not sha256")))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(refused(format!("digest {digest:?} is malformed")));
        }
        Ok(image.join("blobs/sha256").join(hex))
    };
    let layers: Vec<PathBuf> = if image.join("manifest.json").exists() {
        let manifest = read_json(image.join("manifest.json"))?;
        let layers = manifest
            .get(0)
            .and_then(|m| m.get("Layers"))
            .and_then(|l| l.as_array())
            .ok_or_else(|| refused("manifest.json lists no layers".into()))?;
        layers
            .iter()
            .map(|layer| {
                let path = layer.as_str().ok_or_else(|| refused("a layer path is not a string".into()))?;
                Ok(image.join(safe_relative(Path::new(path))?))
            })
            .collect::<Result<_, RootfsError>>()?
    } else {
        let index = read_json(image.join("index.json"))?;
        let manifest_digest = index
            .get("manifests")
            .and_then(|m| m.get(0))
            .and_then(|m| m.get("digest"))
            .and_then(|d| d.as_str())
            .ok_or_else(|| refused("index.json names no manifest".into()))?;
        let manifest = read_json(blob(manifest_digest)?)?;
        let layers = manifest
            .get("layers")
            .and_then(|l| l.as_array())
            .ok_or_else(|| refused("the image manifest lists no layers".into()))?;
        layers
            .iter()
            .map(|layer| blob(layer.get("digest").and_then(|d| d.as_str()).unwrap_or_default()))
            .collect::<Result<_, RootfsError>>()?
    };
    Ok(layers)
}

/// A layer's reader, gunzipped if it starts with the gzip magic.
fn layer_reader(path: &Path) -> Result<Box<dyn Read>, RootfsError> {
    let mut file = BufReader::new(File::open(path).map_err(io(format!("open layer {}", path.display())))?);
    let gzipped = std::io::BufRead::fill_buf(&mut file).map_err(io("read a layer"))?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzipped { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) })
}

/// Unpack an image: its tar into a scratch directory, then each layer in
/// order, applying whiteouts to the layers below.
fn unpack_image(image_tar: &Path, root: &Path) -> Result<(), RootfsError> {
    let scratch = tempfile::tempdir().map_err(io("create a scratch directory"))?;
    let file = File::open(image_tar).map_err(io(format!("open {}", image_tar.display())))?;
    let mut budget = Budget::default();
    unpack_entries(BufReader::new(file), scratch.path(), false, &mut budget)?;
    for layer in image_layers(scratch.path())? {
        // Whiteouts delete from the layers below, so apply them before
        // this layer's own entries land.
        let mut archive = tar::Archive::new(layer_reader(&layer)?);
        // Its own count: the unpack below counts these entries again.
        let mut whiteouts = Budget::default();
        for entry in archive.entries().map_err(io("read a layer"))? {
            let entry = entry.map_err(io("read a layer"))?;
            whiteouts.entry()?;
            let relative = safe_relative(&entry.path().map_err(io("read an entry path"))?)?;
            let Some(name) = relative.file_name().and_then(|n| n.to_str()) else { continue };
            let Some(hidden) = name.strip_prefix(WHITEOUT) else { continue };
            check_no_symlink_parents(root, &relative)?;
            let parent = root.join(relative.parent().unwrap_or(Path::new("")));
            if name == OPAQUE {
                if let Ok(children) = std::fs::read_dir(&parent) {
                    for child in children.flatten() {
                        remove_any(&child.path())?;
                    }
                }
            } else {
                remove_any(&parent.join(hidden))?;
            }
        }
        unpack_entries(layer_reader(&layer)?, root, true, &mut budget)?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<(), RootfsError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io("apply a whiteout")),
        Ok(_) => std::fs::remove_file(path).map_err(io("apply a whiteout")),
        Err(_) => Ok(()),
    }
}

/// What one rootfs may unpack to, across an image's tar and all its layers
/// (a budget per layer would let an image of many layers multiply it).
struct Budget {
    entries: u64,
    bytes: u64,
    bytes_max: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Self { entries: 0, bytes: 0, bytes_max: UNPACKED_BYTES_MAX }
    }
}

impl Budget {
    fn entry(&mut self) -> Result<(), RootfsError> {
        self.entries += 1;
        if self.entries > ENTRIES_MAX {
            return Err(RootfsError::Refused(format!("more than {ENTRIES_MAX} entries")));
        }
        Ok(())
    }

    /// `size` is the archive's word, so the sum saturates rather than
    /// trusts the tar reader to have bounded it.
    fn file(&mut self, size: u64) -> Result<(), RootfsError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.bytes_max {
            return Err(RootfsError::Refused(format!("unpacks to more than {} bytes", self.bytes_max)));
        }
        Ok(())
    }
}

/// Unpack a tar stream into `root` with the rules in the module docs.
pub fn unpack(reader: impl Read, root: &Path) -> Result<(), RootfsError> {
    unpack_entries(reader, root, false, &mut Budget::default())
}

fn unpack_entries(
    reader: impl Read,
    root: &Path,
    skip_whiteouts: bool,
    budget: &mut Budget,
) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(io("read the rootfs archive"))? {
        let mut entry = entry.map_err(io("read the rootfs archive"))?;
        budget.entry()?;
        let relative = safe_relative(&entry.path().map_err(io("read an entry path"))?)?;
        if relative.as_os_str().is_empty() {
            continue;
        }
        let is_whiteout = relative.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(WHITEOUT));
        if skip_whiteouts && is_whiteout {
            continue;
        }
        check_no_symlink_parents(root, &relative)?;
        let target = root.join(&relative);
        // Only permission bits survive: no setuid, setgid or sticky.
        let mode = entry.header().mode().map_err(io("read an entry mode"))? & 0o777;
        let kind = entry.header().entry_type();
        if std::fs::symlink_metadata(&target).is_ok_and(|meta| !meta.is_dir() || !kind.is_dir()) {
            // A later entry replaces an earlier one (as tar does), never
            // by following it.
            let _ = std::fs::remove_file(&target);
        }
        match kind {
            tar::EntryType::Directory => {
                if !target.exists() {
                    std::fs::create_dir(&target).map_err(io("create a directory"))?;
                }
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io("set a mode"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                // The size copied below: a PAX header's, where it has one.
                budget.file(entry.size())?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(io(format!("create {}", relative.display())))?;
                std::io::copy(&mut entry, &mut file).map_err(io("write a file"))?;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode)).map_err(io("set a mode"))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(io("read a symlink"))?
                    .ok_or_else(|| RootfsError::Refused(format!("symlink {} has no target", relative.display())))?;
                std::os::unix::fs::symlink(&link, &target).map_err(io("create a symlink"))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(io("read a hard link"))?
                    .ok_or_else(|| RootfsError::Refused(format!("hard link {} has no target", relative.display())))?;
                let source_relative = safe_relative(&link)?;
                check_no_symlink_parents(root, &source_relative)?;
                let source = root.join(&source_relative);
                if std::fs::symlink_metadata(&source).map_or(true, |meta| !meta.is_file()) {
                    return Err(RootfsError::Refused(format!(
                        "hard link {} points at {}, which is not a file in the root",
                        relative.display(),
                        link.display()
                    )));
                }
                std::fs::hard_link(&source, &target).map_err(io("create a hard link"))?;
            }
            // Device nodes and FIFOs are dropped: the cage provides /dev.
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {}
            // PAX and GNU metadata entries are consumed by the tar reader;
            // anything else is not a rootfs entry.
            other => return Err(RootfsError::Refused(format!("entry {} of type {other:?}", relative.display()))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header
    }

    #[test]
    fn the_cache_drops_least_recently_used_trees_but_never_one_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let trees = cache.join("rootfs");
        let tarballs: Vec<PathBuf> = (0..5)
            .map(|i| {
                let path = dir.path().join(format!("root-{i}.tar"));
                let name = format!("file-{i}");
                let body = vec![b'x'; 10_000];
                let bytes = archive(|b| {
                    b.append_data(&mut header(tar::EntryType::Regular, 0o644, body.len() as u64), &name, &body[..])
                        .unwrap()
                });
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect();
        let mut prepared: Vec<Prepared> =
            tarballs.iter().map(|path| prepare(&Rootfs::Tarball(path.clone()), &cache).unwrap()).collect();
        // Last used in the order made, a second apart.
        let epoch = std::time::SystemTime::now() - std::time::Duration::from_secs(100);
        for (i, tree) in prepared.iter().enumerate() {
            let lease = tree._lease.as_ref().unwrap();
            lease.set_modified(epoch + std::time::Duration::from_secs(i as u64)).unwrap();
        }
        let size = disk_usage(&prepared[0].source);
        assert!(size >= 10_000, "{size} bytes on disk");
        let held = prepared.remove(0);
        drop(prepared);
        std::fs::create_dir(trees.join(".evicting-abc-1")).unwrap();
        let orphan = trees.join(format!("{}.lease", "ab".repeat(32)));
        std::fs::write(&orphan, "0").unwrap();

        collect_within(&trees, "", 2, u64::MAX);
        let kept: Vec<bool> = (0..5).map(|i| trees.join(hex_of(&tarballs[i])).exists()).collect();
        assert_eq!(kept, [true, false, false, false, true], "the oldest is in use; the newest two stay");
        assert!(held.source.join("file-0").exists(), "a tree in use keeps its files");
        assert!(!trees.join(format!("{}.lease", hex_of(&tarballs[1]))).exists(), "an evicted tree's lease goes");
        assert!(!trees.join(".evicting-abc-1").exists() && !orphan.exists(), "leftovers are removed");

        drop(held);
        collect_within(&trees, "", 10, size);
        let kept: Vec<bool> = (0..5).map(|i| trees.join(hex_of(&tarballs[i])).exists()).collect();
        assert_eq!(kept, [false, false, false, false, true], "the byte budget keeps the newest");

        // An evicted tree is unpacked again when a run needs it.
        let again = prepare(&Rootfs::Tarball(tarballs[1].clone()), &cache).unwrap();
        assert!(again.source.join("file-1").exists());
    }

    fn hex_of(path: &Path) -> String {
        hex::encode(crate::witness::digest(&std::fs::read(path).unwrap()))
    }

    #[test]
    fn unpacks_safely() {
        use std::os::unix::fs::PermissionsExt;
        let bytes = archive(|b| {
            b.append_data(&mut header(tar::EntryType::Directory, 0o755, 0), "bin", &[][..]).unwrap();
            b.append_data(&mut header(tar::EntryType::Regular, 0o4755, 2), "bin/tool", &b"hi"[..]).unwrap();
            let mut link = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut link, "lib", "/usr/lib").unwrap();
            let mut dev = header(tar::EntryType::Char, 0o666, 0);
            b.append_data(&mut dev, "null", &[][..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        unpack(bytes.as_slice(), dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("bin/tool")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "setuid cleared");
        assert_eq!(std::fs::read_link(dir.path().join("lib")).unwrap(), Path::new("/usr/lib"));
        assert!(!dir.path().join("null").exists(), "device nodes dropped");
    }

    #[test]
    fn refuses_escapes() {
        // A symlink to the host's /tmp, then a file written through it.
        let host = tempfile::tempdir().unwrap();
        let through_link = archive(|b| {
            let mut link = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut link, "escape", host.path()).unwrap();
            let mut file = header(tar::EntryType::Regular, 0o644, 1);
            file.set_path("escape/pwned").unwrap();
            file.set_cksum();
            b.append(&file, &b"x"[..]).unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(unpack(through_link.as_slice(), dir.path()), Err(RootfsError::Refused(_))));
        assert!(!host.path().join("pwned").exists());
        // A path with `..`, written into the raw header (the builder refuses it).
        let mut raw = header(tar::EntryType::Regular, 0o644, 1);
        raw.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../pwned\0");
        raw.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&raw, &b"x"[..]).unwrap();
        let dotdot = builder.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(unpack(dotdot.as_slice(), dir.path()), Err(RootfsError::Refused(_))));
        // A hard link to a host file.
        let hard = archive(|b| {
            let mut link = header(tar::EntryType::Link, 0o644, 0);
            b.append_link(&mut link, "passwd", "../../etc/passwd").unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        assert!(unpack(hard.as_slice(), dir.path()).is_err());
    }

    /// A file's size is the one its bytes are copied by: a PAX header's,
    /// where it has one. The budget used to count the plain header's, which
    /// an archive can set to 0 beside a PAX size of anything.
    #[test]
    fn the_budget_counts_the_pax_size() {
        let mut archive = tar::Builder::new(Vec::new());
        archive.append_pax_extensions([("size", &b"3000"[..])]).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_path("large").unwrap();
        header.set_cksum();
        let mut bytes = archive.into_inner().unwrap();
        bytes.truncate(bytes.len() - 1024); // the end-of-archive blocks
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[b'x'; 3072]);
        bytes.extend_from_slice(&[0; 1024]);
        let dir = tempfile::tempdir().unwrap();
        let mut budget = Budget { bytes_max: 2000, ..Budget::default() };
        let refused = unpack_entries(bytes.as_slice(), dir.path(), false, &mut budget).unwrap_err();
        assert!(refused.to_string().contains("unpacks to more than 2000 bytes"), "{refused}");
        unpack(bytes.as_slice(), dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("large")).unwrap(), [b'x'; 3000]);
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            builder.append_data(&mut header, path, *bytes).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// A `docker save`-shaped image: layers apply in order, whiteouts and
    /// opaque directories hide what is below.
    #[test]
    fn layers_and_whiteouts() {
        let lower = layer(&[("etc/a", b"1"), ("etc/b", b"2"), ("data/x", b"3"), ("data/y", b"4")]);
        let upper = layer(&[("etc/.wh.a", b""), ("data/.wh..wh..opq", b""), ("data/z", b"5"), ("etc/b", b"6")]);
        let manifest = br#"[{"Config":"c.json","Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
        let mut image = tar::Builder::new(Vec::new());
        for (path, bytes) in [("manifest.json", &manifest[..]), ("l1/layer.tar", &lower), ("l2/layer.tar", &upper)] {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            image.append_data(&mut header, path, bytes).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("image.tar");
        std::fs::write(&image_path, image.into_inner().unwrap()).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        unpack_image(&image_path, &root).unwrap();
        assert!(!root.join("etc/a").exists(), "whiteout");
        assert_eq!(std::fs::read(root.join("etc/b")).unwrap(), b"6", "upper wins");
        assert!(!root.join("data/x").exists() && !root.join("data/y").exists(), "opaque directory");
        assert_eq!(std::fs::read(root.join("data/z")).unwrap(), b"5");
        assert!(!root.join("etc/.wh.a").exists(), "markers are not files");
    }
}
