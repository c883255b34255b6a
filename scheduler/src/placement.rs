//! The placement walk: from an agreement's point on the ring, take `k`
//! distinct eligible physical nodes, preferring zones not used yet, and say
//! why every node visited was taken or passed over.
//!
//! Re-placement after a node is lost keeps the surviving replicas (`keep`)
//! and fills the gap by walking on from the same point, so only the lost
//! replica moves and a node that returns does not take work back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use docklock_proto::agreement::Constraints;
use docklock_proto::node::{Capacity, NodeType, MACHINE_LABEL};
use serde::{Deserialize, Serialize};

use crate::ring::Ring;

/// Most steps an explanation keeps (the walk itself is not cut short).
pub const STEPS_MAX: usize = 256;

/// What the walk needs to know about one node.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Whether the node is `ready` (registered, heartbeating, not removed).
    pub ready: bool,
    /// Whether it is draining.
    pub draining: bool,
    /// Its type.
    pub node_type: NodeType,
    /// Its zone.
    pub zone: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
    /// What it offers.
    pub capacity: &'a Capacity,
}

/// One placement question.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The walk's start ([`crate::ring::key_point`] of the agreement id).
    pub key: u64,
    /// How many distinct nodes the agreement needs.
    pub replicas: u32,
    /// Where it may run.
    pub constraints: &'a Constraints,
    /// Memory each replica needs (its limit), MiB.
    pub memory_mib: u64,
    /// Replicas that stay where they are.
    pub keep: &'a [u64],
    /// Nodes that held the agreement and lost it: chosen again only when no
    /// other eligible node is left.
    pub avoid: &'a BTreeSet<u64>,
}

/// Why a node was passed over.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Skip {
    /// Not `ready`.
    NotReady,
    /// Draining.
    Draining,
    /// Held this agreement before and lost it.
    HeldBefore,
    /// Its zone is not allowed.
    Zone,
    /// Its type is not allowed.
    NodeType,
    /// It lacks a required label value.
    Label,
    /// It has less memory than one replica needs.
    Memory,
    /// Its machine class differs from the replicas' (a root holds only
    /// among nodes of one class).
    MachineClass,
    /// It is not registered (a ring point without a node record).
    Unknown,
}

impl Skip {
    /// In words.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::NotReady => "not ready",
            Self::Draining => "draining",
            Self::HeldBefore => "held this agreement before",
            Self::Zone => "zone not allowed",
            Self::NodeType => "node type not allowed",
            Self::Label => "missing a required label",
            Self::Memory => "too little memory",
            Self::MachineClass => "another machine class",
            Self::Unknown => "not registered",
        }
    }
}

/// What the walk did with one physical node (first visit only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A surviving replica, kept.
    Kept,
    /// Chosen, in a zone not used before.
    Chosen,
    /// Chosen after the walk found no node in an unused zone.
    ChosenSharingZone,
    /// Chosen although it held the agreement before: no other node is left.
    ChosenAgain,
    /// Eligible, but its zone was used and enough nodes were found elsewhere.
    SpareSameZone,
    /// Not eligible.
    Skipped(Skip),
}

/// One visited node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The ring position where the walk first met the node.
    pub point: u64,
    /// The node.
    pub node: u64,
    /// What happened.
    pub decision: Decision,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Every replica after placement: the kept ones first, then new ones in
    /// walk order. Shorter than `replicas` when not enough nodes qualify.
    pub nodes: Vec<u64>,
    /// The nodes newly chosen by this walk.
    pub added: Vec<u64>,
    /// The walk, first visit of each node, at most [`STEPS_MAX`].
    pub steps: Vec<Step>,
    /// Steps not kept in `steps`.
    pub steps_omitted: usize,
    /// How many visited nodes were skipped for each reason.
    pub skipped: BTreeMap<Skip, usize>,
}

impl Placement {
    /// Whether every replica found a node.
    pub fn complete(&self, replicas: u32) -> bool {
        self.nodes.len() >= replicas as usize
    }

