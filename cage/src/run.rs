//! One run: stage the root and inputs, start the sandbox, collect output
//! under the limits, record the witness log, decide the verdict.

use std::fs::File;
use std::io::BufWriter;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::limits::{Limit, Limits};
use crate::policy::{self, Policy};
use crate::rootfs::{self, Prepared, Rootfs};
use crate::sandbox::{self, Bind, Plan};
use crate::witness::{self, Record, WitnessWriter, CHUNK_BYTES};

/// Version of the cage recorded in every witness header.
pub const CAGE_VERSION: &str = concat!("docklock-cage/", env!("CARGO_PKG_VERSION"));

/// Device nodes bound from the host.
const DEVICES: [&str; 4] = ["null", "zero", "random", "urandom"];
/// Size of the `/tmp` scratch tmpfs.
const TMP_BYTES: u64 = 64 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Program path inside the cage (e.g. `/usr/bin/ls`).
    pub program: String,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment (the cage starts empty and adds `TZ=UTC`).
    pub env: Vec<(String, String)>,
    /// Inputs: name under `/in` and host path.
    pub inputs: Vec<(String, PathBuf)>,
    /// Limits.
    pub limits: Limits,
    /// Seed (recorded; the determinism layer will use it).
    pub seed: [u8; 32],
    /// Where the run's stage directory is made (default: the system's
    /// temporary directory). It is removed when the run ends.
    pub stage_parent: Option<PathBuf>,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// Where unpacked root filesystems are cached (by digest).
    pub cache: PathBuf,
}

/// The default cache directory: `$DOCKLOCK_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/docklock`, else `~/.cache/docklock`.
pub fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKLOCK_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("docklock");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("docklock")
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Exit status 0.
    Ok,
    /// Non-zero exit status or a signal.
    ProgramFailed {
        /// Exit code, if it exited.
        exit_code: Option<i32>,
        /// Signal, if it was killed.
        signal: Option<i32>,
    },
    /// The workload made a system call the policy denies (it was killed
    /// with SIGSYS; which call is named once the supervisor traces it).
    PolicyViolation,
    /// A limit was exceeded.
    LimitExceeded {
        /// Which.
        limit: Limit,
    },
    /// The cage itself failed.
    CageError {
        /// What failed.
        reason: String,
    },
}

