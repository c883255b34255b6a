//! The audit ledger's replicated state: the pure half.
//!
//! The registry appends one [`Event`] per state change. This module keeps
//! what `apply` needs to extend and check the ledger — the chain head, the
//! Merkle frontier (one hash per set bit of the size), the roots of recent
//! sizes and the latest checkpoint — and hands everything that must be
//! stored (event bytes, completed Merkle nodes, checkpoints) to the store as
//! [`LedgerWrites`]. So `apply` stays pure; the store writes the rows (see
//! `store::ledger`), keyed by position, so replaying an entry rewrites the
//! same bytes.

use docklock_proto::ledger::{chain_next, Checkpoint, Event, EventBody, CHAIN_START};
use docklock_proto::merkle::{self, Frontier, Hash};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};

/// Tree sizes whose root and chain head stay known to `apply`, so that a
/// checkpoint signed a little while ago can still be checked. A leader
/// checkpoints its applied size and proposes at once, so only a few entries
/// separate the two.
pub const RECENT_SIZES_MAX: usize = 4096;

/// Rows for the store to write after applying.
#[derive(Debug, Default, Clone)]
pub struct LedgerWrites {
    /// New events: position, canonical bytes and the chain head after it.
    pub events: Vec<(u64, Vec<u8>, Hash)>,
    /// Newly completed Merkle nodes: level, index, hash.
    pub nodes: Vec<(u32, u64, Hash)>,
    /// Newly recorded checkpoints.
    pub checkpoints: Vec<Checkpoint>,
}

impl LedgerWrites {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.nodes.is_empty() && self.checkpoints.is_empty()
    }
}

/// The ledger's head state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LedgerState {
    size: u64,
    frontier: Vec<Hash>,
    head: Hash,
    /// Root and chain head at the end of recent entries, by tree size.
    recent: OrdMap<u64, (Hash, Hash)>,
    latest_checkpoint: Option<Checkpoint>,
}

impl Default for LedgerState {
    fn default() -> Self {
        let mut recent = OrdMap::new();
        recent.insert(0, (merkle::empty_root(), CHAIN_START));
        Self { size: 0, frontier: Vec::new(), head: CHAIN_START, recent, latest_checkpoint: None }
    }
}

/// Why a checkpoint is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckpointError {
    /// Not newer than the latest.
    #[error("checkpoint size {size} is not larger than the latest checkpoint's {latest}")]
    NotNewer {
        /// Its size.
        size: u64,
        /// The latest recorded size.
        latest: u64,
    },
    /// Its root or head is not the ledger's at that size (or the size is not
    /// a recent entry boundary).
    #[error("checkpoint does not match the ledger at size {0} (or that size is no longer recent)")]
    Mismatch(u64),
}

impl LedgerState {
    /// Why this state, read from a snapshot a peer sent or from disk, cannot
    /// be used: every other method takes its shape as given.
    pub fn check(&self) -> Result<(), String> {
        Frontier::from_parts(self.size, self.frontier.clone()).map_err(|e| format!("ledger state: {e}"))?;
        if self.recent.keys().next_back().is_some_and(|&size| size > self.size) {
            return Err(format!("ledger state of {} events remembers a later size", self.size));
        }
        Ok(())
    }

    fn frontier(&self) -> Frontier {
        Frontier::from_parts(self.size, self.frontier.clone()).expect("stored frontier matches its size")
    }

    /// Number of events.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chain head after the last event.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Merkle root over every event.
    pub fn root(&self) -> Hash {
        self.frontier().root()
    }

    /// The latest recorded checkpoint.
    pub fn latest_checkpoint(&self) -> Option<&Checkpoint> {
        self.latest_checkpoint.as_ref()
    }

    /// Append an event; returns its position.
    pub fn append(&mut self, raft_index: u64, body: EventBody, writes: &mut LedgerWrites) -> u64 {
        let index = self.size;
        let bytes = Event { index, raft_index, body }.canonical();
        let hashes = std::mem::take(&mut self.frontier);
        let mut frontier = Frontier::from_parts(self.size, hashes).expect("stored frontier matches its size");
        writes.nodes.extend(frontier.append(merkle::leaf_hash(&bytes)));
        self.head = chain_next(&self.head, index, &bytes);
        (self.size, self.frontier) = frontier.into_parts();
        writes.events.push((index, bytes, self.head));
        index
    }