    /// Why the placement is short, in words: which constraint excluded how
    /// many nodes.
    pub fn shortfall(&self, replicas: u32) -> Option<String> {
        if self.complete(replicas) {
            return None;
        }
        let mut reason = format!("needs {replicas} nodes, {} eligible", self.nodes.len());
        if !self.skipped.is_empty() {
            let parts: Vec<String> =
                self.skipped.iter().map(|(skip, count)| format!("{count} {}", skip.describe())).collect();
            reason.push_str(&format!(" ({})", parts.join(", ")));
        }
        Some(reason)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kept => f.write_str("kept (surviving replica)"),
            Self::Chosen => f.write_str("chosen"),
            Self::ChosenSharingZone => f.write_str("chosen (no node left in an unused zone)"),
            Self::ChosenAgain => f.write_str("chosen again (it held this agreement before; no other node is left)"),
            Self::SpareSameZone => f.write_str("eligible, passed over: its zone is used"),
            Self::Skipped(skip) => write!(f, "skipped: {}", skip.describe()),
        }
    }
}

/// Whether `candidate` may take one replica of `request`.
pub fn eligibility(request: &Request<'_>, candidate: &Candidate<'_>) -> Result<(), Skip> {
    let constraints = request.constraints;
    if !candidate.ready {
        return Err(Skip::NotReady);
    }
    if candidate.draining {
        return Err(Skip::Draining);
    }
    if !constraints.zones.is_empty() && !constraints.zones.iter().any(|zone| zone == candidate.zone) {
        return Err(Skip::Zone);
    }
    if !constraints.node_types.is_empty() && !constraints.node_types.iter().any(|t| t == candidate.node_type.name()) {
        return Err(Skip::NodeType);
    }
    if constraints.labels.iter().any(|(key, value)| candidate.labels.get(key) != Some(value)) {
        return Err(Skip::Label);
    }
    if candidate.capacity.memory_mib < request.memory_mib {
        return Err(Skip::Memory);
    }
    Ok(())
}

struct Walk {
    placement: Placement,
}

impl Walk {
    fn step(&mut self, point: u64, node: u64, decision: Decision) {
        if let Decision::Skipped(skip) = &decision {
            *self.placement.skipped.entry(skip.clone()).or_default() += 1;
        }
        if self.placement.steps.len() < STEPS_MAX {
            self.placement.steps.push(Step { point, node, decision });
        } else {
            self.placement.steps_omitted += 1;
        }
    }
}

/// Place `request` on `ring`; `lookup` describes a node by id (`None`: not
/// registered). Pure: the same ring, request and node descriptions give the
/// same answer in every process.
///
/// The walk visits physical nodes in ring order and stops once it has
/// `replicas` nodes in distinct zones, or enough eligible nodes and has seen
/// every zone on the ring (no unused zone can still turn up), or has seen
/// every node.
///
/// All replicas share one machine class (the [`MACHINE_LABEL`] label; no
/// label is a class of its own): that of the kept replicas if any, else
/// the class of the first eligible node on the walk, else the first class
/// in walk order that can hold every replica. When none can, the answer is
/// the first class's short placement, whose shortfall counts the nodes of
/// other classes.
pub fn place<'a>(ring: &Ring, request: &Request<'_>, lookup: impl Fn(u64) -> Option<Candidate<'a>>) -> Placement {
    if let Some(&kept) = request.keep.first() {
        let class = lookup(kept).map(|candidate| candidate.labels.get(MACHINE_LABEL).cloned());
        return place_in(ring, request, &lookup, class.as_ref());
    }
    // The common case, one class: one walk.
    let first = place_in(ring, request, &lookup, None);
    if first.complete(request.replicas) || !first.skipped.contains_key(&Skip::MachineClass) {
        return first;
    }
    // Other classes, in the order the walk meets their first eligible node.
    let mut classes: Vec<Option<String>> = Vec::new();
    let mut seen = BTreeSet::new();
    for (_, node) in ring.walk(request.key) {
        if seen.len() >= ring.node_count() || classes.len() >= CLASSES_TRIED_MAX {
            break;
        }
        if !seen.insert(node) {
            continue;
        }
        let Some(candidate) = lookup(node) else { continue };
        let class = candidate.labels.get(MACHINE_LABEL).cloned();
        if eligibility(request, &candidate).is_ok() && !classes.contains(&class) {
            classes.push(class);
        }
    }
    for class in classes.iter().skip(1) {
        let placement = place_in(ring, request, &lookup, Some(class));
        if placement.complete(request.replicas) {
            return placement;
        }
    }
    first
}

