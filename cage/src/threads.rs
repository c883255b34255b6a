//! Threads, serialised: a deterministic schedule for the threads of one
//! process.
//!
//! Threads share memory, so what one sees depends on where the others
//! were when it looked. The cage lets one thread of a process run at a
//! time and moves it on only at the entry of a system call, by a rule that
//! depends on nothing but the threads' own calls; between two calls a
//! thread's work is then fixed by the memory it started from. The rule:
//!
//! - the running thread keeps running until it waits (a futex wait or a
//!   sleep), yields (`sched_yield`), ends, or has made [`SLICE_CALLS`]
//!   calls; then the next thread in creation order that is not waiting
//!   runs (round robin);
//! - futexes are the supervisor's: a wait that would block becomes a
//!   waiter here and a wake wakes waiters here, oldest first, so no
//!   thread ever blocks inside the kernel's futex code waiting for
//!   another (the kernel would then choose when it wakes); a *shared*
//!   futex (no `FUTEX_PRIVATE_FLAG`), which another process may wake, is
//!   waited on like a descriptor (`Wait::Io`, tried again at each turn
//!   until its word changes), and its wakes reach the kernel too;
//! - a wait for descriptors (`poll`, `select`, `epoll_wait` and their
//!   kin) is tried without waiting; if nothing is ready the thread waits
//!   here (`Wait::Io`) and tries again once others have had their turns,
//!   so a thread of the same process can make it ready (an event loop's
//!   other threads, which write to its wake-up descriptor);
//! - sleeps and all these timeouts run on the process's logical clock,
//!   which its threads share: when no thread can run (and the waits for
//!   descriptors have each been tried once more in vain), the clock moves
//!   to the earliest deadline and that waiter wakes (past waits for
//!   descriptors only once no other process of the run has run for a
//!   whole round of tries: one of them may be what a try waits for, and
//!   the clock must not move by how long it takes). When no thread can
//!   run and none has a deadline: with only futex waits and sleeps, every
//!   thread waits for another, a deadlock, and the run is refused
//!   (deterministically: the same schedule deadlocks on every run); with
//!   waits for descriptors, only another process can help, and the
//!   supervisor waits a moment between rounds of tries (*stalled*).
//!
//! Turns move only at calls the supervisor sees (the filter sends it the
//! waits, wakes, sleeps and yields, and the calls it answers anyway), so
//! a slice counts those: a thread making only other calls keeps its turn
//! until it makes one.
//!
//! A thread that spins on memory without system calls while another holds
//! what it waits for never lets the other run: such a run ends at its wall
//! or CPU limit (a failure, the same on every host), as a spinning single
//! process does. Blocking reads, receives, accepts, writes, sends and
//! waits for a child are tried like waits for descriptors (the supervisor
//! stacks a filter that sends them to it: `supervisor/threaded.rs`). Any
//! other blocking call (`sendmsg` to a full socket, `connect`) blocks with
//! the turn held: fine when another process will answer it,
//! a deadlock (ended by the wall limit) when only a thread of its own
//! process could. What another process writes, and when, is outside the
//! schedule (as between processes generally).
//!
//! This module decides; the supervisor stops, answers and resumes the
//! threads accordingly. It never touches a process.

use std::collections::HashMap;

pub(crate) type Tid = libc::pid_t;

/// Calls the running thread makes before the next one gets its turn (a
/// time slice counted in system calls, so it is the same on every host).
pub(crate) const SLICE_CALLS: u32 = 1_000;
/// Most threads one process may have; past it, creating one is refused.
pub(crate) const THREADS_MAX: usize = 4_096;

/// What a waiting thread waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A futex word at this address, for wakes matching this bit set.
    Futex { address: u64, bitset: u32 },
    /// Only its deadline.
    Sleep,
    /// Descriptors: nothing was ready; it tries again at its next turn.
    Io,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    tid: Tid,
    wait: Wait,
    /// Logical nanoseconds at which it wakes anyway.
    deadline: Option<u64>,
}

/// A thread that stops waiting, what its call returns, and what it
/// waited for.
pub(crate) type Woken = (Tid, i64, Wait);

