//! The seccomp policy: reviewed data (`policy/*.policy`), compiled with
//! `seccompiler` into BPF programs that the workload installs right before
//! `execve`.
//!
//! Default deny: any call the policy neither allows nor traces stops at the
//! supervisor, which ends the run with `policy-violation` naming the call,
//! as does any other architecture (`int 0x80`); x32 calls carry a high bit
//! in their number, so they match nothing and are denied too. Denials go
//! to the supervisor (`SECCOMP_RET_TRACE`) rather than killing in the
//! kernel so the verdict can name the call; should no tracer be attached,
//! the kernel fails the call with `ENOSYS` without running it, so the
//! policy stays fail-closed either way. Two adjustments in code, each
//! stricter than the list: `clone` is allowed only without namespace flags
//! (no nested user namespaces), `sendto` goes to the supervisor when it
//! names an address (an unbound socket's port is the cage's to choose),
//! `wait4` and `waitid` go to it when they ask for the child's resource
//! usage (host timing, which it zeroes), and `clone` goes to the supervisor with
//! `CLONE_THREAD` (which serialises the process's threads from then on:
//! `threads.rs`), and `clone3`, whose flags sit in memory a filter
//! cannot read, fails with `ENOSYS` so libc falls back to `clone`.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use sha3::{Digest as _, Sha3_256};

use crate::syscalls;

/// `SECCOMP_RET_DATA` of a traced call.
pub(crate) const DATA_TRACE: u32 = 1;
/// `SECCOMP_RET_DATA` of a call that may block, from the filter a
/// threaded process gets ([`Policy::blocking`]).
pub(crate) const DATA_BLOCKING: u32 = 2;
/// `SECCOMP_RET_DATA` of a denied call.
pub(crate) const DATA_DENY: u32 = 0xfffe;
/// `SECCOMP_RET_DATA` of a call from another architecture.
pub(crate) const DATA_FOREIGN: u32 = 0xffff;

/// The default profile's source.
pub const DEFAULT: &str = include_str!("../policy/default.policy");

/// Clone flags that create namespaces.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The allowed calls, by name.
    pub allowed: Vec<String>,
    /// The calls handed to the supervisor, by name.
    pub traced: Vec<String>,
    /// SHA3-256 of the policy source (recorded in the witness header).
    pub digest: [u8; 32],
    /// The BPF programs, installed in order (the allowlist last).
    pub programs: Vec<BpfProgram>,
    /// The filter the supervisor stacks on a process when it makes its
    /// first thread: the calls in [`BLOCKING_CALLS`] the policy allows go
    /// to the supervisor, which lets them run only when they would not
    /// block (a thread must not wait in the kernel while it holds its
    /// process's turn). Only allowed calls: the filter must not turn a
    /// denial into a trace.
    pub blocking: BpfProgram,
}

/// Calls that wait for one descriptor to become readable or writable, or
/// for a child to end, which the supervisor tries in threaded processes
/// (`supervisor/threaded.rs`). `sendto` only without an address (what
/// `send` makes): one with an address goes to the supervisor anyway, for
/// its port, through the policy's own filter.
pub(crate) const BLOCKING_CALLS: [&str; 11] =
    ["read", "readv", "recvfrom", "recvmsg", "accept", "accept4", "write", "writev", "sendto", "wait4", "waitid"];

/// Why a policy does not compile.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A line is not `allow|trace NAME  # reason`.
    #[error("policy line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// seccompiler refused the filter.
    #[error("policy does not compile: {0}")]
    Compile(String),
}

