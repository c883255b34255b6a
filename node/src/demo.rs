//! `docklock demo`: a 3-node cluster on loopback, as real processes, that
//! survives losing its leader. Later capabilities (signed agreements, caged
//! runs, proofs) extend this story.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::launcher::{LocalCluster, FAST_TIMING};

/// `docklock demo` flags.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the cluster's data here instead of a temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const WAIT: Duration = Duration::from_secs(30);
const KEYS: usize = 20;

fn step(number: u32, text: &str) {
    println!("[{number}] {text}");
}

/// Run the demo; exits with an error naming the step that failed.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let dir = args.dir.unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    let binary = std::env::current_exe().context("cannot find the docklock binary")?;
    let mut cluster = LocalCluster::new(&binary, &dir, 3, &FAST_TIMING)?;

    step(1, &format!("starting 3 agents on loopback (data in {})", dir.display()));
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await.context("step 1: the cluster elected no leader")?;
    for node in cluster.nodes.values() {
        println!("    node {} at {}{}", node.id, node.addr, if node.id == leader { "  (leader)" } else { "" });
    }

    step(2, &format!("writing {KEYS} variables through every node in turn (followers forward to the leader)"));
    let mut last_revision = 0;
    for i in 0..KEYS {
        let id = (i as u64 % 3) + 1;
        let response = cluster
            .client_of(id)?
            .put(&format!("demo/key-{i:02}"), format!("value-{i}").into_bytes())
            .await
            .with_context(|| format!("step 2: put through node {id}"))?;
        last_revision = response.revision;
    }
    let cas = cluster
        .client()?
        .cas(
            "demo/key-00",
            docklock_proto::v1::cas_request::Expect::ExpectValue(b"value-0".to_vec()),
            b"swapped".to_vec(),
        )
        .await
        .context("step 2: compare-and-set")?;
    println!(
        "    {KEYS} puts and one compare-and-set committed, last at log index {}",
        cas.revision.max(last_revision)
    );

    step(3, "reading every variable back from every node with linearizable reads");
    for id in cluster.nodes.keys().copied().collect::<Vec<_>>() {
        check_all(&cluster, id, false).await.with_context(|| format!("step 3: reading through node {id}"))?;
    }
    println!("    all {} reads agree", KEYS * 3);

    step(4, &format!("kill -9 the leader (node {leader})"));
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader(WAIT).await.context("step 4: no new leader after the kill")?;
    if new_leader == leader {
        bail!("step 4: the killed node is still reported as leader");
    }
    println!("    node {new_leader} was elected leader");
    let after = cluster
        .client()?
        .put("demo/after-failover", b"written while node was down".to_vec())
        .await
        .context("step 4: write after failover")?;
    println!("    a write after failover committed at revision {}", after.revision);

    step(5, &format!("restart node {leader} from its data directory"));
    cluster.start(leader)?;
    cluster
        .wait_for_revision(leader, after.revision, WAIT)
        .await
        .context("step 5: the restarted node did not catch up")?;
    check_all(&cluster, leader, true).await.context("step 5: the restarted node's own state")?;
    let failover = cluster.client_of(leader)?.get("demo/after-failover", true).await?;
    println!(
        "    node {leader} caught up to revision {}; its local state has all {KEYS} variables and {:?}",
        after.revision,
        String::from_utf8_lossy(&failover.value)
    );

    println!(
        "demo finished in {:.1} s: every acknowledged write survived the leader's loss",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Read every demo key through node `id` and check its value.
async fn check_all(cluster: &LocalCluster, id: u64, stale: bool) -> anyhow::Result<()> {
    let client = cluster.client_of(id)?;
    for i in 0..KEYS {
        let kv = client.get(&format!("demo/key-{i:02}"), stale).await?;
        let expected = if i == 0 { "swapped".to_owned() } else { format!("value-{i}") };
        if kv.value != expected.as_bytes() {
            bail!("key-{i:02} reads {:?}, expected {expected:?}", String::from_utf8_lossy(&kv.value));
        }
    }
    Ok(())
}
