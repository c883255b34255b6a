//! The audit ledger's rows in sled: events, Merkle nodes, checkpoints.
//!
//! `apply` produces the rows ([`crate::ledger::LedgerWrites`]) and the state
//! machine writes them here after each batch. Rows are keyed by position, and
//! `apply` is deterministic, so re-applying the log after a restart rewrites
//! identical bytes; rows past the restored state are never read, because
//! every reader bounds itself by a size taken from the state. They become
//! durable with the next flush — in particular before a snapshot is stored,
//! so a stored snapshot never names a row that is not on disk.

use std::sync::{Arc, RwLock};

use docklock_proto::ledger::{chain_next, Checkpoint, CHAIN_START};
use docklock_proto::merkle::{self, Frontier, Hash, NodeSource};

use crate::ledger::LedgerWrites;

/// A ledger row is missing or unreadable.
#[derive(Debug, thiserror::Error)]
pub enum LedgerReadError {
    /// sled failed.
    #[error("ledger storage: {0}")]
    Sled(#[from] sled::Error),
    /// A row that the state says exists is absent or corrupt.
    #[error("ledger row {0} is missing or corrupt")]
    Missing(String),
}

/// Merkle nodes at this level and above are also kept in memory (about two
/// bytes per event), so a proof reads only its lowest levels from sled: on a
/// million events that took proof generation from ~20 sled reads to ~5.
const CACHED_LEVEL_MIN: u32 = 5;

/// The ledger's sled trees.
#[derive(Clone)]
pub struct LedgerStore {
    events: sled::Tree,
    nodes: sled::Tree,
    checkpoints: sled::Tree,
    /// `upper[l][i]` is node (CACHED_LEVEL_MIN + l, i); append-only.
    upper: Arc<RwLock<Vec<Vec<Hash>>>>,
}

fn node_key(level: u32, index: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&level.to_be_bytes());
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

impl LedgerStore {
    pub(super) fn open(db: &sled::Db) -> Result<Self, sled::Error> {
        let store = Self {
            events: db.open_tree("ledger_events")?,
            nodes: db.open_tree("ledger_nodes")?,
            checkpoints: db.open_tree("ledger_checkpoints")?,
            upper: Arc::default(),
        };
        let mut upper = Vec::new();
        for row in store.nodes.range(node_key(CACHED_LEVEL_MIN, 0)..) {
            let (key, hash) = row?;
            let (level, index) = parse_node_key(&key);
            cache_node(&mut upper, level, index, hash.as_ref().try_into().unwrap_or_default());
        }
        *store.upper.write().expect("ledger cache lock") = upper;
        Ok(store)
    }

    /// Write the rows of one apply batch.
    pub(super) fn write(&self, writes: &LedgerWrites) -> Result<(), sled::Error> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut events = sled::Batch::default();
        for (index, bytes, head) in &writes.events {
            // The chain head first, so any node can say its head at any size.
            events.insert(&index.to_be_bytes(), [head.as_slice(), bytes].concat());
        }
        let mut nodes = sled::Batch::default();
        let mut upper = self.upper.write().expect("ledger cache lock");
        for (level, index, hash) in &writes.nodes {
            nodes.insert(&node_key(*level, *index), hash);
            cache_node(&mut upper, *level, *index, *hash);
        }
        drop(upper);
        self.events.apply_batch(events)?;
        self.nodes.apply_batch(nodes)?;
        for checkpoint in &writes.checkpoints {
            let encoded = bincode::serialize(checkpoint).expect("checkpoint encodes");
            self.checkpoints.insert(checkpoint.tree_size.to_be_bytes(), encoded)?;
        }
        Ok(())
    }

    fn row(&self, index: u64) -> Result<sled::IVec, LedgerReadError> {
        self.events
            .get(index.to_be_bytes())?
            .filter(|row| row.len() > 32)
            .ok_or_else(|| LedgerReadError::Missing(format!("event {index}")))
    }

    /// The canonical bytes of event `index`.
    pub fn event(&self, index: u64) -> Result<Vec<u8>, LedgerReadError> {
        Ok(self.row(index)?[32..].to_vec())
    }

    /// The chain head after the first `size` events.
    pub fn chain_head(&self, size: u64) -> Result<Hash, LedgerReadError> {
        match size.checked_sub(1) {
            None => Ok(CHAIN_START),
            Some(last) => Ok(self.row(last)?[..32].try_into().expect("row holds a head")),
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

    /// Replace every row with an export's, rebuilding the Merkle nodes.
    pub(super) fn import(&self, export: &LedgerExport) -> Result<(), LedgerReadError> {
        self.events.clear()?;
        self.nodes.clear()?;
        self.checkpoints.clear()?;
        self.upper.write().expect("ledger cache lock").clear();
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
        Ok(())
    }
}

fn parse_node_key(key: &[u8]) -> (u32, u64) {
    let level = u32::from_be_bytes(key[..4].try_into().expect("node keys are 12 bytes"));
    let index = u64::from_be_bytes(key[4..12].try_into().expect("node keys are 12 bytes"));
    (level, index)
}

/// Remember an upper-level node. Nodes arrive in index order (appends, or a
/// replay rewriting the same hashes), so an index is at most one past the end.
fn cache_node(upper: &mut Vec<Vec<Hash>>, level: u32, index: u64, hash: Hash) {
    let Some(slot) = level.checked_sub(CACHED_LEVEL_MIN) else { return };
    let slot = slot as usize;
    if upper.len() <= slot {
        upper.resize_with(slot + 1, Vec::new);
    }
    let nodes = &mut upper[slot];
    match usize::try_from(index).ok() {
        Some(i) if i < nodes.len() => nodes[i] = hash,
        Some(i) if i == nodes.len() => nodes.push(hash),
        // A gap cannot happen with in-order rows; leave it to sled reads.
        _ => {}
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

impl NodeSource for LedgerStore {
    type Error = LedgerReadError;

    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        if let Some(slot) = level.checked_sub(CACHED_LEVEL_MIN) {
            let upper = self.upper.read().expect("ledger cache lock");
            let cached = upper.get(slot as usize).and_then(|nodes| nodes.get(usize::try_from(index).ok()?));
            if let Some(hash) = cached {
                return Ok(*hash);
            }
        }
        let row = self.nodes.get(node_key(level, index))?;
        row.and_then(|bytes| Hash::try_from(bytes.as_ref()).ok())
            .ok_or_else(|| LedgerReadError::Missing(format!("merkle node {level}/{index}")))
    }
}
