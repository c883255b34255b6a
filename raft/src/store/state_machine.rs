//! The registry as openraft's state machine.
//!
//! The registry lives in memory; its durable form is the current snapshot,
//! stored in sled as one value holding the state, the applied log id and the
//! membership together (so they are always consistent). After a restart the
//! state is restored from the snapshot and openraft re-applies the log after
//! it, which is kept because the log is only ever purged up to a snapshot
//! that is already flushed. This is the design of openraft's `rocksstore-v2`,
//! and it keeps sled off the per-write path: with sled rows per write, three
//! nodes spent most of two cores in sled.
//!
//! The exception is the audit ledger, which grows without bound and so is not
//! kept in memory: `apply` writes its rows (events, Merkle nodes,
//! checkpoints) without syncing (see [`super::ledger`]); they are synced
//! before a snapshot is stored. A snapshot
//! sent to another node carries the state and those rows; the stored one
//! carries only the state, since the rows are already on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::ledger::{LedgerExport, LedgerStore};
use super::snapshot_bytes::SnapshotBytes;
use super::Flusher;
use crate::registry::{Registry, RegistryState};
use crate::types::{Entry, LogId, ProposalResult, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

const SNAPSHOT_KEY: &[u8] = b"current";

/// What a snapshot carries: the registry and the position it describes.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: RegistryState,
}

/// A stored snapshot: its meta, its encoded data, and how far into the
/// ledger's rows its state reaches.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
    ledger_size: u64,
    checkpoints_up_to: u64,
}

/// A snapshot as sent to another node: the state and the ledger rows it
/// names.
#[derive(Serialize, Deserialize)]
struct TransferSnapshot {
    data: Vec<u8>,
    ledger: LedgerExport,
}

/// The in-memory registry and the log position it reflects.
#[derive(Debug, Default)]
pub struct Applied {
    /// The registry.
    pub registry: Registry,
    /// The last applied entry.
    pub last_applied: Option<LogId>,
    /// The membership as of `last_applied`.
    pub membership: StoredMembership,
}

pub(super) struct Shared {
    snapshot_tree: sled::Tree,
    ledger: LedgerStore,
    pub(super) flusher: Flusher,
    /// std lock: nothing awaits while holding it.
    applied: RwLock<Applied>,
    /// Requests applied since the last snapshot was built or installed.
    requests_since_snapshot: AtomicU64,
}

/// The state machine. Clones share state; one clone is openraft's, others
/// serve reads (see [`StateView`]) and build snapshots.
#[derive(Clone)]
pub struct StateMachine {
    pub(super) shared: Arc<Shared>,
}

/// Read access to the applied registry for the API layer.
#[derive(Clone)]
pub struct StateView {
    shared: Arc<Shared>,
}

impl StateView {
    /// Read the applied state under the lock.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.shared.applied.read().expect("state lock poisoned")
    }

    /// The ledger's rows. Bound every read by a size read from the state.
    pub fn ledger(&self) -> &LedgerStore {
        &self.shared.ledger
    }

    /// Requests applied since the last snapshot; a node triggers a snapshot
    /// when this grows large, so that a restart replays a bounded log.
    pub fn requests_since_snapshot(&self) -> u64 {
        self.shared.requests_since_snapshot.load(Ordering::Relaxed)
    }
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&error)).into()
}

fn snapshot_write_error(meta: &SnapshotMeta, error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&error)).into()
}

impl StateMachine {
    pub(super) fn open(snapshot_tree: sled::Tree, ledger: LedgerStore, flusher: Flusher) -> Result<Self, StorageError> {
        let machine = Self {
            shared: Arc::new(Shared {
                snapshot_tree,
                ledger,
                flusher,
                applied: RwLock::new(Applied::default()),
                requests_since_snapshot: AtomicU64::new(0),
            }),
        };
        let stored = machine.stored_snapshot()?;
        // Rows past the stored snapshot were never synced on purpose; the
        // log's replay writes them again.
        let ledger_size = stored.as_ref().map_or(0, |stored| stored.ledger_size);
        machine.shared.ledger.keep(ledger_size).map_err(read_error)?;
        if let Some(stored) = stored {
            machine.restore(&stored.meta, &stored.data)?;
        }
        Ok(machine)
    }

    /// A handle for reads.
    pub fn view(&self) -> StateView {
        StateView { shared: self.shared.clone() }
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let Some(bytes) = self.shared.snapshot_tree.get(SNAPSHOT_KEY).map_err(read_error)? else {
            return Ok(None);
        };
        bincode::deserialize(&bytes).map(Some).map_err(read_error)
    }

