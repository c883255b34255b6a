//! Leader loss, whole-cluster crashes and quorum loss on real processes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use docklock_proto::client::{Client, ClientOptions};
use docklock_tests::{started_cluster, LocalCluster, WAIT};
use tonic::Code;

/// Writers that record every acknowledged write until told to stop.
struct WriteLoad {
    acknowledged: Arc<Mutex<BTreeMap<String, String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteLoad {
    fn start(cluster: &LocalCluster, writers: usize) -> anyhow::Result<Self> {
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let options = ClientOptions { deadline: Duration::from_secs(3), ..ClientOptions::default() };
            let client = Client::new(cluster.endpoints(), options)?;
            let acknowledged = acknowledged.clone();
            let stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded: a writer stops after this many writes even if never told.
                for i in 0..100_000u32 {
                    if *stopped.borrow() {
                        return;
                    }
                    let (key, value) = (format!("load/{writer}/{i}"), format!("v{i}"));
                    // Only acknowledged writes are recorded; failed or timed
                    // out ones are indeterminate and not checked.
                    if client.put(&key, value.clone().into_bytes()).await.is_ok() {
                        acknowledged.lock().unwrap().insert(key, value);
                    }
                }
            }));
        }
        Ok(Self { acknowledged, stop, tasks })
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    async fn wait_for_count(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.count() < count {
            assert!(tokio::time::Instant::now() < deadline, "only {} of {count} writes acknowledged", self.count());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.send(true).ok();
        for task in self.tasks {
            task.await.expect("writer task");
        }
        Arc::try_unwrap(self.acknowledged).unwrap().into_inner().unwrap()
    }
}

/// Every acknowledged write is readable, linearizably, from the cluster.
async fn assert_all_present(cluster: &LocalCluster, acknowledged: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let client = cluster.client()?;
    for (key, value) in acknowledged {
        let kv = client.get(key, false).await.map_err(|s| anyhow::anyhow!("acknowledged {key} lost: {s}"))?;
        assert_eq!(kv.value, value.as_bytes(), "acknowledged {key} has the wrong value");
    }
    Ok(())
}

/// kill -9 of the leader under load: a new leader is elected, writes resume,
/// no acknowledged write is lost, and the killed node restarts from its data
/// directory and catches up. On multi-thread runtimes (`--threads 2`), as
/// a node alone on a machine runs; the launcher's nodes otherwise run on one.
#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let (_dir, mut cluster) = started_cluster(3, &["--threads", "2"]).await?;
    let old_leader = cluster.wait_for_leader(WAIT).await?;
    let load = WriteLoad::start(&cluster, 4)?;
    load.wait_for_count(200).await;

    cluster.kill(old_leader)?;
    let before_failover = load.count();
    let new_leader = cluster.wait_for_leader(WAIT).await?;
    assert_ne!(new_leader, old_leader);
    load.wait_for_count(before_failover + 200).await;
    let acknowledged = load.finish().await;

    cluster.start(old_leader)?;
    let revision = cluster.client()?.put("marker", b"end".to_vec()).await?.revision;
    cluster.wait_for_revision(old_leader, revision, WAIT).await?;
    assert_all_present(&cluster, &acknowledged).await?;
    // The restarted node's own state holds every acknowledged write.
    let local = cluster.client_of(old_leader)?;
    for (key, value) in &acknowledged {
        assert_eq!(local.get(key, true).await?.value, value.as_bytes(), "{key} on the restarted node");
    }
    Ok(())
}

/// kill -9 of every node during a write load, then restart all: every
/// acknowledged write is present.
#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_crash_keeps_acknowledged_writes() -> anyhow::Result<()> {
    let (_dir, mut cluster) = started_cluster(3, &[]).await?;
    let load = WriteLoad::start(&cluster, 8)?;
    load.wait_for_count(300).await;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.kill(*id)?;
    }
    let acknowledged = load.finish().await;
    assert!(acknowledged.len() >= 300);

    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    assert_all_present(&cluster, &acknowledged).await
}

/// A node that lost quorum answers UNAVAILABLE (or times out), never a
/// success and never a crash; the cluster recovers when quorum returns.
#[tokio::test(flavor = "multi_thread")]
async fn lost_quorum_is_unavailable_then_recovers() -> anyhow::Result<()> {
    let (_dir, mut cluster) = started_cluster(3, &[]).await?;
    let before = cluster.client()?.put("before", b"1".to_vec()).await?;
    // The stale read below answers from node 1's own state: it must have
    // applied the write first (a follower may learn of a commit only with
    // the leader's next message, and the leader is about to die).
    cluster.wait_for_revision(1, before.revision, WAIT).await?;
    cluster.kill(2)?;
    cluster.kill(3)?;
    let options = ClientOptions {
        deadline: Duration::from_secs(3),
        request_timeout: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let lonely = Client::new(vec![cluster.addr(1).to_owned()], options)?;
    let write = lonely.put("during", b"2".to_vec()).await.unwrap_err();
    assert!(matches!(write.code(), Code::Unavailable | Code::DeadlineExceeded), "write: {write:?}");
    let read = lonely.get("before", false).await.unwrap_err();
    assert!(matches!(read.code(), Code::Unavailable | Code::DeadlineExceeded), "read: {read:?}");
    assert_eq!(lonely.get("before", true).await?.value, b"1", "a stale read still answers locally");

    cluster.start(2)?;
    cluster.start(3)?;
    cluster.wait_for_leader(WAIT).await?;
    cluster.client()?.put("after", b"3".to_vec()).await?;
    assert_eq!(cluster.client()?.get("before", false).await?.value, b"1");
    Ok(())
}

/// A leader killed right after acknowledging a write and restarted before
/// anyone else is elected comes back leading its old term (openraft
/// restores a committed vote for itself) without knowing how far it had
/// committed. Its linearizable reads must still show the acknowledged
/// write. (The Jepsen register workload found a read of nothing here, about
/// once in thirty runs. This test exercises the same restart but rarely
/// loses the race that exposes it: the restarted leader usually learns the
/// commit index in the same round trip that confirms its leadership. It
/// passed five of five attempts twice without the fix; the chaos tests
/// remain the real check.)
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_leader_reads_its_acknowledged_writes() -> anyhow::Result<()> {
    let (_dir, mut cluster) = started_cluster(3, &[]).await?;
    for attempt in 0..5 {
        let leader = cluster.wait_for_leader(WAIT).await?;
        let key = format!("restart-{attempt}");
        cluster.client_of(leader)?.put(&key, b"written".to_vec()).await?;
        cluster.kill(leader)?;
        cluster.start(leader)?;
        let local = cluster.client_of(leader)?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match local.get(&key, false).await {
                Ok(kv) => {
                    assert_eq!(
                        kv.value, b"written",
                        "attempt {attempt}: a linearizable read lost an acknowledged write"
                    );
                    break;
                }
                // An answer that the key is absent is a read, and a stale one.
                Err(status) if status.code() == Code::NotFound => {
                    panic!("attempt {attempt}: a linearizable read lost an acknowledged write: {status}")
                }
                // Not ready yet (starting, electing, catching up): try again.
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => anyhow::bail!("attempt {attempt}: no read within {WAIT:?}: {status}"),
            }
        }
    }
    Ok(())
}