/// Most machine classes one placement tries: a cluster has a handful.
const CLASSES_TRIED_MAX: usize = 16;

/// [`place`] within one machine class: `class` is `None` for the class of
/// the first eligible node the walk meets, `Some(None)` for nodes without
/// the label.
fn place_in<'a>(
    ring: &Ring,
    request: &Request<'_>,
    lookup: &impl Fn(u64) -> Option<Candidate<'a>>,
    class: Option<&Option<String>>,
) -> Placement {
    let mut class: Option<Option<String>> = class.cloned();
    let wanted = request.replicas as usize;
    let mut walk = Walk {
        placement: Placement {
            nodes: request.keep.to_vec(),
            added: Vec::new(),
            steps: Vec::new(),
            steps_omitted: 0,
            skipped: BTreeMap::new(),
        },
    };
    let mut zones_used: BTreeSet<&str> = request.keep.iter().filter_map(|&n| lookup(n)).map(|c| c.zone).collect();
    let mut zones_seen: BTreeSet<&str> = BTreeSet::new();
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    let mut spares: Vec<(u64, u64)> = Vec::new();
    let mut returning: Vec<u64> = Vec::new();
    for (point, node) in ring.walk(request.key) {
        let found = walk.placement.nodes.len();
        if found >= wanted || (found + spares.len() >= wanted && zones_seen.len() >= ring.zone_count()) {
            break;
        }
        if seen.len() >= ring.node_count() {
            break;
        }
        if !seen.insert(node) {
            continue;
        }
        if request.keep.contains(&node) {
            walk.step(point, node, Decision::Kept);
            continue;
        }
        let Some(candidate) = lookup(node) else {
            walk.step(point, node, Decision::Skipped(Skip::Unknown));
            continue;
        };
        zones_seen.insert(candidate.zone);
        if let Err(skip) = eligibility(request, &candidate) {
            walk.step(point, node, Decision::Skipped(skip));
            continue;
        }
        let its_class = candidate.labels.get(MACHINE_LABEL);
        match &class {
            None => class = Some(its_class.cloned()),
            Some(wanted_class) if wanted_class.as_ref() != its_class => {
                walk.step(point, node, Decision::Skipped(Skip::MachineClass));
                continue;
            }
            Some(_) => {}
        }
        if request.avoid.contains(&node) {
            returning.push(node);
            walk.step(point, node, Decision::Skipped(Skip::HeldBefore));
            continue;
        }
        if zones_used.insert(candidate.zone) {
            walk.placement.nodes.push(node);
            walk.placement.added.push(node);
            walk.step(point, node, Decision::Chosen);
        } else {
            spares.push((point, node));
            walk.step(point, node, Decision::SpareSameZone);
        }
    }
    // Too few zones: fill from the spares, in ring order; then, as a last
    // resort, from the nodes that held the agreement before.
    let fill = spares.into_iter().map(|(_, node)| (node, Decision::ChosenSharingZone));
    for (node, decision) in fill.chain(returning.into_iter().map(|node| (node, Decision::ChosenAgain))) {
        if walk.placement.nodes.len() >= wanted {
            break;
        }
        walk.placement.nodes.push(node);
        walk.placement.added.push(node);
        if decision == Decision::ChosenAgain {
            if let Some(count) = walk.placement.skipped.get_mut(&Skip::HeldBefore) {
                *count -= 1;
                if *count == 0 {
                    walk.placement.skipped.remove(&Skip::HeldBefore);
                }
            }
        }
        if let Some(step) = walk.placement.steps.iter_mut().find(|s| s.node == node) {
            step.decision = decision;
        }
    }
    walk.placement
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::vnodes_for;

    struct Node {
        zone: String,
        node_type: NodeType,
        labels: BTreeMap<String, String>,
        capacity: Capacity,
        ready: bool,
        draining: bool,
    }

    struct Cluster {
        ring: Ring,
        nodes: BTreeMap<u64, Node>,
    }

    impl Cluster {
        fn new() -> Self {
            Self { ring: Ring::new(), nodes: BTreeMap::new() }
        }

        fn add(&mut self, id: u64, zone: &str, cpu_millis: u64) -> &mut Node {
            self.ring.insert(id, vnodes_for(32, cpu_millis), zone);
            let node = Node {
                zone: zone.into(),
                node_type: NodeType::Compute,
                labels: BTreeMap::new(),
                capacity: Capacity { cpu_millis, memory_mib: 4096, features: BTreeSet::new() },
                ready: true,
                draining: false,
            };
            self.nodes.insert(id, node);
            self.nodes.get_mut(&id).unwrap()
        }

        fn remove(&mut self, id: u64) {
            self.ring.remove(id);
            self.nodes.remove(&id);
        }

        fn place_with(&self, key: u64, replicas: u32, constraints: &Constraints, keep: &[u64]) -> Placement {
            self.place_avoiding(key, replicas, constraints, keep, &BTreeSet::new())
        }

        fn place_avoiding(
            &self,
            key: u64,
            replicas: u32,
            constraints: &Constraints,
            keep: &[u64],
            avoid: &BTreeSet<u64>,
        ) -> Placement {
            let request = Request { key, replicas, constraints, memory_mib: 256, keep, avoid };
            place(&self.ring, &request, |id| {
                self.nodes.get(&id).map(|n| Candidate {
                    ready: n.ready,
                    draining: n.draining,
                    node_type: n.node_type,
                    zone: &n.zone,
                    labels: &n.labels,
                    capacity: &n.capacity,
                })
            })
        }

        fn place(&self, key: u64, replicas: u32) -> Vec<u64> {
            self.place_with(key, replicas, &Constraints::default(), &[]).nodes
        }
    }

    /// A stand-in for an agreement id's point: any good mix will do.
    fn key(i: u64) -> u64 {
        crate::ring::vnode_point(u64::MAX - i, 7)
    }

    fn uniform(n: u64, zones: u64) -> Cluster {
        let mut cluster = Cluster::new();
        for id in 1..=n {
            cluster.add(id, &format!("z{}", id % zones), 1000);
        }
        cluster
    }

    /// k distinct nodes, always; when k equals the number of nodes, all of
    /// them (the `hashring` crate's duplicate bug).
    #[test]
    fn distinct_nodes_even_when_k_is_the_ring_size() {
        let cluster = uniform(5, 1);
        for i in 0..500 {
            let nodes = cluster.place(key(i), 5);
            let distinct: BTreeSet<_> = nodes.iter().collect();
            assert_eq!((nodes.len(), distinct.len()), (5, 5), "{nodes:?}");
            let nodes = cluster.place(key(i), 3);
            assert_eq!(nodes.iter().collect::<BTreeSet<_>>().len(), 3);
        }
        let short = cluster.place_with(key(1), 6, &Constraints::default(), &[]);
        assert_eq!(short.nodes.len(), 5);
        assert_eq!(short.shortfall(6).unwrap(), "needs 6 nodes, 5 eligible");
    }

    /// With at least k zones, the k replicas land in k different zones.
    #[test]
    fn zones_are_spread() {
        let cluster = uniform(12, 3);
        for i in 0..500 {
            let nodes = cluster.place(key(i), 3);
            let zones: BTreeSet<_> = nodes.iter().map(|n| &cluster.nodes[n].zone).collect();
            assert_eq!(zones.len(), 3, "{nodes:?}");
        }
        // Two zones, three replicas: two zones used, a third node shares one.
        let cluster = uniform(6, 2);
        let placement = cluster.place_with(key(3), 3, &Constraints::default(), &[]);
        assert_eq!(placement.nodes.len(), 3);
        assert!(placement.steps.iter().any(|s| s.decision == Decision::ChosenSharingZone));
    }

    /// Constraints exclude nodes and say how many for which reason.
    #[test]
    fn constraints_and_reasons() {
        let mut cluster = uniform(6, 2);
        cluster.nodes.get_mut(&1).unwrap().labels.insert("gpu".into(), "yes".into());
        cluster.nodes.get_mut(&2).unwrap().node_type = NodeType::Storage;
        cluster.nodes.get_mut(&3).unwrap().ready = false;
        cluster.nodes.get_mut(&4).unwrap().draining = true;
        cluster.nodes.get_mut(&5).unwrap().capacity.memory_mib = 16;
        let gpu = Constraints { labels: [("gpu".to_owned(), "yes".to_owned())].into(), ..Default::default() };
        assert_eq!(cluster.place_with(key(9), 1, &gpu, &[]).nodes, [1]);
        let compute = Constraints { node_types: vec!["compute".into()], ..Default::default() };
        let placement = cluster.place_with(key(9), 3, &compute, &[]);
        assert_eq!(placement.nodes.iter().collect::<BTreeSet<_>>(), [1, 6].iter().collect());
        assert_eq!(
            placement.shortfall(3).unwrap(),
            "needs 3 nodes, 2 eligible (1 not ready, 1 draining, 1 node type not allowed, 1 too little memory)"
        );
        let zone = Constraints { zones: vec!["z0".into()], ..Default::default() };
        for node in cluster.place_with(key(4), 3, &zone, &[]).nodes {
            assert_eq!(cluster.nodes[&node].zone, "z0");
        }
    }

    /// Every replica of an agreement lands on one machine class: the first
    /// class the walk meets that can hold them all, the kept replicas'
    /// class when some are kept, and a short placement that says so when no
    /// class has enough nodes.
    #[test]
    fn replicas_share_one_machine_class() {
        let mut cluster = uniform(8, 2);
        let label = |cluster: &mut Cluster, node: u64, class: &str| {
            cluster.nodes.get_mut(&node).unwrap().labels.insert(MACHINE_LABEL.into(), class.into());
        };
        for node in 1..=8 {
            label(&mut cluster, node, if node <= 4 { "intel" } else { "amd" });
        }
        let class = |cluster: &Cluster, nodes: &[u64]| -> BTreeSet<String> {
            nodes.iter().map(|n| cluster.nodes[n].labels[MACHINE_LABEL].clone()).collect()
        };
        let mut used = BTreeSet::new();
        for i in 0..300 {
            let nodes = cluster.place(key(i), 3);
            assert_eq!(nodes.len(), 3);
            let classes = class(&cluster, &nodes);
            assert_eq!(classes.len(), 1, "one class: {nodes:?}");
            used.extend(classes);
        }
        assert_eq!(used.len(), 2, "both classes take work");

        // Two "intel" nodes left: every agreement needing 3 goes to "amd",
        // whichever class the walk meets first.
        for node in [3, 4] {
            label(&mut cluster, node, "amd");
        }
        for i in 0..300 {
            let nodes = cluster.place(key(i), 3);
            assert_eq!(class(&cluster, &nodes), ["amd".to_owned()].into(), "{nodes:?}");
        }
        // A kept replica fixes the class, even when its class is short.
        let kept = cluster.place_with(key(5), 3, &Constraints::default(), &[1]);
        assert_eq!(kept.nodes.len(), 2, "only nodes 1 and 2 are intel: {:?}", kept.nodes);
        assert_eq!(class(&cluster, &kept.nodes), ["intel".to_owned()].into());
        assert!(kept.shortfall(3).unwrap().contains("6 another machine class"), "{:?}", kept.shortfall(3));

        // No class holds 7: short, and the shortfall names the classes.
        let short = cluster.place_with(key(5), 7, &Constraints::default(), &[]);
        assert_eq!(short.nodes.len(), 6);
        assert_eq!(short.shortfall(7).unwrap(), "needs 7 nodes, 6 eligible (2 another machine class)");
        // Unlabelled nodes are a class of their own.
        let unlabelled = uniform(4, 1);
        assert_eq!(unlabelled.place(key(5), 4).len(), 4);
    }

    /// A node with four cores gets about four times the share of a one-core
    /// node.
    #[test]
    fn capacity_weights_the_share() {
        let mut cluster = uniform(8, 1);
        cluster.add(100, "z0", 4000);
        let keys = 20_000;
        let on_big = (0..keys).filter(|&i| cluster.place(key(i), 1) == [100]).count() as f64 / keys as f64;
        // Expected 4 / (8 + 4) = 1/3.
        assert!((on_big - 1.0 / 3.0).abs() < 0.06, "share of the 4-core node: {on_big}");
    }

    /// Joining one node to n moves about 1/(n+1) of the replicas, and only
    /// onto the new node.
    #[test]
    fn join_moves_about_one_share() {
        for (n, zones) in [(10u64, 1u64), (20, 3), (50, 5)] {
            let mut cluster = uniform(n, zones);
            let keys = 4000;
            let before: Vec<_> = (0..keys).map(|i| cluster.place(key(i), 3)).collect();
            cluster.add(n + 1, &format!("z{}", (n + 1) % zones), 1000);
            let mut moved = 0;
            for (i, old) in before.iter().enumerate() {
                let new = cluster.place(key(i as u64), 3);
                for node in new.iter().filter(|node| !old.contains(node)) {
                    assert_eq!(*node, n + 1, "a replica moved somewhere other than the new node");
                    moved += 1;
                }
            }
            let share = moved as f64 / (keys * 3) as f64;
            let expected = 1.0 / (n + 1) as f64;
            assert!((share - expected).abs() < expected * 0.35, "n={n}: moved {share:.4}, expected {expected:.4}");
        }
    }

    /// Removing a node moves only the replicas it held, whether the walk is
    /// recomputed from scratch or survivors are kept.
    #[test]
    fn removal_moves_only_that_nodes_replicas() {
        for zones in [1, 3] {
            let mut cluster = uniform(12, zones);
            let before: Vec<_> = (0..3000).map(|i| cluster.place(key(i), 3)).collect();
            cluster.remove(7);
            for (i, old) in before.iter().enumerate() {
                let fresh = cluster.place(key(i as u64), 3);
                if old.contains(&7) {
                    let survivors: Vec<u64> = old.iter().copied().filter(|&n| n != 7).collect();
                    let refilled = cluster.place_with(key(i as u64), 3, &Constraints::default(), &survivors);
                    assert_eq!(refilled.added.len(), 1);
                    assert_eq!(refilled.nodes[..2], survivors[..]);
                } else {
                    assert_eq!(&fresh, old, "key {i} did not hold node 7 but moved");
                }
            }
        }
    }

    /// A node that lost an agreement is passed over while any other node
    /// qualifies, and chosen again only as the last resort.
    #[test]
    fn held_before_is_the_last_resort() {
        let cluster = uniform(4, 1);
        let any = Constraints::default();
        for i in 0..200 {
            let first = cluster.place(key(i), 3);
            let lost = first[0];
            let survivors = &first[1..];
            let avoid: BTreeSet<u64> = [lost].into();
            let refill = cluster.place_avoiding(key(i), 3, &any, survivors, &avoid);
            assert_eq!(refill.added.len(), 1);
            assert_ne!(refill.added[0], lost, "another node was free");
            let small = uniform(3, 1);
            let first = small.place(key(i), 3);
            let refill = small.place_avoiding(key(i), 3, &any, &first[1..], &[first[0]].into());
            assert_eq!(refill.added, [first[0]], "no other node: the same one again");
            assert!(refill.steps.iter().any(|s| s.decision == Decision::ChosenAgain));
            assert_eq!(refill.shortfall(3), None);
        }
    }

    /// Two clusters built in different orders place identically.
    #[test]
    fn deterministic_regardless_of_build_order() {
        let forward = uniform(30, 4);
        let mut backward = Cluster::new();
        for id in (1..=30).rev() {
            backward.add(id, &format!("z{}", id % 4), 1000);
        }
        for i in 0..1000 {
            assert_eq!(forward.place(key(i), 3), backward.place(key(i), 3));
        }
    }

    /// Explanations are bounded even on a large ring with a constraint that
    /// nothing meets.
    #[test]
    fn explanation_is_bounded() {
        let cluster = uniform(1000, 1);
        let nowhere = Constraints { zones: vec!["mars".into()], ..Default::default() };
        let placement = cluster.place_with(key(1), 3, &nowhere, &[]);
        assert!(placement.nodes.is_empty());
        assert_eq!(placement.steps.len(), STEPS_MAX);
        assert_eq!(placement.steps.len() + placement.steps_omitted, 1000);
        assert_eq!(placement.shortfall(3).unwrap(), "needs 3 nodes, 0 eligible (1000 zone not allowed)");
    }
}
