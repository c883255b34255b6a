//! The audit ledger's formats and the offline verifier.
//!
//! Every registry change is an [`Event`] at a ledger position. Events are
//! hash-chained ([`chain_next`]) and are the leaves of an RFC 6962-shape
//! SHA3-256 Merkle tree ([`crate::merkle`]). Leaders sign [`Checkpoint`]s
//! `(tree_size, root, chain_head)`; a proof is always paired with the signed
//! checkpoint it was computed against. A [`Bundle`] holds one event, its
//! inclusion proof and the checkpoint: [`Bundle::verify`] checks it with no
//! network access.

use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};

use crate::agreement::{AgreementId, Digest, Envelope};
use crate::canonical::{DecodeError, Reader, Writer};
use crate::crypto::{Fingerprint, PublicKey, Signature};
use crate::identity::Role;
use crate::merkle::{self, Hash};
use crate::node::NodeStatus;

/// Domain prefix of an event.
pub const EVENT_PREFIX: &str = "docklock-event-v1";
/// Domain prefix of the hash chain.
pub const CHAIN_PREFIX: &str = "docklock-ledger-v1";
/// Domain prefix of a checkpoint.
pub const CHECKPOINT_PREFIX: &str = "docklock-checkpoint-v1";
/// Format tag of a proof bundle.
pub const BUNDLE_FORMAT: &str = "docklock-proof-bundle-v1";

/// The chain head before the first event.
pub const CHAIN_START: Hash = [0; 32];

/// `h_i = SHA3-256("docklock-ledger-v1" || h_{i-1} || index || event_bytes)`,
/// each part in canonical form.
pub fn chain_next(previous: &Hash, index: u64, event_bytes: &[u8]) -> Hash {
    let mut w = Writer::with_prefix(CHAIN_PREFIX);
    w.fixed(previous).u64(index).bytes(event_bytes);
    Sha3_256::digest(w.finish()).into()
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventBody {
    /// Raft membership changed.
    Membership {
        /// Voter ids.
        voters: Vec<u64>,
        /// Learner ids.
        learners: Vec<u64>,
    },
    /// The first admin key, given at cluster initialisation.
    AdminBootstrapped {
        /// The key.
        key: PublicKey,
    },
    /// A key was registered.
    IdentityAdded {
        /// The key.
        key: PublicKey,
        /// Its role.
        role: Role,
        /// The node it belongs to (role `node` only).
        node_id: Option<u64>,
        /// Who signed the change (the node itself for a node key).
        by: Fingerprint,
    },
    /// A key was revoked.
    IdentityRevoked {
        /// The key's fingerprint.
        fingerprint: Fingerprint,
        /// The admin who signed it.
        by: Fingerprint,
    },
    /// A variable was written; the value is recorded by digest.
    VariablePut {
        /// Name.
        key: String,
        /// SHA3-256 of the new value.
        value: Digest,
        /// Its version after the write.
        version: u64,
    },
    /// A variable was deleted.
    VariableDeleted {
        /// Name.
        key: String,
    },
    /// An agreement was admitted; the event holds the whole signed envelope,
    /// so a proof of this event proves what was signed.
    AgreementAdmitted {
        /// Its id.
        id: AgreementId,
        /// The canonical envelope.
        envelope: Vec<u8>,
    },
    /// A worker registered (or re-registered) itself; the event holds its
    /// signed registration.
    NodeRegistered {
        /// The node.
        node_id: u64,
        /// The canonical envelope around a [`crate::node::NodeRegistration`].
        envelope: Vec<u8>,
    },
    /// A worker's status or drain flag changed.
    NodeStatusChanged {
        /// The node.
        node_id: u64,
        /// Its status now.
        status: NodeStatus,
        /// Whether it is draining now.
        draining: bool,
    },
    /// An agreement's replicas changed: `added` were chosen by attempt
    /// `attempt`; `nodes` is every live replica after the change.
    AgreementPlaced {
        /// The agreement.
        id: AgreementId,
        /// The attempt that chose `added`.
        attempt: u64,
        /// Every live replica.
        nodes: Vec<u64>,
        /// The replicas this attempt added.
        added: Vec<u64>,
    },
    /// An agreement is waiting for nodes.
    AgreementPending {
        /// The agreement.
        id: AgreementId,
        /// Which constraint excluded how many nodes.
        reason: String,
    },
    /// A node's signed execution report (commit or reveal); the event holds
    /// the whole envelope, so a proof of it proves what the node said.
    RunReported {
        /// The agreement.
        id: AgreementId,
        /// The reporting node.
        node: u64,
        /// The canonical envelope around a [`crate::report::RunReport`].
        envelope: Vec<u8>,
    },
    /// Every replica revealed: the verdict and each node's root.
    AgreementConcluded {
        /// The agreement.
        id: AgreementId,
        /// `verified` (all roots equal) or `diverged`.
        verdict: String,
        /// Each replica's node and witness root.
        roots: Vec<(u64, [u8; 32])>,
    },
}

impl EventBody {
    /// A short name of the kind, for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Membership { .. } => "membership",
            Self::AdminBootstrapped { .. } => "admin-bootstrapped",
            Self::IdentityAdded { .. } => "identity-added",
            Self::IdentityRevoked { .. } => "identity-revoked",
            Self::VariablePut { .. } => "variable-put",
            Self::VariableDeleted { .. } => "variable-deleted",
            Self::AgreementAdmitted { .. } => "agreement-admitted",
            Self::NodeRegistered { .. } => "node-registered",
            Self::NodeStatusChanged { .. } => "node-status-changed",
            Self::AgreementPlaced { .. } => "agreement-placed",
            Self::AgreementPending { .. } => "agreement-pending",
            Self::RunReported { .. } => "run-reported",
            Self::AgreementConcluded { .. } => "agreement-concluded",
        }
    }
}

