//! Agreements in the registry: admission of signed specs.
//!
//! Admission runs inside `apply` (the API edge runs the same check first to
//! answer early, but the registry never relies on it): the envelope decodes
//! and is within bounds, the spec is valid, the signature verifies under the
//! tagged algorithm, the key is registered, unrevoked and may submit, and
//! neither the agreement nor the signer's idempotency key exists yet.

use std::collections::BTreeMap;

use docklock_proto::agreement::{AgreementId, Envelope, Spec, SpecError};
use docklock_proto::crypto::Fingerprint;
use docklock_proto::ledger::EventBody;
use serde::{Deserialize, Serialize};

use crate::identities::{decode_envelope, verify_envelope};
use crate::registry::Registry;
use crate::types::Outcome;

/// Most agreements the registry holds.
pub const AGREEMENTS_MAX: usize = 1_000_000;

/// Where an agreement is in its life. Placement and execution add states.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum AgreementStatus {
    /// Signed, checked and committed.
    Admitted,
}

impl AgreementStatus {
    /// Every status.
    pub const ALL: [AgreementStatus; 1] = [AgreementStatus::Admitted];

    /// The name users see.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
        }
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

    /// Number of agreements.
    pub fn agreements_count(&self) -> usize {
        self.agreements.len()
    }

    /// Run every admission check against the current state.
    pub fn check_agreement(&self, bytes: &[u8]) -> Result<(Envelope, Spec), Outcome> {
        let envelope = decode_envelope(bytes)?;
        let spec = Spec::decode(&envelope.message).map_err(spec_refusal)?;
        verify_envelope(&envelope)?;
        let signer = self.live_identity(&envelope.signer)?;
        if !signer.role.may_submit() {
            return Err(Outcome::PermissionDenied {
                reason: format!(
                    "key {} has role {}; submitting needs submitter or admin",
                    envelope.signer.fingerprint(),
                    signer.role
                ),
            });
        }
        let id = envelope.id();
        if self.agreements.contains_key(&id) {
            return Err(Outcome::AlreadyExists { id });
        }
        if let Some(existing) = self.idempotency.get(&(envelope.signer.fingerprint(), spec.idempotency_key.clone())) {
            return Err(Outcome::AlreadyExists { id: *existing });
        }
        if self.agreements.len() >= AGREEMENTS_MAX {
            return Err(Outcome::LimitExceeded { reason: format!("registry holds {AGREEMENTS_MAX} agreements") });
        }
        Ok((envelope, spec))
    }

    pub(crate) fn submit_agreement(&mut self, bytes: &[u8]) -> Outcome {
        let (envelope, spec) = match self.check_agreement(bytes) {
            Ok(checked) => checked,
            Err(refusal) => return refusal,
        };
        let id = envelope.id();
        let signer = envelope.signer.fingerprint();
        let event_index = self.record(EventBody::AgreementAdmitted { id, envelope: bytes.to_vec() });
        self.idempotency.insert((signer, spec.idempotency_key.clone()), id);
        let record = AgreementRecord {
            signer,
            idempotency_key: spec.idempotency_key,
            status: AgreementStatus::Admitted,
            history: vec![(AgreementStatus::Admitted, event_index)],
            event_index,
            replicas: spec.replicas,
            labels: spec.labels,
        };
        self.agreements.insert(id, record);
        self.bump_revision();
        Outcome::Admitted { id, event_index }
    }
}
