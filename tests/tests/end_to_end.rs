//! The end-to-end loop on real processes: a signed agreement is placed on
//! three workers, each runs it in its cage and reports its witness root
//! (commit, then reveal), and the cluster concludes `verified`; the outputs
//! and logs are retrievable through any node.

use std::time::{Duration, Instant};

use docklock_node::demo;
use docklock_proto::agreement::{AgreementId, Envelope, Spec};
use docklock_proto::client::Client;
use docklock_proto::v1;
use docklock_tests::{audited_cluster, cli, WAIT};

async fn wait_for_verdict(client: &Client, id: &AgreementId) -> anyhow::Result<v1::AgreementInfo> {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        // A failover (some tests kill the leader) may outlast one call's
        // retries: keep asking until the test's own deadline.
        let info = match client.get_agreement(id).await {
            Ok(info) => info,
            Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        if matches!(info.status.as_str(), "verified" | "diverged" | "timed-out" | "failed") {
            return Ok(info);
        }
        anyhow::ensure!(Instant::now() < deadline, "agreement still {}: {info:?}", info.status);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Upload the shell and an input, submit, and follow to `verified`.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_workload_runs_on_three_nodes_and_is_verified() -> anyhow::Result<()> {
    let (dir, cluster, admin) = audited_cluster(3, &["--worker-heartbeat-ms", "200"]).await?;
    let client = cluster.client()?;
    let input = dir.path().join("rows.csv");
    std::fs::write(&input, demo::ROWS)?;
    let shell = std::fs::canonicalize("/bin/sh")?;
    let program = client.upload_file(&shell, |_, _| {}).await?;
    let rows = client.upload_file(&input, |_, _| {}).await?;
    // The demo's workload: what `docklock demo` shows is what is tested.
    let yaml = demo::spec_yaml(&program.to_string(), &rows.to_string());
    let envelope = Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), &admin);
    let submitted = client.submit_agreement(&envelope).await?;
    let info = wait_for_verdict(&client, &submitted.id).await?;
    assert_eq!(info.status, "verified", "{info:?}");
    assert_eq!(info.runs.len(), 3);
    let roots: std::collections::BTreeSet<_> = info.runs.iter().map(|run| run.root.clone()).collect();
    assert_eq!(roots.len(), 1, "three equal roots: {info:?}");
    assert!(info.runs.iter().all(|run| run.verdict == "ok"), "{info:?}");
    assert!(info.history.iter().any(|change| change.status == "running"));

    // The output, through the CLI, from whichever node holds it.
    let endpoints = cluster.endpoints().join(",");
    let out = dir.path().join("outputs");
    let id = submitted.id.to_hex();
    let (code, stdout, stderr) =
        cli(&["agreement", "outputs", &id, "--out", out.to_str().unwrap(), "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let result = std::fs::read_to_string(out.join("result.txt"))?;
    assert!(result.starts_with("rows=4 random="), "{result}");
    assert!(result.trim_end().ends_with("time=2000-01-01T00:00:00Z"), "the logical clock: {result}");
    let (code, logs, stderr) = cli(&["agreement", "logs", &id, "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(logs, result, "stdout is the cat of the result");
    assert!(stderr.contains("counted 4 rows\n"), "the run's stderr, from its witness log: {stderr}");
    let (code, status, _) = cli(&["agreement", "status", &id, "--output", "json", "--endpoints", &endpoints]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(status["status"], "verified");

    // The verdict is a ledger event with a proof checked offline.
    let bundle = dir.path().join("verdict.json");
    let (code, out, err) =
        cli(&["audit", "proof", &id, "--verdict", "--out", bundle.to_str().unwrap(), "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["audit", "verify", bundle.to_str().unwrap(), "--endpoints", "127.0.0.1:1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("agreement-concluded"), "{out}");

    // Anyone can replay it: the witness log and inputs come from the cluster,
    // the run happens here, in this process's cage.
    let (code, out, err) = cli(&["verify", &id, "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified locally"), "{out}");

    // The same spec with another seed draws other random bytes, and is
    // verified too.
    let reseeded = yaml.replace("idempotency_key: demo-report", "idempotency_key: reseeded")
        + &format!("seed: {}\n", "ab".repeat(32));
    let submitted = client.submit_agreement(&Envelope::sign(Spec::from_yaml(&reseeded)?.canonical(), &admin)).await?;
    let other = wait_for_verdict(&client, &submitted.id).await?;
    assert_eq!(other.status, "verified");
    assert_ne!(other.runs[0].root, info.runs[0].root, "another seed, another run");
    eprintln!("verified: {result:?} roots {} and {}", info.runs[0].root, other.runs[0].root);
    Ok(())
}

async fn submit_demo_workload(
    client: &Client,
    admin: &docklock_proto::crypto::KeyPair,
    dir: &std::path::Path,
    key: &str,
) -> anyhow::Result<AgreementId> {
    let input = dir.join("rows.csv");
    std::fs::write(&input, demo::ROWS)?;
    let program = client.upload_file(&std::fs::canonicalize("/bin/sh")?, |_, _| {}).await?;
    let rows = client.upload_file(&input, |_, _| {}).await?;
    let yaml = demo::spec_yaml(&program.to_string(), &rows.to_string()).replace("demo-report", key);
    Ok(client.submit_agreement(&Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), admin)).await?.id)
}

/// One node runs with a test-only fault (debug builds: another seed): the
/// verdict is `diverged`, the honest nodes' roots agree and the faulty
/// node's root is the odd one out.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_a_different_result_makes_the_run_diverge() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let admin = docklock_proto::crypto::KeyPair::generate(docklock_proto::crypto::Algorithm::MlDsa65);
    admin.public().write_new(&dir.path().join("admin.pub"))?;
    let mut args: Vec<&str> = docklock_tests::FAST_TIMING.to_vec();
    args.extend_from_slice(&["--worker-heartbeat-ms", "200"]);
    let mut cluster = docklock_tests::LocalCluster::new(&docklock_tests::binary(), dir.path(), 3, &args)?;
    cluster.set_admin_key(&dir.path().join("admin.pub"));
    cluster.set_node_env(2, "DOCKLOCK_TEST_FAULT_SEED", "1");
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let client = cluster.client()?;
    docklock_tests::wait_for_node_keys(&client, 3).await?;
    docklock_tests::wait_for_workers(&client, 3).await?;
    let id = submit_demo_workload(&client, &admin, dir.path(), "diverging").await?;
    let info = wait_for_verdict(&client, &id).await?;
    assert_eq!(info.status, "diverged", "{info:?}");
    let root_of = |node: u64| info.runs.iter().find(|run| run.node == node).map(|run| run.root.clone()).unwrap();
    assert_eq!(root_of(1), root_of(3), "the honest nodes agree");
    assert_ne!(root_of(2), root_of(1), "the faulty node is the odd one out");
    let (code, _, err) = cli(&["agreement", "status", &id.to_hex(), "--endpoints", &cluster.endpoints().join(",")]);
    assert_eq!(code, 0, "{err}");
    Ok(())
}

/// Submit a run of about a second of shell arithmetic (long enough to be
/// killed mid-run) and return its id once a replica has started.
async fn submit_long_run(
    client: &Client,
    admin: &docklock_proto::crypto::KeyPair,
    tag: &str,
) -> anyhow::Result<AgreementId> {
    let program = client.upload_file(&std::fs::canonicalize("/bin/sh")?, |_, _| {}).await?;
    let script = "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo counted $i";
    let yaml = format!(
        "program: {program}\nargs: ['-c', {script:?}]\nreplicas: 3\ntimeout_secs: 120\nidempotency_key: {tag}\n"
    );
    let id = client.submit_agreement(&Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), admin)).await?.id;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = client.get_agreement(&id).await?;
    anyhow::ensure!(!matches!(info.status.as_str(), "verified" | "diverged"), "finished before the kill: {info:?}");
    Ok(id)
}

/// kill -9 of a worker, then of the leader, while they run: each lost
/// replica moves to another worker as a new attempt, and each run still
/// ends `verified`.
#[tokio::test(flavor = "multi_thread")]
async fn runs_survive_a_worker_and_the_leader_killed_mid_run() -> anyhow::Result<()> {
    let (_dir, mut cluster, admin) = audited_cluster(5, &["--worker-heartbeat-ms", "200"]).await?;
    let client = cluster.client()?;
    for round in ["worker", "leader"] {
        let id = submit_long_run(&client, &admin, round).await?;
        let placed = client.get_agreement(&id).await?;
        let leader = cluster.wait_for_leader(WAIT).await?;
        let holders: Vec<u64> = placed.placed.iter().map(|r| r.node).collect();
        let victim = match round {
            "worker" => *holders.iter().find(|&&n| n != leader).expect("a follower replica"),
            _ => leader,
        };
        cluster.kill(victim)?;
        let info = wait_for_verdict(&cluster.client()?, &id).await?;
        assert_eq!(info.status, "verified", "{round}: {info:?}");
        assert!(info.runs.iter().all(|run| run.node != victim), "{round}: the killed node's run is void: {info:?}");
        if holders.contains(&victim) {
            assert!(info.placed.iter().any(|r| r.attempt == 2), "{round}: a replacement attempt: {info:?}");
        }
    }
    Ok(())
}

/// Submit `/bin/sh -c script` (a loop that never ends by itself) at k = 3
/// with the given deadline and wall-clock limit.
async fn submit_spin_loop(
    client: &Client,
    admin: &docklock_proto::crypto::KeyPair,
    script: &str,
    timeout_secs: u64,
    wall_ms: u64,
) -> anyhow::Result<AgreementId> {
    let program = client.upload_file(&std::fs::canonicalize("/bin/sh")?, |_, _| {}).await?;
    let yaml = format!(
        "program: {program}\nargs: ['-c', {script:?}]\nreplicas: 3\ntimeout_secs: {timeout_secs}\n\
         limits: {{wall_ms: {wall_ms}}}\n"
    );
    Ok(client.submit_agreement(&Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), admin)).await?.id)
}

