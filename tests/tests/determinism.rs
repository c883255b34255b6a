//! The determinism probe suite: every program in `cage/probes/` observes
//! one source of non-determinism (see its first line and
//! `cage/probes/README.md`). Each probe here is
//!
//! - built (static C, one dynamically linked C program, one Python script);
//! - run 20 times in the cage with one seed: stdout, verdict and witness
//!   root must be the same every time;
//! - run natively under varied conditions (CPU, host name, cwd and
//!   environment, host time, load): its raw output must vary, or the probe
//!   observes nothing and proves nothing (a probe of an escape attempt must
//!   instead succeed natively at what the cage refuses);
//! - run in the cage under each of those conditions and with another
//!   staging directory: the root must not move;
//! - run with one byte of an input changed: the root must move.
//!
//! A *known hole* is a probe whose caged output is expected to differ
//! between runs; the test checks that it still does, so closing a hole
//! fails here until `docs/DETERMINISM.md` and this table are updated.
//!
//! The runs use the real `docklock cage run`; `faketime` and `taskset`
//! come from the README's setup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use docklock_tests::binary;

/// Caged runs under one condition that must all agree.
const CAGED_RUNS: usize = 20;
/// How long a native run may take (only the spin loop needs it).
const NATIVE_TIMEOUT_SECS: &str = "1";
/// Debian's libfaketime (package `faketime`, installed by scripts/setup.sh).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// The seed of every run.
const SEED: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// What a probe's caged runs must show.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Runs to its end (any exit status) the same way every time.
    Same,
    /// Ends `refused`, naming this source, the same way every time.
    Refused(&'static str),
    /// Ends with a policy violation naming this call, every time.
    Violation(&'static str),
    /// Ends at this limit, the same way every time.
    Limit(&'static str),
}

/// What its native runs must show.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Native {
    /// The output varies between the native runs: the probe sees a source
    /// of non-determinism on this machine.
    Varies,
    /// The output is this machine's (the same every run here, another on
    /// another machine) and differs from what the cage shows.
    HostSpecific,
    /// Deterministic natively too: the probe checks that the cage keeps
    /// it so (signal delivery order).
    Deterministic,
    /// The probe gets further natively than in the cage, which stops it:
    /// an escape attempt or a refused source succeeds natively.
    GetsFurther,
    /// It runs until the native runs' timeout kills it.
    RunsForever,
}

/// A known hole: in lines starting with `line`, the value after each of
/// `fields` and the words at `columns` (or, with neither, the whole line)
/// are not deterministic in the cage. Listed in `docs/DETERMINISM.md`;
/// masked before comparing, so everything else in the output is still
/// checked.
struct Hole {
    line: &'static str,
    fields: &'static [&'static str],
    columns: &'static [usize],
}

const fn line_hole(line: &'static str) -> Hole {
    Hole { line, fields: &[], columns: &[] }
}

const fn field_hole(line: &'static str, fields: &'static [&'static str]) -> Hole {
    Hole { line, fields, columns: &[] }
}

/// The device column of `/proc/self/maps` lines printed after a prefix:
/// the cage's tmpfs root has an anonymous device number, which the
/// kernel hands out from one pool for the whole host.
const fn maps_device_hole(line: &'static str) -> Hole {
    Hole { line, fields: &[], columns: &[4] }
}

/// One probe run: the program (a file stem in `cage/probes/`), its
/// arguments, extra `--limit`s, what the cage and the native runs must
/// show, and the known holes in its output.
struct Case {
    probe: &'static str,
    args: &'static [&'static str],
    limits: &'static [&'static str],
    expect: Expect,
    native: Native,
    holes: &'static [Hole],
    /// Lines come in an order the cage does not control (concurrent
    /// processes writing to one pipe: a hole); compared sorted.
    unordered: bool,
    /// Shows CPUID, which the cage can make virtual only where the CPU
    /// can fault it (Intel's CPUID faulting; not every AMD host has it).
    cpuid: bool,
    /// Lines the caged output must hold (what the cage makes true, beyond
    /// being the same every time).
    shows: &'static [&'static str],
}

