//! Workers and placements in the registry.
//!
//! A worker registers itself with a [`NodeRegistration`] signed by its node
//! key; the leader commits `ready`/`down` changes its heartbeats imply; an
//! operator drains, undrains or removes it. Placement runs inside `apply`
//! with the pure walk of `docklock-scheduler`, so every replica of the
//! registry makes the same decision and any of them can explain it.
//!
//! Agreements that need (re)placement wait in `unsettled`. A new agreement
//! is placed in the entry that admits it, and a lost replica is replaced in
//! the entry that loses it (up to a batch). A change that could help waiting
//! agreements (a node registering, coming back, being undrained) only sets
//! `reconcile_due`: the leader then proposes `Reconcile` entries, each
//! re-placing one bounded batch, until the queue has been walked once. No
//! single entry does unbounded work.

use docklock_proto::agreement::AgreementId;
use docklock_proto::ledger::EventBody;
use docklock_proto::node::{NodeRegistration, NodeStatus};
use docklock_scheduler::placement::{self, Candidate, Placement, Request};
use docklock_scheduler::ring::{self, Ring};
use serde::{Deserialize, Serialize};

use crate::agreements::AgreementStatus;
use crate::identities::{decode_envelope, verify_envelope};
use crate::registry::Registry;
use crate::types::Outcome;

/// Most workers the registry holds (removed ones included).
pub const NODES_MAX: usize = 100_000;
/// Virtual nodes per core of capacity, unless configured.
pub const VNODES_PER_CORE: u32 = 32;
/// Most virtual nodes per core an operator may configure.
pub const VNODES_PER_CORE_MAX: u32 = 256;
/// Agreements one applied entry re-places at most.
pub const RECONCILE_BATCH: usize = 512;

/// A registered worker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// What it said about itself, last time it registered.
    pub registration: NodeRegistration,
    /// Its status.
    pub status: NodeStatus,
    /// No new placements; existing ones move off.
    pub draining: bool,
    /// The ledger event of its latest registration.
    pub registered_event: u64,
    /// The ledger event of its latest status or drain change.
    pub status_event: Option<u64>,
}

impl NodeRecord {
    fn candidate(&self) -> Candidate<'_> {
        let registration = &self.registration;
        Candidate {
            ready: self.status == NodeStatus::Ready,
            draining: self.draining,
            node_type: registration.node_type,
            zone: &registration.zone,
            labels: &registration.labels,
            capacity: &registration.capacity,
        }
    }
}

/// One live replica of an agreement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Where it runs.
    pub node: u64,
    /// The placement attempt that chose it; reports name it, and a report
    /// for any other attempt is stale.
    pub attempt: u64,
}

/// Build the ring from the node records (the ring is derived state).
pub(crate) fn build_ring<'a>(nodes: impl Iterator<Item = (&'a u64, &'a NodeRecord)>, per_core: u32) -> Ring {
    let mut ring = Ring::new();
    for (id, record) in nodes {
        if record.status != NodeStatus::Left {
            insert_node(&mut ring, *id, record, per_core);
        }
    }
    ring
}

fn insert_node(ring: &mut Ring, id: u64, record: &NodeRecord, per_core: u32) {
    let registration = &record.registration;
    ring.insert(id, ring::vnodes_for(per_core, registration.capacity.cpu_millis), &registration.zone);
}

