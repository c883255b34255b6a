//! Each backend's faults do what they say on a real 3-node cluster: a cut
//! node cannot serve a linearizable read while the others commit, it catches
//! up after the heal, and the delay fault slows every commit by at least the
//! delay's floor. Runs as root (CI does). The Docker backend needs a Docker
//! engine; without one it is skipped with a message.

use std::time::{Duration, Instant};

use docklock_jepsen::network::Backend;
use docklock_jepsen::BackendKind;
use docklock_node::launcher::FAST_TIMING;
use docklock_proto::v1::variables_client::VariablesClient;
use docklock_proto::v1::{GetRequest, ReadConsistency};

fn docklock_binary() -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("test path");
    let profile_dir = test_exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    profile_dir.join("docklock")
}

/// One backend at a time: two clusters at once on two cores would measure the
/// machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn check_backend(kind: BackendKind) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir()?;
    let dir_path = dir.path().canonicalize()?;
    let (mut backend, mut cluster) = Backend::create(kind, &docklock_binary(), &dir_path, 3, &FAST_TIMING)?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let client = cluster.client_of(leader)?;
    client.put("before", b"1".to_vec()).await?;

    // Cut a follower off from both other nodes.
    let isolated = *cluster.nodes.keys().find(|id| **id != leader).expect("3 nodes");
    let others: Vec<u64> = cluster.nodes.keys().copied().filter(|id| *id != isolated).collect();
    let cuts: Vec<(u64, u64)> = others.iter().flat_map(|other| [(isolated, *other), (*other, isolated)]).collect();
    backend.cut(&cluster, &cuts)?;
    let revision = client.put("during", b"2".to_vec()).await?.revision;
    // A raw client of the cut-off node: the SDK would follow its hint to the
    // leader, which the host still reaches.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", cluster.addr(isolated)))?
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    let mut cut_off = VariablesClient::new(channel);
    let get = |consistency: ReadConsistency| GetRequest { key: "during".into(), consistency: consistency as i32 };
    let read = cut_off.get(get(ReadConsistency::Linearizable)).await;
    assert!(read.is_err(), "{kind:?}: a node cut off from the leader served a linearizable read: {read:?}");
    let stale = cut_off.get(get(ReadConsistency::Stale)).await;
    assert!(stale.is_err(), "{kind:?}: the cut-off node saw a write committed without it: {stale:?}");

    backend.heal()?;
    cluster.wait_for_revision(isolated, revision, Duration::from_secs(20)).await?;
    let caught_up = cut_off.get(get(ReadConsistency::Stale)).await?.into_inner();
    assert_eq!(caught_up.kv.map(|kv| kv.value), Some(b"2".to_vec()), "{kind:?}: caught up after the heal");

    // Delay: each commit needs a packet to a follower and one back, each
    // held at least delay - jitter = 20 ms.
    backend.start_delay(7)?;
    let mut fastest = Duration::MAX;
    for i in 0..5 {
        let started = Instant::now();
        client.put(&format!("delayed/{i}"), b"3".to_vec()).await?;
        fastest = fastest.min(started.elapsed());
    }
    let counts = backend.stop_delay()?;
    assert!(fastest >= Duration::from_millis(39), "{kind:?}: a commit took {fastest:?} under a 40 ± 20 ms delay");
    assert!(counts.delayed > 0, "{kind:?}: the delayer saw packets: {counts:?}");
    client.put("after", b"4".to_vec()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn netns_backend_cuts_and_delays_links() -> anyhow::Result<()> {
    check_backend(BackendKind::Netns).await
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_backend_cuts_and_delays_links() -> anyhow::Result<()> {
    check_backend(BackendKind::Loopback).await
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_backend_cuts_and_delays_links() -> anyhow::Result<()> {
    let engine = std::process::Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
    if !engine.is_ok_and(|output| output.status.success()) {
        eprintln!("SKIPPED: no Docker engine answers `docker info`; the docker backend was not tested");
        return Ok(());
    }
    check_backend(BackendKind::Docker).await
}
