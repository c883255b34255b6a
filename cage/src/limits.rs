//! Resource limits of one run, set as rlimits in the cage, as cgroup limits
//! where available (memory, processes), and watched by the runner (wall
//! time, output bytes, `/out`) and the supervisor (events).

use std::fmt;

use serde::Serialize;

/// Largest value of any limit. Far above what a machine has (a memory limit
/// of 2^40 MiB), and low enough that no unit conversion of a limit
/// overflows: a limit is also read from a witness log, which anyone can write.
pub const LIMIT_MAX: u64 = 1 << 40;

/// Every limit of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Limits {
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_secs: u64,
    /// Wall-clock milliseconds, enforced by the runner.
    pub wall_ms: u64,
    /// Memory in MiB: each process's address space (RLIMIT_AS) and, where
    /// cgroups are available, the whole cage's memory.
    pub memory_mib: u64,
    /// Processes of the cage's user (RLIMIT_NPROC) and, where cgroups are
    /// available, of the whole cage, its keeper and init included.
    pub processes: u64,
    /// Open files (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Bytes written to stdout and stderr together, enforced by the runner.
    pub output_bytes: u64,
    /// Largest file the workload may write (RLIMIT_FSIZE).
    pub file_size_bytes: u64,
    /// Bytes the workload may leave in `/out` (a tmpfs of this size).
    pub out_bytes: u64,
    /// Events the supervisor records (traced calls answered, files
    /// witnessed), so the witness log stays bounded.
    pub events: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_secs: 60,
            wall_ms: 120_000,
            memory_mib: 1024,
            processes: 64,
            open_files: 256,
            output_bytes: 64 << 20,
            file_size_bytes: 64 << 20,
            out_bytes: 64 << 20,
            events: 100_000,
        }
    }
}

/// A limit by name, as verdicts and `--limit NAME=VALUE` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// CPU time.
    Cpu,
    /// Wall time.
    Wall,
    /// Memory.
    Memory,
    /// Processes.
    Processes,
    /// Open files.
    OpenFiles,
    /// Output bytes.
    Output,
    /// File size.
    FileSize,
    /// Bytes left in `/out`.
    OutBytes,
    /// Supervisor events.
    Events,
}

impl Limit {
    /// Every limit.
    pub const ALL: [Limit; 9] = [
        Limit::Cpu,
        Limit::Wall,
        Limit::Memory,
        Limit::Processes,
        Limit::OpenFiles,
        Limit::Output,
        Limit::FileSize,
        Limit::OutBytes,
        Limit::Events,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Cpu => "cpu-secs",
            Limit::Wall => "wall-ms",
            Limit::Memory => "memory-mib",
            Limit::Processes => "processes",
            Limit::OpenFiles => "open-files",
            Limit::Output => "output-bytes",
            Limit::FileSize => "file-size-bytes",
            Limit::OutBytes => "out-bytes",
            Limit::Events => "events",
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Limit::ALL
            .into_iter()
            .find(|limit| limit.name() == name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown limit {name:?}")))
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Limits {
    fn slot(&mut self, limit: Limit) -> &mut u64 {
        match limit {
            Limit::Cpu => &mut self.cpu_secs,
            Limit::Wall => &mut self.wall_ms,
            Limit::Memory => &mut self.memory_mib,
            Limit::Processes => &mut self.processes,
            Limit::OpenFiles => &mut self.open_files,
            Limit::Output => &mut self.output_bytes,
            Limit::FileSize => &mut self.file_size_bytes,
            Limit::OutBytes => &mut self.out_bytes,
            Limit::Events => &mut self.events,
        }
    }

    /// Apply `NAME=VALUE` (a positive integer).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (name, value) =
            assignment.split_once('=').ok_or_else(|| format!("limit {assignment:?} is not NAME=VALUE"))?;
        let limit = Limit::ALL.into_iter().find(|limit| limit.name() == name).ok_or_else(|| {
            let names: Vec<_> = Limit::ALL.iter().map(|l| l.name()).collect();
            format!("unknown limit {name:?} (limits: {})", names.join(", "))
        })?;
        let value: u64 = value.parse().map_err(|_| format!("limit {name} needs a positive integer, got {value:?}"))?;
        check_value(limit, value)?;
        *self.slot(limit) = value;
        Ok(())
    }

    /// Why these limits (from a spec, a witness log) cannot be used.
    pub fn check(&self) -> Result<(), String> {
        let mut copy = self.clone();
        Limit::ALL.into_iter().try_for_each(|limit| check_value(limit, *copy.slot(limit)))
    }

    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(1 << 20)
    }

    /// The limits as header text, in a fixed order.
    pub fn describe(&self) -> String {
        let mut copy = self.clone();
        Limit::ALL
            .iter()
            .map(|limit| format!("limit.{}={}", limit.name(), copy.slot(*limit)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn check_value(limit: Limit, value: u64) -> Result<(), String> {
    if !(1..=LIMIT_MAX).contains(&value) {
        return Err(format!("limit {limit} must be between 1 and {LIMIT_MAX}, got {value}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_limits() {
        let mut limits = Limits::default();
        limits.set("wall-ms=250").unwrap();
        assert_eq!(limits.wall_ms, 250);
        assert!(limits.set("wall-ms=0").is_err());
        assert!(limits.set("speed=3").is_err());
        assert!(limits.set("cpu-secs").is_err());
        assert!(limits.describe().contains("limit.wall-ms=250"));
        assert!(limits.set(&format!("memory-mib={}", LIMIT_MAX + 1)).is_err());
        assert_eq!(limits.check(), Ok(()));
        limits.memory_mib = u64::MAX;
        assert!(limits.check().unwrap_err().contains("limit memory-mib must be between 1 and"));
    }
}
