//! SHA3-256 of files, remembered by identity so a large image or a shared
//! library is not hashed again on every run (git's index does the same):
//! in memory for this process, and on disk under the cache directory for
//! the next one.
//!
//! The disk cache is bounded by construction: an identity hashes to one of
//! [`SLOTS`] files, each holding the [`WAYS`] most recently stored entries
//! of its slot, so a long-lived node that sees a new input file on every run
//! keeps at most `SLOTS` small files however long it runs (one file per
//! identity grew without bound). Losing an entry only costs a re-hash.
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
/// Files of the disk cache.
const SLOTS: u64 = 256;
/// Entries kept in one slot file: enough that a few hundred files in use
/// rarely evict each other.
const WAYS: usize = 8;
/// Longest slot file read: `WAYS` lines of an identity and a digest.
const SLOT_BYTES_MAX: u64 = 4096;

/// The digest of the regular file at `path` (which may be a `/proc` link
/// to an open file), remembered under `cache/digest-slots` if `cache` is given.
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
        slot_entries(&slot_path(cache?, key))
            .into_iter()
            .find(|(identity, _)| identity == key)
            .map(|(_, digest)| digest)
    };
    let digest = remembered.or_else(on_disk)?;
    if remembered.is_none() {
        remember_in_memory(key.to_owned(), digest);
    }
    Some(digest)
}

fn remember(key: String, digest: [u8; 32], cache: Option<&Path>) {
    // Best effort: a cache that cannot be written only costs a re-hash
    // next time. Two runs storing into one slot at once may lose one
    // entry; never a wrong one, since the slot is replaced by a rename.
    if let Some(cache) = cache {
        let _ = store(cache, &key, digest);
    }
    remember_in_memory(key, digest);
}

/// The slot file an identity belongs in.
fn slot_path(cache: &Path, key: &str) -> std::path::PathBuf {
    let hash = witness::digest(key.as_bytes());
    let slot = u64::from_le_bytes(hash[..8].try_into().expect("eight bytes")) % SLOTS;
    cache.join("digest-slots").join(format!("slot-{slot:03}"))
}

/// A slot's entries, newest first; nothing for a missing or damaged file.
fn slot_entries(path: &Path) -> Vec<(String, [u8; 32])> {
    use std::io::Read;
    let mut text = String::new();
    let Ok(file) = File::open(path) else { return Vec::new() };
    if file.take(SLOT_BYTES_MAX).read_to_string(&mut text).is_err() {
        return Vec::new();
    }
    text.lines()
        .filter_map(|line| {
            let (identity, digest) = line.split_once(' ')?;
            let digest = <[u8; 32]>::try_from(hex::decode(digest).ok()?).ok()?;
            Some((identity.to_owned(), digest))
        })
        .take(WAYS)
        .collect()
}

fn store(cache: &Path, key: &str, digest: [u8; 32]) -> io::Result<()> {
    use std::io::Write;
    // Earlier versions kept one file per identity here, never removed.
    let legacy = cache.join("digests");
    if legacy.exists() {
        let _ = std::fs::remove_dir_all(legacy);
    }
    let path = slot_path(cache, key);
    let folder = path.parent().expect("a slot is in a folder");
    std::fs::create_dir_all(folder)?;
    let mut entries = slot_entries(&path);
    entries.retain(|(identity, _)| identity != key);
    entries.insert(0, (key.to_owned(), digest));
    entries.truncate(WAYS);
    let text: String =
        entries.iter().map(|(identity, digest)| format!("{identity} {}\n", hex::encode(digest))).collect();
    let mut partial = tempfile::NamedTempFile::new_in(folder)?;
    partial.write_all(text.as_bytes())?;
    partial.persist(&path).map_err(|error| error.error)?;
    Ok(())
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
        assert_eq!(std::fs::read_dir(cache.join("digest-slots")).unwrap().count(), 1);
        MEMORY.lock().unwrap().take();
        assert_eq!(digest(&file, Some(&cache)).unwrap(), first, "served from the disk cache");
        std::fs::write(&file, b"second, longer").unwrap();
        let second = digest(&file, Some(&cache)).unwrap();
        assert_eq!(second, witness::digest(b"second, longer"), "a changed file is hashed again");
        assert!(digest(dir.path(), None).is_err(), "a directory has no digest");
    }

    #[test]
    fn the_disk_cache_stays_within_its_slots_and_keeps_the_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let keys: Vec<String> = (0..SLOTS * WAYS as u64 * 3).map(|i| format!("identity-{i}")).collect();
        for (i, key) in keys.iter().enumerate() {
            store(cache, key, [i as u8; 32]).unwrap();
        }
        let files: Vec<_> = std::fs::read_dir(cache.join("digest-slots")).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(files.len() as u64 <= SLOTS, "{} files", files.len());
        for file in &files {
            let entries = slot_entries(file);
            assert!(!entries.is_empty() && entries.len() <= WAYS, "{} entries", entries.len());
        }
        let last = keys.len() - 1;
        let newest = slot_entries(&slot_path(cache, &keys[last]));
        assert_eq!(newest[0], (keys[last].clone(), [last as u8; 32]), "the newest entry leads its slot");
        let stored: usize = files.iter().map(|file| slot_entries(file).len()).sum();
        assert!(stored < keys.len(), "old entries were evicted");
        // A damaged slot is a miss, not an error or a wrong digest.
        std::fs::write(slot_path(cache, &keys[last]), "garbage\nidentity-x zz\n").unwrap();
        assert!(slot_entries(&slot_path(cache, &keys[last])).is_empty());
    }
}
