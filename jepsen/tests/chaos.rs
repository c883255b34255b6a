//! Short chaos runs in the default test suite: 3 real nodes (each in its own
//! network namespace), 6 clients, 20 s each under kill -9, SIGSTOP, network
//! partitions, packet delay and loss, and membership changes. Every verdict
//! must be `valid` (not merely `unknown`), with enough operations and faults
//! to mean something.

use std::time::Duration;

use docklock_jepsen::{BackendKind, Fault, TestConfig, Verdict, Workload};

fn docklock_binary() -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("test path");
    let profile_dir = test_exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    profile_dir.join("docklock")
}

/// The runs take turns: two clusters at once on two cores would measure the
/// machine, not the cluster.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(
    workload: Workload,
    faults: Vec<Fault>,
    seed: u64,
    out: &std::path::Path,
) -> anyhow::Result<docklock_jepsen::Results> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = TestConfig {
        workload,
        binary: docklock_binary(),
        nodes: 3,
        concurrency: 6,
        time_limit: Duration::from_secs(20),
        faults,
        nemesis_interval: Duration::from_secs(4),
        seed,
        keys: 4,
        out_dir: out.to_owned(),
        check_budget: Duration::from_secs(60),
        backend: BackendKind::Netns,
    };
    docklock_jepsen::run(config).await
}

/// Fail unless the verdict is `valid`; on failure the run's directory
/// (history, results, node logs) is kept and named in the message.
fn assert_valid(out: &tempfile::TempDir, results: &docklock_jepsen::Results) {
    if results.verdict != Verdict::Valid {
        let kept = std::env::temp_dir().join(format!("docklock-chaos-failure-{}-{}", results.seed, std::process::id()));
        let copied = std::process::Command::new("cp").arg("-r").arg(out.path()).arg(&kept).status();
        panic!("verdict {:?}; run copied to {} ({copied:?}): {results:#?}", results.verdict, kept.display());
    }
}

/// Completed nemesis actions of the named faults.
fn injected(results: &docklock_jepsen::Results, faults: &[&str]) -> u64 {
    faults.iter().filter_map(|f| results.counts.get(*f)).map(|c| c.info).sum()
}

/// Fail unless enough adds were acknowledged for the run to mean something.
fn assert_enough_adds(results: &docklock_jepsen::Results) {
    let acknowledged = results.details["acknowledged"].as_u64().unwrap_or(0);
    assert!(acknowledged > 200, "too few adds acknowledged to mean anything: {}", results.details);
}

/// Register histories under kill and pause faults are linearizable.
#[tokio::test(flavor = "multi_thread")]
async fn register_under_kill_and_pause_is_linearizable() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let faults = vec![Fault::Kill, Fault::KillLeader, Fault::Pause, Fault::PauseLeader];
    let results = run(Workload::Register, faults, 7, out.path()).await?;
    assert_valid(&out, &results);
    let ok: u64 = ["read", "write", "cas"].iter().filter_map(|f| results.counts.get(*f)).map(|c| c.ok).sum();
    assert!(ok > 200, "too few operations succeeded to mean anything: {:?}", results.counts);
    let nemesis_actions = injected(&results, &["kill", "kill-leader", "pause", "pause-leader"]);
    assert!(nemesis_actions >= 2, "faults were injected: {:?}", results.counts);
    assert!(out.path().join("history.jsonl").exists() && out.path().join("results.json").exists());
    Ok(())
}

/// Register histories under network partitions (leader isolated, random
/// majority/minority) are linearizable, and the run's network namespaces are gone after.
#[tokio::test(flavor = "multi_thread")]
async fn register_under_partitions_is_linearizable() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let results = run(Workload::Register, vec![Fault::PartitionLeader, Fault::PartitionHalves], 11, out.path()).await?;
    assert_valid(&out, &results);
    let partitions = injected(&results, &["partition-leader", "partition-halves"]);
    assert!(partitions >= 2, "partitions were injected: {:?}", results.counts);
    // The run's namespaces (where its partition rules lived) are gone.
    let left = docklock_jepsen::network::leftover_namespaces();
    assert!(left.is_empty(), "network namespaces left behind: {left:?}");
    Ok(())
}

/// Under kills and partitions every acknowledged add survives and nothing
/// appears that was not added.
#[tokio::test(flavor = "multi_thread")]
async fn set_under_kill_and_partition_loses_nothing() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let faults = vec![Fault::KillLeader, Fault::PartitionHalves];
    let results = run(Workload::Set, faults, 5, out.path()).await?;
    assert_valid(&out, &results);
    assert_enough_adds(&results);
    Ok(())
}

