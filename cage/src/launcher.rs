//! The launcher: a small process that starts runs for a large one.
//!
//! Every run forks, and a fork copies the page tables of the whole
//! address space, whose pages then fault as either side writes them and
//! are unmapped again at exit. An agent's address space is large (its
//! registry, caches, the async runtime's threads): measured in the
//! end-to-end benchmark, fork, page faults and unmapping were a fifth of
//! the machine's CPU. The launcher is a fresh exec of the same binary
//! that does nothing but start runs, so what each run forks is small. It
//! also keeps the agent's memory, its keys among it, out of the run's
//! processes in the moments between fork and exec.
//!
//! Protocol: frames of a 4-byte big-endian length and JSON, over a Unix
//! stream socket that is the launcher's stdin. Requests run a spec (under
//! an id) or cancel a run; each run is answered once, with its id and its
//! outcome or error. The launcher ends when the socket closes (its agent
//! is gone), its runs with it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::run::{run_cancellable, CageError, Outcome, RunSpec, CANCEL_POLL_MS};

/// Largest frame either side accepts (a spec's arguments, environment and
/// input paths are far smaller).
const FRAME_BYTES_MAX: usize = 16 << 20;

#[derive(Serialize, Deserialize)]
enum Request {
    Run { id: u64, spec: Box<RunSpec>, witness: PathBuf, out_dir: Option<PathBuf>, stdout: PathBuf },
    Cancel { id: u64 },
}

#[derive(Serialize, Deserialize)]
struct Response {
    id: u64,
    result: Result<Outcome, WireError>,
}

/// A [`CageError`] as it crosses the socket.
#[derive(Serialize, Deserialize)]
enum WireError {
    Spec(String),
    Cancelled,
    Io(String),
}

impl From<CageError> for WireError {
    fn from(error: CageError) -> Self {
        match error {
            CageError::Spec(reason) => WireError::Spec(reason),
            CageError::Cancelled => WireError::Cancelled,
            other => WireError::Io(other.to_string()),
        }
    }
}

impl From<WireError> for CageError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::Spec(reason) => CageError::Spec(reason),
            WireError::Cancelled => CageError::Cancelled,
            WireError::Io(what) => CageError::Io { what, source: io::Error::other("in the cage launcher") },
        }
    }
}

fn write_frame(writer: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let length = u32::try_from(body.len()).map_err(io::Error::other)?;
    writer.write_all(&length.to_be_bytes())?;
    writer.write_all(&body)
}