const fn case(probe: &'static str, args: &'static [&'static str], expect: Expect, native: Native) -> Case {
    Case { probe, args, limits: &[], expect, native, holes: &[], unordered: false, cpuid: false, shows: &[] }
}

/// The output with its known holes masked (and sorted, if unordered).
fn masked(case: &Case, stdout: &str) -> String {
    let mut lines: Vec<String> = stdout
        .lines()
        .map(|line| {
            let Some(hole) = case.holes.iter().find(|hole| line.starts_with(hole.line)) else {
                return line.to_owned();
            };
            if hole.fields.is_empty() && hole.columns.is_empty() {
                return format!("{} <hole>", hole.line);
            }
            let mut words: Vec<&str> = line.split_whitespace().collect();
            for i in 0..words.len() {
                if hole.columns.contains(&i) || (i > 0 && hole.fields.contains(&words[i - 1])) {
                    words[i] = "<hole>";
                }
            }
            words.join(" ")
        })
        .collect();
    if case.unordered {
        lines.sort();
    }
    lines.join("\n")
}

/// A condition a run happens under. Natively each varies what the probe
/// can see; in the cage none may change the root.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Condition {
    Plain,
    /// Pinned to the first or the last CPU.
    Cpu(bool),
    /// Another host name (a UTS namespace around the run).
    Hostname,
    /// Another working directory and an extra environment variable.
    CwdAndEnv,
    /// Another host time (`faketime`, ten years ahead).
    Time,
    /// Two busy loops on the machine meanwhile.
    Load,
    /// Another directory for the cage's stage (`TMPDIR`).
    Tmpdir,
}

/// Conditions of the native runs: each differs from the one before in
/// CPU and in one other respect.
const NATIVE: [Condition; 5] =
    [Condition::Cpu(false), Condition::Cpu(true), Condition::Hostname, Condition::CwdAndEnv, Condition::Time];
/// Conditions of the perturbed caged runs.
const PERTURBED: [Condition; 6] = [
    Condition::Cpu(true),
    Condition::Hostname,
    Condition::CwdAndEnv,
    Condition::Time,
    Condition::Load,
    Condition::Tmpdir,
];

/// The probes built once for the whole test binary.
struct Built {
    dir: PathBuf,
}

fn probes_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../cage/probes")
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("docklock-probes-").tempdir().unwrap().keep();
        for entry in std::fs::read_dir(probes_source()).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
            match path.extension().and_then(|e| e.to_str()) {
                Some("c") => {
                    let mut gcc = Command::new("gcc");
                    gcc.args(["-O2", "-pthread", "-o"]).arg(dir.join(&stem)).arg(&path);
                    // One probe is dynamically linked on purpose.
                    if stem != "dynamic" {
                        gcc.arg("-static");
                    }
                    let status = gcc.status().expect("gcc is needed (build-essential)");
                    assert!(status.success(), "{} does not build", path.display());
                }
                Some("py" | "js") => {
                    std::fs::copy(&path, dir.join(&stem)).unwrap();
                }
                Some("go") => {
                    // Static (no cgo), with a build cache of its own.
                    let status = Command::new("go")
                        .args(["build", "-trimpath", "-o"])
                        .arg(dir.join(&stem))
                        .arg(&path)
                        .env("CGO_ENABLED", "0")
                        .env("GOCACHE", dir.join("go-cache"))
                        .env("GOPATH", dir.join("go-path"))
                        .status()
                        .expect("go is needed (golang-go; scripts/setup.sh installs it)");
                    assert!(status.success(), "{} does not build", path.display());
                }
                _ => {}
            }
        }
        // The Rust probe is this crate's own binary (`src/bin`).
        std::fs::copy(env!("CARGO_BIN_EXE_event_loop"), dir.join("event_loop")).unwrap();
        std::fs::write(dir.join("control"), b"control input 01").unwrap();
        std::fs::write(dir.join("control.changed"), b"control input 02").unwrap();
        Built { dir }
    })
}

