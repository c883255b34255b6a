//! Fault injection on a schedule drawn from the seed.
//!
//! Each cycle deals a fault from a shuffled deck of the configured ones and
//! picks its targets, injects it, holds it for part of
//! the interval and heals it; one fault is active at a time. Every action is
//! recorded in the history as the `nemesis` process (`invoke` when it
//! starts, `info` when it is done, with the targets or the error). At the end
//! everything is healed and every node is a member again, so the final state
//! of the cluster is reachable.

use std::str::FromStr;
use std::time::{Duration, Instant};

use docklock_node::launcher::LocalCluster;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::history::{Event, EventType, History, Process};
use crate::network::Backend;
use crate::TestConfig;

/// A fault the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 a random node, restart it later from its data directory.
    Kill,
    /// kill -9 the leader, restart it later.
    KillLeader,
    /// kill -9 a random majority, restart them later.
    KillMajority,
    /// SIGSTOP a random node, SIGCONT it later.
    Pause,
    /// SIGSTOP the leader, SIGCONT it later.
    PauseLeader,
    /// Cut the leader off from every other node, then heal.
    PartitionLeader,
    /// Split the nodes at random into a majority and a minority, then heal.
    PartitionHalves,
    /// Two halves that cannot talk, and one node that talks to both.
    PartitionBridge,
    /// Every node hears a majority, no two the same one (links one-way).
    PartitionRing,
    /// Delay (40 ± 20 ms) and drop (3%) packets between the nodes, then
    /// stop (emulated with a netfilter queue: see `delay`).
    Netem,
    /// Remove a random member and wipe it; later a fresh node (new id) joins
    /// at its address.
    MemberReplace,
    /// A fresh node (new id) joins; later it is removed.
    MemberGrow,
}

/// Every fault, in the order of [`Fault::name`]'s list.
pub const ALL_FAULTS: [Fault; 12] = [
    Fault::Kill,
    Fault::KillLeader,
    Fault::KillMajority,
    Fault::Pause,
    Fault::PauseLeader,
    Fault::PartitionLeader,
    Fault::PartitionHalves,
    Fault::PartitionBridge,
    Fault::PartitionRing,
    Fault::Netem,
    Fault::MemberReplace,
    Fault::MemberGrow,
];

impl FromStr for Fault {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ALL_FAULTS.into_iter().find(|fault| fault.name() == name).ok_or_else(|| {
            let known: Vec<&str> = ALL_FAULTS.iter().map(|fault| fault.name()).collect();
            format!("unknown fault {name:?}; known: {}, and the groups partition, membership, all", known.join(", "))
        })
    }
}

impl Fault {
    /// The fault's name on the command line and in the history.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::KillLeader => "kill-leader",
            Self::KillMajority => "kill-majority",
            Self::Pause => "pause",
            Self::PauseLeader => "pause-leader",
            Self::PartitionLeader => "partition-leader",
            Self::PartitionHalves => "partition-halves",
            Self::PartitionBridge => "partition-bridge",
            Self::PartitionRing => "partition-ring",
            Self::Netem => "netem",
            Self::MemberReplace => "member-replace",
            Self::MemberGrow => "member-grow",
        }
    }

    /// The history's name for the action that ends the fault.
    pub fn heal_name(self) -> &'static str {
        match self {
            Self::Kill | Self::KillLeader | Self::KillMajority => "start",
            Self::Pause | Self::PauseLeader => "resume",
            Self::PartitionLeader | Self::PartitionHalves | Self::PartitionBridge | Self::PartitionRing => "heal",
            Self::Netem => "netem-off",
            Self::MemberReplace => "member-join",
            Self::MemberGrow => "member-remove",
        }
    }

    /// Whether the fault cuts links.
    pub fn is_partition(self) -> bool {
        matches!(self, Self::PartitionLeader | Self::PartitionHalves | Self::PartitionBridge | Self::PartitionRing)
    }

    fn targets_leader(self) -> bool {
        matches!(self, Self::KillLeader | Self::PauseLeader | Self::PartitionLeader)
    }
}

fn record(history: &History, kind: EventType, f: &str, value: Value) {
    history.record(Event {
        index: 0,
        kind,
        f: f.to_owned(),
        key: None,
        value,
        process: Process::Nemesis("nemesis"),
        time: 0,
        node: None,
        error: None,
    });
}

async fn leader(cluster: &mut LocalCluster) -> Option<u64> {
    cluster.wait_for_leader(Duration::from_secs(5)).await.ok()
}

