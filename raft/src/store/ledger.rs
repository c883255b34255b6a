//! The audit ledger's rows: events and Merkle nodes in flat append-only
//! files, checkpoints in sled.
//!
//! `apply` produces the rows ([`crate::ledger::LedgerWrites`]) and the state
//! machine writes them here after each batch. Rows are addressed by
//! position, and `apply` is deterministic, so re-applying the log after a
//! restart rewrites identical bytes at identical offsets. Every reader bounds
//! itself by a size taken from the state, so rows past it are never read.
//!
//! Why files and not sled rows: the ledger is append-only and addressed by
//! position, which a file does with one `pwrite` per batch; as sled rows
//! (three inserts per event) it cost a third of the registry's put
//! throughput, and every log flush carried the rows along.
//!
//! Layout under `DIR/ledger/`:
//! - `events.log`: per event, the chain head after it (32 bytes), the event's
//!   length (`u32`, big-endian) and its canonical bytes;
//! - `events.idx`: per event, its offset in `events.log` (`u64`);
//! - `nodes.L`: per Merkle node of level `L` (a complete subtree of `2^L`
//!   leaves), its hash at `index * 32`.
//!
//! Durability: [`LedgerStore::sync`] (fsync) runs before a snapshot is
//! stored, so a stored snapshot never names a row that is not on disk; at
//! open, anything past the stored snapshot's size is ignored and rewritten by
//! the log's replay.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use docklock_proto::ledger::{chain_next, Checkpoint, CHAIN_START};
use docklock_proto::merkle::{self, Frontier, Hash, NodeSource};

use crate::ledger::{LedgerState, LedgerWrites};

/// Bytes before an event's canonical bytes in `events.log`.
const ROW_HEADER: u64 = 36;
/// Merkle levels a tree of up to 2^63 leaves can have.
const LEVELS: usize = 64;

/// A ledger row is missing or unreadable.
#[derive(Debug, thiserror::Error)]
pub enum LedgerReadError {
    /// A file operation failed.
    #[error("ledger file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// sled (checkpoints) failed.
    #[error("ledger storage: {0}")]
    Sled(#[from] sled::Error),
    /// A row that the state says exists is absent or corrupt.
    #[error("ledger row {0} is missing or corrupt")]
    Missing(String),
}

struct LedgerFile {
    path: PathBuf,
    file: File,
}

impl LedgerFile {
    fn open(path: PathBuf) -> Result<Self, LedgerReadError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| LedgerReadError::Io { path: path.display().to_string(), source })?;
        Ok(Self { path, file })
    }

    fn io(&self, source: std::io::Error) -> LedgerReadError {
        LedgerReadError::Io { path: self.path.display().to_string(), source }
    }

    fn read(&self, offset: u64, buffer: &mut [u8]) -> Result<(), LedgerReadError> {
        self.file.read_exact_at(buffer, offset).map_err(|e| self.io(e))
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), LedgerReadError> {
        self.file.write_all_at(bytes, offset).map_err(|e| self.io(e))
    }

    fn truncate(&self, len: u64) -> Result<(), LedgerReadError> {
        self.file.set_len(len).map_err(|e| self.io(e))
    }

    fn sync(&self) -> Result<(), LedgerReadError> {
        self.file.sync_data().map_err(|e| self.io(e))
    }
}

/// Where the next event goes: its index and its offset in `events.log`.
#[derive(Clone, Copy, Default)]
struct Tail {
    count: u64,
    end: u64,
}

/// The ledger's rows.
#[derive(Clone)]
pub struct LedgerStore {
    dir: PathBuf,
    log: Arc<LedgerFile>,
    index: Arc<LedgerFile>,
    /// `nodes[L]`, opened on first use.
    nodes: Arc<RwLock<Vec<Arc<LedgerFile>>>>,
    tail: Arc<Mutex<Tail>>,
    checkpoints: sled::Tree,
}

impl LedgerStore {
    pub(super) fn open(dir: &Path, db: &sled::Db) -> Result<Self, LedgerReadError> {
        let dir = dir.join("ledger");
        std::fs::create_dir_all(&dir)
            .map_err(|source| LedgerReadError::Io { path: dir.display().to_string(), source })?;
        Ok(Self {
            log: Arc::new(LedgerFile::open(dir.join("events.log"))?),
            index: Arc::new(LedgerFile::open(dir.join("events.idx"))?),
            nodes: Arc::default(),
            tail: Arc::default(),
            checkpoints: db.open_tree("ledger_checkpoints")?,
            dir,
        })
    }

    /// Keep the first `size` events (what the stored snapshot names) and
    /// drop anything after them: it was never made durable on purpose, and
    /// the log's replay writes it again.
    pub(super) fn keep(&self, size: u64) -> Result<(), LedgerReadError> {
        let end = match size.checked_sub(1) {
            None => 0,
            Some(last) => {
                let (offset, len) = self.locate(last)?;
                offset + ROW_HEADER + len
            }
        };
        self.log.truncate(end)?;
        self.index.truncate(size * 8)?;
        *self.tail.lock().expect("ledger tail lock") = Tail { count: size, end };
        Ok(())
    }

