//! The supervisor: traces the workload with ptrace from outside its
//! namespaces, on the thread that started the run.
//!
//! The workload announces itself before its filters are installed and is
//! seized then (`PTRACE_SEIZE`, with fork, vfork, clone and exec events, so
//! every descendant is traced too, and `EXITKILL`, so the workload dies if
//! the supervisor does). From then on the seccomp filters send two kinds of
//! calls here:
//! - *denied* calls (and calls from another architecture): the run ends
//!   with `policy-violation` naming the call; the call never runs;
//! - *traced* calls, whose results would carry time, randomness or host
//!   identity: answered from the seed and a logical clock (emulated: the
//!   call is skipped and its result written into the workload), watched
//!   (an opened file is witnessed by content digest once it is open), or
//!   refused (the run ends with `refused` naming the source).
//!
//! Everything the supervisor answers or witnesses is an event in the
//! witness log, in the order the supervisor handled it. The determinism
//! layer extends the table in [`handling`].
#![allow(unsafe_code)]

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha3::{Digest as _, Sha3_256};

use crate::cpuid::{self, ARCH_SET_CPUID};
use crate::listing::{self, Listings};
use crate::metadata::{self, Metadata};
use crate::policy::{DATA_BLOCKING, DATA_DENY, DATA_FOREIGN};
use crate::syscalls;
use crate::urandom::{self, Streams};
use crate::witness::{self, Record};
use crate::HOSTNAME;

mod ports;
mod threaded;

/// The logical clock's wall-clock origin: 2000-01-01T00:00:00Z.
pub const EPOCH_SECS: u64 = 946_684_800;
/// How far the logical clock moves on each reading, in nanoseconds.
const TICK_NS: u64 = 1_000;
/// Most random bytes one `getrandom` returns (any count above 256 may be
/// short; callers loop), so a witness record stays small.
const RANDOM_BYTES_MAX: usize = 4096;
/// The logical time-stamp counter's rate: a 3 GHz machine.
const TSC_PER_NS: u64 = 3;
/// Clock ticks per second of `times` (`sysconf(_SC_CLK_TCK)` on Linux).
const CLOCK_TICKS_PER_SEC: u64 = 100;
/// `struct rusage`: two `timeval`s and fourteen longs.
const RUSAGE_SIZE: usize = std::mem::size_of::<libc::rusage>();
/// A kernel-raised signal (`si_code`), as the #GP of a disabled RDTSC is.
const SI_KERNEL: i32 = 0x80;
/// Bound on the words walked to find and rewrite the auxiliary vector.
const AUXV_WORDS_MAX: usize = 1 << 16;
/// Auxiliary vector entry types (`<elf.h>`).
const AT_NULL: u64 = 0;
const AT_IGNORE: u64 = 1;
const AT_HWCAP: u64 = 16;
const AT_RANDOM: u64 = 25;
const AT_HWCAP2: u64 = 26;
const AT_SYSINFO_EHDR: u64 = 33;
/// The hardware capability word every caged program sees (CPUID leaf 1
/// EDX of a baseline x86-64 CPU).
const VIRTUAL_HWCAP: u64 = 0x178b_fbff;
/// `AT_MINSIGSTKSZ`: the signal frame size the kernel says a stack needs.
const AT_MINSIGSTKSZ: u64 = 51;
/// The signal frame size every caged program is told.
const VIRTUAL_MINSIGSTKSZ: u64 = 16_384;
/// Largest directory listing one `getdents64` returns (libc asks 32 KiB).
const LISTING_BYTES_MAX: usize = 1 << 20;
/// Emulated data up to this size is recorded as is, larger as its digest.
const DATA_RECORDED_MAX: usize = 64;

/// Why the supervisor ended a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A denied call.
    Violation { number: i64, name: String },
    /// A traced call the supervisor cannot answer deterministically.
    Refused { source: &'static str, call: String },
    /// More events than the limit allows.
    TooManyEvents,
    /// ptrace itself failed.
    Lost(String),
}

