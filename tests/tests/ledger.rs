//! Identities, signed agreements and the audit ledger on a real 3-node
//! cluster: the CLI round trip from key generation to offline verification,
//! each bad input's status code, concurrent submission, and equal hash
//! chains across nodes after leader kills.

use std::path::Path;
use std::time::Duration;

use docklock_proto::agreement::{Envelope, Spec, ENVELOPE_BYTES_MAX};
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::crypto::{Algorithm, KeyPair};
use docklock_proto::identity::{ChangeKind, Role};
use docklock_proto::ledger::{Bundle, Checkpoint};
use docklock_tests::{cli, LocalCluster, WAIT};
use tonic::Code;

const SPEC: &str = "program: sha3-256:0101010101010101010101010101010101010101010101010101010101010101
args: [--rows, '1000']
replicas: 3
timeout_secs: 600
labels: {team: risk}
";

/// A started 3-node cluster with checkpoints every 100 ms.
async fn audited_cluster() -> anyhow::Result<(tempfile::TempDir, LocalCluster, KeyPair)> {
    docklock_tests::audited_cluster(3, &["--checkpoint-interval-ms", "100"]).await
}

async fn add_submitter(client: &Client, admin: &KeyPair, alg: Algorithm) -> anyhow::Result<KeyPair> {
    let key = KeyPair::generate(alg);
    client.change_identity(ChangeKind::Add { key: key.public().clone(), role: Role::Submitter }, admin).await?;
    Ok(key)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// Key generation, identity, submission and proof through the CLI, then
/// offline verification; a flipped bit and a foreign signer are caught.
#[tokio::test(flavor = "multi_thread")]
async fn cli_round_trip_from_keys_to_offline_verification() -> anyhow::Result<()> {
    let (dir, cluster, _admin) = audited_cluster().await?;
    let endpoints = cluster.endpoints().join(",");
    let at = |path: &str| dir.path().join(path);
    let docklock = |args: &[&str]| {
        let mut full: Vec<&str> = args.to_vec();
        full.extend_from_slice(&["--endpoints", endpoints.as_str()]);
        cli(&full)
    };

    for (name, alg) in [("mldsa", "ml-dsa-65"), ("dilithium", "dilithium3")] {
        let key_path = at(&format!("{name}.key"));
        let (code, out, err) = cli(&["key", "generate", "--alg", alg, "--out", path_str(&key_path)]);
        assert_eq!(code, 0, "{out}{err}");
        let (code, _, err) = cli(&["key", "generate", "--alg", alg, "--out", path_str(&key_path)]);
        assert_ne!(code, 0, "a key file is never overwritten");
        assert!(err.contains("refusing to overwrite"), "{err}");
        let (code, out, _) = cli(&["key", "show", path_str(&at(&format!("{name}.key.pub"))), "--output", "json"]);
        assert_eq!(code, 0);
        let shown: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!(shown["algorithm"], alg);

        let pubfile = at(&format!("{name}.key.pub"));
        let admin_key = at("admin.key");
        let (code, out, err) =
            docklock(&["identity", "add", path_str(&pubfile), "--role", "submitter", "--key", path_str(&admin_key)]);
        assert_eq!(code, 0, "{out}{err}");

        let spec_path = at(&format!("{name}.yaml"));
        std::fs::write(&spec_path, SPEC.replace("1000", name))?;
        let (code, out, err) =
            docklock(&["agreement", "submit", path_str(&spec_path), "--key", path_str(&key_path), "--output", "json"]);
        assert_eq!(code, 0, "{out}{err}");
        let submitted: serde_json::Value = serde_json::from_str(&out)?;
        let id = submitted["id"].as_str().expect("id").to_owned();
        assert_eq!(submitted["existed"], false);
        // The same submission again is recognised, not admitted twice.
        let (code, out, err) =
            docklock(&["agreement", "submit", path_str(&spec_path), "--key", path_str(&key_path), "--output", "json"]);
        assert_eq!(code, 0, "{out}{err}");
        let again: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!((again["existed"].as_bool(), again["id"].as_str()), (Some(true), Some(id.as_str())));

        let (code, out, _) = docklock(&["agreement", "get", &id, "--output", "json"]);
        assert_eq!(code, 0);
        let info: serde_json::Value = serde_json::from_str(&out)?;
        // Three ready workers: placed at admission, on all three.
        assert_eq!(info["status"], "placed");
        assert_eq!(info["placed"].as_array().map(Vec::len), Some(3), "{info}");
        assert!(info["spec_yaml"].as_str().unwrap().contains(name));
        let (code, out, _) = docklock(&["agreement", "watch", &id, "--once", "--output", "json"]);
        assert_eq!(code, 0);
        assert!(out.contains("placed"));

        let bundle_path = at(&format!("{name}.bundle.json"));
        let (code, out, err) = docklock(&["audit", "proof", &id, "--out", path_str(&bundle_path)]);
        assert_eq!(code, 0, "{out}{err}");
        // Offline: no endpoints are given and none are needed.
        let (code, out, err) = cli(&["audit", "verify", path_str(&bundle_path), "--endpoints", "127.0.0.1:1"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("agreement-admitted"), "{out}");

        let mut bundle: Bundle = serde_json::from_str(&std::fs::read_to_string(&bundle_path)?)?;
        let mut flipped = hex_flip(&bundle.inclusion_proof[0]);
        std::mem::swap(&mut bundle.inclusion_proof[0], &mut flipped);
        let tampered = at(&format!("{name}.tampered.json"));
        std::fs::write(&tampered, serde_json::to_string(&bundle)?)?;
        let (code, _, err) = cli(&["audit", "verify", path_str(&tampered)]);
        assert_eq!(code, 5, "{err}");
        assert!(err.contains("inclusion proof"), "the failed check is named: {err}");
    }

    // Specs the client refuses before signing: an unknown field, no digest.
    for (name, text, words) in [
        ("unknown-field", format!("{SPEC}colour: blue\n"), "colour"),
        ("no-digest", SPEC.lines().skip(1).collect::<Vec<_>>().join("\n"), "program"),
    ] {
        let path = at(&format!("{name}.yaml"));
        std::fs::write(&path, text)?;
        let (code, _, err) = docklock(&["agreement", "submit", path_str(&path), "--key", path_str(&at("mldsa.key"))]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains(words), "{name}: {err}");
    }

    let (code, out, _) = docklock(&["agreement", "list", "--status", "placed", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out)?.as_array().map(Vec::len), Some(2));

    // An old checkpoint is extended by the current log; a checkpoint signed
    // by a key that is not a node key is refused.
    let old = at("old-checkpoint.json");
    let (code, _, err) = docklock(&["audit", "checkpoint", "--out", path_str(&old)]);
    assert_eq!(code, 0, "{err}");
    cluster.client()?.put("after/checkpoint", b"x".to_vec()).await?;
    let (code, out, err) = docklock(&["audit", "consistency", path_str(&old)]);
    assert_eq!(code, 0, "{out}{err}");
    let mut forged: Checkpoint = serde_json::from_str(&std::fs::read_to_string(&old)?)?;
    let intruder = KeyPair::read(&at("mldsa.key"))?;
    forged.signer_key = intruder.public().clone();
    forged.signature = intruder.sign(&Checkpoint::signed_bytes(
        &forged.cluster_id,
        forged.tree_size,
        &forged.root,
        &forged.chain_head,
    ));
    let forged_path = at("forged-checkpoint.json");
    std::fs::write(&forged_path, serde_json::to_string(&forged)?)?;
    let (code, _, err) = docklock(&["audit", "consistency", path_str(&forged_path)]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("not a registered node key"), "{err}");
    Ok(())
}

/// `text` (hex) with one bit of its first byte flipped.
fn hex_flip(text: &str) -> String {
    let first = u8::from_str_radix(&text[..2], 16).expect("hex") ^ 0x01;
    format!("{first:02x}{}", &text[2..])
}

/// Every bad input gets its precise status, and nothing in the registry
/// changes.
#[tokio::test(flavor = "multi_thread")]
async fn bad_submissions_get_precise_statuses_and_change_nothing() -> anyhow::Result<()> {
    let (_dir, cluster, admin) = audited_cluster().await?;
    let client = cluster.client()?;
    let submitter = add_submitter(&client, &admin, Algorithm::MlDsa65).await?;
    let auditor = KeyPair::generate(Algorithm::Dilithium3);
    client.change_identity(ChangeKind::Add { key: auditor.public().clone(), role: Role::Auditor }, &admin).await?;
    let revoked = add_submitter(&client, &admin, Algorithm::Dilithium3).await?;
    client.change_identity(ChangeKind::Revoke { fingerprint: revoked.public().fingerprint() }, &admin).await?;

    let keyed = format!("{SPEC}idempotency_key: nightly\n");
    let spec = Spec::from_yaml(&keyed)?;
    let good = Envelope::sign(spec.canonical(), &submitter);
    let admitted = client.submit_agreement(&good).await?;
    let size_before = client.events(0, 1).await?.size;

    let mut tampered = good.clone();
    tampered.message = Spec::from_yaml(&SPEC.replace("replicas: 3", "replicas: 1"))?.canonical();
    let mut truncated = good.canonical();
    truncated.truncate(truncated.len() - 100);
    let mut relabelled = good.canonical();
    let tag_at = relabelled.len() - good.signature.as_bytes().len() - 5;
    relabelled[tag_at] = Algorithm::Dilithium3.code();
    let unknown = Envelope::sign(spec.canonical(), &KeyPair::generate(Algorithm::MlDsa65));
    let by_revoked = Envelope::sign(spec.canonical(), &revoked);
    let by_auditor = Envelope::sign(spec.canonical(), &auditor);
    let not_a_spec = Envelope::sign(spec_with_unknown_kind(), &submitter).canonical();
    let oversized = vec![7u8; ENVELOPE_BYTES_MAX + 10];
    let same_key_other_spec =
        Envelope::sign(Spec::from_yaml(&keyed.replace("'1000'", "'2000'"))?.canonical(), &submitter);

    let cases: Vec<(&str, Vec<u8>, Code, &str)> = vec![
        ("tampered spec", tampered.canonical(), Code::Unauthenticated, "does not verify"),
        ("truncated signature", truncated, Code::InvalidArgument, "truncated"),
        ("wrong algorithm tag", relabelled, Code::Unauthenticated, "tagged"),
        ("unknown key", unknown.canonical(), Code::Unauthenticated, "not registered"),
        ("revoked key", by_revoked.canonical(), Code::PermissionDenied, "revoked"),
        ("key without the role", by_auditor.canonical(), Code::PermissionDenied, "auditor"),
        ("not a spec", not_a_spec, Code::InvalidArgument, "workload kind"),
        ("oversized", oversized, Code::ResourceExhausted, ""),
        ("replayed envelope", good.canonical(), Code::AlreadyExists, "exists"),
        ("repeated idempotency key", same_key_other_spec.canonical(), Code::AlreadyExists, "exists"),
    ];
    let raw = raw_agreements(cluster.addr(1)).await?;
    for (name, envelope, code, words) in cases {
        let status = raw.clone().submit(docklock_proto::v1::SubmitAgreementRequest { envelope }).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(words), "{name}: {:?} should mention {words:?}", status.message());
        if code == Code::AlreadyExists {
            assert_eq!(docklock_proto::audit_client::existing_id(&status), Some(admitted.id), "{name}");
        }
    }
    // A follower forwards to the leader; the answer keeps the named id.
    for id in 1..=3 {
        let status = raw_agreements(cluster.addr(id))
            .await?
            .submit(docklock_proto::v1::SubmitAgreementRequest { envelope: good.canonical() })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
        assert_eq!(
            docklock_proto::audit_client::existing_id(&status),
            Some(admitted.id),
            "through node {id}: {status:?}"
        );
    }
    assert_eq!(client.events(0, 1).await?.size, size_before, "no refused request reached the ledger");
    let list = client.list_agreements(Default::default()).await?;
    assert_eq!(list.agreements.len(), 1);
    Ok(())
}

/// Canonical bytes that carry the spec prefix but are not a spec.
fn spec_with_unknown_kind() -> Vec<u8> {
    let mut writer = docklock_proto::canonical::Writer::with_prefix(docklock_proto::agreement::SPEC_PREFIX);
    writer.u8(9);
    writer.finish()
}

async fn raw_agreements(
    addr: &str,
) -> anyhow::Result<docklock_proto::v1::agreements_client::AgreementsClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(docklock_proto::v1::agreements_client::AgreementsClient::new(channel)
        .max_encoding_message_size(4 * ENVELOPE_BYTES_MAX))
}

