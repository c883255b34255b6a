//! What a run leaves behind if it is killed outright (kill -9 of the
//! harness): agent processes, the iptables chain, network namespaces,
//! containers, their network and image. Agents started by the harness carry
//! [`RUN_TAG`] in their environment (in a container too: the host sees its
//! processes), and everything else carries the harness's name prefix or
//! label, so all of it can be found and removed later without any
//! bookkeeping file.

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{firewall, network};

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
    found.extend(network::leftover_namespaces().into_iter().map(|name| format!("network namespace {name}")));
    found.extend(network::leftover_docker().into_iter().map(|what| format!("docker {what}")));
    Ok(found)
}

/// Kill leftover agents, remove the chain, the namespaces and the Docker
/// objects.
pub fn clean() -> anyhow::Result<()> {
    for pid in tagged_agents() {
        // It may have exited since it was listed.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    firewall::clean().context("removing the iptables chain")?;
    network::clean().context("removing network namespaces and docker objects")
}
