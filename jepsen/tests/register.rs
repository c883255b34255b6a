//! A short chaos run in the default test suite: 3 real nodes, 6 clients on
//! 4 registers, kill -9 and SIGSTOP faults for 20 s; the history must check
//! as linearizable (not merely "unknown").

use std::time::Duration;

use docklock_jepsen::checker::Verdict;
use docklock_jepsen::{Fault, TestConfig};

fn docklock_binary() -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("test path");
    let profile_dir = test_exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    profile_dir.join("docklock")
}

/// The runs take turns: two clusters at once on two cores would measure the
/// machine, not the cluster.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(faults: Vec<Fault>, seed: u64, out: &std::path::Path) -> anyhow::Result<docklock_jepsen::Results> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = TestConfig {
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
    };
    docklock_jepsen::run(config).await
}

/// Register histories under kill and pause faults are linearizable.
#[tokio::test(flavor = "multi_thread")]
async fn register_under_kill_and_pause_is_linearizable() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let faults = vec![Fault::Kill, Fault::KillLeader, Fault::Pause, Fault::PauseLeader];
    let results = run(faults, 7, out.path()).await?;
    assert_eq!(results.verdict, Verdict::Valid, "{results:#?}");
    let ok: u64 = ["read", "write", "cas"].iter().filter_map(|f| results.counts.get(*f)).map(|c| c.ok).sum();
    assert!(ok > 200, "too few operations succeeded to mean anything: {:?}", results.counts);
    let nemesis_actions: u64 = ["kill", "kill-leader", "pause", "pause-leader"]
        .iter()
        .filter_map(|f| results.counts.get(*f))
        .map(|c| c.info)
        .sum();
    assert!(nemesis_actions >= 2, "faults were injected: {:?}", results.counts);
    assert!(out.path().join("history.jsonl").exists() && out.path().join("results.json").exists());
    Ok(())
}

/// Register histories under network partitions (leader isolated, random
/// majority/minority) are linearizable, and the firewall chain is gone after.
#[tokio::test(flavor = "multi_thread")]
async fn register_under_partitions_is_linearizable() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let results = run(vec![Fault::PartitionLeader, Fault::PartitionHalves], 11, out.path()).await?;
    assert_eq!(results.verdict, Verdict::Valid, "{results:#?}");
    let partitions: u64 =
        ["partition-leader", "partition-halves"].iter().filter_map(|f| results.counts.get(*f)).map(|c| c.info).sum();
    assert!(partitions >= 2, "partitions were injected: {:?}", results.counts);
    assert!(!docklock_jepsen::firewall::leftovers_present()?, "the iptables chain was removed");
    Ok(())
}