    fn node_file(&self, level: u32) -> Result<Arc<LedgerFile>, LedgerReadError> {
        let level = level as usize;
        if let Some(file) = self.nodes.read().expect("ledger nodes lock").get(level) {
            return Ok(file.clone());
        }
        let mut nodes = self.nodes.write().expect("ledger nodes lock");
        while nodes.len() <= level.min(LEVELS - 1) {
            let file = LedgerFile::open(self.dir.join(format!("nodes.{}", nodes.len())))?;
            nodes.push(Arc::new(file));
        }
        nodes.get(level).cloned().ok_or_else(|| LedgerReadError::Missing(format!("merkle level {level}")))
    }

    /// Write the rows of one apply batch.
    pub(super) fn write(&self, writes: &LedgerWrites) -> Result<(), LedgerReadError> {
        if let Some((first, _, _)) = writes.events.first() {
            let mut tail = self.tail.lock().expect("ledger tail lock");
            // A replay rewrites rows it wrote before: start where the first
            // of them starts. New rows start at the tail.
            let start = if *first < tail.count { self.locate(*first)?.0 } else { tail.end };
            let (mut rows, mut offsets) = (Vec::new(), Vec::new());
            let mut offset = start;
            for (index, bytes, head) in &writes.events {
                debug_assert_eq!(*index, first + offsets.len() as u64 / 8, "events of a batch are consecutive");
                offsets.extend_from_slice(&offset.to_be_bytes());
                rows.extend_from_slice(head);
                rows.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                rows.extend_from_slice(bytes);
                offset += ROW_HEADER + bytes.len() as u64;
            }
            self.log.write(start, &rows)?;
            self.index.write(first * 8, &offsets)?;
            let written = first + writes.events.len() as u64;
            if written >= tail.count {
                *tail = Tail { count: written, end: offset };
            }
        }
        // Nodes arrive level by level in index order within a batch: write
        // each run of consecutive indices at once.
        let mut nodes: Vec<&(u32, u64, Hash)> = writes.nodes.iter().collect();
        nodes.sort_unstable_by_key(|(level, index, _)| (*level, *index));
        let mut run: Vec<u8> = Vec::new();
        let mut run_start: Option<(u32, u64)> = None;
        for (level, index, hash) in nodes {
            let continues = run_start.is_some_and(|(l, i)| l == *level && i + (run.len() / 32) as u64 == *index);
            if !continues {
                if let Some((l, i)) = run_start {
                    self.node_file(l)?.write(i * 32, &run)?;
                }
                run.clear();
                run_start = Some((*level, *index));
            }
            run.extend_from_slice(hash);
        }
        if let Some((l, i)) = run_start {
            self.node_file(l)?.write(i * 32, &run)?;
        }
        for checkpoint in &writes.checkpoints {
            let encoded = bincode::serialize(checkpoint).expect("checkpoint encodes");
            self.checkpoints.insert(checkpoint.tree_size.to_be_bytes(), encoded)?;
        }
        Ok(())
    }

    /// Make every written row durable.
    pub(super) fn sync(&self) -> Result<(), LedgerReadError> {
        self.log.sync()?;
        self.index.sync()?;
        for file in self.nodes.read().expect("ledger nodes lock").iter() {
            file.sync()?;
        }
        Ok(())
    }

    /// Offset and length of event `index`.
    fn locate(&self, index: u64) -> Result<(u64, u64), LedgerReadError> {
        let missing = || LedgerReadError::Missing(format!("event {index}"));
        let mut offset = [0; 8];
        self.index.read(index * 8, &mut offset).map_err(|_| missing())?;
        let offset = u64::from_be_bytes(offset);
        let mut len = [0; 4];
        self.log.read(offset + 32, &mut len).map_err(|_| missing())?;
        Ok((offset, u64::from(u32::from_be_bytes(len))))
    }

    /// The canonical bytes of event `index`.
    pub fn event(&self, index: u64) -> Result<Vec<u8>, LedgerReadError> {
        if index >= self.tail.lock().expect("ledger tail lock").count {
            return Err(LedgerReadError::Missing(format!("event {index}")));
        }
        let (offset, len) = self.locate(index)?;
        let len = usize::try_from(len).map_err(|_| LedgerReadError::Missing(format!("event {index}")))?;
        if len > docklock_proto::canonical::FIELD_BYTES_MAX {
            return Err(LedgerReadError::Missing(format!("event {index} (length {len})")));
        }
        let mut bytes = vec![0; len];
        self.log.read(offset + ROW_HEADER, &mut bytes)?;
        Ok(bytes)
    }

