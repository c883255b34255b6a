//! One run: stage the root and inputs, start the sandbox, collect output
//! under the limits, record the witness log, decide the verdict.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};
use serde::Serialize;

use crate::cgroup::{Cgroup, Enforcement};
use crate::limits::{Limit, Limits};
use crate::policy::{self, Policy};
use crate::replay::escape;
use crate::rootfs::{self, Prepared, Rootfs};
use crate::sandbox::{self, Bind, Node, Plan};
use crate::supervisor::{self, Ending, Supervisor};
use crate::witness::{self, BackgroundWriter, Record, WitnessWriter, CHUNK_BYTES};
use crate::CAGE_UID;

/// How often a run looks at its cancel flag, at most (ms).
pub const CANCEL_POLL_MS: u128 = 100;
/// Version of the cage recorded in every witness header.
///
/// The revision after `+` counts changes to what a caged program can see
/// (the virtual CPU, the emulated calls, the cage's `/dev` and `/proc`):
/// the same run gives another root across one, and a replay by another
/// revision differs at the header, which says why, not somewhere later.
/// Revision 2: CPUID leaf 2 descriptors, one vDSO unmap record,
/// `AT_MINSIGSTKSZ`, `/dev/urandom` streams, the cage's own `/proc`
/// machine files, `SIOCGSTAMP` refused. Revision 3: virtual inode numbers
/// per process (the cage's tmpfs too); threads serialised (were refused);
/// ephemeral ports the process's own; cgroup files and the core pattern
/// absent; `AT_MINSIGSTKSZ` 16384. Revision 4: the header names the
/// machine class (`machine=`), the host CPU where CPUID cannot be faulted.
pub const CAGE_VERSION: &str = concat!("docklock-cage/", env!("CARGO_PKG_VERSION"), "+4");

/// Device nodes bound from the host.
const DEVICES: [&str; 2] = ["null", "zero"];
/// Bytes of the file `/dev/random` and `/dev/urandom` are in the cage,
/// drawn from the seed (a stream of its own, so they are not the bytes
/// `getrandom` returns). Reads of it are answered from a stream per open
/// file (`urandom.rs`); the file's own bytes show only where the
/// supervisor does not answer (a mapping of it).
const DEV_RANDOM_BYTES: usize = 4096;
/// The ChaCha20 stream of the seed they come from (`getrandom` uses 0).
const DEV_RANDOM_STREAM: u64 = 1;
/// The contents of the `/proc` files the cage replaces, by path under
/// `/proc`: the virtual CPU, memory as the memory limit with nothing used,
/// no load, booted at the logical clock's zero, the default overcommit
/// policy. Fixed: they do not follow the
/// workload's use (a hole only in what they tell, never in what differs
/// between runs).
fn synthetic_proc(memory_mib: u64) -> Vec<(&'static str, String)> {
    let kib = memory_mib.saturating_mul(1024);
    let meminfo = format!(
        "MemTotal:       {kib:8} kB\nMemFree:        {kib:8} kB\nMemAvailable:   {kib:8} kB\n\
         Buffers:               0 kB\nCached:                0 kB\nSwapCached:            0 kB\n\
         Active:                0 kB\nInactive:              0 kB\nSwapTotal:             0 kB\n\
         SwapFree:              0 kB\nDirty:                 0 kB\nWriteback:             0 kB\n\
         AnonPages:             0 kB\nMapped:                0 kB\nShmem:                 0 kB\n\
         Slab:                  0 kB\nCommitLimit:    {kib:8} kB\nCommitted_AS:          0 kB\n\
         HugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n"
    );
    let cpu_times = "0 0 0 0 0 0 0 0 0 0";
    let stat = format!(
        "cpu  {cpu_times}\ncpu0 {cpu_times}\nintr 0\nctxt 0\nbtime {}\nprocesses 1\nprocs_running 1\n\
         procs_blocked 0\nsoftirq 0 0 0 0 0 0 0 0 0 0 0\n",
        crate::supervisor::EPOCH_SECS
    );
    vec![
        ("cpuinfo", crate::cpuid::cpuinfo()),
        ("meminfo", meminfo),
        ("stat", stat),
        ("uptime", "0.00 0.00\n".to_owned()),
        ("loadavg", "0.00 0.00 0.00 1/1 1\n".to_owned()),
        // The kernel's default (heuristic overcommit): glibc's malloc reads
        // it when it gives back memory of a thread's arena.
        ("sys/vm/overcommit_memory", "0\n".to_owned()),
    ]
}

