//! The witness log: a typed, versioned, length-prefixed record stream whose
//! Merkle root (the shared RFC 6962-shape SHA3-256 tree) identifies a run.
//!
//! File layout: the magic `docklock-witness-v1\n`, then records, each a kind
//! byte, a big-endian `u32` payload length and the payload. Each record's
//! bytes (kind, length, payload) are one Merkle leaf. Everything recorded is
//! deterministic for a deterministic program: stdout and stderr are cut into
//! fixed 64 KiB chunks (never at the pipe's read boundaries), stdout's
//! records come before stderr's, and output files are listed in path order.

use std::io::{Read, Write};
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use docklock_merkle::{Hash, MemoryTree};
use sha3::{Digest as _, Sha3_256};

/// The file's first bytes.
pub const MAGIC: &[u8] = b"docklock-witness-v1\n";
/// Size of stdout and stderr chunks.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest record payload a reader accepts.
const PAYLOAD_BYTES_MAX: usize = 1 << 20;

/// One witness record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// What ran and how: cage version, machine class, policy, rootfs,
    /// program, seed, arguments, environment, limits, cgroup (text,
    /// `key=value` lines, in a fixed order).
    Header(String),
    /// A declared input: name and SHA3-256 of its bytes.
    Input {
        /// Its name under `/in`.
        name: String,
        /// Its digest.
        digest: [u8; 32],
    },
    /// A chunk of standard output.
    Stdout(Vec<u8>),
    /// A chunk of standard error.
    Stderr(Vec<u8>),
    /// An output file: path under `/out`, size and digest.
    Output {
        /// Its path under `/out`.
        path: String,
        /// Its size.
        size: u64,
        /// Its digest.
        digest: [u8; 32],
    },
    /// How the run ended: the verdict in words.
    End(String),
    /// A traced call the supervisor answered: its name, its result, and
    /// the bytes it wrote into the workload (their SHA3-256 if over 64).
    Call {
        /// The call's name.
        name: String,
        /// What it returned (`-errno` on failure).
        result: i64,
        /// What it wrote.
        data: Vec<u8>,
    },
    /// The supervisor's events that follow are of this process (its place
    /// in the run's process tree: `1` is the workload, `1.2` its second
    /// child).
    Process(String),
    /// A file the workload read from its root filesystem (or exec'd):
    /// path inside the cage and content digest, once per path.
    Read {
        /// Its path.
        path: String,
        /// Its digest.
        digest: [u8; 32],
    },
}

impl Record {
    fn kind(&self) -> u8 {
        match self {
            Record::Header(_) => 1,
            Record::Input { .. } => 2,
            Record::Stdout(_) => 3,
            Record::Stderr(_) => 4,
            Record::Output { .. } => 5,
            Record::End(_) => 6,
            Record::Call { .. } => 7,
            Record::Read { .. } => 8,
            Record::Process(_) => 9,
        }
    }

    /// The payload; borrowed where it is stored as is (output chunks are
    /// most of a log's bytes, and are not copied).
    fn payload(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        Cow::Owned(match self {
            Record::Header(text) | Record::End(text) | Record::Process(text) => {
                return Cow::Borrowed(text.as_bytes());
            }
            Record::Input { name, digest } | Record::Read { path: name, digest } => {
                [digest.as_slice(), name.as_bytes()].concat()
            }
            Record::Call { name, result, data } => {
                // Names are short (the syscall table); one length byte.
                [&result.to_be_bytes(), &[name.len() as u8][..], name.as_bytes(), data].concat()
            }
            Record::Stdout(bytes) | Record::Stderr(bytes) => return Cow::Borrowed(bytes),
            Record::Output { path, size, digest } => [digest.as_slice(), &size.to_be_bytes(), path.as_bytes()].concat(),
        })
    }

    /// The kind byte and payload length that start the record's bytes.
    fn head(&self, payload: &[u8]) -> [u8; 5] {
        let mut head = [0; 5];
        head[0] = self.kind();
        head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        head
    }

    /// The record's bytes: the Merkle leaf and what the file holds.
    pub fn encode(&self) -> Vec<u8> {
        let payload = self.payload();
        [&self.head(&payload)[..], &payload].concat()
    }

    fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, String> {
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| "text is not UTF-8".to_owned());
        let digest = |bytes: &[u8]| -> Result<[u8; 32], String> {
            bytes.get(..32).and_then(|d| d.try_into().ok()).ok_or_else(|| "record too short".to_owned())
        };
        Ok(match kind {
            1 => Record::Header(text(payload)?),
            2 => Record::Input { digest: digest(&payload)?, name: text(payload[32..].to_vec())? },
            3 => Record::Stdout(payload),
            4 => Record::Stderr(payload),
            5 => {
                let size = payload.get(32..40).ok_or("record too short")?;
                Record::Output {
                    digest: digest(&payload)?,
                    size: u64::from_be_bytes(size.try_into().expect("8 bytes")),
                    path: text(payload[40..].to_vec())?,
                }
            }
            6 => Record::End(text(payload)?),
            7 => {
                let result = payload.get(..8).ok_or("record too short")?;
                let name_len = *payload.get(8).ok_or("record too short")? as usize;
                let name = payload.get(9..9 + name_len).ok_or("record too short")?;
                Record::Call {
                    result: i64::from_be_bytes(result.try_into().expect("8 bytes")),
                    name: text(name.to_vec())?,
                    data: payload[9 + name_len..].to_vec(),
                }
            }
            8 => Record::Read { digest: digest(&payload)?, path: text(payload[32..].to_vec())? },
            9 => Record::Process(text(payload)?),
            other => return Err(format!("unknown record kind {other}")),
        })
    }
}

/// SHA3-256 of `bytes`.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha3_256::digest(bytes).into()
}

/// SHA3-256 of everything `reader` yields.
pub fn digest_reader(mut reader: impl Read) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha3_256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// Writes records to a file and keeps the Merkle tree of their leaves.
pub struct WitnessWriter<W: Write> {
    out: W,
    tree: MemoryTree,
}

impl<W: Write> WitnessWriter<W> {
    /// A writer that starts with the magic.
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(MAGIC)?;
        Ok(Self { out, tree: MemoryTree::default() })
    }

    /// Append a record.
    pub fn record(&mut self, record: &Record) -> std::io::Result<()> {
        // The same bytes as `encode`, hashed and written in two pieces.
        let payload = record.payload();
        let head = record.head(&payload);
        self.tree.push_parts(&[&head, &payload]);
        self.out.write_all(&head)?;
        self.out.write_all(&payload)
    }

    /// Records so far.
    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Flush and return the root.
    pub fn finish(mut self) -> std::io::Result<Hash> {
        self.out.flush()?;
        Ok(self.tree.root())
    }
}

/// Bytes a [`BackgroundWriter`] gathers before handing them over.
const BACKGROUND_CHUNK: usize = 1 << 20;
/// Chunks waiting for the writing thread at most (then `write` waits).
const BACKGROUND_BACKLOG: usize = 4;

/// A file written by a thread of its own once there is much to write: a
/// run's output is hashed into the witness tree on the collecting thread
/// while the bytes of the log go to disk on this one, instead of one after
/// the other (the recording of 200 MB of stdout ran at 0.61x of
/// single-core SHA3 with both on one thread). The thread starts with the
/// first full chunk, so a small log costs no thread. Errors show at a
/// later `write` or at `flush`, which ends the writing: write nothing
/// after it.
pub struct BackgroundWriter {
    /// The file until the thread takes it.
    file: Option<std::fs::File>,
    buffer: Vec<u8>,
    thread: Option<WriterThread>,
}

/// The writing thread: where chunks go, and its end.
type WriterThread = (SyncSender<Vec<u8>>, JoinHandle<std::io::Result<()>>);

impl BackgroundWriter {
    /// A writer of `file`.
    pub fn new(file: std::fs::File) -> Self {
        Self { file: Some(file), buffer: Vec::with_capacity(BACKGROUND_CHUNK), thread: None }
    }

    /// Hand the full buffer to the thread, starting it first if need be.
    fn hand_over(&mut self) -> std::io::Result<()> {
        if self.thread.is_none() {
            let mut file = self.file.take().ok_or_else(|| std::io::Error::other("the witness log was closed"))?;
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<u8>>(BACKGROUND_BACKLOG);
            let writer = std::thread::Builder::new().name("witness-writer".into()).spawn(move || {
                receiver.iter().try_for_each(|chunk| file.write_all(&chunk))?;
                file.flush()
            })?;
            self.thread = Some((sender, writer));
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(BACKGROUND_CHUNK));
        let (sender, _) = self.thread.as_ref().expect("started above");
        if sender.send(chunk).is_err() {
            // The thread stopped at an error: that error.
            return Err(self.join().err().unwrap_or_else(|| std::io::Error::other("the witness writer stopped")));
        }
        Ok(())
    }