    /// The chain head after the first `size` events.
    pub fn chain_head(&self, size: u64) -> Result<Hash, LedgerReadError> {
        match size.checked_sub(1) {
            None => Ok(CHAIN_START),
            Some(last) => {
                let (offset, _) = self.locate(last)?;
                let mut head = [0; 32];
                self.log.read(offset, &mut head)?;
                Ok(head)
            }
        }
    }

    /// The checkpoint of exactly `tree_size`, if one was recorded.
    pub fn checkpoint(&self, tree_size: u64) -> Result<Option<Checkpoint>, LedgerReadError> {
        self.checkpoints.get(tree_size.to_be_bytes())?.map(|bytes| decode_checkpoint(&bytes)).transpose()
    }

    /// The first checkpoint covering at least `tree_size` events and at most
    /// `latest` (the state's latest checkpoint size).
    pub fn checkpoint_covering(&self, tree_size: u64, latest: u64) -> Result<Option<Checkpoint>, LedgerReadError> {
        match self.checkpoints.range(tree_size.to_be_bytes()..=latest.to_be_bytes()).next() {
            Some(row) => decode_checkpoint(&row?.1).map(Some),
            None => Ok(None),
        }
    }

    /// Every row up to `size` events and `checkpoints_up_to` checkpoint size,
    /// for a snapshot sent to another node.
    pub(super) fn export(&self, size: u64, checkpoints_up_to: u64) -> Result<LedgerExport, LedgerReadError> {
        let events = (0..size).map(|index| self.event(index)).collect::<Result<_, _>>()?;
        let checkpoints = self
            .checkpoints
            .range(..=checkpoints_up_to.to_be_bytes())
            .map(|row| Ok(row?.1.to_vec()))
            .collect::<Result<_, LedgerReadError>>()?;
        Ok(LedgerExport { events, checkpoints })
    }

    /// Replace every row with an export's, rebuilding the Merkle nodes and
    /// the chain.
    pub(super) fn import(&self, export: &LedgerExport) -> Result<(), LedgerReadError> {
        self.keep(0)?;
        for file in self.nodes.read().expect("ledger nodes lock").iter() {
            file.truncate(0)?;
        }
        self.checkpoints.clear()?;
        let mut frontier = Frontier::default();
        let mut head = CHAIN_START;
        let mut writes = LedgerWrites::default();
        for (index, bytes) in export.events.iter().enumerate() {
            writes.nodes.extend(frontier.append(merkle::leaf_hash(bytes)));
            head = chain_next(&head, index as u64, bytes);
            writes.events.push((index as u64, bytes.clone(), head));
            if writes.events.len() >= 4096 {
                self.write(&std::mem::take(&mut writes))?;
            }
        }
        self.write(&writes)?;
        for bytes in &export.checkpoints {
            let checkpoint = decode_checkpoint(bytes)?;
            self.checkpoints.insert(checkpoint.tree_size.to_be_bytes(), bytes.as_slice())?;
        }
        self.sync()
    }
}

fn decode_checkpoint(bytes: &[u8]) -> Result<Checkpoint, LedgerReadError> {
    bincode::deserialize(bytes).map_err(|e| LedgerReadError::Missing(format!("checkpoint ({e})")))
}

/// The rows a snapshot carries to another node.
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub(super) struct LedgerExport {
    pub(super) events: Vec<Vec<u8>>,
    pub(super) checkpoints: Vec<Vec<u8>>,
}

impl LedgerExport {
    /// Why these rows are not the ones `state` (already checked) names: a
    /// peer sent them, and [`LedgerStore::import`] replaces this node's rows
    /// with them.
    pub(super) fn check(&self, state: &LedgerState) -> Result<(), String> {
        if self.events.len() as u64 != state.size() {
            return Err(format!("{} ledger events for a state of {}", self.events.len(), state.size()));
        }
        let mut frontier = Frontier::default();
        let mut head = CHAIN_START;
        for (index, bytes) in self.events.iter().enumerate() {
            if bytes.len() > docklock_proto::canonical::FIELD_BYTES_MAX {
                return Err(format!("ledger event {index} of {} bytes", bytes.len()));
            }
            frontier.append(merkle::leaf_hash(bytes));
            head = chain_next(&head, index as u64, bytes);
        }
        if frontier.root() != state.root() || head != state.head() {
            return Err("the ledger events do not have the state's root and chain head".to_owned());
        }
        for bytes in &self.checkpoints {
            let checkpoint = decode_checkpoint(bytes).map_err(|e| e.to_string())?;
            if checkpoint.tree_size > state.size() {
                return Err(format!("a checkpoint of {} events, past the ledger", checkpoint.tree_size));
            }
        }
        Ok(())
    }
}

impl NodeSource for LedgerStore {
    type Error = LedgerReadError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let mut hash = [0; 32];
        self.node_file(level)?
            .read(index * 32, &mut hash)
            .map_err(|_| LedgerReadError::Missing(format!("merkle node {level}/{index}")))?;
        Ok(hash)
    }
}