/// How a traced call is handled.
enum Handling<'a> {
    /// Skip the call; the function writes the result into the workload and
    /// returns the value (or `-errno`).
    Emulate(fn(&mut Supervisor<'a>, libc::pid_t, &libc::user_regs_struct) -> i64),
    /// Let it run, then look at (or fix up) its result.
    AtExit(fn(&libc::user_regs_struct) -> Pending),
    /// Let it run unless the function names why not (a refusal source).
    Check(fn(&libc::user_regs_struct) -> Option<&'static str>),
    /// End the run: this source of non-determinism is not handled.
    Refuse(&'static str),
    /// A thread is being made (`threaded.rs`).
    Thread,
    /// The kernel may choose a port (`ports.rs`).
    Port,
    /// A wait, wake, sleep, yield or thread exit: in a threaded process,
    /// the schedule's (`threaded.rs`); elsewhere it runs as it is.
    Turn,
}

fn handling<'a>(name: &str) -> Handling<'a> {
    match name {
        "getrandom" => Handling::Emulate(Supervisor::getrandom),
        "clock_gettime" => Handling::Emulate(Supervisor::clock_gettime),
        "gettimeofday" => Handling::Emulate(Supervisor::gettimeofday),
        "time" => Handling::Emulate(Supervisor::time),
        "times" => Handling::Emulate(Supervisor::times),
        "clock_getres" => Handling::Emulate(Supervisor::clock_getres),
        "nanosleep" => Handling::Emulate(Supervisor::nanosleep),
        "clock_nanosleep" => Handling::Emulate(Supervisor::clock_nanosleep),
        "uname" => Handling::Emulate(Supervisor::uname),
        "sysinfo" => Handling::Emulate(Supervisor::sysinfo),
        "getcpu" => Handling::Emulate(Supervisor::getcpu),
        "sched_getaffinity" => Handling::Emulate(Supervisor::sched_getaffinity),
        "open" => Handling::AtExit(|regs| Pending::Open { flags: regs.rsi as i32 }),
        "creat" => Handling::AtExit(|_| Pending::Open { flags: libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC }),
        "openat" => Handling::AtExit(|regs| Pending::Open { flags: regs.rdx as i32 }),
        "getdents64" => Handling::Emulate(Supervisor::getdents64),
        "fstat" | "stat" | "lstat" => Handling::AtExit(|regs| Pending::Stat { buffer: regs.rsi }),
        "newfstatat" => Handling::AtExit(|regs| Pending::Stat { buffer: regs.rdx }),
        "statx" => Handling::AtExit(|regs| Pending::Statx { buffer: regs.r8 }),
        "statfs" | "fstatfs" => Handling::AtExit(|regs| Pending::Statfs { buffer: regs.rsi }),
        "readlink" => Handling::AtExit(|regs| Pending::Link { buffer: regs.rsi, size: regs.rdx }),
        "readlinkat" => Handling::AtExit(|regs| Pending::Link { buffer: regs.rdx, size: regs.r10 }),
        "rseq" => Handling::Emulate(|_, _, _| -i64::from(libc::ENOSYS)),
        "pkey_alloc" => Handling::Emulate(|_, _, regs| pkey_alloc(regs.rdi, regs.rsi)),
        "prctl" => Handling::Check(prctl_allowed),
        "arch_prctl" => Handling::Check(arch_prctl_allowed),
        "setsockopt" => Handling::Check(setsockopt_allowed),
        "getsockopt" => Handling::Check(getsockopt_allowed),
        "getrusage" => Handling::Emulate(Supervisor::getrusage),
        // Only with a usage buffer (an argument rule in the policy).
        // Under a policy that traces every wait (`trace wait4`), one
        // without a buffer has nothing to zero.
        "wait4" | "waitid" => Handling::AtExit(|regs| {
            usage_of_wait(regs.orig_rax as i64, regs).unwrap_or(Pending::Usage { buffer: 0, info: 0 })
        }),
        // Only thread creation reaches here (the filter passes other clones).
        "clone" => Handling::Thread,
        // `sendto` only with an address (an argument rule in the policy);
        // every `sendmsg` (its address is in memory a filter cannot read).
        "bind" | "connect" | "listen" | "sendto" | "sendmsg" => Handling::Port,
        "futex" | "sched_yield" | "exit" | "tgkill" | "tkill" | "poll" | "ppoll" | "select" | "pselect6"
        | "epoll_wait" | "epoll_pwait" => Handling::Turn,
        "alarm" | "setitimer" => Handling::Refuse("timers"),
        // Only SIOCGSTAMP and SIOCGSTAMPNS reach here (`RECEIVE_TIME_IOCTLS`).
        "ioctl" => Handling::Refuse("time"),
        _ => Handling::Refuse("an unhandled traced call"),
    }
}

/// What a wait (`wait4`, `waitid`) that asks for the reaped child's
/// resource usage leaves for its exit; `None` for any other call, or a
/// wait without a usage buffer.
fn usage_of_wait(number: i64, regs: &libc::user_regs_struct) -> Option<Pending> {
    let (buffer, info) = match number {
        libc::SYS_wait4 => (regs.r10, 0),
        libc::SYS_waitid => (regs.r8, regs.rdx),
        _ => return None,
    };
    (buffer != 0).then_some(Pending::Usage { buffer, info })
}

/// A call let through whose result the supervisor looks at.
#[derive(Clone, Copy)]
enum Pending {
    /// An open with these flags: witness what it opened.
    Open {
        flags: i32,
    },
    /// File metadata (`struct stat`, `statx`, `statfs`) in this buffer:
    /// show virtual devices, inodes and times.
    Stat {
        buffer: u64,
    },
    Statx {
        buffer: u64,
    },
    Statfs {
        buffer: u64,
    },
    /// A link's target in a buffer of this size: a descriptor link names
    /// a virtual inode.
    Link {
        buffer: u64,
        size: u64,
    },
    /// A call answered at its entry (and replaced by `getpid`): this is
    /// what it returns.
    Answered {
        result: i64,
    },
    /// A thread's wait for descriptors, tried without waiting
    /// (`threaded.rs`).
    Try,
    /// A wait that reaps a child and reports its resource usage in this
    /// buffer; `info` is `waitid`'s `siginfo_t` (0 for `wait4`, or if none).
    Usage {
        buffer: u64,
        info: u64,
    },
}

/// One traced process (or thread): where it sits in the run's process
/// tree, and its own random stream, logical clock and events. Per process,
/// so that what one process sees does not depend on how the scheduler
/// interleaved it with the others: a child is named by its parent's name
/// and its rank among the parent's children, which the parent's program
/// order fixes; it starts with its parent's clock.
struct Process {
    path: Vec<u32>,
    children: u32,
    rng: ChaCha20Rng,
    /// Logical nanoseconds since the run started.
    clock_ns: u64,
    events: Vec<Record>,
    /// Paths this process has witnessed (each once per process).
    witnessed: HashSet<String>,
    /// It may hold an open file of `/dev/urandom`: it stops at every system
    /// call, so that its reads of it are answered from their stream.
    reads_random: bool,
    /// The virtual device and inode numbers it has shown (its parent's, at
    /// its fork, and its own since).
    shown: metadata::Shown,
    /// The group its threads are serialised in, once it has threads.
    group: Option<libc::pid_t>,
    /// Ephemeral ports it has taken (`ports.rs`).
    ports_taken: u32,
    /// It has the blocking-call filter (stacked at its process's first
    /// thread, or inherited): its reads, receives and accepts stop here.
    tries_blocking: bool,
}

impl Process {
    fn new(seed: &[u8; 32], path: Vec<u32>, clock_ns: u64) -> Self {
        let mut hasher = Sha3_256::new();
        hasher.update(b"docklock-process-v1");
        hasher.update(seed);
        for rank in &path {
            hasher.update(rank.to_be_bytes());
        }
        Self {
            rng: ChaCha20Rng::from_seed(hasher.finalize().into()),
            path,
            children: 0,
            clock_ns,
            events: Vec::new(),
            witnessed: HashSet::new(),
            reads_random: false,
            shown: metadata::Shown::default(),
            group: None,
            ports_taken: 0,
            tries_blocking: false,
        }
    }

    /// The process's name in the witness log: `1`, `1.2`, `1.2.1`, ...
    fn name(path: &[u32]) -> String {
        path.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
    }
}

/// The state of one run's supervision.
pub(crate) struct Supervisor<'a> {
    keeper: &'a OwnedFd,
    /// Where file digests are remembered across runs.
    cache: &'a Path,
    seed: [u8; 32],
    memory_bytes: u64,
    events_max: u64,
    /// Tracees reaped before their parent's fork event was handled: that
    /// event must not bring them back.
    ended_before_fork_event: HashSet<libc::pid_t>,
    pending: HashMap<libc::pid_t, Pending>,
    /// Live processes (and threads) by pid; with `parked`, every live
    /// tracee.
    processes: HashMap<libc::pid_t, Process>,
    /// First stops of new children whose parent's fork event has not been
    /// handled yet: held until it is, so the child's place in the tree
    /// (and with it its random stream) is known before it runs.
    parked: HashSet<libc::pid_t>,
    /// Ended processes: their place in the tree and their events.
    ended: Vec<(Vec<u32>, Vec<Record>)>,
    /// Events recorded so far, all processes together.
    event_count: u64,
    /// Bytes the last emulation wrote into the workload.
    written: Vec<u8>,
    /// Virtual device and inode numbers, and how times show.
    metadata: Metadata,
    /// Directory listings being served in name order.
    listings: Listings,
    /// The random streams open files of `/dev/urandom` read.
    streams: Streams,
    /// Device and inode of the cage's `/dev/random` (learnt at its first
    /// open; `/dev/urandom` is a link to it).
    random_file: Option<(u64, u64)>,
    /// Threaded processes' schedules, by group id (the thread that made
    /// the group).
    groups: HashMap<libc::pid_t, crate::threads::Group>,
    /// Threads stopped until their turn, with the signal to resume them
    /// with.
    held: HashMap<libc::pid_t, i32>,
    /// Threads being made: the `clone`'s caller, and the new thread's word
    /// to clear when it ends.
    thread_clones: HashMap<libc::pid_t, Option<u64>>,
    /// Threads that called `exit`: their group and word to clear.
    exiting: HashMap<libc::pid_t, (libc::pid_t, Option<u64>)>,
    /// Threads trying a wait for descriptors without waiting.
    tries: HashMap<libc::pid_t, threaded::Try>,
    /// By group: a pidfd of its process, opened at its first blocking call.
    pidfds: HashMap<libc::pid_t, OwnedFd>,
    /// By group: the other tracees and their CPU times when the group's
    /// tries were last all in vain (`threaded.rs`, `others_quiet`).
    quiet_seen: HashMap<libc::pid_t, Vec<(libc::pid_t, u64)>>,
    /// The filter stacked on a process at its first thread
    /// ([`crate::policy::Policy::blocking`]).
    blocking: &'a [seccompiler::sock_filter],
    /// Why the run was ended, if the supervisor ended it.
    pub(crate) ending: Option<Ending>,
}

impl<'a> Supervisor<'a> {
    pub(crate) fn new(
        keeper: &'a OwnedFd,
        cache: &'a Path,
        seed: [u8; 32],
        memory_bytes: u64,
        events_max: u64,
        blocking: &'a [seccompiler::sock_filter],
    ) -> Self {
        Self {
            keeper,
            cache,
            seed,
            memory_bytes,
            events_max,
            ended_before_fork_event: HashSet::new(),
            pending: HashMap::new(),
            processes: HashMap::new(),
            parked: HashSet::new(),
            ended: Vec::new(),
            event_count: 0,
            written: Vec::new(),
            metadata: Metadata::new(EPOCH_SECS),
            listings: Listings::default(),
            streams: Streams::default(),
            random_file: None,
            groups: HashMap::new(),
            held: HashMap::new(),
            thread_clones: HashMap::new(),
            exiting: HashMap::new(),
            tries: HashMap::new(),
            quiet_seen: HashMap::new(),
            pidfds: HashMap::new(),
            blocking,
            ending: None,
        }
    }

    /// Seize the announced workload, release it, and handle every stop
    /// until the workload and all its descendants are gone. Waits for any
    /// child of this thread, so the calling thread must have no children
    /// but the run's keeper.
    pub(crate) fn supervise(&mut self, workload: libc::pid_t, announce: &OwnedFd) {
        let _settings = TraceeSettings::adopt();
        match seize(workload).and_then(|()| crate::sandbox::release_workload(announce)) {
            Ok(()) => {
                self.processes.insert(workload, Process::new(&self.seed, vec![1], 0));
            }
            Err(error) => self.lose(format!("cannot trace the workload: {error}")),
        }
        while !self.processes.is_empty() || !self.parked.is_empty() {
            let mut status = 0;
            // SAFETY: waitpid with a valid out pointer; __WNOTHREAD keeps
            // other threads' children (other runs) out of this loop.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::__WNOTHREAD) };
            if pid < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break; // ECHILD: nothing left to wait for.
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                self.on_exit(pid);
            } else if libc::WIFSTOPPED(status) {
                self.on_stop(pid, status);
            }
        }
    }

    /// A tracee ended (and was reaped by this wait).
    fn on_exit(&mut self, pid: libc::pid_t) {
        self.pending.remove(&pid);
        self.tries.remove(&pid);
        self.listings.forget(pid);
        match self.processes.remove(&pid) {
            Some(process) => {
                self.thread_exited(pid, process.group);
                self.ended.push((process.path, process.events));
            }
            // Not known yet (perhaps parked): its parent's fork event is
            // still to come.
            None => {
                self.parked.remove(&pid);
                self.ended_before_fork_event.insert(pid);
            }
        }
    }

    fn on_stop(&mut self, pid: libc::pid_t, status: i32) {
        let signal = libc::WSTOPSIG(status);
        let deliver = match status >> 16 {
            libc::PTRACE_EVENT_SECCOMP => return self.on_seccomp(pid),
            libc::PTRACE_EVENT_EXEC => {
                // The thread that exec'd (read first: the calls injected
                // below have stops that replace the message).
                let former = event_message(pid).map_or(pid, |tid| tid as libc::pid_t);
                self.witness_exec(pid);
                self.rewrite_auxv(pid);
                self.after_exec(pid);
                // Its other threads are gone (or, if a thread other than
                // the first exec'd, the run ends).
                self.thread_exec(pid, former);
                if self.ending.is_some() {
                    return;
                }
                // Close-on-exec descriptors are gone.
                self.recheck_random(pid);
                0
            }
            libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK | libc::PTRACE_EVENT_CLONE => {
                // Known from here, so the supervision lasts until it ends,
                // unless it already ended: a child's first stop and even
                // its exit may be reported before its parent's fork event.
                if let Ok(child) = event_message(pid) {
                    let child = child as libc::pid_t;
                    // Set at the clone's seccomp stop if it makes a thread.
                    let thread = self.thread_clones.remove(&pid);
                    if !self.ended_before_fork_event.remove(&child) {
                        let clock_ns = *self.clock(pid);
                        let parent = self.process(pid);
                        parent.children += 1;
                        let path = [parent.path.as_slice(), &[parent.children]].concat();
                        // Its descriptors are copies of its parent's.
                        let (reads_random, shown) = (parent.reads_random, parent.shown.clone());
                        // Filters are inherited, by threads and forks alike.
                        let tries_blocking = parent.tries_blocking;
                        let mut process = Process::new(&self.seed, path, clock_ns);
                        process.reads_random = reads_random;
                        process.tries_blocking = tries_blocking;
                        process.shown = shown;
                        if let Some(clear_tid) = thread {
                            process.group = self.thread_created(pid, child, clear_tid);
                        }
                        self.processes.insert(child, process);
                        if self.parked.remove(&child) {
                            self.proceed(child, 0);
                        }
                    }
                }
                0
            }
            // A new child's first stop before its parent's fork event: held.
            libc::PTRACE_EVENT_STOP if !self.processes.contains_key(&pid) => {
                self.parked.insert(pid);
                return;
            }
            // A new child's first stop, and group stops (stopping inside
            // the cage is not supported: the tracee goes on).
            event if event != 0 => 0,
            _ if signal == libc::SIGTRAP | 0x80 => {
                // A process that reads `/dev/urandom` stops at every call's
                // entry and exit; any other only at the exit of a call it
                // was sent on to with PTRACE_SYSCALL.
                if self.reads_random(pid) && syscall_stop_op(pid) == libc::PTRACE_SYSCALL_INFO_ENTRY {
                    self.on_syscall_entry(pid);
                    if self.ending.is_some() {
                        return;
                    }
                } else {
                    self.on_syscall_exit(pid);
                    if self.reads_random(pid) {
                        self.after_call_reading_random(pid);
                    }
                }
                0
            }
            // The time-stamp counter is disabled in the cage: reading it
            // faults, and the logical counter answers.
            _ if signal == libc::SIGSEGV && self.emulate_fault(pid) => 0,
            // A signal on its way to the tracee: deliver it.
            _ => signal,
        };
        self.proceed(pid, deliver);
    }

    /// Whether `pid` may hold an open file of `/dev/urandom` (and so stops
    /// at every call).
    fn reads_random(&self, pid: libc::pid_t) -> bool {
        self.processes.get(&pid).is_some_and(|p| p.reads_random)
    }

    /// Let `pid` run on to its next stop that matters: a traced call, a
    /// signal, an event, the exit of a call it has pending, or every
    /// call's entry and exit while it may hold an open file of
    /// `/dev/urandom`.
    fn go_on(&self, pid: libc::pid_t, signal: i32) {
        let every_call = self.reads_random(pid) || self.pending.contains_key(&pid);
        resume(pid, if every_call { libc::PTRACE_SYSCALL } else { libc::PTRACE_CONT }, signal);
    }

    fn on_seccomp(&mut self, pid: libc::pid_t) {
        let Ok(data) = event_message(pid) else { return };
        let Ok(regs) = registers(pid) else { return };
        let number = regs.orig_rax as i64;
        let data = data as u32;
        if data == DATA_DENY || data == DATA_FOREIGN {
            let name = call_name(number, data == DATA_FOREIGN);
            return self.end(Ending::Violation { number, name }, Some(pid));
        }
        if data == DATA_BLOCKING {
            return self.blocking_call(pid, number, regs);
        }
        let name = syscalls::name(number).unwrap_or("unknown");
        // A threaded process's turns move at its traced calls; its waits,
        // wakes, sleeps and yields are the schedule's.
        if self.threaded(pid).is_some() && self.on_thread_call(pid, number, regs) {
            if self.ending.is_none() {
                self.proceed(pid, 0);
            }
            return;
        }
        match handling(name) {
            Handling::Emulate(emulate) => {
                self.written.clear();
                let result = emulate(self, pid, &regs);
                if self.ending.is_some() {
                    return; // The emulation ended the run; the tracee is gone.
                }
                self.skip_with(pid, regs, name, result);
            }
            Handling::AtExit(_) if self.opens_absent_file(pid, number, &regs) => {
                self.written.clear();
                self.skip_with(pid, regs, name, -i64::from(libc::ENOENT));
            }
            Handling::AtExit(pending) => {
                // With a call pending, the next stop is this call's exit.
                self.pending.insert(pid, pending(&regs));
                self.proceed(pid, 0);
            }
            Handling::Check(check) => match check(&regs) {
                None => self.proceed(pid, 0),
                Some(source) => self.end(Ending::Refused { source, call: name.to_owned() }, Some(pid)),
            },
            Handling::Refuse(source) => self.end(Ending::Refused { source, call: name.to_owned() }, Some(pid)),
            Handling::Thread => self.thread_clone(pid, &regs),
            Handling::Port => self.choose_port(pid, number, regs),
            // Not threaded: it runs as it is.
            Handling::Turn => self.proceed(pid, 0),
        }
    }

    /// Skip the call `pid` is at the seccomp stop of: it returns `result`,
    /// recorded with what the emulation wrote.
    fn skip_with(&mut self, pid: libc::pid_t, regs: libc::user_regs_struct, name: &str, result: i64) {
        if self.answer_call(pid, regs, name, result) {
            self.proceed(pid, 0);
        }
    }

    /// Answer the call `pid` is stopped at the seccomp stop of, without
    /// resuming it: skipped, it returns `result`, recorded with what the
    /// emulation wrote. False if the run ended or the tracee is gone.
    fn answer_call(&mut self, pid: libc::pid_t, mut regs: libc::user_regs_struct, name: &str, result: i64) -> bool {
        if !self.record_answer(pid, name, result) {
            return false;
        }
        // orig_rax -1 skips the call; rax is what it returns.
        regs.orig_rax = u64::MAX;
        regs.rax = result as u64;
        set_registers(pid, &regs).is_ok()
    }

    /// Whether an `open` or `openat` names, by an absolute path, a file
    /// the cage shows as absent: a process's `cgroup` file and
    /// `/proc/cgroups` (they name the host's cgroup hierarchy and
    /// controllers; runtimes read them to size thread pools by a CPU quota
    /// (the Rust standard library's `available_parallelism`, Go, the JVM)
    /// and, finding none, fall back to the CPUs they may run on, as on a
    /// kernel without cgroups), and `/proc/sys/kernel/core_pattern` (the
    /// host's crash handler; the JVM reads it to say where a core would
    /// go). Refusing them would refuse those runtimes outright.
    fn opens_absent_file(&self, pid: libc::pid_t, number: i64, regs: &libc::user_regs_struct) -> bool {
        let address = match number {
            libc::SYS_open => regs.rdi,
            libc::SYS_openat => regs.rsi,
            _ => return false,
        };
        read_c_string(pid, address, libc::PATH_MAX as usize).is_some_and(|path| proc_file_absent(&path))
    }

    /// At an exec stop, rewrite the new program's auxiliary vector on its
    /// stack: no vDSO (libc then makes real, traced time calls), the 16
    /// `AT_RANDOM` bytes from the seed, fixed hardware capability words and
    /// signal stack size.
    fn rewrite_auxv(&mut self, pid: libc::pid_t) {
        self.written.clear();
        let Ok(regs) = registers(pid) else { return };
        // The stack at exec: argc, argv..., NULL, envp..., NULL, auxv pairs;
        // read in one call (word by word only past that window).
        let window = read_stack(pid, regs.rsp);
        let word = |address: u64| {
            let at = usize::try_from(address - regs.rsp).ok()?;
            match window.get(at..at + 8) {
                Some(bytes) => Some(u64::from_ne_bytes(bytes.try_into().expect("8 bytes"))),
                None => read_word(pid, address),
            }
        };
        let mut address = regs.rsp;
        let Some(argc) = word(address) else { return };
        address += 8 * (argc + 2);
        for _ in 0..AUXV_WORDS_MAX {
            match word(address) {
                Some(0) => break,
                Some(_) => address += 8,
                None => return,
            }
        }
        address += 8;
        for _ in 0..AUXV_WORDS_MAX {
            let (Some(kind), Some(value)) = (word(address), word(address + 8)) else { return };
            let rewrite = match kind {
                AT_NULL => break,
                AT_SYSINFO_EHDR => Some((AT_IGNORE, 0)),
                AT_HWCAP => Some((AT_HWCAP, VIRTUAL_HWCAP)),
                AT_HWCAP2 => Some((AT_HWCAP2, 0)),
                // The kernel's signal frame size follows the host CPU's
                // extended state (3,632 bytes with AVX-512, less without),
                // and glibc's `sysconf(_SC_MINSIGSTKSZ)` and `SIGSTKSZ`
                // pass it on. One value above every such host's: a stack
                // sized from it is never too small. A host that needs more
                // (more state than any CPU of the machine class has) keeps
                // its own, so a program never gets too small a stack.
                AT_MINSIGSTKSZ => Some((AT_MINSIGSTKSZ, value.max(VIRTUAL_MINSIGSTKSZ))),
                AT_RANDOM => {
                    let mut bytes = [0u8; 16];
                    self.process(pid).rng.fill_bytes(&mut bytes);
                    let _ = self.write(pid, value, &bytes);
                    None
                }
                _ => None,
            };
            if let Some((kind, value)) = rewrite {
                let mut pair = kind.to_ne_bytes().to_vec();
                pair.extend_from_slice(&value.to_ne_bytes());
                let _ = self.write(pid, address, &pair);
            }
            address += 16;
        }
        let written = std::mem::take(&mut self.written);
        self.event(Record::Call { name: "exec auxv".into(), result: 0, data: witness::digest(&written).to_vec() }, pid);
    }

    /// A SIGSEGV at RDTSC or RDTSCP (the counter is disabled with
    /// `PR_SET_TSC`) or at CPUID (faulting is on): answer from the logical
    /// clock or the virtual CPU, step over the instruction, and swallow the
    /// signal. Anything else is a real fault.
    fn emulate_fault(&mut self, pid: libc::pid_t) -> bool {
        // SAFETY: siginfo_t is plain data; the kernel fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: info is a valid out pointer of the right type.
        if unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, pid, 0, &mut info) } != 0 || info.si_code != SI_KERNEL {
            return false;
        }
        let Ok(mut regs) = registers(pid) else { return false };
        let Some(code) = read_word(pid, regs.rip) else { return false };
        let (record, length) = match code.to_le_bytes() {
            [0x0f, 0x31, ..] => (self.logical_tsc(pid, &mut regs, "rdtsc"), 2),
            [0x0f, 0x01, 0xf9, ..] => {
                regs.rcx = 0; // IA32_TSC_AUX: CPU 0, node 0
                (self.logical_tsc(pid, &mut regs, "rdtscp"), 3)
            }
            [0x0f, 0xa2, ..] => {
                let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
                let [eax, ebx, ecx, edx] = cpuid::virtual_cpuid(leaf, subleaf);
                (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (eax.into(), ebx.into(), ecx.into(), edx.into());
                let data = [leaf, subleaf, eax, ebx, ecx, edx].iter().flat_map(|word| word.to_le_bytes()).collect();
                (Record::Call { name: "cpuid".into(), result: 0, data }, 2)
            }
            _ => return false,
        };
        regs.rip += length;
        if !self.event(record, pid) {
            return true; // The run is ending; the tracee was killed.
        }
        set_registers(pid, &regs).is_ok()
    }

    /// The logical time-stamp counter into EDX:EAX, and its record.
    fn logical_tsc(&mut self, pid: libc::pid_t, regs: &mut libc::user_regs_struct, name: &str) -> Record {
        let tsc = self.now(pid).saturating_mul(TSC_PER_NS);
        regs.rax = tsc & 0xffff_ffff;
        regs.rdx = tsc >> 32;
        Record::Call { name: name.into(), result: tsc as i64, data: Vec::new() }
    }

    /// After an exec, make the tracee run, from its entry point, the calls
    /// that set the cage up again: CPUID faulting on (exec turns it off),
    /// and the vDSO and its data pages unmapped (the auxiliary vector no
    /// longer names them, but `/proc/self/maps` would, and their clock
    /// reads are not the logical clock's). Then its code and registers go
    /// back. Each result is recorded; where the CPU cannot fault CPUID, the
    /// real CPU shows through and the record says so.
    fn after_exec(&mut self, pid: libc::pid_t) {
        // The exec stop is inside execve: first let execve return (its
        // return value lands in rax on the way out).
        if self.step_to_syscall_stop(pid).is_none() {
            return;
        }
        let mut calls = vec![("cpuid faulting", libc::SYS_arch_prctl, [ARCH_SET_CPUID, 0])];
        // One call per contiguous run of them (they are one run on x86-64),
        // and one record whatever the kernel calls its pieces: newer
        // kernels split `[vvar]` in two, which must not change a root.
        for (start, end) in special_mappings(pid) {
            calls.push(("unmap vdso", libc::SYS_munmap, [start, end - start]));
        }
        let Ok(saved) = registers(pid) else { return };
        // SAFETY: PEEKTEXT reads one word of the stopped tracee; errors
        // come back as -1 with errno set, checked below.
        let word = unsafe {
            *libc::__errno_location() = 0;
            libc::ptrace(libc::PTRACE_PEEKTEXT, pid, saved.rip, 0)
        };
        // SAFETY: reading errno.
        if word == -1 && unsafe { *libc::__errno_location() } != 0 {
            return;
        }
        let mut patched = (word as u64).to_le_bytes();
        patched[..2].copy_from_slice(&[0x0f, 0x05]); // syscall
                                                     // SAFETY: POKETEXT writes one word of the stopped tracee's code
                                                     // (the kernel forces the write to its private copy of the page).
        if unsafe { libc::ptrace(libc::PTRACE_POKETEXT, pid, saved.rip, u64::from_le_bytes(patched)) } != 0 {
            return;
        }
        let mut unmapped: Option<i64> = None;
        for (name, number, [first, second]) in calls {
            let mut regs = saved;
            (regs.rax, regs.rdi, regs.rsi) = (number as u64, first, second);
            if set_registers(pid, &regs).is_err() {
                break;
            }
            // This tracee's stops are waited for here, one by one, until
            // the call returns (its entry, then its exit; a seccomp stop
            // between passes on); the main loop sees none of them.
            let returned = self.step_to_syscall_stop(pid).and_then(|()| self.step_to_syscall_stop(pid));
            let Some(result) = returned.and_then(|()| registers(pid).ok()).map(|regs| regs.rax as i64) else {
                return; // It died meanwhile.
            };
            if number == libc::SYS_munmap {
                // The first failure, if any, is what the record shows.
                unmapped = Some(unmapped.filter(|&earlier| earlier != 0).unwrap_or(result));
            } else {
                self.event(Record::Call { name: name.into(), result, data: Vec::new() }, pid);
            }
        }
        if let Some(result) = unmapped {
            self.event(Record::Call { name: "unmap vdso".into(), result, data: Vec::new() }, pid);
        }
        // SAFETY: as above; the original word goes back.
        unsafe { libc::ptrace(libc::PTRACE_POKETEXT, pid, saved.rip, word) };
        let _ = set_registers(pid, &saved);
    }

    /// Resume `pid` to its next syscall entry or exit stop.
    fn step_to_syscall_stop(&mut self, pid: libc::pid_t) -> Option<()> {
        for _ in 0..4 {
            resume(pid, libc::PTRACE_SYSCALL, 0);
            let mut status = 0;
            // SAFETY: waitpid on one tracee with a valid out pointer.
            if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } != pid || !libc::WIFSTOPPED(status) {
                // It died, and this wait reaped it.
                self.on_exit(pid);
                return None;
            }
            if libc::WSTOPSIG(status) == libc::SIGTRAP | 0x80 {
                return Some(());
            }
            // A seccomp stop of the injected call passes on.
        }
        None
    }

    /// Whether `file` (a path or an open descriptor's `/proc` link) is the
    /// cage's `/dev/random`, which `/dev/urandom` links to.
    fn is_random_file(&mut self, pid: libc::pid_t, file: &str) -> bool {
        use std::os::unix::fs::MetadataExt;
        if self.random_file.is_none() {
            // The cage's root is read-only: the file cannot be replaced.
            let random = std::fs::metadata(format!("/proc/{pid}/root/dev/random"));
            self.random_file = random.ok().map(|meta| (meta.dev(), meta.ino()));
        }
        let Ok(meta) = std::fs::metadata(file) else { return false };
        self.random_file == Some((meta.dev(), meta.ino()))
    }

    /// At the exit of an open: if it opened `/dev/urandom` (under any name),
    /// give the new open file a stream of its own, and stop its process at
    /// every call from now on (see `urandom`).
    fn give_random_stream(&mut self, pid: libc::pid_t, fd: i32) {
        if !self.is_random_file(pid, &format!("/proc/{pid}/fd/{fd}")) {
            return;
        }
        let mut key = [0u8; 32];
        self.process(pid).rng.fill_bytes(&mut key);
        let Some(start) = self.streams.open(key) else {
            let call = format!("open /dev/urandom (more than {} opens)", urandom::STREAMS_MAX);
            return self.end(Ending::Refused { source: "randomness", call }, Some(pid));
        };
        let Ok(file) = tracee_descriptor(pid, fd) else { return };
        // SAFETY: lseek on a descriptor this thread owns.
        if unsafe { libc::lseek(file.as_raw_fd(), start as libc::off_t, libc::SEEK_SET) } < 0 {
            return;
        }
        // Threads share their descriptors: any of them may read it.
        let group = self.process(pid).group;
        for process in self.processes.values_mut().filter(|p| group.is_some() && p.group == group) {
            process.reads_random = true;
        }
        self.process(pid).reads_random = true;
    }

    /// At a call's entry, in a process that may hold `/dev/urandom` open:
    /// answer reads of it (and `lseek`, which on the device does nothing)
    /// from the open file's stream and skip the call. Any other call, or a
    /// file without a stream, runs as it is.
    fn on_syscall_entry(&mut self, pid: libc::pid_t) {
        let Ok(regs) = registers(pid) else { return };
        let number = regs.orig_rax as i64;
        let vectored = matches!(number, libc::SYS_readv | libc::SYS_preadv | libc::SYS_preadv2);
        if !vectored && !matches!(number, libc::SYS_read | libc::SYS_pread64 | libc::SYS_lseek) {
            return;
        }
        let Ok(fd) = i32::try_from(regs.rdi) else { return };
        if !self.is_random_file(pid, &format!("/proc/{pid}/fd/{fd}")) {
            return;
        }
        let Ok(file) = tracee_descriptor(pid, fd) else { return };
        // SAFETY: lseek on a descriptor this thread owns.
        let offset = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_CUR) };
        let Some((key, position)) = u64::try_from(offset).ok().and_then(|offset| self.streams.locate(offset)) else {
            return;
        };
        self.written.clear();
        // Where the bytes go: the one buffer, or each of the vector's.
        let buffers = if vectored { read_iovecs(pid, regs.rsi, regs.rdx) } else { Ok(vec![(regs.rsi, regs.rdx)]) };
        let result = match buffers {
            _ if number == libc::SYS_lseek => 0,
            Err(errno) => errno,
            Ok(buffers) => self.read_stream(pid, &key, position, &buffers),
        };
        if result > 0 {
            // Every read takes new bytes, `pread` too: the device has no
            // positions to go back to.
            let moved = offset + result;
            // SAFETY: lseek on a descriptor this thread owns.
            unsafe { libc::lseek(file.as_raw_fd(), moved, libc::SEEK_SET) };
        }
        if !self.record_answer(pid, syscalls::name(number).unwrap_or("unknown"), result) {
            return;
        }
        // Skipping the call (system call number -1) works at a seccomp stop
        // but not here, at the entry: seccomp runs after this stop and
        // would see -1. The call becomes `getpid`, which the policy
        // allows and which changes nothing, and its exit returns the answer.
        let mut regs = regs;
        regs.orig_rax = libc::SYS_getpid as u64;
        if set_registers(pid, &regs).is_ok() {
            self.pending.insert(pid, Pending::Answered { result });
        }
    }

    /// Fill `buffers` (address, length) in turn from the stream `key` at
    /// `position`, at most [`urandom::READ_BYTES_MAX`] bytes in all: the
    /// bytes given, or `-errno` if none could be.
    fn read_stream(&mut self, pid: libc::pid_t, key: &[u8; 32], position: u64, buffers: &[(u64, u64)]) -> i64 {
        let left = (urandom::STREAM_BYTES - position).min(urandom::READ_BYTES_MAX as u64);
        let mut done = 0u64;
        for &(address, length) in buffers {
            let length = length.min(left - done);
            if length == 0 {
                continue;
            }
            let bytes = urandom::bytes(key, position + done, length as usize);
            if let Err(errno) = self.write(pid, address, &bytes) {
                // A fault after some bytes is a short read.
                return if done == 0 { errno } else { done as i64 };
            }
            done += length;
        }
        done as i64
    }

    /// After a call that can close descriptors: does the process still
    /// hold `/dev/urandom` open? If not, it stops only where others do.
    fn after_call_reading_random(&mut self, pid: libc::pid_t) {
        let Ok(regs) = registers(pid) else { return };
        let closing = [libc::SYS_close, libc::SYS_close_range, libc::SYS_dup2, libc::SYS_dup3];
        if closing.contains(&(regs.orig_rax as i64)) {
            self.recheck_random(pid);
        }
    }

    /// Look through the process's descriptors for `/dev/urandom`.
    fn recheck_random(&mut self, pid: libc::pid_t) {
        if !self.reads_random(pid) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return };
        let descriptors: Vec<String> =
            entries.filter_map(Result::ok).map(|entry| entry.path().to_string_lossy().into_owned()).collect();
        let holds = descriptors.iter().any(|fd| self.is_random_file(pid, fd));
        self.process(pid).reads_random = holds;
    }

    fn on_syscall_exit(&mut self, pid: libc::pid_t) {
        // A `clone` that would have made a thread returned (its clone event,
        // if it made one, came before this stop).
        self.thread_clones.remove(&pid);
        let Some(pending) = self.pending.remove(&pid) else { return };
        let Ok(mut regs) = registers(pid) else { return };
        match pending {
            Pending::Answered { result } => {
                regs.rax = result as u64;
                let _ = set_registers(pid, &regs);
                return;
            }
            Pending::Try => return self.after_try(pid, regs),
            _ => {}
        }
        let result = regs.rax as i64;
        if result < 0 {
            return;
        }
        // The call's own name for its record (orig_rax survives the call).
        let name = syscalls::name(regs.orig_rax as i64).unwrap_or("unknown");
        match pending {
            Pending::Open { flags } => {
                let Ok(path) = std::fs::read_link(format!("/proc/{pid}/fd/{result}")) else { return };
                let path = path.to_string_lossy().into_owned();
                if !proc_path_allowed(&path) {
                    // Opened but never read: the tracee dies at this stop.
                    let ending = Ending::Refused { source: "host state in /proc", call: format!("open {path}") };
                    return self.end(ending, Some(pid));
                }
                if flags & libc::O_ACCMODE != libc::O_WRONLY {
                    self.witness_file(pid, path, &format!("/proc/{pid}/fd/{result}"));
                }
                self.give_random_stream(pid, result as i32);
            }
            Pending::Stat { buffer } => {
                self.rewrite::<{ metadata::STAT_SIZE }>(pid, name, buffer, |meta, shown, bytes| {
                    meta.stat(shown, bytes, || mounts(pid));
                })
            }
            Pending::Statx { buffer } => {
                self.rewrite::<{ metadata::STATX_SIZE }>(pid, name, buffer, |meta, shown, bytes| {
                    meta.statx(shown, bytes, || mounts(pid));
                })
            }
            Pending::Statfs { buffer } => {
                self.rewrite::<{ metadata::STATFS_SIZE }>(pid, name, buffer, |_, _, bytes| Metadata::statfs(bytes));
            }
            Pending::Link { buffer, size } => {
                self.rewrite_link(pid, name, regs, buffer, result as usize, size as usize);
            }
            Pending::Usage { buffer, info } => self.zero_usage(pid, name, result, buffer, info),
            // Given their results before the call's own was looked at.
            Pending::Answered { .. } | Pending::Try => {}
        }
    }

    /// Read the `SIZE`-byte structure a call returned at `buffer`, let
    /// `fix` rewrite it, write it back and record it.
    fn rewrite<const SIZE: usize>(
        &mut self,
        pid: libc::pid_t,
        name: &str,
        buffer: u64,
        fix: impl FnOnce(&mut Metadata, &mut metadata::Shown, &mut [u8; SIZE]),
    ) {
        let Some(bytes) = read_bytes(pid, buffer, SIZE) else { return };
        let Ok(mut bytes) = <[u8; SIZE]>::try_from(bytes) else { return };
        let Some(process) = self.processes.get_mut(&pid) else { return };
        fix(&mut self.metadata, &mut process.shown, &mut bytes);
        let _ = write_memory(pid, buffer, &bytes);
        self.event(Record::Call { name: name.to_owned(), result: 0, data: witness::digest(&bytes).to_vec() }, pid);
    }

    /// A descriptor link (`pipe:[N]`, `socket:[N]`) names the inode
    /// number `fstat` shows; its new length is the call's result
    /// (truncated to the buffer, as `readlink` does).
    fn rewrite_link(
        &mut self,
        pid: libc::pid_t,
        name: &str,
        mut regs: libc::user_regs_struct,
        buffer: u64,
        length: usize,
        size: usize,
    ) {
        let Some(bytes) = read_bytes(pid, buffer, length.min(libc::PATH_MAX as usize)) else { return };
        let Some(process) = self.processes.get_mut(&pid) else { return };
        let Some(target) =
            std::str::from_utf8(&bytes).ok().and_then(|target| Metadata::link(&mut process.shown, target))
        else {
            return;
        };
        let shown = &target.as_bytes()[..target.len().min(size)];
        if write_memory(pid, buffer, shown).is_ok() {
            regs.rax = shown.len() as u64;
            let _ = set_registers(pid, &regs);
        }
        self.event(Record::Call { name: name.to_owned(), result: shown.len() as i64, data: shown.to_vec() }, pid);
    }

    /// The program just exec'd: witness its binary.
    fn witness_exec(&mut self, pid: libc::pid_t) {
        if let Ok(path) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            self.witness_file(pid, path.to_string_lossy().into_owned(), &format!("/proc/{pid}/exe"));
        }
    }

    /// Record a file read from the root filesystem, once per path and process. Files
    /// under `/in` are witnessed as inputs; `/out` and `/tmp` hold what the
    /// workload wrote itself; `/proc` and `/dev` are not files.
    fn witness_file(&mut self, pid: libc::pid_t, path: String, host_path: &str) {
        let own = ["/in/", "/out/", "/tmp/", "/proc/", "/dev/"];
        if !path.starts_with('/')
            || own.iter().any(|prefix| path.starts_with(prefix))
            || self.process(pid).witnessed.contains(&path)
        {
            return;
        }
        let Ok(digest) = crate::digests::digest(Path::new(host_path), Some(self.cache)) else { return };
        self.process(pid).witnessed.insert(path.clone());
        self.event(Record::Read { path, digest }, pid);
    }

    /// End the run as a cage error: supervision failed.
    pub(crate) fn lose(&mut self, reason: String) {
        self.end(Ending::Lost(reason), None);
    }

    /// Record an answered call: its result and what the emulation wrote
    /// (as is, or its digest when large). False if the run ended instead.
    fn record_answer(&mut self, pid: libc::pid_t, name: &str, result: i64) -> bool {
        let data = std::mem::take(&mut self.written);
        let data = if data.len() > DATA_RECORDED_MAX { witness::digest(&data).to_vec() } else { data };
        self.event(Record::Call { name: name.to_owned(), result, data }, pid)
    }

    /// Append an event; past the limit, end the run instead.
    fn event(&mut self, record: Record, pid: libc::pid_t) -> bool {
        if self.event_count >= self.events_max {
            self.end(Ending::TooManyEvents, Some(pid));
            return false;
        }
        self.event_count += 1;
        self.process(pid).events.push(record);
        true
    }

    /// End the run: kill the keeper (and with it the namespace) and the
    /// stopped tracee, whose call then never runs.
    ///
    /// Every live tracee is killed here too, not only through the
    /// namespace's end (which comes a moment later): the workload's other
    /// processes must not write another byte after the call that ended the
    /// run. They share this thread's CPU, so none runs while this does.
    fn end(&mut self, ending: Ending, stopped: Option<libc::pid_t>) {
        self.ending.get_or_insert(ending);
        for pid in self.processes.keys().chain(&self.parked).copied().chain(stopped) {
            // SAFETY: every pid here is a tracee this thread has not reaped,
            // so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        kill_keeper(self.keeper);
    }

    /// Write `bytes` at `address` in the tracee; `-EFAULT` if it cannot.
    /// Emulations write through this: what they write is recorded.
    fn write(&mut self, pid: libc::pid_t, address: u64, bytes: &[u8]) -> Result<(), i64> {
        write_memory(pid, address, bytes)?;
        self.written.extend_from_slice(bytes);
        Ok(())
    }

    /// The state of tracee `pid`. Every stop handled after the first is
    /// of a known process; should one not be, it gets a place of its own
    /// (after every known one) rather than bringing the supervisor down.
    fn process(&mut self, pid: libc::pid_t) -> &mut Process {
        let seed = self.seed;
        self.processes.entry(pid).or_insert_with(|| Process::new(&seed, vec![u32::MAX, pid as u32], 0))
    }

    /// The logical clock `pid` reads: its own, or its process's if that
    /// has threads (they share it, so it never goes back between them).
    fn clock(&mut self, pid: libc::pid_t) -> &mut u64 {
        if let Some(group) = self.threaded(pid) {
            return &mut self.groups.get_mut(&group).expect("threaded").clock_ns;
        }
        &mut self.process(pid).clock_ns
    }

    /// Read the process's logical clock and move it on. What it reads
    /// stops at `CLOCK_END_NS`: a sleep of `i64::MAX` seconds takes it
    /// there, and from there on every clock reads the same.
    fn now(&mut self, pid: libc::pid_t) -> u64 {
        let clock = self.clock(pid);
        *clock = clock.saturating_add(TICK_NS);
        (*clock).min(CLOCK_END_NS)
    }

    /// Every process's events, in process-tree order, each process's
    /// preceded by its name; the count is within the events limit.
    pub(crate) fn take_events(&mut self) -> Vec<Record> {
        let mut all = std::mem::take(&mut self.ended);
        all.extend(self.processes.drain().map(|(_, process)| (process.path, process.events)));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut records = Vec::new();
        for (path, events) in all {
            if !events.is_empty() {
                records.push(Record::Process(Process::name(&path)));
                records.extend(events);
            }
        }
        records
    }

    fn getrandom(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let known = (libc::GRND_NONBLOCK | libc::GRND_RANDOM | libc::GRND_INSECURE) as u64;
        if regs.rdx & !known != 0 {
            return -i64::from(libc::EINVAL);
        }
        let mut bytes = vec![0; (regs.rsi as usize).min(RANDOM_BYTES_MAX)];
        self.process(pid).rng.fill_bytes(&mut bytes);
        self.write(pid, regs.rdi, &bytes).map_or_else(|e| e, |()| bytes.len() as i64)
    }

    /// Every clock reads the logical clock: the wall clocks from the fixed
    /// epoch, the others from a fixed boot time.
    fn clock_value(&mut self, pid: libc::pid_t, clock: u64) -> Option<u64> {
        if !known_clock(clock) {
            return None;
        }
        let now = self.now(pid);
        Some(if wall_clock(clock) { wall_ns(now) } else { now })
    }

    fn clock_gettime(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let Some(ns) = self.clock_value(pid, regs.rdi) else { return -i64::from(libc::EINVAL) };
        self.write(pid, regs.rsi, &timespec(ns)).map_or_else(|e| e, |()| 0)
    }

    fn gettimeofday(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let ns = wall_ns(self.now(pid));
        if regs.rdi != 0 {
            let mut timeval = (ns / 1_000_000_000).to_ne_bytes().to_vec();
            timeval.extend_from_slice(&(ns % 1_000_000_000 / 1_000).to_ne_bytes());
            if let Err(e) = self.write(pid, regs.rdi, &timeval) {
                return e;
            }
        }
        if regs.rsi != 0 {
            if let Err(e) = self.write(pid, regs.rsi, &[0; 8]) {
                return e;
            }
        }
        0
    }

    fn time(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let secs = EPOCH_SECS + self.now(pid) / 1_000_000_000;
        if regs.rdi != 0 {
            if let Err(e) = self.write(pid, regs.rdi, &secs.to_ne_bytes()) {
                return e;
            }
        }
        secs as i64
    }

    /// `times`: no CPU time (it measures the host), and the elapsed time
    /// in clock ticks (100 a second) since the logical boot, as `sysinfo`'s
    /// uptime counts it.
    fn times(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let ticks = (self.now(pid) / (1_000_000_000 / CLOCK_TICKS_PER_SEC)) as i64;
        if regs.rdi != 0 {
            // struct tms: user, system, children's user, children's system.
            if let Err(e) = self.write(pid, regs.rdi, &[0u8; 4 * 8]) {
                return e;
            }
        }
        ticks
    }

    /// No usage at all: the logical clock counts no CPU time (as `times`
    /// shows none), and faults, context switches and peak memory are the
    /// host's doing.
    fn getrusage(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        if ![libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN, libc::RUSAGE_THREAD].contains(&(regs.rdi as i32)) {
            return -i64::from(libc::EINVAL);
        }
        self.write(pid, regs.rsi, &[0u8; RUSAGE_SIZE]).map_or_else(|e| e, |()| 0)
    }

    /// At the exit of a wait with a usage buffer: if it reaped a child
    /// (`wait4` returns its pid; `waitid` returns 0 either way, its
    /// `siginfo_t` says `SIGCHLD` if it found one), the child's usage is
    /// zeroed, as `getrusage` answers, and recorded.
    fn zero_usage(&mut self, pid: libc::pid_t, name: &str, result: i64, buffer: u64, info: u64) {
        if buffer == 0 {
            return; // A wait without a usage buffer.
        }
        let reaped = match name {
            "wait4" => result > 0,
            _ if info == 0 => true,
            _ => read_bytes(pid, info, 4)
                .is_some_and(|signo| i32::from_ne_bytes(signo.try_into().expect("4 bytes")) == libc::SIGCHLD),
        };
        if reaped && write_memory(pid, buffer, &[0u8; RUSAGE_SIZE]).is_ok() {
            self.event(Record::Call { name: format!("{name} usage"), result, data: Vec::new() }, pid);
        }
    }

    fn clock_getres(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        if self.clock_value(pid, regs.rdi).is_none() {
            return -i64::from(libc::EINVAL);
        }
        if regs.rsi == 0 {
            return 0;
        }
        self.write(pid, regs.rsi, &timespec(1)).map_or_else(|e| e, |()| 0)
    }

    /// Sleeping returns at once, the logical clock moved on by the request
    /// (a process's: a thread's sleep is a wait, see `threaded`).
    fn sleep(&mut self, pid: libc::pid_t, request: u64, clock: u64, absolute: bool) -> i64 {
        let ns = match read_timespec(pid, request) {
            Ok(ns) => ns,
            Err(errno) => return errno,
        };
        self.written.extend_from_slice(&timespec(ns));
        let now = self.clock(pid);
        *now = if absolute { (*now).max(logical_ns(clock, ns)) } else { now.saturating_add(ns) };
        0
    }

    fn nanosleep(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        self.sleep(pid, regs.rdi, libc::CLOCK_MONOTONIC as u64, false)
    }

    fn clock_nanosleep(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        if self.clock_value(pid, regs.rdi).is_none() {
            return -i64::from(libc::EINVAL);
        }
        let absolute = regs.rsi & libc::TIMER_ABSTIME as u64 != 0;
        self.sleep(pid, regs.rdx, regs.rdi, absolute)
    }

    /// `getdents64`, answered from the directory's entries in name order
    /// (`listing.rs`), with virtual inode numbers.
    fn getdents64(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let (fd, buffer, size) = (regs.rdi as i32, regs.rsi, (regs.rdx as usize).min(LISTING_BYTES_MAX));
        let mut directory = match tracee_descriptor(pid, fd) {
            Ok(directory) => std::fs::File::from(directory),
            Err(errno) => return -i64::from(errno),
        };
        let Some(process) = self.processes.get_mut(&pid) else { return -i64::from(libc::ESRCH) };
        let (metadata, shown) = (&mut self.metadata, &mut process.shown);
        let listed = self.listings.next(pid, fd, &mut directory, size, |device, ino| {
            metadata.listed_inode(shown, device, ino, || mounts(pid))
        });
        match listed {
            Ok(records) => self.write(pid, buffer, &records).map_or_else(|e| e, |()| records.len() as i64),
            Err(listing::Failure::Errno(errno)) => -i64::from(errno),
            Err(listing::Failure::TooLarge) => {
                let call = format!("getdents64 of more than {} entries", listing::ENTRIES_MAX);
                self.end(Ending::Refused { source: "a directory too large to list in order", call }, Some(pid));
                -i64::from(libc::EIO)
            }
        }
    }

    fn uname(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        let fields = ["Linux", HOSTNAME, "6.1.0-docklock", "#1 SMP docklock", "x86_64", HOSTNAME];
        let mut bytes = vec![0u8; fields.len() * 65];
        for (slot, field) in bytes.chunks_mut(65).zip(fields) {
            slot[..field.len()].copy_from_slice(field.as_bytes());
        }
        self.write(pid, regs.rdi, &bytes).map_or_else(|e| e, |()| 0)
    }

    fn sysinfo(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        // SAFETY: sysinfo is plain data; zeroed is valid.
        let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
        info.uptime = (self.now(pid) / 1_000_000_000) as libc::c_long;
        info.totalram = self.memory_bytes;
        info.freeram = self.memory_bytes;
        info.procs = 1;
        info.mem_unit = 1;
        // SAFETY: info is a plain struct; its bytes are initialised (zeroed
        // first, padding included).
        let bytes = unsafe {
            std::slice::from_raw_parts((&info as *const libc::sysinfo).cast::<u8>(), std::mem::size_of_val(&info))
        };
        self.write(pid, regs.rdi, bytes).map_or_else(|e| e, |()| 0)
    }

    fn getcpu(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        for address in [regs.rdi, regs.rsi] {
            if address != 0 {
                if let Err(e) = self.write(pid, address, &0u32.to_ne_bytes()) {
                    return e;
                }
            }
        }
        0
    }

    fn sched_getaffinity(&mut self, pid: libc::pid_t, regs: &libc::user_regs_struct) -> i64 {
        // One CPU, in a mask of one word (what the kernel returns here).
        if regs.rsi < 8 {
            return -i64::from(libc::EINVAL);
        }
        self.write(pid, regs.rdx, &1u64.to_ne_bytes()).map_or_else(|e| e, |()| 8)
    }
}

