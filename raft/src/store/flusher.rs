//! The one place that flushes the sled database.
//!
//! sled 0.34.7 can deadlock when flushes run concurrently (sled#1308), so
//! every flush takes one lock. Flushes run on the calling task's thread:
//! openraft 0.9 awaits each log append's flush before its next step anyway,
//! and the proposer batches writes into few entries, so a flusher thread with
//! group commit would only add two thread hops to every write's latency.

use std::io;
use std::sync::{Arc, Mutex};

/// Flushes the database, one flush at a time. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Flusher {
    db: sled::Db,
    lock: Arc<Mutex<()>>,
}

impl Flusher {
    /// A flusher for `db`.
    pub fn new(db: sled::Db) -> Self {
        Self { db, lock: Arc::new(Mutex::new(())) }
    }

    /// Make every write made before this call durable.
    pub fn flush_now(&self) -> io::Result<()> {
        let _one_at_a_time = self.lock.lock().expect("flush lock poisoned");
        self.db.flush().map(drop).map_err(io::Error::other)
    }

    /// [`Self::flush_now`] from async code: on a multi-threaded runtime the
    /// worker hands its other tasks away while it waits for the disk.
    pub async fn flush(&self) -> io::Result<()> {
        let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
        if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
            tokio::task::block_in_place(|| self.flush_now())
        } else {
            self.flush_now()
        }
    }
}
