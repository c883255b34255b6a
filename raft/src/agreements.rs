//! Agreements in the registry: admission of signed specs.
//!
//! Admission runs inside `apply` (the API edge runs the same check first to
//! answer early, but the registry never relies on it): the envelope decodes
//! and is within bounds, the spec is valid, the signature verifies under the
//! tagged algorithm, the key is registered, unrevoked and may submit, and
//! neither the agreement nor the signer's idempotency key exists yet.

use std::collections::{BTreeMap, BTreeSet};

use docklock_proto::agreement::{AgreementId, Constraints, Digest, Spec, SpecError, Workload};
use docklock_proto::crypto::Fingerprint;
use docklock_proto::ledger::EventBody;
use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};

use crate::identities::{decode_envelope, verify_envelope};
use crate::nodes::Replica;
use crate::registry::Registry;
use crate::runs::RunRecord;
use crate::types::Outcome;

/// Most agreements the registry holds.
pub const AGREEMENTS_MAX: usize = 1_000_000;

/// Where an agreement is in its life. Execution adds states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum AgreementStatus {
    /// Signed, checked and committed.
    Admitted,
    /// Waiting for enough eligible nodes (the reason says which constraint
    /// excluded how many).
    Pending,
    /// Every replica has a node.
    Placed,
    /// A replica has committed to a run's result.
    Running,
    /// Every replica revealed the same witness root.
    Verified,
    /// Replicas revealed different roots.
    Diverged,
    /// The spec's deadline passed before every replica revealed.
    TimedOut,
    /// A replica reported that the run cannot start (a reason that holds on
    /// every node).
    Failed,
}

impl AgreementStatus {
    /// Every status.
    pub const ALL: [AgreementStatus; 8] = [
        Self::Admitted,
        Self::Pending,
        Self::Placed,
        Self::Running,
        Self::Verified,
        Self::Diverged,
        Self::TimedOut,
        Self::Failed,
    ];

    /// The name users see.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Pending => "pending",
            Self::Placed => "placed",
            Self::Running => "running",
            Self::Verified => "verified",
            Self::Diverged => "diverged",
            Self::TimedOut => "timed-out",
            Self::Failed => "failed",
        }
    }

    /// Whether the scheduler still places replicas for it.
    pub fn is_schedulable(self) -> bool {
        matches!(self, Self::Admitted | Self::Pending | Self::Placed | Self::Running)
    }
}

/// What the registry keeps of an agreement in memory. The signed envelope
/// itself is in its ledger event.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AgreementRecord {
    /// The signer's key.
    pub signer: Fingerprint,
    /// The signer's idempotency key.
    pub idempotency_key: String,
    /// Current status.
    pub status: AgreementStatus,
    /// Each status and the ledger event that set it, in order.
    pub history: Vec<(AgreementStatus, u64)>,
    /// The admission's ledger event (it holds the envelope).
    pub event_index: u64,
    /// Replica count.
    pub replicas: u32,
    /// The spec's labels.
    pub labels: BTreeMap<String, String>,
    /// Where it may run.
    pub constraints: Constraints,
    /// Memory each replica needs, MiB (its memory limit).
    pub memory_mib: u64,
    /// The latest placement attempt (0: never placed).
    pub attempt: u64,
    /// Live replicas.
    pub placed: Vec<Replica>,
    /// Nodes that held a replica and lost it; never chosen again for it.
    pub lost: BTreeSet<u64>,
    /// Why it waits for nodes, while it does.
    pub pending: Option<String>,
    /// Each replica's reported run, by node.
    pub runs: BTreeMap<u64, RunRecord>,
    /// The spec's deadline, seconds from admission (the leader measures it).
    pub timeout_secs: u64,
    /// Why the run could not start, and which node said so.
    pub failure: Option<(u64, String)>,
    /// The artifacts the spec names (program or image, inputs): kept by
    /// every node's artifact collector for as long as the agreement exists,
    /// so that anyone can replay it.
    pub artifacts: Vec<Digest>,
}

impl AgreementRecord {
    /// Move to `status`, recorded as set by ledger event `event`.
    pub(crate) fn set_status(&mut self, status: AgreementStatus, event: u64) {
        self.status = status;
        self.history.push((status, event));
    }

    /// Replicas that have committed to a root for their current attempt.
    pub fn committed_replicas(&self) -> usize {
        self.placed.iter().filter(|r| self.runs.get(&r.node).is_some_and(|run| run.attempt == r.attempt)).count()
    }

    /// Whether every replica has committed, so reveals are accepted.
    pub fn all_committed(&self) -> bool {
        self.committed_replicas() >= self.replicas as usize
    }
}

