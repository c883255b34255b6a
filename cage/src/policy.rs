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
//! and `clone` goes to the supervisor with
//! `CLONE_THREAD` (which serialises the process's threads from then on:
//! `threads.rs`), and `clone3`, whose flags sit in memory a filter
//! cannot read, fails with `ENOSYS` so libc falls back to `clone`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use sha3::{Digest as _, Sha3_256};

use crate::syscalls;

/// `SECCOMP_RET_DATA` of a traced call.
pub(crate) const DATA_TRACE: u32 = 1;
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
}

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
        let compile = |error: seccompiler::BackendError| PolicyError::Compile(error.to_string());
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for name in allowed.iter().chain(&traced) {
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
        let arch = TargetArch::x86_64;
        let deny = SeccompAction::Trace(DATA_DENY);
        let allow = SeccompFilter::new(rules, deny, SeccompAction::Allow, arch).map_err(compile)?;
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
                let is = SeccompCondition::new(1, SeccompArgLen::Dword, SeccompCmpOp::Eq, request.into())
                    .map_err(compile)?;
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
        if !traced_rules.is_empty() {
            let trace = SeccompAction::Trace(DATA_TRACE);
            filters.push(SeccompFilter::new(traced_rules, SeccompAction::Allow, trace, arch).map_err(compile)?);
        }
        if allowed.iter().any(|name| name == "clone3") {
            let clone3 = BTreeMap::from([(syscalls::number("clone3").expect("known"), Vec::new())]);
            let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
            filters.push(SeccompFilter::new(clone3, SeccompAction::Allow, enosys, arch).map_err(compile)?);
        }
        filters.push(allow);
        let mut programs = Vec::new();
        for filter in filters {
            let mut program: BpfProgram = filter.try_into().map_err(compile)?;
            foreign_calls_to_supervisor(&mut program)?;
            programs.push(program);
        }
        Ok(Self { allowed, traced, digest: Sha3_256::digest(source.as_bytes()).into(), programs })
    }
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
    const BPF_RET_K: u16 = 0x06;
    const BPF_LD_W_ABS: u16 = 0x20;
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
}