impl Policy {
    /// Parse and compile a policy source.
    pub fn compile(source: &str) -> Result<Self, PolicyError> {
        let (mut allowed, mut traced) = (Vec::new(), Vec::new());
        for (index, raw) in source.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| PolicyError::Syntax { line: index + 1, reason };
            let (rule, reason) =
                line.split_once('#').ok_or_else(|| syntax("every rule names who needs it after '#'".into()))?;
            if reason.trim().is_empty() {
                return Err(syntax("every rule names who needs it after '#'".into()));
            }
            let mut words = rule.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some(class @ ("allow" | "trace")), Some(name), None) => {
                    syscalls::number(name).ok_or_else(|| syntax(format!("unknown system call {name:?}")))?;
                    if allowed.iter().chain(&traced).any(|a| a == name) {
                        return Err(syntax(format!("{name} is listed twice")));
                    }
                    if class == "allow" { &mut allowed } else { &mut traced }.push(name.to_owned());
                }
                _ => return Err(syntax(format!("expected `allow|trace NAME  # reason`, got {rule:?}"))),
            }
        }
        let programs = filters(&allowed, &traced)?.into_iter().map(Filter::program).collect::<Result<_, _>>()?;
        let blocking = blocking_filter(&allowed)?.program()?;
        Ok(Self { allowed, traced, digest: Sha3_256::digest(source.as_bytes()).into(), programs, blocking })
    }
}

/// The policy's filters, installed in order (the allowlist last).
fn filters(allowed: &[String], traced: &[String]) -> Result<Vec<Filter>, PolicyError> {
    let compile = |error: seccompiler::BackendError| PolicyError::Compile(error.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in allowed.iter().chain(traced) {
        let number = syscalls::number(name).expect("checked above");
        let conditions = if name == "clone" {
            let no_namespaces =
                SeccompCondition::new(0, SeccompArgLen::Qword, SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS), 0)
                    .map_err(compile)?;
            vec![SeccompRule::new(vec![no_namespaces]).map_err(compile)?]
        } else {
            Vec::new()
        };
        rules.insert(number, conditions);
    }
    let deny = SeccompAction::Trace(DATA_DENY);
    let allow = Filter { rules, mismatch: deny, matched: SeccompAction::Allow };
    // A call matching several filters gets the most restrictive action,
    // so the traced and clone3 filters override the allowlist for their
    // calls. The allowlist goes last: once it is installed, `seccomp`
    // itself is denied.
    let mut filters = Vec::new();
    let mut traced_rules: BTreeMap<i64, Vec<SeccompRule>> =
        traced.iter().map(|name| (syscalls::number(name).expect("checked above"), Vec::new())).collect();
    if allowed.iter().any(|name| name == "clone") {
        let thread = SeccompCondition::new(
            0,
            SeccompArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            libc::CLONE_THREAD as u64,
        )
        .map_err(compile)?;
        let clone = syscalls::number("clone").expect("known");
        traced_rules.insert(clone, vec![SeccompRule::new(vec![thread]).map_err(compile)?]);
    }
    if allowed.iter().any(|name| name == "ioctl") {
        // The kernel's receive time of a socket's last packet: refused
        // like SO_TIMESTAMP. The kernel reads the request as a 32-bit
        // int, so only the low half is compared (a workload cannot
        // pass the filter with junk in the high half).
        let mut stamp_rules = Vec::new();
        for request in RECEIVE_TIME_IOCTLS {
            let is =
                SeccompCondition::new(1, SeccompArgLen::Dword, SeccompCmpOp::Eq, request.into()).map_err(compile)?;
            stamp_rules.push(SeccompRule::new(vec![is]).map_err(compile)?);
        }
        traced_rules.insert(syscalls::number("ioctl").expect("known"), stamp_rules);
    }
    if allowed.iter().any(|name| name == "sendto") {
        // A datagram sent to an address from a socket not yet bound:
        // the kernel would bind it to a random port, so the supervisor
        // binds it first (`supervisor/ports.rs`). A send without an
        // address (a connected socket's) is not stopped.
        let addressed = SeccompCondition::new(4, SeccompArgLen::Qword, SeccompCmpOp::Ne, 0).map_err(compile)?;
        let sendto = syscalls::number("sendto").expect("known");
        traced_rules.insert(sendto, vec![SeccompRule::new(vec![addressed]).map_err(compile)?]);
    }
    for (name, usage) in [("wait4", 3), ("waitid", 4)] {
        if allowed.iter().any(|allowed| allowed == name) {
            // A reaped child's resource usage is its CPU time, faults and
            // context switches: host timing, which the supervisor zeroes.
            // A wait without a usage buffer is not stopped.
            let with_usage =
                SeccompCondition::new(usage, SeccompArgLen::Qword, SeccompCmpOp::Ne, 0).map_err(compile)?;
            traced_rules.insert(
                syscalls::number(name).expect("known"),
                vec![SeccompRule::new(vec![with_usage]).map_err(compile)?],
            );
        }
    }
    if !traced_rules.is_empty() {
        let trace = SeccompAction::Trace(DATA_TRACE);
        filters.push(Filter { rules: traced_rules, mismatch: SeccompAction::Allow, matched: trace });
    }
    if allowed.iter().any(|name| name == "clone3") {
        let clone3 = BTreeMap::from([(syscalls::number("clone3").expect("known"), Vec::new())]);
        let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
        filters.push(Filter { rules: clone3, mismatch: SeccompAction::Allow, matched: enosys });
    }
    filters.push(allow);
    Ok(filters)
}

