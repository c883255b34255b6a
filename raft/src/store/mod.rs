//! Persistent Raft storage on sled: the log store and the state machine.
//!
//! One sled database per node, with three trees:
//! - `log`: entries keyed by big-endian index;
//! - `meta`: vote, committed id, last purged id, the node's identity;
//! - `snapshot`: the current snapshot: registry state, applied id and
//!   membership in one value, so they are always consistent;
//! - `ledger_checkpoints`: the audit ledger's checkpoints; its events and
//!   Merkle nodes are flat files under `ledger/` (see [`ledger`]).
//!
//! Durability: appends are acknowledged once their journal record is
//! durable, votes and truncations only after a durable sled flush (both
//! through the single [`Flusher`]; see [`journal`]). The state machine is in
//! memory and restored from the snapshot at start; openraft re-applies the
//! committed log after it (the committed id is saved). A snapshot is flushed before openraft
//! may purge the log behind it, so no entry the restored state needs is ever
//! purged.

mod flusher;
mod journal;
pub mod ledger;
mod log_store;
mod snapshot_bytes;
mod state_machine;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use flusher::Flusher;
pub use log_store::LogStore;
pub use snapshot_bytes::SnapshotBytes;
pub use state_machine::{StateMachine, StateView};

use crate::types::StorageError;

/// Tag stored at first open; a database written by another format is refused.
const FORMAT: &[u8] = b"docklock-store-v2";
const FORMAT_KEY: &[u8] = b"format";
const IDENTITY_KEY: &[u8] = b"identity";
/// The write-ahead journal's file, beside sled's (see [`journal`]).
const JOURNAL: &str = "raft-journal";
/// How long `open` retries while a previous handle still holds the file lock.
const OPEN_RETRY_MS: u64 = 5_000;

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled page cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { cache_bytes: 64 * 1024 * 1024 }
    }
}

/// Who this data directory belongs to, fixed at first start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster the data belongs to.
    pub cluster_id: String,
    /// The node id the data was written as.
    pub node_id: u64,
}

/// Errors opening the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// sled failed to open or read.
    #[error("cannot open sled database at {path}: {source}")]
    Sled {
        /// Database path.
        path: String,
        /// The cause.
        source: sled::Error,
    },
    /// The directory holds data of another format.
    #[error("data directory {path} holds an unknown store format {found:?}")]
    Format {
        /// Database path.
        path: String,
        /// The format tag found.
        found: String,
    },
    /// The stored state does not decode.
    #[error("data directory {path} holds corrupt state: {reason}")]
    Corrupt {
        /// Database path.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// An open store: both halves share one sled database.
pub struct Store {
    db: sled::Db,
    /// The log half, handed to openraft.
    pub log: LogStore,
    /// The state machine half, handed to openraft.
    pub state_machine: StateMachine,
}

impl Store {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Self, OpenError> {
        let path = dir.display().to_string();
        let sled_error = |source| OpenError::Sled { path: path.clone(), source };
        let db = open_with_retry(dir, config).map_err(sled_error)?;
        let meta = db.open_tree("meta").map_err(sled_error)?;
        match meta.get(FORMAT_KEY).map_err(sled_error)? {
            Some(found) if found.as_ref() != FORMAT => {
                return Err(OpenError::Format { path, found: String::from_utf8_lossy(&found).into_owned() })
            }
            Some(_) => {}
            None => {
                meta.insert(FORMAT_KEY, FORMAT).map_err(sled_error)?;
                db.flush().map_err(sled_error)?;
            }
        }
        let corrupt = |reason: String| OpenError::Corrupt { path: path.clone(), reason };
        let (journal, recovered) = journal::Journal::open(&dir.join(JOURNAL)).map_err(|e| corrupt(e.to_string()))?;
        let log_tree = db.open_tree("log").map_err(sled_error)?;
        log_store::replay(&log_tree, &meta, recovered).map_err(|e| corrupt(e.to_string()))?;
        let flusher = Flusher::new(db.clone(), dir, journal).map_err(|error| sled_error(sled::Error::Io(error)))?;
        let log = LogStore::new(log_tree, meta, flusher.clone());
        let ledger = ledger::LedgerStore::open(dir, &db).map_err(|e| corrupt(e.to_string()))?;
        let state_machine = StateMachine::open(db.open_tree("snapshot").map_err(sled_error)?, ledger, flusher)
            .map_err(|e| corrupt(e.to_string()))?;
        Ok(Self { db, log, state_machine })
    }

    /// The identity this data directory was stamped with, if any.
    pub fn identity(&self) -> Result<Option<Identity>, StorageError> {
        self.log.read_meta(IDENTITY_KEY)
    }

    /// Stamp the data directory with its identity, durably.
    pub async fn set_identity(&self, identity: &Identity) -> Result<(), StorageError> {
        self.log.write_meta_durably(IDENTITY_KEY, identity).await
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn open_with_retry(dir: &Path, config: &StoreConfig) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + Duration::from_millis(OPEN_RETRY_MS);
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // Only the Flusher flushes (see its docs).
            .flush_every_ms(None)
            .open();
        match opened {
            // A dropped Db releases its file lock asynchronously; a quick
            // restart in the same process can see it still held.
            Err(sled::Error::Io(error)) if is_lock_busy(&error) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// sled reports a held file lock as an `Other` error wrapping `WouldBlock`.
fn is_lock_busy(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock || error.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests;