/// What one run printed and how it ended.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    stdout: String,
    /// What the run wrote to stderr: shown when a check fails, never
    /// compared (the cage's verdict and root are compared on their own).
    stderr: String,
    /// `verdict ...` (caged runs) or the exit status (native runs).
    verdict: String,
    /// The witness root (caged runs).
    root: String,
}

/// Busy loops that run while they are alive.
struct Load(Vec<Child>);

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `argv` under `condition` (inside `outer`, a command prefix): the
/// command to spawn, and any load to hold while it runs.
fn under(outer: &[&str], condition: Condition, argv: &[String], scratch: &Path) -> (Command, Option<Load>) {
    let last_cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let mut full: Vec<String> = outer.iter().map(|word| (*word).to_owned()).collect();
    match condition {
        Condition::Cpu(last) => {
            full.extend(["taskset".into(), "-c".into(), if last { last_cpu } else { 0 }.to_string()]);
        }
        Condition::Hostname => full.extend(
            ["unshare", "--uts", "sh", "-c", "hostname docklock-probe-other && exec \"$@\"", "sh"].map(String::from),
        ),
        // libfaketime itself, not the `faketime` wrapper: the wrapper
        // creates a semaphore named after its pid and refuses to start when
        // one exists; the native runs' timeout SIGKILLs it before it can
        // remove its own, and with pid_max at 32768 a later wrapper reused
        // that pid and exited 1 without running the probe.
        Condition::Time => {
            full.extend(["env".into(), format!("LD_PRELOAD={LIBFAKETIME}"), "FAKETIME=@2036-06-01 12:00:00".into()])
        }
        _ => {}
    }
    full.extend_from_slice(argv);
    let mut command = Command::new(&full[0]);
    command.args(&full[1..]).stdin(Stdio::null());
    match condition {
        Condition::CwdAndEnv => {
            let cwd = scratch.join("elsewhere");
            std::fs::create_dir_all(&cwd).unwrap();
            command.current_dir(cwd).env("DOCKLOCK_PROBE_NOISE", format!("{:x}", std::process::id()));
        }
        Condition::Tmpdir => {
            let tmp = scratch.join("other-tmp");
            std::fs::create_dir_all(&tmp).unwrap();
            command.env("TMPDIR", tmp);
        }
        _ => {}
    }
    let load = (condition == Condition::Load).then(|| {
        Load(
            (0..2)
                .map(|_| Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh for the load"))
                .collect(),
        )
    });
    (command, load)
}

/// Run `command` to its end; a missing tool says where it comes from.
fn spawn(command: &mut Command) -> std::process::Output {
    command.output().unwrap_or_else(|error| {
        panic!("{}: {error} (scripts/setup.sh installs what the probes need)", command.get_program().to_string_lossy())
    })
}

/// The probe's own command line: where it is, and how it is started.
fn probe_argv(case: &Case, program: &str) -> Vec<String> {
    let mut argv = Vec::new();
    match case.probe {
        "python" => argv.push("/usr/bin/python3".into()),
        "node" => argv.push("/usr/bin/node".into()),
        _ => {}
    }
    argv.push(program.into());
    argv.extend(case.args.iter().map(|a| (*a).to_owned()));
    argv
}

fn native(case: &Case, condition: Condition, scratch: &Path) -> Run {
    let program = built().dir.join(case.probe).display().to_string();
    // The timeout outside everything else (faketime would slow its clock).
    let timeout = ["timeout", "-s", "KILL", NATIVE_TIMEOUT_SECS];
    let (mut command, _load) = under(&timeout, condition, &probe_argv(case, &program), scratch);
    let output = spawn(&mut command);
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        verdict: format!("{:?}", output.status.code()),
        root: String::new(),
    }
}

