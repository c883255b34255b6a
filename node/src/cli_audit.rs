//! The `key`, `identity`, `agreement` and `audit` commands.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use docklock_proto::agreement::{AgreementId, Envelope, Spec};
use docklock_proto::client::Client;
use docklock_proto::crypto::{Algorithm, Fingerprint, KeyPair, PublicKey};
use docklock_proto::identity::{ChangeKind, Role};
use docklock_proto::ledger::{Bundle, Checkpoint, EventBody};
use docklock_proto::v1;
use docklock_proto::v1::nodes_client::NodesClient;
use serde_json::json;

use crate::cli::{ClientArgs, Output};

/// A proof or checkpoint that does not verify: `docklock` exits with 5.
#[derive(Debug, thiserror::Error)]
#[error("verification failed: {0}")]
pub struct VerificationFailed(pub String);

/// `docklock key ...`
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a new key pair (mode 0600; an existing file is never overwritten).
    Generate {
        /// Signature algorithm.
        #[arg(long, default_value = "ml-dsa-65")]
        alg: Algorithm,
        /// The key pair file; the public key is also written to FILE.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a key's algorithm, fingerprint and public key.
    Show {
        /// A key pair or public key file.
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// `docklock identity ...`
#[derive(Subcommand, Debug)]
pub enum IdentityCommand {
    /// Every registered key with its role.
    List,
    /// Register a public key with a role (signed by an admin key).
    Add {
        /// The public key file.
        public_key: PathBuf,
        /// admin, submitter or auditor (node keys register themselves).
        #[arg(long)]
        role: Role,
        /// The admin's key pair file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Revoke a key for good (signed by an admin key).
    Revoke {
        /// The key's fingerprint.
        fingerprint: String,
        /// The admin's key pair file.
        #[arg(long)]
        key: PathBuf,
    },
}

/// `docklock agreement ...`
#[derive(Subcommand, Debug)]
pub enum AgreementCommand {
    /// Sign a YAML spec and submit it.
    Submit {
        /// The spec.
        spec: PathBuf,
        /// The signer's key pair file.
        #[arg(long)]
        key: PathBuf,
    },
    /// One agreement with its spec.
    Get {
        /// Agreement id.
        id: String,
    },
    /// Agreements, optionally by signer and status.
    List {
        /// Signer fingerprint.
        #[arg(long)]
        signer: Option<String>,
        /// Status (admitted, ...).
        #[arg(long)]
        status: Option<String>,
    },
    /// Where an agreement runs; with --explain, the ring walk that decided it.
    Placement {
        /// Agreement id.
        id: String,
        /// Show every node the walk visited and why it was chosen or skipped.
        #[arg(long)]
        explain: bool,
        /// Recompute on the contacted node from its own replica of the
        /// registry (no leader involved).
        #[arg(long)]
        stale: bool,
    },
    /// The run's status: each replica's commitment, root and verdict.
    Status {
        /// Agreement id.
        id: String,
    },
    /// The stdout of a replica's run (the first revealed one by default).
    Logs {
        /// Agreement id.
        id: String,
        /// Whose run.
        #[arg(long)]
        node: Option<u64>,
    },
    /// Download the files the run left in `/out`.
    Outputs {
        /// Agreement id.
        id: String,
        /// Directory to write them to.
        #[arg(long)]
        out: PathBuf,
        /// Whose run (the first revealed one by default; verified runs agree).
        #[arg(long)]
        node: Option<u64>,
    },
    /// Print the status and each change until interrupted.
    Watch {
        /// Agreement id.
        id: String,
        /// Print the current status and stop.
        #[arg(long)]
        once: bool,
    },
}

/// `docklock audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Write a self-contained proof bundle for an agreement (by id) or a
    /// ledger event (by index).
    Proof {
        /// Agreement id (64 hex characters) or event index.
        id: String,
        /// The bundle file.
        #[arg(long)]
        out: PathBuf,
        /// For an agreement: prove its verdict event (`verified` or
        /// `diverged`, with every node's root) instead of its admission.
        #[arg(long)]
        verdict: bool,
    },
    /// Check a bundle offline: event, inclusion proof, checkpoint signature.
    Verify {
        /// The bundle file.
        bundle: PathBuf,
        /// Accept only checkpoints signed by one of these public keys.
        #[arg(long = "trusted-key")]
        trusted_keys: Vec<PathBuf>,
    },
    /// Prove the cluster's current log extends an old checkpoint.
    Consistency {
        /// A checkpoint file (JSON, as `audit checkpoint` writes).
        old_checkpoint: PathBuf,
    },
    /// Print (or save) the latest checkpoint.
    Checkpoint {
        /// Also write it to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print ledger events.
    Events {
        /// First event.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Run `docklock key ...` (no cluster needed).
pub fn key(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate { alg, out } => {
            let pair = KeyPair::generate(alg);
            pair.write_new(&out)?;
            let public = public_path(&out);
            pair.public().write_new(&public)?;
            println!("{} key {}", alg, pair.public().fingerprint());
            println!("key pair   {}", out.display());
            println!("public key {}", public.display());
        }
        KeyCommand::Show { file, output } => {
            let key = PublicKey::read(&file)?;
            if output == Output::Json {
                let document = json!({
                    "algorithm": key.algorithm().name(),
                    "fingerprint": key.fingerprint().to_hex(),
                    "public_key": hex::encode(key.as_bytes()),
                });
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                println!("algorithm   {}", key.algorithm());
                println!("fingerprint {}", key.fingerprint());
                println!("public key  {}", hex::encode(key.as_bytes()));
            }
        }
    }
    Ok(())
}

/// Run `docklock identity ...`.
pub async fn identity(args: &ClientArgs, command: IdentityCommand) -> anyhow::Result<()> {
    let client = args.client()?;
    match command {
        IdentityCommand::List => {
            let list = client.list_identities().await?;
            if args.output == Output::Json {
                let rows: Vec<_> = list
                    .identities
                    .iter()
                    .map(|identity| {
                        json!({
                            "fingerprint": identity.fingerprint,
                            "algorithm": identity.algorithm,
                            "role": identity.role,
                            "node_id": identity.node_id,
                            "revoked": identity.revoked,
                            "added_event": identity.added_event,
                            "revoked_event": identity.revoked_event,
                        })
                    })
                    .collect();
                let document = json!({"cluster_id": list.cluster_id, "epoch": list.epoch, "identities": rows});
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                println!("cluster {} identity epoch {}", list.cluster_id, list.epoch);
                println!("{:<66} {:<11} {:<10} {:<5} STATE", "FINGERPRINT", "ALGORITHM", "ROLE", "NODE");
                for identity in &list.identities {
                    let node = identity.node_id.map(|id| id.to_string()).unwrap_or_default();
                    let state = if identity.revoked { "revoked" } else { "active" };
                    println!(
                        "{:<66} {:<11} {:<10} {:<5} {state}",
                        identity.fingerprint, identity.algorithm, identity.role, node
                    );
                }
            }
        }
        IdentityCommand::Add { public_key, role, key } => {
            let added = PublicKey::read(&public_key)?;
            let admin = KeyPair::read(&key)?;
            let response = client.change_identity(ChangeKind::Add { key: added, role }, &admin).await?;
            println!("added {} as {role} (identity epoch {})", response.fingerprint, response.epoch);
        }
        IdentityCommand::Revoke { fingerprint, key } => {
            let fingerprint = Fingerprint::from_hex(&fingerprint).map_err(crate::cli::UsageError)?;
            let admin = KeyPair::read(&key)?;
            let response = client.change_identity(ChangeKind::Revoke { fingerprint }, &admin).await?;
            println!("revoked {} (identity epoch {})", response.fingerprint, response.epoch);
        }
    }
    Ok(())
}

fn agreement_json(info: &v1::AgreementInfo) -> serde_json::Value {
    json!({
        "id": info.id,
        "status": info.status,
        "signer": info.signer,
        "idempotency_key": info.idempotency_key,
        "event_index": info.event_index,
        "replicas": info.replicas,
        "labels": info.labels,
        "history": info.history.iter().map(|c| json!({"status": c.status, "event_index": c.event_index})).collect::<Vec<_>>(),
        "attempt": info.attempt,
        "placed": replicas_json(&info.placed),
        "pending_reason": info.pending_reason,
    })
}

fn replicas_json(replicas: &[v1::ReplicaInfo]) -> serde_json::Value {
    json!(replicas.iter().map(|r| json!({"node": r.node, "attempt": r.attempt})).collect::<Vec<_>>())
}

fn replicas_text(replicas: &[v1::ReplicaInfo]) -> String {
    if replicas.is_empty() {
        return "nowhere".to_owned();
    }
    replicas.iter().map(|r| format!("node {} (attempt {})", r.node, r.attempt)).collect::<Vec<_>>().join(", ")
}

fn print_placement(placement: &v1::PlacementResponse, explain: bool, json_output: bool) -> anyhow::Result<()> {
    if json_output {
        let mut document = json!({
            "agreement_id": placement.agreement_id,
            "status": placement.status,
            "replicas": placement.replicas,
            "attempt": placement.attempt,
            "placed": replicas_json(&placement.placed),
            "lost": placement.lost,
            "pending_reason": placement.pending_reason,
            "would_add": placement.would_add,
            "from_scratch": placement.from_scratch,
        });
        if explain {
            document["key_point"] = json!(placement.key_point);
            document["walk"] = json!(placement
                .walk
                .iter()
                .map(|s| json!({"point": s.point, "node": s.node, "decision": s.decision}))
                .collect::<Vec<_>>());
            document["steps_omitted"] = json!(placement.steps_omitted);
        }
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!(
        "agreement {}: {}, {} replicas, attempt {}",
        placement.agreement_id, placement.status, placement.replicas, placement.attempt
    );
    println!("placed    {}", replicas_text(&placement.placed));
    if !placement.lost.is_empty() {
        println!("lost      {:?} (never placed there again)", placement.lost);
    }
    if !placement.pending_reason.is_empty() {
        println!("pending   {}", placement.pending_reason);
    }
    if !explain {
        return Ok(());
    }
    println!("ring walk from {} (recomputed from committed state):", placement.key_point);
    for step in &placement.walk {
        let holds = placement.placed.iter().find(|r| r.node == step.node);
        let holds = holds.map(|r| format!("  [holds attempt {}]", r.attempt)).unwrap_or_default();
        println!("  {}  node {:<6} {}{holds}", step.point, step.node, step.decision);
    }
    if placement.steps_omitted > 0 {
        println!("  ... {} more nodes visited", placement.steps_omitted);
    }
    if placement.would_add.is_empty() {
        println!("recomputation agrees: nothing to add");
    } else {
        println!("recomputation would add {:?} (a reconcile is pending)", placement.would_add);
    }
    println!("the walk alone chooses {:?}", placement.from_scratch);
    Ok(())
}

fn parse_id(text: &str) -> anyhow::Result<AgreementId> {
    Ok(AgreementId::from_hex(text).map_err(crate::cli::UsageError)?)
}

/// Run `docklock agreement ...`.
pub async fn agreement(args: &ClientArgs, command: AgreementCommand) -> anyhow::Result<()> {
    let client = args.client()?;
    let json_output = args.output == Output::Json;
    match command {
        AgreementCommand::Submit { spec, key } => {
            let text = std::fs::read_to_string(&spec).with_context(|| format!("cannot read {}", spec.display()))?;
            let parsed =
                Spec::from_yaml(&text).map_err(|e| crate::cli::UsageError(format!("{}: {e}", spec.display())))?;
            let signer = KeyPair::read(&key)?;
            let envelope = Envelope::sign(parsed.canonical(), &signer);
            let submitted = client.submit_agreement(&envelope).await?;
            if json_output {
                let document = json!({"id": submitted.id.to_hex(), "event_index": submitted.event_index, "existed": submitted.existed});
                println!("{document}");
            } else if submitted.existed {
                println!("{} (already admitted, ledger event {})", submitted.id, submitted.event_index);
            } else {
                println!("{} admitted (ledger event {})", submitted.id, submitted.event_index);
            }
        }
        AgreementCommand::Get { id } => {
            let info = client.get_agreement(&parse_id(&id)?).await?;
            if json_output {
                let mut document = agreement_json(&info);
                document["spec_yaml"] = json!(info.spec_yaml);
                document["envelope_hex"] = json!(hex::encode(&info.envelope));
                println!("{}", serde_json::to_string_pretty(&document)?);
            } else {
                println!("id        {}", info.id);
                println!("status    {}", info.status);
                println!("signer    {}", info.signer);
                println!("event     {}", info.event_index);
                println!("placed    {}", replicas_text(&info.placed));
                if !info.pending_reason.is_empty() {
                    println!("pending   {}", info.pending_reason);
                }
                println!("spec:\n{}", info.spec_yaml);
            }
        }
        AgreementCommand::List { signer, status } => {
            let mut start_after = String::new();
            let mut listed = Vec::new();
            loop {
                let request = v1::ListAgreementsRequest {
                    signer: signer.clone().unwrap_or_default(),
                    status: status.clone().unwrap_or_default(),
                    start_after: start_after.clone(),
                    limit: 1_000,
                };
                let page = client.list_agreements(request).await?;
                if let Some(last) = page.agreements.last() {
                    start_after.clone_from(&last.id);
                }
                listed.extend(page.agreements);
                if !page.more {
                    break;
                }
            }
            if json_output {
                println!("{}", serde_json::to_string_pretty(&listed.iter().map(agreement_json).collect::<Vec<_>>())?);
            } else {
                println!("{:<64} {:<10} {:>8} SIGNER", "ID", "STATUS", "EVENT");
                for info in &listed {
                    println!("{:<64} {:<10} {:>8} {}", info.id, info.status, info.event_index, &info.signer[..16]);
                }
            }
        }
        AgreementCommand::Placement { id, explain, stale } => {
            let request = v1::PlacementRequest { agreement_id: parse_id(&id)?.to_hex(), stale };
            let placement = client
                .call(|channel| {
                    let request = request.clone();
                    async move { NodesClient::new(channel).placement(request).await }
                })
                .await?;
            print_placement(&placement, explain, json_output)?;
        }
        AgreementCommand::Status { id } => {
            let info = client.get_agreement(&parse_id(&id)?).await?;
            crate::cli_runs::print_status(&info, args.output)?;
        }
        AgreementCommand::Logs { id, node } => crate::cli_runs::logs(args, &parse_id(&id)?, node).await?,
        AgreementCommand::Outputs { id, out, node } => {
            crate::cli_runs::outputs(args, &parse_id(&id)?, &out, node).await?;
        }
        AgreementCommand::Watch { id, once } => {
            let mut stream = client.watch_agreement(&parse_id(&id)?, !once).await?;
            while let Some(info) = stream.message().await? {
                if json_output {
                    println!("{}", agreement_json(&info));
                } else {
                    println!(
                        "{} {} (event {})",
                        info.id,
                        info.status,
                        info.history.last().map_or(0, |c| c.event_index)
                    );
                }
            }
        }
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    anyhow::ensure!(size <= 16 * 1024 * 1024, "{} is {size} bytes; no {what} is that large", path.display());
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| VerificationFailed(format!("{} is not a {what}: {e}", path.display())).into())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Run `docklock audit ...`.
pub async fn audit(args: &ClientArgs, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { bundle, trusted_keys } => verify_bundle(&bundle, &trusted_keys, args.output),
        AuditCommand::Proof { id, out, verdict } => {
            let client = args.client()?;
            let index = match id.parse::<u64>() {
                Ok(index) if id.len() < 64 && !verdict => index,
                _ => {
                    let info = client.get_agreement(&parse_id(&id)?).await?;
                    if verdict {
                        info.history
                            .iter()
                            .find(|change| {
                                matches!(change.status.as_str(), "verified" | "diverged" | "timed-out" | "failed")
                            })
                            .map(|change| change.event_index)
                            .ok_or_else(|| {
                                anyhow::Error::new(tonic::Status::failed_precondition(format!(
                                    "agreement {id} is {} and has no verdict yet",
                                    info.status
                                )))
                            })?
                    } else {
                        info.event_index
                    }
                }
            };
            let bundle = client.inclusion_bundle(index).await?;
            client.check_node_key(&bundle.checkpoint).await?;
            write_json(&out, &bundle)?;
            println!(
                "wrote {}: event {index} in checkpoint of {} events signed by node {}",
                out.display(),
                bundle.checkpoint.tree_size,
                bundle.checkpoint.signer_node
            );
            Ok(())
        }
        AuditCommand::Consistency { old_checkpoint } => {
            let client = args.client()?;
            let old: Checkpoint = read_json(&old_checkpoint, "checkpoint")?;
            let new = client.prove_consistency(&old).await.map_err(|status| match status.code() {
                tonic::Code::DataLoss | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                    anyhow::Error::new(VerificationFailed(status.message().to_owned()))
                }
                _ => status.into(),
            })?;
            println!("consistent: the log of {} events extends the checkpoint of {}", new.tree_size, old.tree_size);
            Ok(())
        }
        AuditCommand::Checkpoint { out } => {
            let checkpoint = args.client()?.checkpoint(None).await?;
            if let Some(out) = out {
                write_json(&out, &checkpoint)?;
            }
            println!("{}", serde_json::to_string_pretty(&checkpoint)?);
            Ok(())
        }
        AuditCommand::Events { start, limit } => {
            let client = args.client()?;
            let page = client.events(start, limit).await?;
            let events = Client::decode_events(&page)?;
            for event in &events {
                if args.output == Output::Json {
                    println!(
                        "{}",
                        json!({"index": event.index, "raft_index": event.raft_index, "kind": event.body.kind(), "summary": summary(&event.body)})
                    );
                } else {
                    println!(
                        "{:>8} {:>8} {:<20} {}",
                        event.index,
                        event.raft_index,
                        event.body.kind(),
                        summary(&event.body)
                    );
                }
            }
            Ok(())
        }
    }
}

fn summary(body: &EventBody) -> String {
    match body {
        EventBody::Membership { voters, learners } => format!("voters {voters:?} learners {learners:?}"),
        EventBody::AdminBootstrapped { key } => format!("admin {}", key.fingerprint()),
        EventBody::IdentityAdded { key, role, node_id, .. } => match node_id {
            Some(node) => format!("{} as {role} of node {node}", key.fingerprint()),
            None => format!("{} as {role}", key.fingerprint()),
        },
        EventBody::IdentityRevoked { fingerprint, .. } => format!("{fingerprint}"),
        EventBody::VariablePut { key, version, .. } => format!("{key} version {version}"),
        EventBody::VariableDeleted { key } => key.clone(),
        EventBody::AgreementAdmitted { id, .. } => id.to_hex(),
        EventBody::NodeRegistered { node_id, .. } => format!("node {node_id}"),
        EventBody::NodeStatusChanged { node_id, status, draining } => {
            format!("node {node_id} {status}{}", if *draining { " draining" } else { "" })
        }
        EventBody::AgreementPlaced { id, attempt, nodes, added } => {
            format!("{} attempt {attempt} on {nodes:?} (added {added:?})", id.to_hex())
        }
        EventBody::AgreementPending { id, reason } => format!("{} pending: {reason}", id.to_hex()),
        EventBody::RunReported { id, node, .. } => format!("{} report by node {node}", id.to_hex()),
        EventBody::AgreementConcluded { id, verdict, roots } => {
            format!("{} {verdict} by nodes {:?}", id.to_hex(), roots.iter().map(|(n, _)| n).collect::<Vec<_>>())
        }
    }
}

fn verify_bundle(path: &Path, trusted_keys: &[PathBuf], output: Output) -> anyhow::Result<()> {
    let bundle: Bundle = read_json(path, "proof bundle")?;
    let trusted = trusted_keys.iter().map(|path| PublicKey::read(path)).collect::<Result<Vec<_>, _>>()?;
    let verified = bundle.verify(&trusted).map_err(|e| VerificationFailed(e.to_string()))?;
    let event = &verified.event;
    let checkpoint = &verified.checkpoint;
    if output == Output::Json {
        let document = json!({
            "verified": true,
            "event_index": event.index,
            "kind": event.body.kind(),
            "summary": summary(&event.body),
            "tree_size": checkpoint.tree_size,
            "root": hex::encode(checkpoint.root),
            "signer_node": checkpoint.signer_node,
            "signer": checkpoint.signer_key.fingerprint().to_hex(),
            "signer_pinned": !trusted.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!("OK event {} ({}: {})", event.index, event.body.kind(), summary(&event.body));
        println!("   included in checkpoint of {} events, root {}", checkpoint.tree_size, hex::encode(checkpoint.root));
        println!(
            "   signed by node {} key {}{}",
            checkpoint.signer_node,
            checkpoint.signer_key.fingerprint(),
            if trusted.is_empty() { " (not pinned: pass --trusted-key to require it)" } else { " (pinned)" }
        );
    }
    Ok(())
}
