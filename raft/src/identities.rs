//! Identities in the registry: keys with roles, the admin-signed changes
//! that add and revoke them, node keys, and the checkpoints node keys sign.
//!
//! Every check here runs inside `apply` (and again at the API edge, which
//! calls the same functions on its current state to answer early): the
//! registry never trusts that the edge checked.

use docklock_proto::agreement::Envelope;
use docklock_proto::crypto::{Fingerprint, PublicKey};
use docklock_proto::identity::{ChangeKind, IdentityChange, NodeKeyClaim, Role};
use docklock_proto::ledger::{Checkpoint, EventBody};
use serde::{Deserialize, Serialize};

use crate::registry::Registry;
use crate::types::Outcome;

/// Most identities the registry holds.
pub const IDENTITIES_MAX: usize = 100_000;

/// A registered key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct IdentityRecord {
    /// The key.
    pub key: PublicKey,
    /// What it may do.
    pub role: Role,
    /// The node it belongs to (role `node`).
    pub node_id: Option<u64>,
    /// Revoked keys stay listed, and may never be added again.
    pub revoked: bool,
    /// The ledger event that added it.
    pub added_event: u64,
    /// The ledger event that revoked it.
    pub revoked_event: Option<u64>,
}

fn unauthenticated(reason: impl Into<String>) -> Outcome {
    Outcome::Unauthenticated { reason: reason.into() }
}

fn denied(reason: impl Into<String>) -> Outcome {
    Outcome::PermissionDenied { reason: reason.into() }
}

/// Decode an envelope (bounds and encoding only).
pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<Envelope, Outcome> {
    use docklock_proto::agreement::EnvelopeError;
    Envelope::decode(bytes).map_err(|error| match error {
        EnvelopeError::TooLarge(_) => Outcome::LimitExceeded { reason: error.to_string() },
        EnvelopeError::Decode(_) => Outcome::Invalid { reason: error.to_string() },
    })
}

/// Check an envelope's signature under its tagged algorithm.
pub(crate) fn verify_envelope(envelope: &Envelope) -> Result<(), Outcome> {
    envelope.verify().map_err(|error| unauthenticated(error.to_string()))
}

/// Decode an envelope and check its signature.
fn open_envelope(bytes: &[u8]) -> Result<Envelope, Outcome> {
    let envelope = decode_envelope(bytes)?;
    verify_envelope(&envelope)?;
    Ok(envelope)
}

impl Registry {
    /// The identity epoch: how many identity changes have been applied.
    pub fn identity_epoch(&self) -> u64 {
        self.counters.get("identity_epoch").copied().unwrap_or(0)
    }

    fn bump_epoch(&mut self) -> u64 {
        let next = self.identity_epoch() + 1;
        self.counters.insert("identity_epoch".to_owned(), next);
        next
    }

    /// The cluster id, once bootstrapped.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Every identity, by fingerprint.
    pub fn identities(&self) -> impl Iterator<Item = (&Fingerprint, &IdentityRecord)> {
        self.identities.iter()
    }

    /// One identity.
    pub fn identity(&self, fingerprint: &Fingerprint) -> Option<&IdentityRecord> {
        self.identities.get(fingerprint)
    }

    /// The key registered for `node_id`.
    pub fn node_key(&self, node_id: u64) -> Option<&IdentityRecord> {
        self.node_keys.get(&node_id).and_then(|fingerprint| self.identities.get(fingerprint))
    }

    /// The live (registered, unrevoked) identity with `fingerprint`, or the
    /// refusal.
    pub(crate) fn live_identity(&self, fingerprint: &Fingerprint) -> Result<&IdentityRecord, Outcome> {
        match self.identities.get(fingerprint) {
            None => Err(unauthenticated(format!("key {fingerprint} is not registered"))),
            Some(record) if record.revoked => Err(denied(format!("key {fingerprint} is revoked"))),
            Some(record) => Ok(record),
        }
    }

    pub(crate) fn bootstrap(&mut self, cluster_id: &str, admin: Option<&PublicKey>) -> Outcome {
        if self.cluster_id.is_some() {
            return Outcome::Bootstrapped { applied: false };
        }
        self.cluster_id = Some(cluster_id.to_owned());
        if let Some(key) = admin {
            let event = self.record(EventBody::AdminBootstrapped { key: key.clone() });
            self.insert_identity(key.clone(), Role::Admin, None, event);
            self.bump_epoch();
        }
        self.bump_revision();
        Outcome::Bootstrapped { applied: true }
    }

