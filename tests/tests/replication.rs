//! Replication, deduplication, bad input and the CLI on a 3-process cluster.

use docklock_proto::v1::variables_client::VariablesClient;
use docklock_proto::v1::{self, cas_request};
use docklock_tests::{cli, started_cluster};
use tonic::Code;

/// A write through any node is visible to linearizable reads on every node.
/// Its nodes run on two threads each, as a node alone on a machine does
/// (the launcher's nodes otherwise run on one).
#[tokio::test(flavor = "multi_thread")]
async fn writes_on_any_node_are_readable_on_every_node() -> anyhow::Result<()> {
    let (_dir, cluster) = started_cluster(3, &["--threads", "2"]).await?;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for (round, writer) in ids.iter().enumerate() {
        let key = format!("k/{round}");
        cluster.client_of(*writer)?.put(&key, format!("from-{writer}").into_bytes()).await?;
        for reader in &ids {
            let kv = cluster.client_of(*reader)?.get(&key, false).await?;
            assert_eq!(kv.value, format!("from-{writer}").as_bytes(), "node {reader} read {key}");
        }
    }
    Ok(())
}

/// A write retried with the same (client id, serial) is applied once and
/// returns its first result.
#[tokio::test(flavor = "multi_thread")]
async fn retried_write_applies_once() -> anyhow::Result<()> {
    let (_dir, cluster) = started_cluster(3, &[]).await?;
    let leader = cluster.nodes.keys().next().copied().unwrap();
    let mut raw = VariablesClient::connect(format!("http://{}", cluster.addr(leader))).await?;
    let session = |serial| Some(v1::WriteSession { client_id: "retrying-client".into(), serial });
    let put =
        |value: &str, serial| v1::PutRequest { key: "once".into(), value: value.into(), session: session(serial) };

    let first = raw.put(put("a", 1)).await?.into_inner();
    let second = raw.put(put("b", 2)).await?.into_inner();
    let retried = raw.put(put("a", 1)).await?.into_inner();
    assert_eq!(retried, first, "a retry returns the first outcome");

    let kv = cluster.client()?.get("once", false).await?;
    assert_eq!(kv.value, b"b", "the retry did not overwrite the later write");
    assert_eq!(kv.version, 2, "exactly two writes were applied");
    assert_eq!(kv.mod_revision, second.revision, "the key last changed at the second write, not at the retry");
    // The agents write too (node keys, worker registrations), so the
    // registry's revision may move between these calls: the read's lies
    // between the writes made before and after it.
    let read = raw.get(v1::GetRequest { key: "once".into(), consistency: 0 }).await?.into_inner();
    let after = raw.put(put("c", 3)).await?.into_inner();
    assert!(
        kv.mod_revision <= read.revision && read.revision < after.revision,
        "a read reports the registry revision it saw: {} <= {} < {}",
        kv.mod_revision,
        read.revision,
        after.revision
    );
    Ok(())
}

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call must be refused").code()
}