/// One ledger event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the ledger, from 0.
    pub index: u64,
    /// The Raft log entry that produced it.
    pub raft_index: u64,
    /// What changed.
    pub body: EventBody,
}

fn u64_list(w: &mut Writer, values: &[u64]) {
    w.u32(values.len() as u32);
    for value in values {
        w.u64(*value);
    }
}

fn read_u64_list(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let count = r.u32(what)? as usize;
    if count > 1024 {
        return Err(DecodeError::invalid(what, format!("{count} items")));
    }
    (0..count).map(|_| r.u64(what)).collect()
}

impl Event {
    /// The canonical bytes: the Merkle leaf and the chain's input.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(EVENT_PREFIX);
        w.u64(self.index).u64(self.raft_index);
        match &self.body {
            EventBody::Membership { voters, learners } => {
                w.u8(1);
                u64_list(&mut w, voters);
                u64_list(&mut w, learners);
            }
            EventBody::AdminBootstrapped { key } => {
                w.u8(2);
                key.encode(&mut w);
            }
            EventBody::IdentityAdded { key, role, node_id, by } => {
                w.u8(3);
                key.encode(&mut w);
                w.u8(role.code()).opt_u64(*node_id).fixed(&by.0);
            }
            EventBody::IdentityRevoked { fingerprint, by } => {
                w.u8(4).fixed(&fingerprint.0).fixed(&by.0);
            }
            EventBody::VariablePut { key, value, version } => {
                w.u8(5).str(key).fixed(&value.0).u64(*version);
            }
            EventBody::VariableDeleted { key } => {
                w.u8(6).str(key);
            }
            EventBody::AgreementAdmitted { id, envelope } => {
                w.u8(7).fixed(&id.0).bytes(envelope);
            }
            EventBody::NodeRegistered { node_id, envelope } => {
                w.u8(8).u64(*node_id).bytes(envelope);
            }
            EventBody::NodeStatusChanged { node_id, status, draining } => {
                w.u8(9).u64(*node_id).u8(*status as u8).bool(*draining);
            }
            EventBody::AgreementPlaced { id, attempt, nodes, added } => {
                w.u8(10).fixed(&id.0).u64(*attempt);
                u64_list(&mut w, nodes);
                u64_list(&mut w, added);
            }
            EventBody::AgreementPending { id, reason } => {
                w.u8(11).fixed(&id.0).str(reason);
            }
            EventBody::RunReported { id, node, envelope } => {
                w.u8(12).fixed(&id.0).u64(*node).bytes(envelope);
            }
            EventBody::AgreementConcluded { id, verdict, roots } => {
                w.u8(13).fixed(&id.0).str(verdict).u32(roots.len() as u32);
                for (node, root) in roots {
                    w.u64(*node).fixed(root);
                }
            }
        }
        w.finish()
    }

    /// Decode canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::with_prefix(bytes, EVENT_PREFIX)?;
        let index = r.u64("index")?;
        let raft_index = r.u64("raft index")?;
        let body = match r.u8("event kind")? {
            1 => EventBody::Membership {
                voters: read_u64_list(&mut r, "voters")?,
                learners: read_u64_list(&mut r, "learners")?,
            },
            2 => EventBody::AdminBootstrapped { key: PublicKey::decode(&mut r)? },
            3 => EventBody::IdentityAdded {
                key: PublicKey::decode(&mut r)?,
                role: Role::from_code(r.u8("role")?)?,
                node_id: r.opt_u64("node id")?,
                by: Fingerprint(r.array("by")?),
            },
            4 => EventBody::IdentityRevoked {
                fingerprint: Fingerprint(r.array("fingerprint")?),
                by: Fingerprint(r.array("by")?),
            },
            5 => EventBody::VariablePut {
                key: r.str("key")?,
                value: Digest(r.array("value digest")?),
                version: r.u64("version")?,
            },
            6 => EventBody::VariableDeleted { key: r.str("key")? },
            7 => EventBody::AgreementAdmitted {
                id: AgreementId(r.array("agreement id")?),
                envelope: r.bytes("envelope")?.to_vec(),
            },
            8 => EventBody::NodeRegistered { node_id: r.u64("node id")?, envelope: r.bytes("envelope")?.to_vec() },
            9 => EventBody::NodeStatusChanged {
                node_id: r.u64("node id")?,
                status: {
                    let code = r.u8("node status")?;
                    *NodeStatus::ALL
                        .get(code as usize)
                        .ok_or_else(|| DecodeError::invalid("node status", format!("unknown code {code}")))?
                },
                draining: r.bool("draining")?,
            },
            10 => EventBody::AgreementPlaced {
                id: AgreementId(r.array("agreement id")?),
                attempt: r.u64("attempt")?,
                nodes: read_u64_list(&mut r, "nodes")?,
                added: read_u64_list(&mut r, "added")?,
            },
            11 => EventBody::AgreementPending { id: AgreementId(r.array("agreement id")?), reason: r.str("reason")? },
            12 => EventBody::RunReported {
                id: AgreementId(r.array("agreement id")?),
                node: r.u64("node")?,
                envelope: r.bytes("envelope")?.to_vec(),
            },
            13 => {
                let id = AgreementId(r.array("agreement id")?);
                let verdict = r.str("verdict")?;
                let count = r.u32("roots")? as usize;
                if count > 1024 {
                    return Err(DecodeError::invalid("roots", format!("{count} items")));
                }
                let roots = (0..count)
                    .map(|_| Ok((r.u64("node")?, r.array("root")?)))
                    .collect::<Result<Vec<_>, DecodeError>>()?;
                EventBody::AgreementConcluded { id, verdict, roots }
            }
            other => return Err(DecodeError::invalid("event kind", format!("unknown kind {other}"))),
        };
        r.finish()?;
        Ok(Self { index, raft_index, body })
    }
}