    fn insert_identity(&mut self, key: PublicKey, role: Role, node_id: Option<u64>, event: u64) {
        let fingerprint = key.fingerprint();
        if let Some(node_id) = node_id {
            self.node_keys.insert(node_id, fingerprint);
        }
        let record = IdentityRecord { key, role, node_id, revoked: false, added_event: event, revoked_event: None };
        self.identities.insert(fingerprint, record);
    }

    /// Check an admin-signed identity change against the current state.
    pub fn check_identity_change(&self, bytes: &[u8]) -> Result<(Envelope, IdentityChange), Outcome> {
        let envelope = open_envelope(bytes)?;
        let change =
            IdentityChange::decode(&envelope.message).map_err(|e| Outcome::Invalid { reason: e.to_string() })?;
        let signer = self.live_identity(&envelope.signer.fingerprint())?;
        if signer.role != Role::Admin {
            return Err(denied(format!("key {} has role {}, not admin", envelope.signer.fingerprint(), signer.role)));
        }
        if Some(change.cluster_id.as_str()) != self.cluster_id() {
            return Err(Outcome::FailedPrecondition {
                reason: format!("change is for cluster {:?}, this is {:?}", change.cluster_id, self.cluster_id()),
            });
        }
        if change.epoch != self.identity_epoch() {
            return Err(Outcome::FailedPrecondition {
                reason: format!(
                    "change was signed for identity epoch {}, the registry is at {}; re-sign it",
                    change.epoch,
                    self.identity_epoch()
                ),
            });
        }
        match &change.kind {
            ChangeKind::Add { key, .. } => {
                if let Some(existing) = self.identities.get(&key.fingerprint()) {
                    let state =
                        if existing.revoked { "was revoked and cannot return" } else { "is registered already" };
                    return Err(Outcome::FailedPrecondition { reason: format!("key {} {state}", key.fingerprint()) });
                }
                if self.identities.len() >= IDENTITIES_MAX {
                    return Err(Outcome::LimitExceeded {
                        reason: format!("registry holds {IDENTITIES_MAX} identities"),
                    });
                }
            }
            ChangeKind::Revoke { fingerprint } => match self.identities.get(fingerprint) {
                None => {
                    return Err(Outcome::FailedPrecondition { reason: format!("key {fingerprint} is not registered") })
                }
                Some(record) if record.revoked => {
                    return Err(Outcome::FailedPrecondition { reason: format!("key {fingerprint} is revoked already") })
                }
                Some(_) if *fingerprint == envelope.signer.fingerprint() && self.live_admins() == 1 => {
                    return Err(Outcome::FailedPrecondition { reason: "cannot revoke the last admin key".into() })
                }
                Some(_) => {}
            },
        }
        Ok((envelope, change))
    }

    fn live_admins(&self) -> usize {
        self.identities.values().filter(|record| record.role == Role::Admin && !record.revoked).count()
    }

    pub(crate) fn change_identity(&mut self, bytes: &[u8]) -> Outcome {
        let (envelope, change) = match self.check_identity_change(bytes) {
            Ok(checked) => checked,
            Err(refusal) => return refusal,
        };
        let by = envelope.signer.fingerprint();
        let fingerprint = match change.kind {
            ChangeKind::Add { key, role } => {
                let fingerprint = key.fingerprint();
                let event = self.record(EventBody::IdentityAdded { key: key.clone(), role, node_id: None, by });
                self.insert_identity(key, role, None, event);
                fingerprint
            }
            ChangeKind::Revoke { fingerprint } => {
                let event = self.record(EventBody::IdentityRevoked { fingerprint, by });
                let mut record = self.identities.get(&fingerprint).expect("checked above").clone();
                record.revoked = true;
                record.revoked_event = Some(event);
                self.identities.insert(fingerprint, record);
                fingerprint
            }
        };
        self.bump_revision();
        Outcome::IdentityChanged { fingerprint, epoch: self.bump_epoch() }
    }

