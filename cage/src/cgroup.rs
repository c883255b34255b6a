//! Per-run control groups: the kernel bounds the memory and the number of
//! processes of the whole cage (rlimits, which are set always, bound each
//! process alone).
//!
//! cgroup v2 is used where the runner's own cgroup can delegate `memory`
//! and `pids` to a child; otherwise the v1 `memory` and `pids` hierarchies
//! where they are mounted and writable (as on hosts that still run v1 or a
//! hybrid layout); otherwise none, and the witness header says which, so
//! two runs are only compared under the same enforcement.
//! A run can go without them (`RunSpec::cgroups`, `docklock cage run
//! --no-cgroups`). On v1 the keeper moves itself in, which is cheap; on v2
//! the runner moves it, which waits for an RCU grace period (`self_join`).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::limits::{Limit, Limits};

/// Which cgroup enforcement a run has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforcement {
    /// Unified hierarchy.
    V2,
    /// Separate `memory` and `pids` hierarchies.
    V1,
    /// None available: rlimits only.
    None,
}

impl Enforcement {
    /// Its name in the witness header.
    pub fn name(self) -> &'static str {
        match self {
            Enforcement::V2 => "v2",
            Enforcement::V1 => "v1",
            Enforcement::None => "none",
        }
    }
}

/// One run's cgroup (a directory per hierarchy), removed when dropped.
pub(crate) struct Cgroup {
    version: Enforcement,
    memory: PathBuf,
    pids: PathBuf,
}

impl Cgroup {
    /// Create a cgroup for one run with `limits`, or `None` where none can
    /// be made.
    pub(crate) fn create(limits: &Limits) -> Option<Self> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let name = format!("docklock-cage-{}-{}", std::process::id(), RUNS.fetch_add(1, Ordering::Relaxed));
        let memory_bytes = limits.memory_bytes().to_string();
        // The cage's keeper and init count too: the workload has two fewer,
        // so the kernel reports the bound here before RLIMIT_NPROC hits.
        let pids = limits.processes.to_string();
        let mounts = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let own = fs::read_to_string("/proc/self/cgroup").ok()?;
        if let Some(dir) = v2_dir(&mounts, &own, &name) {
            let cgroup = Cgroup { version: Enforcement::V2, memory: dir.clone(), pids: dir };
            let set = fs::write(cgroup.memory.join("memory.max"), &memory_bytes)
                .and_then(|()| fs::write(cgroup.memory.join("memory.swap.max"), "0").or(Ok(())))
                .and_then(|()| fs::write(cgroup.pids.join("pids.max"), &pids));
            return set.is_ok().then_some(cgroup);
        }
        let memory = v1_dir(&mounts, &own, "memory", &name)?;
        let pids_dir = match v1_dir(&mounts, &own, "pids", &name) {
            Some(dir) => dir,
            None => {
                let _ = fs::remove_dir(&memory);
                return None;
            }
        };
        let cgroup = Cgroup { version: Enforcement::V1, memory, pids: pids_dir };
        let set = fs::write(cgroup.memory.join("memory.limit_in_bytes"), &memory_bytes)
            // No swap either, where the kernel accounts it.
            .and_then(|()| fs::write(cgroup.memory.join("memory.memsw.limit_in_bytes"), &memory_bytes).or(Ok(())))
            .and_then(|()| fs::write(cgroup.pids.join("pids.max"), &pids));
        set.is_ok().then_some(cgroup)
    }

    /// The enforcement this cgroup gives.
    pub(crate) fn version(&self) -> Enforcement {
        self.version
    }

    /// The files a single-threaded process writes "0" to, to move itself
    /// into this cgroup: v1's `tasks`, or `None` on v2 (whose `tasks`
    /// counterpart cannot cross domains), where `add` is the way in.
    ///
    /// Why the keeper moves itself: a write of any other pid to
    /// `cgroup.procs` takes the kernel's global threadgroup lock for
    /// writing, which waits for an RCU grace period once the lock has been
    /// idle (measured 6-11 ms on the VMs here, more than the rest of a
    /// run), while a thread moving itself through `tasks` skips that lock
    /// (`cgroup_procs_write_start`, kernel 5.x and later): about 0.05 ms.
    pub(crate) fn self_join(&self) -> Option<io::Result<Vec<CString>>> {
        (self.version == Enforcement::V1)
            .then(|| self.dirs().map(|dir| crate::sandbox::cstring(dir.join("tasks").as_os_str().as_bytes())).collect())
    }

    /// Move `pid` (the keeper, before it forks) into the cgroup.
    pub(crate) fn add(&self, pid: libc::pid_t) -> io::Result<()> {
        self.dirs().try_for_each(|dir| fs::write(dir.join("cgroup.procs"), pid.to_string()))
    }

    /// The run's directories: one on v2, the memory and the pids one on v1.
    fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.memory.as_path()).chain((self.pids != self.memory).then_some(self.pids.as_path()))
    }

    /// Which limit the kernel enforced during the run, if any: an OOM kill
    /// (memory), or a fork refused at `pids.max` (processes).
    pub(crate) fn exceeded(&self) -> Option<Limit> {
        let (file, key) = if self.version == Enforcement::V2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        if counter(&self.memory.join(file), key) > 0 {
            return Some(Limit::Memory);
        }
        (counter(&self.pids.join("pids.events"), "max") > 0).then_some(Limit::Processes)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Every process of the run has been reaped by now; a cgroup frees
        // its last task asynchronously, so allow a few short retries.
        for dir in self.dirs() {
            for _ in 0..50 {
                if !dir.exists() || fs::remove_dir(dir).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

/// `key value` lines: the value of `key`, 0 if absent.
fn counter(path: &Path, key: &str) -> u64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()))
        .unwrap_or(0)
}