/// Malformed and oversized requests get precise statuses, and nothing that
/// was acknowledged before is lost.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_precise_statuses() -> anyhow::Result<()> {
    let (_dir, cluster) = started_cluster(3, &[]).await?;
    let client = cluster.client()?;
    client.put("kept", b"safe".to_vec()).await?;

    assert_eq!(code(client.put("big", vec![7; 1024 * 1024 + 1]).await), Code::ResourceExhausted);
    assert_eq!(code(client.put("", b"x".to_vec()).await), Code::InvalidArgument);
    assert_eq!(code(client.put(&"k".repeat(5000), b"x".to_vec()).await), Code::ResourceExhausted);
    assert_eq!(code(client.get("missing", false).await), Code::NotFound);
    assert_eq!(
        code(client.cas("missing", cas_request::Expect::ExpectValue(b"x".to_vec()), b"y".to_vec()).await),
        Code::NotFound
    );
    assert_eq!(
        code(client.cas("kept", cas_request::Expect::ExpectValue(b"other".to_vec()), b"y".to_vec()).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(client.cas("kept", cas_request::Expect::ExpectVersion(7), b"y".to_vec()).await),
        Code::FailedPrecondition
    );
    assert_eq!(code(client.list("", "", 1_000_000, false).await), Code::InvalidArgument);
    assert_eq!(code(client.remove(42).await), Code::NotFound);
    assert_eq!(code(client.promote(42).await), Code::NotFound);
    assert_eq!(code(client.add_learner(9, "not-an-address", "").await), Code::InvalidArgument);
    assert_eq!(code(client.add_learner(0, "127.0.0.1:1", "").await), Code::InvalidArgument);
    assert_eq!(code(client.add_learner(9, "127.0.0.1:1", "other-cluster").await), Code::FailedPrecondition);

    // A message far over the decode bound is refused before it is read.
    let mut raw = VariablesClient::connect(format!("http://{}", cluster.addr(1)))
        .await?
        .max_encoding_message_size(64 * 1024 * 1024);
    let huge = v1::PutRequest { key: "huge".into(), value: vec![1; 8 * 1024 * 1024], session: None };
    assert_eq!(raw.put(huge).await.unwrap_err().code(), Code::ResourceExhausted);

    let bad_consistency = v1::GetRequest { key: "kept".into(), consistency: 99 };
    assert_eq!(raw.get(bad_consistency).await.unwrap_err().code(), Code::InvalidArgument);

    assert_eq!(client.get("kept", false).await?.value, b"safe");
    for id in cluster.nodes.keys() {
        assert!(cluster.client_of(*id)?.status().await.is_ok(), "node {id} still serves");
    }
    Ok(())
}

/// The Raft service refuses a message without the cluster's peer tag (the
/// cluster id it also checks is public). And from a member holding the
/// secret, a snapshot stream with a chunk at offset 2^45 (it made the
/// receiving node reserve 32 TiB and abort) or bytes that are not a snapshot
/// (they would have stopped its Raft at install) are refused to the sender;
/// the node keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_snapshot_stream_is_refused_and_the_node_keeps_serving() -> anyhow::Result<()> {
    use docklock_proto::v1::raft_client::RaftClient;
    use docklock_raft::network::PeerSecret;
    use docklock_raft::types::{SnapshotMeta, TypeConfig};
    use openraft::raft::InstallSnapshotRequest;
    use openraft::{CommittedLeaderId, LogId, StoredMembership, Vote};

    let (_dir, cluster) = started_cluster(3, &[]).await?;
    let client = cluster.client()?;
    client.put("kept", b"safe".to_vec()).await?;
    let status = client.status().await?;
    let target = cluster.nodes.keys().copied().find(|id| Some(*id) != status.leader_id).expect("a follower");
    let mut raft = RaftClient::connect(format!("http://{}", cluster.addr(target))).await?;
    let term = status.term + 100;
    let chunk = |offset: u64, data: Vec<u8>, done: bool| {
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, 1), 1_000_000)),
            last_membership: StoredMembership::default(),
            snapshot_id: "hostile".into(),
        };
        let rpc = InstallSnapshotRequest::<TypeConfig> { vote: Vote::new_committed(term, 1), meta, offset, data, done };
        let payload = bincode::serialize(&rpc).unwrap();
        v1::RaftMessage { cluster_id: status.cluster_id.clone(), from: 1, payload, mac: vec![] }
    };
    let secret = PeerSecret::read(&cluster.peer_secret_path()).map_err(anyhow::Error::msg)?;
    let tagged = |secret: &PeerSecret, mut message: v1::RaftMessage| {
        message.mac = secret.tag("InstallSnapshot", false, &message);
        message
    };
    let untagged = raft.install_snapshot(chunk(0, vec![1; 16], false)).await.unwrap_err();
    assert_eq!(untagged.code(), Code::Unauthenticated, "{untagged}");
    let stranger = PeerSecret::new(&[9; 32]).map_err(anyhow::Error::msg)?;
    let wrong = raft.install_snapshot(tagged(&stranger, chunk(0, vec![1; 16], false))).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong}");
    assert!(wrong.message().contains("peer tag"), "{wrong}");
    let chunk = |offset, data, done| tagged(&secret, chunk(offset, data, done));
    let refused = |reply: Result<tonic::Response<v1::RaftMessage>, tonic::Status>| -> anyhow::Result<String> {
        let payload = reply?.into_inner().payload;
        type Reply = Result<
            openraft::raft::InstallSnapshotResponse<u64>,
            openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
        >;
        let reply: Reply = bincode::deserialize(&payload)?;
        Ok(reply.expect_err("the chunk must be refused").to_string())
    };
    raft.install_snapshot(chunk(0, vec![1; 16], false)).await?;
    let gap = refused(raft.install_snapshot(chunk(1 << 45, vec![1; 16], false)).await)?;
    assert!(gap.contains("leaves a gap after the 16 bytes"), "{gap}");
    let garbage = refused(raft.install_snapshot(chunk(16, vec![2; 16], true)).await)?;
    assert!(garbage.contains("snapshot refused"), "{garbage}");

    // The node is up, still a follower of the same leader, and replicates.
    client.put("after", b"x".to_vec()).await?;
    let after = cluster.client_of(target)?;
    assert_eq!(after.get("after", false).await?.value, b"x");
    assert_eq!(after.get("kept", false).await?.value, b"safe");
    assert_eq!(after.status().await?.leader_id, status.leader_id);
    Ok(())
}

