//! Coalesced linearizable reads.
//!
//! A linearizable read needs a read index: the leader confirms with a quorum
//! that it still leads, then waits until it has applied up to its commit
//! index (openraft's `ensure_linearizable`). One confirmation serves every
//! read that arrived *before it started*, so concurrent reads share rounds:
//! a read joins the next round to start, never one already in flight (whose
//! read index may predate the read). At most one round runs at a time, so
//! read load costs one heartbeat round per round trip, not one per read.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::status::{self, RegistryError};
use docklock_raft::types::Raft;

/// Most reads waiting for the next round; past it a read is refused.
pub const WAITING_READS_MAX: usize = 100_000;

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
        let result = raft.ensure_linearizable().await.map(drop).map_err(status::read_error);
        for waiter in waiters {
            // A reader that gave up (cancelled) needs no answer.
            let _ = waiter.send(result.clone());
        }
    }
}
