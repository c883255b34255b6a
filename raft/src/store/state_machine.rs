//! The registry as openraft's state machine, persisted in sled.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};

use super::Flusher;
use crate::registry::{Registry, RegistryState};
use crate::table::RowChange;
use crate::types::{Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership, TypeConfig};

/// State rows whose key starts with this byte are the machine's own metadata;
/// all other rows belong to the registry.
const META_ROW: u8 = 0;
const APPLIED_KEY: &[u8] = b"\0applied";
const MEMBERSHIP_KEY: &[u8] = b"\0membership";
const SNAPSHOT_KEY: &[u8] = b"current";

/// What a snapshot carries: the registry and the position it describes.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: RegistryState,
}

/// A stored snapshot: its meta and its encoded data.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
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
    state_tree: sled::Tree,
    snapshot_tree: sled::Tree,
    pub(super) flusher: Flusher,
    /// std lock: nothing awaits while holding it.
    applied: RwLock<Applied>,
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
}

fn sm_read_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&error)).into()
}

fn sm_write_error(error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&error)).into()
}

fn snapshot_write_error(meta: &SnapshotMeta, error: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&error)).into()
}

impl StateMachine {
    pub(super) fn open(
        state_tree: sled::Tree,
        snapshot_tree: sled::Tree,
        flusher: Flusher,
    ) -> Result<Self, StorageError> {
        let mut rows = Vec::new();
        let mut last_applied = None;
        let mut membership = StoredMembership::default();
        for item in state_tree.iter() {
            let (key, value) = item.map_err(sm_read_error)?;
            match key.as_ref() {
                APPLIED_KEY => last_applied = bincode::deserialize(&value).map_err(sm_read_error)?,
                MEMBERSHIP_KEY => membership = bincode::deserialize(&value).map_err(sm_read_error)?,
                other if other.first() == Some(&META_ROW) => {}
                _ => rows.push((key, value)),
            }
        }
        let registry =
            Registry::from_rows(rows.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))).map_err(sm_read_error)?;
        let machine = Self {
            shared: Arc::new(Shared {
                state_tree,
                snapshot_tree,
                flusher,
                applied: RwLock::new(Applied { registry, last_applied, membership }),
            }),
        };
        machine.catch_up_with_stored_snapshot()?;
        Ok(machine)
    }

    /// A handle for reads.
    pub fn view(&self) -> StateView {
        StateView { shared: self.shared.clone() }
    }

    /// Snapshots are flushed before the log is purged, so a stored snapshot
    /// is never ahead of the durable state; this restores it if it is anyway
    /// (a store written by a build without that ordering).
    fn catch_up_with_stored_snapshot(&self) -> Result<(), StorageError> {
        let Some(stored) = self.stored_snapshot()? else {
            return Ok(());
        };
        let applied_index = self.view().read().last_applied.map(|id| id.index);
        if stored.meta.last_log_id.map(|id| id.index) > applied_index {
            tracing::warn!(snapshot = %stored.meta.snapshot_id, "state behind its snapshot; restoring the snapshot");
            self.restore(&stored.meta, &stored.data)?;
        }
        Ok(())
    }

    fn stored_snapshot(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let Some(bytes) = self.shared.snapshot_tree.get(SNAPSHOT_KEY).map_err(sm_read_error)? else {
            return Ok(None);
        };
        bincode::deserialize(&bytes).map(Some).map_err(sm_read_error)
    }

    fn write_rows(&self, changes: Vec<RowChange>, applied: &Applied, clear: bool) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        if clear {
            for item in self.shared.state_tree.iter().keys() {
                batch.remove(item.map_err(sm_read_error)?);
            }
        }
        for change in changes {
            match change.value {
                Some(value) => batch.insert(change.key, value),
                None => batch.remove(change.key),
            }
        }
        batch.insert(APPLIED_KEY, bincode::serialize(&applied.last_applied).map_err(sm_write_error)?);
        batch.insert(MEMBERSHIP_KEY, bincode::serialize(&applied.membership).map_err(sm_write_error)?);
        // One batch: the rows and the position they describe land together.
        self.shared.state_tree.apply_batch(batch).map_err(sm_write_error)
    }

    fn restore(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let decoded: SnapshotData = bincode::deserialize(data).map_err(|e| snapshot_write_error(meta, e))?;
        assert_eq!(decoded.last_applied, meta.last_log_id, "snapshot data and meta disagree");
        let mut applied = self.shared.applied.write().expect("state lock poisoned");
        *applied = Applied {
            registry: Registry::from_state(decoded.state),
            last_applied: decoded.last_applied,
            membership: decoded.membership,
        };
        let rows = applied.registry.all_rows();
        self.write_rows(rows, &applied, true)
    }

    async fn store_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let stored = StoredSnapshot { meta: meta.clone(), data: data.to_vec() };
        let bytes = bincode::serialize(&stored).map_err(|e| snapshot_write_error(meta, e))?;
        self.shared.snapshot_tree.insert(SNAPSHOT_KEY, bytes).map_err(|e| snapshot_write_error(meta, e))?;
        self.shared.flusher.flush().await.map_err(|e| snapshot_write_error(meta, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Copy under the lock (short), encode outside it (off the apply path).
        let (last_applied, membership, state) = {
            let applied = self.view().read().to_owned_parts();
            applied
        };
        let snapshot_id = match last_applied {
            // The state at an index is the same on every node, so the index
            // names the snapshot's content.
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.leader_id.node_id, id.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership.clone(), snapshot_id };
        let data = SnapshotData { last_applied, membership, state };
        let encoded = tokio::task::spawn_blocking(move || bincode::serialize(&data))
            .await
            .map_err(|e| snapshot_write_error(&meta, e))?
            .map_err(|e| snapshot_write_error(&meta, e))?;
        self.store_snapshot(&meta, &encoded).await?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(encoded)) })
    }
}

impl Applied {
    fn to_owned_parts(&self) -> (Option<LogId>, StoredMembership, RegistryState) {
        (self.last_applied, self.membership.clone(), self.registry.to_state())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.view().read().to_owned_head();
        Ok(applied)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.shared.applied.write().expect("state lock poisoned");
        let mut responses = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            assert!(applied.last_applied.is_none_or(|last| last.index < index), "entries applied out of order");
            let response = match &entry.payload {
                EntryPayload::Blank => Response { revision: index, ..Response::default() },
                EntryPayload::Normal(request) => applied.registry.apply(index, request),
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response { revision: index, ..Response::default() }
                }
            };
            applied.last_applied = Some(entry.log_id);
            responses.push(response);
        }
        let changes = applied.registry.take_changes();
        self.write_rows(changes, &applied, false)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        self.restore(meta, &data)?;
        self.store_snapshot(meta, &data).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .stored_snapshot()?
            .map(|stored| Snapshot { meta: stored.meta, snapshot: Box::new(Cursor::new(stored.data)) }))
    }
}

impl Applied {
    fn to_owned_head(&self) -> (Option<LogId>, StoredMembership) {
        (self.last_applied, self.membership.clone())
    }
}
