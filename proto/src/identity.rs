//! Roles and the signed messages that change who may do what.
//!
//! An identity change (add a key with a role, revoke a key) is signed by an
//! admin key and names the registry's *identity epoch* (the number of
//! identity changes applied so far): it applies only at that epoch, so a
//! captured change cannot be replayed later (after a revoke, say). A node
//! registers its own key with a self-signed [`NodeKeyClaim`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::canonical::{DecodeError, Reader, Writer};
use crate::crypto::{Fingerprint, PublicKey};

/// Domain prefix of an identity change.
pub const CHANGE_PREFIX: &str = "docklock-identity-change-v1";
/// Domain prefix of a node's claim on its key.
pub const NODE_CLAIM_PREFIX: &str = "docklock-node-key-v1";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Adds and revokes identities; may also submit.
    Admin,
    /// Submits agreements.
    Submitter,
    /// Reads the ledger and proofs (reads are open today; the role is
    /// recorded for the access control that TLS will bring).
    Auditor,
    /// A cluster node: signs checkpoints and execution reports.
    Node,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Submitter, Role::Auditor, Role::Node];

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Submitter => "submitter",
            Self::Auditor => "auditor",
            Self::Node => "node",
        }
    }

    /// Byte in canonical encodings.
    pub fn code(self) -> u8 {
        match self {
            Self::Admin => 1,
            Self::Submitter => 2,
            Self::Auditor => 3,
            Self::Node => 4,
        }
    }

    /// The role a canonical byte names.
    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|role| role.code() == code)
            .ok_or_else(|| DecodeError::invalid("role", format!("unknown role {code}")))
    }

    /// May this role submit agreements?
    pub fn may_submit(self) -> bool {
        matches!(self, Self::Admin | Self::Submitter)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| format!("unknown role {name:?} (roles: admin, submitter, auditor, node)"))
    }
}

/// An admin's change to the identity set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// Register `key` with `role`.
    Add {
        /// The key.
        key: PublicKey,
        /// Its role.
        role: Role,
    },
    /// Revoke the key with this fingerprint, permanently.
    Revoke {
        /// The key's fingerprint.
        fingerprint: Fingerprint,
    },
}

/// A change as signed: bound to one cluster and one identity epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityChange {
    /// The cluster it is for.
    pub cluster_id: String,
    /// The identity epoch it applies at.
    pub epoch: u64,
    /// What changes.
    pub kind: ChangeKind,
}

impl IdentityChange {
    /// The canonical bytes that are signed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(CHANGE_PREFIX);
        w.str(&self.cluster_id).u64(self.epoch);
        match &self.kind {
            ChangeKind::Add { key, role } => {
                w.u8(1);
                key.encode(&mut w);
                w.u8(role.code());
            }
            ChangeKind::Revoke { fingerprint } => {
                w.u8(2).fixed(&fingerprint.0);
            }
        }
        w.finish()
    }

    /// Decode canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::with_prefix(bytes, CHANGE_PREFIX)?;
        let cluster_id = r.str("cluster id")?;
        let epoch = r.u64("epoch")?;
        let kind = match r.u8("change kind")? {
            1 => {
                let key = PublicKey::decode(&mut r)?;
                ChangeKind::Add { key, role: Role::from_code(r.u8("role")?)? }
            }
            2 => ChangeKind::Revoke { fingerprint: Fingerprint(r.array("fingerprint")?) },
            other => return Err(DecodeError::invalid("change kind", format!("unknown kind {other}"))),
        };
        r.finish()?;
        Ok(Self { cluster_id, epoch, kind })
    }
}

/// A node's claim on its key: signed with that key, so the key's holder is
/// the one registering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeyClaim {
    /// The cluster.
    pub cluster_id: String,
    /// The claiming node.
    pub node_id: u64,
}

impl NodeKeyClaim {
    /// The canonical bytes that are signed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(NODE_CLAIM_PREFIX);
        w.str(&self.cluster_id).u64(self.node_id);
        w.finish()
    }

    /// Decode canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::with_prefix(bytes, NODE_CLAIM_PREFIX)?;
        let claim = Self { cluster_id: r.str("cluster id")?, node_id: r.u64("node id")? };
        r.finish()?;
        Ok(claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Algorithm, KeyPair};

    #[test]
    fn changes_round_trip() {
        let key = KeyPair::generate(Algorithm::MlDsa65).public().clone();
        for kind in [
            ChangeKind::Add { key: key.clone(), role: Role::Submitter },
            ChangeKind::Revoke { fingerprint: key.fingerprint() },
        ] {
            let change = IdentityChange { cluster_id: "c".into(), epoch: 3, kind };
            assert_eq!(IdentityChange::decode(&change.canonical()).unwrap(), change);
        }
        let claim = NodeKeyClaim { cluster_id: "c".into(), node_id: 2 };
        assert_eq!(NodeKeyClaim::decode(&claim.canonical()).unwrap(), claim);
        assert!(IdentityChange::decode(&claim.canonical()).is_err(), "prefixes keep message kinds apart");
    }
}