/// Both directions of every link between `one` and `other`.
fn cuts_between(one: &[u64], other: &[u64]) -> Vec<(u64, u64)> {
    one.iter().flat_map(|a| other.iter().flat_map(move |b| [(*a, *b), (*b, *a)])).collect()
}

/// The links a partition fault cuts, as `(to, from)` pairs.
fn partition_cuts(fault: Fault, ids: &[u64], leader: Option<u64>, rng: &mut StdRng) -> Vec<(u64, u64)> {
    let mut shuffled = ids.to_vec();
    shuffled.shuffle(rng);
    let n = shuffled.len();
    match fault {
        Fault::PartitionLeader => {
            let Some(leader) = leader else { return Vec::new() };
            let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
            cuts_between(&[leader], &others)
        }
        Fault::PartitionHalves => cuts_between(&shuffled[..n / 2], &shuffled[n / 2..]),
        Fault::PartitionBridge => cuts_between(&shuffled[..n / 2], &shuffled[n / 2 + 1..]),
        Fault::PartitionRing => {
            // The node at ring position p hears positions p .. p+majority-1.
            let majority = n / 2 + 1;
            let mut cuts = Vec::new();
            for (position, to) in shuffled.iter().enumerate() {
                for offset in majority..n {
                    cuts.push((*to, shuffled[(position + offset) % n]));
                }
            }
            cuts
        }
        _ => Vec::new(),
    }
}

/// Attempts of a membership change before the nemesis gives up on it.
const MEMBERSHIP_ATTEMPTS: u32 = 5;