/// A tree head and chain head, signed by the node that led when it was
/// issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The cluster's id.
    pub cluster_id: String,
    /// Number of events covered.
    pub tree_size: u64,
    /// Merkle root over the first `tree_size` events.
    #[serde(with = "hex_array")]
    pub root: Hash,
    /// Chain head after the first `tree_size` events.
    #[serde(with = "hex_array")]
    pub chain_head: Hash,
    /// The signing node's id.
    pub signer_node: u64,
    /// The signing node's key.
    pub signer_key: PublicKey,
    /// Signature over [`Checkpoint::signed_bytes`].
    pub signature: Signature,
}

impl Checkpoint {
    /// The canonical bytes the node signs.
    pub fn signed_bytes(cluster_id: &str, tree_size: u64, root: &Hash, chain_head: &Hash) -> Vec<u8> {
        let mut w = Writer::with_prefix(CHECKPOINT_PREFIX);
        w.str(cluster_id).u64(tree_size).fixed(root).fixed(chain_head);
        w.finish()
    }

    /// Check the signature under the embedded key. Whether that key is a
    /// node key of the cluster is for the caller to decide (the registry
    /// checks it online; offline, pin it with `--trusted-key`).
    pub fn verify_signature(&self) -> Result<(), crate::crypto::CryptoError> {
        let message = Self::signed_bytes(&self.cluster_id, self.tree_size, &self.root, &self.chain_head);
        self.signer_key.verify(&message, &self.signature)
    }
}