/// Whether opening `path` (as the cage sees it) is allowed: anything
/// outside `/proc`, and in `/proc` only what a process may learn about
/// itself and its namespace without seeing the host's state (times,
/// memory, CPU, load, mount ids, the real auxiliary vector, kernel
/// identity). Fail-closed: whatever is not listed is refused, uniformly.
/// `/proc/filesystems`, `cap_last_cap` and `maps` stay readable (libselinux,
/// libcap and runtimes' stack discovery read them); the kernel's
/// configuration and the inode numbers they show are documented holes.
/// `/proc/<self|thread-self|pid>[/task/<tid>]/cgroup`, `/proc/cgroups`,
/// `/proc/sys/kernel/core_pattern`: see `opens_absent_file`.
fn proc_file_absent(path: &str) -> bool {
    if ["/proc/cgroups", "/proc/sys/kernel/core_pattern"].contains(&path) {
        return true;
    }
    let Some(rest) = path.strip_prefix("/proc/") else { return false };
    let parts: Vec<&str> = rest.split('/').filter(|part| !part.is_empty() && *part != ".").collect();
    let is_id = |part: &str| part == "self" || part == "thread-self" || part.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        [process, "cgroup"] => is_id(process),
        [process, "task", thread, "cgroup"] => is_id(process) && thread.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

fn proc_path_allowed(path: &str) -> bool {
    const FIXED: [&str; 11] = [
        "/proc",
        "/proc/filesystems",
        "/proc/sys/kernel/hostname",
        "/proc/sys/kernel/domainname",
        "/proc/self",
        // The cage's own, bound over the host's (`run::synthetic_proc`).
        "/proc/cpuinfo",
        "/proc/meminfo",
        "/proc/stat",
        "/proc/uptime",
        "/proc/loadavg",
        "/proc/sys/vm/overcommit_memory",
    ];
    // `coredump_filter`: the process's own setting (the JVM writes it).
    // Not `mounts` (nor `mountinfo`): the options of the device nodes
    // bound from the host's devtmpfs carry its size (the host's memory),
    // and the host disk's device name shows.
    const PER_PROCESS: [&str; 11] =
        ["cmdline", "comm", "environ", "exe", "fd", "cwd", "root", "limits", "maps", "task", "coredump_filter"];
    // Kernel constants libraries read (libcap; `id`), and the namespace's own
    // network devices (only loopback).
    const FIXED_MORE: [&str; 2] = ["/proc/sys/kernel/cap_last_cap", "/proc/sys/kernel/ngroups_max"];
    if FIXED_MORE.contains(&path) || (path.ends_with("/net/dev") && path.matches('/').count() == 4) {
        return true;
    }
    // Outside /proc (and /proc itself, whose listing shows only this
    // namespace's pids): allowed.
    let Some(rest) = path.strip_prefix("/proc/") else { return true };
    if FIXED.contains(&path) {
        return true;
    }
    // /proc/<pid>[/task/<tid>]/<entry>...
    let mut parts = rest.split('/');
    let is_id = |part: Option<&str>| part.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !is_id(parts.next()) {
        return false;
    }
    let mut entry = parts.next();
    if entry == Some("task") {
        match parts.next() {
            None => return true,
            tid if is_id(tid) => entry = parts.next(),
            _ => return false,
        }
    }
    entry.is_none_or(|entry| PER_PROCESS.contains(&entry))
}

/// `pkey_alloc(flags, access)` as the kernel answers it on a CPU without
/// protection keys, which is what the virtual CPU announces (leaf 7 has no
/// PKU): `EINVAL` for flags or access rights it does not know, else
/// `ENOSPC`, no key left. Runtimes that use keys (V8) fall back to
/// `mprotect`.
fn pkey_alloc(flags: u64, access: u64) -> i64 {
    const ACCESS_KNOWN: u64 = 0x3; // PKEY_DISABLE_ACCESS | PKEY_DISABLE_WRITE
    if flags != 0 || access & !ACCESS_KNOWN != 0 {
        return -i64::from(libc::EINVAL);
    }
    -i64::from(libc::ENOSPC)
}

/// `prctl` options that would undo the cage: re-enable the time-stamp
/// counter, or stack a seccomp filter whose trace data could pose as ours.
fn prctl_allowed(regs: &libc::user_regs_struct) -> Option<&'static str> {
    match regs.rdi as i32 {
        libc::PR_SET_TSC | libc::PR_SET_SECCOMP => Some("undoing the cage"),
        _ => None,
    }
}

