//! The registry: the replicated state and its transitions.
//!
//! `Registry::apply` is a pure, deterministic function of (state,
//! request): no clock, no randomness, no IO, ordered maps only. The registry
//! lives in memory; its durable form is the snapshot (see `store`).

use std::collections::{BTreeMap, BTreeSet};

use docklock_proto::agreement::{AgreementId, Digest};
use docklock_proto::crypto::Fingerprint;
use docklock_proto::ledger::EventBody;
use docklock_proto::node::NodeStatus;
use docklock_scheduler::Ring;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::agreements::AgreementRecord;
use crate::identities::IdentityRecord;
use crate::ledger::{LedgerState, LedgerWrites};
use crate::nodes::NodeRecord;
use crate::sessions::{self, Seen, Sessions, SessionsState};
use crate::types::{Command, Expect, Outcome, Request, Response, Variable};

/// Most variables the registry holds; a put of a new key past it is refused.
pub const VARIABLES_COUNT_MAX: usize = 1_000_000;
/// Longest variable name, in bytes, accepted by `apply` (the API checks too).
pub const KEY_BYTES_MAX: usize = 4096;
/// Largest value `apply` accepts. The API's configurable limit is lower; this
/// bound holds even for a proposer that skipped it.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Counter of state changes: the registry's revision.
const REVISION: &str = "revision";
/// Counter of applied requests: orders session eviction.
const REQUESTS: &str = "requests";

/// The whole registry as a value: what snapshots carry. The maps are
/// persistent (structurally shared): copying the state for a snapshot is
/// O(1) under the lock, and the copy is encoded off it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RegistryState {
    /// Variables by name.
    pub variables: OrdMap<String, Variable>,
    /// Counters (revision, applied requests).
    pub counters: OrdMap<String, u64>,
    /// The write-session cache.
    pub sessions: SessionsState,
    /// Set once by the bootstrap command.
    pub cluster_id: Option<String>,
    /// Raft members (voters and learners) as of the last membership entry.
    pub members: BTreeSet<u64>,
    /// Keys by fingerprint.
    pub identities: OrdMap<Fingerprint, IdentityRecord>,
    /// Each node's registered key.
    pub node_keys: OrdMap<u64, Fingerprint>,
    /// Agreements by id.
    pub agreements: OrdMap<AgreementId, AgreementRecord>,
    /// Agreement ids by (signer, idempotency key).
    pub idempotency: OrdMap<(Fingerprint, String), AgreementId>,
    /// The ledger's head.
    pub ledger: LedgerState,
    /// Workers by id.
    pub nodes: OrdMap<u64, NodeRecord>,
    /// Agreements waiting for (more) nodes.
    pub unsettled: OrdSet<AgreementId>,
    /// Whether a walk of `unsettled` is under way.
    pub reconcile_due: bool,
    /// Where that walk is.
    pub reconcile_cursor: Option<AgreementId>,
    /// Placement paused by an operator.
    pub scheduling_paused: bool,
    /// Virtual nodes per core on the ring (0: the default).
    pub vnodes_per_core: u32,
}

/// The replicated registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub(crate) variables: OrdMap<String, Variable>,
    pub(crate) counters: OrdMap<String, u64>,
    pub(crate) sessions: Sessions,
    pub(crate) cluster_id: Option<String>,
    pub(crate) members: BTreeSet<u64>,
    pub(crate) identities: OrdMap<Fingerprint, IdentityRecord>,
    pub(crate) node_keys: OrdMap<u64, Fingerprint>,
    pub(crate) agreements: OrdMap<AgreementId, AgreementRecord>,
    pub(crate) idempotency: OrdMap<(Fingerprint, String), AgreementId>,
    pub(crate) ledger: LedgerState,
    pub(crate) nodes: OrdMap<u64, NodeRecord>,
    pub(crate) unsettled: OrdSet<AgreementId>,
    pub(crate) reconcile_due: bool,
    pub(crate) reconcile_cursor: Option<AgreementId>,
    pub(crate) scheduling_paused: bool,
    pub(crate) vnodes_per_core: u32,
    /// The placement ring, derived from `nodes`; not state.
    pub(crate) ring: Ring,
    /// Agreements by node holding a live replica, derived; not state.
    pub(crate) assigned: BTreeMap<u64, BTreeSet<AgreementId>>,
    /// Agreements without a verdict, derived; not state.
    pub(crate) open: BTreeSet<AgreementId>,
    /// Rows produced by `apply` and not yet taken by the store; not state.
    pub(crate) writes: LedgerWrites,
    /// The log entry being applied; not state.
    pub(crate) raft_index: u64,
}