/// The same agreement submitted at once through every node is one agreement.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_submissions_through_every_node_yield_one_agreement() -> anyhow::Result<()> {
    let (_dir, cluster, admin) = audited_cluster().await?;
    let submitter = add_submitter(&cluster.client()?, &admin, Algorithm::Dilithium3).await?;
    let envelope = Envelope::sign(Spec::from_yaml(SPEC)?.canonical(), &submitter);
    let mut tasks = Vec::new();
    for id in 1..=3 {
        for _ in 0..3 {
            let client = cluster.client_of(id)?;
            let envelope = envelope.clone();
            tasks.push(tokio::spawn(async move { client.submit_agreement(&envelope).await }));
        }
    }
    let mut fresh = 0;
    for task in tasks {
        let submitted = task.await??;
        assert_eq!(submitted.id, envelope.id());
        fresh += usize::from(!submitted.existed);
    }
    assert_eq!(fresh, 1, "exactly one submission admitted it");
    let list = cluster.client()?.list_agreements(Default::default()).await?;
    assert_eq!(list.agreements.len(), 1);
    // A following watch streams the current status first, then waits.
    let mut watch = cluster.client()?.watch_agreement(&envelope.id(), true).await?;
    let first = watch.message().await?.expect("the current status");
    assert_eq!(first.status, "placed");
    let next = tokio::time::timeout(Duration::from_millis(500), watch.message()).await;
    assert!(next.is_err(), "nothing more until the status changes: {next:?}");
    Ok(())
}