/// Mode of every input in the cage, whatever its mode on the host: the
/// host's would otherwise show through stat, and any input may be the
/// program.
const INPUT_MODE: libc::mode_t = 0o555;
/// Size of the `/tmp` scratch tmpfs.
const TMP_BYTES: u64 = 64 << 20;
/// Files and directories `/tmp` may hold.
const TMP_FILES: u64 = 16384;
/// Size of `/dev/shm` (POSIX shared memory and semaphores: `shm_open`,
/// `sem_open`, Python's `multiprocessing` locks).
const SHM_BYTES: u64 = 64 << 20;
/// Files `/dev/shm` may hold.
const SHM_FILES: u64 = 1024;
/// Files and directories `/out` may hold.
const OUT_FILES: u64 = 4096;
/// Files the root tmpfs holds beyond its skeleton (none are made later:
/// it is read-only to the workload).
const ROOT_FILES_SPARE: usize = 16;

/// What to run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// Where the directory the cage mounts its root on is kept (default:
    /// the system's temporary directory): made by the first run, left for
    /// the next (nothing is ever written to it on the host).
    pub stage_parent: Option<PathBuf>,
    /// The root filesystem.
    pub rootfs: Rootfs,
    /// Where unpacked root filesystems are cached (by digest).
    pub cache: PathBuf,
    /// Whether to bound the whole cage with a cgroup where one can be made
    /// (the witness header records whether one was).
    pub cgroups: bool,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The workload made a system call the policy denies; it never ran.
    PolicyViolation {
        /// The call's number (as the workload's architecture numbers it).
        number: i64,
        /// The call's name, or what kind of call it was.
        call: String,
    },
    /// The workload needed a source of non-determinism the cage does not
    /// make deterministic; the run was stopped at that call.
    Refused {
        /// Which source (time, randomness, resource usage, ...).
        source: String,
        /// The call that needed it.
        call: String,
    },
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
            Verdict::PolicyViolation { number, call } => format!("policy-violation {call} ({number})"),
            Verdict::Refused { source, call } => format!("refused {source} ({call})"),
            Verdict::LimitExceeded { limit } => format!("limit-exceeded {limit}"),
            Verdict::CageError { reason } => format!("cage-error {reason}"),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// The caller cancelled the run (its workload was killed; there is no
    /// verdict).
    #[error("the run was cancelled")]
    Cancelled,
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

/// Run `spec`; the program's stdout goes to `stdout` a witness chunk at a
/// time and its stderr to `stderr` as it is read, as well as to the
/// witness log written to `witness_path`; output files are copied to
/// `out_dir` if given.
pub fn run(
    spec: &RunSpec,
    witness_path: &Path,
    out_dir: Option<&Path>,
    stdout: impl std::io::Write + Send,
    stderr: impl std::io::Write + Send,
) -> Result<Outcome, CageError> {
    run_cancellable(spec, witness_path, out_dir, (stdout, stderr), &AtomicBool::new(false))
}

