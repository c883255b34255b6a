//! The write-ahead journal that makes log appends durable.
//!
//! sled 0.34 cannot make one write durable cheaply: its flush is three
//! `pwrite`s and three `sync_file_range`s, and only an `fsync` of its files
//! afterwards survives a power cut (see [`super::Flusher`]). A put waits for
//! that on the leader and on a follower. So appended entries go to sled
//! unflushed *and* to this journal, which a group of appends reaches with one
//! `pwrite` and one `fdatasync` — etcd's WAL discipline. The log store is
//! still sled: the journal only holds what sled has not yet flushed, and is
//! replayed into sled when the store opens.
//!
//! A checkpoint (a sled flush made durable) empties the journal. Every
//! operation that is not an append checkpoints (votes, truncations,
//! snapshots), so the journal only ever holds appends made after the last
//! truncation: replaying it in order can never bring back a truncated entry.
//!
//! Layout: a header block, then records, in a file grown in fixed steps with
//! `fallocate` and then overwritten in place (an `fdatasync` of a write into
//! allocated space has no file size to commit). The header holds the
//! journal's generation; each record carries it with its length and a CRC,
//! so a reader stops at the first torn record or at the first record left
//! over from an earlier generation.
//!
//! ```text
//! header (4096 B): b"DLJ1" | crc32(generation) u32 | generation u64 | zeros
//! record:          generation u64 | length u32 | crc32(generation, length, payload) u32 | payload
//! payload:         bincode Vec<bytes>, one serialized log entry each
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 4] = b"DLJ1";
/// The header's block; records start after it.
const HEADER: u64 = 4096;
const RECORD_HEADER: usize = 16;
/// The file grows by this much at a time.
const GROW_STEP: u64 = 8 << 20;
/// The journal is checkpointed and restarted before it grows past this.
pub(super) const CAPACITY: u64 = 64 << 20;

/// An open journal, written by one thread.
pub(super) struct Journal {
    file: File,
    generation: u64,
    /// Where the next record goes.
    end: u64,
    /// Bytes allocated to the file.
    allocated: u64,
}

/// The entries found in the journal when it was opened, oldest first, each
/// as sled stores it (bincode of one entry).
pub(super) type Recovered = Vec<Vec<u8>>;

