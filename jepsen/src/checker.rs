//! A linearizability checker for registers, in the style of Wing & Gong with
//! Lowe's memoisation (as Porcupine and Knossos do).
//!
//! The history is partitioned per key (registers are independent), and each
//! key is searched for an order of its operations that (1) respects real time
//! — an operation that returned before another was invoked comes first — and
//! (2) is legal for a register. Operations whose outcome is unknown (`info`:
//! a timeout, a crashed node) may or may not have taken effect: they get an
//! infinite return time, and a compare-and-set among them that does not match
//! is a no-op, which together mean "took effect at some point, or never".
//! Definitely failed operations (`fail`) had no effect and are dropped.
//!
//! The search is bounded by a deadline; a key it cannot decide in time makes
//! the verdict `unknown`, never `valid`.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A register operation as the checker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterOp {
    /// A read that returned `value` (`None`: the key did not exist).
    Read {
        /// What was read.
        value: Option<String>,
    },
    /// A blind write.
    Write {
        /// What was written.
        value: String,
    },
    /// Compare-and-set from `expect` to `new`.
    Cas {
        /// Expected current value.
        expect: String,
        /// New value.
        new: String,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Completion {
    /// It took effect and returned at `returned_ns`.
    Ok {
        /// Return time.
        returned_ns: u64,
    },
    /// Unknown whether it took effect (timeout, crash).
    Info,
    /// It definitely had no effect.
    Fail,
}

/// One completed (or abandoned) operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// History index of the invocation, for reports.
    pub index: u64,
    /// Client process.
    pub process: u64,
    /// The key.
    pub key: String,
    /// What it did.
    pub op: RegisterOp,
    /// Invocation time.
    pub invoked_ns: u64,
    /// How it ended.
    pub completion: Completion,
}

/// The verdict for a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "verdict")]
pub enum Verdict {
    /// Every key has a legal linearization.
    Valid,
    /// Some key has none.
    Invalid {
        /// The key.
        key: String,
        /// The operations involved: those concurrent with the point where
        /// every ordering failed.
        counterexample: Vec<Operation>,
    },
    /// The search ran out of time on some key (and found no violation).
    Unknown {
        /// Keys not decided.
        keys: Vec<String>,
    },
}

/// Check `operations` within `budget` of wall time.
pub fn check(operations: &[Operation], budget: Duration) -> Verdict {
    let deadline = Instant::now() + budget;
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for operation in operations.iter().filter(|o| o.completion != Completion::Fail) {
        // A read whose result is unknown constrains nothing.
        if operation.completion == Completion::Info && matches!(operation.op, RegisterOp::Read { .. }) {
            continue;
        }
        by_key.entry(&operation.key).or_default().push(operation);
    }
    let mut undecided = Vec::new();
    for (key, ops) in by_key {
        match check_key(&ops, deadline) {
            KeyResult::Linearizable => {}
            KeyResult::Violation(counterexample) => {
                return Verdict::Invalid { key: key.to_owned(), counterexample };
            }
            KeyResult::OutOfTime => undecided.push(key.to_owned()),
        }
    }
    if undecided.is_empty() {
        Verdict::Valid
    } else {
        Verdict::Unknown { keys: undecided }
    }
}

enum KeyResult {
    Linearizable,
    Violation(Vec<Operation>),
    OutOfTime,
}

