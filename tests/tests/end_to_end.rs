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
        let info = client.get_agreement(id).await?;
        if info.status == "verified" || info.status == "diverged" {
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
    let (code, status, _) = cli(&["agreement", "status", &id, "--output", "json", "--endpoints", &endpoints]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert_eq!(status["status"], "verified");

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
