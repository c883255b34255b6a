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
                let committed = record
                    .placed
                    .iter()
                    .filter(|r| record.runs.get(&r.node).is_some_and(|run| run.attempt == r.attempt))
                    .count();
                if committed < record.replicas as usize {
                    return Err(precondition(format!(
                        "{committed} of {} replicas have committed; reveal once all have",
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
        }
        let concluded = self.conclude(&id, &mut record);
        let status = record.status;
        self.agreements.insert(id, record);
        if concluded {
            for node in self.agreements[&id].placed.iter().map(|r| r.node).collect::<Vec<_>>() {
                if let Some(set) = self.assigned.get_mut(&node) {
                    set.remove(&id);
                }
            }
            self.unsettled.remove(&id);
        }
        self.bump_revision();
        Outcome::RunReported { status }
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
