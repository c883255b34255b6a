//! The one place that flushes the sled database.
//!
//! sled 0.34's flush is not a durable write on Linux: it writes its log with
//! `pwrite` + `sync_file_range`, which neither flushes the device's write
//! cache nor the file's size, and it writes large values ("blobs", a file
//! each) with no sync at all; only its background thread calls `fsync`,
//! every 500 ms. A `kill -9` loses nothing (the page cache survives), but a
//! power cut could lose acknowledged log entries. So after each sled flush
//! the flusher itself makes it durable: `fsync` of every blob file written
//! since the last flush and of the blob directory, then `fdatasync` of the
//! database file.
//!
//! sled 0.34.7 can deadlock when flushes run concurrently (sled#1308), so
//! every flush takes one lock.
//!
//! Log appends are flushed in the background by one thread, in order: an
//! append returns as soon as its entries are written to sled, and openraft
//! is told they are durable through their `LogFlushed` callback once a
//! flush that started after the write has finished. openraft runs a
//! leader's commands one after another, so a flush inside `append` held
//! back the replication of the very entries being flushed: the followers'
//! flushes started only after the leader's had finished, two disk waits in
//! a row on every write. Now the leader's flush and the replication overlap.
//! Callbacks waiting together share one flush (group commit), and are called
//! in the order their appends were made.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// A callback to run once everything written before it was queued is durable.
type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Most callbacks served by one background flush.
const GROUP_MAX: usize = 1_024;

/// Flushes the database, one flush at a time. Cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    db: sled::Db,
    lock: Arc<Mutex<Durable>>,
    background: mpsc::Sender<Done>,
}

/// What makes a sled flush durable (held under the flush lock).
struct Durable {
    /// sled's database file.
    file: File,
    /// sled's blob directory.
    blobs: PathBuf,
    /// Blob files already synced.
    synced: HashSet<OsString>,
}

impl Durable {
    fn open(dir: &Path) -> io::Result<Self> {
        Ok(Self { file: File::open(dir.join("db"))?, blobs: dir.join("blobs"), synced: HashSet::new() })
    }

    /// Sync what sled wrote but did not sync.
    fn sync(&mut self) -> io::Result<()> {
        let mut present = HashSet::new();
        let mut new_blob = false;
        match std::fs::read_dir(&self.blobs) {
            Ok(entries) => {
                for entry in entries {
                    let name = entry?.file_name();
                    if !self.synced.contains(&name) {
                        match File::open(self.blobs.join(&name)) {
                            Ok(blob) => blob.sync_all()?,
                            // Removed by sled's own collection meanwhile.
                            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                            Err(error) => return Err(error),
                        }
                        new_blob = true;
                    }
                    present.insert(name);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        if new_blob {
            File::open(&self.blobs)?.sync_all()?;
        }
        self.synced = present;
        self.file.sync_data()
    }
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

impl Flusher {
    /// A flusher for `db`, kept in `dir`, with its background thread (which
    /// ends when the last clone of the flusher is dropped).
    pub fn new(db: sled::Db, dir: &Path) -> io::Result<Self> {
        let (background, queue) = mpsc::channel::<Done>();
        let lock = Arc::new(Mutex::new(Durable::open(dir)?));
        let (thread_db, thread_lock) = (db.clone(), lock.clone());
        std::thread::Builder::new()
            .name("sled-flusher".to_owned())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    while group.len() < GROUP_MAX {
                        match queue.try_recv() {
                            Ok(done) => group.push(done),
                            Err(_) => break,
                        }
                    }
                    let result = flush_locked(&thread_db, &thread_lock);
                    for done in group {
                        done(match &result {
                            Ok(()) => Ok(()),
                            Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
                        });
                    }
                }
            })
            .expect("cannot start the sled flusher thread");
        Ok(Self { db, lock, background })
    }

    /// Make every write made before this call durable, now, on this thread
    /// (for callers outside the runtime; not ordered with queued appends).
    pub fn flush_now(&self) -> io::Result<()> {
        flush_locked(&self.db, &self.lock)
    }

    /// Make every write made before this call durable, in turn with the
    /// log appends queued before it: a vote, a truncation or a purge is
    /// durable only after every earlier append has been called back, the
    /// order openraft saw when each flush ran inline.
    pub async fn flush(&self) -> io::Result<()> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.flush_then(move |result| {
            let _ = sender.send(result);
        });
        receiver.await.unwrap_or_else(|_| Err(io::Error::other("the sled flusher stopped")))
    }

    /// Call `done` once every write made before this call is durable, from
    /// the background thread; calls happen in the order of these requests.
    pub fn flush_then(&self, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        if let Err(mpsc::SendError(done)) = self.background.send(Box::new(done)) {
            // The thread is gone (it never exits while a sender lives, so
            // this is a panic in a callback): flush here instead.
            done(self.flush_now());
        }
    }
}

/// A flush slower than this is logged: every write waits for it.
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

fn flush_locked(db: &sled::Db, lock: &Mutex<Durable>) -> io::Result<()> {
    let mut durable = lock.lock().expect("flush lock poisoned");
    let started = std::time::Instant::now();
    let result = db.flush().map_err(io::Error::other).and_then(|bytes| durable.sync().map(|()| bytes));
    let took = started.elapsed();
    if took > SLOW_FLUSH {
        tracing::warn!(ms = took.as_millis() as u64, bytes = result.as_ref().ok(), "slow sled flush");
    }
    result.map(drop)
}