/// Serde for a 32-byte hash as hex.
pub mod hex_array {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write as hex.
    pub fn serialize<S: Serializer>(value: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(value))
    }

    /// Read 64 hex characters.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes.try_into().map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

/// A self-contained proof that one event is in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// The event's canonical bytes, hex.
    pub event: String,
    /// The audit path from the event's leaf to the checkpoint's root, hex.
    pub inclusion_proof: Vec<String>,
    /// The checkpoint the proof was computed against.
    pub checkpoint: Checkpoint,
}

/// Which check of a bundle failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle of this format.
    #[error("format: {0}")]
    Format(String),
    /// The event bytes do not decode.
    #[error("event: {0}")]
    Event(#[from] DecodeError),
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("inclusion proof: {0}")]
    Inclusion(#[from] merkle::VerifyError),
    /// The checkpoint signature does not verify.
    #[error("checkpoint signature: {0}")]
    CheckpointSignature(crate::crypto::CryptoError),
    /// The checkpoint is not signed by a pinned key.
    #[error("checkpoint signer {0} is not among the trusted keys")]
    UntrustedSigner(Fingerprint),
    /// An agreement event whose envelope does not match its id or signature.
    #[error("agreement: {0}")]
    Agreement(String),
}

/// What a verified bundle proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The event.
    pub event: Event,
    /// The checkpoint it is included in.
    pub checkpoint: Checkpoint,
}

impl Bundle {
    /// Assemble a bundle.
    pub fn new(event_bytes: &[u8], proof: &[Hash], checkpoint: Checkpoint) -> Self {
        Self {
            format: BUNDLE_FORMAT.to_owned(),
            event: hex::encode(event_bytes),
            inclusion_proof: proof.iter().map(hex::encode).collect(),
            checkpoint,
        }
    }

