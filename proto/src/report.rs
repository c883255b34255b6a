//! Execution reports: what a node says about its run of an agreement,
//! signed with its node key, in two phases. First it commits to its witness
//! root without showing it (`SHA3(root || nonce)`); once every replica has
//! committed it reveals the root and nonce. A replica cannot copy another's
//! root: none is visible until all are fixed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};

use crate::agreement::{AgreementId, Digest};
use crate::canonical::{DecodeError, Reader, Writer};

/// Domain prefix of a report.
pub const REPORT_PREFIX: &str = "docklock-report-v1";
/// Most output files a report names.
pub const OUTPUTS_MAX: usize = 1024;

/// A witness root, a nonce or a commitment.
pub type Hash = [u8; 32];

/// The commitment to `root` under `nonce`.
pub fn commitment(root: &Hash, nonce: &Hash) -> Hash {
    let mut hasher = Sha3_256::new();
    hasher.update(b"docklock-commit-v1\0");
    hasher.update(root);
    hasher.update(nonce);
    hasher.finalize().into()
}

/// What a node revealed about its run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revealed {
    /// The witness log's Merkle root.
    pub root: Hash,
    /// The nonce of the commitment.
    pub nonce: Hash,
    /// The cage's verdict in one line (`ok`, `program-failed exit 3`, ...).
    pub verdict: String,
    /// The run's stdout, as an artifact.
    pub stdout: Digest,
    /// The witness log, as an artifact (so anyone can replay the run).
    pub witness: Digest,
    /// Files left in `/out`, by path, as artifacts.
    pub outputs: BTreeMap<String, Digest>,
}

/// The phase of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// `SHA3(root || nonce)`.
    Commit(Hash),
    /// The root and what came with it.
    Reveal(Box<Revealed>),
    /// The run yields no result to agree on: it could not start, for a
    /// reason that is the same on every node (an input the cage refuses, an
    /// image without a program, ...), or a host-dependent limit (wall-clock
    /// or CPU time) cut it short.
    Fail(String),
}

/// Longest failure reason a report carries.
pub const FAIL_REASON_BYTES_MAX: usize = 1024;

/// One report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// The cluster.
    pub cluster_id: String,
    /// The agreement run.
    pub agreement: AgreementId,
    /// The placement attempt that gave this node its replica.
    pub attempt: u64,
    /// The reporting node.
    pub node: u64,
    /// Commit or reveal.
    pub phase: Phase,
}

impl RunReport {
    /// The canonical bytes that are signed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(REPORT_PREFIX);
        w.str(&self.cluster_id).fixed(&self.agreement.0).u64(self.attempt).u64(self.node);
        match &self.phase {
            Phase::Commit(commitment) => {
                w.u8(1).fixed(commitment);
            }
            Phase::Reveal(revealed) => {
                w.u8(2).fixed(&revealed.root).fixed(&revealed.nonce).str(&revealed.verdict);
                w.fixed(&revealed.stdout.0).fixed(&revealed.witness.0);
                w.u32(revealed.outputs.len() as u32);
                for (name, digest) in &revealed.outputs {
                    w.str(name).fixed(&digest.0);
                }
            }
            Phase::Fail(reason) => {
                w.u8(3).str(reason);
            }
        }
        w.finish()
    }

    /// Decode canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::with_prefix(bytes, REPORT_PREFIX)?;
        let cluster_id = r.str("cluster id")?;
        let agreement = AgreementId(r.array("agreement id")?);
        let attempt = r.u64("attempt")?;
        let node = r.u64("node")?;
        let phase = match r.u8("phase")? {
            1 => Phase::Commit(r.array("commitment")?),
            2 => {
                let root = r.array("root")?;
                let nonce = r.array("nonce")?;
                let verdict = r.str("verdict")?;
                let stdout = Digest(r.array("stdout digest")?);
                let witness = Digest(r.array("witness digest")?);
                let count = r.u32("outputs")? as usize;
                if count > OUTPUTS_MAX {
                    return Err(DecodeError::invalid("outputs", format!("{count} outputs, at most {OUTPUTS_MAX}")));
                }
                let mut outputs = BTreeMap::new();
                for _ in 0..count {
                    let name = r.str("output name")?;
                    let digest = Digest(r.array("output digest")?);
                    if outputs.insert(name, digest).is_some() {
                        return Err(DecodeError::invalid("outputs", "a name appears twice"));
                    }
                }
                Phase::Reveal(Box::new(Revealed { root, nonce, verdict, stdout, witness, outputs }))
            }
            3 => {
                let reason = r.str("failure reason")?;
                if reason.len() > FAIL_REASON_BYTES_MAX {
                    return Err(DecodeError::invalid("failure reason", format!("over {FAIL_REASON_BYTES_MAX} bytes")));
                }
                Phase::Fail(reason)
            }
            other => return Err(DecodeError::invalid("phase", format!("unknown phase {other}"))),
        };
        r.finish()?;
        Ok(Self { cluster_id, agreement, attempt, node, phase })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_commitment() {
        let revealed = Revealed {
            root: [1; 32],
            nonce: [2; 32],
            verdict: "ok".into(),
            stdout: Digest([3; 32]),
            witness: Digest([4; 32]),
            outputs: [("result.txt".to_owned(), Digest([5; 32]))].into(),
        };
        for phase in [
            Phase::Commit(commitment(&[1; 32], &[2; 32])),
            Phase::Reveal(Box::new(revealed)),
            Phase::Fail("no program".into()),
        ] {
            let report =
                RunReport { cluster_id: "c".into(), agreement: AgreementId([9; 32]), attempt: 2, node: 3, phase };
            assert_eq!(RunReport::decode(&report.canonical()).unwrap(), report);
        }
        assert_ne!(commitment(&[1; 32], &[2; 32]), commitment(&[1; 32], &[3; 32]));
    }
}
