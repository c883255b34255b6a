//! The DockLock node: the `docklock` agent daemon and command-line client.
//!
//! Owns: argument and config parsing (`cli`), the public gRPC services
//! (`api`, `audit_api`), the mapping of errors to gRPC statuses (`status`, the only place
//! that does it), the agent's start-up and bootstrap (`agent`), a launcher
//! for local multi-process clusters (`launcher`, used by the demo and the
//! integration tests) and the embedded demo (`demo`).
//!
//! Must not: hold registry logic (that is `docklock-raft`) or wire types
//! (that is `docklock-proto`).
//!
//! Entry points: [`cli::run`], [`agent::Agent::start`],
//! [`launcher::LocalCluster`].

pub mod agent;
pub mod api;
pub mod artifacts;
pub mod audit_api;
pub mod cli;
pub mod cli_audit;
pub mod cli_cage;
pub mod cli_nodes;
pub mod cli_runs;
pub mod demo;
pub mod executor;
pub mod launcher;
pub mod nodes_api;
pub mod read_barrier;
pub mod status;
pub mod worker;
