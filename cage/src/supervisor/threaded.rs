//! The supervisor's side of serialised threads: `crate::threads` decides
//! whose turn it is; this stops, answers and resumes the threads.
//!
//! A process becomes *threaded* at its first `clone` with `CLONE_THREAD`
//! (the filter sends those here). Turns change at the calls the filter
//! sends to the supervisor: futexes, sleeps, yields, waits for
//! descriptors and thread exits (the policy traces them for this), where
//! they are answered, and every other traced call (time, randomness,
//! opens, stats), where the slice is counted. Calls the filter allows run
//! without a stop, so a thread's turn costs nothing between them. A
//! thread whose turn it is not stays stopped (`held`) until it is. When
//! only one thread is left the process is an ordinary one again.

use std::os::fd::{AsRawFd, OwnedFd};

use super::{read_bytes, registers, set_registers, syscalls, write_memory, Ending, Pending, Supervisor};
use crate::threads::{Group, Tid, Wait, Woken};
use crate::witness::Record;

/// `FUTEX_OP`'s operations and comparisons (`<linux/futex.h>`).
const FUTEX_OP_OPARG_SHIFT: u32 = 8;

/// Why threads end a run.
const SOURCE: &str = "threads";
/// How long the supervisor waits between rounds of tries when every
/// thread of a process waits and only another process can help.
const STALLED_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// `seccomp`'s operation that installs a filter (`<linux/seccomp.h>`).
const SECCOMP_SET_MODE_FILTER: u64 = 1;
/// Bytes below the stack pointer left alone (the ABI's red zone, with
/// room): a try's zero timeout is written below them.
const BELOW_STACK: u64 = 256;

/// Where a call that waits for descriptors takes its timeout: in an
/// argument (milliseconds, negative for none), or in a structure an
/// argument points to (`timespec`, or `timeval` for `select`; none if
/// the pointer is null).
#[derive(Clone, Copy)]
enum Timeout {
    Millis(usize),
    Spec(usize),
    Val(usize),
}

/// A thread's wait being tried without waiting: the argument changed,
/// its value as the program passed it, and when the wait ends (kept
/// across tries).
#[derive(Clone, Copy)]
pub(super) struct Try {
    argument: usize,
    passed: u64,
    deadline: Option<u64>,
    tried: Tried,
}

/// What a try waits for.
#[derive(Clone, Copy)]
enum Tried {
    /// Descriptors (`poll` and kin): a zero timeout.
    Descriptors,
    /// A futex shared with other processes: a zero timeout.
    Futex,
    /// A child (`wait4`, `waitid`): `WNOHANG`. `info` is `waitid`'s
    /// `siginfo_t` (0 for `wait4`), `usage` the buffer for the child's
    /// resource usage (0 for none), which is zeroed.
    Child { info: u64, usage: u64 },
    /// Room in a pipe or socket for a `write`, a `writev` or a `sendto`
    /// without an address: what is left of it is written without waiting
    /// (`WriteCall::without_waiting`). `original`
    /// is the call as the program made it, `done` how much of it has been
    /// written at earlier turns; `as_is` once the descriptor refused to
    /// be written without waiting (the call then runs as it is).
    Write { original: WriteCall, done: u64, as_is: bool },
}

/// Most `iovec`s of a `writev` that is tried: one with more runs as it
/// is (and may block with the turn held). The supervisor writes what is
/// left of them below the thread's stack, 16 bytes each.
const WRITEV_TRIED_MAX: u64 = 64;

/// A `write`, `writev` or `sendto` as the program made it: its number and
/// arguments, how many bytes it writes, and where it was made.
#[derive(Clone, Copy)]
pub(super) struct WriteCall {
    number: u64,
    fd: u64,
    /// The bytes (`write`, `sendto`) or the `iovec`s (`writev`).
    buffer: u64,
    /// Bytes, or `iovec`s.
    count: u64,
    /// Bytes in all.
    total: u64,
    /// `r10`, `r8`, `r9`: unused by `write` (`pwritev2`'s position and
    /// flags in a try); `sendto`'s flags, address and its length.
    rest: [u64; 3],
    rip: u64,
}

impl WriteCall {
    /// The call `pid` is stopped at, or `None` for a `writev` not tried
    /// (too many `iovec`s, unreadable ones, or more bytes than a call
    /// may write: the kernel answers it).
    fn of(pid: Tid, regs: &libc::user_regs_struct) -> Option<Self> {
        let mut call = Self {
            number: regs.orig_rax,
            fd: regs.rdi,
            buffer: regs.rsi,
            count: regs.rdx,
            total: regs.rdx,
            rest: [regs.r10, regs.r8, regs.r9],
            rip: regs.rip,
        };
        if call.number == libc::SYS_writev as u64 {
            let mut lengths = call.pieces(pid)?.into_iter().map(|(_, length)| length);
            call.total = lengths.try_fold(0u64, u64::checked_add).filter(|&total| total <= isize::MAX as u64)?;
        }
        Some(call)
    }

    /// What the call writes, as `(address, length)` pieces: read from the
    /// program's memory for a `writev`.
    fn pieces(&self, pid: Tid) -> Option<Vec<(u64, u64)>> {
        if self.number != libc::SYS_writev as u64 {
            return Some(vec![(self.buffer, self.count)]);
        }
        if self.count > WRITEV_TRIED_MAX {
            return None;
        }
        let bytes = read_bytes(pid, self.buffer, self.count as usize * 16)?;
        let word = |at: &[u8]| u64::from_ne_bytes(at.try_into().expect("8 bytes"));
        Some(bytes.chunks_exact(16).map(|iovec| (word(&iovec[..8]), word(&iovec[8..]))).collect())
    }

    /// Whether the thread stopped at `regs` makes this call again.
    fn is(&self, regs: &libc::user_regs_struct) -> bool {
        (regs.orig_rax, regs.rdi, regs.rsi, regs.rdx, [regs.r10, regs.r8, regs.r9], regs.rip)
            == (self.number, self.fd, self.buffer, self.count, self.rest, self.rip)
    }

    /// `regs` with this call's number and arguments back.
    fn restore(&self, mut regs: libc::user_regs_struct) -> libc::user_regs_struct {
        (regs.orig_rax, regs.rdi, regs.rsi, regs.rdx) = (self.number, self.fd, self.buffer, self.count);
        [regs.r10, regs.r8, regs.r9] = self.rest;
        regs
    }

    /// `regs` made into the call that writes what is left after `done`
    /// bytes without waiting, or `None` if that cannot be set up. A
    /// `write` or `writev` becomes `pwritev2` of the `iovec`s left (put
    /// below the stack) at the descriptor's position (-1) with
    /// `RWF_NOWAIT`; a `sendto` stays one, with `MSG_DONTWAIT` added to
    /// its flags.
    fn without_waiting(&self, pid: Tid, mut regs: libc::user_regs_struct, done: u64) -> Option<libc::user_regs_struct> {
        if self.number == libc::SYS_sendto as u64 {
            (regs.rsi, regs.rdx, regs.r10) = (
                self.buffer.wrapping_add(done),
                self.count.saturating_sub(done),
                self.rest[0] | libc::MSG_DONTWAIT as u64,
            );
            return Some(regs);
        }
        let left = after(&self.pieces(pid)?, done);
        let at = below_stack(&regs, 16 * left.len() as u64)?;
        let iovecs: Vec<u8> =
            left.iter().flat_map(|&(address, length)| [address, length]).flat_map(u64::to_ne_bytes).collect();
        write_memory(pid, at, &iovecs).ok()?;
        (regs.orig_rax, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9) =
            (libc::SYS_pwritev2 as u64, at, left.len() as u64, u64::MAX, 0, libc::RWF_NOWAIT as u64);
        Some(regs)
    }
}