/// An agreement that passed every check.
#[derive(Debug)]
pub struct Admission {
    /// Its id.
    pub id: AgreementId,
    /// The signer's fingerprint.
    pub signer: Fingerprint,
    /// The decoded spec.
    pub spec: Spec,
}

fn spec_refusal(error: SpecError) -> Outcome {
    match error {
        SpecError::TooLarge(_) => Outcome::LimitExceeded { reason: error.to_string() },
        _ => Outcome::Invalid { reason: error.to_string() },
    }
}

impl Registry {
    /// An agreement by id.
    pub fn agreement(&self, id: &AgreementId) -> Option<&AgreementRecord> {
        self.agreements.get(id)
    }

    /// Agreements after `start_after` in id order, filtered, at most `limit`;
    /// the flag says whether more match.
    pub fn list_agreements(
        &self,
        start_after: Option<AgreementId>,
        signer: Option<Fingerprint>,
        status: Option<AgreementStatus>,
        limit: usize,
    ) -> (Vec<(AgreementId, AgreementRecord)>, bool) {
        use std::ops::Bound;
        let lower = start_after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = self.agreements.range((lower, Bound::Unbounded)).filter(|(_, record)| {
            signer.is_none_or(|s| s == record.signer) && status.is_none_or(|s| s == record.status)
        });
        let page: Vec<_> = matching.by_ref().take(limit).map(|(id, record)| (*id, record.clone())).collect();
        let more = matching.next().is_some();
        (page, more)
    }

    /// Every artifact an agreement refers to: what its spec names and what
    /// its replicas revealed (stdout, witness log, outputs). An artifact not
    /// in this set may be collected once it is old enough.
    pub fn referenced_artifacts(&self) -> BTreeSet<Digest> {
        let mut referenced = BTreeSet::new();
        for record in self.agreements.values() {
            referenced.extend(record.artifacts.iter().copied());
            for revealed in record.runs.values().filter_map(|run| run.revealed.as_ref()) {
                referenced.extend([revealed.stdout, revealed.witness]);
                referenced.extend(revealed.outputs.values().copied());
            }
        }
        referenced
    }

    /// Number of agreements.
    pub fn agreements_count(&self) -> usize {
        self.agreements.len()
    }

    /// Run every admission check against the current state. Each hash
    /// (the id, the signer's fingerprint) is computed once: at thousands of
    /// admissions per second on every node, SHA3 over envelopes showed up.
    pub fn check_agreement(&self, bytes: &[u8]) -> Result<Admission, Outcome> {
        let envelope = decode_envelope(bytes)?;
        let spec = Spec::decode(&envelope.message).map_err(spec_refusal)?;
        verify_envelope(&envelope)?;
        let signer = envelope.signer.fingerprint();
        let record = self.live_identity(&signer)?;
        if !record.role.may_submit() {
            return Err(Outcome::PermissionDenied {
                reason: format!("key {signer} has role {}; submitting needs submitter or admin", record.role),
            });
        }
        // The envelope is canonical (decoding is strict), so its bytes are
        // what the id hashes.
        let id = AgreementId(Sha3_256::digest(bytes).into());
        if self.agreements.contains_key(&id) {
            return Err(Outcome::AlreadyExists { id });
        }
        if let Some(existing) = self.idempotency.get(&(signer, spec.idempotency_key.clone())) {
            return Err(Outcome::AlreadyExists { id: *existing });
        }
        if self.agreements.len() >= AGREEMENTS_MAX {
            return Err(Outcome::LimitExceeded { reason: format!("registry holds {AGREEMENTS_MAX} agreements") });
        }
        Ok(Admission { id, signer, spec })
    }

    pub(crate) fn submit_agreement(&mut self, bytes: &[u8]) -> Outcome {
        let Admission { id, signer, spec } = match self.check_agreement(bytes) {
            Ok(checked) => checked,
            Err(refusal) => return refusal,
        };
        let event_index = self.record(EventBody::AgreementAdmitted { id, envelope: bytes.to_vec() });
        self.idempotency.insert((signer, spec.idempotency_key.clone()), id);
        let workload = match spec.workload {
            Workload::Program(digest) | Workload::Image(digest) => digest,
        };
        let artifacts = std::iter::once(workload).chain(spec.inputs.values().copied()).collect();
        let record = AgreementRecord {
            artifacts,
            signer,
            idempotency_key: spec.idempotency_key,
            status: AgreementStatus::Admitted,
            history: vec![(AgreementStatus::Admitted, event_index)],
            event_index,
            replicas: spec.replicas,
            labels: spec.labels,
            constraints: spec.constraints,
            memory_mib: spec.limits.memory_mib,
            attempt: 0,
            placed: Vec::new(),
            lost: BTreeSet::new(),
            pending: None,
            runs: BTreeMap::new(),
            timeout_secs: spec.timeout_secs,
            failure: None,
        };
        self.agreements.insert(id, record);
        self.open.insert(id);
        self.bump_revision();
        self.place_agreement(&id);
        Outcome::Admitted { id, event_index }
    }
}

