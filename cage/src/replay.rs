//! Replay: the run a witness log describes, rebuilt from its header, and
//! the first place two witness logs differ.
//!
//! The header is `key=value` lines in a fixed order; values escape `\`
//! and newlines (`\\`, `\n`), so an argument cannot forge a header line.

use std::path::PathBuf;

use crate::limits::Limits;
use crate::rootfs::Rootfs;
use crate::run::RunSpec;
use crate::witness::Record;

/// A header value with `\` and newlines escaped.
pub(crate) fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// What a witness header says about the run, enough to run it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The program path inside the cage.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its environment (as given, `TZ` aside).
    pub env: Vec<(String, String)>,
    /// The limits.
    pub limits: Limits,
    /// The seed.
    pub seed: [u8; 32],
    /// The root filesystem: `host`, or its kind and digest.
    pub rootfs: String,
    /// Whether a cgroup bounded it.
    pub cgroups: bool,
}

/// Read a witness header.
pub fn parse_header(header: &str) -> Result<Recorded, String> {
    let mut recorded = Recorded {
        program: String::new(),
        args: Vec::new(),
        env: Vec::new(),
        limits: Limits::default(),
        seed: [0; 32],
        rootfs: String::new(),
        cgroups: false,
    };
    for line in header.lines() {
        let (key, value) = line.split_once('=').ok_or_else(|| format!("header line {line:?} is not key=value"))?;
        let value = unescape(value);
        match key {
            "program" => recorded.program = value,
            "rootfs" => recorded.rootfs = value,
            "cgroup" => recorded.cgroups = value != "none",
            "seed" => {
                recorded.seed = hex::decode(&value)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| format!("seed {value:?} is not 32 bytes of hex"))?;
            }
            _ if key.starts_with("arg.") => recorded.args.push(value),
            _ if key.starts_with("env.") => recorded.env.push((unescape(&key["env.".len()..]), value)),
            _ if key.starts_with("limit.") => recorded.limits.set(&format!("{}={value}", &key["limit.".len()..]))?,
            _ => {} // cage version and policy: compared, not needed to run
        }
    }
    if recorded.program.is_empty() {
        return Err("the header names no program".into());
    }
    Ok(recorded)
}

impl Recorded {
    /// The spec to run it again with `inputs`, `rootfs` and `cache`.
    pub fn spec(&self, inputs: Vec<(String, PathBuf)>, rootfs: Rootfs, cache: PathBuf) -> RunSpec {
        RunSpec {
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            inputs,
            limits: self.limits.clone(),
            seed: self.seed,
            stage_parent: None,
            rootfs,
            cache,
            cgroups: self.cgroups,
        }
    }
}

/// The index of the first record where two logs differ (a missing record
/// counts), or `None` if they are the same.
pub fn first_difference(recorded: &[Record], replayed: &[Record]) -> Option<usize> {
    let common = recorded.iter().zip(replayed).position(|(a, b)| a.encode() != b.encode());
    common.or_else(|| (recorded.len() != replayed.len()).then(|| recorded.len().min(replayed.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_newlines_and_backslashes_round_trip() {
        for value in ["plain", "two\nlines", "back\\slash", "\\n literally", "end\\"] {
            assert_eq!(unescape(&escape(value)), value);
            assert!(!escape(value).contains('\n'));
        }
    }

    #[test]
    fn differences_are_found() {
        let a = vec![Record::Header("h".into()), Record::Stdout(b"x".to_vec())];
        let b = vec![Record::Header("h".into()), Record::Stdout(b"y".to_vec())];
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(first_difference(&a, &b), Some(1));
        assert_eq!(first_difference(&a, &a[..1]), Some(1));
    }
}