/// The pieces of `pieces` left once `done` bytes of them are written
/// (empty ones dropped).
fn after(pieces: &[(u64, u64)], mut done: u64) -> Vec<(u64, u64)> {
    let mut left = Vec::with_capacity(pieces.len());
    for &(address, length) in pieces {
        let skipped = done.min(length);
        done -= skipped;
        if length > skipped {
            // The program's numbers: any may be hostile (the kernel then
            // fails the call), none may overflow here.
            left.push((address.wrapping_add(skipped), length - skipped));
        }
    }
    left
}

impl Tried {
    /// What the try returns when nothing was ready (`waitid` returns 0
    /// either way; its `siginfo_t` tells).
    fn idle(self) -> i64 {
        match self {
            Tried::Futex => -i64::from(libc::ETIMEDOUT),
            Tried::Descriptors | Tried::Child { .. } | Tried::Write { .. } => 0,
        }
    }
}

impl Supervisor<'_> {
    /// The group `pid`'s threads are serialised in, if they are.
    pub(super) fn threaded(&self, pid: Tid) -> Option<Tid> {
        let group = self.processes.get(&pid)?.group?;
        self.groups.contains_key(&group).then_some(group)
    }

    /// At the seccomp stop of a `clone` that makes a thread: the process's
    /// threads are serialised from here on; the new thread's word to clear
    /// at its end is noted for its clone event.
    pub(super) fn thread_clone(&mut self, pid: Tid, regs: &libc::user_regs_struct) {
        if !self.process(pid).tries_blocking {
            return self.stack_blocking_filter(pid, *regs);
        }
        if self.threaded(pid).is_none() {
            let clock_ns = self.process(pid).clock_ns;
            let leader = thread_group_leader(pid).unwrap_or(pid);
            self.groups.insert(pid, Group::new(pid, leader, clock_ns));
            self.process(pid).group = Some(pid);
        }
        let clear_tid = (regs.rdi & libc::CLONE_CHILD_CLEARTID as u64 != 0).then_some(regs.r10);
        self.thread_clones.insert(pid, clear_tid);
        self.proceed(pid, 0);
    }

    /// Before a process's first thread: the process (still one thread,
    /// stopped at the seccomp stop of the `clone`) installs the
    /// blocking-call filter, a call the supervisor makes it make in place
    /// of the `clone`, which it then makes again (its seccomp stop comes
    /// back here, the filter in place; the new thread inherits it). The
    /// policy's allowlist denies `seccomp`, but a call a tracer puts in
    /// place at a seccomp stop is checked only against denials in the
    /// kernel (a trace there counts as handled), so the workload itself
    /// still cannot stack a filter. If the install fails (the record says
    /// so), blocking calls wait in the kernel, as they did before.
    fn stack_blocking_filter(&mut self, pid: Tid, regs: libc::user_regs_struct) {
        self.process(pid).tries_blocking = true;
        let code: Vec<u8> = self
            .blocking
            .iter()
            .flat_map(|insn| [&insn.code.to_ne_bytes()[..], &[insn.jt, insn.jf], &insn.k.to_ne_bytes()].concat())
            .collect();
        // Below the red zone: the program, and before it the `sock_fprog`
        // (a length, padding, the program's address).
        let length = u16::try_from(self.blocking.len()).expect("a filter holds at most 4096 instructions");
        let written = match below_stack(&regs, 16 + code.len() as u64) {
            None => Err(-i64::from(libc::EFAULT)),
            Some(fprog_at) => {
                let code_at = fprog_at + 16;
                let fprog = [&length.to_ne_bytes()[..], &[0; 6], &code_at.to_ne_bytes()].concat();
                write_memory(pid, code_at, &code).and_then(|()| write_memory(pid, fprog_at, &fprog)).map(|()| fprog_at)
            }
        };
        let result = match written {
            Err(errno) => errno,
            Ok(fprog_at) => {
                let mut call = regs;
                (call.orig_rax, call.rdi, call.rsi, call.rdx) =
                    (libc::SYS_seccomp as u64, SECCOMP_SET_MODE_FILTER, 0, fprog_at);
                if set_registers(pid, &call).is_err() || self.step_to_syscall_stop(pid).is_none() {
                    return; // It died meanwhile.
                }
                let Ok(after) = registers(pid) else { return };
                after.rax as i64
            }
        };
        self.event(Record::Call { name: "blocking-call filter".into(), result, data: Vec::new() }, pid);
        // Back to the `syscall` instruction with the clone's number, from
        // the seccomp call's exit; or, if nothing was injected, from the
        // clone's seccomp stop, skipping it there.
        let mut again = regs;
        again.rip -= 2;
        again.rax = regs.orig_rax;
        if written.is_err() {
            again.orig_rax = u64::MAX;
        }
        let _ = set_registers(pid, &again);
        self.proceed(pid, 0);
    }

    /// At the seccomp stop of a call the blocking-call filter sends here
    /// (a read, a receive, an accept, a write, a wait for a child; the last
    /// two have their own tries below). In a threaded process, whose turn
    /// it is, the call runs only if it would not block now. If it would,
    /// the thread waits (`Wait::Io`) and makes the call again at its next
    /// turn, so the other threads run meanwhile: one of them may be what
    /// it waits for (`multiprocessing.Pool`'s parent reads results in one
    /// thread while another sends the tasks, and the workers get no task
    /// while the reader holds the turn). A call that runs counts against
    /// the slice. In any other process the call runs as it is.
    pub(super) fn blocking_call(&mut self, pid: Tid, number: i64, regs: libc::user_regs_struct) {
        // A wait that asks for the child's usage has it zeroed at its exit,
        // wherever it runs (this filter's trace stands in for the policy's).
        if let Some(usage) = super::usage_of_wait(number, &regs) {
            self.pending.insert(pid, usage);
        }
        let Some(id) = self.threaded(pid) else { return self.proceed(pid, 0) };
        let group = self.groups.get_mut(&id).expect("threaded");
        if group.ending || !group.runs(pid) {
            return self.proceed(pid, 0);
        }
        match number {
            libc::SYS_wait4 | libc::SYS_waitid => self.try_wait_for_child(pid, id, number, regs),
            libc::SYS_write | libc::SYS_writev | libc::SYS_sendto => self.try_write(pid, id, regs),
            _ => {
                let blocks = self.group_pidfd(id).is_some_and(|pidfd| would_block(pidfd, number, &regs));
                if blocks {
                    self.call_again_later(pid, id, number, regs);
                } else {
                    self.run_in_turn(pid, id);
                }
            }
        }
    }

    /// The pidfd of group `id`'s process: one per process, opened at its
    /// first blocking call and kept until its group ends.
    fn group_pidfd(&mut self, id: Tid) -> Option<&OwnedFd> {
        let leader = self.groups.get(&id)?.leader;
        if let std::collections::hash_map::Entry::Vacant(entry) = self.pidfds.entry(id) {
            if let Ok(pidfd) = super::pidfd(leader) {
                entry.insert(pidfd);
            }
        }
        self.pidfds.get(&id)
    }

    /// The call `pid` is at the seccomp stop of runs now, in its turn,
    /// and counts against the slice.
    fn run_in_turn(&mut self, pid: Tid, id: Tid) {
        self.count_call(id);
        self.proceed(pid, 0);
    }

    /// A call made in group `id`'s turn counts against its slice; the
    /// next thread's turn comes when the slice is over.
    fn count_call(&mut self, id: Tid) {
        if self.groups.get_mut(&id).is_some_and(Group::slice_over) {
            self.next_turn(id);
        }
    }

    /// The call `pid` is at the seccomp stop of would block: skipped
    /// (number -1), and back at its `syscall` instruction with its number,
    /// so that it makes the call again at its next turn; the others run
    /// meanwhile.
    fn call_again_later(&mut self, pid: Tid, id: Tid, number: i64, mut regs: libc::user_regs_struct) {
        regs.orig_rax = u64::MAX;
        regs.rax = number as u64;
        regs.rip -= 2;
        if set_registers(pid, &regs).is_err() {
            return;
        }
        self.groups.get_mut(&id).expect("threaded").wait(pid, Wait::Io, None);
        self.next_turn(id);
        if self.ending.is_none() {
            self.proceed(pid, 0);
        }
    }

    /// A thread's `write` to a pipe or a socket that has no room for all
    /// of it (or `sendto` without an address, what `send` makes) would
    /// block in the kernel with its process's turn held, and
    /// what drains it may be another thread of the process
    /// (`multiprocessing.Pool`'s parent sends tasks from one thread while
    /// another reads the results; with both pipes full, the workers wait
    /// for the reader, the sender for the workers). With no room at all
    /// the call is made again at the thread's next turn; with some, what
    /// fits is written without waiting (`WriteCall::without_waiting`; a
    /// call the supervisor puts in place is checked only against denials)
    /// and the rest at its next turns, until the call returns all of it,
    /// as a blocking write does. A write that cannot block (a regular
    /// file, a non-blocking descriptor, at most `PIPE_BUF` bytes to a pipe
    /// with room) runs as it is; so does a `sendto` with `MSG_DONTWAIT`.
    fn try_write(&mut self, pid: Tid, id: Tid, regs: libc::user_regs_struct) {
        let (original, done) = match self.tries.get(&pid).map(|attempt| attempt.tried) {
            Some(Tried::Write { original, done, as_is }) if original.is(&regs) => {
                if as_is {
                    self.tries.remove(&pid);
                    return self.run_in_turn(pid, id);
                }
                (original, done)
            }
            // Another write, from a signal handler run between the turns
            // of a write not yet done: it runs as it is.
            Some(_) => return self.run_in_turn(pid, id),
            None => match WriteCall::of(pid, &regs) {
                Some(call) => (call, 0),
                None => return self.run_in_turn(pid, id),
            },
        };
        let does_not_wait = original.total == 0
            || (original.number == libc::SYS_sendto as u64 && original.rest[0] & libc::MSG_DONTWAIT as u64 != 0);
        if does_not_wait {
            return self.run_in_turn(pid, id);
        }
        let left = original.total.saturating_sub(done);
        let room = match (i32::try_from(original.fd), self.group_pidfd(id)) {
            (Ok(fd), Some(pidfd)) => room_to_write(pidfd, fd, left),
            _ => Room::Enough,
        };
        match room {
            Room::Enough if done == 0 => self.run_in_turn(pid, id),
            Room::None => self.call_again_later(pid, id, original.number as i64, regs),
            Room::Enough | Room::Some => {
                let Some(call) = original.without_waiting(pid, regs, done) else {
                    return self.run_in_turn(pid, id);
                };
                if set_registers(pid, &call).is_ok() {
                    let tried = Tried::Write { original, done, as_is: false };
                    self.tries.insert(pid, Try { argument: 0, passed: 0, deadline: None, tried });
                    self.pending.insert(pid, Pending::Try);
                }
                self.proceed(pid, 0);
            }
        }
    }

    /// At the exit of a write without waiting (`try_write`): done when all
    /// of the program's `write` is written, or it failed (a failure after
    /// some was written returns what was); otherwise the thread makes the
    /// call again at its next turn, for what is left. Its registers go
    /// back to the call's as the program made it.
    fn after_write(&mut self, pid: Tid, regs: libc::user_regs_struct, original: WriteCall, done: u64) {
        let result = regs.rax as i64;
        let written = done + u64::try_from(result).unwrap_or(0);
        let again = result == -i64::from(libc::EAGAIN) || (result > 0 && written < original.total);
        let refused = result == -i64::from(libc::EOPNOTSUPP) && done == 0;
        let id = self.threaded(pid).filter(|id| self.groups.get(id).is_some_and(|group| !group.ending));
        let mut back = original.restore(regs);
        match id {
            Some(id) if again || refused => {
                let tried = Tried::Write { original, done: written, as_is: refused };
                self.tries.insert(pid, Try { argument: 0, passed: 0, deadline: None, tried });
                back.rip -= 2;
                back.rax = original.number;
                if set_registers(pid, &back).is_err() {
                    return;
                }
                if refused {
                    return; // It makes the call again at once, as it is.
                }
                self.groups.get_mut(&id).expect("threaded").wait(pid, Wait::Io, None);
                self.next_turn(id);
            }
            _ => {
                self.tries.remove(&pid);
                back.rax = if written > 0 { written } else { result as u64 };
                let _ = set_registers(pid, &back);
                if let Some(id) = id {
                    self.count_call(id);
                }
            }
        }
    }

    /// A thread's wait for a child (`wait4`, `waitid`) would block in the
    /// kernel with its process's turn held, and the child may be waiting
    /// for another thread of it (one that feeds its input, say, while this
    /// one waits for it to end): it runs with `WNOHANG`, and `after_try`
    /// looks at what it found, as for a wait for descriptors. One that
    /// does not wait (`WNOHANG` already), or a `waitid` without a
    /// `siginfo_t` (a wait that found nothing cannot be told from one that
    /// did), runs as it is and counts against the slice.
    fn try_wait_for_child(&mut self, pid: Tid, id: Tid, number: i64, mut regs: libc::user_regs_struct) {
        let (argument, info, usage) = if number == libc::SYS_wait4 { (2, 0, regs.r10) } else { (3, regs.rdx, regs.r8) };
        let passed = argument_value(&regs, argument);
        let no_hang = libc::WNOHANG as u64;
        if passed & no_hang != 0 || (number == libc::SYS_waitid && info == 0) {
            return self.run_in_turn(pid, id);
        }
        set_argument(&mut regs, argument, passed | no_hang);
        if set_registers(pid, &regs).is_ok() {
            let tried = Tried::Child { info, usage };
            self.tries.insert(pid, Try { argument, passed, deadline: None, tried });
            self.pending.insert(pid, Pending::Try);
        }
        self.proceed(pid, 0);
    }

    /// At the clone event: `child` is a new thread of `parent`'s process;
    /// it runs at its turn. Its group, or `None` (and the run refused)
    /// past the most threads a process may have.
    pub(super) fn thread_created(&mut self, parent: Tid, child: Tid, clear_tid: Option<u64>) -> Option<Tid> {
        let group = self.threaded(parent)?;
        if self.groups.get_mut(&group).is_some_and(|g| g.add(child, clear_tid)) {
            return Some(group);
        }
        let call = format!("clone (more than {} threads in one process)", crate::threads::THREADS_MAX);
        self.end(Ending::Refused { source: SOURCE, call }, Some(parent));
        None
    }

    /// Resume `pid` from a stop, unless it is a thread whose turn it is
    /// not: then it stays stopped until its turn comes.
    pub(super) fn proceed(&mut self, pid: Tid, signal: i32) {
        if let Some(group) = self.threaded(pid).and_then(|group| self.groups.get(&group)) {
            if group.scheduled(pid) && !group.runs(pid) && !group.ending {
                self.held.insert(pid, signal);
                return;
            }
        }
        self.go_on(pid, signal);
    }

    /// At the seccomp stop of a traced call in a threaded process, whose
    /// turn it is: true if the schedule handled it (a futex, a sleep, a
    /// yield, a wait for descriptors, a thread's exit); the caller then
    /// resumes the thread if it may still run. Any other call counts
    /// against the slice and is handled as in any process.
    pub(super) fn on_thread_call(&mut self, pid: Tid, number: i64, regs: libc::user_regs_struct) -> bool {
        let Some(id) = self.threaded(pid) else { return false };
        let group = self.groups.get_mut(&id).expect("threaded");
        if group.ending || !group.runs(pid) {
            return false;
        }
        match number {
            libc::SYS_futex => self.futex(pid, id, &regs),
            libc::SYS_nanosleep => self.thread_sleep(pid, id, regs, regs.rdi, libc::CLOCK_MONOTONIC as u64, false),
            libc::SYS_clock_nanosleep => {
                let absolute = regs.rsi & libc::TIMER_ABSTIME as u64 != 0;
                self.thread_sleep(pid, id, regs, regs.rdx, regs.rdi, absolute);
            }
            // The call itself then runs, at the thread's next turn.
            libc::SYS_sched_yield => self.next_turn(id),
            libc::SYS_exit => self.thread_exit(pid, id),
            // The signal is sent as the call runs; a waiting target of this
            // process stops waiting first, as in the kernel.
            libc::SYS_tgkill | libc::SYS_tkill => {
                let (target, signal) =
                    if number == libc::SYS_tgkill { (regs.rsi, regs.rdx) } else { (regs.rdi, regs.rsi) };
                self.interrupt_wait(id, target as Tid, signal as i32);
                return false;
            }
            number => match waits_for_descriptors(number) {
                Some(timeout) => self.try_without_waiting(pid, id, regs, timeout),
                None => {
                    self.count_call(id);
                    return false;
                }
            },
        }
        true
    }

    /// The thread whose turn it was waits, yields, used its slice or
    /// left: the next one runs (waiters whose time came wake first). If
    /// every thread waits for another, the run is refused.
    fn next_turn(&mut self, id: Tid) {
        // Out of the map while it decides, which may ask about the others.
        let Some(mut group) = self.groups.remove(&id) else { return };
        let ending = group.ending;
        let turn = if ending { None } else { group.schedule(-i64::from(libc::ETIMEDOUT), || self.others_quiet(id)) };
        self.groups.insert(id, group);
        if ending {
            return;
        }
        let Some(turn) = turn else {
            let call = "every thread waits for another (a deadlock)".to_owned();
            return self.end(Ending::Refused { source: SOURCE, call }, None);
        };
        let alone = self.groups.get(&id).is_some_and(|group| group.len() == 1);
        let next = turn.next;
        self.answer_woken(turn.woken);
        if turn.stalled {
            std::thread::sleep(STALLED_PAUSE);
        }
        if alone {
            self.dissolve(id);
        }
        if let Some(signal) = self.held.remove(&next) {
            self.go_on(next, signal);
        }
    }

    /// Whether no tracee outside group `id` has run since the last time
    /// this was asked for it (false the first time): each sleeps in the
    /// kernel, has ended, or is held here (a thread waiting for its turn;
    /// the threads of another process all of whose threads wait count as
    /// held), with the same CPU time as then. A tracee stopped at a stop
    /// not yet handled, or running, is busy. A vain try is then not one
    /// another process was about to answer; one that sleeps in the kernel
    /// with a real timeout is not seen coming.
    fn others_quiet(&mut self, id: Tid) -> bool {
        let mut seen = Vec::new();
        for (&tid, process) in &self.processes {
            let held_group = process.group.and_then(|other| self.groups.get(&other)).is_some_and(Group::all_wait);
            if process.group == Some(id) || held_group {
                continue;
            }
            let state = run_state(tid);
            let quiet = match state {
                None => true,
                Some((state, _)) => matches!(state, 'S' | 'Z' | 'X') || state == 't' && self.held.contains_key(&tid),
            };
            if !quiet {
                self.quiet_seen.remove(&id);
                return false;
            }
            seen.push((tid, state.map_or(0, |(_, cpu_ns)| cpu_ns)));
        }
        seen.sort_unstable();
        if self.quiet_seen.get(&id) == Some(&seen) {
            self.quiet_seen.remove(&id);
            return true;
        }
        self.quiet_seen.insert(id, seen);
        false
    }

    /// Group `id` is no more: what the supervisor kept for it goes too.
    fn drop_group(&mut self, id: Tid) -> Option<Group> {
        self.quiet_seen.remove(&id);
        self.pidfds.remove(&id);
        self.groups.remove(&id)
    }

    /// One thread is left: the process is an ordinary one again.
    fn dissolve(&mut self, id: Tid) {
        let Some(group) = self.drop_group(id) else { return };
        for (tid, process) in self.processes.iter_mut().filter(|(_, process)| process.group == Some(id)) {
            process.group = None;
            process.clock_ns = group.clock_ns;
            // A thread about to try again waits in the kernel from now on.
            self.tries.remove(tid);
        }
    }

    /// The process exec'd (by thread `former`): its other threads are
    /// gone, and it is an ordinary process. An exec by a thread other than
    /// the first is
    /// refused (the kernel gives the exec'ing thread the first one's pid,
    /// which the schedule does not follow).
    pub(super) fn thread_exec(&mut self, pid: Tid, former: Tid) {
        let Some(id) = self.threaded(pid) else { return };
        self.dissolve(id);
        if former != pid {
            let call = "execve from a thread other than the process's first".to_owned();
            self.end(Ending::Refused { source: SOURCE, call }, Some(pid));
        }
    }

    /// A thread's `exit`: it leaves the schedule, and its turn passes once
    /// the kernel has cleared its word to clear (a joiner must not see the
    /// word before that, or it would see it at a moment the host chose).
    /// Its exit is reported then; the first thread's only when the whole
    /// process ends, so for it the supervisor waits until it is a zombie.
    fn thread_exit(&mut self, pid: Tid, id: Tid) {
        let group = self.groups.get_mut(&id).expect("threaded");
        let clear_tid = group.leave(pid);
        if pid != group.leader {
            self.exiting.insert(pid, (id, clear_tid));
            return;
        }
        super::resume(pid, libc::PTRACE_SYSCALL, 0);
        if !wait_until_zombie(pid) {
            return self.lose(format!("thread {pid} did not end after its exit"));
        }
        self.thread_gone(id, clear_tid);
    }

    /// A thread ended (its exit was reported). If it had left by `exit`,
    /// its joiner may wake and the next thread runs; if it had not, it
    /// died with its process, which is ending.
    pub(super) fn thread_exited(&mut self, pid: Tid, id: Option<Tid>) {
        self.held.remove(&pid);
        if let Some((id, clear_tid)) = self.exiting.remove(&pid) {
            return self.thread_gone(id, clear_tid);
        }
        let Some(id) = id else { return };
        let Some(group) = self.groups.get_mut(&id) else { return };
        if group.scheduled(pid) {
            group.ending = true;
            group.leave(pid);
        }
        if group.len() == 0 {
            self.drop_group(id);
        }
    }

    /// After a thread's end: wake one waiter on its cleared word, as the
    /// kernel does, and pass the turn.
    fn thread_gone(&mut self, id: Tid, clear_tid: Option<u64>) {
        let Some(group) = self.groups.get_mut(&id) else { return };
        if group.len() == 0 {
            self.drop_group(id);
            return;
        }
        if let Some(address) = clear_tid {
            let woken = group.wake(address, 1, u32::MAX);
            self.answer_woken(woken);
        }
        self.next_turn(id);
    }

    /// Threads that stop waiting get their calls' answers (they are
    /// stopped at those calls' entries).
    fn answer_woken(&mut self, woken: Vec<Woken>) {
        for (tid, result, wait) in woken {
            let Ok(mut regs) = registers(tid) else { continue };
            if wait != Wait::Io {
                // Stopped at the seccomp stop of its wait or sleep.
                self.answer_wait(tid, regs, result);
                continue;
            }
            // Stopped at the exit of its last try (or, a blocking call, at
            // its seccomp stop, skipped), set to try again: instead the
            // call returns (its timeout came, nothing ready:
            // what its try returns when nothing was, `-ETIMEDOUT` for a
            // futex; or it was interrupted).
            let result = match self.tries.remove(&tid) {
                // An interrupted write returns what it wrote, if anything.
                Some(Try { tried: Tried::Write { done, .. }, .. }) if done > 0 => done as i64,
                Some(attempt) if result == 0 => attempt.tried.idle(),
                _ => result,
            };
            // A blocking call that was skipped holds its number in rax.
            let number = if regs.orig_rax == u64::MAX { regs.rax } else { regs.orig_rax };
            regs.rip += 2;
            regs.rax = result as u64;
            let name = syscalls::name(number as i64).unwrap_or("unknown").to_owned();
            if set_registers(tid, &regs).is_ok() {
                self.event(Record::Call { name, result, data: Vec::new() }, tid);
            }
        }
    }

    /// A thread's wait for descriptors (`poll`, `select`, `epoll_wait`
    /// and kin) runs with a zero timeout; `after_try` looks at what it
    /// found. One that does not wait (a zero timeout already, or a
    /// timeout it cannot read) runs as it is.
    fn try_without_waiting(&mut self, pid: Tid, id: Tid, mut regs: libc::user_regs_struct, timeout: Timeout) {
        let (Timeout::Millis(argument) | Timeout::Spec(argument) | Timeout::Val(argument)) = timeout;
        let passed = argument_value(&regs, argument);
        let waits_ns = match timeout {
            Timeout::Millis(_) => u64::try_from(passed as i32).ok().map(|ms| ms * 1_000_000),
            _ if passed == 0 => None,
            Timeout::Spec(_) | Timeout::Val(_) => {
                let unit_ns = if matches!(timeout, Timeout::Val(_)) { 1_000 } else { 1 };
                // Unreadable or invalid: the call runs as it is, and the
                // kernel says so.
                let Ok(ns) = super::read_time(pid, passed, unit_ns) else { return };
                Some(ns)
            }
        };
        if waits_ns == Some(0) {
            return;
        }
        let now = self.groups.get(&id).map_or(0, |group| group.clock_ns);
        let deadline = match self.tries.get(&pid) {
            Some(earlier) => earlier.deadline,
            None => waits_ns.map(|ns| now.saturating_add(ns)),
        };
        let zero = match timeout {
            Timeout::Millis(_) => 0,
            Timeout::Spec(_) | Timeout::Val(_) => {
                let Some(at) = zero_time(pid, &regs) else { return };
                at
            }
        };
        set_argument(&mut regs, argument, zero);
        if set_registers(pid, &regs).is_ok() {
            self.tries.insert(pid, Try { argument, passed, deadline, tried: Tried::Descriptors });
            self.pending.insert(pid, Pending::Try);
        }
    }

    /// At the exit of a try: the arguments back as the program passed
    /// them; if something was ready (or failed) the call returns that; if
    /// nothing was, the thread waits (`Wait::Io`), set to make the call
    /// again at its next turn, unless its time is up.
    pub(super) fn after_try(&mut self, pid: Tid, mut regs: libc::user_regs_struct) {
        let Some(attempt) = self.tries.get(&pid).copied() else { return };
        if let Tried::Write { original, done, .. } = attempt.tried {
            return self.after_write(pid, regs, original, done);
        }
        set_argument(&mut regs, attempt.argument, attempt.passed);
        let id = self.threaded(pid);
        let now = id.and_then(|id| self.groups.get(&id)).map(|group| (group.clock_ns, group.ending));
        let found_nothing = regs.rax as i64 == attempt.tried.idle()
            && match attempt.tried {
                // `waitid` found a child if its `siginfo_t` says `SIGCHLD`.
                Tried::Child { info, .. } if info != 0 => read_bytes(pid, info, 4).is_some_and(|signo| signo == [0; 4]),
                _ => true,
            };
        let waits = match now {
            Some((clock_ns, false)) => found_nothing && attempt.deadline.is_none_or(|deadline| deadline > clock_ns),
            _ => false,
        };
        if !waits {
            self.tries.remove(&pid);
            let _ = set_registers(pid, &regs);
            if let Tried::Child { info, usage } = attempt.tried {
                if usage != 0 && !found_nothing && regs.rax as i64 >= 0 {
                    let name = syscalls::name(regs.orig_rax as i64).unwrap_or("unknown");
                    self.zero_usage(pid, name, regs.rax as i64, usage, info);
                }
                return;
            }
            // A wait for descriptors that found some ready passes the turn
            // on, as a yield does: another thread of the process may be
            // the one to take what is ready (`multiprocessing.Pool`'s
            // parent watches its results pipe in one thread and reads it in
            // another; the watcher would otherwise find it ready again and
            // again for a whole slice, and for as many slices as results
            // came meanwhile).
            if matches!(attempt.tried, Tried::Descriptors) && regs.rax as i64 > 0 {
                if let Some(id) = id {
                    self.next_turn(id);
                }
            }
            return;
        }
        // Back to the `syscall` instruction (2 bytes), with the call's
        // number, as the kernel restarts a call.
        regs.rip -= 2;
        regs.rax = regs.orig_rax;
        if set_registers(pid, &regs).is_err() {
            return;
        }
        let id = id.expect("threaded");
        self.groups.get_mut(&id).expect("threaded").wait(pid, Wait::Io, attempt.deadline);
        self.next_turn(id);
    }

    /// A thread signals thread `target`: if the target waits here (a
    /// futex, a sleep, a wait for descriptors) and would take the signal
    /// (it neither blocks nor ignores it), its call returns `EINTR` (a
    /// relative sleep's remaining time written back, as the kernel does),
    /// so that the signal is delivered when it next runs. Without this it
    /// would stay waiting with the signal pending, which a program that
    /// signals a waiting thread to wake it (`pthread_cancel`, a runtime's
    /// preemption) would wait on for ever.
    fn interrupt_wait(&mut self, id: Tid, target: Tid, signal: i32) {
        if !(1..=64).contains(&signal) {
            return;
        }
        // The workload names threads by their ids in its PID namespace.
        let Some(group) = self.groups.get_mut(&id) else { return };
        let waiting = group.waiters().into_iter().find(|&tid| namespace_tid(tid) == Some(target));
        let Some(target) = waiting.filter(|&tid| takes_signal(tid, signal)) else { return };
        let Some((woken, left)) = group.interrupt(target, -i64::from(libc::EINTR)) else { return };
        if let (Wait::Sleep, Some(left), Ok(regs)) = (woken.2, left, registers(target)) {
            // nanosleep(request, remaining); clock_nanosleep(clock, flags,
            // request, remaining), which writes it only when relative.
            let remaining = match regs.orig_rax as i64 {
                libc::SYS_nanosleep => Some(regs.rsi),
                libc::SYS_clock_nanosleep if regs.rsi & libc::TIMER_ABSTIME as u64 == 0 => Some(regs.r10),
                _ => None,
            };
            if let Some(address) = remaining.filter(|&address| address != 0) {
                let _ = write_memory(target, address, &super::timespec(left));
            }
        }
        self.answer_woken(vec![woken]);
    }

    /// Answer the waiting or sleeping call thread `pid` is stopped at the
    /// seccomp stop of (the thread is not resumed here).
    fn answer_wait(&mut self, pid: Tid, regs: libc::user_regs_struct, result: i64) {
        let name = syscalls::name(regs.orig_rax as i64).unwrap_or("unknown");
        self.answer_call(pid, regs, name, result);
    }

    /// `futex`, for the threads of one process: waits and wakes are the
    /// supervisor's, so which waiter a wake finds follows the schedule.
    fn futex(&mut self, pid: Tid, id: Tid, regs: &libc::user_regs_struct) {
        self.written.clear();
        let (address, op, value) = (regs.rdi, regs.rsi as i32, regs.rdx as u32);
        let command = op & !(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
        let realtime = op & libc::FUTEX_CLOCK_REALTIME != 0;
        // A futex without the private flag may be in memory another
        // process shares (a POSIX semaphore in /dev/shm, a process-shared
        // mutex): its waiters and wakers there wait in the kernel.
        let shared = op & libc::FUTEX_PRIVATE_FLAG == 0;
        let all = u32::MAX;
        let einval = -i64::from(libc::EINVAL);
        let result = match command {
            libc::FUTEX_WAIT | libc::FUTEX_WAIT_BITSET => {
                let bitset = if command == libc::FUTEX_WAIT { all } else { regs.r9 as u32 };
                match read_u32(pid, address) {
                    _ if bitset == 0 => einval,
                    None => -i64::from(libc::EFAULT),
                    // A shared word may have changed a moment ago in
                    // another process: the try below finds out, unrecorded,
                    // so the witness does not hold that moment.
                    Some(word) if word != value && !shared => -i64::from(libc::EAGAIN),
                    Some(_) => {
                        // FUTEX_WAIT's timeout is relative (monotonic);
                        // FUTEX_WAIT_BITSET's an absolute time.
                        let absolute = command == libc::FUTEX_WAIT_BITSET;
                        let clock = if realtime { libc::CLOCK_REALTIME } else { libc::CLOCK_MONOTONIC };
                        match self.deadline(pid, id, regs.r10, clock as u64, absolute) {
                            Err(errno) => errno,
                            Ok(deadline) if shared => return self.try_futex_wait(pid, *regs, deadline),
                            Ok(deadline) => {
                                let group = self.groups.get_mut(&id).expect("threaded");
                                group.wait(pid, Wait::Futex { address, bitset }, deadline);
                                return self.next_turn(id);
                            }
                        }
                    }
                }
            }
            libc::FUTEX_WAKE | libc::FUTEX_WAKE_BITSET => {
                let bitset = if command == libc::FUTEX_WAKE { all } else { regs.r9 as u32 };
                if bitset == 0 {
                    einval
                } else {
                    let woken = self.groups.get_mut(&id).expect("threaded").wake(address, value, bitset);
                    let count = woken.len() as i64;
                    self.answer_woken(woken);
                    if shared {
                        return self.wake_in_kernel_too(pid, count);
                    }
                    count
                }
            }
            libc::FUTEX_REQUEUE | libc::FUTEX_CMP_REQUEUE => {
                let compare = command == libc::FUTEX_CMP_REQUEUE;
                match read_u32(pid, address) {
                    None if compare => -i64::from(libc::EFAULT),
                    Some(word) if compare && word != regs.r9 as u32 => -i64::from(libc::EAGAIN),
                    _ => {
                        let group = self.groups.get_mut(&id).expect("threaded");
                        let (woken, moved) = group.requeue(address, regs.r8, value, regs.r10 as u32);
                        let count = woken.len() as i64 + if compare { i64::from(moved) } else { 0 };
                        self.answer_woken(woken);
                        count
                    }
                }
            }
            libc::FUTEX_WAKE_OP => self.futex_wake_op(pid, id, regs),
            other => {
                let call = format!("futex operation {other}");
                return self.end(Ending::Refused { source: SOURCE, call }, Some(pid));
            }
        };
        self.answer_wait(pid, *regs, result);
    }

    /// A shared futex's wake: the call runs in the kernel too, for waiters
    /// in other processes, and returns how many waiters of its own process
    /// it woke here (this process's waits on a shared word are tries,
    /// which see the changed word at their next turn, so usually none).
    /// What the kernel's count would add depends on where the other
    /// processes are, which a wake's caller has no use for.
    fn wake_in_kernel_too(&mut self, pid: Tid, woken_here: i64) {
        if self.record_answer(pid, "futex", woken_here) {
            self.pending.insert(pid, Pending::Answered { result: woken_here });
        }
    }

    /// A shared futex's wait: another process may be the one to wake it,
    /// in the kernel, where this thread must not wait (the schedule would
    /// stop). So it is tried as a wait for descriptors is: the call runs
    /// with a zero timeout (it returns at once: `EAGAIN` if the word has
    /// changed, else `ETIMEDOUT`), and until the word changes or its
    /// deadline passes the thread waits here and tries again at its
    /// turns. A return for a changed word is a wake as far as the caller
    /// can tell, which rechecks its word after any wake.
    fn try_futex_wait(&mut self, pid: Tid, mut regs: libc::user_regs_struct, deadline: Option<u64>) {
        const TIMEOUT: usize = 3;
        let deadline = self.tries.get(&pid).map_or(deadline, |earlier| earlier.deadline);
        let Some(zero) = zero_time(pid, &regs) else {
            return self.answer_wait(pid, regs, -i64::from(libc::EFAULT));
        };
        let passed = argument_value(&regs, TIMEOUT);
        set_argument(&mut regs, TIMEOUT, zero);
        if set_registers(pid, &regs).is_ok() {
            self.tries.insert(pid, Try { argument: TIMEOUT, passed, deadline, tried: Tried::Futex });
            self.pending.insert(pid, Pending::Try);
        }
    }

    /// `FUTEX_WAKE_OP`: change the second word, wake waiters on the first,
    /// and on the second if its old value passes the comparison.
    fn futex_wake_op(&mut self, pid: Tid, id: Tid, regs: &libc::user_regs_struct) -> i64 {
        let (address, count, second, count2, encoded) =
            (regs.rdi, regs.rdx as u32, regs.r8, regs.r10 as u32, regs.r9 as u32);
        let sign_extend_12 = |bits: u32| ((bits << 20) as i32) >> 20;
        let operation = encoded >> 28;
        let comparison = (encoded >> 24) & 0xf;
        let mut oparg = sign_extend_12((encoded >> 12) & 0xfff);
        let cmparg = sign_extend_12(encoded & 0xfff);
        if operation & FUTEX_OP_OPARG_SHIFT != 0 {
            // The kernel masks an out-of-range shift the same way.
            oparg = 1 << (oparg & 31);
        }
        let Some(old) = read_u32(pid, second).map(|word| word as i32) else { return -i64::from(libc::EFAULT) };
        let new = match operation & 7 {
            0 => oparg,
            1 => old.wrapping_add(oparg),
            2 => old | oparg,
            3 => old & !oparg,
            4 => old ^ oparg,
            _ => return -i64::from(libc::ENOSYS),
        };
        let passes = match comparison {
            0 => old == cmparg,
            1 => old != cmparg,
            2 => old < cmparg,
            3 => old <= cmparg,
            4 => old > cmparg,
            5 => old >= cmparg,
            _ => return -i64::from(libc::ENOSYS),
        };
        if let Err(errno) = write_memory(pid, second, &new.to_ne_bytes()) {
            return errno;
        }
        let group = self.groups.get_mut(&id).expect("threaded");
        let mut woken = group.wake(address, count, u32::MAX);
        if passes {
            woken.extend(group.wake(second, count2, u32::MAX));
        }
        let total = woken.len() as i64;
        self.answer_woken(woken);
        total
    }

    /// A thread's sleep: it waits until the process's clock reaches the
    /// deadline (at once, if no other thread can run meanwhile).
    fn thread_sleep(
        &mut self,
        pid: Tid,
        id: Tid,
        regs: libc::user_regs_struct,
        request: u64,
        clock: u64,
        absolute: bool,
    ) {
        self.written.clear();
        let deadline = if super::known_clock(clock) {
            self.deadline(pid, id, request, clock, absolute)
        } else {
            Err(-i64::from(libc::EINVAL))
        };
        match deadline {
            Ok(deadline) => {
                let group = self.groups.get_mut(&id).expect("threaded");
                group.wait(pid, Wait::Sleep, deadline.or(Some(group.clock_ns)));
                self.next_turn(id);
            }
            Err(errno) => self.answer_wait(pid, regs, errno),
        }
    }

    /// The logical time at which a wait with the timeout at `address` ends
    /// (`None` without one), or `-errno`.
    fn deadline(&self, pid: Tid, id: Tid, address: u64, clock: u64, absolute: bool) -> Result<Option<u64>, i64> {
        if address == 0 {
            return Ok(None);
        }
        let ns = super::read_timespec(pid, address)?;
        let now = self.groups.get(&id).map_or(0, |group| group.clock_ns);
        Ok(Some(if absolute { super::logical_ns(clock, ns) } else { now.saturating_add(ns) }))
    }
}