/// The filter stacked on threaded processes: the allowed calls among
/// [`BLOCKING_CALLS`] go to the supervisor, everything else is left to
/// the policy's filters (a stack of filters takes the most restrictive
/// action, so `Allow` here defers to them). Of two traces in a stack the
/// filter installed last decides the data, so a `sendto` with an address
/// is left to the policy's trace (`supervisor/ports.rs` binds its port).
fn blocking_filter(allowed: &[String]) -> Result<Filter, PolicyError> {
    let compile = |error: seccompiler::BackendError| PolicyError::Compile(error.to_string());
    let mut rules = BTreeMap::new();
    for name in BLOCKING_CALLS.iter().filter(|name| allowed.iter().any(|allowed| allowed == *name)) {
        let conditions = if *name == "sendto" {
            let unaddressed = SeccompCondition::new(4, SeccompArgLen::Qword, SeccompCmpOp::Eq, 0).map_err(compile)?;
            vec![SeccompRule::new(vec![unaddressed]).map_err(compile)?]
        } else {
            Vec::new()
        };
        rules.insert(syscalls::number(name).expect("known"), conditions);
    }
    Ok(Filter { rules, mismatch: SeccompAction::Allow, matched: SeccompAction::Trace(DATA_BLOCKING) })
}

/// One filter of the policy: what seccompiler compiles, call by call.
#[derive(Clone)]
struct Filter {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    /// For calls not in `rules`, and calls whose conditions all fail.
    mismatch: SeccompAction,
    /// For calls in `rules` whose conditions (if any) hold.
    matched: SeccompAction,
}

/// Most calls a leaf of the dispatch tree compares one by one.
const LEAF_CALLS: usize = 4;

/// Classic BPF opcodes (`<linux/filter.h>`) of what seccompiler and the
/// dispatch tree emit.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_RET_K: u16 = 0x06;
const BPF_JA: u16 = 0x05;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
/// Where `seccomp_data` holds the call number.
const NR_OFFSET: u32 = 0;

