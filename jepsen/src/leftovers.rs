//! What a run leaves behind if it is killed outright (kill -9 of the
//! harness): agent processes and the iptables chain. Agents started by the
//! harness carry [`RUN_TAG`] in their environment, so they can be found and
//! killed later without any bookkeeping file.

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::firewall;

/// Environment variable that marks an agent started by the harness.
pub const RUN_TAG: &str = "DOCKLOCK_JEPSEN_RUN";

/// Process ids of running agents started by the harness.
pub fn tagged_agents() -> Vec<i32> {
    let needle = format!("{RUN_TAG}=");
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|b| *b == 0).any(|var| var.starts_with(needle.as_bytes())))
        })
        .collect()
}

/// A description of every leftover, empty if there are none.
pub fn describe() -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let agents = tagged_agents();
    if !agents.is_empty() {
        found.push(format!("agent processes {agents:?}"));
    }
    if firewall::leftovers_present()? {
        found.push(format!("iptables chain {}", firewall::CHAIN));
    }
    Ok(found)
}

/// Kill leftover agents and remove the chain.
pub fn clean() -> anyhow::Result<()> {
    for pid in tagged_agents() {
        // It may have exited since it was listed.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    firewall::clean().context("removing the iptables chain")
}