#[cfg(test)]
mod tests {
    use docklock_proto::agreement::{Envelope, Spec};
    use docklock_proto::crypto::{Algorithm, KeyPair};
    use docklock_proto::identity::{ChangeKind, IdentityChange, Role};

    use crate::registry::Registry;
    use crate::types::{Command, Outcome, Request};

    const SPEC: &str = "program: sha3-256:0101010101010101010101010101010101010101010101010101010101010101\n\
                        replicas: 3\ntimeout_secs: 60\nidempotency_key: job-1\n";

    fn apply(registry: &mut Registry, command: Command) -> Outcome {
        registry.apply(&Request { session: None, command }, 1).outcome
    }

    fn change(registry: &Registry, kind: ChangeKind, admin: &KeyPair) -> Command {
        let change = IdentityChange { cluster_id: "c".into(), epoch: registry.identity_epoch(), kind };
        Command::ChangeIdentity { envelope: Envelope::sign(change.canonical(), admin).canonical() }
    }

    /// A bootstrapped registry with an admin and a submitter of each algorithm.
    fn setup() -> (Registry, KeyPair, KeyPair, KeyPair) {
        let mut registry = Registry::default();
        let admin = KeyPair::generate(Algorithm::MlDsa65);
        let mldsa = KeyPair::generate(Algorithm::MlDsa65);
        let dilithium = KeyPair::generate(Algorithm::Dilithium3);
        let bootstrap = Command::Bootstrap { cluster_id: "c".into(), admin: Some(admin.public().clone()) };
        assert_eq!(apply(&mut registry, bootstrap), Outcome::Bootstrapped { applied: true });
        for key in [&mldsa, &dilithium] {
            let add = change(&registry, ChangeKind::Add { key: key.public().clone(), role: Role::Submitter }, &admin);
            assert!(matches!(apply(&mut registry, add), Outcome::IdentityChanged { .. }));
        }
        (registry, admin, mldsa, dilithium)
    }

    fn submit(envelope: &Envelope) -> Command {
        Command::SubmitAgreement { envelope: envelope.canonical() }
    }

    fn signed(spec: &str, key: &KeyPair) -> Envelope {
        Envelope::sign(Spec::from_yaml(spec).unwrap().canonical(), key)
    }

    /// What must not change when a request is refused.
    fn fingerprint(registry: &Registry) -> impl PartialEq + std::fmt::Debug {
        let state = registry.to_state();
        (state.agreements, state.identities, state.idempotency, state.ledger, registry.revision())
    }

    #[test]
    fn both_algorithms_are_admitted_once() {
        let (mut registry, _, mldsa, dilithium) = setup();
        for key in [&mldsa, &dilithium] {
            let envelope = signed(SPEC, key);
            let Outcome::Admitted { id, event_index } = apply(&mut registry, submit(&envelope)) else { panic!() };
            assert_eq!(id, envelope.id());
            assert_eq!(registry.agreement(&id).unwrap().event_index, event_index);
            let before = fingerprint(&registry);
            assert_eq!(apply(&mut registry, submit(&envelope)), Outcome::AlreadyExists { id }, "replayed envelope");
            let other_spec = signed(&SPEC.replace("replicas: 3", "replicas: 2"), key);
            assert_ne!(other_spec.id(), id);
            assert_eq!(
                apply(&mut registry, submit(&other_spec)),
                Outcome::AlreadyExists { id },
                "same idempotency key"
            );
            assert_eq!(fingerprint(&registry), before);
        }
        assert_eq!(registry.agreements_count(), 2, "idempotency keys are per signer");
    }

