//! `docklock artifact ...` and `docklock run`, plus the agreement commands
//! that read a run's results (`status`, `logs`, `outputs`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use docklock_proto::agreement::{AgreementId, Digest, Envelope, Spec};
use docklock_proto::client::Client;
use docklock_proto::crypto::KeyPair;
use docklock_proto::v1;
use serde_json::json;

use crate::cli::{ClientArgs, Output, UsageError};

/// `docklock artifact ...`
#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// Upload a file (streamed, resumable); prints its digest.
    Put {
        /// The file.
        file: PathBuf,
    },
    /// Download an artifact by digest from any node that holds it.
    Get {
        /// `sha3-256:<hex>`.
        digest: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// The artifacts the contacted node holds.
    Ls,
}

fn parse_digest(text: &str) -> anyhow::Result<Digest> {
    Ok(Digest::parse(text).map_err(UsageError)?)
}

/// Every address that may hold an artifact: the endpoints, then every worker.
async fn holders(client: &Client, endpoints: &[String]) -> Vec<String> {
    let mut addresses = endpoints.to_vec();
    if let Ok(list) = client.list_nodes().await {
        for node in list.nodes {
            if !addresses.contains(&node.address) {
                addresses.push(node.address);
            }
        }
    }
    addresses
}

fn progress_printer(label: String) -> impl Fn(u64, u64) + Sync {
    let started = Instant::now();
    move |sent, total| {
        let percent = (sent * 100).checked_div(total).unwrap_or(100);
        let rate = sent as f64 / started.elapsed().as_secs_f64().max(0.001) / 1e6;
        eprint!("\r{label}: {sent}/{total} bytes ({percent}%, {rate:.1} MB/s)");
        if sent >= total {
            eprintln!();
        }
    }
}

/// Run `docklock artifact ...`.
pub async fn artifact(args: &ClientArgs, command: ArtifactCommand) -> anyhow::Result<()> {
    let client = args.client()?;
    match command {
        ArtifactCommand::Put { file } => {
            let digest = client.upload_file(&file, progress_printer(file.display().to_string())).await?;
            if args.output == Output::Json {
                println!("{}", json!({"digest": digest.to_string()}));
            } else {
                println!("{digest}");
            }
        }
        ArtifactCommand::Get { digest, out } => {
            let digest = parse_digest(&digest)?;
            let size = client.download_any(&holders(&client, &args.endpoints).await, &digest, &out).await?;
            eprintln!("{digest}: {size} bytes to {}", out.display());
        }
        ArtifactCommand::Ls => {
            let mut start_after = String::new();
            loop {
                let page = client.list_artifacts(&start_after, 1_000).await?;
                for artifact in &page.artifacts {
                    if args.output == Output::Json {
                        println!("{}", json!({"digest": artifact.digest, "size": artifact.size}));
                    } else {
                        println!("{} {:>12}", artifact.digest, artifact.size);
                    }
                }
                match page.artifacts.last() {
                    Some(last) if page.more => start_after.clone_from(&last.digest),
                    _ => break,
                }
            }
        }
    }
    Ok(())
}

/// Replace local file paths in a spec's `program`, `image` and `inputs` with
/// the digests of the uploaded files. Paths are relative to the spec's
/// directory.
async fn upload_local_artifacts(client: &Client, spec_path: &Path, text: &str) -> anyhow::Result<String> {
    let mut yaml: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| UsageError(format!("{}: {e}", spec_path.display())))?;
    let base = spec_path.parent().unwrap_or(Path::new("."));
    let upload = |value: &serde_yaml::Value| -> Option<PathBuf> {
        let text = value.as_str()?;
        (!text.starts_with("sha3-256:")).then(|| base.join(text))
    };
    let mut files: Vec<(Vec<String>, PathBuf)> = Vec::new();
    for key in ["program", "image"] {
        if let Some(path) = yaml.get(key).and_then(upload) {
            files.push((vec![key.to_owned()], path));
        }
    }
    if let Some(inputs) = yaml.get("inputs").and_then(|v| v.as_mapping()) {
        for (name, value) in inputs {
            if let (Some(name), Some(path)) = (name.as_str(), upload(value)) {
                files.push((vec!["inputs".to_owned(), name.to_owned()], path));
            }
        }
    }
    for (place, path) in files {
        let digest = client
            .upload_file(&path, progress_printer(path.display().to_string()))
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        let mut target = &mut yaml;
        for key in &place {
            target = target.get_mut(key.as_str()).expect("found above");
        }
        *target = serde_yaml::Value::String(digest.to_string());
    }
    Ok(serde_yaml::to_string(&yaml)?)
}