    /// Mark the end of a log entry: remember this size's root and head.
    pub fn seal(&mut self) {
        if self.recent.get(&self.size).is_none() {
            self.recent.insert(self.size, (self.root(), self.head));
            while self.recent.len() > RECENT_SIZES_MAX {
                let oldest = *self.recent.keys().next().expect("recent is not empty");
                self.recent.remove(&oldest);
            }
        }
    }

    /// Record `checkpoint` if it is newer than the latest and matches the
    /// ledger (its signature and signer are the caller's to check).
    pub fn record_checkpoint(
        &mut self,
        checkpoint: &Checkpoint,
        writes: &mut LedgerWrites,
    ) -> Result<(), CheckpointError> {
        let latest = self.latest_checkpoint.as_ref().map_or(0, |c| c.tree_size);
        if checkpoint.tree_size <= latest {
            return Err(CheckpointError::NotNewer { size: checkpoint.tree_size, latest });
        }
        match self.recent.get(&checkpoint.tree_size) {
            Some((root, head)) if *root == checkpoint.root && *head == checkpoint.chain_head => {}
            _ => return Err(CheckpointError::Mismatch(checkpoint.tree_size)),
        }
        self.latest_checkpoint = Some(checkpoint.clone());
        writes.checkpoints.push(checkpoint.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use docklock_proto::merkle::MemoryTree;

    fn put(key: &str) -> EventBody {
        EventBody::VariableDeleted { key: key.into() }
    }

    /// A state whose frontier does not fit its size (a hostile or corrupt
    /// snapshot) is refused, not left to panic at the next append.
    #[test]
    fn a_frontier_that_does_not_fit_its_size_is_refused() {
        let mut ledger = LedgerState::default();
        let mut writes = LedgerWrites::default();
        for key in ["a", "b", "c"] {
            ledger.append(1, put(key), &mut writes);
            ledger.seal();
        }
        assert_eq!(ledger.check(), Ok(()));
        let mut bad = ledger.clone();
        bad.size = 4;
        assert!(bad.check().unwrap_err().contains("frontier of size 4 needs 1 hashes, got 2"));
        let mut ahead = ledger.clone();
        ahead.recent.insert(9, (merkle::empty_root(), CHAIN_START));
        assert!(ahead.check().is_err(), "a remembered size past the ledger");
    }

    /// The frontier-based root equals a tree built from the written events,
    /// and the written nodes are the tree's nodes.
    #[test]
    fn appends_match_a_full_tree() {
        let mut ledger = LedgerState::default();
        let mut writes = LedgerWrites::default();
        let mut tree = MemoryTree::default();
        for i in 0..37 {
            ledger.append(i, put(&format!("k{i}")), &mut writes);
            ledger.seal();
        }
        for (_, bytes, _) in &writes.events {
            tree.push(bytes);
        }
        assert_eq!(ledger.size(), 37);
        assert_eq!(ledger.root(), tree.root());
        for (level, index, hash) in &writes.nodes {
            use docklock_proto::merkle::NodeSource;
            assert_eq!(tree.node(*level, *index).unwrap(), *hash);
        }
    }

    #[test]
    fn checkpoints_must_match_a_recent_size_and_grow() {
        let mut ledger = LedgerState::default();
        let mut writes = LedgerWrites::default();
        ledger.append(1, put("a"), &mut writes);
        ledger.seal();
        let key = docklock_proto::crypto::KeyPair::generate(docklock_proto::crypto::Algorithm::MlDsa65);
        let make = |size, root, head| Checkpoint {
            cluster_id: "c".into(),
            tree_size: size,
            root,
            chain_head: head,
            signer_node: 1,
            signer_key: key.public().clone(),
            signature: key.sign(b"not checked here"),
        };
        let good = make(1, ledger.root(), ledger.head());
        let mut wrong_root = good.clone();
        wrong_root.root[0] ^= 1;
        assert_eq!(ledger.record_checkpoint(&wrong_root, &mut writes), Err(CheckpointError::Mismatch(1)));
        assert_eq!(
            ledger.record_checkpoint(&make(5, ledger.root(), ledger.head()), &mut writes),
            Err(CheckpointError::Mismatch(5))
        );
        ledger.record_checkpoint(&good, &mut writes).unwrap();
        assert!(matches!(ledger.record_checkpoint(&good, &mut writes), Err(CheckpointError::NotNewer { .. })));
        assert_eq!(writes.checkpoints.len(), 1);
    }
}
