//! The Raft log and vote on sled.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::journal::{Journal, Recovered};
use super::Flusher;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"last_purged";

/// The log store. Cheap to clone: clones share the trees, and a clone is the
/// log reader openraft uses for replication.
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&error)).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&error)).into()
}

impl LogStore {
    pub(super) fn new(log: sled::Tree, meta: sled::Tree, flusher: Flusher) -> Self {
        Self { log, meta, flusher }
    }

    pub(super) fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        read_meta(&self.meta, key)
    }

    fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = bincode::serialize(value).map_err(write_error)?;
        self.meta.insert(key, bytes).map_err(write_error)?;
        Ok(())
    }

    pub(super) async fn write_meta_durably<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        self.write_meta(key, value)?;
        self.flusher.flush().await.map_err(write_error)
    }

    /// Write entries to sled now, and call `done` once they are durable.
    pub(super) fn write_entries(
        &self,
        entries: impl IntoIterator<Item = Entry>,
        done: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> Result<(), StorageError> {
        // One insert per entry, not a `sled::Batch`: sled 0.34 writes its
        // buffer to disk (`pwrite` + `sync_file_range`) before and after
        // every batch, which contended with the journal's `fdatasync` on
        // every append. Atomicity is not needed: sled recovers a prefix of
        // its inserts, and the journal restores every acknowledged entry.
        let mut serialized = Vec::new();
        for entry in entries {
            let bytes = bincode::serialize(&entry).map_err(write_error)?;
            self.log.insert(index_key(entry.log_id.index), bytes.as_slice()).map_err(write_error)?;
            serialized.push(bytes);
        }
        let record = Journal::record(&serialized).map_err(write_error)?;
        self.flusher.append_then(record, done);
        Ok(())
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(PURGED_KEY)
    }
}

fn read_meta<T: DeserializeOwned>(meta: &sled::Tree, key: &[u8]) -> Result<Option<T>, StorageError> {
    let Some(bytes) = meta.get(key).map_err(read_error)? else {
        return Ok(None);
    };
    bincode::deserialize(&bytes).map(Some).map_err(read_error)
}

/// Write entries recovered from the journal back into the `log` tree, in
/// order (later ones overwrite earlier ones at the same index), except those
/// at or below the purge point `meta` records; the caller then checkpoints.
pub(super) fn replay(log: &sled::Tree, meta: &sled::Tree, recovered: Recovered) -> Result<(), StorageError> {
    let purged = read_meta::<LogId>(meta, PURGED_KEY)?.map(|id| id.index);
    let mut batch = sled::Batch::default();
    for bytes in recovered {
        let entry: Entry = bincode::deserialize(&bytes).map_err(read_error)?;
        if purged.is_none_or(|purged| entry.log_id.index > purged) {
            batch.insert(&index_key(entry.log_id.index), bytes);
        }
    }
    log.apply_batch(batch).map_err(write_error)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(read_error)?;
            let entry: Entry = bincode::deserialize(&bytes).map_err(read_error)?;
            // Check after read: the log has no holes.
            if let Some(previous) = entries.last() {
                let previous: &Entry = previous;
                assert_eq!(previous.log_id.index + 1, entry.log_id.index, "hole in the raft log");
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_log_id = match self.log.last().map_err(read_error)? {
            Some((_, bytes)) => Some(bincode::deserialize::<Entry>(&bytes).map_err(read_error)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE_KEY, vote)?;
        self.flusher.flush().await.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: saving it lets a restart apply committed entries at
        // once; losing it in a crash means a follower re-learns the commit
        // index from the leader, and a leader that restarts into its old
        // term must not trust it for reads (the node's read barrier reads at
        // its last log index instead).
        self.write_meta(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // openraft counts the entries as persisted only once called back;
        // meanwhile it goes on (a leader replicates them): see `Flusher`.
        self.write_entries(entries, move |result| callback.log_io_completed(result))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(read_error)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_error)?;
        self.flusher.flush().await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: if the removal below is lost in a
        // crash, stale entries at or below it are never read, because
        // openraft reads only above the last purged id.
        self.write_meta(PURGED_KEY, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(read_error)?;
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(write_error)
    }
}
