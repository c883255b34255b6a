//! DockLock's wire contract and client SDK.
//!
//! Owns: the `.proto` files (package `docklock.v1`), the generated gRPC types
//! and stubs, the descriptor set served by reflection, and [`client::Client`],
//! the Rust SDK that finds the leader and retries safely.
//!
//! Must not depend on the registry, scheduler, cage or node crates: clients
//! and auditors link this crate alone.
//!
//! Also owns what a client needs offline: [`crypto`] (tagged post-quantum
//! keys and signatures), [`canonical`] (the signed byte encoding),
//! [`agreement`] and [`identity`] (the signed messages), [`merkle`] and
//! [`ledger`] (proofs, checkpoints, bundles and their verifier).
//!
//! Entry points: [`v1`] (generated code), [`client::Client`],
//! [`ledger::Bundle::verify`].

pub mod agreement;
pub mod artifact_client;
pub mod audit_client;
pub mod canonical;
pub mod client;
pub mod crypto;
pub mod identity;
pub mod ledger;
pub mod node;
pub mod report;
/// The Merkle tree (the `docklock-merkle` crate, re-exported).
pub use docklock_merkle as merkle;

/// Generated code for package `docklock.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("docklock.v1");
}

/// Encoded `FileDescriptorSet` of every DockLock proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/docklock_descriptor.bin"));

/// Metadata key carrying the current leader's address on `UNAVAILABLE` errors.
pub const LEADER_METADATA_KEY: &str = "x-docklock-leader";

/// Metadata key marking a request already forwarded once by a follower, so
/// that forwarding never loops.
pub const FORWARDED_METADATA_KEY: &str = "x-docklock-forwarded";

/// Metadata key naming the existing agreement on an `ALREADY_EXISTS` answer.
pub const AGREEMENT_ID_METADATA_KEY: &str = "x-docklock-agreement-id";
