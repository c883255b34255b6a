//! `docklock-jepsen`: a black-box chaos harness for DockLock.
//!
//! Owns: cluster control for tests (real `docklock agent` processes, started
//! through `docklock_node::launcher`, in network namespaces, on loopback or
//! in containers: `network`), nemeses (fault injection by process, network
//! and membership control), workloads (clients over the public gRPC API
//! only), the history (Jepsen's format) and the checkers.
//!
//! Must not: use anything of a node but its public gRPC API, its process and
//! its network; send traffic anywhere but the cluster's own addresses.
//!
//! Entry points: [`run`] with a [`TestConfig`]; [`checker::check`].

pub mod checker;
pub mod delay;
pub mod firewall;
pub mod history;
pub mod ledger;
pub mod leftovers;
mod nemesis;
pub mod network;
pub mod report;
pub mod set;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use docklock_node::launcher::FAST_TIMING;
use serde::Serialize;

pub use nemesis::{Fault, ALL_FAULTS};
pub use network::BackendKind;

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Per-key read/write/cas, checked for linearizability.
    Register,
    /// Unique adds and a final read, checked for lost and phantom elements.
    Set,
    /// Unique adds, then every node's audit ledger: chains are prefixes of
    /// the longest, no acknowledged add is missing, the checkpoint verifies.
    Ledger,
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "register" => Ok(Self::Register),
            "set" => Ok(Self::Set),
            "ledger" => Ok(Self::Ledger),
            other => Err(format!("unknown workload {other:?}; known: register, set, ledger")),
        }
    }
}

/// A run's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The history keeps every promise checked.
    Valid,
    /// It breaks one (see the details).
    Invalid,
    /// The checker could not decide.
    Unknown,
}

/// One test run's settings.
#[derive(Debug, Clone)]
pub struct TestConfig {
    /// What the clients do.
    pub workload: Workload,
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
    /// Where the nodes run.
    pub backend: BackendKind,
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
    /// The verdict.
    pub verdict: Verdict,
    /// The checker's findings (a counterexample, lost elements, ...).
    pub details: serde_json::Value,
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
    let leftovers = leftovers::describe()?;
    if !leftovers.is_empty() {
        anyhow::bail!(
            "leftovers of an earlier run are present ({}); run `docklock-jepsen clean` first",
            leftovers.join(", ")
        );
    }
    std::fs::create_dir_all(&config.out_dir).with_context(|| format!("cannot create {}", config.out_dir.display()))?;
    let cluster_dir = config.out_dir.join("nodes");
    std::fs::create_dir_all(&cluster_dir)?;
    // Containers mount it by its absolute path.
    let cluster_dir = cluster_dir.canonicalize()?;
    let binary = config.binary.canonicalize().with_context(|| format!("no binary {}", config.binary.display()))?;
    let (mut backend, mut cluster) =
        network::Backend::create(config.backend, &binary, &cluster_dir, config.nodes, &FAST_TIMING)?;
    cluster.set_env(leftovers::RUN_TAG, &format!("{}-{}", config.seed, std::process::id()));
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(30)).await.context("the cluster elected no leader")?;

    let history = Arc::new(history::History::default());
    let deadline = Instant::now() + config.time_limit;
    let clients = match config.workload {
        Workload::Register => workload::start_register(&cluster, &config, history.clone(), deadline)?,
        Workload::Set | Workload::Ledger => set::start(&cluster, &config, history.clone(), deadline)?,
    };
    let mut cluster = nemesis::run(cluster, &mut backend, &config, &history, deadline).await?;
    for client in clients {
        client.await.context("client task")?;
    }
    let final_set = match config.workload {
        Workload::Register | Workload::Ledger => None,
        Workload::Set => {
            cluster.wait_for_leader(Duration::from_secs(30)).await.context("no leader after healing")?;
            Some(set::final_read(&cluster, &history, config.concurrency).await)
        }
    };
    let ledgers = match config.workload {
        Workload::Ledger => {
            cluster.wait_for_leader(Duration::from_secs(30)).await.context("no leader after healing")?;
            let ledgers = ledger::read_ledgers(&mut cluster).await;
            let checkpoint = cluster.client()?.checkpoint(None).await.ok();
            Some((ledgers, checkpoint))
        }
        _ => None,
    };
    drop(cluster);
    drop(backend);

    let history_path = config.out_dir.join("history.jsonl");
    history.write_jsonl(&history_path)?;
    let events = history.events();
    let started = Instant::now();
    let (workload, verdict, details) = match (final_set, ledgers) {
        (_, Some((Err(error), _))) => {
            ("ledger", Verdict::Unknown, serde_json::json!({"error": format!("reading the ledgers failed: {error:#}")}))
        }
        (_, Some((Ok(ledgers), checkpoint))) => {
            let report = ledger::check(&events, &ledgers, checkpoint.as_ref());
            let verdict = if report.is_valid() { Verdict::Valid } else { Verdict::Invalid };
            ("ledger", verdict, serde_json::to_value(&report)?)
        }
        (None, None) => {
            let operations = history::register_operations(&events);
            let verdict = checker::check(&operations, config.check_budget);
            let summary = match verdict {
                checker::Verdict::Valid => Verdict::Valid,
                checker::Verdict::Invalid { .. } => Verdict::Invalid,
                checker::Verdict::Unknown { .. } => Verdict::Unknown,
            };
            ("register", summary, serde_json::to_value(&verdict)?)
        }
        (Some(None), None) => ("set", Verdict::Unknown, serde_json::json!({"error": "the final read failed"})),
        (Some(Some(final_set)), None) => {
            let report = set::check(&events, &final_set);
            let verdict = if report.is_valid() { Verdict::Valid } else { Verdict::Invalid };
            ("set", verdict, serde_json::to_value(&report)?)
        }
    };
    let results = Results {
        workload,
        verdict,
        details,
        counts: count(&events),
        seed: config.seed,
        check_seconds: started.elapsed().as_secs_f64(),
        history_path,
    };
    std::fs::write(config.out_dir.join("results.json"), serde_json::to_string_pretty(&results)?)?;
    std::fs::write(config.out_dir.join("index.html"), report::render(&results, &events))?;
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