/// Socket options that make the kernel stamp received data with the host's
/// time (`SO_TIMESTAMP*`, old and new numbering, and `SO_TIMESTAMPING`).
const TIMESTAMP_OPTIONS: [i32; 6] = [29, 35, 37, 63, 64, 65];
/// `TCP_INFO`: round-trip times and counters measured on the host.
const TCP_INFO: i32 = 11;

fn setsockopt_allowed(regs: &libc::user_regs_struct) -> Option<&'static str> {
    let (level, option) = (regs.rsi as i32, regs.rdx as i32);
    (level == libc::SOL_SOCKET && TIMESTAMP_OPTIONS.contains(&option)).then_some("time")
}

fn getsockopt_allowed(regs: &libc::user_regs_struct) -> Option<&'static str> {
    let (level, option) = (regs.rsi as i32, regs.rdx as i32);
    (level == libc::IPPROTO_TCP && option == TCP_INFO).then_some("time")
}

/// `arch_prctl` may manage TLS and read the CPUID setting, never change it.
fn arch_prctl_allowed(regs: &libc::user_regs_struct) -> Option<&'static str> {
    (regs.rdi == ARCH_SET_CPUID).then_some("undoing the cage")
}

/// `length` bytes of the tracee's memory at `address`.
fn read_bytes(pid: libc::pid_t, address: u64, length: usize) -> Option<Vec<u8>> {
    let mut bytes = vec![0u8; length];
    let local = libc::iovec { iov_base: bytes.as_mut_ptr().cast(), iov_len: length };
    let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: length };
    // SAFETY: local describes bytes; the kernel checks remote.
    (unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } == length as isize).then_some(bytes)
}

