//! The one place that flushes the sled database.
//!
//! sled 0.34.7 can deadlock when flushes run concurrently (sled#1308), and an
//! fsync per append would cap throughput at one write per fsync. So every
//! flush goes through this thread: it takes all waiting requests, flushes once
//! and completes them all (group commit). Completions run in request order.

use std::io;
use std::sync::mpsc;
use std::thread;

/// Called with the flush result once the writes before the request are durable.
pub type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Most flush requests waiting at once; a sender blocks past it.
pub const FLUSH_QUEUE_MAX: usize = 4096;

/// Time to gather more flush requests once load is concurrent, in µs.
const GATHER_US: u64 = 300;

/// Handle to the flusher thread. The thread ends when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Flusher {
    requests: mpsc::SyncSender<FlushDone>,
}

impl Flusher {
    /// Start the flusher thread for `db`.
    pub fn start(db: sled::Db) -> io::Result<Self> {
        let (requests, queue) = mpsc::sync_channel::<FlushDone>(FLUSH_QUEUE_MAX);
        thread::Builder::new().name("sled-flusher".into()).spawn(move || run(&db, &queue))?;
        Ok(Self { requests })
    }

    /// Ask for a flush; `done` runs once everything written before this call
    /// is on disk.
    pub fn request(&self, done: FlushDone) {
        if let Err(mpsc::SendError(done)) = self.requests.send(done) {
            done(Err(io::Error::other("sled flusher thread has stopped")));
        }
    }

    /// Flush and wait for it.
    pub async fn flush(&self) -> io::Result<()> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.request(Box::new(move |result| {
            // The waiter may have been cancelled; then nobody needs the result.
            let _ = sender.send(result);
        }));
        receiver.await.map_err(|_| io::Error::other("sled flusher dropped a request"))?
    }
}

fn run(db: &sled::Db, queue: &mpsc::Receiver<FlushDone>) {
    let mut previous_batch = 1;
    while let Ok(first) = queue.recv() {
        // Under concurrent load, wait a moment for more requests so that one
        // flush serves them all: every sled flush seals an IO buffer and
        // wakes sled's whole IO thread pool, so fewer, larger flushes cost
        // far less CPU. A lone request (sequential load) is not delayed.
        if previous_batch > 1 {
            thread::sleep(std::time::Duration::from_micros(GATHER_US));
        }
        let mut batch = vec![first];
        while batch.len() < FLUSH_QUEUE_MAX {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        previous_batch = batch.len();
        let outcome = db.flush().map(drop).map_err(|error| error.to_string());
        for done in batch {
            done(outcome.clone().map_err(io::Error::other));
        }
    }
}
