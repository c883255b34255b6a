//! `docklock-jepsen`: a black-box chaos harness for DockLock.
//!
//! Owns: cluster control for tests (real `docklock agent` processes, started
//! through `docklock_node::launcher`), nemeses (fault injection by process
//! control), workloads (clients over the public gRPC API only), the history
//! (Jepsen's format) and the checkers.
//!
//! Must not: use anything of a node but its public gRPC API and its process;
//! send traffic anywhere but the cluster's own loopback addresses.
//!
//! Entry points: [`run`] with a [`TestConfig`]; [`checker::check`].
//!
//! Status: the loopback backend (one loopback address per node, partitions
//! by iptables), kill / pause / partition nemeses and the `register`
//! workload. Network-namespace and Docker backends, netem, membership
//! nemeses, the `set` and `ledger` workloads and the HTML report are not
//! built yet.

pub mod checker;
pub mod firewall;
pub mod history;
mod nemesis;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use docklock_node::launcher::{LocalCluster, FAST_TIMING};
use serde::Serialize;

pub use nemesis::Fault;

/// One test run's settings.
#[derive(Debug, Clone)]
pub struct TestConfig {
    /// The `docklock` binary the nodes run.
    pub binary: PathBuf,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Client processes.
    pub concurrency: u64,
    /// Length of the run.
    pub time_limit: Duration,
    /// Faults the nemesis may inject.
    pub faults: Vec<Fault>,
    /// Time between the start of one fault and the next.
    pub nemesis_interval: Duration,
    /// Seed of the nemesis schedule and the workload's choices.
    pub seed: u64,
    /// Keys the register workload uses.
    pub keys: u64,
    /// Where the run's files go.
    pub out_dir: PathBuf,
    /// Time the checker may take.
    pub check_budget: Duration,
}

/// Operation counts by type, per function.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Took effect.
    pub ok: u64,
    /// Definitely did not.
    pub fail: u64,
    /// Unknown.
    pub info: u64,
}

/// What a run found; also written as `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The workload.
    pub workload: &'static str,
    /// The checker's verdict.
    pub verdict: checker::Verdict,
    /// Counts per function (read, write, cas, and nemesis actions).
    pub counts: std::collections::BTreeMap<String, Counts>,
    /// The seed.
    pub seed: u64,
    /// Seconds the checker took.
    pub check_seconds: f64,
    /// Files written.
    pub history_path: PathBuf,
}

/// Run one test: start a cluster, run the workload under the nemesis, heal,
/// check the history and write the results directory.
pub async fn run(config: TestConfig) -> anyhow::Result<Results> {
    std::fs::create_dir_all(&config.out_dir).with_context(|| format!("cannot create {}", config.out_dir.display()))?;
    let cluster_dir = config.out_dir.join("nodes");
    std::fs::create_dir_all(&cluster_dir)?;
    let mut cluster = LocalCluster::new(&config.binary, &cluster_dir, config.nodes, &FAST_TIMING)?;
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(30)).await.context("the cluster elected no leader")?;

    let history = Arc::new(history::History::default());
    let deadline = Instant::now() + config.time_limit;
    let clients = workload::start_register(&cluster, &config, history.clone(), deadline)?;
    let cluster = nemesis::run(cluster, &config, &history, deadline).await?;
    for client in clients {
        client.await.context("client task")?;
    }
    drop(cluster);

    let history_path = config.out_dir.join("history.jsonl");
    history.write_jsonl(&history_path)?;
    let events = history.events();
    let operations = history::register_operations(&events);
    let started = Instant::now();
    let verdict = checker::check(&operations, config.check_budget);
    let results = Results {
        workload: "register",
        verdict,
        counts: count(&events),
        seed: config.seed,
        check_seconds: started.elapsed().as_secs_f64(),
        history_path,
    };
    std::fs::write(config.out_dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    Ok(results)
}

fn count(events: &[history::Event]) -> std::collections::BTreeMap<String, Counts> {
    let mut counts: std::collections::BTreeMap<String, Counts> = std::collections::BTreeMap::new();
    for event in events {
        let entry = counts.entry(event.f.clone()).or_default();
        match event.kind {
            history::EventType::Ok => entry.ok += 1,
            history::EventType::Fail => entry.fail += 1,
            history::EventType::Info => entry.info += 1,
            history::EventType::Invoke => {}
        }
    }
    counts
}
