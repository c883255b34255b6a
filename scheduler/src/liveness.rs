//! Liveness: heartbeats are held in the leader's memory, and only the
//! changes they imply (`ready` → `down` after a TTL of silence, `down` →
//! `ready` on a fresh heartbeat) are committed.
//!
//! The heartbeat interval, and with it the TTL, grows with the number of
//! nodes so the leader receives at most `max_heartbeats_per_sec`. A new
//! leader starts a [`Liveness`] that counts every node as heard from at the
//! moment it took over: the previous leader's memory is gone, and marking the
//! whole cluster down for that would be the worst possible answer.

use std::collections::HashMap;

pub use docklock_proto::node::NodeStatus;

/// Heartbeat timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval in a small cluster, milliseconds.
    pub base_interval_ms: u64,
    /// Heartbeats per second the leader accepts in total.
    pub max_heartbeats_per_sec: u64,
    /// Intervals of silence after which a node is down.
    pub missed_intervals: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self { base_interval_ms: 1000, max_heartbeats_per_sec: 2000, missed_intervals: 3 }
    }
}

impl Timing {
    /// How often each of `nodes` nodes heartbeats.
    pub fn interval_ms(&self, nodes: usize) -> u64 {
        let spread = (nodes as u64).saturating_mul(1000).div_ceil(self.max_heartbeats_per_sec.max(1));
        self.base_interval_ms.max(spread)
    }

    /// Silence after which a node is down.
    pub fn ttl_ms(&self, nodes: usize) -> u64 {
        self.interval_ms(nodes).saturating_mul(self.missed_intervals.max(1))
    }
}

/// A status change the leader should commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The node has been silent longer than the TTL.
    Down(u64),
    /// A `down` node heartbeated again.
    Ready(u64),
}

/// The leader's memory of heartbeats. Times are milliseconds on any clock
/// that does not go backwards (the node passes a monotonic clock).
#[derive(Debug, Clone)]
pub struct Liveness {
    heard: HashMap<u64, u64>,
    since: u64,
}

impl Liveness {
    /// A fresh memory for a leadership that began at `now`: every node counts
    /// as heard from at `now`.
    pub fn new(now: u64) -> Self {
        Self { heard: HashMap::new(), since: now }
    }

    /// Record a heartbeat.
    pub fn heartbeat(&mut self, node: u64, now: u64) {
        let heard = self.heard.entry(node).or_insert(now);
        *heard = (*heard).max(now);
    }

    /// Forget a node (it left).
    pub fn forget(&mut self, node: u64) {
        self.heard.remove(&node);
    }

    /// When `node` was last heard from, as far as this leadership knows.
    pub fn last_heard(&self, node: u64) -> u64 {
        self.heard.get(&node).copied().unwrap_or(self.since)
    }

    /// Whether `node` actually heartbeated within `ttl` of `now` (the grace
    /// of a new leadership does not count: it keeps ready nodes ready, it
    /// does not bring down nodes back).
    pub fn heard_within(&self, node: u64, now: u64, ttl: u64) -> bool {
        self.heard.get(&node).is_some_and(|&at| now.saturating_sub(at) <= ttl)
    }

    /// The changes to commit, given each node's committed status.
    pub fn changes(&self, now: u64, ttl: u64, nodes: impl IntoIterator<Item = (u64, NodeStatus)>) -> Vec<Change> {
        nodes
            .into_iter()
            .filter_map(|(node, status)| match status {
                NodeStatus::Ready if now.saturating_sub(self.last_heard(node)) > ttl => Some(Change::Down(node)),
                NodeStatus::Down if self.heard_within(node, now, ttl) => Some(Change::Ready(node)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interval stays at the base until the node count would exceed the
    /// leader's heartbeat budget, then grows linearly.
    #[test]
    fn interval_grows_with_cluster_size() {
        let timing = Timing::default();
        assert_eq!(timing.interval_ms(3), 1000);
        assert_eq!(timing.interval_ms(2000), 1000);
        assert_eq!(timing.interval_ms(10_000), 5000);
        assert_eq!(timing.ttl_ms(10_000), 15_000);
        for nodes in [1, 10, 2000, 10_000, 1_000_000] {
            let rate = nodes as f64 * 1000.0 / timing.interval_ms(nodes) as f64;
            assert!(rate <= 2000.0 + 1e-9, "{nodes} nodes: {rate}/s");
        }
    }

    /// Silence past the TTL makes a ready node down; a heartbeat brings a
    /// down node back; a new leadership gives every ready node a fresh grace
    /// and does not revive down nodes.
    #[test]
    fn changes_follow_heartbeats() {
        let ttl = 3000;
        let mut liveness = Liveness::new(0);
        liveness.heartbeat(1, 500);
        liveness.heartbeat(2, 2500);
        let nodes = [(1, NodeStatus::Ready), (2, NodeStatus::Ready), (3, NodeStatus::Down), (4, NodeStatus::Left)];
        assert_eq!(liveness.changes(3000, ttl, nodes), []);
        assert_eq!(liveness.changes(3501, ttl, nodes), [Change::Down(1)]);
        assert_eq!(liveness.changes(5600, ttl, nodes), [Change::Down(1), Change::Down(2)]);
        liveness.heartbeat(3, 5000);
        assert!(liveness.changes(5600, ttl, nodes).contains(&Change::Ready(3)));
        liveness.heartbeat(4, 5000);
        assert!(!liveness.changes(5600, ttl, nodes).iter().any(|c| matches!(c, Change::Ready(4))), "left stays left");

        let fresh = Liveness::new(10_000);
        assert_eq!(fresh.changes(12_000, ttl, nodes), [], "grace after a leader change");
        assert_eq!(fresh.changes(13_001, ttl, nodes), [Change::Down(1), Change::Down(2)]);
    }
}