/// The register model: `None` if `op` is illegal in `state`, else the next state.
fn step(state: &Option<String>, op: &Operation) -> Option<Option<String>> {
    let certain = op.completion != Completion::Info;
    match &op.op {
        RegisterOp::Read { value } => (value == state).then(|| state.clone()),
        RegisterOp::Write { value } => Some(Some(value.clone())),
        RegisterOp::Cas { expect, new } => {
            if state.as_deref() == Some(expect.as_str()) {
                Some(Some(new.clone()))
            } else if certain {
                None
            } else {
                // An unknown cas that did not match had no effect.
                Some(state.clone())
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
}

/// Doubly linked list of call/return events, so that linearized operations
/// can be lifted out and put back in O(1).
struct Events {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Position of each operation's return event.
    return_of: Vec<usize>,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

impl Events {
    fn new(ops: &[&Operation]) -> Self {
        // (time, order, op, is_call): returns sort before calls at the same
        // instant, so touching intervals are not concurrent.
        let mut points: Vec<(u64, u8, usize, bool)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            points.push((op.invoked_ns, 1, i, true));
            let returned = match op.completion {
                Completion::Ok { returned_ns } => returned_ns,
                _ => u64::MAX,
            };
            points.push((returned, 0, i, false));
        }
        points.sort_unstable();
        // Slot 0 is the list head.
        let mut events = vec![Event { op: NIL, is_call: false }];
        let mut return_of = vec![0; ops.len()];
        for (_, _, op, is_call) in points {
            if !is_call {
                return_of[op] = events.len();
            }
            events.push(Event { op, is_call });
        }
        let n = events.len();
        let next = (0..n).map(|i| if i + 1 < n { i + 1 } else { NIL }).collect();
        let prev = (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect();
        Self { events, next, prev, return_of }
    }

    fn unlink(&mut self, at: usize) {
        let (p, n) = (self.prev[at], self.next[at]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, at: usize) {
        let (p, n) = (self.prev[at], self.next[at]);
        self.next[p] = at;
        if n != NIL {
            self.prev[n] = at;
        }
    }

    /// Remove a call event and its return event.
    fn lift(&mut self, call: usize) {
        let ret = self.return_of[self.events[call].op];
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undo [`Self::lift`] (in reverse order).
    fn unlift(&mut self, call: usize) {
        let ret = self.return_of[self.events[call].op];
        self.relink(ret);
        self.relink(call);
    }
}

/// How often (in search steps) the deadline is checked.
const DEADLINE_CHECK_STEPS: u64 = 1024;

fn check_key(ops: &[&Operation], deadline: Instant) -> KeyResult {
    let mut events = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut state: Option<String> = None;
    let mut entry = events.next[HEAD];
    let mut steps = 0u64;
    // The deepest partial linearization and the operation that could not
    // follow it: the counterexample if the search fails.
    let mut deepest: (usize, Vec<usize>, usize) = (0, Vec::new(), NIL);
    while events.next[HEAD] != NIL {
        steps += 1;
        if steps.is_multiple_of(DEADLINE_CHECK_STEPS) && Instant::now() > deadline {
            return KeyResult::OutOfTime;
        }
        let event = events.events[entry];
        if event.is_call {
            let op = event.op;
            let next_state = step(&state, ops[op]);
            let mut advanced = false;
            if let Some(next_state) = next_state {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), next_state.clone())) {
                    stack.push((entry, state));
                    state = next_state;
                    events.lift(entry);
                    entry = events.next[HEAD];
                    advanced = true;
                } else {
                    linearized[op / 64] &= !(1 << (op % 64));
                }
            }
            if !advanced {
                entry = events.next[entry];
            }
        } else {
            // A return event: the operation it ends was not linearized in
            // time; backtrack.
            if deepest.2 == NIL || stack.len() > deepest.0 {
                let prefix = stack.iter().map(|(call, _)| events.events[*call].op).collect();
                deepest = (stack.len(), prefix, event.op);
            }
            let Some((call, previous)) = stack.pop() else {
                return KeyResult::Violation(counterexample(ops, &deepest.1, deepest.2));
            };
            let op = events.events[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            events.unlift(call);
            entry = events.next[call];
        }
    }
    KeyResult::Linearizable
}

/// Operations shown with a counterexample: the last few of the deepest legal
/// prefix, then the operation that could not follow it, then the operations
/// concurrent with that one.
const PREFIX_SHOWN_MAX: usize = 8;

fn counterexample(ops: &[&Operation], prefix: &[usize], stuck: usize) -> Vec<Operation> {
    let end_of = |op: &Operation| match op.completion {
        Completion::Ok { returned_ns } => returned_ns,
        _ => u64::MAX,
    };
    let stuck_op = ops[stuck];
    let mut shown: Vec<usize> = prefix[prefix.len().saturating_sub(PREFIX_SHOWN_MAX)..].to_vec();
    shown.push(stuck);
    for (i, op) in ops.iter().enumerate() {
        let concurrent = op.invoked_ns <= end_of(stuck_op) && end_of(op) >= stuck_op.invoked_ns;
        if concurrent && !shown.contains(&i) {
            shown.push(i);
        }
    }
    shown.into_iter().map(|i| ops[i].clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(index: u64, process: u64, op: RegisterOp, invoked_ns: u64, completion: Completion) -> Operation {
        Operation { index, process, key: "k".into(), op, invoked_ns, completion }
    }

    fn ok(returned_ns: u64) -> Completion {
        Completion::Ok { returned_ns }
    }

    fn read(value: Option<&str>) -> RegisterOp {
        RegisterOp::Read { value: value.map(str::to_owned) }
    }

    fn write(value: &str) -> RegisterOp {
        RegisterOp::Write { value: value.into() }
    }

    fn cas(expect: &str, new: &str) -> RegisterOp {
        RegisterOp::Cas { expect: expect.into(), new: new.into() }
    }

    const BUDGET: Duration = Duration::from_secs(5);

    /// Sequential, legal operations are linearizable.
    #[test]
    fn sequential_history_is_valid() {
        let history = [
            op(0, 0, read(None), 0, ok(1)),
            op(1, 0, write("a"), 2, ok(3)),
            op(2, 1, read(Some("a")), 4, ok(5)),
            op(3, 1, cas("a", "b"), 6, ok(7)),
            op(4, 0, read(Some("b")), 8, ok(9)),
        ];
        assert_eq!(check(&history, BUDGET), Verdict::Valid);
    }

    /// Concurrent operations may be ordered either way.
    #[test]
    fn concurrent_write_and_read_may_reorder() {
        let history =
            [op(0, 0, write("a"), 0, ok(10)), op(1, 1, read(Some("a")), 1, ok(2)), op(2, 2, read(None), 3, ok(4))];
        // The read of "a" forces the write before t=2; then a read of None at
        // t=3..4 is impossible.
        assert!(matches!(check(&history, BUDGET), Verdict::Invalid { .. }));
        let history =
            [op(0, 0, write("a"), 0, ok(10)), op(1, 1, read(None), 1, ok(2)), op(2, 2, read(Some("a")), 3, ok(4))];
        assert_eq!(check(&history, BUDGET), Verdict::Valid);
    }

    /// The classic stale read: a read after a completed write sees the old value.
    #[test]
    fn stale_read_is_invalid() {
        let history =
            [op(0, 0, write("a"), 0, ok(1)), op(1, 0, write("b"), 2, ok(3)), op(2, 1, read(Some("a")), 4, ok(5))];
        let Verdict::Invalid { key, counterexample } = check(&history, BUDGET) else { panic!("not invalid") };
        assert_eq!(key, "k");
        let indexes: Vec<u64> = counterexample.iter().map(|o| o.index).collect();
        assert_eq!(indexes, [0, 1, 2], "both writes, then the stale read that cannot follow them");
    }

    /// The classic lost update: two CAS from the same value both succeed.
    #[test]
    fn lost_update_is_invalid() {
        let history =
            [op(0, 0, write("0"), 0, ok(1)), op(1, 1, cas("0", "1"), 2, ok(5)), op(2, 2, cas("0", "2"), 3, ok(6))];
        assert!(matches!(check(&history, BUDGET), Verdict::Invalid { .. }));
    }

    /// An unknown write may have happened (a later read sees it) or not.
    #[test]
    fn info_operations_may_or_may_not_happen() {
        let happened = [op(0, 0, write("a"), 0, Completion::Info), op(1, 1, read(Some("a")), 5, ok(6))];
        assert_eq!(check(&happened, BUDGET), Verdict::Valid);
        let did_not = [op(0, 0, write("a"), 0, Completion::Info), op(1, 1, read(None), 5, ok(6))];
        assert_eq!(check(&did_not, BUDGET), Verdict::Valid);
        let failed = [op(0, 0, write("a"), 0, Completion::Fail), op(1, 1, read(Some("a")), 5, ok(6))];
        assert!(matches!(check(&failed, BUDGET), Verdict::Invalid { .. }), "a failed write must not be seen");
    }

    /// Keys are independent: a violation on one key is found among many.
    #[test]
    fn keys_are_partitioned() {
        let mut history = Vec::new();
        for k in 0..50u64 {
            let mut a = op(k * 2, 0, write("x"), k * 10, ok(k * 10 + 1));
            a.key = format!("k{k}");
            let mut b = op(k * 2 + 1, 1, read(Some("x")), k * 10 + 2, ok(k * 10 + 3));
            b.key = format!("k{k}");
            history.push(a);
            history.push(b);
        }
        history[99].op = read(Some("y"));
        let Verdict::Invalid { key, .. } = check(&history, BUDGET) else { panic!("not invalid") };
        assert_eq!(key, "k49");
    }

    /// A search that cannot finish in its budget says unknown, not valid.
    #[test]
    fn out_of_budget_is_unknown() {
        // Many concurrent writes and reads of distinct values: a large space.
        let mut history = Vec::new();
        for i in 0..200u64 {
            history.push(op(i, i, write(&format!("v{i}")), 0, ok(1_000)));
        }
        for i in 0..200u64 {
            history.push(op(200 + i, 200 + i, read(Some(&format!("v{}", (i * 7) % 200))), 0, ok(1_000)));
        }
        history.push(op(400, 400, read(Some("never-written")), 2_000, ok(2_001)));
        let verdict = check(&history, Duration::from_millis(50));
        assert!(matches!(verdict, Verdict::Unknown { .. } | Verdict::Invalid { .. }), "{verdict:?}");
        assert_ne!(verdict, Verdict::Valid);
    }
}