/// Remove node `id` from the membership, retrying while a leader changes;
/// its role just before (`voter`, `learner`, or `unknown` if no status was
/// read): a fresh node may not have been promoted yet.
async fn remove_member(cluster: &LocalCluster, id: u64) -> anyhow::Result<&'static str> {
    let client = cluster.client()?;
    let role = match client.status().await {
        Ok(status) => match status.members.iter().find(|m| m.id == id) {
            Some(m) if m.role == docklock_proto::v1::MemberRole::Voter as i32 => "voter",
            Some(_) => "learner",
            None => "absent",
        },
        Err(_) => "unknown",
    };
    let mut last = None;
    for _ in 0..MEMBERSHIP_ATTEMPTS {
        match client.remove(id).await {
            Ok(_) => return Ok(role),
            Err(status) => last = Some(status),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("removing node {id} failed: {last:?}")
}

/// Wait (bounded) until every node of `cluster` is a voter and no one else
/// is; the runs' final checks read every node.
async fn await_membership(cluster: &LocalCluster, timeout: Duration) -> anyhow::Result<()> {
    let client = cluster.client()?;
    let deadline = Instant::now() + timeout;
    let wanted: Vec<u64> = cluster.nodes.keys().copied().collect();
    loop {
        let voters: Result<Vec<u64>, _> = client.status().await.map(|status| {
            let mut voters: Vec<u64> = status
                .members
                .iter()
                .filter(|m| m.role == docklock_proto::v1::MemberRole::Voter as i32)
                .map(|m| m.id)
                .collect();
            voters.sort_unstable();
            voters
        });
        if voters.as_ref().is_ok_and(|voters| *voters == wanted) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the voters are {voters:?}, not every node {wanted:?}, after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The nemesis's state: the fault it holds and what healing it needs.
struct Nemesis<'a> {
    backend: &'a mut Backend,
    rng: StdRng,
    /// The next fresh node id.
    next_id: u64,
}

/// What an injected fault left to heal.
enum Held {
    Nothing,
    Killed(Vec<u64>),
    Paused(u64),
    Partitioned,
    Netem,
    /// A node was removed; a fresh one joins at this address.
    Removed(String),
    /// This fresh node joined; it is removed at the heal.
    Joined(u64),
}

impl Nemesis<'_> {
    async fn inject(&mut self, cluster: &mut LocalCluster, fault: Fault) -> anyhow::Result<(Held, Value)> {
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        let random = *ids.choose(&mut self.rng).expect("a cluster has nodes");
        let leader = if fault.targets_leader() { leader(cluster).await } else { None };
        if fault.targets_leader() && leader.is_none() {
            return Ok((Held::Nothing, json!({"skipped": "no leader"})));
        }
        let target = leader.unwrap_or(random);
        match fault {
            Fault::Kill | Fault::KillLeader => {
                self.backend.kill(cluster, target)?;
                Ok((Held::Killed(vec![target]), json!([target])))
            }
            Fault::KillMajority => {
                let mut victims = ids.clone();
                victims.shuffle(&mut self.rng);
                victims.truncate(ids.len() / 2 + 1);
                victims.sort_unstable();
                for id in &victims {
                    self.backend.kill(cluster, *id)?;
                }
                Ok((Held::Killed(victims.clone()), json!(victims)))
            }
            Fault::Pause | Fault::PauseLeader => {
                self.backend.signal(cluster, target, Signal::SIGSTOP)?;
                Ok((Held::Paused(target), json!([target])))
            }
            Fault::PartitionLeader | Fault::PartitionHalves | Fault::PartitionBridge | Fault::PartitionRing => {
                let cuts = partition_cuts(fault, &ids, leader, &mut self.rng);
                self.backend.cut(cluster, &cuts)?;
                let grudge: Vec<String> = cuts.iter().map(|(to, from)| format!("{from}->{to}")).collect();
                Ok((Held::Partitioned, json!({ "dropped": grudge })))
            }
            Fault::Netem => {
                self.backend.start_delay(self.rng.gen())?;
                let impairment = crate::delay::IMPAIRMENT;
                Ok((
                    Held::Netem,
                    json!({
                        "delay_ms": impairment.delay.as_millis(),
                        "jitter_ms": impairment.jitter.as_millis(),
                        "loss_per_mille": impairment.loss_per_mille,
                    }),
                ))
            }
            Fault::MemberReplace => {
                let role = remove_member(cluster, target).await?;
                self.backend.kill(cluster, target)?;
                let node = cluster.forget(target)?;
                std::fs::remove_dir_all(&node.data_dir).ok();
                Ok((Held::Removed(node.addr), json!({ "removed": target, "was": role })))
            }
            Fault::MemberGrow => {
                let id = self.fresh_id();
                cluster.add_joining_node(id)?;
                Ok((Held::Joined(id), json!({ "joined": id })))
            }
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn heal(&mut self, cluster: &mut LocalCluster, held: Held) -> anyhow::Result<Value> {
        match held {
            Held::Nothing => Ok(Value::Null),
            Held::Killed(ids) => {
                for id in &ids {
                    cluster.start(*id)?;
                }
                Ok(json!(ids))
            }
            Held::Paused(id) => {
                self.backend.signal(cluster, id, Signal::SIGCONT)?;
                Ok(json!([id]))
            }
            Held::Partitioned => {
                self.backend.heal()?;
                Ok(Value::Null)
            }
            Held::Netem => {
                let counts = self.backend.stop_delay()?;
                Ok(json!({ "delayed": counts.delayed, "dropped": counts.dropped }))
            }
            Held::Removed(addr) => {
                let id = self.fresh_id();
                cluster.add_joining_node_at(id, addr.clone())?;
                Ok(json!({ "joined": id, "at": addr }))
            }
            Held::Joined(id) => {
                let role = remove_member(cluster, id).await?;
                self.backend.kill(cluster, id)?;
                let node = cluster.forget(id)?;
                std::fs::remove_dir_all(&node.data_dir).ok();
                Ok(json!({ "removed": id, "was": role }))
            }
        }
    }
}

/// Record `f` as invoked, run it, and record its outcome (the error, if it
/// failed); whether it succeeded.
async fn act<F>(history: &History, f: &str, action: F) -> bool
where
    F: std::future::Future<Output = anyhow::Result<Value>>,
{
    record(history, EventType::Invoke, f, Value::Null);
    match action.await {
        Ok(value) => {
            record(history, EventType::Info, f, value);
            true
        }
        Err(error) => {
            record(history, EventType::Info, f, json!({ "error": format!("{error:#}") }));
            false
        }
    }
}

/// Run the schedule until `deadline`, then heal and wait for every node to
/// be a voter; returns the cluster.
pub async fn run(
    mut cluster: LocalCluster,
    backend: &mut Backend,
    config: &TestConfig,
    history: &History,
    deadline: Instant,
) -> anyhow::Result<LocalCluster> {
    let next_id = cluster.nodes.keys().max().copied().unwrap_or(0) + 1;
    let mut nemesis = Nemesis { backend, rng: StdRng::seed_from_u64(config.seed), next_id };
    let mut deck: Vec<Fault> = Vec::new();
    // Let the workload run unfaulted for a moment first.
    tokio::time::sleep(config.nemesis_interval / 2).await;
    while !config.faults.is_empty() && Instant::now() + config.nemesis_interval < deadline {
        // Faults are dealt from a shuffled deck, so that every fault of a
        // combined schedule comes up once in each round of them.
        if deck.is_empty() {
            deck = config.faults.clone();
            deck.shuffle(&mut nemesis.rng);
        }
        let fault = deck.pop().expect("faults is not empty");
        let hold = config.nemesis_interval.mul_f64(nemesis.rng.gen_range(0.3..0.7));
        record(history, EventType::Invoke, fault.name(), Value::Null);
        let held = match nemesis.inject(&mut cluster, fault).await {
            Ok((held, value)) => {
                record(history, EventType::Info, fault.name(), value);
                held
            }
            Err(error) => {
                // A fault that could not be injected (say, a membership
                // change refused during an election) is recorded, not fatal.
                record(history, EventType::Info, fault.name(), json!({ "error": format!("{error:#}") }));
                Held::Nothing
            }
        };
        tokio::time::sleep(hold).await;
        if !matches!(held, Held::Nothing) && !act(history, fault.heal_name(), nemesis.heal(&mut cluster, held)).await {
            eprintln!("warning: healing {} failed; see the history", fault.name());
        }
        tokio::time::sleep(config.nemesis_interval.saturating_sub(hold)).await;
    }
    if let Some(left) = deadline.checked_duration_since(Instant::now()) {
        tokio::time::sleep(left).await;
    }
    if config.faults.iter().any(|fault| matches!(fault, Fault::MemberReplace | Fault::MemberGrow)) {
        let settled = async { await_membership(&cluster, Duration::from_secs(30)).await.map(|()| Value::Null) };
        if !act(history, "await-membership", settled).await {
            eprintln!("warning: not every node is a voter at the end; see the history");
        }
    }
    Ok(cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard_by(cuts: &[(u64, u64)], ids: &[u64]) -> std::collections::BTreeMap<u64, Vec<u64>> {
        ids.iter().map(|to| (*to, ids.iter().copied().filter(|from| !cuts.contains(&(*to, *from))).collect())).collect()
    }

    #[test]
    fn ring_gives_every_node_a_different_majority() {
        for n in [3_u64, 5, 7] {
            let ids: Vec<u64> = (1..=n).collect();
            let cuts = partition_cuts(Fault::PartitionRing, &ids, None, &mut StdRng::seed_from_u64(n));
            let heard = heard_by(&cuts, &ids);
            let majorities: std::collections::BTreeSet<&Vec<u64>> = heard.values().collect();
            assert_eq!(majorities.len(), ids.len(), "{heard:?}");
            for (to, hears) in &heard {
                assert_eq!(hears.len() as u64, n / 2 + 1, "node {to} hears {hears:?}");
                assert!(hears.contains(to));
            }
        }
    }

    #[test]
    fn bridge_leaves_one_node_hearing_both_halves() {
        let ids: Vec<u64> = (1..=5).collect();
        let cuts = partition_cuts(Fault::PartitionBridge, &ids, None, &mut StdRng::seed_from_u64(3));
        let heard = heard_by(&cuts, &ids);
        let bridges: Vec<u64> = heard.iter().filter(|(_, hears)| hears.len() == 5).map(|(id, _)| *id).collect();
        assert_eq!(bridges.len(), 1, "{heard:?}");
        for (id, hears) in &heard {
            if *id != bridges[0] {
                assert_eq!(hears.len(), 3, "a side of two plus the bridge: {heard:?}");
            }
        }
    }

    #[test]
    fn halves_and_leader_partitions_are_symmetric() {
        let ids: Vec<u64> = (1..=5).collect();
        for (fault, leader) in [(Fault::PartitionHalves, None), (Fault::PartitionLeader, Some(2))] {
            let cuts = partition_cuts(fault, &ids, leader, &mut StdRng::seed_from_u64(9));
            assert!(!cuts.is_empty());
            assert!(cuts.iter().all(|(a, b)| cuts.contains(&(*b, *a))), "{fault:?}: {cuts:?}");
        }
        let isolated = partition_cuts(Fault::PartitionLeader, &ids, Some(2), &mut StdRng::seed_from_u64(9));
        assert_eq!(heard_by(&isolated, &ids)[&2], vec![2]);
    }

    #[test]
    fn every_fault_name_parses_back() {
        for fault in ALL_FAULTS {
            assert_eq!(fault.name().parse::<Fault>(), Ok(fault));
        }
        assert!("nope".parse::<Fault>().unwrap_err().contains("member-grow"));
    }
}
