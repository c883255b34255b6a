//! Execution reports in the registry: commit, reveal, and the verdict.
//!
//! A node holding a live replica of an agreement reports its run twice,
//! signed with its node key: a commitment to its witness root, then — once
//! every live replica has committed — the root itself. When every replica
//! has revealed, `apply` concludes: `verified` if all roots are equal (a
//! program that fails identically everywhere is a verified failure),
//! `diverged` otherwise, naming each node's root. A report for any attempt
//! but the replica's current one is stale and refused (fencing).

use docklock_proto::agreement::{AgreementId, Envelope};
use docklock_proto::identity::Role;
use docklock_proto::ledger::EventBody;
use docklock_proto::report::{commitment, Hash, Phase, Revealed, RunReport};
use serde::{Deserialize, Serialize};

use crate::agreements::AgreementStatus;
use crate::identities::{decode_envelope, verify_envelope};
use crate::registry::Registry;
use crate::types::Outcome;

/// One replica's run, as reported.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// The attempt it ran for.
    pub attempt: u64,
    /// Its commitment.
    pub commitment: Hash,
    /// What it revealed, once it did.
    pub revealed: Option<Revealed>,
    /// The ledger event of the commitment.
    pub commit_event: u64,
    /// The ledger event of the reveal.
    pub reveal_event: Option<u64>,
}

fn precondition(reason: String) -> Outcome {
    Outcome::FailedPrecondition { reason }
}

impl Registry {
    /// Check a signed run report against the current state; `Ok(None)`: a
    /// repeat of what is recorded already (a retry), nothing to do.
    pub fn check_report(&self, bytes: &[u8]) -> Result<Option<RunReport>, Outcome> {
        let envelope = decode_envelope(bytes)?;
        let report = RunReport::decode(&envelope.message).map_err(|e| Outcome::Invalid { reason: e.to_string() })?;
        verify_envelope(&envelope)?;
        if Some(report.cluster_id.as_str()) != self.cluster_id() {
            return Err(precondition(format!("report is for cluster {:?}", report.cluster_id)));
        }
        let signer = self.live_identity(&envelope.signer.fingerprint())?;
        if signer.role != Role::Node || signer.node_id != Some(report.node) {
            return Err(Outcome::PermissionDenied {
                reason: format!("a report for node {} must be signed by that node's key", report.node),
            });
        }
        let id = report.agreement;
        let record = self
            .agreements
            .get(&id)
            .ok_or_else(|| Outcome::NotFound { reason: format!("agreement {id} not found") })?;
        if !matches!(record.status, AgreementStatus::Placed | AgreementStatus::Running) {
            return Err(precondition(format!("agreement {id} is {}, not running", record.status.name())));
        }
        let Some(replica) = record.placed.iter().find(|r| r.node == report.node) else {
            return Err(precondition(format!("node {} holds no replica of {id} (fenced)", report.node)));
        };
        if replica.attempt != report.attempt {
            return Err(precondition(format!(
                "report for attempt {} is stale: node {} holds attempt {} of {id} (fenced)",
                report.attempt, report.node, replica.attempt
            )));
        }
        let existing = record.runs.get(&report.node).filter(|run| run.attempt == report.attempt);
        match &report.phase {
            Phase::Commit(commitment) => match existing {
                Some(run) if run.commitment == *commitment => Ok(None),
                Some(_) => Err(precondition(format!("node {} committed to another root already", report.node))),
                None => Ok(Some(report)),
            },
            Phase::Fail(_) => match existing {
                Some(run) if run.revealed.is_some() => {
                    Err(precondition(format!("node {} revealed a result already", report.node)))
                }
                _ => Ok(Some(report)),
            },
            Phase::Reveal(revealed) => {
                let Some(run) = existing else {
                    return Err(precondition(format!("node {} must commit before it reveals", report.node)));
                };
                if let Some(earlier) = &run.revealed {
                    return if earlier == revealed.as_ref() {
                        Ok(None)
                    } else {
                        Err(precondition(format!("node {} revealed already", report.node)))
                    };
                }
                if commitment(&revealed.root, &revealed.nonce) != run.commitment {
                    return Err(Outcome::Invalid { reason: "the revealed root does not open the commitment".into() });
                }
                if !record.all_committed() {
                    return Err(precondition(format!(
                        "{} of {} replicas have committed; reveal once all have",
                        record.committed_replicas(),
                        record.replicas
                    )));
                }
                Ok(Some(report))
            }
        }
    }

