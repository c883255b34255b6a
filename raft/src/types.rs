//! The openraft type configuration and the commands the registry applies.

use docklock_proto::agreement::AgreementId;
use docklock_proto::crypto::{Fingerprint, PublicKey};
use docklock_proto::ledger::Checkpoint;
use docklock_proto::node::NodeStatus;
use serde::{Deserialize, Serialize};

/// A node's id in the Raft group. Chosen by the operator (`--id N`), never
/// reused for a different machine's data.
pub type NodeId = u64;

/// A member's address as openraft stores it in the membership config.
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// DockLock's Raft types: a proposal of registry requests in, one
    /// response per request out.
    pub TypeConfig:
        D = Proposal,
        R = ProposalResult,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = crate::store::SnapshotBytes,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The running Raft instance.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// Membership as stored with the state it belongs to.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;

/// Identifies one client write so that a retry is applied once (Raft thesis
/// §6.3). `serial` increases per client; the registry keeps the outcome of the
/// most recent serials of each client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WriteSession {
    /// Opaque id chosen by the client, unique per client process.
    pub client_id: String,
    /// Per-client sequence number of the write.
    pub serial: u64,
}

/// The payload of one log entry: requests applied in order. The proposer
/// gathers concurrent writes into one proposal, so one append and one flush
/// serve them all (openraft 0.9 flushes each entry before taking the next).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Proposal {
    /// The requests, applied in this order.
    pub requests: Vec<Request>,
}

/// What applying one entry did: one response per request of its proposal
/// (none for blank and membership entries).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ProposalResult {
    /// Responses, in the order of the proposal's requests.
    pub responses: Vec<Response>,
}

/// One request to the registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Present for client writes that want at-most-once application.
    pub session: Option<WriteSession>,
    /// What to do.
    pub command: Command,
}

// Byte fields are `serde_bytes`: bincode then copies them whole instead of
// visiting each byte (the same encoding, so stored logs still decode).