impl RegistryState {
    /// Why this state, read from a snapshot, cannot be used. `apply` keeps
    /// these shapes; a state that breaks one is corrupt or hostile and would
    /// make the registry panic later.
    pub fn check(&self) -> Result<(), String> {
        self.ledger.check()?;
        if self.vnodes_per_core > crate::nodes::VNODES_PER_CORE_MAX {
            return Err(format!("{} virtual nodes per core", self.vnodes_per_core));
        }
        Ok(())
    }
}

impl Registry {
    /// Build from a snapshot's state.
    pub fn from_state(state: RegistryState) -> Self {
        let mut registry = Self {
            variables: state.variables,
            counters: state.counters,
            sessions: Sessions::from_state(state.sessions),
            cluster_id: state.cluster_id,
            members: state.members,
            identities: state.identities,
            node_keys: state.node_keys,
            agreements: state.agreements,
            idempotency: state.idempotency,
            ledger: state.ledger,
            nodes: state.nodes,
            unsettled: state.unsettled,
            reconcile_due: state.reconcile_due,
            reconcile_cursor: state.reconcile_cursor,
            scheduling_paused: state.scheduling_paused,
            vnodes_per_core: state.vnodes_per_core,
            ring: Ring::new(),
            assigned: BTreeMap::new(),
            open: BTreeSet::new(),
            writes: LedgerWrites::default(),
            raft_index: 0,
        };
        registry.rebuild_derived();
        registry
    }

    /// A copy of the whole state, for a snapshot.
    pub fn to_state(&self) -> RegistryState {
        RegistryState {
            variables: self.variables.clone(),
            counters: self.counters.clone(),
            sessions: self.sessions.to_state(),
            cluster_id: self.cluster_id.clone(),
            members: self.members.clone(),
            identities: self.identities.clone(),
            node_keys: self.node_keys.clone(),
            agreements: self.agreements.clone(),
            idempotency: self.idempotency.clone(),
            ledger: self.ledger.clone(),
            nodes: self.nodes.clone(),
            unsettled: self.unsettled.clone(),
            reconcile_due: self.reconcile_due,
            reconcile_cursor: self.reconcile_cursor,
            scheduling_paused: self.scheduling_paused,
            vnodes_per_core: self.vnodes_per_core,
        }
    }

    /// The ledger's head state.
    pub fn ledger(&self) -> &LedgerState {
        &self.ledger
    }

    /// Take the rows `apply` produced since the last call, for the store.
    pub fn take_writes(&mut self) -> LedgerWrites {
        std::mem::take(&mut self.writes)
    }

    /// Append a ledger event for the entry being applied; returns its position.
    pub(crate) fn record(&mut self, body: EventBody) -> u64 {
        self.ledger.append(self.raft_index, body, &mut self.writes)
    }

    /// Apply a membership entry: remember the members and record the change.
    pub fn apply_membership(&mut self, raft_index: u64, voters: Vec<u64>, learners: Vec<u64>) {
        self.raft_index = raft_index;
        self.members = voters.iter().chain(&learners).copied().collect();
        self.record(EventBody::Membership { voters, learners });
        self.ledger.seal();
    }

    /// Mark the end of a log entry (see [`LedgerState::seal`]).
    pub fn seal_entry(&mut self) {
        self.ledger.seal();
    }

    /// A variable by name.
    pub fn variable(&self, key: &str) -> Option<&Variable> {
        self.variables.get(key)
    }