/// Thread `tid`'s scheduler state (`R`, `S`, `t`, ... from
/// `/proc/<tid>/stat`) and the CPU time it has had, in nanoseconds
/// (`/proc/<tid>/schedstat`; 0 without it). `None` once it is gone.
fn run_state(tid: Tid) -> Option<(char, u64)> {
    let state = scheduler_state(tid)?;
    let schedstat = std::fs::read_to_string(format!("/proc/{tid}/schedstat")).unwrap_or_default();
    let cpu_ns = schedstat.split_whitespace().next().and_then(|ns| ns.parse().ok()).unwrap_or(0);
    Some((state, cpu_ns))
}

/// Thread `tid`'s scheduler state (`/proc/<tid>/stat`), `None` once it
/// is gone.
fn scheduler_state(tid: Tid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{tid}/stat")).ok()?;
    // The state follows the command name's closing parenthesis.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Thread `tid`'s status (`/proc/<tid>/status`).
fn status(tid: Tid) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{tid}/status")).ok()
}

/// The value of `field` (`"Tgid:"`, say) in a status.
fn field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status.lines().find_map(|line| line.strip_prefix(field)).map(str::trim)
}

/// Thread `tid`'s id in its own PID namespace (the last of `NSpid`).
fn namespace_tid(tid: Tid) -> Option<Tid> {
    field(&status(tid)?, "NSpid:")?.split_whitespace().last()?.parse().ok()
}