impl Verdict {
    /// The verdict in one line (recorded in the witness log).
    pub fn describe(&self) -> String {
        match self {
            Verdict::Ok => "ok".into(),
            Verdict::ProgramFailed { exit_code: Some(code), .. } => format!("program-failed exit {code}"),
            Verdict::ProgramFailed { signal, .. } => format!("program-failed signal {}", signal.unwrap_or(0)),
            Verdict::PolicyViolation => "policy-violation (a denied system call)".into(),
            Verdict::LimitExceeded { limit } => format!("limit-exceeded {limit}"),
            Verdict::CageError { reason } => format!("cage-error {reason}"),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// How it ended.
    pub verdict: Verdict,
    /// The witness log's Merkle root, hex.
    pub root: String,
    /// Records in the witness log.
    pub records: u64,
    /// Output files collected, by path under `/out`.
    pub outputs: Vec<String>,
    /// Wall time, milliseconds (not recorded in the witness: it is not
    /// deterministic).
    pub wall_ms: u64,
}

/// Errors before the workload could start.
#[derive(Debug, thiserror::Error)]
pub enum CageError {
    /// A file operation of the runner failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The spec cannot run.
    #[error("{0}")]
    Spec(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CageError {
    let what = what.into();
    move |source| CageError::Io { what, source }
}

fn check_name(name: &str) -> Result<(), CageError> {
    let valid = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\0')
        && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if valid {
        Ok(())
    } else {
        Err(CageError::Spec(format!("input name {name:?} must be a relative path without '.' or '..'")))
    }
}

/// Run `spec` with the host rootfs; stdout goes to `stdout` as well as the
/// witness log written to `witness_path`; output files are copied to
/// `out_dir` if given.
pub fn run(
    spec: &RunSpec,
    witness_path: &Path,
    out_dir: Option<&Path>,
    mut stdout: impl std::io::Write,
) -> Result<Outcome, CageError> {
    let started = Instant::now();
    let parent = spec.stage_parent.clone().unwrap_or_else(std::env::temp_dir);
    let stage = tempfile::Builder::new().prefix("docklock-cage-").tempdir_in(parent).map_err(io("create the stage"))?;
    let root = stage.path().join("root");
    let inputs = stage.path().join("in");
    let outputs = stage.path().join("out");
    for dir in [&root, &inputs, &outputs] {
        std::fs::create_dir(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    // The workload's uid maps to an unprivileged host uid: /out must be
    // writable by it, and the stage traversable.
    set_mode(stage.path(), 0o755)?;
    set_mode(&outputs, 0o777)?;

    let mut witness = WitnessWriter::new(BufWriter::new(
        File::create(witness_path).map_err(io(format!("create {}", witness_path.display())))?,
    ))
    .map_err(io("write the witness log"))?;
    let prepared = match rootfs::prepare(&spec.rootfs, &spec.cache) {
        Ok(prepared) => prepared,
        Err(error) => return Err(CageError::Spec(error.to_string())),
    };
    let policy = Policy::compile(policy::DEFAULT).map_err(|e| CageError::Spec(e.to_string()))?;
    let header = header(spec, &prepared, &policy);
    witness.record(&Record::Header(header)).map_err(io("write the witness log"))?;
    let mut sorted_inputs = spec.inputs.clone();
    sorted_inputs.sort();
    for (name, path) in &sorted_inputs {
        check_name(name)?;
        let bytes = std::fs::read(path).map_err(io(format!("read input {}", path.display())))?;
        let target = inputs.join(name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("stage an input"))?;
        }
        std::fs::write(&target, &bytes).map_err(io("stage an input"))?;
        // Keep the source's execute bits (an input may be the program);
        // never setuid or write bits for others.
        let mode = std::fs::metadata(path).map_err(io("stat an input"))?.permissions().mode() & 0o755;
        set_mode(&target, mode | 0o444)?;
        witness
            .record(&Record::Input { name: name.clone(), digest: witness::digest(&bytes) })
            .map_err(io("write the witness log"))?;
    }

    let plan = plan(spec, &prepared, &policy, &root, &inputs, &outputs)?;
    let verdict = match sandbox::start(&plan) {
        Err(error) => Verdict::CageError { reason: format!("cannot start the sandbox: {error}") },
        Ok(started_run) => supervise(started_run, &spec.limits, &mut witness, &mut stdout)?,
    };

    let mut collected = Vec::new();
    if !matches!(verdict, Verdict::CageError { .. }) {
        collect_outputs(&outputs, &outputs, &mut collected)?;
    }
    collected.sort();
    for relative in &collected {
        let bytes = std::fs::read(outputs.join(relative)).map_err(io("read an output"))?;
        let path = relative.display().to_string();
        witness
            .record(&Record::Output { path: path.clone(), size: bytes.len() as u64, digest: witness::digest(&bytes) })
            .map_err(io("write the witness log"))?;
        if let Some(out_dir) = out_dir {
            let target = out_dir.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("write an output"))?;
            }
            std::fs::write(&target, &bytes).map_err(io(format!("write {}", target.display())))?;
        }
    }
    witness.record(&Record::End(verdict.describe())).map_err(io("write the witness log"))?;
    let records = witness.len();
    let root = witness.finish().map_err(io("write the witness log"))?;
    Ok(Outcome {
        verdict,
        root: hex::encode(root),
        records,
        outputs: collected.iter().map(|p| p.display().to_string()).collect(),
        wall_ms: started.elapsed().as_millis() as u64,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CageError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

fn header(spec: &RunSpec, rootfs: &Prepared, policy: &Policy) -> String {
    let mut lines = vec![
        format!("cage={CAGE_VERSION}"),
        format!("policy=default sha3-256:{}", hex::encode(policy.digest)),
        format!("rootfs={}", rootfs.description),
        format!("program={}", spec.program),
        format!("seed={}", hex::encode(spec.seed)),
    ];
    lines.extend(spec.args.iter().enumerate().map(|(i, arg)| format!("arg.{i}={arg}")));
    let mut env = spec.env.clone();
    env.sort();
    lines.extend(env.iter().map(|(key, value)| format!("env.{key}={value}")));
    lines.push(spec.limits.describe());
    lines.join("\n")
}

/// Build the children's plan: directories and symlinks of the new root are
/// created here, on the host, before the fork.
fn plan(
    spec: &RunSpec,
    rootfs: &Prepared,
    policy: &Policy,
    root: &Path,
    inputs: &Path,
    outputs: &Path,
) -> Result<Plan, CageError> {
    let c = |path: &Path| sandbox::cstring(path.as_os_str().as_encoded_bytes()).map_err(io("a path"));
    let mut binds = Vec::new();
    // Each top-level entry of the rootfs: a directory or file is bound
    // read-only, a symlink (as on merged-/usr systems) recreated.
    for name in &rootfs.entries {
        let source = rootfs.source.join(name);
        let target = root.join(name);
        match std::fs::symlink_metadata(&source) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&source).map_err(io("read a rootfs symlink"))?;
                std::os::unix::fs::symlink(link, &target).map_err(io("recreate a rootfs symlink"))?;
            }
            Ok(meta) if meta.is_dir() || meta.is_file() => {
                if meta.is_dir() {
                    std::fs::create_dir(&target).map_err(io("create a mount point"))?;
                } else {
                    File::create(&target).map_err(io("create a mount point"))?;
                }
                let locked = sandbox::locked_flags(&source).map_err(io("statvfs"))?;
                binds.push(Bind { source: c(&source)?, target: c(&target)?, writable: false, device: false, locked });
            }
            _ => {}
        }
    }
    std::fs::create_dir(root.join("dev")).map_err(io("create /dev"))?;
    for device in DEVICES {
        let target = root.join("dev").join(device);
        File::create(&target).map_err(io("create a device mount point"))?;
        let host = Path::new("/dev").join(device);
        let locked = sandbox::locked_flags(&host).map_err(io("statvfs"))?;
        binds.push(Bind { source: c(&host)?, target: c(&target)?, writable: true, device: true, locked });
    }
    for (dir, source, writable) in [("in", inputs, false), ("out", outputs, true)] {
        let target = root.join(dir);
        std::fs::create_dir(&target).map_err(io("create a mount point"))?;
        let locked = sandbox::locked_flags(source).map_err(io("statvfs"))?;
        binds.push(Bind { source: c(source)?, target: c(&target)?, writable, device: false, locked });
    }
    for dir in ["tmp", "proc", ".old"] {
        std::fs::create_dir(root.join(dir)).map_err(io("create a mount point"))?;
    }
    let program = sandbox::cstring(spec.program.as_bytes()).map_err(io("the program"))?;
    if !spec.program.starts_with('/') {
        return Err(CageError::Spec(format!("program {:?} must be an absolute path inside the cage", spec.program)));
    }
    let mut argv = vec![program.clone()];
    for arg in &spec.args {
        argv.push(sandbox::cstring(arg.as_bytes()).map_err(io("an argument"))?);
    }
    let mut env: Vec<(String, String)> = spec.env.clone();
    env.retain(|(key, _)| key != "TZ");
    env.push(("TZ".into(), "UTC".into()));
    env.sort();
    let envp = env
        .iter()
        .map(|(key, value)| sandbox::cstring(format!("{key}={value}").as_bytes()).map_err(io("the environment")))
        .collect::<Result<_, _>>()?;
    let limits = &spec.limits;
    let rlimits = vec![
        (libc::RLIMIT_CPU, limits.cpu_secs),
        (libc::RLIMIT_AS, limits.memory_mib << 20),
        (libc::RLIMIT_NPROC, limits.processes),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_FSIZE, limits.file_size_bytes),
        (libc::RLIMIT_CORE, 0),
    ];
    Ok(Plan {
        root: c(root)?,
        root_locked: sandbox::locked_flags(root).map_err(io("statvfs"))?,
        binds,
        tmpfs: vec![(
            c(&root.join("tmp"))?,
            sandbox::cstring(format!("size={TMP_BYTES},mode=1777").as_bytes()).map_err(io("tmpfs"))?,
        )],
        proc_dir: c(&root.join("proc"))?,
        program,
        argv,
        envp,
        cwd: sandbox::cstring(b"/tmp").map_err(io("cwd"))?,
        rlimits,
        filters: policy
            .programs
            .iter()
            .map(|program| {
                program.iter().map(|op| libc::sock_filter { code: op.code, jt: op.jt, jf: op.jf, k: op.k }).collect()
            })
            .collect(),
    })
}

/// Read stdout and stderr under the limits, wait for the workload, decide.
/// One thread polls the three pipes (stdout, stderr, the init's status
/// report): no reader threads to start for a short run.
fn supervise(
    started: sandbox::Started,
    limits: &Limits,
    witness: &mut WitnessWriter<BufWriter<File>>,
    stdout_sink: &mut impl std::io::Write,
) -> Result<Verdict, CageError> {
    let keeper = started.keeper;
    let deadline = Instant::now() + Duration::from_millis(limits.wall_ms);
    let (mut over_wall, mut over_output, mut killed) = (false, false, false);
    let mut total = 0u64;
    let mut pending = Vec::new();
    let mut stderr = Vec::new();
    let mut status: Option<i32> = None;
    // Slots: stdout, stderr, status; None once at end of file.
    let mut open = [Some(started.stdout), Some(started.stderr), Some(started.status)];
    let mut buffer = vec![0; CHUNK_BYTES];
    while open.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() && !killed {
            over_wall = true;
            killed = true;
            kill(keeper);
        }
        let mut polls: Vec<libc::pollfd> = open
            .iter()
            .map(|fd| libc::pollfd {
                fd: fd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // After a kill the pipes close at once; poll briefly meanwhile.
        let timeout = if killed { 100 } else { left.as_millis().clamp(1, i32::MAX as u128) as i32 };
        if poll(&mut polls, timeout) <= 0 {
            continue;
        }
        for (slot, polled) in polls.iter().enumerate() {
            if polled.revents == 0 {
                continue;
            }
            let Some(fd) = open[slot].as_ref() else { continue };
            if slot == 2 {
                let mut bytes = [0u8; 4];
                if sandbox::read_full(fd, &mut bytes).unwrap_or(0) == 4 {
                    status = Some(i32::from_be_bytes(bytes));
                }
                open[slot] = None;
                continue;
            }
            let n = match sandbox::read_some(fd, &mut buffer) {
                Ok(0) | Err(_) => {
                    open[slot] = None;
                    continue;
                }
                Ok(n) => n,
            };
            let allowed = limits.output_bytes.saturating_sub(total).min(n as u64) as usize;
            total += n as u64;
            if allowed < n && !over_output {
                over_output = true;
                killed = true;
                kill(keeper);
            }
            if slot == 1 {
                stderr.extend_from_slice(&buffer[..allowed]);
                continue;
            }
            // Stdout is recorded in fixed chunks as it arrives.
            pending.extend_from_slice(&buffer[..allowed]);
            while pending.len() >= CHUNK_BYTES {
                let rest = pending.split_off(CHUNK_BYTES);
                let chunk = std::mem::replace(&mut pending, rest);
                stdout_sink.write_all(&chunk).map_err(io("write stdout"))?;
                witness.record(&Record::Stdout(chunk)).map_err(io("write the witness log"))?;
            }
        }
    }
    if !pending.is_empty() {
        witness.record(&Record::Stdout(pending.clone())).map_err(io("write the witness log"))?;
        stdout_sink.write_all(&pending).map_err(io("write stdout"))?;
    }
    for chunk in stderr.chunks(CHUNK_BYTES) {
        witness.record(&Record::Stderr(chunk.to_vec())).map_err(io("write the witness log"))?;
    }
    let mut setup_error = [0u8; 8];
    let setup_failed = sandbox::read_full(&started.setup_error, &mut setup_error).unwrap_or(0) == 8;
    reap(keeper);
    if setup_failed {
        return Ok(Verdict::CageError { reason: sandbox::describe_setup_error(&setup_error) });
    }
    if over_output {
        return Ok(Verdict::LimitExceeded { limit: Limit::Output });
    }
    if over_wall {
        return Ok(Verdict::LimitExceeded { limit: Limit::Wall });
    }
    match status {
        Some(status) => Ok(verdict_of(status)),
        None => Ok(Verdict::CageError { reason: "the init died without reporting".into() }),
    }
}

#[allow(unsafe_code)]
fn poll(polls: &mut [libc::pollfd], timeout_ms: i32) -> i32 {
    // SAFETY: polls is a valid slice of pollfd for its length.
    unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) }
}

fn verdict_of(status: i32) -> Verdict {
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Verdict::Ok,
            code => Verdict::ProgramFailed { exit_code: Some(code), signal: None },
        }
    } else {
        match libc::WTERMSIG(status) {
            libc::SIGXCPU => Verdict::LimitExceeded { limit: Limit::Cpu },
            libc::SIGXFSZ => Verdict::LimitExceeded { limit: Limit::FileSize },
            libc::SIGSYS => Verdict::PolicyViolation,
            signal => Verdict::ProgramFailed { exit_code: None, signal: Some(signal) },
        }
    }
}

#[allow(unsafe_code)]
fn kill(pid: libc::pid_t) {
    // SAFETY: kill has no memory preconditions; the keeper is our child and
    // is not reaped before `reap`, so the pid cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[allow(unsafe_code)]
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn collect_outputs(base: &Path, dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), CageError> {
    for entry in std::fs::read_dir(dir).map_err(io("list outputs"))? {
        let entry = entry.map_err(io("list outputs"))?;
        let kind = entry.file_type().map_err(io("list outputs"))?;
        if kind.is_dir() {
            collect_outputs(base, &entry.path(), found)?;
        } else if kind.is_file() {
            found.push(entry.path().strip_prefix(base).expect("under base").to_owned());
        }
        // Symlinks and special files in /out are not outputs.
    }
    Ok(())
}
