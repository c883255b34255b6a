//! The node lifecycle and placement on real processes: a killed worker's
//! placements move within the TTL, a drained node is emptied and takes
//! nothing new, and a leader failover does not mark live workers down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use docklock_proto::agreement::{AgreementId, Envelope, Spec};
use docklock_proto::client::Client;
use docklock_proto::crypto::KeyPair;
use docklock_proto::ledger::EventBody;
use docklock_tests::{audited_cluster, cli, workers, LocalCluster, WAIT};

/// Workers heartbeat every 200 ms and are down after 600 ms of silence.
const HEARTBEAT_MS: &str = "200";
const TTL: Duration = Duration::from_millis(600);

async fn scheduler_cluster(size: u64) -> anyhow::Result<(tempfile::TempDir, LocalCluster, KeyPair)> {
    audited_cluster(size, &["--worker-heartbeat-ms", HEARTBEAT_MS]).await
}

/// Submit `count` agreements of `replicas` replicas signed by the admin.
async fn submit(
    client: &Client,
    admin: &KeyPair,
    prefix: &str,
    count: usize,
    replicas: u32,
) -> anyhow::Result<Vec<AgreementId>> {
    let mut ids = Vec::new();
    for i in 0..count {
        let yaml = format!(
            "program: sha3-256:{}\nreplicas: {replicas}\ntimeout_secs: 60\nidempotency_key: {prefix}-{i}\n",
            "ab".repeat(32)
        );
        let envelope = Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), admin);
        ids.push(client.submit_agreement(&envelope).await?.id);
    }
    Ok(ids)
}

/// Each agreement's live replica nodes and attempt.
async fn placements(
    client: &Client,
    ids: &[AgreementId],
) -> anyhow::Result<BTreeMap<AgreementId, (Vec<u64>, u64, String)>> {
    let mut placed = BTreeMap::new();
    for id in ids {
        let info = client.get_agreement(id).await?;
        placed.insert(*id, (info.placed.iter().map(|r| r.node).collect(), info.attempt, info.status));
    }
    Ok(placed)
}

fn holding(placed: &BTreeMap<AgreementId, (Vec<u64>, u64, String)>, node: u64) -> Vec<AgreementId> {
    placed.iter().filter(|(_, (nodes, _, _))| nodes.contains(&node)).map(|(id, _)| *id).collect()
}