/// Whether thread `tid` would take `signal` now: not blocked, not
/// ignored (`SigBlk`, `SigIgn` in its status, hexadecimal masks).
fn takes_signal(tid: Tid, signal: i32) -> bool {
    let Some(status) = status(tid) else { return false };
    let mask = |name| field(&status, name).and_then(|value| u64::from_str_radix(value, 16).ok());
    let (Some(blocked), Some(ignored)) = (mask("SigBlk:"), mask("SigIgn:")) else { return false };
    (blocked | ignored) & (1u64 << (signal - 1)) == 0
}

/// Where a call that waits for descriptors has its timeout, if it is one.
fn waits_for_descriptors(number: i64) -> Option<Timeout> {
    Some(match number {
        libc::SYS_poll => Timeout::Millis(2),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => Timeout::Millis(3),
        libc::SYS_ppoll => Timeout::Spec(2),
        libc::SYS_pselect6 => Timeout::Spec(4),
        libc::SYS_epoll_pwait2 => Timeout::Spec(3),
        libc::SYS_select => Timeout::Val(4),
        _ => return None,
    })
}

/// Whether the call (a read, a receive, an accept) would block now: its
/// descriptor, looked at through a copy (`pidfd_getfd`, from the process
/// `pidfd` refers to), has nothing to read and blocks. A descriptor that
/// cannot be copied is not waited for: the call runs and the kernel
/// answers it. Something another process reads first may still make a
/// call that found its descriptor ready block, holding the turn.
fn would_block(pidfd: &OwnedFd, number: i64, regs: &libc::user_regs_struct) -> bool {
    let flags = match number {
        libc::SYS_recvfrom => regs.r10,
        libc::SYS_recvmsg => regs.rdx,
        _ => 0,
    };
    if flags & libc::MSG_DONTWAIT as u64 != 0 {
        return false;
    }
    let Ok(fd) = i32::try_from(regs.rdi) else { return false };
    let Ok(file) = super::descriptor_of(pidfd, fd) else { return false };
    if poll_now(&file, libc::POLLIN).is_none_or(|revents| revents != 0) {
        return false; // Ready (a regular file always is), or failed.
    }
    // SAFETY: fcntl on a descriptor this thread owns.
    let status = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    status >= 0 && status & libc::O_NONBLOCK == 0
}

