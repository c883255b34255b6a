//! Network partitions by address, with iptables rules in the host's own
//! network namespace: the loopback backend hooks the chain into `INPUT`
//! (every node has its own loopback address and dials its peers from it),
//! the Docker backend into `FORWARD` (containers on one bridge; the kernel's
//! bridge netfilter passes bridged packets through it). Clients dial from the
//! host's address, so each still reaches its node, as in Jepsen. All rules
//! live in one chain, `DOCKLOCK-JEPSEN`, removed when the [`Firewall`] drops
//! (also on error or panic); `docklock-jepsen clean` removes a chain left by
//! a run that was killed outright. (The network-namespace backend cuts links
//! inside each node's own namespace instead; see `network`.)

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// The harness's iptables chain.
pub const CHAIN: &str = "DOCKLOCK-JEPSEN";

/// Built-in chains a run may hook [`CHAIN`] into.
const HOOKS: [&str; 2] = ["INPUT", "FORWARD"];

/// Run iptables with `args`, in network namespace `netns` if given (a name
/// under `/run/netns`); its output, whatever the exit status.
pub fn iptables_in(netns: Option<&str>, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "iptables"]);
            command
        }
        None => Command::new("iptables"),
    };
    command.args(args).output().context("cannot run iptables (install it, and run as root)")
}

/// As [`iptables_in`], failing with iptables' message unless it succeeded.
pub fn iptables_ok_in(netns: Option<&str>, args: &[&str]) -> anyhow::Result<()> {
    let output = iptables_in(netns, args)?;
    if !output.status.success() {
        bail!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn iptables(args: &[&str]) -> anyhow::Result<std::process::Output> {
    iptables_in(None, args)
}

/// Whether a chain from an earlier run is still installed.
pub fn leftovers_present() -> anyhow::Result<bool> {
    Ok(iptables(&["-n", "-L", CHAIN])?.status.success())
}

/// Remove the chain and its jumps, whatever state they are in.
pub fn clean() -> anyhow::Result<()> {
    for hook in HOOKS {
        while iptables(&["-D", hook, "-j", CHAIN])?.status.success() {}
    }
    if leftovers_present()? {
        iptables_ok_in(None, &["-F", CHAIN])?;
        iptables_ok_in(None, &["-X", CHAIN])?;
    }
    Ok(())
}

/// Which built-in chain the rules hang off.
#[derive(Debug, Clone, Copy)]
pub enum Hook {
    /// Packets to this host's own addresses (loopback clusters).
    Input,
    /// Packets forwarded or bridged through this host (containers).
    Forward,
}

/// The installed chain; removed on drop.
pub struct Firewall {
    _private: (),
}

impl Firewall {
    /// Install the chain, first in `hook`. Refuses if one from an earlier run
    /// is present.
    pub fn install(hook: Hook) -> anyhow::Result<Self> {
        if leftovers_present()? {
            bail!("iptables chain {CHAIN} from an earlier run is present; run `docklock-jepsen clean` first");
        }
        iptables_ok_in(None, &["-N", CHAIN])?;
        let firewall = Self { _private: () };
        let hook = match hook {
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
        };
        iptables_ok_in(None, &["-I", hook, "1", "-j", CHAIN])?;
        Ok(firewall)
    }

    /// Drop every packet from `from` to `to`.
    pub fn cut(&self, from: Ipv4Addr, to: Ipv4Addr) -> anyhow::Result<()> {
        let (from, to) = (from.to_string(), to.to_string());
        iptables_ok_in(None, &["-A", CHAIN, "-s", &from, "-d", &to, "-j", "DROP"])
    }

    /// Send every packet within `subnet` (a /24) to netfilter queue `queue`
    /// (see `delay`); packets pass if no one reads the queue.
    pub fn queue(&self, subnet: Ipv4Addr, queue: u16) -> anyhow::Result<()> {
        let (net, queue) = (format!("{subnet}/24"), queue.to_string());
        let rule = ["-A", CHAIN, "-s", &net, "-d", &net, "-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"];
        iptables_ok_in(None, &rule)
    }

    /// Remove every rule (cuts and queues).
    pub fn heal(&self) -> anyhow::Result<()> {
        iptables_ok_in(None, &["-F", CHAIN])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(error) = clean() {
            eprintln!("warning: could not remove iptables chain {CHAIN}: {error:#}");
        }
    }
}
