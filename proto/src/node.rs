//! A worker's registration: what a node tells the cluster about itself so the
//! scheduler can place work on it. Signed by the node's own key (the key the
//! registry holds for that node id), in the canonical encoding.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::agreement::NODE_TYPES;
use crate::canonical::{DecodeError, Reader, Writer};

/// Domain prefix of a node registration.
pub const REGISTRATION_PREFIX: &str = "docklock-node-registration-v1";
/// The label every worker sets to its cage's machine class (the witness
/// header's `machine=` line): a run's root holds only among nodes of one
/// class, so placement keeps an agreement's replicas on one.
pub const MACHINE_LABEL: &str = "docklock.machine";

/// Longest address, zone, label or feature string.
const STRING_BYTES_MAX: usize = 256;
/// Most labels or features.
const ITEMS_MAX: usize = 64;

/// What kind of work a node is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeType {
    /// Runs agreements.
    Compute,
    /// Holds artifacts.
    Storage,
    /// Fronts clients.
    Gateway,
    /// Votes and verifies; runs nothing by default.
    Validator,
    /// Any of the above.
    Hybrid,
}

impl NodeType {
    /// Every type, in code order (the order of [`NODE_TYPES`]).
    pub const ALL: [NodeType; 5] = [Self::Compute, Self::Storage, Self::Gateway, Self::Validator, Self::Hybrid];

    /// The name users and specs use.
    pub fn name(self) -> &'static str {
        NODE_TYPES[self as usize]
    }

    /// Parse a name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A node's committed status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Registered and heard from within the TTL.
    Ready,
    /// Silent for longer than the TTL.
    Down,
    /// Removed by an operator; never placed on again.
    Left,
}

impl NodeStatus {
    /// Every status, in code order.
    pub const ALL: [NodeStatus; 3] = [Self::Ready, Self::Down, Self::Left];

    /// The name users see.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU, in thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Cage features available on the host (`cgroup-v2`, `cpuid-faulting`, ...).
    pub features: BTreeSet<String>,
}

/// A node's self-description, signed by its node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// The cluster.
    pub cluster_id: String,
    /// The node.
    pub node_id: u64,
    /// Its gRPC address (`host:port`).
    pub address: String,
    /// Its type.
    pub node_type: NodeType,
    /// Its failure domain.
    pub zone: String,
    /// Free-form labels that constraints can select on.
    pub labels: BTreeMap<String, String>,
    /// What it offers.
    pub capacity: Capacity,
    /// SHA3-256 of the token its heartbeats carry: only the holder of the
    /// registration's token can keep the node alive.
    pub heartbeat_digest: [u8; 32],
}

fn check(what: &'static str, value: &str) -> Result<(), DecodeError> {
    if value.len() > STRING_BYTES_MAX || value.contains('\0') {
        return Err(DecodeError::invalid(what, format!("must be at most {STRING_BYTES_MAX} bytes without NUL")));
    }
    Ok(())
}

impl NodeRegistration {
    /// The digest a registration carries for a heartbeat `token`.
    pub fn token_digest(token: &[u8]) -> [u8; 32] {
        use sha3::{Digest as _, Sha3_256};
        let mut hasher = Sha3_256::new();
        hasher.update(b"docklock-heartbeat-token-v1\0");
        hasher.update(token);
        hasher.finalize().into()
    }

    /// Check the bounds a registration must meet.
    pub fn validate(&self) -> Result<(), DecodeError> {
        check("address", &self.address)?;
        if self.address.is_empty() {
            return Err(DecodeError::invalid("address", "is empty"));
        }
        check("zone", &self.zone)?;
        if self.labels.len() > ITEMS_MAX || self.capacity.features.len() > ITEMS_MAX {
            return Err(DecodeError::invalid("labels", format!("at most {ITEMS_MAX} labels and {ITEMS_MAX} features")));
        }
        for (key, value) in &self.labels {
            check("label", key)?;
            check("label", value)?;
        }
        for feature in &self.capacity.features {
            check("feature", feature)?;
        }
        Ok(())
    }

    /// The canonical bytes that are signed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(REGISTRATION_PREFIX);
        w.str(&self.cluster_id).u64(self.node_id).str(&self.address).u8(self.node_type as u8).str(&self.zone);
        w.str_map(&self.labels).u64(self.capacity.cpu_millis).u64(self.capacity.memory_mib);
        let features: Vec<String> = self.capacity.features.iter().cloned().collect();
        w.strs(&features).fixed(&self.heartbeat_digest);
        w.finish()
    }

    /// Decode and validate canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::with_prefix(bytes, REGISTRATION_PREFIX)?;
        let cluster_id = r.str("cluster id")?;
        let node_id = r.u64("node id")?;
        let address = r.str("address")?;
        let code = r.u8("node type")?;
        let node_type = *NodeType::ALL
            .get(code as usize)
            .ok_or_else(|| DecodeError::invalid("node type", format!("unknown code {code}")))?;
        let zone = r.str("zone")?;
        let labels = r.str_map("labels")?;
        let cpu_millis = r.u64("cpu")?;
        let memory_mib = r.u64("memory")?;
        let listed = r.strs("features")?;
        let features: BTreeSet<String> = listed.iter().cloned().collect();
        if features.len() != listed.len() || !listed.is_sorted() {
            return Err(DecodeError::invalid("features", "not sorted and distinct"));
        }
        let heartbeat_digest = r.array("heartbeat digest")?;
        r.finish()?;
        let registration = Self {
            cluster_id,
            node_id,
            address,
            node_type,
            zone,
            labels,
            capacity: Capacity { cpu_millis, memory_mib, features },
            heartbeat_digest,
        };
        registration.validate()?;
        Ok(registration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeRegistration {
        NodeRegistration {
            cluster_id: "c".into(),
            node_id: 4,
            address: "10.0.0.4:7000".into(),
            node_type: NodeType::Compute,
            zone: "eu-1".into(),
            labels: [("disk".to_owned(), "ssd".to_owned())].into(),
            capacity: Capacity {
                cpu_millis: 2000,
                memory_mib: 4096,
                features: ["cgroup-v2".to_owned(), "ptrace".to_owned()].into(),
            },
            heartbeat_digest: [7; 32],
        }
    }

    /// The canonical form round-trips, and every type's code matches its name.
    #[test]
    fn round_trip() {
        let registration = sample();
        assert_eq!(NodeRegistration::decode(&registration.canonical()).unwrap(), registration);
        for node_type in NodeType::ALL {
            assert_eq!(NodeType::parse(node_type.name()), Some(node_type));
        }
    }

    /// Oversized or unsorted fields are refused on decode.
    #[test]
    fn bounds() {
        let mut registration = sample();
        registration.zone = "z".repeat(STRING_BYTES_MAX + 1);
        assert!(NodeRegistration::decode(&registration.canonical()).is_err());
        let mut registration = sample();
        registration.address.clear();
        assert!(registration.validate().is_err());
        let mut bytes = sample().canonical();
        bytes.push(0);
        assert!(NodeRegistration::decode(&bytes).is_err(), "trailing bytes");
    }
}
