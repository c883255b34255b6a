//! Shared helpers for the multi-node integration tests in `tests/tests/`.
//!
//! Every test runs real `docklock agent` processes on loopback ports with
//! real sled data directories, through [`docklock_node::launcher`].

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub use docklock_node::launcher::{LocalCluster, FAST_TIMING};

/// How long a test waits for a cluster condition before failing.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `docklock` binary built by this workspace: `DOCKLOCK_BIN` if set,
/// else the one next to the test executable's directory.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DOCKLOCK_BIN") {
        return PathBuf::from(path);
    }
    let test_exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/docklock
    let profile_dir = test_exe.parent().and_then(|deps| deps.parent()).expect("target/<profile> directory");
    let binary = profile_dir.join("docklock");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --bins` first (the test command in README.md does)",
        binary.display()
    );
    binary
}

/// A cluster of `size` initial members in a fresh temporary directory, with
/// fast timing plus `extra_args`; started, with a leader elected.
pub async fn started_cluster(size: u64, extra_args: &[&str]) -> anyhow::Result<(tempfile::TempDir, LocalCluster)> {
    let dir = tempfile::tempdir()?;
    let mut args: Vec<&str> = FAST_TIMING.to_vec();
    args.extend_from_slice(extra_args);
    let mut cluster = LocalCluster::new(&binary(), dir.path(), size, &args)?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    Ok((dir, cluster))
}

/// Run the docklock CLI with `args` and return (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary()).args(args).output().expect("run docklock");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every worker as the cluster lists it (linearizable).
pub async fn workers(client: &docklock_proto::client::Client) -> anyhow::Result<docklock_proto::v1::ListNodesResponse> {
    Ok(client.list_nodes().await?)
}

/// Wait until at least `count` workers are registered and ready.
pub async fn wait_for_workers(client: &docklock_proto::client::Client, count: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = workers(client).await?;
        if list.nodes.iter().filter(|node| node.status == "ready").count() >= count {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "workers not ready: {:?}", list.nodes);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A started cluster of `size` initial members whose first admin key is
/// `dir/admin.key`, with every node's key registered and every node ready
/// as a worker.
pub async fn audited_cluster(
    size: u64,
    extra_args: &[&str],
) -> anyhow::Result<(tempfile::TempDir, LocalCluster, docklock_proto::crypto::KeyPair)> {
    use docklock_proto::crypto::{Algorithm, KeyPair};
    let dir = tempfile::tempdir()?;
    let admin = KeyPair::generate(Algorithm::MlDsa65);
    admin.write_new(&dir.path().join("admin.key"))?;
    admin.public().write_new(&dir.path().join("admin.pub"))?;
    let mut args: Vec<&str> = FAST_TIMING.to_vec();
    args.extend_from_slice(extra_args);
    let mut cluster = LocalCluster::new(&binary(), dir.path(), size, &args)?;
    cluster.set_admin_key(&dir.path().join("admin.pub"));
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    wait_for_node_keys(&cluster.client()?, size as usize).await?;
    wait_for_workers(&cluster.client()?, size as usize).await?;
    Ok((dir, cluster, admin))
}

/// Wait until `count` node keys are registered.
pub async fn wait_for_node_keys(client: &docklock_proto::client::Client, count: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let identities = client.list_identities().await?;
        if identities.identities.iter().filter(|i| i.role == "node").count() >= count {
            return Ok(());
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "node keys not registered: {identities:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
