//! Directory listings in name order, whatever the buffer size.
//!
//! A filesystem returns a directory's entries in its own order (ext4: the
//! order of a hash keyed by a seed chosen when the filesystem was made, so
//! the same directory lists differently on two hosts; tmpfs: newest
//! first). The supervisor answers every `getdents64` itself: at the first
//! call on an open directory (position 0, or a descriptor it has not seen)
//! it reads the whole directory through a duplicate of the workload's
//! descriptor, sorts it by name, and serves it from there. The position
//! the workload's descriptor holds is the index of the next entry (so
//! `telldir`, `seekdir` and `rewinddir`, which go through `lseek` on that
//! same position, keep working), and each entry's `d_off` is the index
//! after it.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// Most entries one directory may have for the cage to list it in order.
pub(crate) const ENTRIES_MAX: usize = 1 << 20;
/// Most directories whose sorted listings are kept at once (per run); past
/// it they are all dropped, and a listing is read again when next used.
const KEPT_MAX: usize = 64;
/// The buffer each read of the whole directory uses.
const READ_BYTES: usize = 64 << 10;
/// Size of a `linux_dirent64` without its name.
const HEADER: usize = 19;

/// One entry: its name, inode number and type.
struct Entry {
    name: Vec<u8>,
    ino: u64,
    kind: u8,
}

struct Sorted {
    /// Which directory (device, inode) this is the listing of.
    identity: (u64, u64),
    entries: Vec<Entry>,
}

/// Why a listing cannot be served.
pub(crate) enum Failure {
    /// The call fails with this errno (as the kernel's would).
    Errno(i32),
    /// More entries than [`ENTRIES_MAX`].
    TooLarge,
}

/// The run's sorted listings, by process and descriptor.
#[derive(Default)]
pub(crate) struct Listings {
    kept: HashMap<(libc::pid_t, i32), Sorted>,
}

impl Listings {
    /// The records for one `getdents64` of at most `size` bytes on
    /// `directory` (the workload's open directory `fd` in process `pid`,
    /// duplicated: the same position), each inode number as
    /// `show_inode(directory's device, inode)` gives it. Moves the
    /// position past what it returns.
    pub(crate) fn next(
        &mut self,
        pid: libc::pid_t,
        fd: i32,
        directory: &mut File,
        size: usize,
        mut show_inode: impl FnMut(u64, u64) -> u64,
    ) -> Result<Vec<u8>, Failure> {
        let metadata = directory.metadata().map_err(Failure::from)?;
        let identity = (metadata.dev(), metadata.ino());
        let position = directory.stream_position().map_err(Failure::from)?;
        let fresh = self.kept.get(&(pid, fd)).is_none_or(|kept| kept.identity != identity);
        if position == 0 || fresh {
            if self.kept.len() >= KEPT_MAX {
                self.kept.clear();
            }
            let entries = read_all(directory)?;
            self.kept.insert((pid, fd), Sorted { identity, entries });
        }
        let entries = &self.kept[&(pid, fd)].entries;
        let first = usize::try_from(position).unwrap_or(usize::MAX).min(entries.len());
        let mut records = Vec::new();
        let mut next = first;
        for entry in &entries[first..] {
            let length = (HEADER + entry.name.len() + 1).next_multiple_of(8);
            if records.len() + length > size {
                break;
            }
            next += 1;
            records.extend_from_slice(&show_inode(metadata.dev(), entry.ino).to_ne_bytes());
            records.extend_from_slice(&(next as i64).to_ne_bytes());
            records.extend_from_slice(&(length as u16).to_ne_bytes());
            records.push(entry.kind);
            records.extend_from_slice(&entry.name);
            records.resize(records.len() + length - HEADER - entry.name.len(), 0);
        }
        if records.is_empty() && first < entries.len() {
            return Err(Failure::Errno(libc::EINVAL)); // The buffer holds not even one entry.
        }
        // SAFETY: lseek on a descriptor owned here.
        directory.seek(SeekFrom::Start(next as u64)).map_err(Failure::from)?;
        Ok(records)
    }