/// The NUL-terminated string at `address` in the tracee, read a page at a
/// time (a string may end just before an unmapped page), up to `max`
/// bytes; `None` if it cannot be read, is longer, or is not UTF-8.
fn read_c_string(pid: libc::pid_t, address: u64, max: usize) -> Option<String> {
    const PAGE: u64 = 4096;
    let mut bytes = Vec::new();
    let mut at = address;
    while bytes.len() < max {
        let chunk = (PAGE - at % PAGE) as usize;
        let piece = read_bytes(pid, at, chunk)?;
        if let Some(end) = piece.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&piece[..end]);
            return String::from_utf8(bytes).ok();
        }
        bytes.extend_from_slice(&piece);
        at += chunk as u64;
    }
    None
}

/// As much of the tracee's stack from `rsp` as is mapped, up to 64 KiB,
/// in one call: one remote piece per page, so the read stops cleanly at
/// the end of the mapping.
fn read_stack(pid: libc::pid_t, rsp: u64) -> Vec<u8> {
    const PAGE: u64 = 4096;
    const PAGES: usize = 16;
    let mut buffer = vec![0u8; PAGES * PAGE as usize];
    let mut remote = Vec::with_capacity(PAGES + 1);
    let mut at = rsp;
    let end = rsp + (PAGES as u64) * PAGE;
    while at < end {
        let next = ((at / PAGE) + 1) * PAGE;
        let length = next.min(end) - at;
        remote.push(libc::iovec { iov_base: at as *mut libc::c_void, iov_len: length as usize });
        at += length;
    }
    let total: usize = remote.iter().map(|iov| iov.iov_len).sum();
    let local = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: total };
    // SAFETY: local describes `total` bytes of buffer; the kernel checks
    // the remote pieces against the tracee's address space.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, remote.as_ptr(), remote.len() as libc::c_ulong, 0) };
    buffer.truncate(usize::try_from(read).unwrap_or(0));
    buffer
}