impl Filter {
    /// The program: seccompiler's architecture check, then a binary search
    /// on the call number that jumps to the call's own block of rules, as
    /// seccompiler compiles it.
    ///
    /// seccompiler lays its blocks out as one chain that every call walks
    /// from the top, and the kernel, when a filter is installed, runs the
    /// program once per call number (about 460) to find the calls it can
    /// allow without running the filter again (`seccomp_cache_prepare`,
    /// with interrupts off). With 160 calls in the chain that took about
    /// 0.45 ms of each run's 3.4 ms here; the tree walks about 15
    /// instructions where the chain walked up to 320. Calls without
    /// conditions return from the tree itself, which keeps the program
    /// short: the kernel also translates and JIT-compiles it at every
    /// install. The same tree serves
    /// every call the cache cannot answer (traced calls, calls with
    /// argument conditions) at run time.
    fn program(self) -> Result<BpfProgram, PolicyError> {
        let compile = |error: seccompiler::BackendError| PolicyError::Compile(error.to_string());
        let arch = TargetArch::x86_64;
        let unexpected =
            |what: &str| PolicyError::Compile(format!("seccompiler's output has an unexpected shape: {what}"));
        let mismatch_ret = sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: self.mismatch.clone().into() };
        // With no rules seccompiler gives the architecture check and the
        // mismatch action.
        let mut program: BpfProgram =
            SeccompFilter::new(BTreeMap::new(), self.mismatch.clone(), self.matched.clone(), arch)
                .map_err(compile)?
                .try_into()
                .map_err(compile)?;
        if program.pop().as_ref() != Some(&mismatch_ret) {
            return Err(unexpected("an empty filter does not end in its mismatch action"));
        }
        let arch_check = program.len();
        program.push(sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: NR_OFFSET });
        foreign_calls_to_supervisor(&mut program)?;
        // Each call's block: seccompiler's program for that call alone,
        // less its architecture check and number load before it and its
        // closing mismatch after it. A call without conditions compiles to
        // a block that just returns the match action: the tree returns it
        // in place. Other blocks start by comparing the number: true when
        // the tree jumps there; when false (never, here) they fall through
        // to the next block, as in seccompiler's chain, so the program ends
        // with that closing mismatch as the chain does.
        let matched_ret = sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: self.matched.clone().into() };
        let mut leaves = Vec::with_capacity(self.rules.len());
        let mut blocks = Vec::new();
        for (number, chain) in self.rules {
            let one = BTreeMap::from([(number, chain)]);
            let whole: BpfProgram = SeccompFilter::new(one, self.mismatch.clone(), self.matched.clone(), arch)
                .map_err(compile)?
                .try_into()
                .map_err(compile)?;
            let number = u32::try_from(number).map_err(|_| unexpected("a negative call number"))?;
            let shaped = whole.len() > arch_check + 2
                && whole[arch_check] == sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: NR_OFFSET }
                && whole[arch_check + 1] == sock_filter { code: BPF_JEQ_K, jt: 0, jf: 1, k: number }
                && whole.last() == Some(&mismatch_ret);
            if !shaped {
                return Err(unexpected("a call's block"));
            }
            let block = &whole[arch_check + 1..whole.len() - 1];
            let ja = |k| sock_filter { code: BPF_JA, jt: 0, jf: 0, k };
            let returns_match = [block[0].clone(), ja(1), ja(2), matched_ret.clone(), mismatch_ret.clone()];
            if block == returns_match {
                leaves.push((number, Leaf::Return(matched_ret.clone())));
            } else {
                leaves.push((number, Leaf::Block(blocks.len())));
                blocks.push(block.to_vec());
            }
        }
        let (tree, block_jumps) = dispatch_tree(&leaves, &mismatch_ret);
        let tree_start = program.len();
        program.extend(tree);
        let mut starts = Vec::with_capacity(blocks.len());
        for block in blocks {
            starts.push(program.len());
            program.extend(block);
        }
        program.push(mismatch_ret);
        for (at, block) in block_jumps {
            let at = tree_start + at;
            program[at].k = u32::try_from(starts[block] - at - 1).map_err(|_| unexpected("a jump too far"))?;
        }
        if program.len() > BPF_MAXINSNS {
            return Err(PolicyError::Compile(format!(
                "the filter has {} instructions, more than {BPF_MAXINSNS}",
                program.len()
            )));
        }
        Ok(program)
    }
}

/// The kernel's limit on a filter's length.
const BPF_MAXINSNS: usize = 4096;

