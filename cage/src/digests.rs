//! SHA3-256 of files, remembered by identity so a large image or a shared
//! library is not hashed again on every run (git's index does the same):
//! in memory for this process, and on disk under the cache directory for
//! the next one.
//!
//! The identity is (device, inode, size, modification and change times):
//! rewriting a file changes its change time even if the modification time
//! is put back. A stale entry cannot misstate a run's inputs that matter:
//! root filesystems are read-only to workloads, and an archive's digest
//! names the unpacked cache entry that is mounted.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use crate::witness;

/// Entries of the in-memory map (cleared when full).
const MEMORY_ENTRIES_MAX: usize = 4096;

/// The digest of the regular file at `path` (which may be a `/proc` link
/// to an open file), remembered under `cache/digests` if `cache` is given.
pub(crate) fn digest(path: &Path, cache: Option<&Path>) -> io::Result<[u8; 32]> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let key = identity(&meta);
    if let Some(digest) = recall(&key, cache) {
        return Ok(digest);
    }
    let digest = witness::digest_reader(File::open(path)?)?;
    remember(key, digest, cache);
    Ok(digest)
}

/// The digest of `bytes`, just read from the file at `path` whose
/// metadata before the read was `before`: remembered if the file is still
/// the one it was (so the remembered digest is that of these bytes),
/// else hashed.
pub(crate) fn digest_of_read(path: &Path, before: &std::fs::Metadata, bytes: &[u8], cache: Option<&Path>) -> [u8; 32] {
    let key = identity(before);
    let unchanged = std::fs::metadata(path).is_ok_and(|after| identity(&after) == key);
    if let Some(digest) = recall(&key, cache).filter(|_| unchanged) {
        return digest;
    }
    let digest = witness::digest(bytes);
    if unchanged {
        remember(key, digest, cache);
    }
    digest
}

static MEMORY: Mutex<Option<HashMap<String, [u8; 32]>>> = Mutex::new(None);

/// What names one version of a file.
fn identity(meta: &std::fs::Metadata) -> String {
    format!(
        "{}-{}-{}-{}.{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

fn recall(key: &str, cache: Option<&Path>) -> Option<[u8; 32]> {
    let remembered = MEMORY.lock().ok().and_then(|memory| memory.as_ref()?.get(key).copied());
    let on_disk = || {
        let text = std::fs::read_to_string(cache?.join("digests").join(key)).ok()?;
        <[u8; 32]>::try_from(hex::decode(text.trim()).ok()?).ok()
    };
    let digest = remembered.or_else(on_disk)?;
    if remembered.is_none() {
        remember_in_memory(key.to_owned(), digest);
    }
    Some(digest)
}

fn remember(key: String, digest: [u8; 32], cache: Option<&Path>) {
    // Best effort: a cache that cannot be written only costs a re-hash
    // next time.
    if let Some(cache) = cache {
        if std::fs::create_dir_all(cache.join("digests")).is_ok() {
            let _ = std::fs::write(cache.join("digests").join(&key), hex::encode(digest));
        }
    }
    remember_in_memory(key, digest);
}

fn remember_in_memory(key: String, digest: [u8; 32]) {
    if let Ok(mut memory) = MEMORY.lock() {
        let memory = memory.get_or_insert_with(HashMap::new);
        if memory.len() >= MEMORY_ENTRIES_MAX {
            memory.clear();
        }
        memory.insert(key, digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_remembered_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image.tar");
        std::fs::write(&file, b"first").unwrap();
        let cache = dir.path().join("cache");
        let first = digest(&file, Some(&cache)).unwrap();
        assert_eq!(first, witness::digest(b"first"));
        assert_eq!(digest(&file, Some(&cache)).unwrap(), first, "served from the cache");
        assert_eq!(std::fs::read_dir(cache.join("digests")).unwrap().count(), 1);
        std::fs::write(&file, b"second, longer").unwrap();
        let second = digest(&file, Some(&cache)).unwrap();
        assert_eq!(second, witness::digest(b"second, longer"), "a changed file is hashed again");
        assert!(digest(dir.path(), None).is_err(), "a directory has no digest");
    }
}
