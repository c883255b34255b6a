//! Batching of client writes into proposals.
//!
//! openraft 0.9 appends each log entry and waits for it to be flushed before
//! taking the next, so one client write per entry caps a leader at one write
//! per flush. The proposer puts concurrent writes into one [`Proposal`]
//! (one entry, one append, one flush) and keeps a few proposals in flight, so
//! that writes arriving during a flush form the next proposal. A lone write is
//! proposed at once: batching adds no wait.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::types::{Node, NodeId, Proposal, Raft, Request, Response};

/// Most writes waiting to be proposed; past it a write is refused.
pub const QUEUE_MAX: usize = 16_384;
/// Most requests in one proposal.
pub const PROPOSAL_REQUESTS_MAX: usize = 1_024;
/// Most value bytes in one proposal (a larger single write still goes alone).
pub const PROPOSAL_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Proposals submitted to Raft and not yet applied. Session 19 tried 2:
/// puts from 256 clients gained about 6% (larger batches), but agreements
/// verified end to end, whose writes are few and costly to apply, fell by
/// about 12% in three alternated pairs (BENCHMARKS.md, issue 2); so 4.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;

/// Why a write was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// Raft refused or failed the proposal (not the leader, stopped, ...).
    #[error(transparent)]
    Raft(Box<RaftError<NodeId, ClientWriteError<NodeId, Node>>>),
    /// More writes are waiting than the queue holds.
    #[error("{QUEUE_MAX} writes are already waiting to be proposed")]
    Overloaded,
    /// The proposer stopped (the node is shutting down).
    #[error("the proposer has stopped")]
    Stopped,
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// Submits writes to Raft in batches. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Start batching writes for `raft`. Must run inside a tokio runtime.
    pub fn start(raft: Raft) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(run(raft, pending));
        Self { queue }
    }

    /// Apply `request` through Raft and return its response.
    pub async fn propose(&self, request: Request) -> Result<Response, ProposeError> {
        let (reply, response) = oneshot::channel();
        self.queue.try_send(Pending { request, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => ProposeError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => ProposeError::Stopped,
        })?;
        response.await.map_err(|_| ProposeError::Stopped)?
    }
}

fn request_bytes(request: &Request) -> usize {
    match &request.command {
        crate::types::Command::Put { key, value } => key.len() + value.len(),
        crate::types::Command::Delete { key } => key.len(),
        crate::types::Command::Cas { key, value, .. } => key.len() + 2 * value.len(),
        crate::types::Command::Bootstrap { cluster_id, admin } => {
            cluster_id.len() + admin.as_ref().map_or(0, |key| key.as_bytes().len())
        }
        crate::types::Command::ChangeIdentity { envelope }
        | crate::types::Command::RegisterNode { envelope }
        | crate::types::Command::SubmitAgreement { envelope }
        | crate::types::Command::RegisterWorker { envelope }
        | crate::types::Command::ReportRun { envelope } => envelope.len(),
        crate::types::Command::SetNodeStatus { .. }
        | crate::types::Command::DrainNode { .. }
        | crate::types::Command::RemoveNode { .. }
        | crate::types::Command::Reconcile
        | crate::types::Command::SetScheduling { .. }
        | crate::types::Command::ConfigureRing { .. }
        | crate::types::Command::TimeOut { .. } => 40,
        crate::types::Command::Checkpoint { checkpoint } => {
            checkpoint.signature.as_bytes().len() + checkpoint.signer_key.as_bytes().len()
        }
    }
}

async fn run(raft: Raft, mut pending: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let Some(first) = pending.recv().await else { return };
        let mut bytes = request_bytes(&first.request);
        let mut batch = vec![first];
        while batch.len() < PROPOSAL_REQUESTS_MAX && bytes < PROPOSAL_BYTES_MAX {
            match pending.try_recv() {
                Ok(next) => {
                    bytes += request_bytes(&next.request);
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.reply)).unzip();
            let count = requests.len();
            match raft.client_write(Proposal { requests }).await {
                Ok(written) => {
                    let responses = written.data.responses;
                    assert_eq!(responses.len(), count, "one response per proposed request");
                    for (reply, response) in replies.into_iter().zip(responses) {
                        // A caller that gave up needs no answer.
                        let _ = reply.send(Ok(response));
                    }
                }
                Err(error) => {
                    let error = ProposeError::Raft(Box::new(error));
                    for reply in replies {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}