/// What the dispatch tree does with a call it found.
enum Leaf {
    /// Return this (the call has no conditions).
    Return(sock_filter),
    /// Jump to this block of rules.
    Block(usize),
}

/// A binary search over `leaves` (sorted by call number), the accumulator
/// holding the call's number: the instructions, and where each jumps to a
/// block (instruction index, block index; the offset is filled in once the
/// blocks are placed). An unknown number reaches `mismatch`. Conditional
/// jumps reach at most 255 instructions, so only `JA` (32 bits) jumps far:
/// every comparison's targets are next to it.
fn dispatch_tree(leaves: &[(u32, Leaf)], mismatch: &sock_filter) -> (Vec<sock_filter>, Vec<(usize, usize)>) {
    fn emit(
        leaves: &[(u32, Leaf)],
        mismatch: &sock_filter,
        out: &mut Vec<sock_filter>,
        jumps: &mut Vec<(usize, usize)>,
    ) {
        if leaves.len() <= LEAF_CALLS {
            for (number, leaf) in leaves {
                out.push(sock_filter { code: BPF_JEQ_K, jt: 0, jf: 1, k: *number });
                match leaf {
                    Leaf::Return(ret) => out.push(ret.clone()),
                    Leaf::Block(block) => {
                        jumps.push((out.len(), *block));
                        out.push(sock_filter { code: BPF_JA, jt: 0, jf: 0, k: 0 });
                    }
                }
            }
            out.push(mismatch.clone());
            return;
        }
        let middle = leaves.len() / 2;
        // number >= pivot: on to the JA over the lower half.
        out.push(sock_filter { code: BPF_JGE_K, jt: 0, jf: 1, k: leaves[middle].0 });
        let over = out.len();
        out.push(sock_filter { code: BPF_JA, jt: 0, jf: 0, k: 0 });
        emit(&leaves[..middle], mismatch, out, jumps);
        out[over].k = u32::try_from(out.len() - over - 1).expect("a filter is far shorter than 4 G instructions");
        emit(&leaves[middle..], mismatch, out, jumps);
    }
    let (mut out, mut jumps) = (Vec::new(), Vec::new());
    emit(leaves, mismatch, &mut out, &mut jumps);
    (out, jumps)
}

/// `ioctl` requests that read a socket's last receive time: SIOCGSTAMP and
/// SIOCGSTAMPNS, in their old (`timeval`/`timespec` of longs) and new
/// (64-bit) forms.
pub(crate) const RECEIVE_TIME_IOCTLS: [u32; 4] = [0x8906, 0x8907, 0x8010_8906, 0x8010_8907];

/// seccompiler starts every program with an architecture check that kills
/// on a mismatch, before any rule; hand such calls to the supervisor like
/// every other denial, so the verdict can say what happened. The shape is
/// checked, so a seccompiler that emits something else fails here, loudly.
fn foreign_calls_to_supervisor(program: &mut BpfProgram) -> Result<(), PolicyError> {
    const ARCH_OFFSET: u32 = 4;
    let shape_ok = program.len() > 3
        && program[0].code == BPF_LD_W_ABS
        && program[0].k == ARCH_OFFSET
        && program[2].code == BPF_RET_K
        && program[2].k == libc::SECCOMP_RET_KILL_PROCESS;
    if !shape_ok {
        return Err(PolicyError::Compile("seccompiler's architecture check has an unexpected shape".into()));
    }
    program[2].k = libc::SECCOMP_RET_TRACE | DATA_FOREIGN;
    Ok(())
}