/// How much room a descriptor has for a write of `count` bytes.
enum Room {
    /// Enough: the write cannot block (or is not a pipe's or socket's, or
    /// the descriptor cannot be looked at: the kernel answers it).
    Enough,
    /// Some, perhaps not all.
    Some,
    /// None: the write would block at once.
    None,
}

/// Look at descriptor `fd` of the process `pidfd` refers to, through a
/// copy, for a write of `count` bytes. A write of at most `PIPE_BUF`
/// bytes to a pipe that has room cannot block: the kernel has a free
/// page for it.
fn room_to_write(pidfd: &OwnedFd, fd: i32, count: u64) -> Room {
    let Ok(file) = super::descriptor_of(pidfd, fd) else { return Room::Enough };
    // SAFETY: fstat of a descriptor this thread owns into a zeroed struct,
    // made directly: see `poll_now`.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::syscall(libc::SYS_fstat, file.as_raw_fd(), &mut stat) } != 0 {
        return Room::Enough;
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return Room::Enough;
    }
    // SAFETY: fcntl on a descriptor this thread owns.
    let status = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if status < 0 || status & libc::O_NONBLOCK != 0 {
        return Room::Enough;
    }
    match poll_now(&file, libc::POLLOUT) {
        Some(0) => Room::None,
        // No reader (the write fails with EPIPE), or failed.
        None => Room::Enough,
        Some(revents) if revents & libc::POLLOUT == 0 => Room::Enough,
        Some(_) if kind == libc::S_IFIFO && count <= libc::PIPE_BUF as u64 => Room::Enough,
        Some(_) => Room::Some,
    }
}

