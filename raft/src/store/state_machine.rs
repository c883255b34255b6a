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

fn refused(reason: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot refused: {reason}"))
}

/// A snapshot's state, decoded and checked: bytes from disk or from a peer
/// are never taken as they are.
fn decode_state(data: &[u8]) -> std::io::Result<SnapshotData> {
    let decoded: SnapshotData = bincode::deserialize(data).map_err(|e| refused(e.to_string()))?;
    decoded.state.check().map_err(refused)?;
    Ok(decoded)
}

/// A snapshot received from a peer, decoded and checked: its state, and its
/// ledger rows against that state.
fn decode_transfer(bytes: &[u8]) -> std::io::Result<(TransferSnapshot, SnapshotData)> {
    let transfer: TransferSnapshot = bincode::deserialize(bytes).map_err(|e| refused(e.to_string()))?;
    let decoded = decode_state(&transfer.data)?;
    transfer.ledger.check(&decoded.state.ledger).map_err(refused)?;
    Ok((transfer, decoded))
}

/// The data is the state the meta names.
fn check_meta(meta: &SnapshotMeta, decoded: &SnapshotData) -> Result<(), StorageError> {
    if decoded.last_applied != meta.last_log_id || decoded.membership != meta.last_membership {
        return Err(snapshot_write_error(meta, refused("its data is not the state its meta names".to_owned())));
    }
    Ok(())
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
            let decoded = decode_state(&stored.data).map_err(|e| snapshot_write_error(&stored.meta, e))?;
            check_meta(&stored.meta, &decoded)?;
            machine.restore(decoded)?;
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

    /// Replace the in-memory state with a snapshot's (checked).
    fn restore(&self, decoded: SnapshotData) -> Result<(), StorageError> {
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
        // Checked when the last chunk is in, before openraft installs it: a
        // refusal there answers the sender, one from `install_snapshot`
        // stops this node's Raft. (So a good snapshot is decoded twice.)
        Ok(Box::new(SnapshotBytes::receiving(|bytes| decode_transfer(bytes).map(drop))))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_bytes().map_err(|e| snapshot_write_error(meta, e))?;
        let (transfer, decoded) = decode_transfer(&bytes).map_err(|e| snapshot_write_error(meta, e))?;
        check_meta(meta, &decoded)?;
        let ledger_size = decoded.state.ledger.size();
        let checkpoints_up_to = decoded.state.ledger.latest_checkpoint().map_or(0, |c| c.tree_size);
        // Rows first (synced), then the stored snapshot, then the memory: if the node dies between steps it
        // restarts from a stored snapshot whose rows are on disk.
        self.shared.ledger.import(&transfer.ledger).map_err(|e| snapshot_write_error(meta, e))?;
        self.store_snapshot(meta, &transfer.data, ledger_size, checkpoints_up_to).await?;
        self.restore(decoded)
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

#[cfg(test)]
mod tests {
    use openraft::testing::log_id;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::store::{Store, StoreConfig};
    use crate::types::{Command, Proposal, Request};

    fn puts(range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        let put = |i: u64| Request { session: None, command: Command::Put { key: format!("k{i}"), value: vec![1] } };
        range
            .map(|i| Entry {
                log_id: log_id(1, 1, i),
                payload: EntryPayload::Normal(Proposal { requests: vec![put(i)] }),
            })
            .collect()
    }

    /// A snapshot a peer sends whose parts do not fit together (ledger rows
    /// that are not the state's, data that is not the state its meta names)
    /// is refused when its last chunk is in and again at install, and the
    /// receiver keeps its state and its ledger rows.
    #[tokio::test]
    async fn a_snapshot_whose_parts_do_not_fit_is_refused_and_changes_nothing() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sender = Store::open(dir_a.path(), &StoreConfig::default()).unwrap().state_machine;
        sender.apply(puts(1..=20)).await.unwrap();
        sender.build_snapshot().await.unwrap();
        let snapshot = sender.get_current_snapshot().await.unwrap().unwrap();
        let good = snapshot.snapshot.into_bytes().unwrap();
        let mut receiver = Store::open(dir_b.path(), &StoreConfig::default()).unwrap().state_machine;
        receiver.apply(puts(1..=3)).await.unwrap();
        let before = receiver.view().read().registry.to_state();
        let head_before = receiver.view().ledger().chain_head(3).unwrap();

        let (transfer, _) = decode_transfer(&good).unwrap();
        let tampered = |change: &dyn Fn(&mut TransferSnapshot)| {
            let mut copy = TransferSnapshot { data: transfer.data.clone(), ledger: LedgerExport::default() };
            copy.ledger.events = transfer.ledger.events.clone();
            copy.ledger.checkpoints = transfer.ledger.checkpoints.clone();
            change(&mut copy);
            bincode::serialize(&copy).unwrap()
        };
        let cases = [
            ("an event dropped", tampered(&|t| drop(t.ledger.events.pop()))),
            ("an event changed", tampered(&|t| t.ledger.events[7][0] ^= 1)),
            ("undecodable data", tampered(&|t| t.data.truncate(10))),
        ];
        for (case, bytes) in &cases {
            let mut received = receiver.begin_receiving_snapshot().await.unwrap();
            received.write_all(bytes).await.unwrap();
            let refusal = received.shutdown().await.unwrap_err();
            assert!(refusal.to_string().contains("snapshot refused"), "{case}: {refusal}");
            let installed =
                receiver.install_snapshot(&snapshot.meta, Box::new(SnapshotBytes::ready(bytes.clone()))).await;
            assert!(installed.is_err(), "{case}: installed");
        }
        let mut other_meta = snapshot.meta.clone();
        other_meta.last_log_id = Some(log_id(1, 1, 19));
        let installed = receiver.install_snapshot(&other_meta, Box::new(SnapshotBytes::ready(good.clone()))).await;
        assert!(installed.unwrap_err().to_string().contains("not the state its meta names"));

        assert_eq!(receiver.view().read().registry.to_state(), before, "state unchanged");
        assert_eq!(receiver.view().ledger().chain_head(3).unwrap(), head_before, "rows unchanged");
        // The good one still installs.
        let mut received = receiver.begin_receiving_snapshot().await.unwrap();
        received.write_all(&good).await.unwrap();
        received.shutdown().await.unwrap();
        receiver.install_snapshot(&snapshot.meta, received).await.unwrap();
        assert_eq!(receiver.view().read().registry.ledger().size(), 20);
    }
}