/// The next turn.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Turn {
    /// Whose it is (a thread waiting for descriptors: to try again).
    pub(crate) next: Tid,
    /// Waiters whose deadline came, with their calls' results.
    pub(crate) woken: Vec<Woken>,
    /// Every thread waits and only another process can help: the
    /// supervisor lets a moment pass before the next try.
    pub(crate) stalled: bool,
}

/// The schedule of one process's threads.
#[derive(Debug)]
pub(crate) struct Group {
    /// Scheduled threads in creation order (a thread leaves at its `exit`).
    threads: Vec<Tid>,
    /// The thread whose turn it is.
    running: Option<Tid>,
    /// Waiting threads, oldest first.
    waiting: Vec<Waiter>,
    /// Calls left in the running thread's slice.
    slice: u32,
    /// Turns in a row that ended in a vain try of a wait for descriptors.
    vain_tries: usize,
    /// Where each thread's `CLONE_CHILD_CLEARTID` word is: the kernel
    /// clears it and wakes one waiter when the thread ends.
    clear_tid: HashMap<Tid, u64>,
    /// The logical clock its threads share, in nanoseconds.
    pub(crate) clock_ns: u64,
    /// The whole process is ending (`exit_group`, a fatal signal, an
    /// exec): its threads die as the kernel kills them; nothing more is
    /// scheduled.
    pub(crate) ending: bool,
    /// The process's first thread (its pid): the one thread that may exec.
    pub(crate) leader: Tid,
}

impl Group {
    /// A group of one thread, `first`, which runs, of the process whose
    /// pid is `leader`.
    pub(crate) fn new(first: Tid, leader: Tid, clock_ns: u64) -> Self {
        Self {
            leader,
            threads: vec![first],
            running: Some(first),
            waiting: Vec::new(),
            slice: SLICE_CALLS,
            vain_tries: 0,
            clear_tid: HashMap::new(),
            clock_ns,
            ending: false,
        }
    }

    /// Whether `tid` may run now.
    pub(crate) fn runs(&self, tid: Tid) -> bool {
        self.running == Some(tid)
    }

    /// Whether every thread waits (none can run without a wake, a
    /// deadline or a successful try).
    pub(crate) fn all_wait(&self) -> bool {
        self.runnable(false).next().is_none()
    }

    /// Threads still scheduled.
    pub(crate) fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether `tid` is scheduled (it has not left).
    pub(crate) fn scheduled(&self, tid: Tid) -> bool {
        self.threads.contains(&tid)
    }

    /// A new thread, after every other in the round; `clear_tid` is its
    /// `CLONE_CHILD_CLEARTID` word, if it has one. False if the process
    /// has as many threads as it may.
    pub(crate) fn add(&mut self, tid: Tid, clear_tid: Option<u64>) -> bool {
        if self.threads.len() >= THREADS_MAX {
            return false;
        }
        self.threads.push(tid);
        if let Some(address) = clear_tid {
            self.clear_tid.insert(tid, address);
        }
        true
    }

    /// The running thread enters a call that does not wait: whether its
    /// slice is over (then [`Group::schedule`] picks who runs next).
    pub(crate) fn slice_over(&mut self) -> bool {
        self.slice = self.slice.saturating_sub(1);
        self.slice == 0
    }

    /// The running thread waits.
    pub(crate) fn wait(&mut self, tid: Tid, wait: Wait, deadline: Option<u64>) {
        self.vain_tries = if wait == Wait::Io { self.vain_tries + 1 } else { 0 };
        self.waiting.push(Waiter { tid, wait, deadline });
    }

    /// The threads waiting, oldest first.
    pub(crate) fn waiters(&self) -> Vec<Tid> {
        self.waiting.iter().map(|waiter| waiter.tid).collect()
    }

    /// A signal for waiting thread `tid`: it stops waiting, its call
    /// interrupted (`interrupted`, with the time its sleep had left); the
    /// kernel then delivers the signal as it goes on. `None` if it was not
    /// waiting.
    pub(crate) fn interrupt(&mut self, tid: Tid, interrupted: i64) -> Option<(Woken, Option<u64>)> {
        let at = self.waiting.iter().position(|waiter| waiter.tid == tid)?;
        let waiter = self.waiting.remove(at);
        let left = waiter.deadline.map(|deadline| deadline.saturating_sub(self.clock_ns));
        Some(((tid, interrupted, waiter.wait), left))
    }