    /// Variables whose names start with `prefix` and sort after `start_after`,
    /// in name order, at most `limit` of them; the flag says whether more match.
    pub fn list_variables(&self, prefix: &str, start_after: &str, limit: usize) -> (Vec<(String, Variable)>, bool) {
        use std::ops::Bound;
        let lower = if start_after.is_empty() || start_after < prefix {
            Bound::Included(prefix.to_owned())
        } else {
            Bound::Excluded(start_after.to_owned())
        };
        let mut matching =
            self.variables.range((lower, Bound::Unbounded)).take_while(|(key, _)| key.starts_with(prefix));
        let page: Vec<_> = matching.by_ref().take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Number of variables.
    pub fn variables_count(&self) -> usize {
        self.variables.len()
    }

    /// The revision: how many state changes the registry has applied.
    pub fn revision(&self) -> u64 {
        self.counter(REVISION)
    }

    fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    pub(crate) fn bump_revision(&mut self) -> u64 {
        self.bump(REVISION)
    }

    fn bump(&mut self, name: &str) -> u64 {
        // In place: `bump` runs once or twice for every request applied.
        if let Some(count) = self.counters.get_mut(name) {
            *count += 1;
            return *count;
        }
        self.counters.insert(name.to_owned(), 1);
        1
    }

    /// Apply one request of log entry `raft_index`.
    pub fn apply(&mut self, request: &Request, raft_index: u64) -> Response {
        self.raft_index = raft_index;
        let sequence = self.bump(REQUESTS);
        if let Some(session) = &request.session {
            if let Some(reason) = sessions::invalid_client_id(&session.client_id) {
                return Response { revision: self.revision(), outcome: Outcome::Invalid { reason } };
            }
            match self.sessions.deduplicate(session) {
                Some(Seen::Repeat(first)) => return first,
                Some(Seen::Expired { oldest_retained_serial }) => {
                    let outcome = Outcome::SessionExpired { oldest_retained_serial };
                    return Response { revision: self.revision(), outcome };
                }
                None => {}
            }
        }
        let outcome = self.execute(&request.command);
        let response = Response { revision: self.revision(), outcome };
        if let Some(session) = &request.session {
            self.sessions.remember(sequence, session, &response);
        }
        assert!(self.variables.len() <= VARIABLES_COUNT_MAX, "variables bound broken");
        response
    }

    fn execute(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Put { key, value } => self.write(key, value),
            Command::Delete { key } => {
                let prev = self.variables.remove(key);
                if prev.is_some() {
                    self.bump(REVISION);
                    self.record(EventBody::VariableDeleted { key: key.clone() });
                }
                Outcome::Deleted { prev }
            }
            Command::Cas { key, expect, value } => {
                let current = self.variables.get(key);
                let holds = match (expect, current) {
                    (Expect::Absent, None) => true,
                    (Expect::Value(expected), Some(current)) => &current.value == expected,
                    (Expect::Version(expected), Some(current)) => current.version == *expected,
                    _ => false,
                };
                if holds {
                    self.write(key, value)
                } else {
                    Outcome::CasMismatch { current: current.cloned() }
                }
            }
            Command::Bootstrap { cluster_id, admin } => self.bootstrap(cluster_id, admin.as_ref()),
            Command::ChangeIdentity { envelope } => self.change_identity(envelope),
            Command::RegisterNode { envelope } => self.register_node(envelope),
            Command::SubmitAgreement { envelope } => self.submit_agreement(envelope),
            Command::Checkpoint { checkpoint } => self.record_checkpoint(checkpoint),
            Command::RegisterWorker { envelope } => self.register_worker(envelope),
            Command::SetNodeStatus { node_id, status } => {
                if *status == NodeStatus::Left {
                    return Outcome::Invalid { reason: "removal is its own request".into() };
                }
                self.change_node(*node_id, Some(*status), None)
            }
            Command::DrainNode { node_id, drain } => self.change_node(*node_id, None, Some(*drain)),
            Command::RemoveNode { node_id } => self.change_node(*node_id, Some(NodeStatus::Left), None),
            Command::SetScheduling { paused } => self.set_scheduling(*paused),
            Command::ConfigureRing { vnodes_per_core } => self.configure_vnodes(*vnodes_per_core),
            Command::ReportRun { envelope } => self.report_run(envelope),
            Command::TimeOut { id } => self.time_out(id),
            Command::Reconcile => {
                let tried = self.reconcile_batch();
                Outcome::Reconciled { tried: tried as u64, unsettled: self.unsettled.len() as u64 }
            }
        }
    }

    fn write(&mut self, key: &str, value: &[u8]) -> Outcome {
        if key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Outcome::LimitExceeded {
                reason: format!("key or value over the registry bound ({KEY_BYTES_MAX} / {VALUE_BYTES_MAX} bytes)"),
            };
        }
        // Past the bound only a variable that exists may be written (the
        // lookup only then); below it one lookup replaces it in place.
        if self.variables.len() >= VARIABLES_COUNT_MAX && !self.variables.contains_key(key) {
            return Outcome::LimitExceeded { reason: format!("registry holds {VARIABLES_COUNT_MAX} variables") };
        }
        let revision = self.bump(REVISION);
        let (current, prev) = match self.variables.get_mut(key) {
            Some(slot) => {
                let current = Variable {
                    value: value.to_vec(),
                    version: slot.version + 1,
                    create_revision: slot.create_revision,
                    mod_revision: revision,
                };
                (current.clone(), Some(std::mem::replace(slot, current)))
            }
            None => {
                let current =
                    Variable { value: value.to_vec(), version: 1, create_revision: revision, mod_revision: revision };
                self.variables.insert(key.to_owned(), current.clone());
                (current, None)
            }
        };
        self.record(EventBody::VariablePut { key: key.to_owned(), value: Digest::of(value), version: current.version });
        Outcome::Written { current, prev }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::WriteSession;