    /// Check a node's claim on its key. `Ok(None)`: the key is registered
    /// for that node already (a restart), nothing to do.
    pub fn check_node_claim(&self, bytes: &[u8]) -> Result<Option<(Envelope, NodeKeyClaim)>, Outcome> {
        let envelope = open_envelope(bytes)?;
        let claim = NodeKeyClaim::decode(&envelope.message).map_err(|e| Outcome::Invalid { reason: e.to_string() })?;
        if Some(claim.cluster_id.as_str()) != self.cluster_id() {
            return Err(Outcome::FailedPrecondition {
                reason: format!("claim is for cluster {:?}, this is {:?}", claim.cluster_id, self.cluster_id()),
            });
        }
        let fingerprint = envelope.signer.fingerprint();
        if let Some(existing) = self.node_keys.get(&claim.node_id) {
            return if *existing == fingerprint {
                Ok(None)
            } else {
                Err(denied(format!("node {} has a different key registered ({existing})", claim.node_id)))
            };
        }
        match self.identities.get(&fingerprint) {
            // A worker outside the Raft membership: an admin authorised its
            // key (role node, no node yet), and the claim binds it to an id.
            Some(record) if record.role == Role::Node && record.node_id.is_none() && !record.revoked => {
                Ok(Some((envelope, claim)))
            }
            Some(_) => Err(Outcome::FailedPrecondition { reason: format!("key {fingerprint} is registered already") }),
            None if !self.members.contains(&claim.node_id) => Err(denied(format!(
                "node {} is not a member of the cluster; an admin must add its key with role node first",
                claim.node_id
            ))),
            None => Ok(Some((envelope, claim))),
        }
    }

    pub(crate) fn register_node(&mut self, bytes: &[u8]) -> Outcome {
        let (envelope, claim) = match self.check_node_claim(bytes) {
            Ok(Some(checked)) => checked,
            Ok(None) => {
                let fingerprint = Envelope::decode(bytes).expect("checked above").signer.fingerprint();
                return Outcome::IdentityChanged { fingerprint, epoch: self.identity_epoch() };
            }
            Err(refusal) => return refusal,
        };
        let key = envelope.signer;
        let fingerprint = key.fingerprint();
        let body = EventBody::IdentityAdded {
            key: key.clone(),
            role: Role::Node,
            node_id: Some(claim.node_id),
            by: fingerprint,
        };
        let event = self.record(body);
        self.insert_identity(key, Role::Node, Some(claim.node_id), event);
        self.bump_revision();
        Outcome::IdentityChanged { fingerprint, epoch: self.bump_epoch() }
    }

    /// Check that `checkpoint` is signed by the live node key of its signer
    /// node, for this cluster.
    pub fn check_checkpoint_signer(&self, checkpoint: &Checkpoint) -> Result<(), Outcome> {
        if Some(checkpoint.cluster_id.as_str()) != self.cluster_id() {
            return Err(Outcome::Invalid { reason: "checkpoint names another cluster".into() });
        }
        let record = self.live_identity(&checkpoint.signer_key.fingerprint())?;
        if record.role != Role::Node || record.node_id != Some(checkpoint.signer_node) {
            return Err(denied(format!(
                "checkpoint signer {} is not the node key of node {}",
                checkpoint.signer_key.fingerprint(),
                checkpoint.signer_node
            )));
        }
        checkpoint.verify_signature().map_err(|error| unauthenticated(error.to_string()))
    }

    /// What node `node_id` should sign as the next checkpoint, if its key
    /// `key` is the node's live registered key and the ledger grew past
    /// the latest checkpoint: `(tree_size, root, chain_head)`.
    pub fn checkpoint_due(&self, node_id: u64, key: &Fingerprint) -> Option<(u64, [u8; 32], [u8; 32])> {
        let registered =
            self.node_keys.get(&node_id) == Some(key) && self.identities.get(key).is_some_and(|record| !record.revoked);
        let latest = self.ledger.latest_checkpoint().map_or(0, |c| c.tree_size);
        (registered && self.ledger.size() > latest)
            .then(|| (self.ledger.size(), self.ledger.root(), self.ledger.head()))
    }