    /// Replace the in-memory state with a snapshot's.
    fn restore(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let decoded: SnapshotData = bincode::deserialize(data).map_err(|e| snapshot_write_error(meta, e))?;
        // Check after read: the data is the state the meta names.
        assert_eq!(decoded.last_applied, meta.last_log_id, "snapshot data and meta disagree");
        let mut applied = self.shared.applied.write().expect("state lock poisoned");
        *applied = Applied {
            registry: Registry::from_state(decoded.state),
            last_applied: decoded.last_applied,
            membership: decoded.membership,
        };
        self.shared.requests_since_snapshot.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Store a snapshot durably: the log may be purged behind it afterwards.
    /// The flush also makes the ledger rows its state names durable.
    async fn store_snapshot(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        ledger_size: u64,
        checkpoints_up_to: u64,
    ) -> Result<(), StorageError> {
        // The ledger rows the snapshot names must be on disk before it is.
        self.shared.ledger.sync().map_err(|e| snapshot_write_error(meta, e))?;
        let stored = StoredSnapshot { meta: meta.clone(), data: data.to_vec(), ledger_size, checkpoints_up_to };
        let bytes = bincode::serialize(&stored).map_err(|e| snapshot_write_error(meta, e))?;
        self.shared.snapshot_tree.insert(SNAPSHOT_KEY, bytes).map_err(|e| snapshot_write_error(meta, e))?;
        self.shared.flusher.flush().await.map_err(|e| snapshot_write_error(meta, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Copy under the lock (short), encode outside it (off the apply path).
        let data = {
            let applied = self.shared.applied.read().expect("state lock poisoned");
            self.shared.requests_since_snapshot.store(0, Ordering::Relaxed);
            SnapshotData {
                last_applied: applied.last_applied,
                membership: applied.membership.clone(),
                state: applied.registry.to_state(),
            }
        };
        let ledger_size = data.state.ledger.size();
        let checkpoints_up_to = data.state.ledger.latest_checkpoint().map_or(0, |c| c.tree_size);
        let snapshot_id = match data.last_applied {
            // The state at an index is the same on every node, so the index
            // names the snapshot's content.
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.leader_id.node_id, id.index),
            None => "empty".to_owned(),
        };
        let meta =
            SnapshotMeta { last_log_id: data.last_applied, last_membership: data.membership.clone(), snapshot_id };
        let encoded = tokio::task::spawn_blocking(move || bincode::serialize(&data))
            .await
            .map_err(|e| snapshot_write_error(&meta, e))?
            .map_err(|e| snapshot_write_error(&meta, e))?;
        self.store_snapshot(&meta, &encoded, ledger_size, checkpoints_up_to).await?;
        // openraft uses only the meta of a built snapshot; what it sends
        // comes from `get_current_snapshot`.
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotBytes::default()) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.shared.applied.read().expect("state lock poisoned");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.shared.applied.write().expect("state lock poisoned");
        let mut results = Vec::new();
        let mut requests = 0;
        for entry in entries {
            let index = entry.log_id.index;
            assert!(applied.last_applied.is_none_or(|last| last.index < index), "entries applied out of order");
            let result = match &entry.payload {
                EntryPayload::Blank => ProposalResult::default(),
                EntryPayload::Normal(proposal) => {
                    requests += proposal.requests.len() as u64;
                    let registry = &mut applied.registry;
                    let responses = proposal.requests.iter().map(|request| registry.apply(request, index)).collect();
                    registry.seal_entry();
                    ProposalResult { responses }
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    let voters = membership.voter_ids().collect();
                    let learners = membership.learner_ids().collect();
                    applied.registry.apply_membership(index, voters, learners);
                    ProposalResult::default()
                }
            };
            applied.last_applied = Some(entry.log_id);
            results.push(result);
        }
        // Written under the lock: a reader that sees the new state finds its rows.
        let writes = applied.registry.take_writes();
        self.shared.ledger.write(&writes).map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)))?;
        self.shared.requests_since_snapshot.fetch_add(requests, Ordering::Relaxed);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBytes>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_bytes().map_err(|e| snapshot_write_error(meta, e))?;
        let transfer: TransferSnapshot = bincode::deserialize(&bytes).map_err(|e| snapshot_write_error(meta, e))?;
        let decoded: SnapshotData = bincode::deserialize(&transfer.data).map_err(|e| snapshot_write_error(meta, e))?;
        let ledger_size = decoded.state.ledger.size();
        let checkpoints_up_to = decoded.state.ledger.latest_checkpoint().map_or(0, |c| c.tree_size);
        // Rows first (synced), then the stored snapshot, then the memory: if the node dies between steps it
        // restarts from a stored snapshot whose rows are on disk.
        self.shared.ledger.import(&transfer.ledger).map_err(|e| snapshot_write_error(meta, e))?;
        self.store_snapshot(meta, &transfer.data, ledger_size, checkpoints_up_to).await?;
        self.restore(meta, &transfer.data)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(stored) = self.stored_snapshot()? else { return Ok(None) };
        let ledger = self.shared.ledger.clone();
        let (size, up_to, data) = (stored.ledger_size, stored.checkpoints_up_to, stored.data);
        // Built when a follower first reads it: openraft also calls this at
        // every start, for the meta alone, and the ledger is O(size). Rows
        // up to `size` never change while this node could be sending.
        let bytes = SnapshotBytes::lazy(move || {
            let export = ledger.export(size, up_to).map_err(std::io::Error::other)?;
            bincode::serialize(&TransferSnapshot { data, ledger: export }).map_err(std::io::Error::other)
        });
        Ok(Some(Snapshot { meta: stored.meta, snapshot: Box::new(bytes) }))
    }
}
