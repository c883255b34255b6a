//! The one place where errors become gRPC statuses.

use docklock_proto::LEADER_METADATA_KEY;
use docklock_raft::proposer::ProposeError;
use docklock_raft::types::{Node, NodeId, Outcome};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::Status;

/// A request this node cannot serve because another node leads.
#[derive(Debug, Clone)]
pub struct NotLeader {
    /// The leader's id and address, if one is known.
    pub leader: Option<(NodeId, String)>,
}

impl NotLeader {
    fn from_forward(forward: &ForwardToLeader<NodeId, Node>) -> Self {
        let leader = match (forward.leader_id, &forward.leader_node) {
            (Some(id), Some(node)) => Some((id, node.addr.clone())),
            _ => None,
        };
        Self { leader }
    }

    /// `UNAVAILABLE` carrying the leader hint, for a client to follow.
    pub fn into_status(self) -> Status {
        match self.leader {
            Some((id, addr)) => {
                let mut status = Status::unavailable(format!("not the leader; the leader is node {id} at {addr}"));
                if let Ok(value) = MetadataValue::try_from(addr.as_str()) {
                    status.metadata_mut().insert(LEADER_METADATA_KEY, value);
                }
                status
            }
            None => Status::unavailable("no leader is known (election in progress or quorum lost); retry shortly"),
        }
    }
}

/// Why a registry operation failed on this node.
#[derive(Debug, Clone)]
pub enum RegistryError {
    /// Another node must serve it.
    NotLeader(NotLeader),
    /// A final answer for the client.
    Status(Status),
}

impl From<Status> for RegistryError {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl RegistryError {
    /// The status to return when forwarding is not possible.
    pub fn into_status(self) -> Status {
        match self {
            Self::NotLeader(not_leader) => not_leader.into_status(),
            Self::Status(status) => status,
        }
    }
}

fn fatal(error: &openraft::error::Fatal<NodeId>) -> Status {
    Status::unavailable(format!("this node's raft has stopped: {error}"))
}

/// Map a failed client write.
pub fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> RegistryError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            RegistryError::NotLeader(NotLeader::from_forward(&forward))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            RegistryError::Status(membership_error(&error))
        }
        RaftError::Fatal(error) => RegistryError::Status(fatal(&error)),
    }
}

/// Map a failed proposal.
pub fn propose_error(error: ProposeError) -> RegistryError {
    match error {
        ProposeError::Raft(error) => write_error(*error),
        ProposeError::Overloaded => RegistryError::Status(Status::resource_exhausted(format!("{error}; retry later"))),
        ProposeError::Stopped => RegistryError::Status(Status::unavailable("this node is shutting down")),
    }
}

/// Map a failed leadership check (the first step of a linearizable read).
pub fn read_error(error: RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>) -> RegistryError {
    match error {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
            RegistryError::NotLeader(NotLeader::from_forward(&forward))
        }
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error)) => {
            RegistryError::Status(Status::unavailable(format!("cannot confirm leadership: {error}")))
        }
        RaftError::Fatal(error) => RegistryError::Status(fatal(&error)),
    }
}

fn membership_error(error: &ChangeMembershipError<NodeId>) -> Status {
    match error {
        ChangeMembershipError::InProgress(_) => {
            Status::unavailable(format!("another membership change is in progress: {error}"))
        }
        ChangeMembershipError::LearnerNotFound(_) => {
            Status::failed_precondition(format!("{error}; add the node as a learner first"))
        }
        ChangeMembershipError::EmptyMembership(_) => {
            Status::failed_precondition(format!("refused: {error}; a cluster needs at least one voter"))
        }
    }
}

/// Map a registry outcome that refused the write; `None` if it succeeded.
pub fn refusal(outcome: &Outcome, key: &str) -> Option<Status> {
    match outcome {
        Outcome::CasMismatch { current: None } => {
            Some(Status::not_found(format!("compare-and-set refused: key {key:?} does not exist")))
        }
        Outcome::CasMismatch { current: Some(current) } => Some(Status::failed_precondition(format!(
            "compare-and-set refused: key {key:?} is at version {} and its value differs from the expectation",
            current.version
        ))),
        Outcome::Invalid { reason } => Some(Status::invalid_argument(reason.clone())),
        Outcome::LimitExceeded { reason } => Some(Status::resource_exhausted(format!("write refused: {reason}"))),
        Outcome::SessionExpired { oldest_retained_serial } => Some(Status::failed_precondition(format!(
            "write session serial is older than the oldest remembered ({oldest_retained_serial}); \
             its first outcome is unknown, so it was not applied"
        ))),
        Outcome::Unauthenticated { reason } => Some(Status::unauthenticated(reason.clone())),
        Outcome::PermissionDenied { reason } => Some(Status::permission_denied(reason.clone())),
        Outcome::FailedPrecondition { reason } => Some(Status::failed_precondition(reason.clone())),
        Outcome::NotFound { reason } => Some(Status::not_found(reason.clone())),
        Outcome::AlreadyExists { id } => {
            let mut status =
                Status::already_exists(format!("agreement {id} exists already (same envelope or idempotency key)"));
            if let Ok(value) = MetadataValue::try_from(id.to_hex().as_str()) {
                status.metadata_mut().insert(docklock_proto::AGREEMENT_ID_METADATA_KEY, value);
            }
            Some(status)
        }
        Outcome::None
        | Outcome::Written { .. }
        | Outcome::Deleted { .. }
        | Outcome::Admitted { .. }
        | Outcome::IdentityChanged { .. }
        | Outcome::Bootstrapped { .. }
        | Outcome::CheckpointRecorded { .. }
        | Outcome::NodeChanged { .. }
        | Outcome::Reconciled { .. }
        | Outcome::Scheduling { .. }
        | Outcome::RunReported { .. } => None,
    }
}

/// tonic refuses a request over the decode bound with `OUT_OF_RANGE`
/// ("decoded message length too large"); DockLock's contract for every size
/// bound is `RESOURCE_EXHAUSTED`. This response map, installed on the server,
/// rewrites exactly that status and leaves every other response alone.
pub fn size_limit_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|code| code == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        .is_some_and(|message| message.contains("length%20too%20large") || message.contains("length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}