/// The kernel's special mappings in the tracee (`[vdso]`, `[vvar]`, and
/// `[vvar_vclock]` on newer kernels): name, start, end.
fn special_mappings(pid: libc::pid_t) -> Vec<(u64, u64)> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else { return Vec::new() };
    let mut found: Vec<(u64, u64)> = Vec::new();
    for line in maps.lines() {
        if !["[vdso]", "[vvar]", "[vvar_vclock]"].into_iter().any(|name| line.ends_with(name)) {
            continue;
        }
        let range = line.split_whitespace().next().and_then(|range| range.split_once('-'));
        let parsed = range
            .and_then(|(start, end)| Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?)));
        let Some((start, end)) = parsed.filter(|(start, end)| start < end) else { continue };
        // maps lists mappings in address order: extend the last run or
        // start a new one.
        match found.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => found.push((start, end)),
        }
    }
    found
}

/// A duplicate of tracee `pid`'s descriptor `fd`: the same open file, its
/// position included; the errno the tracee's own use would fail with.
/// Whether a syscall stop is a call's entry or its exit
/// (`PTRACE_SYSCALL_INFO_*`; 0 if the kernel cannot say).
fn syscall_stop_op(pid: libc::pid_t) -> u8 {
    // SAFETY: plain data; the kernel fills what it knows.
    let mut info: libc::ptrace_syscall_info = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::ptrace_syscall_info>();
    // SAFETY: info is a valid out pointer of `size` bytes.
    let n = unsafe { libc::ptrace(libc::PTRACE_GET_SYSCALL_INFO, pid, size, &mut info) };
    if n > 0 {
        info.op
    } else {
        0
    }
}