/// The events of `events` that `file` has now (0: none yet), or `None`
/// if the poll failed.
///
/// Made as a system call, not through libc's `poll`, like the `fstat`
/// above: the supervising thread runs with RDTSC faulting on (see
/// `TraceeSettings`), and a library preloaded into the cage's own process
/// may interpose libc's functions and read the clock inside them.
/// libfaketime, which the determinism tests preload to give the host
/// another time, reads it in its `fstat`, and the supervisor died of
/// SIGSEGV at the first write it looked at.
fn poll_now(file: &OwnedFd, events: libc::c_short) -> Option<libc::c_short> {
    let mut poll = libc::pollfd { fd: file.as_raw_fd(), events, revents: 0 };
    // SAFETY: poll of one descriptor this thread owns, without waiting,
    // into a pollfd on this stack.
    let ready = unsafe { libc::syscall(libc::SYS_poll, &mut poll, 1, 0) };
    (ready >= 0).then_some(if ready == 0 { 0 } else { poll.revents })
}

/// Where `length` bytes go below the thread's stack, past its red zone,
/// 16-byte aligned: the place for what the supervisor has it read (a
/// filter, a try's zero timeout or `iovec`s). `None` if the stack pointer
/// is too low for them: a program may make a call with any value in it.
fn below_stack(regs: &libc::user_regs_struct, length: u64) -> Option<u64> {
    regs.rsp.checked_sub(BELOW_STACK + length).map(|at| at & !15)
}

