//! `docklock cage run`, `inspect` and `replay` as a user runs them: the
//! real binary, a real cage.

use docklock_cage::witness::Record;
use docklock_tests::cli;

/// A run with an input (its stderr shown to the user), replayed: `match` with the same root; replayed with
/// a changed input it is refused before running; a forged witness log (one
/// stdout byte changed and the log rewritten) replays as diverged at the
/// changed record, exit code 5; a log whose header names another machine
/// class replays as diverged at the header, naming the machine lines.
#[test]
fn a_run_replays_to_the_same_root() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("numbers.txt");
    std::fs::write(&input, "3\n1\n2\n").unwrap();
    let witness = dir.path().join("run.log");
    let in_arg = format!("numbers={}", input.display());
    let witness_arg = witness.display().to_string();
    // A pipeline: its two processes show files to the supervisor at the
    // same time, in whatever order the host runs them.
    let script = "sort -n /in/numbers; head -c 8 /dev/urandom | od -An -tx1; echo a warning >&2; date +%s";
    let (code, stdout, stderr) = cli(&[
        "cage",
        "run",
        "--seed",
        &"ab".repeat(32),
        "--in",
        &in_arg,
        "--witness",
        &witness_arg,
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("1\n2\n3\n"), "{stdout}");
    assert!(stdout.ends_with("946684800\n"), "date reads the logical clock: {stdout}");
    // The program's stderr is the user's to read, ahead of the verdict.
    let warned = stderr.find("a warning\n").unwrap_or_else(|| panic!("the program's stderr is shown: {stderr}"));
    assert!(warned < stderr.find("verdict ok").unwrap(), "{stderr}");
    let root =
        stderr.lines().find_map(|l| l.strip_prefix("witness root ")).unwrap().split(' ').next().unwrap().to_owned();

    let replay_log = dir.path().join("replay.log").display().to_string();
    let replay = |witness: &str, input: &str| {
        cli(&["cage", "replay", witness, "--in", &format!("numbers={input}"), "--replay-witness", &replay_log])
    };
    let (code, stdout, stderr) = replay(&witness_arg, &input.display().to_string());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with(&format!("match root {root}")), "{stdout}");

    let other = dir.path().join("other.txt");
    std::fs::write(&other, "3\n1\n9\n").unwrap();
    let (code, _, stderr) = replay(&witness_arg, &other.display().to_string());
    assert_eq!(code, 2, "a different input is refused before running: {stderr}");

    // Forge: change one record and rewrite the log consistently.
    let forge = |name: &str, change: &dyn Fn(&mut Vec<Record>)| {
        let (mut records, _) = docklock_cage::witness::read(std::fs::File::open(&witness).unwrap()).unwrap();
        change(&mut records);
        let forged = dir.path().join(name);
        let mut writer = docklock_cage::witness::WitnessWriter::new(std::fs::File::create(&forged).unwrap()).unwrap();
        for record in &records {
            writer.record(record).unwrap();
        }
        writer.finish().unwrap();
        replay(&forged.display().to_string(), &input.display().to_string())
    };
    let (records, _) = docklock_cage::witness::read(std::fs::File::open(&witness).unwrap()).unwrap();
    let index = records.iter().position(|r| matches!(r, Record::Stdout(_))).unwrap();
    let (code, stdout, _) = forge("forged.log", &|records| records[index] = Record::Stdout(b"1\n2\n4\n".to_vec()));
    assert_eq!(code, 5, "{stdout}");
    assert!(stdout.contains(&format!("diverged at record {index}")), "{stdout}");

    // A log recorded on another machine class: the replay differs at the
    // header and names the line that differs.
    let Record::Header(header) = &records[0] else { panic!("a log starts with its header") };
    let here =
        header.lines().find(|line| line.starts_with("machine=")).expect("the header names the machine").to_owned();
    let there = "machine=x86_64 cpuid=host GenuineIntel 000906ea \"another CPU\" features=0000000000000000";
    let elsewhere = header.replace(&here, there);
    let (code, stdout, _) = forge("elsewhere.log", &|records| records[0] = Record::Header(elsewhere.clone()));
    assert_eq!(code, 5, "{stdout}");
    assert!(stdout.contains("diverged at record 0"), "{stdout}");
    assert!(stdout.contains(&format!("  recorded: {there}\n")), "{stdout}");
    assert!(stdout.contains(&format!("  replayed: {here}\n")), "{stdout}");
}

/// The launcher an agent starts runs through (`docklock cage launcher`):
/// a run comes back with its outcome and stdout; a cancelled run comes
/// back cancelled; a launcher killed mid-run fails that run with an error
/// and the next run starts a new launcher.
#[test]
fn runs_go_through_a_launcher_that_is_restarted_when_it_dies() {
    use docklock_cage::run::{CageError, RunSpec, Verdict};
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let launcher = docklock_cage::launcher::Launcher::new(&docklock_tests::binary(), &["cage", "launcher"]);
    let spec = |script: &str| RunSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        inputs: vec![],
        limits: Default::default(),
        seed: [1; 32],
        stage_parent: None,
        rootfs: docklock_cage::rootfs::Rootfs::Host,
        cache: dir.path().join("cache"),
        cgroups: false,
    };
    let (witness, stdout) = (dir.path().join("w.log"), dir.path().join("stdout"));
    let never = AtomicBool::new(false);
    let outcome = launcher.run(&spec("echo through the launcher"), &witness, None, &stdout, &never).unwrap();
    assert_eq!(outcome.verdict, Verdict::Ok);
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "through the launcher\n");
    let first = launcher.process_id().expect("a launcher is running");

    let cancel = AtomicBool::new(false);
    let cancelled = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            cancel.store(true, Ordering::Relaxed);
        });
        launcher.run(&spec("while :; do :; done"), &witness, None, &stdout, &cancel)
    });
    assert!(matches!(cancelled, Err(CageError::Cancelled)), "{cancelled:?}");

    let killed = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::process::Command::new("kill").args(["-9", &first.to_string()]).status().unwrap();
        });
        launcher.run(&spec("while :; do :; done"), &witness, None, &stdout, &never)
    });
    assert!(matches!(&killed, Err(CageError::Io { .. })), "{killed:?}");
    let outcome = launcher.run(&spec("echo again"), &witness, None, &stdout, &never).unwrap();
    assert_eq!(outcome.verdict, Verdict::Ok);
    assert_ne!(launcher.process_id(), Some(first), "a new launcher");
}

/// `docklock cage inspect LOG | head -1`: when the reader goes away, the
/// command ends as Unix tools do (SIGPIPE), not with a panic on stderr.
#[test]
fn inspect_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("loud.log").display().to_string();
    // A listing of a big directory: a record per file, about 100 KB of
    // text, more than a pipe holds (64 KiB), so the writer is still
    // writing when the reader leaves.
    let (code, _, stderr) = cli(&["cage", "run", "--witness", &witness, "--", "/usr/bin/ls", "-la", "/usr/bin"]);
    assert_eq!(code, 0, "{stderr}");
    let mut child = std::process::Command::new(docklock_tests::binary())
        .args(["cage", "inspect", &witness])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains("header"), "{first}");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(13), "ended by SIGPIPE: {:?} {stderr}", output.status);
}