    /// Check everything offline: the event decodes; its leaf is included in
    /// the checkpoint's tree at its index; the checkpoint is signed by its
    /// key, and that key is one of `trusted` (when any are given); an
    /// agreement event's envelope hashes to its id and its signature verifies.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<Verified, BundleError> {
        if self.format != BUNDLE_FORMAT {
            return Err(BundleError::Format(format!("expected {BUNDLE_FORMAT:?}, found {:?}", self.format)));
        }
        let event_bytes =
            hex::decode(&self.event).map_err(|e| BundleError::Format(format!("event is not hex: {e}")))?;
        let proof = self
            .inclusion_proof
            .iter()
            .map(|text| {
                hex::decode(text)
                    .ok()
                    .and_then(|bytes| Hash::try_from(bytes).ok())
                    .ok_or_else(|| BundleError::Format(format!("proof hash {text:?} is not 32 bytes of hex")))
            })
            .collect::<Result<Vec<Hash>, _>>()?;
        let event = Event::decode(&event_bytes)?;
        let checkpoint = &self.checkpoint;
        merkle::verify_inclusion(
            &merkle::leaf_hash(&event_bytes),
            event.index,
            checkpoint.tree_size,
            &proof,
            &checkpoint.root,
        )?;
        checkpoint.verify_signature().map_err(BundleError::CheckpointSignature)?;
        if !trusted.is_empty() && !trusted.contains(&checkpoint.signer_key) {
            return Err(BundleError::UntrustedSigner(checkpoint.signer_key.fingerprint()));
        }
        if let EventBody::AgreementAdmitted { id, envelope } = &event.body {
            let envelope = Envelope::decode(envelope).map_err(|e| BundleError::Agreement(e.to_string()))?;
            if envelope.id() != *id {
                return Err(BundleError::Agreement("envelope does not hash to the agreement id".into()));
            }
            envelope.verify().map_err(|e| BundleError::Agreement(e.to_string()))?;
        }
        Ok(Verified { event, checkpoint: checkpoint.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Algorithm, KeyPair};
    use crate::merkle::MemoryTree;

    fn events(key: &PublicKey) -> Vec<Event> {
        let bodies = vec![
            EventBody::Membership { voters: vec![1, 2, 3], learners: vec![] },
            EventBody::AdminBootstrapped { key: key.clone() },
            EventBody::VariablePut { key: "k".into(), value: Digest::of(b"v"), version: 1 },
            EventBody::VariableDeleted { key: "k".into() },
            EventBody::IdentityRevoked { fingerprint: key.fingerprint(), by: key.fingerprint() },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Event { index: i as u64, raft_index: 10 + i as u64, body })
            .collect()
    }

    fn bundle_for(index: usize) -> (Bundle, KeyPair) {
        let node = KeyPair::generate(Algorithm::MlDsa65);
        let events = events(node.public());
        let mut tree = MemoryTree::default();
        let mut head = CHAIN_START;
        for event in &events {
            let bytes = event.canonical();
            tree.push(&bytes);
            head = chain_next(&head, event.index, &bytes);
        }
        let size = tree.len();
        let root = tree.root();
        let signed = Checkpoint::signed_bytes("cluster", size, &root, &head);
        let checkpoint = Checkpoint {
            cluster_id: "cluster".into(),
            tree_size: size,
            root,
            chain_head: head,
            signer_node: 1,
            signer_key: node.public().clone(),
            signature: node.sign(&signed),
        };
        let proof = merkle::inclusion_proof(&tree, index as u64, size).unwrap();
        (Bundle::new(&events[index].canonical(), &proof, checkpoint), node)
    }

    #[test]
    fn events_round_trip() {
        let key = KeyPair::generate(Algorithm::Dilithium3);
        for event in events(key.public()) {
            assert_eq!(Event::decode(&event.canonical()).unwrap(), event);
        }
    }

    #[test]
    fn bundle_verifies_and_any_flipped_bit_fails() {
        let (bundle, node) = bundle_for(2);
        bundle.verify(&[]).unwrap();
        bundle.verify(&[node.public().clone()]).unwrap();
        let other = KeyPair::generate(Algorithm::MlDsa65);
        assert!(matches!(bundle.verify(&[other.public().clone()]), Err(BundleError::UntrustedSigner(_))));
        let json = serde_json::to_string(&bundle).unwrap();
        let reread: Bundle = serde_json::from_str(&json).unwrap();
        assert_eq!(reread, bundle);
        // Flip one bit of each hex field's first byte.
        let flip = |text: &str| {
            let mut bytes = hex::decode(text).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
            hex::encode(bytes)
        };
        let mut tampered = bundle.clone();
        tampered.event = flip(&tampered.event);
        assert!(tampered.verify(&[]).is_err());
        let mut tampered = bundle.clone();
        tampered.inclusion_proof[0] = flip(&tampered.inclusion_proof[0]);
        assert!(matches!(tampered.verify(&[]), Err(BundleError::Inclusion(_))));
        let mut tampered = bundle.clone();
        tampered.checkpoint.root[3] ^= 1;
        assert!(tampered.verify(&[]).is_err());
        let mut tampered = bundle.clone();
        tampered.checkpoint.chain_head[0] ^= 1;
        assert!(matches!(tampered.verify(&[]), Err(BundleError::CheckpointSignature(_))));
        let mut tampered = bundle.clone();
        tampered.checkpoint.tree_size += 1;
        assert!(tampered.verify(&[]).is_err());
    }
}
