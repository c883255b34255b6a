//! DockLock's replicated registry.
//!
//! Owns: the openraft type configuration ([`types`]), the registry state and
//! its pure transitions ([`registry`]), the sled log store and state machine
//! ([`store`]), and the Raft transport over tonic ([`network`]).
//!
//! Must not: run workloads, talk to clients (the node crate owns the public
//! API), or read the wall clock, randomness or anything but its own store
//! inside `apply`.
//!
//! Entry points: [`store::Store::open`], [`raft_config`],
//! [`network::NetworkFactory`], [`network::RaftService`].

pub mod agreements;
pub mod identities;
pub mod ledger;
pub mod network;
pub mod nodes;
pub mod proposer;
pub mod registry;
pub mod runs;
pub mod sessions;
pub mod store;
pub mod types;

use std::sync::Arc;

/// Timing and log-compaction settings of one node.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    /// Leader heartbeat period, in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, in milliseconds (the upper is twice it).
    pub election_timeout_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_entries: u64,
    /// Also build one after this many applied requests (an entry holds up
    /// to a proposal's worth), so a restart replays a bounded log.
    pub snapshot_requests: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub log_entries_kept: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 800,
            // etcd's defaults (`--snapshot-count`, and the entries it keeps
            // for slow followers). A snapshot copies the whole registry, so
            // each entry pays a share of a copy that falls with the
            // interval; at 10,000 the copies doubled the p99 of puts at 256
            // clients.
            snapshot_entries: 100_000,
            snapshot_requests: 200_000,
            log_entries_kept: 5_000,
        }
    }
}

/// The openraft configuration for `settings`.
pub fn raft_config(
    cluster_name: &str,
    settings: &RaftSettings,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_owned(),
        heartbeat_interval: settings.heartbeat_ms,
        election_timeout_min: settings.election_timeout_ms,
        election_timeout_max: settings.election_timeout_ms * 2,
        // A follower's acknowledgement round trip on this machine is well
        // under a millisecond; 1,000 entries per append keeps batches large
        // under load and each message far below the transport bound.
        max_payload_entries: 1_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_entries),
        snapshot_max_chunk_size: network::SNAPSHOT_CHUNK_BYTES,
        max_in_snapshot_log_to_keep: settings.log_entries_kept,
        purge_batch_size: 64,
        install_snapshot_timeout: 5_000,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}