    /// `tid` leaves the schedule: it called `exit` (its word to clear, if
    /// any, is returned: the caller clears it and wakes a waiter on it, as
    /// the kernel will), or it died.
    pub(crate) fn leave(&mut self, tid: Tid) -> Option<u64> {
        self.threads.retain(|&t| t != tid);
        self.waiting.retain(|waiter| waiter.tid != tid);
        if self.running == Some(tid) {
            self.running = None;
        }
        self.clear_tid.remove(&tid)
    }

    /// Wake up to `count` threads waiting on the futex at `address` whose
    /// bit set meets `bitset`, oldest first; each wait returns 0.
    pub(crate) fn wake(&mut self, address: u64, count: u32, bitset: u32) -> Vec<Woken> {
        let mut woken = Vec::new();
        self.waiting.retain(|waiter| match waiter.wait {
            Wait::Futex { address: at, bitset: wanted }
                if at == address && wanted & bitset != 0 && woken.len() < count as usize =>
            {
                woken.push((waiter.tid, 0, waiter.wait));
                false
            }
            _ => true,
        });
        woken
    }

    /// `FUTEX_REQUEUE`: wake up to `count` waiters on `from`, and move up
    /// to `moved` of the rest to wait on `to`. Returns the woken and how
    /// many moved.
    pub(crate) fn requeue(&mut self, from: u64, to: u64, count: u32, moved: u32) -> (Vec<Woken>, u32) {
        let woken = self.wake(from, count, u32::MAX);
        let mut done = 0;
        for waiter in &mut self.waiting {
            if done == moved {
                break;
            }
            if let Wait::Futex { address, bitset } = waiter.wait {
                if address == from {
                    waiter.wait = Wait::Futex { address: to, bitset };
                    done += 1;
                }
            }
        }
        (woken, done)
    }

    /// Whose turn it is next, after the running thread's turn ended (it
    /// waits, yields, used its slice, or left). Waiters whose deadline has
    /// passed wake first (with `timed_out`, or 0 for sleeps and waits for
    /// descriptors); a thread waiting for descriptors takes its turn to
    /// try again. If no thread can run, or only such tries are left and
    /// each has just been made in vain, the clock moves to the earliest
    /// deadline; past such tries only once `others_quiet` says no other
    /// process has run since the last time it was asked (until then the
    /// turn is *stalled*: another process may yet answer a try, and how
    /// far the clock had moved meanwhile would depend on how fast it
    /// was). `None` is a deadlock.
    pub(crate) fn schedule(&mut self, timed_out: i64, others_quiet: impl FnOnce() -> bool) -> Option<Turn> {
        if self.running.is_some_and(|tid| self.scheduled(tid) && !self.is_waiting(tid)) {
            self.vain_tries = 0; // It yielded or used its slice: it ran.
        }
        let mut woken = self.time_out(timed_out);
        let trying = self.waiting.iter().filter(|waiter| waiter.wait == Wait::Io).count();
        let mut stalled = false;
        if self.all_wait() && (trying == 0 || self.vain_tries >= trying) {
            match self.waiting.iter().filter_map(|waiter| waiter.deadline).min() {
                Some(_) if trying > 0 && !others_quiet() => stalled = true,
                Some(earliest) => {
                    self.clock_ns = self.clock_ns.max(earliest);
                    woken.extend(self.time_out(timed_out));
                }
                None if trying == 0 => return None,
                None => stalled = true,
            }
            self.vain_tries = 0;
        }
        // Round robin: the first thread after the one that ran that can
        // run or try again.
        let after = self.running.and_then(|tid| self.threads.iter().position(|&t| t == tid));
        let start = after.map_or(0, |at| at + 1);
        let order = self.threads[start..].iter().chain(&self.threads[..start]);
        let next = order.copied().find(|tid| self.can_run(*tid, true))?;
        // A try of a wait for descriptors is a turn: it waits no more.
        self.waiting.retain(|waiter| waiter.tid != next);
        self.running = Some(next);
        self.slice = SLICE_CALLS;
        Some(Turn { next, woken, stalled })
    }

    /// Threads that can run (and, with `trying`, those that may try a
    /// wait for descriptors again).
    fn runnable(&self, trying: bool) -> impl Iterator<Item = &Tid> {
        self.threads.iter().filter(move |tid| self.can_run(**tid, trying))
    }