/// The next frame, or `None` at the end of the stream.
fn read_frame<T: for<'de> Deserialize<'de>>(reader: &mut impl Read) -> io::Result<Option<T>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u32::from_be_bytes(length) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {length} bytes")));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Serve runs on stdin (a Unix stream socket) until it closes. This is
/// the launcher process's whole life.
#[allow(unsafe_code)]
pub fn serve() -> io::Result<()> {
    // SAFETY: fd 0 is this process's stdin, which its agent made one end of
    // a socket pair; nothing else in this process uses it.
    let socket = UnixStream::from(unsafe { OwnedFd::from_raw_fd(0) });
    let writer = Arc::new(Mutex::new(socket.try_clone()?));
    let cancels: Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>> = Arc::default();
    let mut reader = io::BufReader::new(socket);
    while let Some(request) = read_frame::<Request>(&mut reader)? {
        match request {
            Request::Cancel { id } => {
                if let Some(cancel) = cancels.lock().expect("cancel flags").get(&id) {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            Request::Run { id, spec, witness, out_dir, stdout } => {
                let cancel = Arc::new(AtomicBool::new(false));
                cancels.lock().expect("cancel flags").insert(id, cancel.clone());
                let (writer, cancels) = (writer.clone(), cancels.clone());
                // One thread per run: the cage supervises from the thread
                // that started it.
                std::thread::spawn(move || {
                    let run = || {
                        std::fs::File::create(&stdout)
                            .map_err(|source| CageError::Io { what: format!("create {}", stdout.display()), source })
                            // Stderr is kept in the witness log (`docklock agreement logs` reads it there).
                            .and_then(|sink| {
                                run_cancellable(&spec, &witness, out_dir.as_deref(), (sink, std::io::sink()), &cancel)
                            })
                    };
                    // A panic is a cage bug; it must still answer, or the
                    // agent waits for this run for ever.
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|_| {
                        Err(CageError::Io { what: "run the cage".to_owned(), source: io::Error::other("it panicked") })
                    });
                    cancels.lock().expect("cancel flags").remove(&id);
                    let response = Response { id, result: result.map_err(WireError::from) };
                    // The agent gone, nobody is waiting for the answer.
                    let _ = write_frame(&mut *writer.lock().expect("writer"), &response);
                });
            }
        }
    }
    Ok(())
}

/// One launcher process and the runs waiting for its answers.
struct Connection {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u64, mpsc::Sender<Result<Outcome, WireError>>>>,
    alive: AtomicBool,
    child: Mutex<Child>,
}

/// The agent's side: starts the launcher (again, if it died) and runs
/// specs through it.
pub struct Launcher {
    program: PathBuf,
    args: Vec<String>,
    connection: Mutex<Option<Arc<Connection>>>,
    next_id: AtomicU64,
}

impl Launcher {
    /// A launcher started as `program args...` (which must call [`serve`]),
    /// on first use.
    pub fn new(program: &Path, args: &[&str]) -> Self {
        let args = args.iter().map(|arg| (*arg).to_owned()).collect();
        Self { program: program.to_owned(), args, connection: Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    fn connection(&self) -> io::Result<Arc<Connection>> {
        let mut slot = self.connection.lock().expect("launcher connection");
        if let Some(connection) = slot.as_ref().filter(|c| c.alive.load(Ordering::Acquire)) {
            return Ok(connection.clone());
        }
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        let connection = Arc::new(Connection {
            writer: Mutex::new(ours.try_clone()?),
            pending: Mutex::default(),
            alive: AtomicBool::new(true),
            child: Mutex::new(child),
        });
        let reading = connection.clone();
        std::thread::Builder::new().name("cage-launcher".into()).spawn(move || {
            let mut reader = io::BufReader::new(ours);
            while let Ok(Some(response)) = read_frame::<Response>(&mut reader) {
                if let Some(waiting) = reading.pending.lock().expect("pending runs").remove(&response.id) {
                    let _ = waiting.send(response.result);
                }
            }
            // Gone: every waiting run hears so (its sender is dropped), and
            // the next run starts a new launcher.
            reading.alive.store(false, Ordering::Release);
            reading.pending.lock().expect("pending runs").clear();
            let mut child = reading.child.lock().expect("launcher child");
            let _ = child.kill();
            let _ = child.wait();
        })?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// The running launcher's process id, if one is running.
    pub fn process_id(&self) -> Option<u32> {
        let connection = self.connection.lock().ok()?.clone()?;
        let id = connection.child.lock().ok()?.id();
        connection.alive.load(Ordering::Acquire).then_some(id)
    }

    /// Run `spec` in the launcher, as [`run_cancellable`] would here:
    /// stdout into the file `stdout`, stopped once `cancel` is set.
    pub fn run(
        &self,
        spec: &RunSpec,
        witness: &Path,
        out_dir: Option<&Path>,
        stdout: &Path,
        cancel: &AtomicBool,
    ) -> Result<Outcome, CageError> {
        let lost = |source: io::Error| CageError::Io { what: "the cage launcher".into(), source };
        let connection = self.connection().map_err(lost)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = mpsc::channel();
        connection.pending.lock().expect("pending runs").insert(id, sender);
        let request = Request::Run {
            id,
            spec: Box::new(spec.clone()),
            witness: witness.to_owned(),
            out_dir: out_dir.map(Path::to_owned),
            stdout: stdout.to_owned(),
        };
        if let Err(error) = write_frame(&mut *connection.writer.lock().expect("launcher writer"), &request) {
            connection.pending.lock().expect("pending runs").remove(&id);
            return Err(lost(error));
        }
        let mut cancelled = false;
        loop {
            match answer.recv_timeout(Duration::from_millis(CANCEL_POLL_MS as u64)) {
                Ok(result) => return result.map_err(CageError::from),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(lost(io::Error::other("it exited during the run")));
                }
                Err(mpsc::RecvTimeoutError::Timeout) if cancel.load(Ordering::Relaxed) && !cancelled => {
                    cancelled = true;
                    let cancel = Request::Cancel { id };
                    write_frame(&mut *connection.writer.lock().expect("launcher writer"), &cancel).map_err(lost)?;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.lock().ok().and_then(|mut slot| slot.take()) {
            let _ = connection.writer.lock().map(|writer| writer.shutdown(std::net::Shutdown::Both));
        }
    }
}