fn crc(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

fn corrupt(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Journal {
    /// Open the journal at `path` (creating it), and read back the entries of
    /// its current generation.
    pub(super) fn open(path: &Path) -> io::Result<(Self, Recovered)> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let allocated = file.metadata()?.len();
        let mut header = [0u8; 16];
        if allocated >= HEADER {
            file.read_exact_at(&mut header, 0)?;
        }
        if header == [0u8; 16] {
            // New, or its creation was cut short before its first header was
            // durable (so it never held a record anyone was told of).
            let mut journal = Self { file, generation: 0, end: HEADER, allocated };
            journal.restart()?;
            return Ok((journal, Vec::new()));
        }
        let generation = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if &header[..4] != MAGIC || header[4..8] != crc(&[&header[8..16]]).to_le_bytes() {
            return Err(corrupt(format!("journal {} has a corrupt header", path.display())));
        }
        let mut recovered = Vec::new();
        let mut end = HEADER;
        let mut head = [0u8; RECORD_HEADER];
        while end + RECORD_HEADER as u64 <= allocated {
            file.read_exact_at(&mut head, end)?;
            let record_generation = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            let length = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as u64;
            let checksum = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
            let body_end = end + RECORD_HEADER as u64 + length;
            if record_generation != generation || length == 0 || body_end > allocated {
                break;
            }
            let mut payload = vec![0u8; length as usize];
            file.read_exact_at(&mut payload, end + RECORD_HEADER as u64)?;
            if checksum != crc(&[&head[..12], &payload]) {
                // Torn by a crash during its write: nobody was told it was
                // durable, and nothing after it was written.
                break;
            }
            let entries: Vec<serde_bytes::ByteBuf> =
                bincode::deserialize(&payload).map_err(|error| corrupt(format!("journal record: {error}")))?;
            recovered.extend(entries.into_iter().map(serde_bytes::ByteBuf::into_vec));
            end = body_end;
        }
        Ok((Self { file, generation, end, allocated }, recovered))
    }

    /// The payload of one record: a group of serialized entries.
    pub(super) fn record(entries: &[Vec<u8>]) -> io::Result<Vec<u8>> {
        bincode::serialize(&entries.iter().map(|e| serde_bytes::Bytes::new(e)).collect::<Vec<_>>())
            .map_err(io::Error::other)
    }

    /// Whether records of these payloads fit before the journal must restart.
    pub(super) fn fits(&self, payloads: &[Vec<u8>]) -> bool {
        self.end + Self::size(payloads) <= CAPACITY
    }

    /// Bytes the records of these payloads take.
    fn size(payloads: &[Vec<u8>]) -> u64 {
        payloads.iter().map(|payload| (RECORD_HEADER + payload.len()) as u64).sum()
    }

    /// Append one record per payload made by [`Journal::record`], and make
    /// them durable.
    pub(super) fn append(&mut self, payloads: &[Vec<u8>]) -> io::Result<()> {
        let mut buffer = Vec::with_capacity(Self::size(payloads) as usize);
        for payload in payloads {
            let length = u32::try_from(payload.len()).map_err(|_| corrupt("journal record too large"))?;
            let mut head = [0u8; RECORD_HEADER];
            head[..8].copy_from_slice(&self.generation.to_le_bytes());
            head[8..12].copy_from_slice(&length.to_le_bytes());
            let checksum = crc(&[&head[..12], payload]);
            head[12..16].copy_from_slice(&checksum.to_le_bytes());
            buffer.extend_from_slice(&head);
            buffer.extend_from_slice(payload);
        }
        let end = self.end + buffer.len() as u64;
        // A record left from an earlier generation just past the new end
        // stops a reader; so does the zeroed space past it.
        while end > self.allocated {
            let step = GROW_STEP.min(CAPACITY - self.allocated).max(end - self.allocated);
            allocate(&self.file, self.allocated, step)?;
            self.allocated += step;
        }
        self.file.write_all_at(&buffer, self.end)?;
        self.file.sync_data()?;
        self.end = end;
        Ok(())
    }

    /// Empty the journal: called once everything in it is durable elsewhere.
    /// Records of the old generation stay on disk but are never read again.
    pub(super) fn restart(&mut self) -> io::Result<()> {
        let generation = self.generation + 1;
        if self.allocated < HEADER + GROW_STEP {
            allocate(&self.file, 0, HEADER + GROW_STEP)?;
            self.allocated = HEADER + GROW_STEP;
        }
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(MAGIC);
        header[4..8].copy_from_slice(&crc(&[&generation.to_le_bytes()]).to_le_bytes());
        header[8..16].copy_from_slice(&generation.to_le_bytes());
        self.file.write_all_at(&header, 0)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.end = HEADER;
        Ok(())
    }

    /// Whether the journal holds any record.
    pub(super) fn is_empty(&self) -> bool {
        self.end == HEADER
    }
}

/// Reserve `length` bytes at `offset` (zeros to readers) and make the new
/// size durable, so later `fdatasync`s only write data.
fn allocate(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let (offset, length) = (offset as libc::off_t, length as libc::off_t);
    // SAFETY: fallocate on a descriptor this `File` owns; no memory is passed.
    #[allow(unsafe_code)]
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, length) };
    if result != 0 {
        let error = io::Error::last_os_error();
        // Filesystems without fallocate: write the zeros.
        if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(error);
        }
        file.write_all_at(&vec![0u8; length as usize], offset as u64)?;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(range: std::ops::Range<u8>) -> Vec<Vec<u8>> {
        range.map(|i| vec![i; 3 + i as usize]).collect()
    }

    fn append(journal: &mut Journal, group: &[Vec<u8>]) {
        journal.append(&[Journal::record(group).unwrap()]).unwrap();
    }

    /// A new journal in a temporary directory (kept as long as the result).
    fn fresh() -> (tempfile::TempDir, std::path::PathBuf, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.is_empty() && journal.is_empty());
        (dir, path, journal)
    }

    #[test]
    fn reads_back_what_was_appended_in_order() {
        let (_dir, path, mut journal) = fresh();
        append(&mut journal, &entries(0..3));
        append(&mut journal, &entries(3..5));
        drop(journal);
        let (journal, recovered) = Journal::open(&path).unwrap();
        assert_eq!(recovered, entries(0..5));
        assert!(!journal.is_empty());
    }

    #[test]
    fn a_restart_forgets_older_records_even_where_they_are_longer() {
        let (_dir, path, mut journal) = fresh();
        append(&mut journal, &entries(0..10));
        append(&mut journal, &entries(10..20));
        journal.restart().unwrap();
        drop(journal);
        let (mut journal, recovered) = Journal::open(&path).unwrap();
        assert!(recovered.is_empty(), "the old generation's records are not read");
        // A shorter new record overwrites the start of the old ones; the
        // old records after it are not read either.
        append(&mut journal, &entries(0..1));
        drop(journal);
        assert_eq!(Journal::open(&path).unwrap().1, entries(0..1));
    }

    #[test]
    fn a_torn_record_ends_the_journal_and_a_torn_header_is_refused() {
        let (_dir, path, mut journal) = fresh();
        append(&mut journal, &entries(0..2));
        let torn_at = journal.end;
        append(&mut journal, &entries(2..4));
        append(&mut journal, &entries(4..6));
        drop(journal);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], torn_at + RECORD_HEADER as u64 + 1).unwrap();
        assert_eq!(Journal::open(&path).unwrap().1, entries(0..2), "nothing from the torn record on");
        file.write_all_at(&[0xff], 9).unwrap();
        let error = Journal::open(&path).err().expect("a corrupt header is refused");
        assert!(error.to_string().contains("corrupt header"), "{error}");
    }

    #[test]
    fn grows_in_steps_and_reports_when_full() {
        let (_dir, path, mut journal) = fresh();
        let big = vec![vec![7u8; (GROW_STEP + GROW_STEP / 2) as usize]];
        append(&mut journal, &big);
        assert!(journal.allocated >= journal.end && journal.allocated <= CAPACITY);
        assert!(!journal.fits(&[vec![0u8; CAPACITY as usize]]));
        drop(journal);
        assert_eq!(Journal::open(&path).unwrap().1, big);
    }
}
