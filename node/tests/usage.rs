//! Command-line usage errors exit 2 with a one-line reason. (These tests also
//! make `cargo test` build the `docklock` binary that the multi-node tests in
//! the `docklock-tests` crate start.)

use std::process::Command;

fn docklock(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_docklock")).args(args).output().expect("run docklock");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Agent flags that cannot describe a node are refused as usage errors.
#[test]
fn agent_flag_errors_exit_2() {
    let cases: [(&[&str], &str); 7] = [
        (&["agent", "--listen", "127.0.0.1:1", "--data-dir", "/tmp/x", "--join", "127.0.0.1:2"], "--id is required"),
        (&["agent", "--id", "0", "--listen", "127.0.0.1:1", "--data-dir", "/tmp/x", "--join", "a:1"], "reserved"),
        (&["agent", "--id", "1", "--listen", "127.0.0.1:1", "--data-dir", "/tmp/x"], "--initial-cluster"),
        (
            &[
                "agent",
                "--id",
                "1",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                "/tmp/x",
                "--initial-cluster",
                "1=nowhere",
            ],
            "not HOST:PORT",
        ),
        (
            &[
                "agent",
                "--id",
                "3",
                "--listen",
                "127.0.0.1:1",
                "--data-dir",
                "/tmp/x",
                "--initial-cluster",
                "1=127.0.0.1:1",
            ],
            "not in the initial cluster",
        ),
        (
            &["agent", "--id", "1", "--listen", "127.0.0.1:1", "--data-dir", "/tmp/x", "--threads", "0"],
            "--threads must be between 1 and 1024",
        ),
        (
            &[
                "agent",
                "--id=1",
                "--listen=127.0.0.1:1",
                "--data-dir=/tmp/x",
                "--join=a:1",
                "--label=docklock.machine=any",
            ],
            "set by the node",
        ),
    ];
    for (args, reason) in cases {
        let (code, stderr) = docklock(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?} should say {reason:?}: {stderr}");
    }
}

/// Unknown subcommands and flags are clap usage errors (exit 2).
#[test]
fn unknown_command_exits_2() {
    assert_eq!(docklock(&["frobnicate"]).0, 2);
    assert_eq!(docklock(&["kv", "put"]).0, 2);
}

/// An agent started with a config file holding `text`.
fn agent_with_config(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, text).unwrap();
    docklock(&["agent", "--config", path.to_str().unwrap()])
}

/// A config file with an unknown setting is refused, not ignored.
#[test]
fn config_file_unknown_field_is_refused() {
    let (code, stderr) = agent_with_config("id = 1\nlisten = \"127.0.0.1:1\"\nshiny = true\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("shiny"), "{stderr}");
}

/// `threads` from a config file is checked like `--threads`, before the
/// agent starts its runtime.
#[test]
fn config_file_threads_out_of_range_is_refused() {
    let (code, stderr) = agent_with_config("id = 1\nlisten = \"127.0.0.1:1\"\nthreads = 5000\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--threads must be between 1 and 1024"), "{stderr}");
}
