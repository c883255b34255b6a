//! Snapshots, joining, removal and data-directory identity on real processes.

use docklock_tests::{binary, cli, started_cluster, WAIT};

/// A node that was down while the log was compacted past its position
/// catches up through a snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn lagging_node_catches_up_through_a_snapshot() -> anyhow::Result<()> {
    let (_dir, mut cluster) = started_cluster(3, &["--snapshot-entries", "50", "--log-entries-kept", "5"]).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let lagging = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.kill(lagging)?;

    let client = cluster.client()?;
    let mut revision = 0;
    for i in 0..400 {
        revision = client.put(&format!("snap/{i:03}"), format!("{i}").into_bytes()).await?.revision;
    }
    let leader_status = client.status_of(cluster.addr(leader)).await?;
    assert!(leader_status.purged_index > 10, "the leader purged its log: {leader_status:?}");

    cluster.start(lagging)?;
    cluster.wait_for_revision(lagging, revision, WAIT).await?;
    let status = client.status_of(cluster.addr(lagging)).await?;
    assert!(status.snapshot_index > 0, "the lagging node installed a snapshot: {status:?}");
    let local = cluster.client_of(lagging)?;
    for i in 0..400 {
        assert_eq!(local.get(&format!("snap/{i:03}"), true).await?.value, format!("{i}").as_bytes());
    }
    Ok(())
}

/// A 4th node joins as a learner, is promoted to voter and serves reads;
/// then a member is removed and the cluster keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn node_joins_is_promoted_and_member_is_removed() -> anyhow::Result<()> {
    let (_dir, mut cluster) = started_cluster(3, &[]).await?;
    let client = cluster.client()?;
    for i in 0..20 {
        client.put(&format!("m/{i}"), b"x".to_vec()).await?;
    }
    cluster.add_joining_node(4)?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = client.status().await?;
        let voter = status.members.iter().any(|m| m.id == 4 && m.role == docklock_proto::v1::MemberRole::Voter as i32);
        if voter {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node 4 not promoted: {status:?}\n{}", cluster.log_tail(4, 30));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let fourth = cluster.client_of(4)?;
    assert_eq!(fourth.get("m/19", false).await?.value, b"x", "linearizable read through node 4");
    assert_eq!(fourth.get("m/19", true).await?.value, b"x", "node 4's own state");

    let leader = cluster.wait_for_leader(WAIT).await?;
    let removed = *cluster.nodes.keys().find(|id| **id != leader && **id != 4).unwrap();
    client.remove(removed).await?;
    cluster.kill(removed)?;
    let status = client.status().await?;
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert!(status.members.iter().all(|m| m.id != removed));
    let revision = client.put("after-remove", b"y".to_vec()).await?.revision;
    cluster.wait_for_revision(4, revision, WAIT).await?;
    Ok(())
}

/// An agent refuses a data directory that belongs to another node id or
/// another cluster, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_data_directory_is_refused() -> anyhow::Result<()> {
    let (dir, mut cluster) = started_cluster(3, &[]).await?;
    cluster.kill(1)?;
    let data_dir = cluster.nodes[&1].data_dir.display().to_string();
    let addr = cluster.addr(1).to_owned();

    let initial = format!("5={addr}");
    let (code, _, err) =
        cli(&["agent", "--id", "5", "--listen", &addr, "--data-dir", &data_dir, "--initial-cluster", &initial]);
    assert_ne!(code, 0);
    assert!(err.contains("belongs to node 1"), "{err}");

    let other = format!("1={addr}");
    let (code, _, err) =
        cli(&["agent", "--id", "1", "--listen", &addr, "--data-dir", &data_dir, "--initial-cluster", &other]);
    assert_ne!(code, 0);
    assert!(err.contains("belongs to cluster"), "{err}");

    // The refused starts changed nothing: node 1 restarts with its own flags.
    cluster.start(1)?;
    cluster.wait_for_leader(WAIT).await?;
    let revision = cluster.client()?.put("still", b"ok".to_vec()).await?.revision;
    cluster.wait_for_revision(1, revision, WAIT).await?;
    drop(dir);
    let _ = binary();
    Ok(())
}