/// kill -9 of a worker: within TTL + 2 s it is `down` and every agreement it
/// held runs elsewhere as a new attempt; agreements it did not hold stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_workers_placements_move_within_the_ttl() -> anyhow::Result<()> {
    let (_dir, mut cluster, admin) = scheduler_cluster(4).await?;
    let client = cluster.client()?;
    let ids = submit(&client, &admin, "kill", 24, 2).await?;
    let before = placements(&client, &ids).await?;
    assert!(before.values().all(|(nodes, attempt, status)| nodes.len() == 2 && *attempt == 1 && status == "placed"));
    let leader = cluster.wait_for_leader(WAIT).await?;
    let victim = (1..=4).filter(|&n| n != leader).max_by_key(|&n| holding(&before, n).len()).expect("a follower");
    let held = holding(&before, victim);
    assert!(!held.is_empty(), "24 agreements on 4 nodes and none on node {victim}");

    cluster.kill(victim)?;
    let killed = Instant::now();
    let after = loop {
        let now = placements(&client, &ids).await?;
        if holding(&now, victim).is_empty() && now.values().all(|(nodes, _, _)| nodes.len() == 2) {
            break now;
        }
        assert!(killed.elapsed() < TTL + Duration::from_secs(2), "placements still on node {victim}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved_within = killed.elapsed();
    for id in &ids {
        let (old_nodes, _, _) = &before[id];
        let (new_nodes, attempt, status) = &after[id];
        assert_eq!(status, "placed");
        if held.contains(id) {
            assert_eq!(*attempt, 2, "a moved replica is a new attempt");
            let survivor: Vec<_> = old_nodes.iter().filter(|&&n| n != victim).collect();
            assert!(new_nodes.contains(survivor[0]), "the surviving replica stays");
        } else {
            assert_eq!((new_nodes, *attempt), (old_nodes, 1), "an agreement not on node {victim} moved");
        }
    }
    let list = workers(&client).await?;
    let status: BTreeMap<u64, String> = list.nodes.iter().map(|n| (n.id, n.status.clone())).collect();
    assert_eq!(status[&victim], "down");
    assert!(status.iter().filter(|(id, _)| **id != victim).all(|(_, s)| s == "ready"), "{status:?}");
    eprintln!("placements of node {victim} moved {moved_within:?} after kill -9 (TTL {TTL:?})");

    // Back from the dead: ready again, and it takes nothing back.
    cluster.start(victim)?;
    let deadline = Instant::now() + WAIT;
    while workers(&client).await?.nodes.iter().any(|n| n.id == victim && n.status != "ready") {
        assert!(Instant::now() < deadline, "node {victim} never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(placements(&client, &ids).await?, after, "a returning node takes no placement back");
    Ok(())
}

/// Drain empties a node and keeps new placements off it; undrain lets it
/// take new ones again. Through the CLI, as an operator would.
#[tokio::test(flavor = "multi_thread")]
async fn drain_moves_placements_off_and_takes_no_new_ones() -> anyhow::Result<()> {
    let (_dir, cluster, admin) = scheduler_cluster(4).await?;
    let client = cluster.client()?;
    let endpoints = cluster.endpoints().join(",");
    let ids = submit(&client, &admin, "drain", 16, 2).await?;
    let before = placements(&client, &ids).await?;
    let drained = (1..=4).max_by_key(|&n| holding(&before, n).len()).expect("a node");

    let (code, out, err) = cli(&["node", "drain", &drained.to_string(), "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("draining, 0 placements"), "{out}");
    let after = placements(&client, &ids).await?;
    assert!(holding(&after, drained).is_empty());
    assert!(after.values().all(|(nodes, _, status)| nodes.len() == 2 && status == "placed"));
    let fresh = submit(&client, &admin, "while-drained", 12, 3).await?;
    assert!(holding(&placements(&client, &fresh).await?, drained).is_empty(), "a new placement on a draining node");

    let (code, out, err) = cli(&["node", "list", "--output", "json", "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out)?;
    let row = list["nodes"].as_array().unwrap().iter().find(|n| n["id"] == drained).unwrap().clone();
    assert_eq!((row["draining"].as_bool(), row["placements"].as_u64()), (Some(true), Some(0)), "{row}");
    let (code, out, err) = cli(&["node", "list", "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{err}");
    let count = list["nodes"].as_array().unwrap().len();
    let summary = format!("machine classes: {count} × {}\n", docklock_cage::machine_class());
    assert!(out.contains(&summary), "one class on one machine: {out}");

    let (code, _, err) = cli(&["node", "undrain", &drained.to_string(), "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{err}");
    let later = submit(&client, &admin, "after-undrain", 12, 3).await?;
    assert!(!holding(&placements(&client, &later).await?, drained).is_empty(), "undrained node takes new work");

    // Every node recomputes the same decision from its own replica of the
    // registry: the explanation is a pure function of committed state.
    let id = later[0].to_hex();
    let deadline = Instant::now() + WAIT;
    loop {
        let answers: Vec<String> = cluster
            .endpoints()
            .iter()
            .map(|node| {
                let (code, out, err) = cli(&[
                    "agreement",
                    "placement",
                    &id,
                    "--explain",
                    "--stale",
                    "--output",
                    "json",
                    "--endpoints",
                    node,
                ]);
                assert_eq!(code, 0, "{err}");
                out
            })
            .collect();
        if answers.windows(2).all(|pair| pair[0] == pair[1]) {
            let explained: serde_json::Value = serde_json::from_str(&answers[0])?;
            assert_eq!(explained["placed"].as_array().map(Vec::len), Some(3), "{explained}");
            assert!(!explained["walk"].as_array().unwrap().is_empty(), "{explained}");
            break;
        }
        assert!(Instant::now() < deadline, "nodes explain differently: {answers:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unknown node: a clear NOT_FOUND, exit code and message.
    let (code, _, err) = cli(&["node", "drain", "99", "--endpoints", &endpoints]);
    assert_ne!(code, 0);
    assert!(err.contains("node 99 is not registered"), "{err}");
    Ok(())
}

/// Killing the leader: the new leader gives every worker a fresh grace
/// period, so no live worker is ever marked down; only the dead one is.
#[tokio::test(flavor = "multi_thread")]
async fn leader_failover_does_not_mark_live_workers_down() -> anyhow::Result<()> {
    let (_dir, mut cluster, _admin) = scheduler_cluster(3).await?;
    let client = cluster.client()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader(WAIT).await?;
    assert_ne!(new_leader, leader);
    // Several TTLs under the new leader: the old leader goes down, nobody else.
    let deadline = Instant::now() + TTL * 5;
    let mut seen_down = false;
    while Instant::now() < deadline {
        let list = workers(&client).await?;
        for node in &list.nodes {
            if node.id == leader {
                seen_down |= node.status == "down";
            } else {
                assert_eq!(node.status, "ready", "live node {} marked {}", node.id, node.status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_down, "the killed leader was never marked down");
    // The ledger agrees: the only status change ever is the dead node's.
    let events = client.events(0, 1_000).await?;
    let changes: Vec<(u64, String)> = Client::decode_events(&events)?
        .into_iter()
        .filter_map(|event| match event.body {
            EventBody::NodeStatusChanged { node_id, status, .. } => Some((node_id, status.name().to_owned())),
            _ => None,
        })
        .collect();
    assert_eq!(changes, [(leader, "down".to_owned())], "status changes after the failover");
    Ok(())
}

/// Kills a child process when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// A worker-only agent (no Raft) waits for an admin to authorise its key,
/// then registers, takes placements, and is marked down when it dies.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_only_node_joins_after_authorisation_and_takes_work() -> anyhow::Result<()> {
    let (dir, cluster, admin) = scheduler_cluster(3).await?;
    let client = cluster.client()?;
    let endpoints = cluster.endpoints().join(",");
    let data_dir = dir.path().join("worker-10");
    let port = docklock_node::launcher::free_port(std::net::Ipv4Addr::LOCALHOST)?;
    let log = std::fs::File::create(dir.path().join("worker-10.log"))?;
    let child = std::process::Command::new(docklock_tests::binary())
        .args(["agent", "--worker-only", "--id", "10", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--join", &endpoints, "--zone", "edge", "--worker-heartbeat-ms", HEARTBEAT_MS])
        .stderr(log)
        .spawn()?;
    let mut worker = ChildGuard(child);
    let public_key = data_dir.join("node.key.pub");
    let deadline = Instant::now() + WAIT;
    while !public_key.exists() {
        assert!(Instant::now() < deadline, "the worker wrote no key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!workers(&client).await?.nodes.iter().any(|n| n.id == 10), "registered without authorisation");

    let admin_key = dir.path().join("admin.key");
    let (code, out, err) = cli(&[
        "identity",
        "add",
        public_key.to_str().unwrap(),
        "--role",
        "node",
        "--key",
        admin_key.to_str().unwrap(),
        "--endpoints",
        &endpoints,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    docklock_tests::wait_for_workers(&client, 4).await?;
    let row = workers(&client).await?.nodes.into_iter().find(|n| n.id == 10).expect("worker 10 is listed");
    assert_eq!((row.zone.as_str(), row.address), ("edge", format!("127.0.0.1:{port}")));
    assert_eq!(
        row.labels.get("docklock.machine").map(String::as_str),
        Some(docklock_cage::machine_class()),
        "a worker is labelled with its cage's machine class"
    );
    assert!(
        cluster.client()?.status().await?.members.iter().all(|m| m.id != 10),
        "a worker-only node is no Raft member"
    );

    // It runs its replica too: k = 4 on four workers, verified.
    let program = client.upload_file(&std::fs::canonicalize("/bin/sh")?, |_, _| {}).await?;
    let yaml = format!("program: {program}\nargs: ['-c', 'echo worker-only']\nreplicas: 4\ntimeout_secs: 60\n");
    let run = client.submit_agreement(&Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), &admin)).await?.id;
    let deadline = Instant::now() + WAIT;
    let info = loop {
        let info = client.get_agreement(&run).await?;
        if info.status == "verified" || info.status == "diverged" {
            break info;
        }
        assert!(Instant::now() < deadline, "no verdict: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.status, "verified", "{info:?}");
    assert!(info.runs.iter().any(|r| r.node == 10), "the worker-only node ran it: {info:?}");

    // A placement that cannot run (its program was never uploaded) stays
    // on the node until the node dies.
    let ids = submit(&client, &admin, "everywhere", 1, 4).await?;
    let placed = placements(&client, &ids).await?;
    assert!(placed[&ids[0]].0.contains(&10), "k = 4 on four workers uses the worker-only node: {placed:?}");

    worker.0.kill()?;
    let deadline = Instant::now() + TTL + Duration::from_secs(2);
    loop {
        let info = client.get_agreement(&ids[0]).await?;
        if !info.placed.iter().any(|r| r.node == 10) {
            assert_eq!(info.status, "pending");
            break;
        }
        assert!(Instant::now() < deadline, "worker 10's replica was not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
