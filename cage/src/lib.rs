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
//! seccomp policy with its `trace` class, the ptrace supervisor (which
//! names denied calls and answers, witnesses or refuses traced ones),
//! rlimits and cgroup limits, wall-time, output, `/out` and event limits,
//! the witness log and replay are built, and the first slice of
//! determinism (logical time and counter, seeded randomness, the virtual
//! CPU, auxv, per-process state, sorted listings, a checked `/proc`).
//! Not yet: the rest of issue 4 (see `docs/DETERMINISM.md`).
//!
//! Entry point: [`run::run`].

mod cgroup;
mod cpuid;
mod digests;
pub mod launcher;
pub mod limits;
mod listing;
mod metadata;
pub mod policy;
pub mod replay;
pub mod rootfs;
pub mod run;
mod sandbox;
mod supervisor;
pub mod syscalls;
mod threads;
mod urandom;
pub mod witness;

pub use cgroup::Enforcement;
pub use cpuid::{machine_class, shows_host_cpu};
pub use sandbox::{CAGE_UID, HOSTNAME};