    pub(crate) fn report_run(&mut self, bytes: &[u8]) -> Outcome {
        let report = match self.check_report(bytes) {
            Ok(Some(report)) => report,
            Ok(None) => {
                let status = Envelope::decode(bytes)
                    .ok()
                    .and_then(|e| RunReport::decode(&e.message).ok())
                    .and_then(|r| self.agreements.get(&r.agreement))
                    .map_or(AgreementStatus::Running, |record| record.status);
                return Outcome::RunReported { status };
            }
            Err(refusal) => return refusal,
        };
        let id = report.agreement;
        let event = self.record(EventBody::RunReported { id, node: report.node, envelope: bytes.to_vec() });
        let mut record = self.agreements.get(&id).expect("checked").clone();
        match report.phase {
            Phase::Commit(commitment) => {
                let run = RunRecord {
                    attempt: report.attempt,
                    commitment,
                    revealed: None,
                    commit_event: event,
                    reveal_event: None,
                };
                record.runs.insert(report.node, run);
                if record.status == AgreementStatus::Placed {
                    record.set_status(AgreementStatus::Running, event);
                }
            }
            Phase::Reveal(revealed) => {
                let run = record.runs.get_mut(&report.node).expect("checked");
                run.revealed = Some(*revealed);
                run.reveal_event = Some(event);
            }
            Phase::Fail(reason) => {
                let conclusion = self.record(EventBody::AgreementConcluded {
                    id,
                    verdict: AgreementStatus::Failed.name().to_owned(),
                    roots: Vec::new(),
                });
                record.failure = Some((report.node, reason));
                record.set_status(AgreementStatus::Failed, conclusion);
                let status = record.status;
                self.agreements.insert(id, record);
                self.release(&id);
                self.bump_revision();
                return Outcome::RunReported { status };
            }
        }
        let concluded = self.conclude(&id, &mut record);
        let status = record.status;
        self.agreements.insert(id, record);
        if concluded {
            self.release(&id);
        }
        self.bump_revision();
        Outcome::RunReported { status }
    }

    /// `node`'s live replicas of placed or running agreements: (agreement,
    /// attempt, whether its run for that attempt is revealed).
    pub fn open_replicas(&self, node: u64) -> Vec<(AgreementId, u64, bool)> {
        self.assigned_to(node)
            .filter_map(|id| {
                let record = self.agreements.get(id)?;
                if !matches!(record.status, AgreementStatus::Placed | AgreementStatus::Running) {
                    return None;
                }
                let replica = record.placed.iter().find(|r| r.node == node)?;
                let revealed =
                    record.runs.get(&node).is_some_and(|run| run.attempt == replica.attempt && run.revealed.is_some());
                Some((*id, replica.attempt, revealed))
            })
            .collect()
    }

    /// Agreements without a verdict yet (the leader watches their deadlines).
    pub fn open_agreements(&self) -> impl Iterator<Item = (&AgreementId, &crate::agreements::AgreementRecord)> {
        self.open.iter().filter_map(|id| self.agreements.get(id).map(|record| (id, record)))
    }

    /// The leader's decision that `id`'s deadline passed: `timed-out`, with
    /// whatever roots were revealed by then.
    pub(crate) fn time_out(&mut self, id: &AgreementId) -> Outcome {
        let Some(record) = self.agreements.get(id) else {
            return Outcome::NotFound { reason: format!("agreement {id} not found") };
        };
        if !record.status.is_schedulable() {
            return Outcome::RunReported { status: record.status };
        }
        let mut record = record.clone();
        let roots: Vec<(u64, Hash)> = record
            .runs
            .iter()
            .filter_map(|(node, run)| run.revealed.as_ref().map(|revealed| (*node, revealed.root)))
            .collect();
        let event = self.record(EventBody::AgreementConcluded {
            id: *id,
            verdict: AgreementStatus::TimedOut.name().to_owned(),
            roots,
        });
        record.set_status(AgreementStatus::TimedOut, event);
        self.agreements.insert(*id, record);
        self.release(id);
        self.bump_revision();
        Outcome::RunReported { status: AgreementStatus::TimedOut }
    }