/// After leader kills under load, every node's hash chain is equal on the
/// common prefix, and a proof against tree size N verifies only against the
/// checkpoint of size N.
#[tokio::test(flavor = "multi_thread")]
async fn chains_agree_across_nodes_after_leader_kills() -> anyhow::Result<()> {
    let (_dir, mut cluster, admin) = audited_cluster().await?;
    let client =
        Client::new(cluster.endpoints(), ClientOptions { deadline: Duration::from_secs(20), ..Default::default() })?;
    let submitter = add_submitter(&client, &admin, Algorithm::MlDsa65).await?;
    let mut last = None;
    for round in 0..2 {
        for i in 0..20 {
            let spec = Spec::from_yaml(&SPEC.replace("'1000'", &format!("'{round}-{i}'")))?;
            last = Some(client.submit_agreement(&Envelope::sign(spec.canonical(), &submitter)).await?);
            client.put(&format!("round/{round}/{i}"), b"v".to_vec()).await?;
        }
        let leader = cluster.wait_for_leader(WAIT).await?;
        cluster.kill(leader)?;
        cluster.wait_for_leader(WAIT).await?;
        client.put(&format!("after-kill/{round}"), b"v".to_vec()).await?;
        cluster.start(leader)?;
    }
    let last = last.expect("submitted");
    let bundle = client.inclusion_bundle(last.event_index).await?;
    let revision = client.status().await?.revision;
    for id in 1..=3 {
        cluster.wait_for_revision(id, revision, WAIT).await?;
    }
    let mut heads = Vec::new();
    let probe = cluster.client()?;
    for id in 1..=3 {
        heads.push(probe.chain_head_of(cluster.addr(id), None).await?);
    }
    let common = heads.iter().map(|(size, _)| *size).min().expect("three nodes");
    let mut at_common = Vec::new();
    for id in 1..=3 {
        at_common.push(probe.chain_head_of(cluster.addr(id), Some(common)).await?.1);
    }
    assert!(at_common.windows(2).all(|pair| pair[0] == pair[1]), "chains differ at size {common}: {at_common:?}");

    // The bundle's proof is for its checkpoint's size: under any other
    // checkpoint it fails.
    bundle.verify(&[])?;
    client.put("grow", b"v".to_vec()).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let later = loop {
        let checkpoint = client.checkpoint(None).await?;
        if checkpoint.tree_size > bundle.checkpoint.tree_size {
            break checkpoint;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no later checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut swapped = bundle.clone();
    swapped.checkpoint = later;
    assert!(swapped.verify(&[]).is_err(), "a proof for size N must not verify against another checkpoint");
    Ok(())
}