    /// Stop the thread once it has written everything handed over.
    fn join(&mut self) -> std::io::Result<()> {
        let Some((sender, writer)) = self.thread.take() else { return Ok(()) };
        drop(sender);
        writer.join().map_err(|_| std::io::Error::other("the witness writer panicked"))?
    }
}

impl Write for BackgroundWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let taken = bytes.len().min(BACKGROUND_CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == BACKGROUND_CHUNK {
            self.hand_over()?;
        }
        Ok(taken)
    }

    /// Write everything out and end the writing.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.thread.is_some() {
            if !self.buffer.is_empty() {
                self.hand_over()?;
            }
            return self.join();
        }
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("the witness log was closed"))?;
        file.write_all(&std::mem::take(&mut self.buffer))?;
        file.flush()
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // Nothing is written after its owner is gone (a failed run's log
        // is removed): the thread finishes what it has and ends.
        let _ = self.join();
    }
}

/// Read a witness file: its records and their recomputed root.
pub fn read(mut input: impl Read) -> Result<(Vec<Record>, Hash), String> {
    let mut magic = vec![0; MAGIC.len()];
    input.read_exact(&mut magic).map_err(|e| format!("not a witness log: {e}"))?;
    if magic != MAGIC {
        return Err("not a witness log (bad magic)".into());
    }
    let (mut records, mut tree) = (Vec::new(), MemoryTree::default());
    loop {
        let mut head = [0; 5];
        match input.read_exact(&mut head[..1]) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error.to_string()),
        }
        input.read_exact(&mut head[1..]).map_err(|e| format!("truncated record header: {e}"))?;
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > PAYLOAD_BYTES_MAX {
            return Err(format!("record of {len} bytes is over the bound"));
        }
        let mut payload = vec![0; len];
        input.read_exact(&mut payload).map_err(|e| format!("truncated record: {e}"))?;
        let record = Record::decode(head[0], payload)?;
        tree.push(&record.encode());
        records.push(record);
    }
    Ok((records, tree.root()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What goes in comes out in order, through the thread (many chunks,
    /// writes of odd sizes) or without it (a small log); a failed write
    /// shows at `flush`.
    #[test]
    fn a_background_writer_writes_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for total in [100, 5 * BACKGROUND_CHUNK + 12_345] {
            let path = dir.path().join(format!("log-{total}"));
            let mut writer = BackgroundWriter::new(std::fs::File::create(&path).unwrap());
            let bytes: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            for piece in bytes.chunks(65_537) {
                writer.write_all(piece).unwrap();
            }
            writer.flush().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{total} bytes");
        }
        let read_only = std::fs::File::open(dir.path().join("log-100")).unwrap();
        let mut writer = BackgroundWriter::new(read_only);
        let written = writer.write_all(&vec![0; 3 * BACKGROUND_CHUNK]).and_then(|()| writer.flush());
        assert!(written.is_err(), "a file opened read-only cannot be written");
    }

    #[test]
    fn round_trip_and_root() {
        let records = vec![
            Record::Header("cage=1".into()),
            Record::Input { name: "a.csv".into(), digest: digest(b"x") },
            Record::Stdout(b"hello".to_vec()),
            Record::Stderr(b"warn".to_vec()),
            Record::Output { path: "r.txt".into(), size: 3, digest: digest(b"abc") },
            Record::Call { name: "getrandom".into(), result: 8, data: vec![7; 8] },
            Record::Process("1.2".into()),
            Record::Read { path: "/usr/lib/libc.so.6".into(), digest: digest(b"libc") },
            Record::End("ok exit 0".into()),
        ];
        let mut file = Vec::new();
        let mut writer = WitnessWriter::new(&mut file).unwrap();
        for record in &records {
            writer.record(record).unwrap();
        }
        let root = writer.finish().unwrap();
        let (read_back, recomputed) = read(file.as_slice()).unwrap();
        assert_eq!(read_back, records);
        assert_eq!(recomputed, root);
        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_ne!(read(flipped.as_slice()).map(|(_, root)| root).ok(), Some(root));
        assert!(read(&file[..file.len() - 2]).is_err(), "a truncated log is refused");
    }
}