/// A zero `timespec` (or `timeval`) of the thread's own, written below its
/// stack, for a try: its address, or `None` if it could not be written.
fn zero_time(pid: Tid, regs: &libc::user_regs_struct) -> Option<u64> {
    let at = below_stack(regs, 16)?;
    write_memory(pid, at, &[0u8; 16]).ok().map(|()| at)
}

fn argument_value(regs: &libc::user_regs_struct, index: usize) -> u64 {
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9][index]
}

fn set_argument(regs: &mut libc::user_regs_struct, index: usize, value: u64) {
    let slot = match index {
        0 => &mut regs.rdi,
        1 => &mut regs.rsi,
        2 => &mut regs.rdx,
        3 => &mut regs.r10,
        4 => &mut regs.r8,
        _ => &mut regs.r9,
    };
    *slot = value;
}

/// The pid of the process thread `tid` belongs to (`Tgid` in its status).
fn thread_group_leader(tid: Tid) -> Option<Tid> {
    field(&status(tid)?, "Tgid:")?.parse().ok()
}

/// Wait (up to a second) until thread `tid` has ended: a process's first
/// thread stays a zombie until its last one ends, and only then is its
/// exit reported.
fn wait_until_zombie(tid: Tid) -> bool {
    for _ in 0..10_000 {
        if matches!(scheduler_state(tid), Some('Z' | 'X') | None) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    false
}

fn read_u32(pid: Tid, address: u64) -> Option<u32> {
    read_bytes(pid, address, 4).map(|bytes| u32::from_ne_bytes(bytes.try_into().expect("4 bytes")))
}

#[cfg(test)]
mod tests {
    use super::after;

    /// What is left of a `writev` once some of it is written: whole pieces
    /// go, the one written in part starts where the writing stopped, and
    /// empty pieces are dropped (`pwritev2` would skip them anyway).
    #[test]
    fn what_is_left_of_pieces_once_some_bytes_are_written() {
        let pieces = [(0x1000, 10), (0x2000, 0), (0x3000, 5)];
        assert_eq!(after(&pieces, 0), vec![(0x1000, 10), (0x3000, 5)]);
        assert_eq!(after(&pieces, 4), vec![(0x1004, 6), (0x3000, 5)]);
        assert_eq!(after(&pieces, 10), vec![(0x3000, 5)]);
        assert_eq!(after(&pieces, 12), vec![(0x3002, 3)]);
        assert_eq!(after(&pieces, 15), Vec::new());
        assert_eq!(after(&pieces, 99), Vec::new());
    }
}