/// A fresh child of our v2 cgroup with `memory` and `pids` delegated.
fn v2_dir(mounts: &str, own: &str, name: &str) -> Option<PathBuf> {
    let mount = mount_point(mounts, |fstype, _| fstype == "cgroup2")?;
    let path = own.lines().find_map(|line| line.strip_prefix("0::"))?;
    let parent = mount.join(path.trim_start_matches('/'));
    let delegated = fs::read_to_string(parent.join("cgroup.subtree_control")).ok()?;
    let has = |controller: &str| delegated.split_whitespace().any(|c| c == controller);
    if !(has("memory") && has("pids")) {
        return None;
    }
    let dir = parent.join(name);
    fs::create_dir(&dir).ok()?;
    Some(dir)
}

/// A fresh child of our cgroup in the v1 hierarchy of `controller`.
fn v1_dir(mounts: &str, own: &str, controller: &str, name: &str) -> Option<PathBuf> {
    let mount = mount_point(mounts, |fstype, options| {
        fstype == "cgroup" && options.split(',').any(|option| option == controller)
    })?;
    let path = own.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })?;
    let dir = mount.join(path.trim_start_matches('/')).join(name);
    fs::create_dir(&dir).ok()?;
    Some(dir)
}

/// The mount point of the first mount whose filesystem type and super
/// options satisfy `wanted` (mountinfo: fields, ` - `, type, source, options).
fn mount_point(mounts: &str, wanted: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let (fstype, _source, options) = (right.next()?, right.next()?, right.next().unwrap_or(""));
        if !wanted(fstype, options) {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
43 31 0:40 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids";

    #[test]
    fn finds_mount_points_and_counters() {
        assert_eq!(mount_point(MOUNTS, |t, _| t == "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let pids = mount_point(MOUNTS, |t, o| t == "cgroup" && o.split(',').any(|x| x == "pids"));
        assert_eq!(pids, Some(PathBuf::from("/sys/fs/cgroup/pids")));
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        fs::write(&events, "low 0\nmax 3\noom_kill 1\n").unwrap();
        assert_eq!(counter(&events, "max"), 3);
        assert_eq!(counter(&events, "oom_kill"), 1);
        assert_eq!(counter(&events, "oom"), 0, "a prefix of another key is not the key");
    }
}