fn caged(case: &Case, condition: Condition, control: &str, scratch: &Path) -> Run {
    let dir = &built().dir;
    let witness = scratch.join("witness.log");
    let mut argv: Vec<String> = [binary().display().to_string(), "cage".into(), "run".into(), "--no-cgroups".into()]
        .into_iter()
        .chain(["--seed".into(), SEED.into()])
        .chain(["--witness".into(), witness.display().to_string()])
        .chain(["--cache-dir".into(), dir.join("cache").display().to_string()])
        .chain(["--in".into(), format!("probe={}", dir.join(case.probe).display())])
        .chain(["--in".into(), format!("control={}", dir.join(control).display())])
        .collect();
    for limit in case.limits {
        argv.extend(["--limit".into(), (*limit).to_owned()]);
    }
    argv.push("--".into());
    argv.extend(probe_argv(case, "/in/probe"));
    let (mut command, _load) = under(&[], condition, &argv, scratch);
    let output = spawn(&mut command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = |prefix: &str| stderr.lines().find_map(|l| l.strip_prefix(prefix)).map(str::to_owned);
    let (Some(verdict), Some(root)) = (line("verdict "), line("witness root ")) else {
        panic!("{} under {condition:?}: no verdict from the cage: {stderr}", case.probe);
    };
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: stderr.into_owned(),
        verdict,
        root: root.split(' ').next().unwrap_or_default().to_owned(),
    }
}

/// The whole check for one case; panics with what went wrong.
fn check(case: &Case) {
    let scratch = tempfile::tempdir().unwrap();
    let name = format!("{} {}", case.probe, case.args.join(" "));
    if case.cpuid && !std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains(" cpuid_fault") {
        // The host's CPU shows through, and the witness records that
        // faulting could not be turned on (checked in cage/tests/run.rs).
        eprintln!("SKIPPED {name}: this host's CPU cannot fault CPUID");
        return;
    }
    let first = caged(case, Condition::Plain, "control", scratch.path());
    let prefix = match case.expect {
        Expect::Same => None,
        Expect::Refused(source) => Some(format!("refused {source} (")),
        Expect::Violation(call) => Some(format!("policy-violation {call} (")),
        Expect::Limit(limit) => Some(format!("limit-exceeded {limit}")),
    };
    match prefix {
        None => assert!(first.verdict == "ok" || first.verdict.starts_with("program-failed"), "{name}: {first:?}"),
        Some(prefix) => assert!(first.verdict.starts_with(&prefix), "{name}: expected {prefix}: {first:?}"),
    }
    // With holes the stdout (and so the root) may differ: the rest of the
    // output and the verdict must not.
    let comparable = |run: &Run| {
        if case.holes.is_empty() && !case.unordered {
            Run { stderr: String::new(), ..run.clone() }
        } else {
            Run {
                stdout: masked(case, &run.stdout),
                stderr: String::new(),
                verdict: run.verdict.clone(),
                root: String::new(),
            }
        }
    };
    for line in case.shows {
        assert!(first.stdout.lines().any(|shown| shown == *line), "{name}: the cage must show {line:?}: {first:?}");
    }
    let expected = comparable(&first);
    for i in 2..=CAGED_RUNS {
        let run = caged(case, Condition::Plain, "control", scratch.path());
        assert_eq!(comparable(&run), expected, "{name}: caged run {i} differs from the first");
    }
    for condition in PERTURBED {
        let run = caged(case, condition, "control", scratch.path());
        assert_eq!(comparable(&run), expected, "{name}: caged under {condition:?} differs");
    }
    let changed = caged(case, Condition::Plain, "control.changed", scratch.path());
    assert_eq!(changed.verdict, first.verdict, "{name}: one input byte changed the verdict");
    assert_ne!(changed.root, first.root, "{name}: one changed input byte must change the root");

    let natives: Vec<Run> = NATIVE.iter().map(|&condition| native(case, condition, scratch.path())).collect();
    let outputs: BTreeSet<&str> = natives.iter().map(|r| r.stdout.as_str()).collect();
    match case.native {
        Native::Varies => {
            assert!(outputs.len() > 1, "{name}: natively the output never varies, so the probe proves nothing")
        }
        Native::HostSpecific => assert!(
            !outputs.contains(first.stdout.as_str()),
            "{name}: natively the host's values must show, not the cage's: {natives:?}"
        ),
        Native::Deterministic => assert_eq!(outputs.len(), 1, "{name}: natively deterministic: {natives:?}"),
        Native::GetsFurther => assert!(
            natives.iter().all(|r| r.stdout.len() > first.stdout.len()),
            "{name}: natively the probe must get further than in the cage: {natives:?} vs {first:?}"
        ),
        Native::RunsForever => assert!(
            // timeout(1) kills itself with the signal it sent.
            natives.iter().all(|r| r.verdict == "None"),
            "{name}: natively it must run until killed: {natives:?}"
        ),
    }
}