    /// Forget a process's listings (it ended).
    pub(crate) fn forget(&mut self, pid: libc::pid_t) {
        self.kept.retain(|(owner, _), _| *owner != pid);
    }
}

/// Every entry of the open directory `fd`, sorted by name, read from its
/// start; its position is left at the start.
fn read_all(directory: &mut File) -> Result<Vec<Entry>, Failure> {
    directory.rewind().map_err(Failure::from)?;
    let mut entries = Vec::new();
    let mut buffer = vec![0u8; READ_BYTES];
    loop {
        // SAFETY: getdents64 on an open descriptor into a buffer of the
        // length given.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, directory.as_raw_fd(), buffer.as_mut_ptr(), buffer.len()) };
        if n < 0 {
            return Err(Failure::from(std::io::Error::last_os_error()));
        }
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at + HEADER <= n as usize {
            let length = u16::from_ne_bytes([buffer[at + 16], buffer[at + 17]]) as usize;
            if length < HEADER || at + length > n as usize {
                return Err(Failure::Errno(libc::EIO)); // Not a listing this code understands.
            }
            let record = &buffer[at..at + length];
            let name = &record[HEADER..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            entries.push(Entry {
                name: name.to_vec(),
                ino: u64::from_ne_bytes(record[..8].try_into().expect("8 bytes")),
                kind: record[18],
            });
            if entries.len() > ENTRIES_MAX {
                return Err(Failure::TooLarge);
            }
            at += length;
        }
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    directory.rewind().map_err(Failure::from)?;
    Ok(entries)
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Errno(error.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(records: &[u8]) -> Vec<(String, i64)> {
        let mut names = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let length = u16::from_ne_bytes([records[at + 16], records[at + 17]]) as usize;
            let name = &records[at + HEADER..at + length];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap()];
            let offset = i64::from_ne_bytes(records[at + 8..at + 16].try_into().unwrap());
            names.push((String::from_utf8(name.to_vec()).unwrap(), offset));
            at += length;
        }
        names
    }

    #[test]
    fn every_buffer_continues_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["delta", "alpha", "charlie", "echo", "bravo"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mut fd = File::open(dir.path()).unwrap();
        let mut listings = Listings::default();
        let mut seen = Vec::new();
        loop {
            // Room for two short entries a call.
            let Ok(records) = listings.next(2, 3, &mut fd, 64, |_, ino| ino) else { panic!("listing failed") };
            if records.is_empty() {
                break;
            }
            seen.extend(names(&records));
        }
        let expected = [".", "..", "alpha", "bravo", "charlie", "delta", "echo"];
        assert_eq!(seen.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), expected);
        assert_eq!(seen.iter().map(|(_, offset)| *offset).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
        // seekdir to a d_off, then rewinddir (which rereads).
        fd.seek(SeekFrom::Start(5)).unwrap();
        let device = std::fs::metadata(dir.path()).unwrap().dev();
        let records = listings
            .next(2, 3, &mut fd, 4096, |dev, ino| if dev == device { ino + 1_000_000 } else { 0 })
            .ok()
            .unwrap();
        assert_eq!(names(&records).iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["delta", "echo"]);
        let delta = std::fs::metadata(dir.path().join("delta")).unwrap().ino();
        assert_eq!(u64::from_ne_bytes(records[..8].try_into().unwrap()), delta + 1_000_000, "inode numbers as shown");
        std::fs::write(dir.path().join("aardvark"), "").unwrap();
        fd.rewind().unwrap();
        let records = listings.next(2, 3, &mut fd, 4096, |_, ino| ino).ok().unwrap();
        assert_eq!(names(&records)[2].0, "aardvark", "a rewind reads the directory again");
        assert!(
            matches!(listings.next(2, 3, &mut fd, 8, |_, ino| ino), Ok(records) if records.is_empty()),
            "at the end"
        );
        fd.rewind().unwrap();
        assert!(
            matches!(listings.next(2, 3, &mut fd, 8, |_, ino| ino), Err(Failure::Errno(libc::EINVAL))),
            "no room for one"
        );
    }
}