/// The CLI's kv and cluster commands work, print JSON on request, and use
/// the documented exit codes.
#[tokio::test(flavor = "multi_thread")]
async fn cli_commands_and_exit_codes() -> anyhow::Result<()> {
    let (_dir, cluster) = started_cluster(3, &[]).await?;
    let endpoints = cluster.endpoints().join(",");
    let kv = |args: &[&str]| {
        let mut all = vec!["kv"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--endpoints", endpoints.as_str()]);
        cli(&all)
    };
    let (code, out, err) = kv(&["put", "app/colour", "blue"]);
    assert_eq!(code, 0, "put failed: {err}");
    assert!(out.starts_with("OK revision"), "{out}");

    let (code, out, _) = kv(&["get", "app/colour"]);
    assert_eq!((code, out.trim()), (0, "blue"));

    let (code, out, _) = kv(&["get", "app/colour", "--output", "json"]);
    assert_eq!(code, 0);
    let document: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(document["value"], "blue");
    assert_eq!(document["version"], 1);

    let (code, _, err) = kv(&["cas", "app/colour", "red", "--expect", "green"]);
    assert_eq!(code, 4, "a refused compare-and-set exits 4: {err}");
    let (code, _, err) = kv(&["cas", "app/colour", "red", "--expect", "blue"]);
    assert_eq!(code, 0, "{err}");

    let (code, _, err) = kv(&["get", "app/missing"]);
    assert_eq!(code, 3, "a missing key exits 3");
    assert!(err.starts_with("error: ") && err.trim().lines().count() == 1, "one-line reason: {err}");

    kv(&["put", "app/size", "xl"]);
    let (code, out, _) = kv(&["list", "app/"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["app/colour\tred", "app/size\txl"]);

    let (code, out, _) = kv(&["delete", "app/size"]);
    assert_eq!((code, out.trim()), (0, "deleted app/size"));

    let (code, out, err) = cli(&["cluster", "status", "--output", "json", "--endpoints", &endpoints]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert!(status["leader_id"].as_u64().is_some());

    let (code, _, err) = cli(&["kv", "get", "x", "--endpoints", "127.0.0.1:1", "--timeout-ms", "500"]);
    assert_eq!(code, 1, "an unreachable cluster exits 1");
    assert!(err.starts_with("error: "), "{err}");
    Ok(())
}

/// Standard tools work: `grpc.health.v1` reports liveness and readiness, and
/// server reflection lists the DockLock services.
#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_are_served() -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (_dir, cluster) = started_cluster(3, &[]).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(2)))?.connect().await?;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "docklock.v1.Variables"] {
        let request = HealthCheckRequest { service: service.into() };
        let status = health.check(request).await?.into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection.server_reflection_info(tokio_stream::iter([request])).await?.into_inner();
    let reply = replies.message().await?.expect("one reflection reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply: {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["docklock.v1.Cluster", "docklock.v1.Variables", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    Ok(())
}