/// A run that outlasts its agreement's deadline ends `timed-out`.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_deadline_times_out() -> anyhow::Result<()> {
    let (_dir, cluster, admin) = audited_cluster(3, &["--worker-heartbeat-ms", "200"]).await?;
    let client = cluster.client()?;
    let id = submit_spin_loop(&client, &admin, "while true; do :; done", 1, 15_000).await?;
    let started = Instant::now();
    let info = wait_for_verdict(&client, &id).await?;
    assert_eq!(info.status, "timed-out", "{info:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "timed out after {:?}", started.elapsed());
    // Each worker stops its run then, long before the 15 s wall limit.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (id, node) in &cluster.nodes {
        loop {
            let log = std::fs::read_to_string(&node.log_path)?;
            if log.contains("run stopped: the replica is no longer this node's") {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {id} did not stop its run:\n{}",
                cluster.log_tail(*id, 20)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A run cut short by its wall-clock limit has no result to agree on (how
/// far it got depends on each host): the agreement ends `failed` with that
/// reason, never `verified` or `diverged`.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_cut_short_by_its_wall_limit_fails_with_the_reason() -> anyhow::Result<()> {
    let (_dir, cluster, admin) = audited_cluster(3, &["--worker-heartbeat-ms", "200"]).await?;
    let client = cluster.client()?;
    let id = submit_spin_loop(&client, &admin, "echo started; while true; do :; done", 60, 300).await?;
    let info = wait_for_verdict(&client, &id).await?;
    let verdicts: Vec<&str> = info.runs.iter().map(|run| run.verdict.as_str()).collect();
    assert_eq!(info.status, "failed", "runs: {verdicts:?}");
    assert!(info.failure.contains("wall-ms limit") && info.failure.contains("depends on the host"), "{}", info.failure);
    Ok(())
}

/// The README's run example, as written: `docklock run examples/report.yaml
/// --key alice.key --wait`, then outputs, logs, verify and a verdict proof.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_run_example_works_as_written() -> anyhow::Result<()> {
    let (dir, cluster, _admin) = audited_cluster(3, &["--worker-heartbeat-ms", "200"]).await?;
    let endpoints = cluster.endpoints().join(",");
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let docklock = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend(["--endpoints", &endpoints]);
        cli(&full)
    };
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/report.yaml");
    let (code, _, err) = cli(&["key", "generate", "--alg", "dilithium3", "--out", &at("alice.key")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        docklock(&["identity", "add", &at("alice.key.pub"), "--role", "submitter", "--key", &at("admin.key")]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) =
        docklock(&["run", example.to_str().unwrap(), "--key", &at("alice.key"), "--wait", "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(status["status"], "verified", "{status}");
    let id = status["id"].as_str().unwrap().to_owned();
    let (code, out, err) = docklock(&["agreement", "outputs", &id, "--out", &at("results")]);
    assert_eq!(code, 0, "{out}{err}");
    let result = std::fs::read_to_string(dir.path().join("results/result.txt"))?;
    assert!(result.starts_with("rows=4 random="), "{result}");
    let (code, logs, err) = docklock(&["agreement", "logs", &id, "--node", "2"]);
    assert_eq!((code, logs.as_str()), (0, result.as_str()), "{err}");
    let (code, out, err) = docklock(&["verify", &id]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = docklock(&["audit", "proof", &id, "--verdict", "--out", &at("verdict.json")]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&["audit", "verify", &at("verdict.json")]);
    assert_eq!(code, 0, "{out}{err}");
    Ok(())
}

/// A spec the cage refuses on every node (an input named like the staged
/// program) ends `failed` with the reason, without waiting for a deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_cannot_start_fails_with_its_reason() -> anyhow::Result<()> {
    let (dir, cluster, admin) = audited_cluster(3, &["--worker-heartbeat-ms", "200"]).await?;
    let client = cluster.client()?;
    let program = client.upload_file(&std::fs::canonicalize("/bin/sh")?, |_, _| {}).await?;
    let input = dir.path().join("clash");
    std::fs::write(&input, "x")?;
    let clash = client.upload_file(&input, |_, _| {}).await?;
    let yaml = format!(
        "program: {program}\nargs: ['-c', 'true']\ninputs: {{.docklock-program: {clash}}}\nreplicas: 3\ntimeout_secs: 600\n"
    );
    let id = client.submit_agreement(&Envelope::sign(Spec::from_yaml(&yaml)?.canonical(), &admin)).await?.id;
    let info = wait_for_verdict(&client, &id).await?;
    assert_eq!(info.status, "failed", "{info:?}");
    assert!(info.failure.contains(".docklock-program"), "{info:?}");
    Ok(())
}

/// A worker kill -9'd mid-run and restarted at once resumes its assigned
/// work: its replica (the same attempt, or a new one if it was marked down
/// meanwhile) runs again on it and the agreement still verifies.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_restarted_mid_run_resumes_its_work() -> anyhow::Result<()> {
    let (_dir, mut cluster, admin) = audited_cluster(3, &["--worker-heartbeat-ms", "200"]).await?;
    let client = cluster.client()?;
    let id = submit_long_run(&client, &admin, "restart").await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let victim = (1..=3).find(|&n| n != leader).expect("a follower");
    cluster.kill(victim)?;
    cluster.start(victim)?;
    let info = wait_for_verdict(&cluster.client()?, &id).await?;
    assert_eq!(info.status, "verified", "{info:?}");
    assert!(info.runs.iter().any(|run| run.node == victim), "the restarted node ran its replica: {info:?}");
    assert_eq!(info.runs.len(), 3, "one run per replica: {info:?}");
    Ok(())
}

/// Every node collects artifacts no agreement refers to once their grace
/// period is over, and keeps what a verified run needs: its program, input,
/// stdout, witness log and outputs, so it can still be replayed.
#[tokio::test(flavor = "multi_thread")]
async fn unreferenced_artifacts_are_collected_and_runs_stay_replayable() -> anyhow::Result<()> {
    let gc = ["--worker-heartbeat-ms", "200", "--artifact-gc-grace-secs", "2", "--artifact-gc-interval-secs", "1"];
    let (dir, cluster, admin) = audited_cluster(3, &gc).await?;
    let client = cluster.client()?;
    let stray_file = dir.path().join("stray.bin");
    std::fs::write(&stray_file, b"uploaded, never named by an agreement")?;
    let stray = client.upload_file(&stray_file, |_, _| {}).await?.to_string();
    let listing = |id: u64| {
        let node = cluster.client_of(id);
        async move {
            let listed = node?.list_artifacts("", 1_000).await?;
            anyhow::Ok(listed.artifacts.into_iter().map(|a| a.digest).collect::<std::collections::BTreeSet<_>>())
        }
    };
    let mut stored = false;
    for node in cluster.nodes.keys() {
        stored |= listing(*node).await?.contains(&stray);
    }
    assert!(stored, "the stray artifact was stored somewhere to begin with");
    let id = submit_demo_workload(&client, &admin, dir.path(), "collected").await?;
    let info = wait_for_verdict(&client, &id).await?;
    assert_eq!(info.status, "verified", "{info:?}");

    // The upload went to one node; wait until no node holds it.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut holders = Vec::new();
        for node in cluster.nodes.keys() {
            if listing(*node).await?.contains(&stray) {
                holders.push(*node);
            }
        }
        if holders.is_empty() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "nodes {holders:?} never collected the stray artifact");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Past two more grace periods, everything a replay needs is still held.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let needed: Vec<String> = info
        .runs
        .iter()
        .flat_map(|run| [run.witness.clone(), run.stdout.clone()].into_iter().chain(run.outputs.values().cloned()))
        .collect();
    for node in cluster.nodes.keys() {
        let held = listing(*node).await?;
        for digest in &needed {
            assert!(held.contains(digest), "node {node} collected {digest}, which a verified run needs: {held:?}");
        }
        assert!(!held.contains(&stray), "node {node} still holds the stray artifact");
    }
    let endpoints = cluster.endpoints().join(",");
    let (code, out, err) = cli(&["verify", &id.to_hex(), "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verified locally"), "{out}");
    Ok(())
}
