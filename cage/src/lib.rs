//! The cage: runs one workload on one node, contained, limited and recorded.
//!
//! Owns: process isolation (user, PID, mount, network, UTS and IPC
//! namespaces; a read-only root; tmpfs scratch; no inherited descriptors),
//! resource limits, verdicts, and the witness log whose Merkle root (the
//! shared RFC 6962 tree of `docklock-merkle`) identifies a run.
//!
//! Must not: know about Raft, gRPC or the cluster.
//!
//! Status: namespaces, the `host` rootfs, rootfs tarballs and images, the
//! seccomp allowlist, rlimits, wall-time and output limits and the witness
//! log are built. Not yet: the policy's `trace` class, the ptrace
//! supervisor (determinism), cgroup v2 limits, the full containment suite.
//!
//! Entry point: [`run::run`].

pub mod limits;
pub mod policy;
pub mod rootfs;
pub mod run;
mod sandbox;
pub mod syscalls;
pub mod witness;

pub use sandbox::{CAGE_UID, HOSTNAME};
