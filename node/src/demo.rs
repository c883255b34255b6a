//! `docklock demo`: a 3-node cluster on loopback, as real processes, that
//! admits a signed agreement and places it on its three workers, survives
//! losing its leader (whose replica is released and placed again when it
//! returns), and proves what it admitted with a bundle checked offline.
//! Caged runs and verification by replication (issue 8) extend this story.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use docklock_proto::agreement::{Envelope, Spec};
use docklock_proto::crypto::{Algorithm, KeyPair};
use docklock_proto::identity::{ChangeKind, Role};
use docklock_proto::ledger::Bundle;
use docklock_proto::v1::{self, nodes_client::NodesClient};

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
    let mut args = FAST_TIMING.to_vec();
    args.extend_from_slice(&["--checkpoint-interval-ms", "200", "--worker-heartbeat-ms", "200"]);
    let mut cluster = LocalCluster::new(&binary, &dir, 3, &args)?;
    let admin = KeyPair::generate(Algorithm::MlDsa65);
    let admin_pub = dir.join("admin.key.pub");
    admin.public().write_new(&admin_pub).context("cannot write the admin key")?;
    cluster.set_admin_key(&admin_pub);

    step(1, &format!("starting 3 agents on loopback (data in {}), first admin key {}", dir.display(), short(&admin)));
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

    step(4, "a submitter key (Dilithium3) is added by the admin, then signs and submits an agreement");
    let client = cluster.client()?;
    wait_for(WAIT, "step 4: the three workers to register", || async {
        let list =
            client
                .call(|channel| async move {
                    NodesClient::new(channel).list(v1::ListNodesRequest { counts_only: false }).await
                })
                .await?;
        Ok((list.nodes.iter().filter(|node| node.status == "ready").count() == 3).then_some(()))
    })
    .await?;
    let submitter = KeyPair::generate(Algorithm::Dilithium3);
    client
        .change_identity(ChangeKind::Add { key: submitter.public().clone(), role: Role::Submitter }, &admin)
        .await
        .context("step 4: adding the submitter")?;
    let spec = Spec::from_yaml(SPEC).context("step 4: the embedded spec")?;
    let envelope = Envelope::sign(spec.canonical(), &submitter);
    let admitted = client.submit_agreement(&envelope).await.context("step 4: submitting")?;
    println!("    agreement {} admitted as ledger event {}", admitted.id, admitted.event_index);
    let info = client.get_agreement(&admitted.id).await.context("step 4: reading the agreement")?;
    println!("    placed by consistent hashing at admission, {}: {}", info.status, replicas(&info));
    let forged = Envelope { signer: KeyPair::generate(Algorithm::MlDsa65).public().clone(), ..envelope.clone() };
    let refused = client.submit_agreement(&forged).await.err().map(|status| status.code());
    println!("    the same spec under a forged signer is refused: {refused:?}");
    if refused != Some(tonic::Code::Unauthenticated) {
        bail!("step 4: a forged envelope was not refused as unauthenticated");
    }

    step(5, &format!("kill -9 the leader (node {leader})"));
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader(WAIT).await.context("step 5: no new leader after the kill")?;
    if new_leader == leader {
        bail!("step 5: the killed node is still reported as leader");
    }
    println!("    node {new_leader} was elected leader");
    let after = cluster
        .client()?
        .put("demo/after-failover", b"written while node was down".to_vec())
        .await
        .context("step 5: write after failover")?;
    println!("    a write after failover committed at revision {}", after.revision);
    let lost = wait_for(WAIT, "step 5: the killed worker's replica to be released", || async {
        let info = cluster.client()?.get_agreement(&admitted.id).await?;
        Ok((!info.placed.iter().any(|r| r.node == leader)).then_some(info))
    })
    .await?;
    println!(
        "    node {leader} missed its heartbeats and is down; the agreement is {} ({}) on {}",
        lost.status,
        lost.pending_reason,
        replicas(&lost)
    );

    step(6, &format!("restart node {leader} from its data directory"));
    cluster.start(leader)?;
    cluster
        .wait_for_revision(leader, after.revision, WAIT)
        .await
        .context("step 6: the restarted node did not catch up")?;
    check_all(&cluster, leader, true).await.context("step 6: the restarted node's own state")?;
    let failover = cluster.client_of(leader)?.get("demo/after-failover", true).await?;
    println!(
        "    node {leader} caught up to revision {}; its local state has all {KEYS} variables and {:?}",
        after.revision,
        String::from_utf8_lossy(&failover.value)
    );

    let back = wait_for(WAIT, "step 6: the agreement to be placed again", || async {
        let info = cluster.client()?.get_agreement(&admitted.id).await?;
        Ok((info.status == "placed").then_some(info))
    })
    .await?;
    println!(
        "    node {leader} is ready again; the agreement is placed again, attempt {}: {}",
        back.attempt,
        replicas(&back)
    );

    let mut heads = Vec::new();
    for node in cluster.nodes.values() {
        heads.push(client.chain_head_of(&node.addr, Some(admitted.event_index + 1)).await?.1);
    }
    if heads.windows(2).any(|pair| pair[0] != pair[1]) {
        bail!("step 6: the nodes' ledger chains differ");
    }
    println!("    all 3 nodes hold the same ledger hash chain up to the agreement's event");

    step(7, "prove the admission: an inclusion proof and a signed checkpoint, checked offline");
    let bundle = client.inclusion_bundle(admitted.event_index).await.context("step 7: fetching the proof")?;
    client.check_node_key(&bundle.checkpoint).await.context("step 7: the checkpoint signer")?;
    // In a temporary cluster directory the proof would vanish with it.
    let bundle_path = if temp.path() == dir {
        std::env::temp_dir().join(format!("docklock-demo-proof-{}.json", &admitted.id.to_hex()[..16]))
    } else {
        dir.join("agreement-proof.json")
    };
    std::fs::write(&bundle_path, serde_json::to_string_pretty(&bundle)?)?;
    let reread: Bundle = serde_json::from_str(&std::fs::read_to_string(&bundle_path)?)?;
    let verified = reread.verify(&[]).context("step 7: the bundle does not verify")?;
    println!(
        "    {} verifies offline: event {} of a checkpoint of {} events signed by node {}",
        bundle_path.display(),
        verified.event.index,
        verified.checkpoint.tree_size,
        verified.checkpoint.signer_node
    );
    println!("    (check it yourself: docklock audit verify {})", bundle_path.display());

    println!(
        "demo finished in {:.1} s: the signed agreement and every acknowledged write survived the leader's loss, \
         and the admission is proven",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The agreement the demo signs.
const SPEC: &str = "program: sha3-256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
args: [--rows, '1000']
replicas: 3
timeout_secs: 600
idempotency_key: demo-report
labels: {origin: docklock-demo}
";

fn replicas(info: &v1::AgreementInfo) -> String {
    let nodes: Vec<String> = info.placed.iter().map(|r| format!("node {} (attempt {})", r.node, r.attempt)).collect();
    if nodes.is_empty() {
        "no node".to_owned()
    } else {
        nodes.join(", ")
    }
}

/// Poll `check` every 100 ms until it gives a value or `timeout` passes.
async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) if Instant::now() >= deadline => return Err(error.context(format!("waiting for {what}"))),
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn short(key: &KeyPair) -> String {
    key.public().fingerprint().to_hex()[..16].to_owned()
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