    fn put(key: &str, value: &str) -> Request {
        Request { session: None, command: Command::Put { key: key.into(), value: value.into() } }
    }

    fn with_session(mut request: Request, client: &str, serial: u64) -> Request {
        request.session = Some(WriteSession { client_id: client.into(), serial });
        request
    }

    /// Versions and revisions follow etcd's meaning: the revision counts
    /// state changes, refusals leave it alone.
    #[test]
    fn put_tracks_versions_and_revisions() {
        let mut registry = Registry::default();
        registry.apply(&put("a", "1"), 1);
        registry.apply(&put("b", "1"), 1);
        let refused = Request {
            session: None,
            command: Command::Cas { key: "a".into(), expect: Expect::Absent, value: b"x".to_vec() },
        };
        assert_eq!(registry.apply(&refused, 1).revision, 2, "a refusal does not change the revision");
        let response = registry.apply(&put("a", "2"), 1);
        assert_eq!(response.revision, 3);
        let Outcome::Written { current, prev } = response.outcome else { panic!("not written: {response:?}") };
        assert_eq!((current.version, current.create_revision, current.mod_revision), (2, 1, 3));
        assert_eq!(prev.unwrap().value, b"1");
    }

    /// A retried write returns the first outcome and changes nothing.
    #[test]
    fn retried_write_applies_once() {
        let mut registry = Registry::default();
        let first = registry.apply(&with_session(put("k", "x"), "c1", 7), 1);
        registry.apply(&put("k", "y"), 1);
        let retry = registry.apply(&with_session(put("k", "x"), "c1", 7), 1);
        assert_eq!(first, retry);
        assert_eq!(registry.variable("k").unwrap().value, b"y");
        assert_eq!(registry.variable("k").unwrap().version, 2);
    }

    /// A session with an unusable client id is refused and nothing changes.
    #[test]
    fn invalid_session_is_refused() {
        let mut registry = Registry::default();
        let response = registry.apply(&with_session(put("k", "v"), "bad\0id", 1), 1);
        assert!(matches!(response.outcome, Outcome::Invalid { .. }));
        assert!(registry.variable("k").is_none());
    }

    /// Each compare-and-set expectation holds or fails as documented.
    #[test]
    fn cas_expectations() {
        let mut registry = Registry::default();
        let cas = |expect, value: &str| Request {
            session: None,
            command: Command::Cas { key: "k".into(), expect, value: value.into() },
        };
        assert!(matches!(
            registry.apply(&cas(Expect::Value(b"x".to_vec()), "y"), 1).outcome,
            Outcome::CasMismatch { current: None }
        ));
        assert!(matches!(registry.apply(&cas(Expect::Absent, "a"), 1).outcome, Outcome::Written { .. }));
        assert!(matches!(registry.apply(&cas(Expect::Absent, "b"), 1).outcome, Outcome::CasMismatch { .. }));
        assert!(matches!(registry.apply(&cas(Expect::Value(b"a".to_vec()), "c"), 1).outcome, Outcome::Written { .. }));
        assert!(matches!(registry.apply(&cas(Expect::Version(1), "d"), 1).outcome, Outcome::CasMismatch { .. }));
        assert!(matches!(registry.apply(&cas(Expect::Version(2), "d"), 1).outcome, Outcome::Written { .. }));
        assert_eq!(registry.variable("k").unwrap().value, b"d");
    }

    /// A registry rebuilt from its state copy equals the original.
    #[test]
    fn state_round_trip() {
        let mut registry = Registry::default();
        registry.apply(&with_session(put("a", "1"), "c", 1), 1);
        registry.apply(&put("b", "2"), 1);
        registry.apply(&Request { session: None, command: Command::Delete { key: "b".into() } }, 1);
        let rebuilt = Registry::from_state(registry.to_state());
        assert_eq!(rebuilt.to_state(), registry.to_state());
        assert_eq!(rebuilt.revision(), 3);
        assert!(rebuilt.variable("b").is_none());
    }

    /// Paging by `start_after` walks every matching key once.
    #[test]
    fn list_pages_by_prefix() {
        let mut registry = Registry::default();
        for key in ["a/1", "a/2", "a/3", "b/1"] {
            registry.apply(&put(key, "v"), 1);
        }
        let (page, more) = registry.list_variables("a/", "", 2);
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a/1", "a/2"]);
        assert!(more);
        let (page, more) = registry.list_variables("a/", "a/2", 2);
        assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["a/3"]);
        assert!(!more);
    }
}