/// Final statuses of an agreement's run.
const FINAL: [&str; 4] = ["verified", "diverged", "timed-out", "failed"];

/// Run `docklock run SPEC --key KEY [--wait]`.
pub async fn run(args: &ClientArgs, spec_path: &Path, key: &Path, wait: bool, timeout: Duration) -> anyhow::Result<()> {
    let client = args.client()?;
    let text = std::fs::read_to_string(spec_path).with_context(|| format!("cannot read {}", spec_path.display()))?;
    let text = upload_local_artifacts(&client, spec_path, &text).await?;
    let spec = Spec::from_yaml(&text).map_err(|e| UsageError(format!("{}: {e}", spec_path.display())))?;
    let signer = KeyPair::read(key)?;
    let submitted = client.submit_agreement(&Envelope::sign(spec.canonical(), &signer)).await?;
    let id = submitted.id;
    if !wait {
        if args.output == Output::Json {
            println!("{}", json!({"id": id.to_hex(), "event_index": submitted.event_index}));
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    eprintln!("agreement {id} admitted (ledger event {})", submitted.event_index);
    let info = follow(&client, &id, timeout, args.output == Output::Text).await?;
    print_status(&info, args.output)?;
    if info.status != "verified" {
        bail!(crate::cli::NotVerified(format!("agreement {id} is {}", info.status)));
    }
    Ok(())
}

/// Poll until the agreement reaches a final status; print each change.
async fn follow(
    client: &Client,
    id: &AgreementId,
    timeout: Duration,
    chatty: bool,
) -> anyhow::Result<v1::AgreementInfo> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let info = client.get_agreement(id).await?;
        if info.status != last {
            if chatty {
                eprintln!("  {}", info.status);
            }
            last.clone_from(&info.status);
        }
        if FINAL.contains(&info.status.as_str()) {
            return Ok(info);
        }
        if Instant::now() >= deadline {
            bail!("agreement {id} is still {} after {:?}", info.status, timeout);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Print an agreement's status with each replica's run.
pub fn print_status(info: &v1::AgreementInfo, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        let runs: Vec<_> = info
            .runs
            .iter()
            .map(|run| {
                json!({"node": run.node, "attempt": run.attempt, "commitment": run.commitment, "root": run.root,
                       "verdict": run.verdict, "stdout": run.stdout, "witness": run.witness, "outputs": run.outputs})
            })
            .collect();
        let document = json!({"id": info.id, "status": info.status, "attempt": info.attempt, "runs": runs,
                              "pending_reason": info.pending_reason, "failure": info.failure});
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("agreement {}: {}", info.id, info.status);
    if !info.pending_reason.is_empty() {
        println!("  pending: {}", info.pending_reason);
    }
    if !info.failure.is_empty() {
        println!("  cannot run: {}", info.failure);
    }
    for run in &info.runs {
        let root = if run.root.is_empty() { "(committed, not revealed)".to_owned() } else { run.root.clone() };
        println!("  node {} attempt {}: {} root {root}", run.node, run.attempt, run.verdict);
    }
    Ok(())
}

/// The revealed run to read results from: node `node`'s, else the first.
fn chosen_run(info: &v1::AgreementInfo, node: Option<u64>) -> anyhow::Result<&v1::RunInfo> {
    let revealed = info.runs.iter().filter(|run| !run.root.is_empty());
    let run = match node {
        Some(node) => revealed.into_iter().find(|run| run.node == node),
        None => revealed.into_iter().next(),
    };
    run.with_context(|| {
        format!(
            "agreement {} has no revealed run{}",
            info.id,
            node.map(|n| format!(" from node {n}")).unwrap_or_default()
        )
    })
}

/// `docklock agreement logs ID [--node N]`: the run's stdout.
pub async fn logs(args: &ClientArgs, id: &AgreementId, node: Option<u64>) -> anyhow::Result<()> {
    let client = args.client()?;
    let info = client.get_agreement(id).await?;
    let run = chosen_run(&info, node)?;
    let addresses = holders(&client, &args.endpoints).await;
    let temporary = tempfile::NamedTempFile::new()?;
    client.download_any(&addresses, &parse_digest(&run.stdout)?, temporary.path()).await?;
    std::io::Write::write_all(&mut std::io::stdout(), &std::fs::read(temporary.path())?)?;
    // Stderr is kept only in the run's witness log.
    let witness = tempfile::NamedTempFile::new()?;
    client.download_any(&addresses, &parse_digest(&run.witness)?, witness.path()).await?;
    std::io::Write::write_all(&mut std::io::stderr(), &crate::cli_cage::recorded_stderr(witness.path())?)?;
    Ok(())
}

/// `docklock agreement outputs ID --out DIR`: the files the run left in `/out`.
pub async fn outputs(args: &ClientArgs, id: &AgreementId, out: &Path, node: Option<u64>) -> anyhow::Result<()> {
    let client = args.client()?;
    let info = client.get_agreement(id).await?;
    let run = chosen_run(&info, node)?;
    let addresses = holders(&client, &args.endpoints).await;
    std::fs::create_dir_all(out)?;
    for (name, digest) in &run.outputs {
        let target = out.join(name);
        if !target.starts_with(out) || name.split('/').any(|part| part == ".." || part.is_empty()) {
            bail!("output name {name:?} is not a relative path");
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let size = client.download_any(&addresses, &parse_digest(digest)?, &target).await?;
        println!("{} ({size} bytes, {digest})", target.display());
    }
    Ok(())
}

/// `docklock verify ID`: fetch one replica's witness log and every input it
/// recorded, replay the run locally in the cage, and compare with the
/// roots the cluster committed.
pub async fn verify(args: &ClientArgs, id: &AgreementId, node: Option<u64>) -> anyhow::Result<()> {
    let client = args.client()?;
    let info = client.get_agreement(id).await?;
    let (root, agreeing) = replay_locally(&client, &args.endpoints, &info, node).await?;
    println!(
        "verified locally: agreement {} ({}) replays to root {root}, the root nodes {agreeing:?} committed",
        info.id, info.status
    );
    Ok(())
}

/// Replay one revealed run of `info` here; returns the root and the nodes
/// that committed it. A root no node committed is a verification failure.
pub async fn replay_locally(
    client: &Client,
    endpoints: &[String],
    info: &v1::AgreementInfo,
    node: Option<u64>,
) -> anyhow::Result<(String, Vec<u64>)> {
    let run = chosen_run(info, node)?.clone();
    let addresses = holders(client, endpoints).await;
    let work = tempfile::tempdir()?;
    let witness = work.path().join("witness.log");
    client.download_any(&addresses, &parse_digest(&run.witness)?, &witness).await?;
    let mut inputs = Vec::new();
    for (index, (name, digest)) in crate::cli_cage::recorded_inputs(&witness)?.into_iter().enumerate() {
        let path = work.path().join(format!("input-{index}"));
        client.download_any(&addresses, &Digest(digest), &path).await?;
        // Modes as the executor staged them: the program executable, the
        // rest as the store keeps them.
        let mode = if name == crate::executor::PROGRAM_INPUT { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        inputs.push((name, path));
    }
    let replayed = work.path().join("replayed.log");
    let cache = docklock_cage::run::default_cache();
    let (root, _, _) = tokio::task::spawn_blocking(move || {
        crate::cli_cage::replay_run(&witness, &inputs, docklock_cage::rootfs::Rootfs::Host, cache, &replayed)
    })
    .await??;
    let root = hex::encode(root);
    let agreeing: Vec<u64> = info.runs.iter().filter(|r| r.root == root).map(|r| r.node).collect();
    if agreeing.is_empty() {
        return Err(crate::cli_audit::VerificationFailed(format!(
            "the replayed root {root} is not a root the cluster committed"
        ))
        .into());
    }
    Ok((root, agreeing))
}