/// A registry state change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Create or overwrite a variable.
    Put {
        /// Variable name.
        key: String,
        /// New value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a variable; removing a missing one is not an error.
    Delete {
        /// Variable name.
        key: String,
    },
    /// Write `value` only if the current state of `key` matches `expect`.
    Cas {
        /// Variable name.
        key: String,
        /// The precondition.
        expect: Expect,
        /// New value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Fix the cluster's id and first admin key, once: proposed by every
    /// initial member when it first leads; only the first applies.
    Bootstrap {
        /// The cluster id (binds signed identity changes to this cluster).
        cluster_id: String,
        /// The first admin key, if the cluster was initialised with one.
        admin: Option<PublicKey>,
    },
    /// An admin-signed identity change: a canonical
    /// [`docklock_proto::agreement::Envelope`] around an
    /// [`docklock_proto::identity::IdentityChange`].
    ChangeIdentity {
        /// The canonical envelope.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// A node registering its own key: an envelope around a
    /// [`docklock_proto::identity::NodeKeyClaim`] signed by that key.
    RegisterNode {
        /// The canonical envelope.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// Admit a signed agreement (a canonical envelope around a spec).
    SubmitAgreement {
        /// The canonical envelope.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// Record a checkpoint the leader signed.
    Checkpoint {
        /// The signed checkpoint.
        checkpoint: Box<Checkpoint>,
    },
    /// A worker describing itself: an envelope around a
    /// [`docklock_proto::node::NodeRegistration`] signed by its node key.
    RegisterWorker {
        /// The canonical envelope.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// The leader's liveness decision: `ready` or `down`.
    SetNodeStatus {
        /// The worker.
        node_id: u64,
        /// Its new status.
        status: NodeStatus,
    },
    /// Start or stop draining a worker.
    DrainNode {
        /// The worker.
        node_id: u64,
        /// Drain (true) or undrain (false).
        drain: bool,
    },
    /// Remove a worker for good; its placements move.
    RemoveNode {
        /// The worker.
        node_id: u64,
    },
    /// Re-place the next batch of agreements waiting for nodes.
    Reconcile,
    /// A node's signed execution report: an envelope around a
    /// [`docklock_proto::report::RunReport`].
    ReportRun {
        /// The canonical envelope.
        #[serde(with = "serde_bytes")]
        envelope: Vec<u8>,
    },
    /// The leader's decision that an agreement's deadline passed.
    TimeOut {
        /// The agreement.
        id: AgreementId,
    },
    /// Set the ring's virtual nodes per core of capacity.
    ConfigureRing {
        /// Virtual nodes per core.
        vnodes_per_core: u32,
    },
    /// Pause or resume placement (an operator's switch).
    SetScheduling {
        /// Pause (true) or resume (false).
        paused: bool,
    },
}

/// The precondition of a compare-and-set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key exists with exactly this value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key exists with exactly this version.
    Version(u64),
    /// The key does not exist.
    Absent,
}

/// A variable and its history counters, as etcd reports them. Revisions
/// count the registry's state changes (see [`Response::revision`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Current value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Writes since creation; 1 after the creating write.
    pub version: u64,
    /// Log index of the creating write.
    pub create_revision: u64,
    /// Log index of the latest write.
    pub mod_revision: u64,
}

/// The result of applying one request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    /// The registry's revision after the request: a counter of state changes,
    /// increased by one by every write that changed something (as etcd's
    /// revision), unchanged by refusals.
    pub revision: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// What applying an entry did. Deterministic refusals are outcomes too: they
/// are the same on every node and a retry must see them again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub enum Outcome {
    /// Nothing for the client.
    #[default]
    None,
    /// The key now holds `current`; `prev` is what it held before.
    Written {
        /// The variable after the write.
        current: Variable,
        /// The variable before the write, if it existed.
        prev: Option<Variable>,
    },
    /// The key was deleted (`prev` is `None` if it did not exist).
    Deleted {
        /// The variable before the delete, if it existed.
        prev: Option<Variable>,
    },
    /// A compare-and-set whose expectation did not hold; nothing changed.
    CasMismatch {
        /// The variable as it is, if it exists.
        current: Option<Variable>,
    },
    /// The write would exceed a registry bound; nothing changed.
    LimitExceeded {
        /// Which bound, in words.
        reason: String,
    },
    /// The request is malformed in a way only `apply` can judge; nothing changed.
    Invalid {
        /// What is wrong, in words.
        reason: String,
    },
    /// A signature, key or envelope that does not authenticate; nothing changed.
    Unauthenticated {
        /// What failed.
        reason: String,
    },
    /// An authenticated key that may not do this; nothing changed.
    PermissionDenied {
        /// What is missing.
        reason: String,
    },
    /// The request is valid but the registry is not in the state it needs
    /// (a stale identity epoch, a revoked key re-added); nothing changed.
    FailedPrecondition {
        /// What does not hold.
        reason: String,
    },
    /// The agreement (or its idempotency key for this signer) exists
    /// already; nothing changed.
    AlreadyExists {
        /// The existing agreement.
        id: AgreementId,
    },
    /// An agreement was admitted as ledger event `event_index`.
    Admitted {
        /// Its id.
        id: AgreementId,
        /// Its ledger event.
        event_index: u64,
    },
    /// An identity was added or revoked; the identity epoch is now `epoch`.
    IdentityChanged {
        /// The key concerned.
        fingerprint: Fingerprint,
        /// The identity epoch after the change.
        epoch: u64,
    },
    /// The registry was bootstrapped (or already was: `applied` false).
    Bootstrapped {
        /// Whether this request did it.
        applied: bool,
    },
    /// A checkpoint covering `tree_size` events was recorded.
    CheckpointRecorded {
        /// Events covered.
        tree_size: u64,
    },
    /// The named object does not exist; nothing changed.
    NotFound {
        /// What is missing.
        reason: String,
    },
    /// A worker's state after a registration or status change.
    NodeChanged {
        /// The worker.
        node_id: u64,
        /// Its status.
        status: NodeStatus,
        /// Whether it is draining.
        draining: bool,
    },
    /// A run report was recorded (or was a repeat).
    RunReported {
        /// The agreement's status after it.
        status: crate::agreements::AgreementStatus,
    },
    /// The scheduler's settings after a change.
    Scheduling {
        /// Whether placement is paused.
        paused: bool,
        /// Agreements waiting for placement.
        unsettled: u64,
        /// Virtual nodes per core on the ring.
        vnodes_per_core: u32,
    },
    /// A reconcile batch ran.
    Reconciled {
        /// Agreements it tried to place.
        tried: u64,
        /// Agreements still waiting for nodes.
        unsettled: u64,
    },
    /// The write's serial is older than the retained window of its client, so
    /// its first outcome is no longer known; nothing changed.
    SessionExpired {
        /// Oldest serial still remembered for that client.
        oldest_retained_serial: u64,
    },
}
