//! Network partitions on loopback, with iptables.
//!
//! Every node of a local cluster has its own loopback address and dials its
//! peers from it, so dropping packets between two addresses cuts that link
//! in both directions for Raft and for forwarding, while clients (which dial
//! from 127.0.0.1) still reach their node. All rules live in one chain,
//! `DOCKLOCK-JEPSEN`, jumped to from INPUT; the chain is removed when the
//! [`Firewall`] drops (also on error or panic), and `docklock-jepsen clean`
//! removes a chain left by a run that was killed outright.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// The harness's iptables chain.
pub const CHAIN: &str = "DOCKLOCK-JEPSEN";

fn iptables(args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new("iptables").args(args).output().context("cannot run iptables (install it, and run as root)")
}

fn iptables_ok(args: &[&str]) -> anyhow::Result<()> {
    let output = iptables(args)?;
    if !output.status.success() {
        bail!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Whether a chain from an earlier run is still installed.
pub fn leftovers_present() -> anyhow::Result<bool> {
    Ok(iptables(&["-n", "-L", CHAIN])?.status.success())
}

/// Remove the chain and its jump, whatever state they are in.
pub fn clean() -> anyhow::Result<()> {
    while iptables(&["-D", "INPUT", "-j", CHAIN])?.status.success() {}
    if leftovers_present()? {
        iptables_ok(&["-F", CHAIN])?;
        iptables_ok(&["-X", CHAIN])?;
    }
    Ok(())
}

/// The installed chain; removed on drop.
pub struct Firewall {
    _private: (),
}

impl Firewall {
    /// Install the chain. Refuses if one from an earlier run is present.
    pub fn install() -> anyhow::Result<Self> {
        if leftovers_present()? {
            bail!("iptables chain {CHAIN} from an earlier run is present; run `docklock-jepsen clean` first");
        }
        iptables_ok(&["-N", CHAIN])?;
        let firewall = Self { _private: () };
        iptables_ok(&["-I", "INPUT", "-j", CHAIN])?;
        Ok(firewall)
    }

    /// Cut every link between a node of `one` and a node of `other`.
    pub fn partition(&self, one: &[Ipv4Addr], other: &[Ipv4Addr]) -> anyhow::Result<()> {
        for a in one {
            for b in other {
                for (from, to) in [(a, b), (b, a)] {
                    let (from, to) = (from.to_string(), to.to_string());
                    iptables_ok(&["-A", CHAIN, "-s", &from, "-d", &to, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }

    /// Restore every link.
    pub fn heal(&self) -> anyhow::Result<()> {
        iptables_ok(&["-F", CHAIN])
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        if let Err(error) = clean() {
            eprintln!("warning: could not remove iptables chain {CHAIN}: {error:#}");
        }
    }
}