/// Under leader kills and partitions every node's ledger chain is a prefix
/// of the longest, no acknowledged add is missing from it, and the latest
/// checkpoint matches it.
#[tokio::test(flavor = "multi_thread")]
async fn ledger_chains_agree_under_kill_and_partition() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let faults = vec![Fault::KillLeader, Fault::PartitionLeader];
    let results = run(Workload::Ledger, faults, 13, out.path()).await?;
    assert_valid(&out, &results);
    assert_enough_adds(&results);
    let sizes = results.details["sizes"].as_object().map_or(0, |sizes| sizes.len());
    assert_eq!(sizes, 3, "every node's ledger was read: {}", results.details);
    Ok(())
}

/// Fail unless every fault named was injected (and healed) at least once.
fn assert_injected(results: &docklock_jepsen::Results, faults: &[&str]) {
    for fault in faults {
        assert!(injected(results, &[fault]) >= 1, "{fault} was never injected: {:?}", results.counts);
    }
}

/// Register histories stay linearizable while members are removed and
/// replaced by fresh nodes and fresh nodes join and leave; at the end every
/// node is a voter.
#[tokio::test(flavor = "multi_thread")]
async fn register_under_membership_changes_is_linearizable() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let results = run(Workload::Register, vec![Fault::MemberReplace, Fault::MemberGrow], 17, out.path()).await?;
    assert_valid(&out, &results);
    assert_injected(&results, &["member-replace", "member-grow"]);
    let settled = results.counts.get("await-membership").map_or(0, |c| c.info);
    assert_eq!(settled, 1, "the run ended with every node a voter: {:?}", results.counts);
    let history = std::fs::read_to_string(out.path().join("history.jsonl"))?;
    assert!(!history.contains(r#""f":"await-membership","value":{"error""#), "membership did not settle");
    Ok(())
}

/// Under packet delay and loss, bridge and ring partitions and a killed
/// majority, every acknowledged add survives.
#[tokio::test(flavor = "multi_thread")]
async fn set_under_delay_and_odd_partitions_loses_nothing() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let faults = vec![Fault::Netem, Fault::PartitionBridge, Fault::PartitionRing, Fault::KillMajority];
    let results = run(Workload::Set, faults, 23, out.path()).await?;
    assert_valid(&out, &results);
    assert_enough_adds(&results);
    let actions = injected(&results, &["netem", "partition-bridge", "partition-ring", "kill-majority"]);
    assert!(actions >= 3, "faults were injected: {:?}", results.counts);
    Ok(())
}

/// Agents left by a killed run are found, a new run refuses to start while
/// they live, and `clean` removes them.
#[tokio::test(flavor = "multi_thread")]
async fn leftover_agents_are_refused_then_cleaned() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let mut orphan = docklock_node::launcher::LocalCluster::new(&docklock_binary(), dir.path(), 1, &[])?;
    orphan.set_env(docklock_jepsen::leftovers::RUN_TAG, "test-orphan");
    orphan.start_all()?;
    let pid = orphan.nodes[&1].pid().expect("started");
    // As if the harness had been killed: the agent outlives the cluster value.
    std::mem::forget(orphan);

    // Whatever happens below, leave no orphan behind for the other runs.
    struct CleanOnDrop;
    impl Drop for CleanOnDrop {
        fn drop(&mut self) {
            let _ = docklock_jepsen::leftovers::clean();
        }
    }
    let _clean = CleanOnDrop;
    // Until the child has exec'd, /proc shows the parent's environment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !docklock_jepsen::leftovers::tagged_agents().contains(&i32::try_from(pid)?) {
        assert!(std::time::Instant::now() < deadline, "the tagged agent {pid} was not found");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And a network namespace, as a killed netns run leaves them.
    let namespace = format!("{}test{}", docklock_jepsen::network::PREFIX, std::process::id());
    assert!(std::process::Command::new("ip").args(["netns", "add", &namespace]).status()?.success());
    let found = docklock_jepsen::leftovers::describe()?;
    assert!(found.iter().any(|f| f.contains(&pid.to_string())), "{found:?}");
    assert!(found.iter().any(|f| f.contains(&namespace)), "{found:?}");
    let config = TestConfig {
        workload: Workload::Register,
        binary: docklock_binary(),
        nodes: 3,
        concurrency: 1,
        time_limit: Duration::from_secs(1),
        faults: Vec::new(),
        nemesis_interval: Duration::from_secs(1),
        seed: 1,
        keys: 1,
        out_dir: dir.path().join("refused"),
        check_budget: Duration::from_secs(1),
        backend: BackendKind::Netns,
    };
    let refused = docklock_jepsen::run(config).await.expect_err("a run must refuse while leftovers exist");
    assert!(refused.to_string().contains("docklock-jepsen clean"), "{refused}");

    docklock_jepsen::leftovers::clean()?;
    assert!(docklock_jepsen::network::leftover_namespaces().is_empty(), "the namespace was removed");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !docklock_jepsen::leftovers::tagged_agents().is_empty() {
        assert!(std::time::Instant::now() < deadline, "leftover agent still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