    /// A concluded agreement holds no live replica and waits for nothing.
    fn release(&mut self, id: &AgreementId) {
        let nodes: Vec<u64> = self.agreements[id].placed.iter().map(|r| r.node).collect();
        for node in nodes {
            if let Some(set) = self.assigned.get_mut(&node) {
                set.remove(id);
            }
        }
        self.unsettled.remove(id);
        self.open.remove(id);
    }

    /// If every live replica revealed, decide and record the verdict.
    fn conclude(&mut self, id: &AgreementId, record: &mut crate::agreements::AgreementRecord) -> bool {
        if record.placed.len() < record.replicas as usize {
            return false;
        }
        let mut roots = Vec::new();
        for replica in &record.placed {
            match record.runs.get(&replica.node) {
                Some(RunRecord { attempt, revealed: Some(revealed), .. }) if *attempt == replica.attempt => {
                    roots.push((replica.node, revealed.root));
                }
                _ => return false,
            }
        }
        let verified = roots.windows(2).all(|pair| pair[0].1 == pair[1].1);
        let status = if verified { AgreementStatus::Verified } else { AgreementStatus::Diverged };
        let event = self.record(EventBody::AgreementConcluded { id: *id, verdict: status.name().to_owned(), roots });
        record.set_status(status, event);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use docklock_proto::agreement::{Digest, Envelope, Spec};
    use docklock_proto::crypto::{Algorithm, KeyPair};
    use docklock_proto::identity::NodeKeyClaim;
    use docklock_proto::node::{Capacity, NodeRegistration, NodeStatus, NodeType};

    use super::*;
    use crate::types::{Command, Request};

    fn apply(registry: &mut Registry, command: Command) -> Outcome {
        registry.apply(&Request { session: None, command }, 1).outcome
    }

    /// A registry with three registered workers and one agreement placed on
    /// all of them.
    fn setup() -> (Registry, BTreeMap<u64, KeyPair>, AgreementId) {
        let mut registry = Registry::default();
        registry.apply_membership(1, vec![1, 2, 3, 4], vec![]);
        let admin = KeyPair::generate(Algorithm::MlDsa65);
        apply(&mut registry, Command::Bootstrap { cluster_id: "c".into(), admin: Some(admin.public().clone()) });
        let mut keys = BTreeMap::new();
        for id in 1..=4 {
            let key = KeyPair::generate(Algorithm::MlDsa65);
            let claim = NodeKeyClaim { cluster_id: "c".into(), node_id: id };
            apply(
                &mut registry,
                Command::RegisterNode { envelope: Envelope::sign(claim.canonical(), &key).canonical() },
            );
            let registration = NodeRegistration {
                cluster_id: "c".into(),
                node_id: id,
                address: format!("127.0.0.1:{}", 7000 + id),
                node_type: NodeType::Compute,
                zone: format!("z{id}"),
                labels: BTreeMap::new(),
                capacity: Capacity { cpu_millis: 1000, memory_mib: 4096, features: Default::default() },
                heartbeat_digest: [0; 32],
            };
            let envelope = Envelope::sign(registration.canonical(), &key).canonical();
            apply(&mut registry, Command::RegisterWorker { envelope });
            keys.insert(id, key);
        }
        // Node 4 stays out of the first placement: draining.
        apply(&mut registry, Command::DrainNode { node_id: 4, drain: true });
        let yaml = format!("program: sha3-256:{}\nreplicas: 3\ntimeout_secs: 60\n", "01".repeat(32));
        let envelope = Envelope::sign(Spec::from_yaml(&yaml).unwrap().canonical(), &admin).canonical();
        let Outcome::Admitted { id, .. } = apply(&mut registry, Command::SubmitAgreement { envelope }) else {
            panic!("not admitted")
        };
        (registry, keys, id)
    }

    fn revealed(root: u8) -> Revealed {
        Revealed {
            root: [root; 32],
            nonce: [root.wrapping_add(100); 32],
            verdict: "ok".into(),
            stdout: Digest([0; 32]),
            witness: Digest([1; 32]),
            outputs: BTreeMap::new(),
        }
    }

    fn report(keys: &BTreeMap<u64, KeyPair>, id: AgreementId, node: u64, attempt: u64, phase: Phase) -> Command {
        let report = RunReport { cluster_id: "c".into(), agreement: id, attempt, node, phase };
        Command::ReportRun { envelope: Envelope::sign(report.canonical(), &keys[&node]).canonical() }
    }

    fn commit(keys: &BTreeMap<u64, KeyPair>, id: AgreementId, node: u64, attempt: u64, root: u8) -> Command {
        let r = revealed(root);
        report(keys, id, node, attempt, Phase::Commit(commitment(&r.root, &r.nonce)))
    }

    fn reveal(keys: &BTreeMap<u64, KeyPair>, id: AgreementId, node: u64, attempt: u64, root: u8) -> Command {
        report(keys, id, node, attempt, Phase::Reveal(Box::new(revealed(root))))
    }

    fn status(registry: &Registry, id: &AgreementId) -> AgreementStatus {
        registry.agreement(id).unwrap().status
    }

    /// Commit, then reveal once all have committed; equal roots verify.
    #[test]
    fn agreeing_roots_verify() {
        let (mut registry, keys, id) = setup();
        assert_eq!(status(&registry, &id), AgreementStatus::Placed);
        assert!(matches!(apply(&mut registry, commit(&keys, id, 1, 1, 7)), Outcome::RunReported { .. }));
        assert_eq!(status(&registry, &id), AgreementStatus::Running);
        let early = apply(&mut registry, reveal(&keys, id, 1, 1, 7));
        assert!(
            matches!(&early, Outcome::FailedPrecondition { reason } if reason.contains("have committed")),
            "{early:?}"
        );
        apply(&mut registry, commit(&keys, id, 2, 1, 7));
        apply(&mut registry, commit(&keys, id, 3, 1, 7));
        let revision = registry.revision();
        assert!(matches!(apply(&mut registry, commit(&keys, id, 3, 1, 7)), Outcome::RunReported { .. }), "a retry");
        assert_eq!(registry.revision(), revision, "a repeated commit changes nothing");
        assert!(matches!(apply(&mut registry, commit(&keys, id, 3, 1, 8)), Outcome::FailedPrecondition { .. }));
        for node in 1..=3 {
            apply(&mut registry, reveal(&keys, id, node, 1, 7));
        }
        assert_eq!(status(&registry, &id), AgreementStatus::Verified);
        assert_eq!(registry.assigned_to(1).count(), 0, "a concluded agreement holds no live replica");
    }

    /// A root that differs on one node: diverged, every root recorded.
    #[test]
    fn referenced_artifacts_cover_specs_and_reveals() {
        let (mut registry, keys, id) = setup();
        let program = Digest([0x01; 32]);
        assert_eq!(registry.referenced_artifacts(), [program].into(), "the spec's program");
        for node in 1..=3 {
            apply(&mut registry, commit(&keys, id, node, 1, 7));
        }
        apply(&mut registry, reveal(&keys, id, 1, 1, 7));
        let mut with_output = revealed(7);
        with_output.outputs.insert("result.txt".into(), Digest([9; 32]));
        apply(&mut registry, report(&keys, id, 2, 1, Phase::Reveal(Box::new(with_output))));
        let expected = [program, Digest([0; 32]), Digest([1; 32]), Digest([9; 32])].into();
        assert_eq!(registry.referenced_artifacts(), expected, "stdout, witness and outputs of the reveals");
    }

    #[test]
    fn differing_roots_diverge() {
        let (mut registry, keys, id) = setup();
        for (node, root) in [(1, 7), (2, 7), (3, 9)] {
            apply(&mut registry, commit(&keys, id, node, 1, root));
        }
        for (node, root) in [(1, 7), (2, 7), (3, 9)] {
            apply(&mut registry, reveal(&keys, id, node, 1, root));
        }
        assert_eq!(status(&registry, &id), AgreementStatus::Diverged);
        let runs = &registry.agreement(&id).unwrap().runs;
        assert_eq!(runs[&3].revealed.as_ref().unwrap().root, [9; 32]);
    }

    /// Forged, foreign and stale reports are refused; a reveal must open its
    /// commitment; a lost replica's run is void and its replacement reports
    /// under the new attempt.
    #[test]
    fn reports_are_authenticated_and_fenced() {
        let (mut registry, keys, id) = setup();
        let by_other_key = {
            let report =
                RunReport { cluster_id: "c".into(), agreement: id, attempt: 1, node: 1, phase: Phase::Commit([0; 32]) };
            Command::ReportRun { envelope: Envelope::sign(report.canonical(), &keys[&2]).canonical() }
        };
        assert!(matches!(apply(&mut registry, by_other_key), Outcome::PermissionDenied { .. }));
        assert!(
            matches!(apply(&mut registry, commit(&keys, id, 4, 1, 7)), Outcome::FailedPrecondition { .. }),
            "no replica"
        );
        assert!(
            matches!(apply(&mut registry, commit(&keys, id, 1, 2, 7)), Outcome::FailedPrecondition { .. }),
            "future attempt"
        );
        for node in 1..=3 {
            apply(&mut registry, commit(&keys, id, node, 1, 7));
        }
        let lying = report(&keys, id, 1, 1, Phase::Reveal(Box::new(revealed(8))));
        assert!(matches!(apply(&mut registry, lying), Outcome::Invalid { .. }), "does not open the commitment");

        // Node 3 is lost; node 4 takes its place as attempt 2.
        apply(&mut registry, Command::DrainNode { node_id: 4, drain: false });
        apply(&mut registry, Command::SetNodeStatus { node_id: 3, status: NodeStatus::Down });
        let record = registry.agreement(&id).unwrap();
        assert!(!record.runs.contains_key(&3), "the lost replica's run is void");
        assert!(record.placed.iter().any(|r| r.node == 4 && r.attempt == 2), "{:?}", record.placed);
        assert!(
            matches!(apply(&mut registry, reveal(&keys, id, 3, 1, 7)), Outcome::FailedPrecondition { .. }),
            "fenced"
        );
        assert!(
            matches!(apply(&mut registry, commit(&keys, id, 4, 1, 7)), Outcome::FailedPrecondition { .. }),
            "stale"
        );
        apply(&mut registry, commit(&keys, id, 4, 2, 7));
        for (node, attempt) in [(1, 1), (2, 1), (4, 2)] {
            apply(&mut registry, reveal(&keys, id, node, attempt, 7));
        }
        assert_eq!(status(&registry, &id), AgreementStatus::Verified);
        let after = apply(&mut registry, commit(&keys, id, 1, 1, 7));
        assert!(matches!(after, Outcome::FailedPrecondition { .. }), "concluded: {after:?}");
    }

    /// A replica that cannot start reports a failure: the agreement is
    /// `failed` at once with the reason; a failure after a reveal is refused.
    #[test]
    fn a_start_failure_fails_the_agreement() {
        let (mut registry, keys, id) = setup();
        apply(&mut registry, commit(&keys, id, 1, 1, 7));
        let fail = report(&keys, id, 2, 1, Phase::Fail("input name refused".into()));
        assert_eq!(apply(&mut registry, fail), Outcome::RunReported { status: AgreementStatus::Failed });
        let record = registry.agreement(&id).unwrap();
        assert_eq!(record.failure, Some((2, "input name refused".to_owned())));
        assert_eq!(registry.open_agreements().count(), 0);
        let late = report(&keys, id, 3, 1, Phase::Fail("again".into()));
        assert!(matches!(apply(&mut registry, late), Outcome::FailedPrecondition { .. }), "concluded");
    }

    /// The leader's time-out concludes an open agreement with the roots
    /// revealed so far; later reports are refused; a verdict is final.
    #[test]
    fn deadlines_conclude_open_agreements() {
        let (mut registry, keys, id) = setup();
        assert_eq!(registry.open_agreements().count(), 1);
        apply(&mut registry, commit(&keys, id, 1, 1, 7));
        let outcome = apply(&mut registry, Command::TimeOut { id });
        assert_eq!(outcome, Outcome::RunReported { status: AgreementStatus::TimedOut });
        assert_eq!(status(&registry, &id), AgreementStatus::TimedOut);
        assert_eq!(registry.open_agreements().count(), 0);
        assert_eq!(registry.assigned_to(1).count(), 0);
        assert!(matches!(apply(&mut registry, commit(&keys, id, 2, 1, 7)), Outcome::FailedPrecondition { .. }));
        let revision = registry.revision();
        apply(&mut registry, Command::TimeOut { id });
        assert_eq!(registry.revision(), revision, "a second time-out changes nothing");
        let rebuilt = Registry::from_state(registry.to_state());
        assert_eq!(rebuilt.open_agreements().count(), 0, "the open set is rebuilt from the state");
    }
}