/// [`run`] with its two sinks as a pair (stdout, stderr), ending early with
/// [`CageError::Cancelled`] once `cancel` is set (seen within
/// [`CANCEL_POLL_MS`]): an agent stops a replica that is no longer its own
/// (the agreement timed out or moved).
pub fn run_cancellable(
    spec: &RunSpec,
    witness_path: &Path,
    out_dir: Option<&Path>,
    mut sinks: (impl std::io::Write + Send, impl std::io::Write + Send),
    cancel: &AtomicBool,
) -> Result<Outcome, CageError> {
    let started = Instant::now();
    spec.limits.check().map_err(CageError::Spec)?;
    let root = mount_point(&spec.stage_parent.clone().unwrap_or_else(std::env::temp_dir))?;

    // Written beside its final path and renamed there when complete: the
    // path holds a whole witness log, the previous one until then (a run
    // that fails to start, or a crash, leaves no half-written evidence).
    let folder = match witness_path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let partial = tempfile::Builder::new()
        .prefix(".witness-")
        // As `File::create` would make it: 0666 less the umask.
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(folder)
        .map_err(io(format!("create a witness log in {}", folder.display())))?;
    let file = partial.reopen().map_err(io("write the witness log"))?;
    let mut witness = WitnessWriter::new(BackgroundWriter::new(file)).map_err(io("write the witness log"))?;
    let prepared = match rootfs::prepare(&spec.rootfs, &spec.cache) {
        Ok(prepared) => prepared,
        Err(error) => return Err(CageError::Spec(error.to_string())),
    };
    let policy = default_policy()?;
    // Dropped at the end of this function, after the keeper is reaped.
    let cgroup = if spec.cgroups { Cgroup::create(&spec.limits) } else { None };
    let enforcement = cgroup.as_ref().map_or(Enforcement::None, Cgroup::version);
    let header = header(spec, &prepared, policy, enforcement);
    witness.record(&Record::Header(header)).map_err(io("write the witness log"))?;
    let mut sorted_inputs = spec.inputs.clone();
    sorted_inputs.sort();
    let mut inputs = Vec::with_capacity(sorted_inputs.len());
    for (name, path) in sorted_inputs {
        check_name(&name)?;
        let before = std::fs::metadata(&path).map_err(io(format!("stat input {}", path.display())))?;
        let bytes = std::fs::read(&path).map_err(io(format!("read input {}", path.display())))?;
        let digest = crate::digests::digest_of_read(&path, &before, &bytes, Some(&spec.cache));
        witness.record(&Record::Input { name: name.clone(), digest }).map_err(io("write the witness log"))?;
        inputs.push(StagedInput { name, bytes });
    }

    let pinned = PinnedThread::to_current_cpu();
    let mut plan = plan(spec, &prepared, policy, &root, inputs)?;
    plan.cpu = pinned.as_ref().map(|pinned| pinned.cpu);
    let (verdict, collected) = match sandbox::start(&plan, cgroup.as_ref()) {
        Err(error) => (Verdict::CageError { reason: format!("cannot start the sandbox: {error}") }, Vec::new()),
        Ok(started_run) => {
            let unpinned = pinned.as_ref().map(|pinned| pinned.previous);
            let caller = Caller { out_dir, cancel };
            execute(started_run, spec, cgroup.as_ref(), unpinned, &mut witness, &mut sinks, caller)?
        }
    };
    witness.record(&Record::End(verdict.describe())).map_err(io("write the witness log"))?;
    let records = witness.len();
    let root = witness.finish().map_err(io("write the witness log"))?;
    partial.persist(witness_path).map_err(|error| io(format!("write {}", witness_path.display()))(error.error))?;
    Ok(Outcome {
        verdict,
        root: hex::encode(root),
        records,
        outputs: collected,
        wall_ms: started.elapsed().as_millis() as u64,
    })
}

/// The host directory each run's init mounts the new root on, made once
/// in `parent` and kept. Every run mounts in its own mount namespace, so
/// one empty directory serves any number of runs at once, and the host
/// never sees what is mounted on it. (A directory made and removed per run
/// cost about 0.35 ms of a 4 ms run here.) It must be a real directory of
/// this user, writable by no one else (it may be in a shared `/tmp`), and
/// traversable: the workload's uid maps to an unprivileged host uid.
#[allow(unsafe_code)]
fn mount_point(parent: &Path) -> Result<PathBuf, CageError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let dir = parent.join(format!("docklock-cage-root-{euid}"));
    let usable = |meta: &std::fs::Metadata| meta.is_dir() && meta.uid() == euid && meta.mode() & 0o7777 == 0o755;
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if usable(&meta) => return Ok(dir),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::create_dir(&dir) {
                Ok(()) => set_mode(&dir, 0o755)?,
                // Another run made it meanwhile: checked below.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(io(format!("create {}", dir.display()))(error)),
            }
        }
        Err(error) => return Err(io(format!("inspect {}", dir.display()))(error)),
    }
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if usable(&meta) => Ok(dir),
        _ => Err(CageError::Spec(format!(
            "{} is not a directory of uid {euid} with mode 0755; remove it or choose another stage directory",
            dir.display()
        ))),
    }
}

