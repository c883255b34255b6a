//! The consistent-hash ring: each node owns a number of virtual points, an
//! agreement's walk starts at a point derived from its id.
//!
//! Points come from SplitMix64 over `(node id, vnode index)`: cheap (a ring
//! of 10,000 nodes rebuilds in milliseconds), spread well, and fixed by the
//! constants below, so every process on every machine builds the same ring.
//! A node's points depend on nothing but its id and its vnode count: adding
//! or removing a node never moves another node's points.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// Most virtual nodes one node may have.
pub const VNODES_MAX: u32 = 4096;
/// Capacity weight cap: a node counts as at most this many cores.
pub const WEIGHT_MAX: u64 = 16;

/// SplitMix64's finaliser: a bijection on `u64` with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring position of virtual node `index` of `node`.
pub fn vnode_point(node: u64, index: u32) -> u64 {
    mix(mix(node) ^ u64::from(index))
}

/// Where an agreement's walk starts: its id is a SHA3-256 digest already, so
/// its first eight bytes are uniformly spread.
pub fn key_point(id: &[u8; 32]) -> u64 {
    u64::from_be_bytes(id[..8].try_into().expect("eight bytes"))
}

/// Virtual nodes for a node with `cpu_millis` of CPU: `per_core` for each
/// whole core, at least one core's worth, at most [`WEIGHT_MAX`] cores' worth.
pub fn vnodes_for(per_core: u32, cpu_millis: u64) -> u32 {
    let cores = (cpu_millis / 1000).clamp(1, WEIGHT_MAX) as u32;
    per_core.saturating_mul(cores).clamp(1, VNODES_MAX)
}

/// The ring. Points are `(position, node)` so two nodes landing on the same
/// position (possible, if unlikely, in 64 bits) both keep theirs.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    points: BTreeSet<(u64, u64)>,
    vnodes: BTreeMap<u64, u32>,
    zones: BTreeMap<String, usize>,
    zone_of: BTreeMap<u64, String>,
}

impl Ring {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `node` with `vnodes` points in `zone` (replacing what it had).
    pub fn insert(&mut self, node: u64, vnodes: u32, zone: &str) {
        self.remove(node);
        let vnodes = vnodes.clamp(1, VNODES_MAX);
        self.points.extend((0..vnodes).map(|index| (vnode_point(node, index), node)));
        self.vnodes.insert(node, vnodes);
        *self.zones.entry(zone.to_owned()).or_default() += 1;
        self.zone_of.insert(node, zone.to_owned());
    }

    /// Remove `node` and its points.
    pub fn remove(&mut self, node: u64) {
        let Some(vnodes) = self.vnodes.remove(&node) else { return };
        for index in 0..vnodes {
            self.points.remove(&(vnode_point(node, index), node));
        }
        let zone = self.zone_of.remove(&node).expect("zone of a ring node");
        let count = self.zones.get_mut(&zone).expect("counted zone");
        *count -= 1;
        if *count == 0 {
            self.zones.remove(&zone);
        }
    }

    /// Whether `node` is on the ring.
    pub fn contains(&self, node: u64) -> bool {
        self.vnodes.contains_key(&node)
    }

    /// Physical nodes on the ring.
    pub fn node_count(&self) -> usize {
        self.vnodes.len()
    }

    /// Virtual points on the ring.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// Distinct zones of the nodes on the ring.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// Every point once, clockwise from `start` (inclusive), wrapping around.
    pub fn walk(&self, start: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let from = (Bound::Included((start, 0)), Bound::Unbounded);
        let to = (Bound::Unbounded, Bound::Excluded((start, 0)));
        self.points.range(from).chain(self.points.range(to)).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points are fixed by the constants: these values must never change, or
    /// placements committed by older nodes would no longer be explained.
    #[test]
    fn points_are_stable_across_processes() {
        // SplitMix64's published first output for seed 0.
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(vnode_point(1, 0), 0x5e41_ab08_7439_611e);
        assert_eq!(key_point(&[0xab; 32]), 0xabab_abab_abab_abab);
        assert_eq!(vnodes_for(64, 500), 64);
        assert_eq!(vnodes_for(64, 4_000), 256);
        assert_eq!(vnodes_for(64, 1_000_000), 64 * 16);
    }

    /// The walk visits every point once, starting at the first point at or
    /// after the start, and removal takes exactly a node's points.
    #[test]
    fn walk_and_remove() {
        let mut ring = Ring::new();
        ring.insert(1, 8, "a");
        ring.insert(2, 8, "b");
        ring.insert(3, 4, "b");
        assert_eq!((ring.point_count(), ring.node_count(), ring.zone_count()), (20, 3, 2));
        let start = vnode_point(2, 3);
        let walked: Vec<_> = ring.walk(start).collect();
        assert_eq!(walked.len(), 20);
        assert_eq!(walked[0], (start, 2));
        let distinct: BTreeSet<_> = walked.iter().collect();
        assert_eq!(distinct.len(), 20);
        ring.remove(2);
        assert_eq!((ring.point_count(), ring.node_count(), ring.zone_count()), (12, 2, 2));
        ring.remove(3);
        assert_eq!(ring.zone_count(), 1);
        assert!(ring.walk(start).all(|(_, node)| node == 1));
    }
}