impl Registry {
    /// A worker by id.
    pub fn node(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// Every worker, by id.
    pub fn nodes(&self) -> impl Iterator<Item = (&u64, &NodeRecord)> {
        self.nodes.iter()
    }

    /// Workers not removed: the count the heartbeat interval scales with.
    pub fn live_node_count(&self) -> usize {
        self.ring.node_count()
    }

    /// Agreements currently assigned to `node`.
    pub fn assigned_to(&self, node: u64) -> impl Iterator<Item = &AgreementId> {
        self.assigned.get(&node).into_iter().flatten()
    }

    /// Whether agreements wait for a reconcile the leader should propose.
    pub fn reconcile_due(&self) -> bool {
        self.reconcile_due
    }

    /// Agreements waiting for (more) nodes.
    pub fn unsettled_count(&self) -> usize {
        self.unsettled.len()
    }

    /// Check a signed registration against the current state.
    pub fn check_registration(&self, bytes: &[u8]) -> Result<NodeRegistration, Outcome> {
        let envelope = decode_envelope(bytes)?;
        let registration = NodeRegistration::decode(&envelope.message)
            .map_err(|error| Outcome::Invalid { reason: error.to_string() })?;
        verify_envelope(&envelope)?;
        if Some(registration.cluster_id.as_str()) != self.cluster_id() {
            return Err(Outcome::FailedPrecondition {
                reason: format!(
                    "registration is for cluster {:?}, this is {:?}",
                    registration.cluster_id,
                    self.cluster_id()
                ),
            });
        }
        let id = registration.node_id;
        match self.node_key(id) {
            Some(record) if record.key == envelope.signer && !record.revoked => {}
            Some(_) => {
                return Err(Outcome::PermissionDenied {
                    reason: format!("registration for node {id} is not signed by its live node key"),
                })
            }
            None => {
                return Err(Outcome::FailedPrecondition {
                    reason: format!("node {id} has no registered key; it must claim one first"),
                })
            }
        }
        match self.nodes.get(&id) {
            Some(existing) if existing.status == NodeStatus::Left => Err(Outcome::FailedPrecondition {
                reason: format!("node {id} was removed; a removed id is not reused"),
            }),
            None if self.nodes.len() >= NODES_MAX => {
                Err(Outcome::LimitExceeded { reason: format!("registry holds {NODES_MAX} nodes") })
            }
            _ => Ok(registration),
        }
    }

    pub(crate) fn register_worker(&mut self, bytes: &[u8]) -> Outcome {
        let registration = match self.check_registration(bytes) {
            Ok(registration) => registration,
            Err(refusal) => return refusal,
        };
        let id = registration.node_id;
        let previous = self.nodes.get(&id).cloned();
        if let Some(previous) = &previous {
            if previous.registration == registration && previous.status == NodeStatus::Ready {
                // A restart that changed nothing: no event, no revision.
                return Outcome::NodeChanged { node_id: id, status: previous.status, draining: previous.draining };
            }
        }
        let registered_event = self.record(EventBody::NodeRegistered { node_id: id, envelope: bytes.to_vec() });
        let draining = previous.as_ref().is_some_and(|p| p.draining);
        let record = NodeRecord {
            registration,
            status: NodeStatus::Ready,
            draining,
            registered_event,
            status_event: previous.and_then(|p| p.status_event),
        };
        let per_core = self.vnodes_per_core();
        insert_node(&mut self.ring, id, &record, per_core);
        self.nodes.insert(id, record);
        self.bump_revision();
        self.nodes_grew();
        Outcome::NodeChanged { node_id: id, status: NodeStatus::Ready, draining }
    }

    /// Set a worker's status (the leader's liveness decision) or drain flag
    /// (an operator's). Removal is final.
    pub(crate) fn change_node(&mut self, id: u64, status: Option<NodeStatus>, draining: Option<bool>) -> Outcome {
        let Some(record) = self.nodes.get(&id).cloned() else {
            return Outcome::NotFound { reason: format!("node {id} is not registered") };
        };
        if record.status == NodeStatus::Left {
            return Outcome::FailedPrecondition { reason: format!("node {id} was removed") };
        }
        let (old_status, old_draining) = (record.status, record.draining);
        let (new_status, new_draining) = (status.unwrap_or(old_status), draining.unwrap_or(old_draining));
        if (new_status, new_draining) == (old_status, old_draining) {
            return Outcome::NodeChanged { node_id: id, status: old_status, draining: old_draining };
        }
        let event =
            self.record(EventBody::NodeStatusChanged { node_id: id, status: new_status, draining: new_draining });
        let mut record = record;
        record.status = new_status;
        record.draining = new_draining;
        record.status_event = Some(event);
        self.nodes.insert(id, record);
        self.bump_revision();
        if new_status == NodeStatus::Left {
            self.ring.remove(id);
        }
        let usable = |status: NodeStatus, draining: bool| status == NodeStatus::Ready && !draining;
        if usable(old_status, old_draining) && !usable(new_status, new_draining) {
            self.node_lost(id);
        } else if usable(new_status, new_draining) {
            self.nodes_grew();
        }
        Outcome::NodeChanged { node_id: id, status: new_status, draining: new_draining }
    }

    /// A node can no longer hold work: every live replica on it is dropped
    /// and its agreements queue for a replacement. Up to one batch is
    /// re-placed at once; if more are left, a full walk of the queue is due.
    fn node_lost(&mut self, node: u64) {
        let lost: Vec<AgreementId> = self.assigned.remove(&node).unwrap_or_default().into_iter().collect();
        for id in &lost {
            let mut record = self.agreements.get(id).expect("assigned agreements exist").clone();
            record.placed.retain(|replica| replica.node != node);
            record.lost.insert(node);
            // Its run, if it reported one, is void: the replacement runs anew.
            record.runs.remove(&node);
            self.agreements.insert(*id, record);
            self.unsettled.insert(*id);
        }
        if lost.len() > RECONCILE_BATCH {
            self.start_walk();
        }
        if !self.scheduling_paused {
            for id in lost.iter().take(RECONCILE_BATCH) {
                self.place_agreement(id);
            }
        }
    }

    /// More capacity may be available: walk the whole queue again. The walk
    /// is the leader's `Reconcile` proposals, not this entry: a burst of
    /// registrations must not each retry the queue.
    fn nodes_grew(&mut self) {
        self.start_walk();
    }

    fn start_walk(&mut self) {
        self.reconcile_cursor = None;
        self.reconcile_due = !self.unsettled.is_empty() && !self.scheduling_paused;
    }

    /// Virtual nodes per core of capacity on the ring.
    pub fn vnodes_per_core(&self) -> u32 {
        match self.vnodes_per_core {
            0 => VNODES_PER_CORE,
            configured => configured,
        }
    }

    /// Change the ring's virtual nodes per core. The ring is rebuilt; live
    /// replicas stay where they are (a walk after this keeps them), only
    /// future placements follow the new ring.
    pub(crate) fn configure_vnodes(&mut self, per_core: u32) -> Outcome {
        if !(1..=VNODES_PER_CORE_MAX).contains(&per_core) {
            return Outcome::Invalid { reason: format!("vnodes per core must be between 1 and {VNODES_PER_CORE_MAX}") };
        }
        if per_core != self.vnodes_per_core() {
            self.vnodes_per_core = per_core;
            self.ring = build_ring(self.nodes.iter(), per_core);
            self.bump_revision();
        }
        self.scheduling_outcome()
    }

    fn scheduling_outcome(&self) -> Outcome {
        Outcome::Scheduling {
            paused: self.scheduling_paused,
            unsettled: self.unsettled.len() as u64,
            vnodes_per_core: self.vnodes_per_core(),
        }
    }

    /// Whether placement is paused by an operator.
    pub fn scheduling_paused(&self) -> bool {
        self.scheduling_paused
    }

    /// Pause or resume placement. While paused, admitted agreements wait in
    /// the queue and lost replicas are not replaced; resuming walks the queue.
    pub(crate) fn set_scheduling(&mut self, paused: bool) -> Outcome {
        if self.scheduling_paused != paused {
            self.scheduling_paused = paused;
            self.bump_revision();
            self.start_walk();
        }
        self.scheduling_outcome()
    }

    /// Re-place the next batch of the queue walk. Returns how many were tried.
    pub(crate) fn reconcile_batch(&mut self) -> usize {
        if !self.reconcile_due || self.scheduling_paused {
            return 0;
        }
        use std::ops::Bound;
        let lower = self.reconcile_cursor.map_or(Bound::Unbounded, Bound::Excluded);
        let batch: Vec<AgreementId> =
            self.unsettled.range((lower, Bound::Unbounded)).take(RECONCILE_BATCH).copied().collect();
        for id in &batch {
            self.place_agreement(id);
        }
        let last = batch.last().copied();
        let more =
            last.is_some_and(|last| self.unsettled.range((Bound::Excluded(last), Bound::Unbounded)).next().is_some());
        self.reconcile_cursor = if more { last } else { None };
        self.reconcile_due = more;
        batch.len()
    }

    /// The placement walk for `id` against the current ring, avoiding the
    /// nodes that lost it: keeping its live replicas (what `apply` would
    /// decide now), or `from_scratch` (the whole walk, for explanations).
    pub fn compute_placement(&self, id: &AgreementId, from_scratch: bool) -> Option<Placement> {
        let record = self.agreements.get(id)?;
        let keep: Vec<u64> =
            if from_scratch { Vec::new() } else { record.placed.iter().map(|replica| replica.node).collect() };
        let request = Request {
            key: ring::key_point(&id.0),
            replicas: record.replicas,
            constraints: &record.constraints,
            memory_mib: record.memory_mib,
            keep: &keep,
            avoid: &record.lost,
        };
        Some(placement::place(&self.ring, &request, |node| self.nodes.get(&node).map(NodeRecord::candidate)))
    }

    /// Place (or top up) one agreement and record what changed.
    pub(crate) fn place_agreement(&mut self, id: &AgreementId) {
        let Some(record) = self.agreements.get(id) else { return };
        if !record.status.is_schedulable() {
            self.unsettled.remove(id);
            return;
        }
        if self.scheduling_paused {
            self.unsettled.insert(*id);
            return;
        }
        let placement = self.compute_placement(id, false).expect("agreement exists");
        let mut record = record.clone();
        let mut changed = false;
        if !placement.added.is_empty() {
            changed = true;
            record.attempt += 1;
            let attempt = record.attempt;
            record.placed.extend(placement.added.iter().map(|&node| Replica { node, attempt }));
            let nodes = record.placed.iter().map(|replica| replica.node).collect();
            let event =
                self.record(EventBody::AgreementPlaced { id: *id, attempt, nodes, added: placement.added.clone() });
            for node in &placement.added {
                self.assigned.entry(*node).or_default().insert(*id);
            }
            let waiting = matches!(record.status, AgreementStatus::Admitted | AgreementStatus::Pending);
            if placement.complete(record.replicas) && waiting {
                record.set_status(AgreementStatus::Placed, event);
            }
        }
        match placement.shortfall(record.replicas) {
            None => {
                changed |= record.pending.take().is_some();
                self.unsettled.remove(id);
            }
            Some(reason) => {
                if record.pending.as_ref() != Some(&reason) || record.status != AgreementStatus::Pending {
                    changed = true;
                    let event = self.record(EventBody::AgreementPending { id: *id, reason: reason.clone() });
                    if record.status != AgreementStatus::Pending {
                        record.set_status(AgreementStatus::Pending, event);
                    }
                }
                record.pending = Some(reason);
                self.unsettled.insert(*id);
            }
        }
        if changed {
            self.agreements.insert(*id, record);
            self.bump_revision();
        }
    }

    /// Rebuild the derived indexes (ring, assignments) from the state.
    pub(crate) fn rebuild_derived(&mut self) {
        self.ring = build_ring(self.nodes.iter(), self.vnodes_per_core());
        self.assigned.clear();
        self.open =
            self.agreements.iter().filter(|(_, record)| record.status.is_schedulable()).map(|(id, _)| *id).collect();
        for (id, record) in self.agreements.iter().filter(|(_, record)| record.status.is_schedulable()) {
            for replica in &record.placed {
                self.assigned.entry(replica.node).or_default().insert(*id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use docklock_proto::agreement::{Envelope, Spec};
    use docklock_proto::crypto::{Algorithm, KeyPair};
    use docklock_proto::identity::{ChangeKind, IdentityChange, NodeKeyClaim, Role};
    use docklock_proto::node::{Capacity, NodeType};

    use super::*;
    use crate::types::{Command, Request};

    fn apply(registry: &mut Registry, command: Command) -> Outcome {
        registry.apply(&Request { session: None, command }, 1).outcome
    }

    struct Setup {
        registry: Registry,
        admin: KeyPair,
        keys: BTreeMap<u64, KeyPair>,
    }

    fn registration(id: u64, zone: &str) -> NodeRegistration {
        NodeRegistration {
            cluster_id: "c".into(),
            node_id: id,
            address: format!("127.0.0.1:{}", 7000 + id),
            node_type: NodeType::Compute,
            zone: zone.into(),
            labels: BTreeMap::new(),
            capacity: Capacity { cpu_millis: 2000, memory_mib: 4096, features: Default::default() },
            heartbeat_digest: NodeRegistration::token_digest(b"token"),
        }
    }

    impl Setup {
        /// Members 1..=3 and `workers` more nodes (4..) authorised by the admin.
        fn new(workers: u64) -> Self {
            let mut registry = Registry::default();
            registry.apply_membership(1, vec![1, 2, 3], vec![]);
            let admin = KeyPair::generate(Algorithm::MlDsa65);
            apply(&mut registry, Command::Bootstrap { cluster_id: "c".into(), admin: Some(admin.public().clone()) });
            let mut setup = Self { registry, admin, keys: BTreeMap::new() };
            for id in 1..=3 + workers {
                let key = KeyPair::generate(Algorithm::MlDsa65);
                if id > 3 {
                    setup.admin_change(ChangeKind::Add { key: key.public().clone(), role: Role::Node });
                }
                let claim = NodeKeyClaim { cluster_id: "c".into(), node_id: id };
                let claim = Command::RegisterNode { envelope: Envelope::sign(claim.canonical(), &key).canonical() };
                assert!(matches!(apply(&mut setup.registry, claim), Outcome::IdentityChanged { .. }), "claim {id}");
                setup.keys.insert(id, key);
            }
            setup
        }

        fn admin_change(&mut self, kind: ChangeKind) -> Outcome {
            let change = IdentityChange { cluster_id: "c".into(), epoch: self.registry.identity_epoch(), kind };
            let envelope = Envelope::sign(change.canonical(), &self.admin).canonical();
            apply(&mut self.registry, Command::ChangeIdentity { envelope })
        }

        fn register(&mut self, registration: &NodeRegistration) -> Outcome {
            let key = &self.keys[&registration.node_id];
            let envelope = Envelope::sign(registration.canonical(), key).canonical();
            apply(&mut self.registry, Command::RegisterWorker { envelope })
        }

        fn register_all(&mut self, zones: u64) {
            let ids: Vec<u64> = self.keys.keys().copied().collect();
            for id in ids {
                let outcome = self.register(&registration(id, &format!("z{}", id % zones)));
                assert!(matches!(outcome, Outcome::NodeChanged { status: NodeStatus::Ready, .. }), "{outcome:?}");
            }
        }

        fn submit(&mut self, name: &str, replicas: u32, extra: &str) -> AgreementId {
            let yaml = format!(
                "program: sha3-256:{}\nreplicas: {replicas}\ntimeout_secs: 60\nidempotency_key: {name}\n{extra}",
                "01".repeat(32)
            );
            let envelope = Envelope::sign(Spec::from_yaml(&yaml).unwrap().canonical(), &self.admin);
            match apply(&mut self.registry, Command::SubmitAgreement { envelope: envelope.canonical() }) {
                Outcome::Admitted { id, .. } => id,
                other => panic!("not admitted: {other:?}"),
            }
        }

        /// Apply `Reconcile` while the leader would; returns how many entries.
        fn settle(&mut self) -> usize {
            let mut rounds = 0;
            while self.registry.reconcile_due() {
                let Outcome::Reconciled { tried, .. } = apply(&mut self.registry, Command::Reconcile) else {
                    panic!("not a reconcile outcome")
                };
                assert!(tried as usize <= RECONCILE_BATCH);
                rounds += 1;
            }
            rounds
        }

        fn nodes_of(&self, id: &AgreementId) -> Vec<u64> {
            self.registry.agreement(id).unwrap().placed.iter().map(|r| r.node).collect()
        }
    }

    /// Registration needs the node's own live key; a worker outside the Raft
    /// membership needs an admin-authorised key; removed ids stay removed.
    #[test]
    fn registration_is_authenticated() {
        let mut setup = Setup::new(1);
        let stranger = KeyPair::generate(Algorithm::MlDsa65);
        let forged = Envelope::sign(registration(2, "z").canonical(), &stranger).canonical();
        let outcome = apply(&mut setup.registry, Command::RegisterWorker { envelope: forged });
        assert!(matches!(outcome, Outcome::PermissionDenied { .. }), "{outcome:?}");
        let claim = NodeKeyClaim { cluster_id: "c".into(), node_id: 9 };
        let claim = Command::RegisterNode { envelope: Envelope::sign(claim.canonical(), &stranger).canonical() };
        assert!(matches!(apply(&mut setup.registry, claim), Outcome::PermissionDenied { .. }), "unauthorised worker");
        let mut other_cluster = registration(4, "z");
        other_cluster.cluster_id = "d".into();
        assert!(matches!(setup.register(&other_cluster), Outcome::FailedPrecondition { .. }));
        assert!(matches!(setup.register(&registration(4, "z")), Outcome::NodeChanged { .. }));
        let revision = setup.registry.revision();
        assert!(matches!(setup.register(&registration(4, "z")), Outcome::NodeChanged { .. }));
        assert_eq!(setup.registry.revision(), revision, "an unchanged re-registration is not a state change");
        assert!(matches!(apply(&mut setup.registry, Command::RemoveNode { node_id: 4 }), Outcome::NodeChanged { .. }));
        assert!(matches!(setup.register(&registration(4, "z")), Outcome::FailedPrecondition { .. }));
        assert!(matches!(
            apply(&mut setup.registry, Command::DrainNode { node_id: 77, drain: true }),
            Outcome::NotFound { .. }
        ));
    }

    /// An agreement is placed at admission on k distinct nodes in distinct
    /// zones; without enough nodes it is pending with a reason and is placed
    /// as soon as nodes register.
    #[test]
    fn placement_at_admission_and_pending_until_nodes_appear() {
        let mut setup = Setup::new(3);
        let early = setup.submit("early", 3, "");
        let record = setup.registry.agreement(&early).unwrap();
        assert_eq!(record.status, AgreementStatus::Pending);
        assert_eq!(record.pending.as_deref(), Some("needs 3 nodes, 0 eligible"));
        for id in 1..=2 {
            setup.register(&registration(id, &format!("z{id}")));
        }
        assert_eq!(setup.nodes_of(&early).len(), 0, "registration alone places nothing");
        assert_eq!(setup.settle(), 1);
        assert_eq!(setup.registry.agreement(&early).unwrap().status, AgreementStatus::Pending);
        assert_eq!(setup.nodes_of(&early).len(), 2, "partial placement holds what it found");
        setup.register_all(3);
        setup.settle();
        let record = setup.registry.agreement(&early).unwrap();
        assert_eq!(record.status, AgreementStatus::Placed);
        assert_eq!(record.pending, None);
        assert_eq!(setup.registry.unsettled_count(), 0);

        let job = setup.submit("job", 3, "");
        let nodes = setup.nodes_of(&job);
        let zones: BTreeSet<_> =
            nodes.iter().map(|n| setup.registry.node(*n).unwrap().registration.zone.clone()).collect();
        assert_eq!(zones.len(), 3, "{nodes:?}");
        let record = setup.registry.agreement(&job).unwrap();
        assert_eq!(record.status, AgreementStatus::Placed);
        assert!(record.placed.iter().all(|r| r.attempt == 1));

        let picky = setup.submit("picky", 1, "constraints: {zones: [mars]}\n");
        let reason = setup.registry.agreement(&picky).unwrap().pending.clone().unwrap();
        assert_eq!(reason, "needs 1 nodes, 0 eligible (6 zone not allowed)");
    }

    /// A node going down or draining moves exactly its replicas, as new
    /// attempts; it does not get them back when it returns.
    #[test]
    fn lost_replicas_move_as_new_attempts() {
        let mut setup = Setup::new(5);
        setup.register_all(2);
        let ids: Vec<AgreementId> = (0..40).map(|i| setup.submit(&format!("j{i}"), 3, "")).collect();
        let before: BTreeMap<_, _> = ids.iter().map(|id| (*id, setup.nodes_of(id))).collect();
        let victim = 2;
        let down = Command::SetNodeStatus { node_id: victim, status: NodeStatus::Down };
        assert!(matches!(apply(&mut setup.registry, down), Outcome::NodeChanged { status: NodeStatus::Down, .. }));
        for id in &ids {
            let after = setup.nodes_of(id);
            let record = setup.registry.agreement(id).unwrap();
            if before[id].contains(&victim) {
                assert!(!after.contains(&victim));
                assert_eq!(after.len(), 3);
                let kept: Vec<u64> = before[id].iter().copied().filter(|&n| n != victim).collect();
                assert_eq!(after[..2], kept[..], "survivors stay");
                assert_eq!(record.attempt, 2);
                assert_eq!(record.placed[2].attempt, 2);
                assert!(record.lost.contains(&victim));
            } else {
                assert_eq!(after, before[id], "an agreement not on the lost node did not move");
                assert_eq!(record.attempt, 1);
            }
        }
        assert_eq!(setup.registry.assigned_to(victim).count(), 0);
        let moved: BTreeMap<_, _> = ids.iter().map(|id| (*id, setup.nodes_of(id))).collect();
        let back = Command::SetNodeStatus { node_id: victim, status: NodeStatus::Ready };
        apply(&mut setup.registry, back);
        let after_return: BTreeMap<_, _> = ids.iter().map(|id| (*id, setup.nodes_of(id))).collect();
        assert_eq!(after_return, moved, "a returning node takes nothing back");

        let drained = moved.values().flatten().copied().next().unwrap();
        apply(&mut setup.registry, Command::DrainNode { node_id: drained, drain: true });
        assert_eq!(setup.registry.assigned_to(drained).count(), 0, "drain moves everything off");
        let fresh = setup.submit("after-drain", 3, "");
        assert!(!setup.nodes_of(&fresh).contains(&drained), "no new placements on a draining node");
    }

    /// More lost replicas than one batch: the rest wait for `Reconcile`
    /// commands, each bounded, until every agreement is placed again.
    #[test]
    fn reconcile_is_batched() {
        let mut setup = Setup::new(0);
        setup.register(&registration(1, "a"));
        let ids: Vec<AgreementId> = (0..RECONCILE_BATCH + 20).map(|i| setup.submit(&format!("b{i}"), 1, "")).collect();
        assert!(ids.iter().all(|id| setup.nodes_of(id) == [1]));
        apply(&mut setup.registry, Command::SetNodeStatus { node_id: 1, status: NodeStatus::Down });
        assert_eq!(setup.registry.unsettled_count(), ids.len(), "nowhere to go: all pending");
        setup.register(&registration(2, "a"));
        assert_eq!(setup.settle(), 2, "two batches for one batch and twenty");
        assert_eq!(setup.registry.unsettled_count(), 0);
        assert!(ids.iter().all(|id| setup.nodes_of(id) == [2]));
    }

    /// While placement is paused, admissions wait and lost replicas are not
    /// replaced; resuming places everything through bounded batches.
    #[test]
    fn pause_holds_placement_until_resumed() {
        let mut setup = Setup::new(2);
        setup.register_all(5);
        let placed = setup.submit("before", 2, "");
        apply(&mut setup.registry, Command::SetScheduling { paused: true });
        let held: Vec<AgreementId> = (0..600).map(|i| setup.submit(&format!("p{i}"), 2, "")).collect();
        assert!(held.iter().all(|id| setup.registry.agreement(id).unwrap().status == AgreementStatus::Admitted));
        let victim = setup.nodes_of(&placed)[0];
        apply(&mut setup.registry, Command::SetNodeStatus { node_id: victim, status: NodeStatus::Down });
        assert_eq!(setup.nodes_of(&placed).len(), 1, "no replacement while paused");
        assert!(!setup.registry.reconcile_due(), "no walk while paused");
        let outcome = apply(&mut setup.registry, Command::SetScheduling { paused: false });
        assert_eq!(outcome, Outcome::Scheduling { paused: false, unsettled: 601, vnodes_per_core: VNODES_PER_CORE });
        assert_eq!(setup.settle(), 2);
        assert_eq!(setup.registry.unsettled_count(), 0);
        assert!(held.iter().chain([&placed]).all(|id| setup.nodes_of(id).len() == 2));
    }

    /// The ring's virtual node count is a cluster setting: changing it
    /// rebuilds the ring for future placements and moves no live replica.
    #[test]
    fn vnodes_per_core_is_configurable() {
        let mut setup = Setup::new(5);
        setup.register_all(1);
        let ids: Vec<AgreementId> = (0..30).map(|i| setup.submit(&format!("v{i}"), 2, "")).collect();
        let before: Vec<_> = ids.iter().map(|id| setup.nodes_of(id)).collect();
        let fresh_before: Vec<_> =
            ids.iter().map(|id| setup.registry.compute_placement(id, true).unwrap().nodes).collect();
        assert!(matches!(
            apply(&mut setup.registry, Command::ConfigureRing { vnodes_per_core: 0 }),
            Outcome::Invalid { .. }
        ));
        let outcome = apply(&mut setup.registry, Command::ConfigureRing { vnodes_per_core: 3 });
        assert!(matches!(outcome, Outcome::Scheduling { vnodes_per_core: 3, .. }), "{outcome:?}");
        assert_eq!(setup.registry.ring.point_count(), 8 * 3 * 2, "eight 2-core nodes, 3 points per core");
        let after: Vec<_> = ids.iter().map(|id| setup.nodes_of(id)).collect();
        assert_eq!(after, before, "live replicas stay");
        let fresh_after: Vec<_> =
            ids.iter().map(|id| setup.registry.compute_placement(id, true).unwrap().nodes).collect();
        assert_ne!(fresh_after, fresh_before, "the ring itself changed");
        let rebuilt = Registry::from_state(setup.registry.to_state());
        assert_eq!(rebuilt.ring.point_count(), setup.registry.ring.point_count(), "the setting survives a snapshot");
    }

    /// The derived ring and assignments rebuilt from a snapshot's state give
    /// the same decisions as the live registry.
    #[test]
    fn snapshot_rebuilds_the_same_decisions() {
        let mut setup = Setup::new(4);
        setup.register_all(3);
        let ids: Vec<AgreementId> = (0..10).map(|i| setup.submit(&format!("s{i}"), 2, "")).collect();
        let rebuilt = Registry::from_state(setup.registry.to_state());
        assert_eq!(rebuilt.to_state(), setup.registry.to_state());
        for id in &ids {
            assert_eq!(rebuilt.compute_placement(id, false), setup.registry.compute_placement(id, false));
        }
        for node in 1..=7 {
            assert!(rebuilt.assigned_to(node).eq(setup.registry.assigned_to(node)));
        }
    }
}