    #[test]
    fn bad_submissions_are_refused_and_change_nothing() {
        let (mut registry, admin, mldsa, _) = setup();
        let auditor = KeyPair::generate(Algorithm::MlDsa65);
        let add = change(&registry, ChangeKind::Add { key: auditor.public().clone(), role: Role::Auditor }, &admin);
        apply(&mut registry, add);
        let revoked = KeyPair::generate(Algorithm::Dilithium3);
        let add = change(&registry, ChangeKind::Add { key: revoked.public().clone(), role: Role::Submitter }, &admin);
        apply(&mut registry, add);
        let revoke = change(&registry, ChangeKind::Revoke { fingerprint: revoked.public().fingerprint() }, &admin);
        apply(&mut registry, revoke);
        let before = fingerprint(&registry);

        let good = signed(SPEC, &mldsa);
        let mut tampered = good.clone();
        tampered.message = Spec::from_yaml(&SPEC.replace("replicas: 3", "replicas: 1")).unwrap().canonical();
        let mut truncated = good.canonical();
        truncated.truncate(truncated.len() - 10);
        let mut relabelled = good.canonical();
        let tag_at = relabelled.len() - good.signature.as_bytes().len() - 5;
        assert_eq!(relabelled[tag_at], Algorithm::MlDsa65.code());
        relabelled[tag_at] = Algorithm::Dilithium3.code();
        let unknown = signed(SPEC, &KeyPair::generate(Algorithm::MlDsa65));
        let oversized = vec![0u8; docklock_proto::agreement::ENVELOPE_BYTES_MAX + 1];

        type Case = (&'static str, Command, fn(&Outcome) -> bool);
        let cases: Vec<Case> = vec![
            ("tampered spec", submit(&tampered), |o| matches!(o, Outcome::Unauthenticated { .. })),
            ("truncated signature", Command::SubmitAgreement { envelope: truncated }, |o| {
                matches!(o, Outcome::Invalid { .. })
            }),
            ("wrong algorithm tag", Command::SubmitAgreement { envelope: relabelled }, |o| {
                matches!(o, Outcome::Unauthenticated { .. })
            }),
            ("unknown key", submit(&unknown), |o| matches!(o, Outcome::Unauthenticated { .. })),
            ("revoked key", submit(&signed(SPEC, &revoked)), |o| matches!(o, Outcome::PermissionDenied { .. })),
            ("auditor key", submit(&signed(SPEC, &auditor)), |o| matches!(o, Outcome::PermissionDenied { .. })),
            ("oversized", Command::SubmitAgreement { envelope: oversized }, |o| {
                matches!(o, Outcome::LimitExceeded { .. })
            }),
        ];
        for (name, command, expected) in cases {
            let outcome = apply(&mut registry, command);
            assert!(expected(&outcome), "{name}: {outcome:?}");
        }
        assert_eq!(fingerprint(&registry), before);
    }

    #[test]
    fn identity_changes_are_bound_to_epoch_admin_and_cluster() {
        let (mut registry, admin, mldsa, _) = setup();
        let newcomer = KeyPair::generate(Algorithm::MlDsa65);
        let add = ChangeKind::Add { key: newcomer.public().clone(), role: Role::Submitter };
        let stale = change(&registry, add.clone(), &admin);
        let by_submitter = change(&registry, add.clone(), &mldsa);
        assert!(matches!(apply(&mut registry, by_submitter), Outcome::PermissionDenied { .. }));
        let other_cluster =
            IdentityChange { cluster_id: "other".into(), epoch: registry.identity_epoch(), kind: add.clone() };
        let other_cluster =
            Command::ChangeIdentity { envelope: Envelope::sign(other_cluster.canonical(), &admin).canonical() };
        assert!(matches!(apply(&mut registry, other_cluster), Outcome::FailedPrecondition { .. }));
        // Another change moves the epoch: the captured one is dead.
        let third = KeyPair::generate(Algorithm::MlDsa65);
        let add_third = change(&registry, ChangeKind::Add { key: third.public().clone(), role: Role::Auditor }, &admin);
        apply(&mut registry, add_third);
        assert!(matches!(apply(&mut registry, stale), Outcome::FailedPrecondition { .. }));
        // Revocation is final; the last admin cannot be revoked.
        let revoke = change(&registry, ChangeKind::Revoke { fingerprint: third.public().fingerprint() }, &admin);
        assert!(matches!(apply(&mut registry, revoke), Outcome::IdentityChanged { .. }));
        let readd = change(&registry, ChangeKind::Add { key: third.public().clone(), role: Role::Auditor }, &admin);
        assert!(matches!(apply(&mut registry, readd), Outcome::FailedPrecondition { .. }));
        let last = change(&registry, ChangeKind::Revoke { fingerprint: admin.public().fingerprint() }, &admin);
        assert!(matches!(apply(&mut registry, last), Outcome::FailedPrecondition { .. }));
        let bootstrap_again = Command::Bootstrap { cluster_id: "x".into(), admin: Some(newcomer.public().clone()) };
        assert_eq!(apply(&mut registry, bootstrap_again), Outcome::Bootstrapped { applied: false });
        assert_eq!(registry.cluster_id(), Some("c"));
    }
}
