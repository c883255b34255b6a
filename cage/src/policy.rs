//! The seccomp policy: reviewed data (`policy/*.policy`), compiled with
//! `seccompiler` into BPF programs that the workload installs right before
//! `execve`.
//!
//! Default deny: any call the policy does not allow kills the workload
//! (verdict `policy-violation`), as does any other architecture; x32 calls
//! carry a high bit in their number, so they match nothing and are killed
//! too. Two adjustments in code, each stricter than the list: `clone` is
//! allowed only without namespace flags (no nested user namespaces), and
//! `clone3`, whose flags sit in memory a filter cannot read, fails with
//! `ENOSYS` so libc falls back to `clone`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};
use sha3::{Digest as _, Sha3_256};

use crate::syscalls;

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
    /// SHA3-256 of the policy source (recorded in the witness header).
    pub digest: [u8; 32],
    /// The BPF programs, installed in order (the allowlist last).
    pub programs: Vec<BpfProgram>,
}

/// Why a policy does not compile.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A line is not `allow NAME  # reason`.
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
        let mut allowed = Vec::new();
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
                (Some("allow"), Some(name), None) => {
                    syscalls::number(name).ok_or_else(|| syntax(format!("unknown system call {name:?}")))?;
                    if allowed.iter().any(|a| a == name) {
                        return Err(syntax(format!("{name} is listed twice")));
                    }
                    allowed.push(name.to_owned());
                }
                _ => return Err(syntax(format!("expected `allow NAME  # reason`, got {rule:?}"))),
            }
        }
        let compile = |error: seccompiler::BackendError| PolicyError::Compile(error.to_string());
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for name in &allowed {
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
        let allow =
            SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch).map_err(compile)?;
        // The allowlist goes last: once it is installed, `seccomp` itself
        // is denied.
        let mut programs: Vec<BpfProgram> = Vec::new();
        if allowed.iter().any(|name| name == "clone3") {
            let clone3 = BTreeMap::from([(syscalls::number("clone3").expect("known"), Vec::new())]);
            let enosys =
                SeccompFilter::new(clone3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), arch)
                    .map_err(compile)?;
            programs.push(enosys.try_into().map_err(compile)?);
        }
        programs.push(allow.try_into().map_err(compile)?);
        Ok(Self { allowed, digest: Sha3_256::digest(source.as_bytes()).into(), programs })
    }
}

type SeccompArgLen = SeccompCmpArgLen;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_compiles() {
        let policy = Policy::compile(DEFAULT).unwrap();
        assert!(policy.allowed.iter().any(|name| name == "execve"));
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
    }
}
