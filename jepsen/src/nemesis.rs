//! Fault injection by process control, on a schedule drawn from the seed.
//!
//! Each cycle picks a fault and a target, injects it, holds it for part of
//! the interval and heals it. Every action is recorded in the history as the
//! `nemesis` process (`invoke` when it starts, `info` when it is done). At the
//! end everything is healed, so the final state of the cluster is reachable.

use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use docklock_node::launcher::LocalCluster;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::firewall::Firewall;
use crate::history::{Event, EventType, History, Process};
use crate::TestConfig;

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 a random node, restart it later from its data directory.
    Kill,
    /// kill -9 the leader, restart it later.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT it later.
    Pause,
    /// SIGSTOP the leader, SIGCONT it later.
    PauseLeader,
    /// Cut the leader off from every other node, then heal.
    PartitionLeader,
    /// Split the nodes at random into a majority and a minority, then heal.
    PartitionHalves,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "kill" => Ok(Self::Kill),
            "kill-leader" => Ok(Self::KillLeader),
            "pause" => Ok(Self::Pause),
            "pause-leader" => Ok(Self::PauseLeader),
            "partition-leader" => Ok(Self::PartitionLeader),
            "partition-halves" => Ok(Self::PartitionHalves),
            other => Err(format!(
                "unknown fault {other:?}; known: kill, kill-leader, pause, pause-leader, partition-leader, \
                 partition-halves"
            )),
        }
    }
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::KillLeader => "kill-leader",
            Self::Pause => "pause",
            Self::PauseLeader => "pause-leader",
            Self::PartitionLeader => "partition-leader",
            Self::PartitionHalves => "partition-halves",
        }
    }

    /// Whether the fault needs the firewall.
    pub fn is_partition(self) -> bool {
        matches!(self, Self::PartitionLeader | Self::PartitionHalves)
    }
}

fn record(history: &History, kind: EventType, f: &str, node: Option<u64>) {
    history.record(Event {
        index: 0,
        kind,
        f: f.to_owned(),
        key: None,
        value: json!(node),
        process: Process::Nemesis("nemesis"),
        time: 0,
        node: None,
        error: None,
    });
}

fn signal(cluster: &LocalCluster, node: u64, sig: Signal) -> anyhow::Result<()> {
    if let Some(pid) = cluster.nodes[&node].pid() {
        kill(Pid::from_raw(i32::try_from(pid)?), sig)?;
    }
    Ok(())
}

async fn leader(cluster: &mut LocalCluster) -> Option<u64> {
    cluster.wait_for_leader(Duration::from_secs(5)).await.ok()
}

/// The two sides of a partition: `isolated` alone or a random minority.
fn sides(
    cluster: &LocalCluster,
    isolated: Option<u64>,
    rng: &mut StdRng,
) -> anyhow::Result<(Vec<Ipv4Addr>, Vec<Ipv4Addr>)> {
    let mut ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let minority: Vec<u64> = match isolated {
        Some(node) => vec![node],
        None => {
            ids.shuffle(rng);
            ids[..ids.len() / 2].to_vec()
        }
    };
    let mut one = Vec::new();
    let mut other = Vec::new();
    for id in cluster.nodes.keys() {
        let ip = cluster.ip(*id)?;
        if minority.contains(id) {
            one.push(ip);
        } else {
            other.push(ip);
        }
    }
    Ok((one, other))
}

/// Run the schedule until `deadline`, then heal; returns the cluster.
pub async fn run(
    mut cluster: LocalCluster,
    config: &TestConfig,
    history: &History,
    deadline: Instant,
) -> anyhow::Result<LocalCluster> {
    let firewall =
        if config.faults.iter().any(|fault| fault.is_partition()) { Some(Firewall::install()?) } else { None };
    let mut rng = StdRng::seed_from_u64(config.seed);
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    // Let the workload run unfaulted for a moment first.
    tokio::time::sleep(config.nemesis_interval / 2).await;
    while !config.faults.is_empty() && Instant::now() + config.nemesis_interval < deadline {
        let fault = *config.faults.choose(&mut rng).expect("faults is not empty");
        let random_node = *ids.choose(&mut rng).expect("a cluster has nodes");
        let hold = config.nemesis_interval.mul_f64(rng.gen_range(0.3..0.7));
        let target = match fault {
            Fault::Kill | Fault::Pause | Fault::PartitionHalves => Some(random_node),
            Fault::KillLeader | Fault::PauseLeader | Fault::PartitionLeader => leader(&mut cluster).await,
        };
        let Some(target) = target else {
            tokio::time::sleep(config.nemesis_interval).await;
            continue;
        };
        record(history, EventType::Invoke, fault.name(), Some(target));
        match fault {
            Fault::Kill | Fault::KillLeader => cluster.kill(target)?,
            Fault::Pause | Fault::PauseLeader => signal(&cluster, target, Signal::SIGSTOP)?,
            Fault::PartitionLeader | Fault::PartitionHalves => {
                let isolated = (fault == Fault::PartitionLeader).then_some(target);
                let (one, other) = sides(&cluster, isolated, &mut rng)?;
                firewall.as_ref().expect("installed for partitions").partition(&one, &other)?;
            }
        }
        record(history, EventType::Info, fault.name(), Some(target));
        tokio::time::sleep(hold).await;
        let heal = match fault {
            Fault::Kill | Fault::KillLeader => "start",
            Fault::Pause | Fault::PauseLeader => "resume",
            Fault::PartitionLeader | Fault::PartitionHalves => "heal",
        };
        record(history, EventType::Invoke, heal, Some(target));
        match fault {
            Fault::Kill | Fault::KillLeader => cluster.start(target)?,
            Fault::Pause | Fault::PauseLeader => signal(&cluster, target, Signal::SIGCONT)?,
            Fault::PartitionLeader | Fault::PartitionHalves => {
                firewall.as_ref().expect("installed for partitions").heal()?;
            }
        }
        record(history, EventType::Info, heal, Some(target));
        tokio::time::sleep(config.nemesis_interval.saturating_sub(hold)).await;
    }
    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    Ok(cluster)
}
