//! Coalesced linearizable reads.
//!
//! A linearizable read needs a read index: the leader confirms with a quorum
//! that it still leads, then waits until it has applied up to its commit
//! index (openraft's `ensure_linearizable`). One confirmation serves every
//! read that arrived *before it started*, so concurrent reads share rounds:
//! a read joins the next round to start, never one already in flight (whose
//! read index may predate the read). At most one round runs at a time, so
//! read load costs one heartbeat round per round trip, not one per read.
//!
//! The read index is also at least the leader's last log index as the
//! round starts, not only openraft's (its commit index, or its first entry
//! of the term). A leader restarted after `kill -9` resumes leading its old
//! term at once (openraft restores a committed vote for itself) but knows
//! only the commit index it had *applied* before the crash: a write it had
//! committed and acknowledged, but not yet applied to disk, would be
//! missing from a read answered at that index. The Jepsen register
//! workload caught exactly that (a read of nothing after an acknowledged
//! write, right after the old leader came back). Every committed entry is
//! in the leader's log, so waiting until the log as it stood is applied is
//! always enough; it costs a read only the wait for writes already in
//! flight.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::status::{self, RegistryError};
use docklock_raft::types::Raft;

/// Most reads waiting for the next round; past it a read is refused.
pub const WAITING_READS_MAX: usize = 100_000;
/// How long a round waits for the read index to be applied.
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

type Waiter = oneshot::Sender<Result<(), RegistryError>>;

#[derive(Default)]
struct Rounds {
    running: bool,
    waiting: Vec<Waiter>,
}

/// Shares read-index rounds between concurrent reads.
pub struct ReadBarrier {
    raft: Raft,
    rounds: Arc<Mutex<Rounds>>,
}

impl ReadBarrier {
    /// Barrier for reads served by `raft`.
    pub fn new(raft: Raft) -> Self {
        Self { raft, rounds: Arc::new(Mutex::new(Rounds::default())) }
    }

    /// Return once a read of local state started now is linearizable.
    pub async fn wait(&self) -> Result<(), RegistryError> {
        let (sender, receiver) = oneshot::channel();
        let start_round = {
            let mut rounds = self.rounds.lock().expect("read rounds lock");
            if rounds.waiting.len() >= WAITING_READS_MAX {
                return Err(tonic::Status::resource_exhausted("too many linearizable reads waiting").into());
            }
            rounds.waiting.push(sender);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start_round {
            tokio::spawn(run_rounds(self.raft.clone(), self.rounds.clone()));
        }
        receiver.await.map_err(|_| RegistryError::Status(tonic::Status::unavailable("read barrier stopped")))?
    }
}

/// Run rounds until no read is waiting.
async fn run_rounds(raft: Raft, rounds: Arc<Mutex<Rounds>>) {
    loop {
        let waiters = {
            let mut rounds = rounds.lock().expect("read rounds lock");
            if rounds.waiting.is_empty() {
                rounds.running = false;
                return;
            }
            std::mem::take(&mut rounds.waiting)
        };
        let log_end = raft.metrics().borrow().last_log_index;
        let result = match raft.ensure_linearizable().await {
            Err(error) => Err(status::read_error(error)),
            Ok(_) => match raft.wait(Some(APPLY_WAIT)).applied_index_at_least(log_end, "linearizable read").await {
                Ok(_) => Ok(()),
                Err(error) => Err(RegistryError::Status(tonic::Status::unavailable(format!(
                    "the read index was not applied in time: {error}"
                )))),
            },
        };
        for waiter in waiters {
            // A reader that gave up (cancelled) needs no answer.
            let _ = waiter.send(result.clone());
        }
    }
}
