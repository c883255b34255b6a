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