/// The (address, length) pairs of a tracee's `iovec` array; `-EINVAL`
/// past `IOV_MAX` entries, as the kernel answers.
fn read_iovecs(pid: libc::pid_t, address: u64, count: u64) -> Result<Vec<(u64, u64)>, i64> {
    const IOV_MAX: u64 = 1024;
    if count > IOV_MAX {
        return Err(-i64::from(libc::EINVAL));
    }
    let bytes = read_bytes(pid, address, count as usize * 16).ok_or(-i64::from(libc::EFAULT))?;
    Ok(bytes
        .chunks_exact(16)
        .map(|pair| {
            let word = |at: usize| u64::from_ne_bytes(pair[at..at + 8].try_into().expect("8 bytes"));
            (word(0), word(8))
        })
        .collect())
}

fn tracee_descriptor(pid: libc::pid_t, fd: i32) -> Result<OwnedFd, i32> {
    descriptor_of(&pidfd(pid)?, fd)
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// A pidfd of process `pid` (its first thread's pid).
fn pidfd(pid: libc::pid_t) -> Result<OwnedFd, i32> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor or -1. The tracee cannot have been reaped meanwhile: it
    // is stopped, and only this thread waits for it.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        return Err(last_errno());
    }
    // SAFETY: a fresh descriptor, owned from here.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd as i32) })
}

/// A copy of descriptor `fd` of the process `pidfd` refers to.
fn descriptor_of(pidfd: &OwnedFd, fd: i32) -> Result<OwnedFd, i32> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags
    // (this thread is the tracer, so it may); it returns a new descriptor
    // (close-on-exec) or -1.
    let duplicate = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if duplicate < 0 {
        return Err(last_errno());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate as i32) })
}

/// What the metadata rewrites need of a tracee's mounts.
fn mounts(pid: libc::pid_t) -> metadata::Mounts {
    use std::os::unix::fs::MetadataExt;
    metadata::Mounts {
        mountinfo: std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default(),
        // Unreadable: every time counts as the kernel's stamp.
        root_changed: std::fs::metadata(format!("/proc/{pid}/root/")).map_or(i64::MIN, |root| root.ctime()),
    }
}

/// Write `bytes` at `address` in the tracee; `-EFAULT` if it cannot.
fn write_memory(pid: libc::pid_t, address: u64, bytes: &[u8]) -> Result<(), i64> {
    let local = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let remote = libc::iovec { iov_base: address as *mut libc::c_void, iov_len: bytes.len() };
    // SAFETY: local describes bytes; the kernel checks remote against the
    // tracee's address space.
    let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if n == bytes.len() as isize {
        Ok(())
    } else {
        Err(-i64::from(libc::EFAULT))
    }
}

/// One 8-byte word of the tracee's memory.
fn read_word(pid: libc::pid_t, address: u64) -> Option<u64> {
    read_bytes(pid, address, 8).map(|bytes| u64::from_ne_bytes(bytes.try_into().expect("8 bytes")))
}

/// The `struct timespec` at `address` in nanoseconds, or `-errno`.
fn read_timespec(pid: libc::pid_t, address: u64) -> Result<u64, i64> {
    read_time(pid, address, 1)
}