    fn can_run(&self, tid: Tid, trying: bool) -> bool {
        match self.waiting.iter().find(|waiter| waiter.tid == tid) {
            None => true,
            Some(waiter) => trying && waiter.wait == Wait::Io,
        }
    }

    fn is_waiting(&self, tid: Tid) -> bool {
        self.waiting.iter().any(|waiter| waiter.tid == tid)
    }

    /// Wake every waiter whose deadline the clock has reached: a futex
    /// wait returns `timed_out`, a sleep or a wait for descriptors 0.
    fn time_out(&mut self, timed_out: i64) -> Vec<Woken> {
        let now = self.clock_ns;
        let mut woken = Vec::new();
        self.waiting.retain(|waiter| match waiter.deadline {
            Some(deadline) if deadline <= now => {
                let result = if matches!(waiter.wait, Wait::Futex { .. }) { timed_out } else { 0 };
                woken.push((waiter.tid, result, waiter.wait));
                false
            }
            _ => true,
        });
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMED_OUT: i64 = -110;
    const ANY: u32 = u32::MAX;

    /// A turn as the tests compare it: next, (woken, result)s, stalled.
    type Seen = Option<(Tid, Vec<(Tid, i64)>, bool)>;

    fn turn(next: Tid, woken: &[(Tid, i64)]) -> Seen {
        Some((next, woken.to_vec(), false))
    }

    /// The next turn without what each woken thread waited for.
    fn schedule(group: &mut Group) -> Seen {
        let turn = group.schedule(TIMED_OUT, || true)?;
        Some((turn.next, turn.woken.iter().map(|&(tid, result, _)| (tid, result)).collect(), turn.stalled))
    }

    fn tids(woken: Vec<Woken>) -> Vec<Tid> {
        woken.into_iter().map(|(tid, result, _)| if result == 0 { tid } else { -tid }).collect()
    }

    fn futex(address: u64) -> Wait {
        Wait::Futex { address, bitset: ANY }
    }

    #[test]
    fn turns_go_round_in_creation_order_skipping_waiters() {
        let mut group = Group::new(1, 1, 0);
        assert!(group.add(2, None) && group.add(3, None));
        assert!(group.runs(1) && !group.runs(2));
        assert_eq!(schedule(&mut group), turn(2, &[]));
        group.wait(2, futex(0x10), None);
        assert_eq!(schedule(&mut group), turn(3, &[]));
        assert_eq!(schedule(&mut group), turn(1, &[]), "2 waits: skipped");
        assert_eq!(tids(group.wake(0x10, 1, ANY)), [2]);
        assert_eq!(schedule(&mut group), turn(2, &[]));
    }

    #[test]
    fn a_slice_is_counted_in_calls() {
        let mut group = Group::new(1, 1, 0);
        let calls = (1..=SLICE_CALLS).take_while(|_| !group.slice_over()).count();
        assert_eq!(calls as u32, SLICE_CALLS - 1, "the last call of the slice ends it");
    }

    #[test]
    fn wakes_take_the_oldest_matching_waiters() {
        let mut group = Group::new(1, 1, 0);
        for tid in 2..=5 {
            group.add(tid, None);
        }
        group.wait(2, Wait::Futex { address: 0x10, bitset: 0b01 }, None);
        group.wait(3, futex(0x20), None);
        group.wait(4, Wait::Futex { address: 0x10, bitset: 0b10 }, None);
        group.wait(5, Wait::Futex { address: 0x10, bitset: 0b11 }, None);
        assert_eq!(tids(group.wake(0x10, 1, 0b10)), [4], "2's bit set does not meet the wake's");
        assert_eq!(tids(group.wake(0x10, u32::MAX, ANY)), [2, 5]);
        assert_eq!(tids(group.wake(0x10, 1, ANY)), [0; 0]);
        let (woken, moved) = group.requeue(0x20, 0x30, 0, 1);
        assert_eq!((woken.len(), moved), (0, 1));
        assert_eq!(tids(group.wake(0x30, 1, ANY)), [3], "requeued to the second word");
    }

    #[test]
    fn when_all_wait_the_clock_jumps_to_the_earliest_deadline() {
        let mut group = Group::new(1, 1, 1_000);
        group.add(2, None);
        group.wait(1, Wait::Sleep, Some(50_000));
        group.wait(2, futex(0x10), Some(20_000));
        assert_eq!(schedule(&mut group), turn(2, &[(2, TIMED_OUT)]));
        assert_eq!(group.clock_ns, 20_000);
        // A deadline the clock has passed while others ran wakes first.
        group.clock_ns = 60_000;
        assert_eq!(schedule(&mut group), turn(1, &[(1, 0)]));
    }

    #[test]
    fn every_thread_waiting_without_a_deadline_is_a_deadlock() {
        let mut group = Group::new(1, 1, 0);
        group.add(2, None);
        group.wait(1, futex(0x10), None);
        group.wait(2, futex(0x20), None);
        assert_eq!(group.schedule(TIMED_OUT, || true), None);
    }

    #[test]
    fn a_wait_for_descriptors_tries_again_after_the_others() {
        let mut group = Group::new(1, 1, 0);
        group.add(2, None);
        group.add(3, None);
        group.wait(1, Wait::Io, None);
        assert_eq!(schedule(&mut group), turn(2, &[]));
        assert_eq!(schedule(&mut group), turn(3, &[]), "2 yields");
        assert_eq!(schedule(&mut group), turn(1, &[]), "3 yields: 1 tries again");
        // Its try in vain while the others wait on futexes: the others
        // cannot help, and without a deadline only another process can.
        group.wait(2, futex(0x10), None);
        group.wait(3, futex(0x20), None);
        group.wait(1, Wait::Io, None);
        assert_eq!(schedule(&mut group), Some((1, vec![], true)), "stalled: tried again after a pause");
    }

    #[test]
    fn vain_tries_move_the_clock_to_their_deadline() {
        let mut group = Group::new(1, 1, 0);
        group.add(2, None);
        group.wait(2, futex(0x10), None);
        group.wait(1, Wait::Io, Some(7_000));
        assert_eq!(schedule(&mut group), turn(1, &[(1, 0)]), "its timeout: 0 descriptors ready");
        assert_eq!(group.clock_ns, 7_000);
    }

    #[test]
    fn vain_tries_wait_for_other_processes_before_the_clock_moves() {
        let mut group = Group::new(1, 1, 0);
        group.add(2, None);
        group.wait(2, Wait::Sleep, Some(9_000));
        group.wait(1, Wait::Io, None);
        let busy = group.schedule(TIMED_OUT, || false).unwrap();
        assert_eq!((busy.next, busy.woken.len(), busy.stalled), (1, 0, true), "another process runs: 1 tries again");
        assert_eq!(group.clock_ns, 0, "the sleep has not ended");
        group.wait(1, Wait::Io, None);
        let quiet = group.schedule(TIMED_OUT, || true).unwrap();
        assert_eq!((quiet.next, quiet.stalled), (2, false), "all quiet: the sleep ends");
        assert_eq!(group.clock_ns, 9_000);
        // Without a wait for descriptors nobody else is asked.
        let mut group = Group::new(1, 1, 0);
        group.add(2, None);
        group.wait(2, Wait::Sleep, Some(10_000));
        group.wait(1, Wait::Sleep, Some(11_000));
        let asked = std::cell::Cell::new(false);
        assert_eq!(group.schedule(TIMED_OUT, || asked.replace(true)).map(|turn| turn.next), Some(2));
        assert!(!asked.get());
    }

    #[test]
    fn a_signal_interrupts_a_wait() {
        let mut group = Group::new(1, 1, 1_000);
        group.add(2, None);
        group.wait(2, Wait::Sleep, Some(5_000));
        assert_eq!(group.interrupt(2, -4), Some(((2, -4, Wait::Sleep), Some(4_000))), "4 µs of its sleep left");
        assert_eq!(group.interrupt(2, -4), None, "no longer waiting");
        assert_eq!(schedule(&mut group), turn(2, &[]), "it runs");
    }

    #[test]
    fn a_thread_that_leaves_gives_back_its_word_and_its_turn() {
        let mut group = Group::new(1, 1, 0);
        group.add(2, Some(0x40));
        assert_eq!(schedule(&mut group), turn(2, &[]));
        assert_eq!(group.leave(2), Some(0x40));
        assert_eq!(group.len(), 1);
        assert_eq!(schedule(&mut group), turn(1, &[]));
        assert_eq!(group.leave(1), None, "its word is not known");
    }
}