type SeccompArgLen = SeccompCmpArgLen;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_compiles() {
        let policy = Policy::compile(DEFAULT).unwrap();
        assert!(policy.allowed.iter().any(|name| name == "execve"));
        assert!(policy.traced.iter().any(|name| name == "getrandom"));
        for dangerous in ["mount", "unshare", "setns", "ptrace", "bpf", "io_uring_setup", "userfaultfd", "kexec_load"] {
            assert!(!policy.allowed.iter().any(|name| name == dangerous), "{dangerous} must not be allowed");
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::compile("allow read").is_err(), "a rule without a reason");
        assert!(Policy::compile("allow frobnicate # nobody").is_err());
        assert!(Policy::compile("deny read # x").is_err());
        assert!(Policy::compile("allow read # a\nallow read # b").is_err());
        assert!(Policy::compile("allow read # a\ntrace read # b").is_err());
    }

    /// What seccompiler's argument conditions use besides the above.
    const BPF_JGT_K: u16 = 0x25;
    const BPF_ALU_AND_K: u16 = 0x54;

    /// What a classic BPF program returns for `data` (`seccomp_data`: nr,
    /// arch, instruction pointer, six arguments), for the instructions
    /// seccompiler and the dispatch tree emit; anything else fails.
    fn evaluate(program: &[sock_filter], data: &[u32; 16]) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = &program[pc];
            pc += 1;
            match insn.code {
                BPF_LD_W_ABS => a = data[insn.k as usize / 4],
                BPF_ALU_AND_K => a &= insn.k,
                BPF_RET_K => return insn.k,
                BPF_JA => pc += insn.k as usize,
                code @ (BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K) => {
                    let taken = match code {
                        BPF_JEQ_K => a == insn.k,
                        BPF_JGT_K => a > insn.k,
                        _ => a >= insn.k,
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                code => panic!("instruction {code:#x} at {} is not expected", pc - 1),
            }
        }
    }

    /// The filter a threaded process gets sends the blocking calls the
    /// policy allows to the supervisor, marked as such, and defers every
    /// other call to the policy; a blocking call the policy does not allow
    /// is not in it, so its denial stands.
    #[test]
    fn the_blocking_filter_traces_only_allowed_blocking_calls() {
        let x86_64 = 0xc000_003e_u32;
        let decide = |program: &[sock_filter], name: &str| {
            let mut data = [0u32; 16];
            (data[0], data[1]) = (syscalls::number(name).unwrap() as u32, x86_64);
            evaluate(program, &data)
        };
        let policy = Policy::compile(DEFAULT).unwrap();
        for name in BLOCKING_CALLS {
            assert_eq!(decide(&policy.blocking, name), libc::SECCOMP_RET_TRACE | DATA_BLOCKING, "{name}");
        }
        for name in ["pwrite64", "futex", "poll", "getrandom", "clone"] {
            assert_eq!(decide(&policy.blocking, name), libc::SECCOMP_RET_ALLOW, "{name}");
        }
        // A `sendto` with an address is the policy's to trace (for its
        // port), not this filter's, whose trace would win.
        let mut addressed = [0u32; 16];
        (addressed[0], addressed[1], addressed[4 + 2 * 4]) = (syscalls::number("sendto").unwrap() as u32, x86_64, 1);
        assert_eq!(evaluate(&policy.blocking, &addressed), libc::SECCOMP_RET_ALLOW);
        addressed[4 + 2 * 4 + 1] = 1; // The high half alone names one too.
        addressed[4 + 2 * 4] = 0;
        assert_eq!(evaluate(&policy.blocking, &addressed), libc::SECCOMP_RET_ALLOW);
        let narrow = Policy::compile("allow readv # x\nallow exit # y").unwrap();
        assert_eq!(decide(&narrow.blocking, "readv"), libc::SECCOMP_RET_TRACE | DATA_BLOCKING);
        assert_eq!(decide(&narrow.blocking, "read"), libc::SECCOMP_RET_ALLOW);
        assert_eq!(decide(&narrow.programs[narrow.programs.len() - 1], "read"), libc::SECCOMP_RET_TRACE | DATA_DENY);
    }

    /// A wait stops at the supervisor only when it asks for the child's
    /// resource usage (which the supervisor zeroes).
    #[test]
    fn waits_are_traced_only_with_a_usage_buffer() {
        let policy = Policy::compile(DEFAULT).unwrap();
        let decide = |name: &str, argument: usize, value: u32| {
            let mut data = [0u32; 16];
            (data[0], data[1]) = (syscalls::number(name).unwrap() as u32, 0xc000_003e);
            data[4 + 2 * argument] = value;
            // The most restrictive action of the stack (the lowest value).
            policy.programs.iter().map(|program| evaluate(program, &data)).min().unwrap()
        };
        for (name, usage) in [("wait4", 3), ("waitid", 4)] {
            assert_eq!(decide(name, usage, 0), libc::SECCOMP_RET_ALLOW, "{name} without usage");
            assert_eq!(decide(name, usage, 0x7ff0_1000), libc::SECCOMP_RET_TRACE | DATA_TRACE, "{name} with usage");
        }
    }

    /// The dispatch tree decides every call as seccompiler's own chain does:
    /// each filter of the default policy, every call number (and x32's,
    /// and beyond), both architectures, and argument values that meet and
    /// miss each condition (namespace and thread flags of clone, the
    /// receive-time ioctls, sendto with and without an address).
    #[test]
    fn the_dispatch_tree_decides_as_the_chain_does() {
        let policy = Policy::compile(DEFAULT).unwrap();
        let filters = filters(&policy.allowed, &policy.traced).unwrap();
        assert_eq!(filters.len(), policy.programs.len());
        let values: Vec<u64> = [0, 1, 0x8906, 0x8010_8907, 0x1_0000_8906, u64::MAX, NAMESPACE_FLAGS]
            .into_iter()
            .chain([libc::CLONE_THREAD, libc::CLONE_NEWUSER, libc::CLONE_VM | libc::CLONE_THREAD].map(|f| f as u64))
            .collect();
        let (x86_64, i386) = (0xc000_003e_u32, 0x4000_0003_u32);
        let mut checked = 0;
        for (filter, tree) in filters.iter().zip(&policy.programs) {
            let mut chain: BpfProgram = SeccompFilter::new(
                filter.rules.clone(),
                filter.mismatch.clone(),
                filter.matched.clone(),
                TargetArch::x86_64,
            )
            .unwrap()
            .try_into()
            .unwrap();
            foreign_calls_to_supervisor(&mut chain).unwrap();
            assert!(tree.len() <= BPF_MAXINSNS);
            let numbers = (0..600u32).chain((0..600).map(|n| n | 0x4000_0000)).chain([u32::MAX, 0x8000_0000]);
            for number in numbers {
                for arch in [x86_64, i386] {
                    for (argument, value) in (0..6).flat_map(|arg| values.iter().map(move |value| (arg, *value))) {
                        let mut data = [0u32; 16];
                        (data[0], data[1]) = (number, arch);
                        data[4 + 2 * argument] = value as u32;
                        data[5 + 2 * argument] = (value >> 32) as u32;
                        assert_eq!(
                            evaluate(tree, &data),
                            evaluate(&chain, &data),
                            "call {number:#x}, arch {arch:#x}, argument {argument} = {value:#x}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100_000);
        // The kernel's static checks: every jump, taken or not, lands
        // inside the program, and it ends with a return.
        for program in &policy.programs {
            for (pc, insn) in program.iter().enumerate() {
                let targets = match insn.code {
                    BPF_JA => vec![insn.k as usize],
                    BPF_JEQ_K | BPF_JGT_K | BPF_JGE_K => vec![usize::from(insn.jt), usize::from(insn.jf)],
                    _ => Vec::new(),
                };
                assert!(targets.iter().all(|offset| pc + 1 + offset < program.len()), "a jump out of range at {pc}");
            }
            assert_eq!(program.last().unwrap().code, BPF_RET_K);
        }
        // And the tree is what makes the kernel's work at install small:
        // a call is found in a few steps, not by walking the whole chain.
        let allowlist = policy.programs.last().unwrap();
        assert!(allowlist.len() < 4 * filters.last().unwrap().rules.len());
    }
}