macro_rules! probes {
    ($($test:ident: $case:expr;)*) => {$(
        #[test]
        fn $test() {
            // A constant, so the holes' slices are static.
            const CASE: Case = $case;
            check(&CASE);
        }
    )*};
}

use Expect::{Limit, Refused, Same, Violation};
use Native::{Deterministic, GetsFurther, HostSpecific, RunsForever, Varies};

probes! {
    time_through_syscalls: case("time_syscall", &[], Same, Varies);
    time_through_the_vsyscall_page: case("time_syscall", &["vsyscall"], Same, Varies);
    times_is_logical: case("time_syscall", &["times"], Same, Varies);
    the_clocks_stop_at_their_end: Case {
        shows: &["slept 0 realtime 0 18446744073.709551615 monotonic 0 17500059273.709551615 gettimeofday 0 18446744073.709551 time 18446744073"],
        ..case("time_syscall", &["end"], Same, RunsForever)
    };
    resource_usage_is_zero: Case {
        shows: &[
            "wait4 reaped 1 status 0 utime 0.000000 stime 0.000000 maxrss 0 minflt 0 nvcsw 0 nivcsw 0",
            "getrusage children ret 0 utime 0.000000 stime 0.000000 maxrss 0 minflt 0 nvcsw 0 nivcsw 0",
        ],
        ..case("time_syscall", &["rusage"], Same, Varies)
    };
    time_through_libc_and_the_vdso: case("time_libc", &[], Same, Varies);
    time_stamp_counter: case("tsc", &[], Same, Varies);
    cpuid_and_hardware_auxv: Case { cpuid: true, ..case("cpuid", &[], Same, Varies) };
    unfaultable_instructions_are_hidden_from_cpuid: Case { cpuid: true, ..case("unfaultable", &[], Same, Varies) };
    unfaultable_instructions_used_blind_are_a_hole: Case {
        holes: &[line_hole("rdrand"), line_hole("rdseed"), line_hole("rdpid")],
        ..case("unfaultable", &["blind"], Same, Varies)
    };
    randomness_every_way: case("random", &[], Same, Varies);
    addresses_and_maps: Case { holes: &[maps_device_hole("maps")], ..case("addresses", &[], Same, Varies) };
    pids_are_virtual_but_reap_order_is_a_hole: Case {
        holes: &[field_hole("reaped", &["reaped", "pid"])],
        unordered: true,
        ..case("pids", &[], Same, Varies)
    };
    racing_threads_are_serialised: Case {
        shows: &["counter 40000000 expected 40000000"],
        ..case("threads", &[], Same, Varies)
    };
    threads_take_turns_through_locks_condition_variables_and_sleeps: Case {
        shows: &["joined sum 140 elapsed 0.003202"],
        ..case("threads", &["sync"], Same, Varies)
    };
    the_main_thread_may_leave_first: case("threads", &["exit"], Same, Varies);
    a_deadlock_of_threads_is_refused: case("threads", &["deadlock"], Refused("threads"), RunsForever);
    tokio_event_loop: Case {
        shows: &["channel sum 190", "tcp 127.0.0.1:33262 peer 127.0.0.1:48087 reply pong!"],
        ..case("event_loop", &[], Same, Varies)
    };
    threads_wait_for_descriptors_another_thread_makes_ready: Case {
        shows: &["poll 5 ms ready 0 at 0.005902", "poll ready 1 read x at 0.020901"],
        ..case("threads", &["io"], Same, Varies)
    };
    threads_wait_for_children_another_thread_feeds: Case {
        shows: &["waitpid reaped 1 exit 6 at 0.001502", "waitid ret 0 reaped 1 exit 9 at 0.001503"],
        ..case("threads", &["wait"], Same, Varies)
    };
    threads_write_through_a_pipe_another_thread_reads: Case {
        shows: &["wrote 300000 at 0.000001", "read 300000 sum 38249584 at 0.000002"],
        ..case("threads", &["pipe"], Same, Varies)
    };
    threads_send_through_a_socket_another_thread_reads: Case {
        shows: &["sent 300000 at 0.000001", "read 300000 sum 38249584 at 0.000002"],
        ..case("threads", &["socket"], Same, Varies)
    };
    threads_write_pieces_through_a_pipe_another_thread_reads: Case {
        shows: &["wrote pieces 300000 at 0.000001", "read 300000 sum 38249584 at 0.000002"],
        ..case("threads", &["vector"], Same, Varies)
    };
    calls_made_with_a_stack_pointer_at_64_run_as_they_are: Case {
        shows: &["wrote 10000 from a low stack, ppoll 1, read back 10000"],
        ..case("threads", &["low-stack"], Same, Deterministic)
    };
    spin_loop_ends_at_the_wall_limit: Case { limits: &["wall-ms=500"], ..case("spin", &[], Limit("wall-ms"), RunsForever) };
    spin_loop_ends_at_the_cpu_limit: Case { limits: &["cpu-secs=1"], ..case("spin", &[], Limit("cpu-secs"), RunsForever) };
    signals_are_delivered_in_order: case("signals", &[], Same, Deterministic);
    timers_are_refused: case("signals", &["timer"], Refused("timers"), GetsFurther);
    interval_timers_are_refused: case("signals", &["itimer"], Refused("timers"), GetsFurther);
    directory_order_and_stat: case("dirs", &[], Same, Varies);
    directory_listings: Case {
        shows: &["getdents64 order sorted", "getdents512 order sorted", "getdents32768 order sorted"],
        ..case("dirs", &["listing"], Same, HostSpecific)
    };
    descriptors_show_virtual_inodes: case("dirs", &["fds"], Same, Varies);
    // Natively the host's free counts move only when something else writes
    // to the disk (a quiet machine failed "varies"): what must hold is that
    // the host's figures show natively and not in the cage.
    filesystem_statistics_show_no_host: case("dirs", &["statfs"], Same, HostSpecific);
    own_proc_files: Case { holes: &[maps_device_hole("/proc/self/maps")], ..case("procsys", &["self"], Same, Varies) };
    host_proc_files_are_refused: case("procsys", &["host"], Refused("host state in /proc"), GetsFurther);
    machine_proc_files_are_the_cages: case("procsys", &["machine"], Same, HostSpecific);
    thread_stat_files_are_refused: case("procsys", &["task"], Refused("host state in /proc"), GetsFurther);
    kernel_uuids_are_refused: case("procsys", &["uuid"], Refused("host state in /proc"), GetsFurther);
    proc_listing_and_constants: case("procsys", &["allowed"], Same, Varies);
    mount_table_is_refused: case("procsys", &["mounts"], Refused("host state in /proc"), GetsFurther);
    sys_shows_one_cpu: case("procsys", &["sys"], Same, HostSpecific);
    host_identity: case("identity", &[], Same, Varies);
    processor_count: case("identity", &["nprocs"], Same, HostSpecific);
    configured_processor_count: case("identity", &["sysconf_conf"], Same, HostSpecific);
    cpu_number_and_rseq: case("cpu", &[], Same, Varies);
    loopback_and_ephemeral_ports: Case {
        shows: &["bind ret 0 errno 0", "exchange wrote 14 read 14 msg hello docklock"],
        ..case("network", &[], Same, Varies)
    };
    unbound_datagram_ports: Case {
        shows: &["udp sent 8 got 8 datagram"],
        ..case("network", &["udp"], Same, Varies)
    };
    descriptors_pass_through_sendmsg: Case {
        shows: &["sendmsg sent 2 recvmsg got 2 fd passed yes wrote 7 read 7 through"],
        ..case("network", &["pass_fd"], Same, Deterministic)
    };
    unbound_datagram_ports_through_sendmsg: Case {
        shows: &["udp sent 8 got 8 datagram"],
        ..case("network", &["udp_sendmsg"], Same, Varies)
    };
    unix_sockets_on_long_paths: Case {
        shows: &[
            "unix stream bind 0 listen 0 client bind 0 connect 0 accept yes sent 9 received 9 over unix",
            "unix datagram bind 0 0 sendto 8 recvfrom 8 datagram from /tmp/a-unix-socket-with-a-long-name.server",
        ],
        ..case("network", &["unix"], Same, Deterministic)
    };
    socket_timestamps_are_refused: case("network", &["timestamp"], Refused("time"), GetsFurther);
    receive_time_ioctl_is_refused: case("network", &["stamp"], Refused("time"), GetsFurther);
    receive_time_ioctl_with_a_junk_high_half_is_refused: case("network", &["stamp_high"], Refused("time"), GetsFurther);
    escape_tsc: case("escape", &["tsc"], Refused("undoing the cage"), GetsFurther);
    escape_cpuid: case("escape", &["cpuid"], Refused("undoing the cage"), GetsFurther);
    escape_seccomp_through_prctl: case("escape", &["seccomp"], Refused("undoing the cage"), GetsFurther);
    escape_seccomp: case("escape", &["seccomp_syscall"], Violation("seccomp"), GetsFurther);
    escape_personality: case("escape", &["personality"], Violation("personality"), GetsFurther);
    escape_ptrace: case("escape", &["ptrace"], Violation("ptrace"), GetsFurther);
    escape_ptrace_attach: case("escape", &["ptrace_attach"], Violation("ptrace"), GetsFurther);
    escape_unshare: case("escape", &["unshare"], Violation("unshare"), GetsFurther);
    a_forked_child_is_still_virtual: case("escape", &["fork"], Same, Varies);
    dynamically_linked: case("dynamic", &[], Same, Varies);
    python: case("python", &[], Same, Varies);
    python_threads: case("python", &["threads"], Same, Varies);
    python_processes: Case {
        // The shared counter saw every increment; a timed wait on a
        // semaphore nobody posts ends at its logical deadline, timed out.
        shows: &["total 600", "timed wait False 946684800.051303"],
        ..case("python", &["processes"], Same, Varies)
    };
    python_feeds_a_subprocess_while_waiting_for_it: Case {
        shows: &["child read 200000", "child exit 0 at True"],
        ..case("python", &["feed"], Same, Deterministic)
    };
    python_waits_for_another_process: Case {
        // The worker's result, read by a blocked thread; the sleeper's
        // clock did not run while the worker computed.
        shows: &["result 1999999000000 ticks 1 946684800.010875"],
        ..case("python", &["waits"], Same, Varies)
    };
    node: case("node", &[], Same, Varies);
    go_runtime: Case {
        shows: &["cpus 1 now 946684800000010000", "sizes [4 4 5 5 5 5 5 6 7 7] host docklock pid 2"],
        ..case("goroutines", &[], Same, Varies)
    };
}

/// A `multiprocessing.Pool` runs to its end in the cage (it hung until
/// the wall limit while a blocked read held its parent's turn). Its roots
/// are not compared: which of the parent's threads sees a worker's result
/// first is up to when the worker sends it, so under load the schedule
/// (and with it the root) can differ, a known hole (docs/DETERMINISM.md).
#[test]
fn python_pool_runs_to_its_end() {
    let case = case("python", &["pool"], Same, Deterministic);
    let scratch = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let run = caged(&case, Condition::Plain, "control", scratch.path());
        assert_eq!(run.verdict, "ok", "{run:?}");
        assert!(
            run.stdout
                .contains("map [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]\nunordered [0, 1, 4, 9, 16]\npadded 400 1600000\n"),
            "{run:?}"
        );
    }
}