/// A seconds-and-fraction time at `address` (`timespec`: the fraction in
/// units of 1 ns; `timeval`: of 1,000 ns) in nanoseconds, or `-errno`.
fn read_time(pid: libc::pid_t, address: u64, unit_ns: i64) -> Result<u64, i64> {
    let Some(bytes) = read_bytes(pid, address, 16) else { return Err(-i64::from(libc::EFAULT)) };
    let secs = i64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes"));
    let fraction = i64::from_ne_bytes(bytes[8..].try_into().expect("8 bytes"));
    if secs < 0 || !(0..1_000_000_000 / unit_ns).contains(&fraction) {
        return Err(-i64::from(libc::EINVAL));
    }
    Ok((secs as u64).saturating_mul(1_000_000_000).saturating_add((fraction * unit_ns) as u64))
}

/// The last logical time the clocks read: the wall clocks, which count
/// from `EPOCH_SECS`, then read the last nanosecond a `u64` holds (the
/// year 2554).
const CLOCK_END_NS: u64 = u64::MAX - EPOCH_SECS * 1_000_000_000;

/// The wall clocks' reading at logical time `ns`: from the fixed epoch.
fn wall_ns(ns: u64) -> u64 {
    (EPOCH_SECS * 1_000_000_000).saturating_add(ns)
}

/// An absolute time `ns` on `clock` as logical nanoseconds: the wall
/// clocks count from the epoch, the others from the logical boot.
fn logical_ns(clock: u64, ns: u64) -> u64 {
    if wall_clock(clock) {
        ns.saturating_sub(EPOCH_SECS * 1_000_000_000)
    } else {
        ns
    }
}

/// A clock id the kernel knows (0 to 11; the logical clock answers all).
fn known_clock(clock: u64) -> bool {
    i32::try_from(clock as i64).is_ok_and(|clock| (0..=11).contains(&clock))
}

/// The clocks that count from the epoch rather than from boot.
fn wall_clock(clock: u64) -> bool {
    [libc::CLOCK_REALTIME, libc::CLOCK_REALTIME_COARSE, libc::CLOCK_TAI].iter().any(|&c| c as u64 == clock)
}

fn timespec(ns: u64) -> Vec<u8> {
    let mut bytes = (ns / 1_000_000_000).to_ne_bytes().to_vec();
    bytes.extend_from_slice(&(ns % 1_000_000_000).to_ne_bytes());
    bytes
}

/// A denied call in words.
fn call_name(number: i64, foreign: bool) -> String {
    const X32_BIT: i64 = 0x4000_0000;
    if foreign {
        format!("a 32-bit (int 0x80) system call, number {number}")
    } else if number & X32_BIT != 0 {
        format!("an x32 system call, number {}", number & !X32_BIT)
    } else {
        syscalls::name(number).map_or_else(|| format!("unknown system call {number}"), str::to_owned)
    }
}

/// Kill the keeper through its pidfd (safe whether or not it was reaped).
pub(crate) fn kill_keeper(keeper: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, keeper.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0) };
}

fn seize(pid: libc::pid_t) -> io::Result<()> {
    let options = libc::PTRACE_O_TRACESECCOMP
        | libc::PTRACE_O_TRACESYSGOOD
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_EXITKILL;
    // SAFETY: PTRACE_SEIZE takes no pointers; options is a flag word.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, options as libc::c_long) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The tracees' CPU settings turned on for the calling thread while it
/// supervises, so that it matches them: CPUID faulting and time-stamp
/// counter faulting. Each is a setting the kernel rewrites whenever it
/// switches between a task that has it and one that does not (a
/// model-specific register for CPUID, a bit of CR4 for the TSC), and in a
/// VM each such write can be a VM exit. Every trapped call is two
/// switches between a tracee and this thread. Measured: the CPUID
/// register's two writes cost about 4.5 µs per call on session 4's Intel
/// VM (14 µs instead of 9.5); on session 13's AMD EPYC VM (which cannot
/// fault CPUID) a pipe round trip between two processes pinned to one CPU
/// took 17–19 µs when one of them had TSC faulting on and 6–7 µs when
/// both or neither had.
///
/// While they are on, a CPUID or RDTSC instruction on this thread faults
/// (SIGSEGV, which would end the process), so nothing in supervision may
/// run one:
/// - CPUID: the standard library's feature detection is done before (its
///   answer is cached for the process); the supervisor's own code has
///   none (SHA3 and ChaCha20 pick their code at compile time or through
///   that cache);
/// - RDTSC: the vDSO reads the counter for `clock_gettime` and
///   `gettimeofday`, so supervision reads no clock (no `Instant`, no
///   `SystemTime`; the wall-time limit is the output thread's, and waits
///   are `nanosleep`s, which do not read the clock in user space).
///
/// The guard restores both on drop, unwinding included, before the
/// thread goes back to its caller or pool.
struct TraceeSettings {
    cpuid: bool,
}

impl TraceeSettings {
    fn adopt() -> Self {
        // Fill the feature-detection cache: the one CPUID the libraries
        // this thread runs might otherwise execute lazily.
        let _ = std::is_x86_feature_detected!("avx2");
        // SAFETY: arch_prctl(ARCH_SET_CPUID, 0) changes this thread's own
        // CPUID setting; it takes no pointers. It fails where the CPU
        // cannot fault CPUID, and then nothing changed.
        let cpuid = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 0) } == 0;
        // SAFETY: PR_SET_TSC changes this thread's own setting; no
        // pointers. If it fails, only the switches cost more.
        unsafe { libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_SIGSEGV, 0, 0, 0) };
        Self { cpuid }
    }
}

impl Drop for TraceeSettings {
    fn drop(&mut self) {
        // SAFETY: as in `adopt`; these turn RDTSC and CPUID back on for
        // this thread.
        unsafe {
            libc::prctl(libc::PR_SET_TSC, libc::PR_TSC_ENABLE, 0, 0, 0);
            if self.cpuid {
                libc::syscall(libc::SYS_arch_prctl, ARCH_SET_CPUID, 1);
            }
        }
    }
}

fn resume(pid: libc::pid_t, request: libc::c_uint, signal: i32) {
    // SAFETY: a restart request on a stopped tracee; no pointers. If the
    // tracee died meanwhile this fails with ESRCH and its exit follows.
    unsafe { libc::ptrace(request, pid, 0, signal as libc::c_long) };
}

fn event_message(pid: libc::pid_t) -> io::Result<libc::c_ulong> {
    let mut message: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long to message.
    if unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, pid, 0, &mut message) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(message)
}

fn registers(pid: libc::pid_t) -> io::Result<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain data; the kernel fills it.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: regs is a valid out pointer of the right type.
    if unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(regs)
}

fn set_registers(pid: libc::pid_t, regs: &libc::user_regs_struct) -> io::Result<()> {
    // SAFETY: regs points at a valid user_regs_struct the kernel reads.
    if unsafe { libc::ptrace(libc::PTRACE_SETREGS, pid, 0, regs as *const libc::user_regs_struct) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protection_keys_are_answered_as_on_a_cpu_without_them() {
        let enospc = -i64::from(libc::ENOSPC);
        let einval = -i64::from(libc::EINVAL);
        assert_eq!(pkey_alloc(0, 0), enospc);
        assert_eq!(pkey_alloc(0, 0x3), enospc, "both access rights are known");
        assert_eq!(pkey_alloc(1, 0), einval, "no flags are defined");
        assert_eq!(pkey_alloc(0, 0x4), einval, "an unknown access right");
    }

    #[test]
    fn proc_is_allowed_only_where_it_shows_no_host_state() {
        for allowed in ["/usr/lib/libc.so.6", "/proc", "/proc/filesystems", "/proc/2", "/proc/2/maps", "/proc/2/fd"] {
            assert!(proc_path_allowed(allowed), "{allowed}");
        }
        for allowed in [
            "/proc/2/task",
            "/proc/2/task/3/comm",
            "/proc/sys/kernel/hostname",
            "/proc/12/cmdline",
            "/proc/sys/kernel/ngroups_max",
        ] {
            assert!(proc_path_allowed(allowed), "{allowed}");
        }
        // The cage's own, bound over the host's.
        for own in [
            "/proc/uptime",
            "/proc/cpuinfo",
            "/proc/meminfo",
            "/proc/stat",
            "/proc/loadavg",
            "/proc/sys/vm/overcommit_memory",
        ] {
            assert!(proc_path_allowed(own), "{own}");
        }
        for refused in ["/proc/2/stat", "/proc/2/status", "/proc/vmstat", "/proc/diskstats"] {
            assert!(!proc_path_allowed(refused), "{refused}");
        }
        for refused in ["/proc/2/auxv", "/proc/2/mountinfo", "/proc/2/mounts", "/proc/sys/kernel/random/boot_id"] {
            assert!(!proc_path_allowed(refused), "{refused}");
        }
        assert!(!proc_path_allowed("/proc/2/task/3/stat"));
        assert!(!proc_path_allowed("/proc/version"));
        assert!(!proc_path_allowed("/proc/self2/maps"));
    }

    #[test]
    fn only_cgroup_files_and_the_core_pattern_are_absent() {
        let absent = [
            "/proc/self/cgroup",
            "/proc/2/cgroup",
            "/proc/thread-self/cgroup",
            "/proc/self/task/3/cgroup",
            "/proc/cgroups",
            "/proc/sys/kernel/core_pattern",
        ];
        for absent in absent {
            assert!(proc_file_absent(absent), "{absent}");
        }
        for present in
            ["/proc/self/maps", "/proc/cgroup", "/proc/self/cgroup/x", "/tmp/proc/self/cgroup", "/proc/x/cgroup"]
        {
            assert!(!proc_file_absent(present), "{present}");
        }
    }

    #[test]
    fn denied_calls_are_named() {
        assert_eq!(call_name(165, false), "mount");
        assert_eq!(call_name(0x4000_0000 | 39, false), "an x32 system call, number 39");
        assert_eq!(call_name(1, true), "a 32-bit (int 0x80) system call, number 1");
        assert_eq!(call_name(9999, false), "unknown system call 9999");
    }

    #[test]
    fn every_traced_call_of_the_default_policy_is_handled() {
        let policy = crate::policy::Policy::compile(crate::policy::DEFAULT).unwrap();
        for name in &policy.traced {
            if let Handling::Refuse(source) = handling(name) {
                assert_ne!(source, "an unhandled traced call", "{name} is traced but has no handling");
            }
        }
    }
}