/// The default policy, compiled once per process.
fn default_policy() -> Result<&'static Policy, CageError> {
    static COMPILED: std::sync::OnceLock<Result<Policy, String>> = std::sync::OnceLock::new();
    COMPILED
        .get_or_init(|| Policy::compile(policy::DEFAULT).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| CageError::Spec(e.clone()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CageError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))
}

fn header(spec: &RunSpec, rootfs: &Prepared, policy: &Policy, cgroup: Enforcement) -> String {
    let mut lines = vec![
        format!("cage={CAGE_VERSION}"),
        format!("machine={}", escape(crate::cpuid::machine_class())),
        format!("policy=default sha3-256:{}", hex::encode(policy.digest)),
        format!("rootfs={}", rootfs.description),
        format!("program={}", escape(&spec.program)),
        format!("seed={}", hex::encode(spec.seed)),
    ];
    lines.extend(spec.args.iter().enumerate().map(|(i, arg)| format!("arg.{i}={}", escape(arg))));
    let mut env = spec.env.clone();
    env.sort();
    lines.extend(env.iter().map(|(key, value)| format!("env.{}={}", escape(key), escape(value))));
    lines.push(spec.limits.describe());
    lines.push(format!("cgroup={}", cgroup.name()));
    lines.join("\n")
}

/// An input as the cage gets it: under `/in`, with these bytes.
struct StagedInput {
    name: String,
    bytes: Vec<u8>,
}

/// The directories between `base` (made already) and `target`, outermost
/// first, each made once (`made` remembers them): a nested name's
/// directories come before it in the skeleton.
fn push_parents(
    skeleton: &mut Vec<Node>,
    made: &mut std::collections::BTreeSet<PathBuf>,
    base: &Path,
    target: &Path,
) -> Result<(), CageError> {
    let parents: Vec<&Path> = target.ancestors().skip(1).take_while(|dir| *dir != base).collect();
    for dir in parents.into_iter().rev() {
        if made.insert(dir.to_owned()) {
            skeleton.push(Node::Dir(sandbox::cstring(dir.as_os_str().as_encoded_bytes()).map_err(io("a path"))?));
        }
    }
    Ok(())
}

