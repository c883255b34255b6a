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
use docklock_proto::ledger::{Bundle, EventBody};
use docklock_proto::v1;

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

    step(4, "an admin adds a submitter key (Dilithium3); it uploads a program and an input and signs an agreement");
    let client = cluster.client()?;
    wait_for(WAIT, "step 4: the three workers to register", || async {
        let list = client.list_nodes().await?;
        Ok((list.nodes.iter().filter(|node| node.status == "ready").count() == 3).then_some(()))
    })
    .await?;
    let submitter = KeyPair::generate(Algorithm::Dilithium3);
    client
        .change_identity(ChangeKind::Add { key: submitter.public().clone(), role: Role::Submitter }, &admin)
        .await
        .context("step 4: adding the submitter")?;
    let shell = std::fs::canonicalize("/bin/sh").context("step 4: this host has no /bin/sh")?;
    let rows_path = dir.join("rows.csv");
    std::fs::write(&rows_path, ROWS)?;
    let program = client.upload_file(&shell, |_, _| {}).await.context("step 4: uploading the program")?;
    let rows = client.upload_file(&rows_path, |_, _| {}).await.context("step 4: uploading the input")?;
    println!("    program {} ({}) and input rows.csv {rows} uploaded", shell.display(), program);
    let spec = Spec::from_yaml(&spec_yaml(&program.to_string(), &rows.to_string())).context("step 4: the spec")?;
    let envelope = Envelope::sign(spec.canonical(), &submitter);
    let admitted = client.submit_agreement(&envelope).await.context("step 4: submitting")?;
    println!("    agreement {} admitted as ledger event {}", admitted.id, admitted.event_index);
    let forged = Envelope { signer: KeyPair::generate(Algorithm::MlDsa65).public().clone(), ..envelope.clone() };
    let refused = client.submit_agreement(&forged).await.err().map(|status| status.code());
    println!("    the same spec under a forged signer is refused: {refused:?}");
    if refused != Some(tonic::Code::Unauthenticated) {
        bail!("step 4: a forged envelope was not refused as unauthenticated");
    }

    step(5, "placed on k = 3 workers by consistent hashing, run in each node's cage, verified by replication");
    let info = wait_for(WAIT, "step 5: the verdict", || async {
        let info = client.get_agreement(&admitted.id).await?;
        Ok(matches!(info.status.as_str(), "verified" | "diverged" | "timed-out" | "failed").then_some(info))
    })
    .await?;
    println!("    placed on {}", replicas(&info));
    for run in &info.runs {
        println!("    node {} ran it: {}, witness root {}", run.node, run.verdict, run.root);
    }
    if info.status != "verified" {
        bail!("step 5: the agreement is {}, not verified", info.status);
    }
    let verdict_event = info.history.iter().find(|change| change.status == "verified").map(|c| c.event_index);
    println!("    {} roots agree: verified (ledger event {})", info.runs.len(), verdict_event.unwrap_or_default());
    let result = dir.join("result.txt");
    let digest = info.runs[0].outputs.get("result.txt").context("step 5: no result.txt among the outputs")?;
    client
        .download_any(
            &cluster.endpoints(),
            &docklock_proto::agreement::Digest::parse(digest).map_err(anyhow::Error::msg)?,
            &result,
        )
        .await
        .context("step 5: downloading the output")?;
    println!("    /out/result.txt: {}", std::fs::read_to_string(&result)?.trim_end());

    step(6, &format!("kill -9 the leader (node {leader})"));
    cluster.kill(leader)?;
    let new_leader = cluster.wait_for_leader(WAIT).await.context("step 6: no new leader after the kill")?;
    if new_leader == leader {
        bail!("step 6: the killed node is still reported as leader");
    }
    println!("    node {new_leader} was elected leader");
    let after = cluster
        .client()?
        .put("demo/after-failover", b"written while node was down".to_vec())
        .await
        .context("step 6: write after failover")?;
    println!("    a write after failover committed at revision {}", after.revision);
    let status = cluster.client()?.get_agreement(&admitted.id).await?.status;
    println!("    the new leader reports the agreement {status}");

    step(7, &format!("restart node {leader} from its data directory"));
    cluster.start(leader)?;
    cluster
        .wait_for_revision(leader, after.revision, WAIT)
        .await
        .context("step 7: the restarted node did not catch up")?;
    check_all(&cluster, leader, true).await.context("step 7: the restarted node's own state")?;
    println!("    node {leader} caught up to revision {}; its local state has every variable", after.revision);
    let verdict_event = verdict_event.context("step 7: no verdict event")?;
    let mut heads = Vec::new();
    for node in cluster.nodes.values() {
        heads.push(client.chain_head_of(&node.addr, Some(verdict_event + 1)).await?.1);
    }
    if heads.windows(2).any(|pair| pair[0] != pair[1]) {
        bail!("step 7: the nodes' ledger chains differ");
    }
    println!("    all 3 nodes hold the same ledger hash chain up to the verdict");

    step(8, "prove the verdict: an inclusion proof of its ledger event and a signed checkpoint, checked offline");
    let bundle = client.inclusion_bundle(verdict_event).await.context("step 8: fetching the proof")?;
    client.check_node_key(&bundle.checkpoint).await.context("step 8: the checkpoint signer")?;
    // In a temporary cluster directory the proof would vanish with it.
    let bundle_path = if temp.path() == dir {
        std::env::temp_dir().join(format!("docklock-demo-proof-{}.json", &admitted.id.to_hex()[..16]))
    } else {
        dir.join("verdict-proof.json")
    };
    std::fs::write(&bundle_path, serde_json::to_string_pretty(&bundle)?)?;
    let reread: Bundle = serde_json::from_str(&std::fs::read_to_string(&bundle_path)?)?;
    let verified = reread.verify(&[]).context("step 8: the bundle does not verify")?;
    let EventBody::AgreementConcluded { verdict, roots, .. } = &verified.event.body else {
        bail!("step 8: the proven event is not the verdict");
    };
    println!(
        "    {} verifies offline: event {} ({verdict} by nodes {:?}) of a checkpoint of {} events signed by node {}",
        bundle_path.display(),
        verified.event.index,
        roots.iter().map(|(node, _)| node).collect::<Vec<_>>(),
        verified.checkpoint.tree_size,
        verified.checkpoint.signer_node
    );
    println!("    (check it yourself: docklock audit verify {})", bundle_path.display());

    step(9, "replay the run here: its witness log and inputs from the cluster, the program in this process's cage");
    let (root, agreeing) = crate::cli_runs::replay_locally(&client, &cluster.endpoints(), &info, None)
        .await
        .context("step 9: the local replay")?;
    println!("    the replay matches record for record: root {root}, as nodes {agreeing:?} committed");

    println!(
        "demo finished in {:.1} s: the signed agreement ran on three nodes and was verified by their agreeing roots; \
         the verdict and every acknowledged write survived the leader's loss, and the verdict is proven and replayed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The demo's input.
pub const ROWS: &str = "region,amount\neu-1,120\nus-2,75\nap-3,210\n";

/// The demo's workload, run by `/bin/sh -c`: count the input's rows, draw
/// seeded random bytes and read the time, and write all three to /out. It
/// is deterministic only because the cage makes it so.
pub const SCRIPT: &str = "set -e
rows=$(wc -l < /in/rows.csv)
echo \"counted $rows rows\" >&2
random=$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo \"rows=$rows random=$random time=$now\" > /out/result.txt
cat /out/result.txt";

/// The agreement the demo signs: `program` runs `SCRIPT` over `rows`.
pub fn spec_yaml(program: &str, rows: &str) -> String {
    format!(
        "program: {program}\nargs: ['-c', {SCRIPT:?}]\ninputs: {{rows.csv: {rows}}}\nreplicas: 3\n\
         timeout_secs: 120\nidempotency_key: demo-report\nlabels: {{origin: docklock-demo}}\n"
    )
}

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
