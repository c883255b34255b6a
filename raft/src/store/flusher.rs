//! The one place that makes the store durable: it writes the append
//! journal and flushes the sled database.
//!
//! sled 0.34's flush is not a durable write on Linux: it writes its log with
//! `pwrite` + `sync_file_range`, which neither flushes the device's write
//! cache nor the file's size, and it writes large values ("blobs", a file
//! each) with no sync at all; only its background thread calls `fsync`,
//! every 500 ms (and it is off here). A power cut could lose what such a
//! flush wrote. So after each sled flush
//! the flusher itself makes it durable: `fsync` of every blob file written
//! since the last flush and of the blob directory, then `fdatasync` of the
//! database file.
//!
//! sled 0.34.7 can deadlock when flushes run concurrently (sled#1308), so
//! every flush takes one lock.
//!
//! Log appends are made durable in the background by one thread, in order:
//! an append returns as soon as its entries are written to sled (unflushed)
//! and queued as a [`Journal`] record, and openraft is told they are durable
//! through their `LogFlushed` callback once the record is. This does *not*
//! let a leader replicate while its own write is in progress, as was once
//! believed here: openraft 0.9.25's `RaftCore::append_to_log` awaits the
//! callback before it runs the `Replicate` commands queued after the
//! append, so the followers' writes still start after the leader's (a
//! `perf trace` of sequential puts shows every AppendEntries leave the
//! leader just after its flusher's wake-up). What the thread buys is that
//! the runtime's other tasks (gRPC handlers, replication responses,
//! `apply`) run during the `fdatasync`. Doing the journal write inline
//! instead was measured (session 17) and made no difference either way.
//! Appends waiting together share one journal write and one `fdatasync`
//! (group commit), and are called back in the order they were made.
//!
//! Everything else (votes, truncations, snapshots) is a checkpoint: a sled
//! flush made durable as above, after which the journal restarts empty. A
//! checkpoint also runs when the journal is full.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::journal::Journal;

/// A callback to run once everything written before it was queued is durable.
type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

/// What the background thread is asked to make durable.
enum Job {
    /// Entries already written to sled, as a journal record's payload.
    Append { record: Vec<u8>, done: Done },
    /// Everything written to sled before it, by a sled flush.
    Checkpoint { done: Done },
}

/// Most callbacks served by one background flush.
const GROUP_MAX: usize = 1_024;

/// Flushes the database, one flush at a time. Cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    db: sled::Db,
    lock: Arc<Mutex<Durable>>,
    background: mpsc::Sender<Job>,
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
    /// A flusher for `db`, kept in `dir`, appending to `journal`, with its
    /// background thread (which ends when the last clone of the flusher is
    /// dropped). A journal that still holds records (replayed into sled by
    /// the caller) is checkpointed first.
    pub(super) fn new(db: sled::Db, dir: &Path, mut journal: Journal) -> io::Result<Self> {
        let (background, queue) = mpsc::channel::<Job>();
        let lock = Arc::new(Mutex::new(Durable::open(dir)?));
        if !journal.is_empty() {
            checkpoint(&db, &lock, &mut journal)?;
        }
        let (thread_db, thread_lock) = (db.clone(), lock.clone());
        std::thread::Builder::new()
            .name("sled-flusher".to_owned())
            .spawn(move || {
                while let Ok(first) = queue.recv() {
                    let mut group = vec![first];
                    while group.len() < GROUP_MAX {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    let result = make_durable(&thread_db, &thread_lock, &mut journal, &mut group);
                    for job in group {
                        let (Job::Append { done, .. } | Job::Checkpoint { done }) = job;
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
        self.queue(Job::Checkpoint {
            done: Box::new(move |result| {
                let _ = sender.send(result);
            }),
        });
        receiver.await.unwrap_or_else(|_| Err(io::Error::other("the sled flusher stopped")))
    }

    /// Call `done` from the background thread once `record` (a
    /// [`Journal::record`] of entries already written to sled) and every
    /// earlier request are durable; calls happen in the order of requests.
    pub(super) fn append_then(&self, record: Vec<u8>, done: impl FnOnce(io::Result<()>) + Send + 'static) {
        self.queue(Job::Append { record, done: Box::new(done) });
    }

    fn queue(&self, job: Job) {
        if let Err(mpsc::SendError(job)) = self.background.send(job) {
            // The thread is gone (it never exits while a sender lives, so
            // this is a panic in a callback): flush sled here instead.
            let (Job::Append { done, .. } | Job::Checkpoint { done }) = job;
            done(self.flush_now());
        }
    }
}

/// A flush slower than this is logged: every write waits for it.
const SLOW_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// Make one group of requests durable: its appends by one journal write,
/// or everything by a checkpoint if the group asks for one or the journal
/// is full. Every request in the group was queued after its sled write, so
/// a checkpoint starting now covers them all.
fn make_durable(db: &sled::Db, lock: &Mutex<Durable>, journal: &mut Journal, group: &mut [Job]) -> io::Result<()> {
    let mut records = Vec::with_capacity(group.len());
    for job in group.iter_mut() {
        match job {
            Job::Append { record, .. } => records.push(std::mem::take(record)),
            Job::Checkpoint { .. } => return checkpoint(db, lock, journal),
        }
    }
    if journal.fits(&records) {
        journal.append(&records)
    } else {
        checkpoint(db, lock, journal)
    }
}

/// A durable sled flush, after which the journal's records are redundant.
fn checkpoint(db: &sled::Db, lock: &Mutex<Durable>, journal: &mut Journal) -> io::Result<()> {
    flush_locked(db, lock)?;
    if journal.is_empty() {
        return Ok(());
    }
    journal.restart()
}

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