/// Build the children's plan. Nothing of the new root is made on the
/// host: the init builds it in a tmpfs from the skeleton.
///
/// The inputs are files in that tmpfs too, not host files bound in: a
/// host file's inode number (seen through `stat` and in
/// `/proc/self/maps`) changes from run to run, while a fresh tmpfs
/// numbers its files in the order they are made, and the skeleton's order
/// is fixed. They are charged to the cage's memory like everything else
/// in it.
fn plan(
    spec: &RunSpec,
    rootfs: &Prepared,
    policy: &Policy,
    root: &Path,
    inputs: Vec<StagedInput>,
) -> Result<Plan, CageError> {
    let c = |path: &Path| sandbox::cstring(path.as_os_str().as_encoded_bytes()).map_err(io("a path"));
    let mut binds = Vec::new();
    let mut skeleton = Vec::new();
    // Each entry of the rootfs (top-level, but for the host's
    // `etc/alternatives`): a directory or file is bound read-only, a
    // symlink (as on merged-/usr systems) recreated.
    let mut made = std::collections::BTreeSet::new();
    for name in &rootfs.entries {
        let source = rootfs.source.join(name);
        let target = root.join(name);
        push_parents(&mut skeleton, &mut made, root, &target)?;
        match std::fs::symlink_metadata(&source) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&source).map_err(io("read a rootfs symlink"))?;
                skeleton.push(Node::Symlink(c(&target)?, c(&link)?));
            }
            Ok(meta) if meta.is_dir() || meta.is_file() => {
                skeleton.push(if meta.is_dir() { Node::Dir(c(&target)?) } else { Node::File(c(&target)?) });
                let locked = sandbox::locked_flags(&source).map_err(io("statvfs"))?;
                binds.push(Bind { source: c(&source)?, target: c(&target)?, writable: false, device: false, locked });
            }
            _ => {}
        }
    }
    skeleton.push(Node::Dir(c(&root.join("dev"))?));
    let mut random = vec![0; DEV_RANDOM_BYTES];
    let mut stream = rand_chacha::ChaCha20Rng::from_seed(spec.seed);
    stream.set_stream(DEV_RANDOM_STREAM);
    stream.fill_bytes(&mut random);
    skeleton.push(Node::Contents(c(&root.join("dev/random"))?, random, 0o444));
    skeleton.push(Node::Symlink(c(&root.join("dev/urandom"))?, sandbox::cstring(b"random").map_err(io("a path"))?));
    for device in DEVICES {
        let target = root.join("dev").join(device);
        skeleton.push(Node::File(c(&target)?));
        let host = Path::new("/dev").join(device);
        let locked = sandbox::locked_flags(&host).map_err(io("statvfs"))?;
        binds.push(Bind { source: c(&host)?, target: c(&target)?, writable: true, device: true, locked });
    }
    skeleton.push(Node::Dir(c(&root.join("dev/shm"))?));
    let input_dir = root.join("in");
    skeleton.push(Node::Dir(c(&input_dir)?));
    for StagedInput { name, bytes } in inputs {
        let target = input_dir.join(&name);
        push_parents(&mut skeleton, &mut made, &input_dir, &target)?;
        skeleton.push(Node::Contents(c(&target)?, bytes, INPUT_MODE));
    }
    // A minimal /sys: the CPU lists libc reads to count processors (one,
    // as `sched_getaffinity` answers); without them it falls back to
    // /proc/stat, which shows the host.
    let cpus = root.join("sys/devices/system/cpu");
    for dir in ["sys", "sys/devices", "sys/devices/system", "sys/devices/system/cpu", "sys/devices/system/cpu/cpu0"] {
        skeleton.push(Node::Dir(c(&root.join(dir))?));
    }
    for list in ["online", "possible", "present"] {
        skeleton.push(Node::Contents(c(&cpus.join(list))?, b"0\n".to_vec(), 0o444));
    }
    for dir in ["tmp", "out", "proc", ".old"] {
        skeleton.push(Node::Dir(c(&root.join(dir))?));
    }
    // The /proc files that would show the host's CPUs, memory, load and
    // uptime show the cage's machine instead, as a container's lxcfs does
    // (bound over the cage's procfs by the init; see `Plan::proc_source`).
    let proc_source = root.join(".proc");
    skeleton.push(Node::Dir(c(&proc_source)?));
    let mut proc_files = Vec::new();
    for (name, contents) in synthetic_proc(spec.limits.memory_mib) {
        let source = proc_source.join(name.replace('/', "_"));
        proc_files.push((c(&source)?, contents.into_bytes(), c(&root.join("proc").join(name))?));
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
    let bound = |value: u64| libc::rlimit { rlim_cur: value, rlim_max: value };
    let rlimits = vec![
        // The CPU limit's hard bound a second after its soft one: at the
        // soft bound the kernel sends SIGXCPU, which names the limit in the
        // verdict; at a hard bound equal to it the kernel would send
        // SIGKILL, which looks like any other kill.
        (libc::RLIMIT_CPU, libc::rlimit { rlim_cur: limits.cpu_secs, rlim_max: limits.cpu_secs.saturating_add(1) }),
        (libc::RLIMIT_AS, bound(limits.memory_bytes())),
        (libc::RLIMIT_NPROC, bound(limits.processes)),
        (libc::RLIMIT_NOFILE, bound(limits.open_files)),
        (libc::RLIMIT_FSIZE, bound(limits.file_size_bytes)),
        (libc::RLIMIT_CORE, bound(0)),
    ];
    Ok(Plan {
        root: c(root)?,
        root_options: tmpfs_options(&format!(
            "mode=0755,size={},nr_inodes={}",
            limits.memory_bytes(),
            skeleton.len() + ROOT_FILES_SPARE
        ))?,
        skeleton,
        binds,
        tmpfs: vec![
            (c(&root.join("tmp"))?, tmpfs_options(&format!("size={TMP_BYTES},nr_inodes={TMP_FILES},mode=1777"))?),
            (c(&root.join("dev/shm"))?, tmpfs_options(&format!("size={SHM_BYTES},nr_inodes={SHM_FILES},mode=1777"))?),
            // /out lives only in the namespace, bounded; the runner reads it
            // through the init's root before the namespace ends.
            (
                c(&root.join("out"))?,
                tmpfs_options(&format!(
                    "size={},nr_inodes={OUT_FILES},mode=0755,uid={CAGE_UID},gid={CAGE_UID}",
                    limits.out_bytes
                ))?,
            ),
        ],
        proc_dir: c(&root.join("proc"))?,
        proc_source: c(&proc_source)?,
        proc_files,
        program,
        argv,
        envp,
        cwd: sandbox::cstring(b"/tmp").map_err(io("cwd"))?,
        cpu: None,
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

/// What the caller of a run asked for besides the spec.
struct Caller<'a> {
    /// Where output files are copied.
    out_dir: Option<&'a Path>,
    /// Set to stop the run.
    cancel: &'a AtomicBool,
}

/// Run the started sandbox to its end: this thread supervises the
/// workload with ptrace; a scoped thread reads its output under the
/// limits. The witness gets stdout and stderr first, then the supervisor's
/// events, then the outputs: an order that does not depend on timing.
/// Outputs are collected only from a run that ended on its own: what a
/// killed run left half-written is not a result.
fn execute(
    started: sandbox::Started,
    spec: &RunSpec,
    cgroup: Option<&Cgroup>,
    unpinned: Option<libc::cpu_set_t>,
    witness: &mut WitnessWriter<BackgroundWriter>,
    sinks: &mut (impl std::io::Write + Send, impl std::io::Write + Send),
    caller: Caller<'_>,
) -> Result<(Verdict, Vec<String>), CageError> {
    let Caller { out_dir, cancel } = caller;
    let sandbox::Started { keeper, stdout, stderr, status, setup_error, keeper_fd, announce, collected } = started;
    let limits = &spec.limits;
    // The run's policy is the default one (`run`).
    let blocking = &default_policy()?.blocking;
    let mut supervisor =
        Supervisor::new(&keeper_fd, &spec.cache, spec.seed, limits.memory_bytes(), limits.events, blocking);
    let mut init = None;
    let output = std::thread::scope(|scope| {
        let output = scope.spawn(|| {
            // Off the supervisor's CPU (a new thread inherits its pinning):
            // hashing the output must not compete with the workload.
            if let Some(set) = &unpinned {
                set_affinity(set);
            }
            collect_output([stdout, stderr, status], limits, &keeper_fd, witness, sinks, cancel)
        });
        match sandbox::await_workload(&announce) {
            Ok(Some(workload)) => {
                init = parent_of(workload);
                supervisor.supervise(workload, &announce);
            }
            Ok(None) => {} // The setup failed; its report says why.
            Err(error) => supervisor.lose(format!("the workload did not announce itself: {error}")),
        }
        output.join().unwrap_or_else(|_| Err(CageError::Spec("the output reader panicked".into())))
    });
    let finish = |verdict: Verdict, outputs: Vec<String>| {
        drop(collected);
        supervisor::kill_keeper(&keeper_fd);
        reap(keeper);
        Ok((verdict, outputs))
    };
    let output = match output {
        Ok(output) if output.cancelled => {
            finish(Verdict::Ok, Vec::new())?;
            return Err(CageError::Cancelled);
        }
        Ok(output) => output,
        Err(error) => {
            finish(Verdict::Ok, Vec::new())?;
            return Err(error);
        }
    };
    for event in &supervisor.take_events() {
        witness.record(event).map_err(io("write the witness log"))?;
    }
    let mut report = [0u8; 8];
    if sandbox::read_full(&setup_error, &mut report).unwrap_or(0) == 8 {
        return finish(Verdict::CageError { reason: sandbox::describe_setup_error(&report) }, Vec::new());
    }
    let verdict = match supervisor.ending {
        Some(Ending::Lost(reason)) => Verdict::CageError { reason },
        Some(Ending::Violation { number, name }) => Verdict::PolicyViolation { number, call: name },
        Some(Ending::Refused { source, call }) => Verdict::Refused { source: source.into(), call },
        Some(Ending::TooManyEvents) => Verdict::LimitExceeded { limit: Limit::Events },
        None if output.over_output => Verdict::LimitExceeded { limit: Limit::Output },
        // What the kernel enforced (an OOM kill, a refused fork) explains
        // a run better than the wall clock that ended it afterwards.
        None => match cgroup.and_then(Cgroup::exceeded) {
            Some(limit) => Verdict::LimitExceeded { limit },
            None if output.over_wall => Verdict::LimitExceeded { limit: Limit::Wall },
            None => output
                .status
                .map_or_else(|| Verdict::CageError { reason: "the init died without reporting".into() }, verdict_of),
        },
    };
    let (Verdict::Ok | Verdict::ProgramFailed { .. }, Some(init)) = (&verdict, init) else {
        return finish(verdict, Vec::new());
    };
    let out = PathBuf::from(format!("/proc/{init}/root/out"));
    let outputs = record_outputs(&out, witness, out_dir)?;
    let verdict = if out_full(&out) { Verdict::LimitExceeded { limit: Limit::OutBytes } } else { verdict };
    finish(verdict, outputs)
}

/// The calling thread pinned to the CPU it is on, for the length of a run
/// (the workload is pinned there too); its old affinity comes back on
/// drop. Best effort: without it the run is only slower.
struct PinnedThread {
    cpu: libc::cpu_set_t,
    previous: libc::cpu_set_t,
}

#[allow(unsafe_code)]
impl PinnedThread {
    fn to_current_cpu() -> Option<Self> {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
        let (mut previous, mut cpu): (libc::cpu_set_t, libc::cpu_set_t) = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: sched_getcpu has no preconditions; the set pointers are
        // valid for `size` bytes.
        unsafe {
            let current = usize::try_from(libc::sched_getcpu()).ok()?;
            if libc::sched_getaffinity(0, size, &mut previous) != 0 {
                return None;
            }
            libc::CPU_SET(current, &mut cpu);
            (libc::sched_setaffinity(0, size, &cpu) == 0).then_some(Self { cpu, previous })
        }
    }
}

impl Drop for PinnedThread {
    fn drop(&mut self) {
        set_affinity(&self.previous);
    }
}

/// Set the calling thread's CPU affinity (best effort).
#[allow(unsafe_code)]
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: set is a valid cpu_set_t of the stated size.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

/// The parent of `pid` as our PID namespace numbers it.
fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `/out` filled up (no space or no inodes left): the workload
/// hit the out-bytes bound.
#[allow(unsafe_code)]
fn out_full(out: &Path) -> bool {
    let Ok(path) = sandbox::cstring(out.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statvfs is plain data; zeroed is a valid out value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and stat a valid out pointer.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    stat.f_bavail == 0 || stat.f_favail == 0
}

/// Record every regular file under `out` (path order) and copy it to
/// `out_dir`. Nothing in the namespace runs any more (the init ended it
/// all), so nothing changes under the walk; symlinks and special files are
/// not outputs and are never followed.
fn record_outputs(
    out: &Path,
    witness: &mut WitnessWriter<BackgroundWriter>,
    out_dir: Option<&Path>,
) -> Result<Vec<String>, CageError> {
    let mut found = Vec::new();
    collect_outputs(out, out, &mut found)?;
    found.sort();
    for relative in &found {
        let bytes = read_no_follow(&out.join(relative)).map_err(io("read an output"))?;
        let path = relative.display().to_string();
        witness
            .record(&Record::Output { path, size: bytes.len() as u64, digest: witness::digest(&bytes) })
            .map_err(io("write the witness log"))?;
        if let Some(out_dir) = out_dir {
            let target = out_dir.join(relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("write an output"))?;
            }
            std::fs::write(&target, &bytes).map_err(io(format!("write {}", target.display())))?;
        }
    }
    Ok(found.iter().map(|p| p.display().to_string()).collect())
}

fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn tmpfs_options(options: &str) -> Result<std::ffi::CString, CageError> {
    sandbox::cstring(options.as_bytes()).map_err(io("tmpfs options"))
}

#[allow(unsafe_code)]
fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out pointer. It may
    // have been reaped by the supervision loop already (then ECHILD).
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// What the output reader saw.
struct Collected {
    over_wall: bool,
    /// The caller cancelled the run.
    cancelled: bool,
    over_output: bool,
    /// The workload's wait status, as the init reported it.
    status: Option<i32>,
}

/// Read stdout and stderr under the limits until the pipes close. One
/// thread polls the three pipes (stdout, stderr, the init's status report).
fn collect_output(
    pipes: [std::os::fd::OwnedFd; 3],
    limits: &Limits,
    keeper: &std::os::fd::OwnedFd,
    witness: &mut WitnessWriter<BackgroundWriter>,
    (stdout_sink, stderr_sink): &mut (impl std::io::Write, impl std::io::Write),
    cancel: &AtomicBool,
) -> Result<Collected, CageError> {
    let deadline = Instant::now() + Duration::from_millis(limits.wall_ms);
    let (mut over_wall, mut over_output, mut killed, mut cancelled) = (false, false, false, false);
    let mut total = 0u64;
    // Stdout is read straight into the chunk being filled: no copy.
    let mut chunk = vec![0; CHUNK_BYTES];
    let mut filled = 0;
    let mut stderr = Vec::new();
    let mut status: Option<i32> = None;
    // Slots: stdout, stderr, status; None once at end of file.
    let mut open = pipes.map(Some);
    let mut buffer = vec![0; CHUNK_BYTES];
    while open.iter().any(Option::is_some) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() && !killed {
            over_wall = true;
            killed = true;
            supervisor::kill_keeper(keeper);
        }
        if !killed && cancel.load(Ordering::Relaxed) {
            cancelled = true;
            killed = true;
            supervisor::kill_keeper(keeper);
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
        let timeout = if killed { 100 } else { left.as_millis().clamp(1, CANCEL_POLL_MS) as i32 };
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
            let target = if slot == 0 { &mut chunk[filled..] } else { &mut buffer[..] };
            let n = match sandbox::read_some(fd, target) {
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
                supervisor::kill_keeper(keeper);
            }
            if slot == 1 {
                stderr_sink.write_all(&buffer[..allowed]).map_err(io("write stderr"))?;
                stderr.extend_from_slice(&buffer[..allowed]);
                continue;
            }
            // Stdout is recorded in fixed chunks as it arrives.
            filled += allowed;
            if filled == CHUNK_BYTES {
                stdout_sink.write_all(&chunk).map_err(io("write stdout"))?;
                let full = Record::Stdout(std::mem::replace(&mut chunk, vec![0; CHUNK_BYTES]));
                witness.record(&full).map_err(io("write the witness log"))?;
                filled = 0;
            }
        }
    }
    if filled > 0 {
        chunk.truncate(filled);
        stdout_sink.write_all(&chunk).map_err(io("write stdout"))?;
        witness.record(&Record::Stdout(chunk)).map_err(io("write the witness log"))?;
    }
    for chunk in stderr.chunks(CHUNK_BYTES) {
        witness.record(&Record::Stderr(chunk.to_vec())).map_err(io("write the witness log"))?;
    }
    Ok(Collected { over_wall, cancelled, over_output, status })
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
            signal => Verdict::ProgramFailed { exit_code: None, signal: Some(signal) },
        }
    }
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