    pub(crate) fn record_checkpoint(&mut self, checkpoint: &Checkpoint) -> Outcome {
        if let Err(refusal) = self.check_checkpoint_signer(checkpoint) {
            return refusal;
        }
        match self.ledger.record_checkpoint(checkpoint, &mut self.writes) {
            Ok(()) => Outcome::CheckpointRecorded { tree_size: checkpoint.tree_size },
            Err(error) => Outcome::FailedPrecondition { reason: error.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use docklock_proto::agreement::Envelope;
    use docklock_proto::crypto::{Algorithm, KeyPair};
    use docklock_proto::identity::NodeKeyClaim;
    use docklock_proto::ledger::Checkpoint;

    use crate::registry::Registry;
    use crate::types::{Command, Outcome, Request};

    fn apply(registry: &mut Registry, command: Command) -> Outcome {
        registry.apply(&Request { session: None, command }, 7).outcome
    }

    fn claim(node_id: u64, key: &KeyPair) -> Command {
        let claim = NodeKeyClaim { cluster_id: "c".into(), node_id };
        Command::RegisterNode { envelope: Envelope::sign(claim.canonical(), key).canonical() }
    }

    fn checkpoint(registry: &Registry, node: u64, key: &KeyPair) -> Checkpoint {
        let ledger = registry.ledger();
        let (size, root, head) = (ledger.size(), ledger.root(), ledger.head());
        Checkpoint {
            cluster_id: "c".into(),
            tree_size: size,
            root,
            chain_head: head,
            signer_node: node,
            signer_key: key.public().clone(),
            signature: key.sign(&Checkpoint::signed_bytes("c", size, &root, &head)),
        }
    }

    /// Node keys register once per member; checkpoints must be signed by the
    /// named node's key and match the ledger.
    #[test]
    fn node_keys_and_checkpoints() {
        let mut registry = Registry::default();
        registry.apply_membership(1, vec![1, 2], vec![]);
        apply(&mut registry, Command::Bootstrap { cluster_id: "c".into(), admin: None });
        let (one, two, outsider) = (
            KeyPair::generate(Algorithm::MlDsa65),
            KeyPair::generate(Algorithm::MlDsa65),
            KeyPair::generate(Algorithm::Dilithium3),
        );
        assert!(matches!(apply(&mut registry, claim(1, &one)), Outcome::IdentityChanged { .. }));
        assert!(matches!(apply(&mut registry, claim(1, &one)), Outcome::IdentityChanged { .. }), "a restart");
        assert!(matches!(apply(&mut registry, claim(1, &two)), Outcome::PermissionDenied { .. }), "slot taken");
        assert!(matches!(apply(&mut registry, claim(9, &outsider)), Outcome::PermissionDenied { .. }), "not a member");
        assert!(matches!(apply(&mut registry, claim(2, &two)), Outcome::IdentityChanged { .. }));
        registry.seal_entry();

        let by_outsider = checkpoint(&registry, 1, &outsider);
        assert!(matches!(
            apply(&mut registry, Command::Checkpoint { checkpoint: Box::new(by_outsider) }),
            Outcome::Unauthenticated { .. }
        ));
        let wrong_node = checkpoint(&registry, 1, &two);
        assert!(matches!(
            apply(&mut registry, Command::Checkpoint { checkpoint: Box::new(wrong_node) }),
            Outcome::PermissionDenied { .. }
        ));
        let mut forged_root = checkpoint(&registry, 2, &two);
        forged_root.root[0] ^= 1;
        forged_root.signature =
            two.sign(&Checkpoint::signed_bytes("c", forged_root.tree_size, &forged_root.root, &forged_root.chain_head));
        assert!(matches!(
            apply(&mut registry, Command::Checkpoint { checkpoint: Box::new(forged_root) }),
            Outcome::FailedPrecondition { .. }
        ));
        let good = checkpoint(&registry, 2, &two);
        let size = good.tree_size;
        assert_eq!(
            apply(&mut registry, Command::Checkpoint { checkpoint: Box::new(good) }),
            Outcome::CheckpointRecorded { tree_size: size }
        );
        assert_eq!(registry.ledger().latest_checkpoint().map(|c| c.tree_size), Some(size));
        assert_eq!(registry.ledger().size(), size, "a checkpoint is not itself a ledger event");
    }
}
