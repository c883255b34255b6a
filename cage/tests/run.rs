//! Real runs in the cage (user, PID, mount, network, UTS and IPC namespaces;
//! these need a kernel that allows them, as CI's does).

use std::path::Path;

use docklock_cage::limits::{Limit, Limits};
use docklock_cage::rootfs::Rootfs;
use docklock_cage::run::{run, Outcome, RunSpec, Verdict};
use docklock_cage::witness;

fn spec(program: &str, args: &[&str]) -> RunSpec {
    RunSpec {
        program: program.into(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: vec![],
        inputs: vec![],
        limits: Limits::default(),
        seed: [7; 32],
        stage_parent: None,
        rootfs: Rootfs::Host,
        cache: std::env::temp_dir().join("docklock-cage-test-cache"),
        cgroups: true,
    }
}

fn cage(spec: &RunSpec, dir: &Path) -> (Outcome, String) {
    let mut stdout = Vec::new();
    let outcome = run(spec, &dir.join("witness.log"), Some(&dir.join("out")), &mut stdout, std::io::sink())
        .expect("the cage runs");
    (outcome, String::from_utf8_lossy(&stdout).into_owned())
}

/// Build a static C program `name` from `source` in `dir` (gcc from
/// build-essential, which the README's setup installs).
fn compile_static(dir: &Path, name: &str, source: &str) -> std::path::PathBuf {
    let source_path = dir.join(format!("{name}.c"));
    std::fs::write(&source_path, source).unwrap();
    let binary = dir.join(name);
    let compiled = std::process::Command::new("gcc").arg("-static").arg("-o").arg(&binary).arg(&source_path).status();
    assert!(compiled.is_ok_and(|status| status.success()), "gcc -static is needed (build-essential)");
    binary
}

/// Build a static Rust program `name` from `source` in `dir`, with the
/// toolchain's own `rustc`.
fn compile_rust(dir: &Path, name: &str, source: &str) -> std::path::PathBuf {
    let source_path = dir.join(format!("{name}.rs"));
    std::fs::write(&source_path, source).unwrap();
    let binary = dir.join(name);
    let compiled = std::process::Command::new("rustc")
        .args(["--edition", "2021", "-O", "-C", "target-feature=+crt-static", "-o"])
        .arg(&binary)
        .arg(&source_path)
        .status();
    assert!(compiled.is_ok_and(|status| status.success()), "rustc builds a static program");
    binary
}

/// The records of the last run's witness log in `dir`, and its root.
fn read_witness(dir: &Path) -> (Vec<witness::Record>, [u8; 32]) {
    witness::read(std::fs::File::open(dir.join("witness.log")).unwrap()).unwrap()
}

/// Whether the last run in `dir` had cgroup limits (its witness header
/// says). They need root (or a delegated cgroup): CI runs as root.
fn cgroups(dir: &Path) -> bool {
    let (records, _) = read_witness(dir);
    let witness::Record::Header(header) = &records[0] else { panic!("a witness log starts with its header") };
    let enforced = !header.contains("cgroup=none");
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    assert!(enforced || !root || !Path::new("/sys/fs/cgroup").exists(), "as root, the cage has cgroup limits");
    enforced
}

/// A program passed in as an input, run from `/in` under its file name.
fn input_program(binary: &Path, args: &[&str]) -> RunSpec {
    let name = binary.file_name().unwrap().to_str().unwrap().to_owned();
    let mut run = spec(&format!("/in/{name}"), args);
    run.inputs = vec![(name, binary.to_owned())];
    run
}

fn shell(script: &str) -> RunSpec {
    spec("/bin/sh", &["-c", script])
}

/// A dynamically linked host program runs and its output is recorded; the
/// witness log reads back to the same root.
#[test]
fn host_program_runs_and_is_witnessed() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, stdout) = cage(&spec("/bin/echo", &["hello", "cage"]), dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "{outcome:?}");
    assert_eq!(stdout, "hello cage\n");
    let (records, root) = read_witness(dir.path());
    assert_eq!(hex::encode(root), outcome.root);
    assert!(records.iter().any(|r| matches!(r, witness::Record::Stdout(bytes) if bytes == b"hello cage\n")));
}

/// Inside: a fixed hostname, uid 1000, PID 2 (an init is PID 1), only loopback, an empty
/// environment but TZ, cwd /tmp, and none of the host's files but its system directories
/// and, of `/etc`, the `alternatives` links commands such as `awk` go through.
#[test]
fn the_inside_is_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo host=$(cat /proc/sys/kernel/hostname) $(id) pid=$$ cwd=$(pwd); \
                  env | sort | tr '\\n' ' '; echo; ls /sys/class/net 2>&1 | tr '\\n' ' '; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' \\n'; echo; \
                  ls / | tr '\\n' ' '; echo; ls /root /home 2>&1 | head -3 | tr '\\n' ' '; echo; ls /etc; \
                  echo a b | awk '{print $2}'";
    let (outcome, stdout) = cage(&shell(script), dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "{outcome:?} {stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    // No supplementary groups: a root runner's group 0 does not come along.
    assert_eq!(lines[0], "host=docklock uid=1000 gid=1000 groups=1000 pid=2 cwd=/tmp", "{stdout}");
    assert!(lines[1].starts_with("PWD=/tmp") || lines[1].contains("TZ=UTC"), "{stdout}");
    assert!(!lines[1].contains("HOME=") && !lines[1].contains("PATH=/root"), "no host environment: {stdout}");
    assert!(lines[2].ends_with("lo"), "only loopback: {stdout}");
    assert!(!lines[3].contains("root") && !lines[3].contains("home"), "{stdout}");
    assert!(lines[4].contains("No such file"), "no /root, no /home: {stdout}");
    assert_eq!(lines[5], "alternatives", "only the links of /etc, no host names or users: {stdout}");
    assert_eq!(lines[6], "b", "awk, a link through /etc/alternatives, runs: {stdout}");
}

/// The root is read-only; /tmp and /out are writable; outputs are collected
/// and witnessed.
#[test]
fn outputs_are_collected_and_the_root_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let script = "touch /usr/x 2>/dev/null && echo wrote-usr; touch /x 2>/dev/null && echo wrote-root; \
                  echo scratch > /tmp/s && mkdir -p /out/sub && echo result > /out/sub/r.txt && echo done";
    let (outcome, stdout) = cage(&shell(script), dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "{outcome:?}");
    assert_eq!(stdout, "done\n");
    assert_eq!(outcome.outputs, ["sub/r.txt"]);
    assert_eq!(std::fs::read_to_string(dir.path().join("out/sub/r.txt")).unwrap(), "result\n");
}

/// Each verdict kind the cage decides today, produced on purpose.
#[test]
fn verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = cage(&shell("exit 3"), dir.path());
    assert_eq!(outcome.verdict, Verdict::ProgramFailed { exit_code: Some(3), signal: None });
    let (outcome, _) = cage(&shell("kill -9 $$"), dir.path());
    assert_eq!(outcome.verdict, Verdict::ProgramFailed { exit_code: None, signal: Some(9) });
    let mut slow = shell("while :; do :; done");
    slow.limits.wall_ms = 300;
    let (outcome, _) = cage(&slow, dir.path());
    assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::Wall });
    let mut loud = shell("yes");
    loud.limits.output_bytes = 1 << 20;
    let (outcome, stdout) = cage(&loud, dir.path());
    assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::Output });
    assert!(stdout.len() <= 1 << 20);
    let mut big_file = shell("exec head -c 2000000 /dev/zero > /tmp/f");
    big_file.limits.file_size_bytes = 1 << 20;
    let (outcome, _) = cage(&big_file, dir.path());
    assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::FileSize });
    // A call the policy denies (here, creating a user namespace) ends the
    // run, naming the call.
    let (outcome, _) = cage(&shell("exec /usr/bin/unshare --user /bin/true"), dir.path());
    assert_eq!(outcome.verdict, Verdict::PolicyViolation { number: 272, call: "unshare".into() });
    let (outcome, stdout) = cage(&spec("/usr/bin/ls", &["-la", "/usr/bin/ls"]), dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "ls -la is within the policy: {stdout}");
    let (outcome, _) = cage(&spec("/no/such/program", &[]), dir.path());
    assert!(matches!(&outcome.verdict, Verdict::CageError { reason } if reason.contains("exec")), "{outcome:?}");
}

/// The same run twice gives the same root; one changed input byte changes it;
/// inputs may have nested names.
#[test]
fn roots_are_stable_and_inputs_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("data.txt");
    std::fs::write(&input, "abc").unwrap();
    let mut job = shell("cat /in/data.txt; echo; wc -c < /in/data.txt > /out/count");
    job.inputs = vec![("data.txt".into(), input.clone())];
    let (first, stdout) = cage(&job, dir.path());
    assert_eq!(first.verdict, Verdict::Ok, "{first:?}");
    assert_eq!(stdout, "abc\n");
    let (second, _) = cage(&job, dir.path());
    assert_eq!(first.root, second.root);
    std::fs::write(&input, "abd").unwrap();
    let (third, _) = cage(&job, dir.path());
    assert_ne!(first.root, third.root);
    // Nested names get their directories, each once, before their files.
    let mut nested = shell("cat /in/a/b/x /in/a/y; ls /in/a");
    nested.inputs = vec![("a/b/x".into(), input.clone()), ("a/y".into(), input.clone())];
    let (outcome, stdout) = cage(&nested, dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "{outcome:?}");
    assert_eq!(stdout, "abdabdb\ny\n");
}

/// Two processes showing host files at the same time (two `ls -i` in the
/// background) see the same virtual inode numbers on every run, whatever
/// order the host ran them in: each process numbers what it shows itself.
#[test]
fn concurrent_processes_see_the_same_inode_numbers_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let job = shell(
        "ls -i /usr/bin > /tmp/a & ls -i /usr/lib > /tmp/b & ls -i /etc > /tmp/c & wait; \
         cat /tmp/a /tmp/b /tmp/c | cksum",
    );
    let (first, stdout) = cage(&job, dir.path());
    assert_eq!(first.verdict, Verdict::Ok, "{first:?}");
    for run in 1..8 {
        let (again, again_stdout) = cage(&job, dir.path());
        assert_eq!((&again_stdout, &again.root), (&stdout, &first.root), "run {run}");
    }
}

/// Threads through their lifecycles: a worker calling `exit` while the
/// main thread waits, a thread forking and reaping a child, an exec while
/// a thread waits, a worker crashing, 80 short-lived threads (joined and
/// detached), the main thread returning while another is woken, an exec
/// by a thread other than the first (refused), a signal to a sleeping
/// thread (its sleep ends early, the handler runs), a cancelled waiter.
/// Each ends
/// as the program says, the same way twice, with nothing left waiting.
#[test]
fn thread_lifecycles_end_as_their_programs_say() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(dir.path(), "lifecycle", LIFECYCLE);
    let exec_refused = Verdict::Refused {
        source: "threads".into(),
        call: "execve from a thread other than the process's first".into(),
    };
    let cases: [(&str, Verdict, &str); 9] = [
        ("exit_group", Verdict::ProgramFailed { exit_code: Some(3), signal: None }, "worker calls exit(3)\n"),
        ("fork", Verdict::Ok, "child of a thread, pid 5\nthread reaped 5 status 7\ndone fork\n"),
        ("exec", Verdict::Ok, "exec'd with a thread waiting\n"),
        ("crash", Verdict::ProgramFailed { exit_code: None, signal: Some(libc::SIGSEGV) }, ""),
        ("many", Verdict::Ok, "many done\n"),
        ("mainexit", Verdict::Ok, "main returns\n"),
        ("thread_exec", exec_refused, ""),
        ("signal_sleeper", Verdict::Ok, "sleep returned -1 woken 1 left more than an hour less a second 1\n"),
        ("cancel_waiter", Verdict::Ok, "cancelled 1\n"),
    ];
    for (variant, verdict, expected) in cases {
        let job = input_program(&binary, &[variant]);
        let (first, stdout) = cage(&job, dir.path());
        assert_eq!((&first.verdict, stdout.as_str()), (&verdict, expected), "{variant}");
        let (second, _) = cage(&job, dir.path());
        assert_eq!(second.root, first.root, "{variant}");
    }
}

const LIFECYCLE: &str = r#"#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <sys/syscall.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t c = PTHREAD_COND_INITIALIZER;
static int flag;

static void *waiter(void *arg) { (void)arg; pthread_mutex_lock(&m); while (!flag) pthread_cond_wait(&c, &m); pthread_mutex_unlock(&m); return NULL; }
static void *exiter(void *arg) { (void)arg; usleep(500); printf("worker calls exit(3)\n"); fflush(stdout); exit(3); }
static void *forker(void *arg) {
    (void)arg;
    pid_t p = fork();
    if (p == 0) { printf("child of a thread, pid %d\n", getpid()); fflush(stdout); _exit(7); }
    int st; waitpid(p, &st, 0); printf("thread reaped %d status %d\n", p, WEXITSTATUS(st)); fflush(stdout);
    return NULL;
}
static void *crasher(void *arg) { (void)arg; usleep(100); raise(SIGSEGV); return NULL; }
static volatile sig_atomic_t woken;
static void on_usr1(int sig) { (void)sig; woken = 1; }
static void *sleeper(void *arg) {
    (void)arg;
    struct timespec request = {3600, 0}, left = {0, 0};
    int r = nanosleep(&request, &left);
    printf("sleep returned %d woken %d left more than an hour less a second %d\n", r, (int)woken, left.tv_sec >= 3598);
    fflush(stdout);
    return NULL;
}
static void *cond_waiter(void *arg) { (void)arg; pthread_mutex_lock(&m); while (!flag) pthread_cond_wait(&c, &m); pthread_mutex_unlock(&m); return NULL; }
static void *execer(void *arg) { (void)arg; execl("/bin/echo", "echo", "exec'd by a thread", NULL); return NULL; }
static void *spawner(void *arg) { (void)arg; pthread_t t; pthread_create(&t, NULL, waiter, NULL); pthread_detach(t); return NULL; }

int main(int argc, char **argv) {
    const char *v = argc > 1 ? argv[1] : "";
    pthread_t a, b;
    if (!strcmp(v, "exit_group")) { pthread_create(&a, NULL, waiter, NULL); pthread_create(&b, NULL, exiter, NULL); pthread_join(a, NULL); }
    if (!strcmp(v, "fork")) { pthread_create(&a, NULL, waiter, NULL); pthread_create(&b, NULL, forker, NULL); pthread_join(b, NULL);
        pthread_mutex_lock(&m); flag = 1; pthread_cond_broadcast(&c); pthread_mutex_unlock(&m); pthread_join(a, NULL); printf("done fork\n"); }
    if (!strcmp(v, "exec")) { pthread_create(&a, NULL, waiter, NULL); usleep(100); execl("/bin/echo", "echo", "exec'd with a thread waiting", NULL); }
    if (!strcmp(v, "crash")) { pthread_create(&a, NULL, waiter, NULL); pthread_create(&b, NULL, crasher, NULL); pthread_join(a, NULL); }
    if (!strcmp(v, "many")) { for (int i = 0; i < 40; i++) { pthread_create(&a, NULL, spawner, NULL); pthread_join(a, NULL); }
        usleep(1000); pthread_mutex_lock(&m); flag = 1; pthread_cond_broadcast(&c); pthread_mutex_unlock(&m); usleep(1000); printf("many done\n"); }
    if (!strcmp(v, "signal_sleeper")) { signal(SIGUSR1, on_usr1); pthread_create(&a, NULL, sleeper, NULL); usleep(1000); pthread_kill(a, SIGUSR1); pthread_join(a, NULL); }
    if (!strcmp(v, "cancel_waiter")) { pthread_create(&a, NULL, cond_waiter, NULL); usleep(1000); pthread_cancel(a); void *r; pthread_join(a, &r); printf("cancelled %d\n", r == PTHREAD_CANCELED); }
    if (!strcmp(v, "thread_exec")) { pthread_create(&a, NULL, execer, NULL); pthread_join(a, NULL); }
    if (!strcmp(v, "mainexit")) { pthread_create(&a, NULL, waiter, NULL); usleep(100); pthread_mutex_lock(&m); flag = 1; pthread_cond_broadcast(&c); pthread_mutex_unlock(&m); printf("main returns\n"); }
    return 0;
}
"#;

/// Nothing of a run is left on the host: no process in its namespaces, no
/// mount, nothing in its stage directory but the empty mount point kept
/// for the next run.
#[test]
fn nothing_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let stages = tempfile::tempdir().unwrap();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    let script = "(while :; do :; done) & (while :; do :; done) & echo started";
    let mut orphaned = shell(script);
    orphaned.limits.wall_ms = 5_000;
    orphaned.stage_parent = Some(stages.path().to_owned());
    let (outcome, stdout) = cage(&orphaned, dir.path());
    assert_eq!((outcome.verdict, stdout.as_str()), (Verdict::Ok, "started\n"));
    // When the workload ended, its init ended the rest of the namespace,
    // the background loops too.
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(script))
        .collect();
    assert!(survivors.is_empty(), "left running: {survivors:?}");
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().count();
    assert_eq!(mounts_before, mounts_after, "no mount is left on the host");
    let left: Vec<_> = std::fs::read_dir(stages.path()).unwrap().map(|entry| entry.unwrap().path()).collect();
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    let mount_point = stages.path().join(format!("docklock-cage-root-{euid}"));
    assert_eq!(left, std::slice::from_ref(&mount_point), "only the mount point is kept");
    assert_eq!(std::fs::read_dir(&mount_point).unwrap().count(), 0, "the mount point is empty on the host");
}

/// The witness path holds a whole log or the one before: a run that cannot
/// start leaves the previous log as it was, and no partial file beside it;
/// a run that ends replaces it whole.
#[test]
fn a_witness_log_is_replaced_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("witness.log");
    std::fs::write(&path, b"the previous log").unwrap();
    let mut missing_input = spec("/bin/true", &[]);
    missing_input.inputs = vec![("data".into(), dir.path().join("no-such-file"))];
    let error = run(&missing_input, &path, None, Vec::new(), Vec::new()).expect_err("the input is missing");
    assert!(error.to_string().contains("no-such-file"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), b"the previous log");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["witness.log"], "nothing partial is left");

    let outcome = run(&spec("/bin/true", &[]), &path, None, Vec::new(), Vec::new()).expect("the cage runs");
    let (_, root) = witness::read(std::fs::File::open(&path).unwrap()).expect("a whole log");
    assert_eq!(hex::encode(root), outcome.root);
}

/// A rootfs tarball and an image with a static program built here run; it
/// sees only their files.
#[test]
fn a_rootfs_tarball_and_an_image_run() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "hello",
        "#include <stdio.h>\n#include <unistd.h>\nint main(void){printf(\"static %d %d\\n\", access(\"/usr/bin/sh\", F_OK), access(\"/etc/motd\", F_OK));return 0;}\n",
    );
    let tarball = dir.path().join("rootfs.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("--transform")
        .arg("s,^,app/,")
        .arg("-C")
        .arg(dir.path())
        .arg(binary.file_name().expect("a file name"))
        .status()
        .unwrap();
    assert!(status.success());
    let cache = dir.path().join("cache");
    let mut job = spec("/app/hello", &[]);
    job.rootfs = Rootfs::Tarball(tarball.clone());
    job.cache = cache.clone();
    let (outcome, stdout) = cage(&job, dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "{outcome:?}");
    assert_eq!(stdout, "static -1 -1\n", "no host files are visible");
    let cached = std::fs::read_dir(cache.join("rootfs")).unwrap().count();
    let (again, _) = cage(&job, dir.path());
    assert_eq!(again.root, outcome.root);
    assert_eq!(std::fs::read_dir(cache.join("rootfs")).unwrap().count(), cached, "unpacked once");

    // The same program as a one-layer image in `docker save` shape.
    let image_dir = dir.path().join("image");
    std::fs::create_dir_all(image_dir.join("layer1")).unwrap();
    std::fs::copy(&tarball, image_dir.join("layer1/layer.tar")).unwrap();
    std::fs::write(image_dir.join("manifest.json"), r#"[{"Config":"config.json","Layers":["layer1/layer.tar"]}]"#)
        .unwrap();
    let image = dir.path().join("image.tar");
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&image)
        .arg("-C")
        .arg(&image_dir)
        .args(["manifest.json", "layer1"])
        .status()
        .unwrap();
    assert!(status.success());
    let detected = Rootfs::detect(image.to_str().unwrap()).unwrap();
    assert_eq!(detected, Rootfs::Image(image.clone()));
    job.rootfs = detected;
    let (from_image, stdout) = cage(&job, dir.path());
    assert_eq!(from_image.verdict, Verdict::Ok, "{from_image:?}");
    assert_eq!(stdout, "static -1 -1\n");
    assert_ne!(from_image.root, outcome.root, "the witness names the rootfs it ran on");
}

/// Hostile behaviour the cage contains today (namespaces, uid, no_new_privs,
/// rlimits, limits). Each runs as a shell snippet that prints what it
/// managed; the attempts that need the seccomp policy (io_uring, bpf,
/// userfaultfd, nested user namespaces, x32) are not in this list yet.
#[test]
fn hostile_attempts_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let attempts: [(&str, &str); 8] = [
        ("mount", "mount -t tmpfs none /tmp 2>/dev/null && echo ESCAPED"),
        ("chroot", "chroot / /bin/true 2>/dev/null && echo ESCAPED"),
        ("read host files", "cat /etc/shadow /root/.bashrc /home/*/.profile 2>/dev/null && echo ESCAPED"),
        ("see host processes", "ls /proc | grep -E '^[0-9]+$' | wc -l | grep -qvE '^[1-9]$' && echo ESCAPED"),
        ("write the root", "echo x > /usr/escaped 2>/dev/null && echo ESCAPED"),
        ("write /in", "echo x > /in/escaped 2>/dev/null && echo ESCAPED"),
        ("kill the keeper", "kill -9 -1 2>/dev/null; echo survived"),
        ("setuid", "ls -l /usr/bin/passwd >/dev/null 2>&1; /usr/bin/passwd -S root >/dev/null 2>&1 && echo ESCAPED"),
    ];
    for (name, script) in attempts {
        let mut attempt = shell(&format!("{script}; exit 0"));
        attempt.limits.wall_ms = 10_000;
        let (outcome, stdout) = cage(&attempt, dir.path());
        assert!(!stdout.contains("ESCAPED"), "{name}: {stdout}");
        // Either the attempt failed and the script went on, or it made a
        // denied call and the run ended there (util-linux's mount and
        // chroot do), or it reached for host state (passwd reads the
        // audit login uid in /proc) and was refused.
        assert!(
            matches!(outcome.verdict, Verdict::Ok | Verdict::PolicyViolation { .. } | Verdict::Refused { .. }),
            "{name}: {:?}",
            outcome.verdict
        );
    }
    // A fork bomb and a memory bomb end at their limits, and the host is fine.
    let mut bomb = shell("bomb() { bomb | bomb & }; bomb; while :; do :; done");
    bomb.limits.wall_ms = 3_000;
    bomb.limits.processes = 32;
    let (outcome, _) = cage(&bomb, dir.path());
    if cgroups(dir.path()) {
        assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::Processes });
    } else {
        assert!(!matches!(outcome.verdict, Verdict::CageError { .. }), "{outcome:?}");
    }
    let mut memory = shell("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}");
    memory.limits.memory_mib = 64;
    let (outcome, stdout) = cage(&memory, dir.path());
    assert!(!stdout.contains("200000000"), "a 200 MB string does not fit in 64 MiB: {outcome:?}");
    // Filling the disk fills only /out's bounded tmpfs (or /tmp's).
    let mut fill = shell("cat /dev/zero > /out/fill; cat /dev/zero > /tmp/fill; echo done");
    fill.limits.out_bytes = 4 << 20;
    let (outcome, stdout) = cage(&fill, dir.path());
    assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::OutBytes }, "{stdout}");
    assert_eq!(stdout, "done\n", "the writes failed with ENOSPC and the script went on");
    assert!(outcome.outputs.contains(&"fill".to_owned()));
    // 10 GB to stdout ends at the output limit, long before 10 GB.
    let mut flood = shell("head -c 10000000000 /dev/zero");
    flood.limits.output_bytes = 8 << 20;
    let (outcome, stdout) = cage(&flood, dir.path());
    assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::Output });
    assert!(stdout.len() <= 8 << 20);
    let (after, stdout) = cage(&spec("/bin/echo", &["still fine"]), dir.path());
    assert_eq!((after.verdict, stdout.as_str()), (Verdict::Ok, "still fine\n"));
}

/// Hostile system calls, from a C program built here: each is denied by
/// the seccomp policy (the run ends: `policy-violation`, naming the call,
/// which never ran) or fails harmlessly, and the host is untouched.
#[test]
fn hostile_system_calls_are_denied() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "hostile",
        r#"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *what = argv[1];
    long r = 0;
    if (!strcmp(what, "io_uring")) r = syscall(425, 8, 0);
    else if (!strcmp(what, "bpf")) r = syscall(SYS_bpf, 0, 0, 0);
    else if (!strcmp(what, "userfaultfd")) r = syscall(SYS_userfaultfd, 0);
    else if (!strcmp(what, "kexec")) r = syscall(SYS_kexec_load, 0, 0, 0, 0);
    else if (!strcmp(what, "x32")) r = syscall(0x40000000 | 39);
    else if (!strcmp(what, "int80")) { long n = 20; __asm__ volatile ("int $0x80" : "+a"(n)); r = n; }
    else if (!strcmp(what, "ptrace")) r = ptrace(PTRACE_ATTACH, 1, 0, 0);
    else if (!strcmp(what, "setns")) r = syscall(SYS_setns, 0, 0);
    else if (!strcmp(what, "mount")) r = mount("none", "/tmp", "tmpfs", 0, 0);
    else if (!strcmp(what, "unshare")) r = unshare(CLONE_NEWUSER);
    else if (!strcmp(what, "chroot")) r = chroot("/tmp");
    else if (!strcmp(what, "mem")) { int fd = open("/proc/1/mem", O_RDONLY); r = fd; }
    else if (!strcmp(what, "socket")) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(53) };
        inet_pton(AF_INET, "1.1.1.1", &to.sin_addr);
        r = connect(s, (struct sockaddr *)&to, sizeof to);
    }
    else if (!strcmp(what, "kill")) {
        /* Everything it can reach: only its own namespace. */
        kill(-1, SIGKILL); kill(1, SIGKILL); r = -1;
    }
    printf("returned %ld\n", r);
    return r >= 0 ? 42 : 0;
}
"#,
    );
    let denied = [
        ("io_uring", 425, "io_uring_setup"),
        ("bpf", 321, "bpf"),
        ("userfaultfd", 323, "userfaultfd"),
        ("kexec", 246, "kexec_load"),
        ("x32", 0x4000_0000 | 39, "an x32 system call, number 39"),
        ("int80", 20, "a 32-bit (int 0x80) system call, number 20"),
        ("ptrace", 101, "ptrace"),
        ("setns", 308, "setns"),
        ("mount", 165, "mount"),
        ("unshare", 272, "unshare"),
        ("chroot", 161, "chroot"),
    ];
    for what in denied.iter().map(|(what, _, _)| *what).chain(["mem", "socket", "kill"]) {
        let attempt = input_program(&binary, &[what]);
        let (outcome, stdout) = cage(&attempt, dir.path());
        if let Some((_, number, call)) = denied.iter().find(|(name, _, _)| *name == what) {
            let expected = Verdict::PolicyViolation { number: *number, call: (*call).into() };
            assert_eq!(outcome.verdict, expected, "{what}: {stdout}");
            assert!(!stdout.contains("returned"), "{what}: the denied call never returned: {stdout}");
        } else {
            // Allowed calls that must fail: the init's memory is not
            // ours, no route leaves the namespace, and no signal reaches
            // the init or anything outside.
            assert_eq!(outcome.verdict, Verdict::Ok, "{what}: {stdout}");
            assert!(stdout.starts_with("returned -1"), "{what}: {stdout}");
        }
    }
}

/// The supervisor answers traced calls from the seed and a logical clock
/// (the same seed, the same answers; another seed, other random bytes),
/// records each answer, witnesses the files a program reads, and refuses
/// what it does not handle, naming the source.
#[test]
fn traced_calls_are_answered_recorded_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "traced",
        r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
static void *nothing(void *arg) { return arg; }
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "thread")) {
        pthread_t thread;
        printf("pthread_create returned %d\n", pthread_create(&thread, NULL, nothing, NULL));
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "alarm")) {
        printf("alarm returned %u\n", alarm(5));
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "rusage")) {
        struct rusage usage;
        printf("getrusage returned %ld\n", syscall(SYS_getrusage, RUSAGE_SELF, &usage));
        return 0;
    }
    struct timespec ts;
    syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts);
    printf("realtime %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    struct timespec nap = {5, 0};
    syscall(SYS_nanosleep, &nap, NULL);
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
    printf("monotonic %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    unsigned char bytes[16];
    long n = syscall(SYS_getrandom, bytes, sizeof bytes, 0);
    printf("random %ld ", n);
    for (int i = 0; i < 16; i++) printf("%02x", bytes[i]);
    struct utsname names;
    syscall(SYS_uname, &names);
    printf("\nuname %s %s %s %s\n", names.sysname, names.nodename, names.release, names.machine);
    return 0;
}
"#,
    );
    let run_with = |seed: u8, args: &[&str]| {
        let mut traced = input_program(&binary, args);
        traced.seed = [seed; 32];
        cage(&traced, dir.path())
    };
    let (first, stdout) = run_with(1, &[]);
    assert_eq!(first.verdict, Verdict::Ok, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "realtime 946684800.000001000", "the logical clock starts at 2000-01-01");
    assert_eq!(lines[1], "monotonic 5.000002000", "a sleep moves the logical clock on by what it asked");
    assert!(lines[2].starts_with("random 16 "), "{stdout}");
    assert_eq!(lines[3], "uname Linux docklock 6.1.0-docklock x86_64");
    let (again, stdout_again) = run_with(1, &[]);
    assert_eq!((&again.root, &stdout_again), (&first.root, &stdout), "the same seed gives the same run");
    let (other, stdout_other) = run_with(2, &[]);
    assert_ne!(other.root, first.root);
    assert_ne!(stdout_other.lines().nth(2), Some(lines[2]), "another seed, other random bytes");
    let (records, _) = read_witness(dir.path());
    let calls: Vec<&str> = records
        .iter()
        .filter_map(|r| if let witness::Record::Call { name, .. } = r { Some(name.as_str()) } else { None })
        .collect();
    // The exec (its auxiliary vector rewritten), glibc's start-up (rseq is
    // answered ENOSYS; its malloc asks for random bytes), then the probe
    // (stdio's first printf looks at stdout with fstat: rewritten, recorded).
    // The vDSO and its data pages go in one record, however the kernel
    // splits them.
    let unmapped: Vec<(&str, i64)> = records
        .iter()
        .filter_map(|r| match r {
            witness::Record::Call { name, result, .. } if name.starts_with("unmap ") => Some((name.as_str(), *result)),
            _ => None,
        })
        .collect();
    assert_eq!(unmapped, [("unmap vdso", 0)]);
    // Where the host faults CPUID, the loader's CPUID instructions are
    // answered and recorded too (dozens of them); where it cannot, none are.
    let cpuids = calls.iter().filter(|name| **name == "cpuid").count();
    let host_faults_cpuid = std::fs::read_to_string("/proc/cpuinfo").unwrap().contains(" cpuid_fault");
    assert_eq!(cpuids > 0, host_faults_cpuid, "{cpuids} CPUID records");
    let calls: Vec<&str> = calls.into_iter().filter(|name| !name.starts_with("unmap ") && *name != "cpuid").collect();
    let expected = [
        "exec auxv",
        "cpuid faulting",
        "rseq",
        "getrandom",
        "clock_gettime",
        "newfstatat",
        "nanosleep",
        "clock_gettime",
        "getrandom",
        "uname",
    ];
    assert_eq!(calls, expected);

    let (refused, stdout) = run_with(1, &["alarm"]);
    assert_eq!(refused.verdict, Verdict::Refused { source: "timers".into(), call: "alarm".into() });
    assert!(!stdout.contains("returned"), "the refused call never returned: {stdout}");
    let (usage, stdout) = run_with(1, &["rusage"]);
    assert_eq!((usage.verdict, stdout.as_str()), (Verdict::Ok, "getrusage returned 0\n"), "answered: no usage");
    // Threads run, serialised (tests/tests/determinism.rs has the probes).
    let (threaded, stdout) = run_with(1, &["thread"]);
    assert_eq!((threaded.verdict, stdout.as_str()), (Verdict::Ok, "pthread_create returned 0\n"));

    // A dynamically linked program's libraries are witnessed by digest.
    let (listed, _) = cage(&spec("/usr/bin/ls", &["/"]), dir.path());
    assert_eq!(listed.verdict, Verdict::Ok);
    let (records, _) = read_witness(dir.path());
    let read: Vec<&str> = records
        .iter()
        .filter_map(|r| if let witness::Record::Read { path, .. } = r { Some(path.as_str()) } else { None })
        .collect();
    assert!(read.iter().any(|path| path.contains("libc.so")), "libc is witnessed: {read:?}");
    assert!(read.iter().any(|path| path.ends_with("/ls")), "the program is witnessed: {read:?}");
}

/// Calls runtimes make at start-up that the policy once denied outright
/// (Node.js died at `capget`, V8 at `pkey_alloc`, GNU tar at `creat`):
/// the legacy `creat` opens as `open` would, `capget` shows the cage's
/// fixed capabilities (none, for the workload), and `pkey_alloc` finds no
/// protection keys, as on the virtual CPU; the same answers every run.
#[test]
fn runtime_start_up_calls_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "startup",
        r#"
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    long fd = syscall(SYS_creat, "/tmp/made", 0640);
    long wrote = write((int)fd, "kept", 4);
    close((int)fd);
    char back[8] = {0};
    int again = open("/tmp/made", O_RDONLY);
    long got = read(again, back, sizeof back - 1);
    printf("creat %ld wrote %ld read %ld %s\n", fd, wrote, got, back);
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    long caps = syscall(SYS_capget, &header, data);
    printf("capget %ld effective %x %x permitted %x %x\n", caps, data[0].effective, data[1].effective,
           data[0].permitted, data[1].permitted);
    long key = syscall(SYS_pkey_alloc, 0, 0);
    printf("pkey_alloc %ld errno %d\n", key, key < 0 ? errno : 0);
    long bad = syscall(SYS_pkey_alloc, 1, 0);
    printf("pkey_alloc flags %ld errno %d\n", bad, bad < 0 ? errno : 0);
    return 0;
}
"#,
    );
    let (first, stdout) = cage(&input_program(&binary, &[]), dir.path());
    assert_eq!(first.verdict, Verdict::Ok, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "creat 3 wrote 4 read 4 kept", "{stdout}");
    assert_eq!(lines[1], "capget 0 effective 0 0 permitted 0 0", "{stdout}");
    assert_eq!(lines[2], format!("pkey_alloc -1 errno {}", libc::ENOSPC), "{stdout}");
    assert_eq!(lines[3], format!("pkey_alloc flags -1 errno {}", libc::EINVAL), "{stdout}");
    let (again, stdout_again) = cage(&input_program(&binary, &[]), dir.path());
    assert_eq!((&again.root, &stdout_again), (&first.root, &stdout), "the same answers, the same root");
    let (records, _) = read_witness(dir.path());
    let answered: Vec<i64> = records
        .iter()
        .filter_map(|r| match r {
            witness::Record::Call { name, result, .. } if name == "pkey_alloc" => Some(*result),
            _ => None,
        })
        .collect();
    assert_eq!(answered, [-i64::from(libc::ENOSPC), -i64::from(libc::EINVAL)], "each pkey_alloc answer is witnessed");
}

/// The CPU a caged program sees is the one the witness header's machine
/// class names. Where the host can fault CPUID (its `/proc/cpuinfo` says
/// `cpuid_fault`), that is the virtual CPU. Where it cannot, the host CPU
/// shows through: the header then names that CPU, so a root holds only
/// among hosts with the same one, and the witness records the failed
/// attempt (`ENODEV`). Either way the test says which case it checked.
#[test]
fn the_cpu_a_program_sees_is_the_machine_class_the_header_names() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "brand",
        r#"
#include <stdio.h>
#include <stdint.h>
#include <string.h>
int main(void) {
    uint32_t r[4];
    char brand[49] = {0};
    for (uint32_t leaf = 0; leaf < 3; leaf++) {
        __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(0x80000002 + leaf), "c"(0));
        memcpy(brand + 16 * leaf, r, 16);
    }
    printf("%s\n", brand);
    return 0;
}
"#,
    );
    let (outcome, stdout) = cage(&input_program(&binary, &[]), dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "{stdout}");
    let brand = stdout.trim();
    let (records, _) = read_witness(dir.path());
    let witness::Record::Header(header) = &records[0] else { panic!("a witness log starts with its header") };
    let machine = header.lines().find_map(|line| line.strip_prefix("machine=")).expect("the header names the machine");
    let faulting = records.iter().find_map(|record| match record {
        witness::Record::Call { name, result, .. } if name == "cpuid faulting" => Some(*result),
        _ => None,
    });
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    if cpuinfo.contains(" cpuid_fault") {
        eprintln!("this host faults CPUID: checking that programs see the virtual CPU");
        assert_eq!(brand, "DockLock virtual CPU (x86-64-v2)");
        assert_eq!(machine, "x86_64 cpuid=virtual/1");
        assert_eq!(faulting, Some(0));
    } else {
        eprintln!("this host cannot fault CPUID: checking that the header names the host CPU programs see");
        let host = cpuinfo.lines().find_map(|line| line.strip_prefix("model name\t: ")).unwrap().trim();
        assert_eq!(brand, host, "the host CPU shows through");
        assert!(machine.starts_with("x86_64 cpuid=host "), "{machine}");
        assert!(machine.contains(&format!("{host:?}")), "the class names the CPU: {machine}");
        assert_eq!(faulting, Some(-i64::from(libc::ENODEV)), "the witness records the failed attempt");
    }
}

/// The thread that ran (and supervised) a run gets its CPU settings back:
/// while supervising it has time-stamp counter faulting on (and CPUID
/// faulting where the host can), as its tracees do; left on, its next
/// clock read through the vDSO would kill the process with SIGSEGV.
#[test]
#[allow(unsafe_code)]
fn the_supervising_thread_gets_its_cpu_settings_back() {
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = cage(&shell("date; cat /dev/urandom | head -c 4 | od -An -tx1"), dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok);
    let mut tsc: libc::c_int = 0;
    // SAFETY: PR_GET_TSC writes one int through the pointer.
    assert_eq!(unsafe { libc::prctl(libc::PR_GET_TSC, &mut tsc as *mut libc::c_int, 0, 0, 0) }, 0);
    assert_eq!(tsc, libc::PR_TSC_ENABLE, "RDTSC works again on this thread");
    const ARCH_GET_CPUID: libc::c_ulong = 0x1011;
    // SAFETY: ARCH_GET_CPUID takes no pointer; it returns the setting.
    let cpuid = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_CPUID, 0 as libc::c_ulong) };
    assert_eq!(cpuid, 1, "CPUID works again on this thread");
    // And the clock reads (through the vDSO, which reads the counter).
    let before = std::time::Instant::now();
    assert!(before.elapsed() < std::time::Duration::from_secs(60));
}

/// Memory is bounded for the whole cage, not per process: four processes
/// of 24 MiB each do not fit in 64 MiB (each alone would), and the verdict
/// names the memory limit.
#[test]
fn memory_is_bounded_for_the_whole_cage() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "hungry",
        r#"
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    int ready[2], go[2];
    pipe(ready); pipe(go);
    for (int i = 0; i < 4; i++) {
        if (fork() == 0) {
            close(ready[0]); close(go[1]);
            char *p = malloc(24 << 20);
            memset(p, 1, 24 << 20);
            write(ready[1], "r", 1); close(ready[1]);
            char c; read(go[0], &c, 1);
            _exit(0);
        }
    }
    close(ready[1]); close(go[0]);
    char c; int n = 0;
    while (read(ready[0], &c, 1) == 1) n++;
    close(go[1]);
    while (wait(0) > 0) {}
    return n == 4 ? 0 : 1;
}
"#,
    );
    let mut hungry = input_program(&binary, &[]);
    hungry.limits.memory_mib = 64;
    hungry.limits.wall_ms = 20_000;
    let (outcome, _) = cage(&hungry, dir.path());
    if cgroups(dir.path()) {
        assert_eq!(outcome.verdict, Verdict::LimitExceeded { limit: Limit::Memory });
    } else {
        eprintln!("no cgroup limits here (not root): the whole-cage memory bound is not enforced");
    }
    hungry.limits.memory_mib = 256;
    let (outcome, _) = cage(&hungry, dir.path());
    assert_eq!(outcome.verdict, Verdict::Ok, "with room for all four it runs");
}

/// Determinism probe: time through libc (the vDSO path when not caged),
/// the time-stamp counter, AT_RANDOM, stack and heap addresses, the pid.
/// Caged, two runs print the same and have the same root; natively, two
/// runs differ (or the probe would prove nothing). Attempts to switch the
/// counter back on or to stack a seccomp filter are refused.
#[test]
fn time_counter_randomness_and_addresses_are_virtual() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_static(
        dir.path(),
        "probe",
        r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>
#include <cpuid.h>
int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "tsc-on")) {
        printf("prctl returned %d\n", prctl(PR_SET_TSC, PR_TSC_ENABLE, 0, 0, 0));
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "own-filter")) {
        printf("prctl returned %d\n", prctl(PR_SET_SECCOMP, 2, 0, 0, 0));
        return 0;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("time %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("monotonic %ld.%09ld\n", (long)ts.tv_sec, ts.tv_nsec);
    unsigned aux;
    unsigned long long a = __rdtsc(), b = __rdtscp(&aux);
    printf("tsc %llu %llu aux %u\n", a, b, aux);
    unsigned char *r = (unsigned char *)getauxval(AT_RANDOM);
    printf("at_random ");
    for (int i = 0; i < 16; i++) printf("%02x", r[i]);
    int local;
    void *heap = malloc(100000);
    printf("\nstack %p heap %p vdso %lx pid %d\n", (void *)&local, heap, getauxval(AT_SYSINFO_EHDR), getpid());
    unsigned eax, ebx, ecx, edx;
    __cpuid(0, eax, ebx, ecx, edx);
    char vendor[13] = {0};
    memcpy(vendor, &ebx, 4); memcpy(vendor + 4, &edx, 4); memcpy(vendor + 8, &ecx, 4);
    __cpuid(1, eax, ebx, ecx, edx);
    printf("cpu %s rdrand %u\n", vendor, (ecx >> 30) & 1);
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int vdso = 0;
    while (maps && fgets(line, sizeof line, maps)) vdso += strstr(line, "[vdso]") || strstr(line, "[vvar]");
    printf("vdso mappings %d\n", vdso);
    printf("minsigstksz %lu sysconf %ld\n", getauxval(AT_MINSIGSTKSZ), sysconf(_SC_MINSIGSTKSZ));
    return 0;
}
"#,
    );
    let caged = |args: &[&str]| {
        let probe = input_program(&binary, args);
        cage(&probe, dir.path())
    };
    let (first, first_out) = caged(&[]);
    assert_eq!(first.verdict, Verdict::Ok, "{first_out}");
    let (second, second_out) = caged(&[]);
    assert_eq!((&second.root, &second_out), (&first.root, &first_out), "two caged runs agree");
    assert!(first_out.contains("time 946684800."), "libc's clock is the logical clock: {first_out}");
    assert!(first_out.contains("vdso 0 "), "no vDSO is announced: {first_out}");
    assert!(first_out.contains("vdso mappings 0\n"), "the vDSO and vvar are unmapped: {first_out}");
    assert!(first_out.contains(" aux 0\n"), "RDTSCP says CPU 0: {first_out}");
    // The signal stack size is the cage's, not the host CPU's (glibc
    // passes it on through sysconf).
    assert!(first_out.contains("minsigstksz 16384 sysconf 16384\n"), "{first_out}");
    // CPUID faulting is a CPU feature (Intel's, and recent AMD's): where
    // the host has it, CPUID is the virtual CPU's; where not, the witness
    // records that it could not be turned on (so such runs are of another
    // machine class) and the host's CPU shows through.
    let (records, _) = read_witness(dir.path());
    let faulting = records.iter().find_map(|r| match r {
        witness::Record::Call { name, result, .. } if name == "cpuid faulting" => Some(*result),
        _ => None,
    });
    let host_faults_cpuid = std::fs::read_to_string("/proc/cpuinfo").unwrap().contains(" cpuid_fault");
    if host_faults_cpuid {
        assert_eq!(faulting, Some(0));
        // The virtual CPU claims Intel (see cage/src/cpuid.rs) and hides RDRAND, which the host has.
        assert!(first_out.contains("cpu GenuineIntel rdrand 0\n"), "CPUID is the virtual CPU's: {first_out}");
    } else {
        assert_eq!(faulting, Some(-i64::from(libc::ENODEV)), "the failure to fault CPUID is witnessed");
    }
    let native = || {
        let output = std::process::Command::new(&binary).output().unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    let (native_first, native_second) = (native(), native());
    for field in ["time", "tsc", "at_random", "stack"] {
        let line = |text: &str| text.lines().find(|l| l.starts_with(field)).map(str::to_owned);
        assert_ne!(line(&native_first), line(&native_second), "natively, {field} differs between runs");
        assert_eq!(line(&first_out), line(&second_out), "caged, {field} is the same");
    }
    // /dev/urandom and /dev/random are the seed's too.
    let read_urandom = |seed: u8| {
        let mut reader = shell("head -c 16 /dev/urandom | od -An -tx1; head -c 4 /dev/random | od -An -tx1");
        reader.seed = [seed; 32];
        cage(&reader, dir.path())
    };
    let ((one, bytes_one), (again, bytes_again), (_, bytes_other)) =
        (read_urandom(1), read_urandom(1), read_urandom(2));
    assert_eq!((&one.verdict, &bytes_one, &one.root), (&Verdict::Ok, &bytes_again, &again.root));
    assert_ne!(bytes_one, bytes_other, "another seed, other bytes");
    assert_eq!(bytes_one.len(), 3 * 16 + 1 + 3 * 4 + 1, "{bytes_one}");
    // /proc shows this namespace, not the host: the machine's files are
    // the cage's own, other host state is refused.
    let script = "cat /proc/uptime /proc/loadavg; grep -c ^processor /proc/cpuinfo; head -1 /proc/meminfo; \
                  cat /proc/self/status; echo ESCAPED";
    let (outcome, stdout) = cage(&shell(script), dir.path());
    assert!(
        matches!(&outcome.verdict, Verdict::Refused { source, call }
            if source == "host state in /proc" && call.starts_with("open /proc/") && call.ends_with("/status")),
        "{:?}",
        outcome.verdict
    );
    assert_eq!(stdout, "0.00 0.00\n0.00 0.00 0.00 1/1 1\n1\nMemTotal:        1048576 kB\n", "{stdout}");
    // Directory listings come sorted (tmpfs lists newest first), and inputs
    // are dated at the logical epoch.
    let mut listing = shell("mkdir /tmp/d; for f in c a b; do : > /tmp/d/$f; done; ls -U /tmp/d; stat -c %Y /in/probe");
    listing.inputs = vec![("probe".into(), binary.clone())];
    let (outcome, stdout) = cage(&listing, dir.path());
    assert_eq!((outcome.verdict, stdout.as_str()), (Verdict::Ok, "a\nb\nc\n946684800\n"));
    for attempt in ["tsc-on", "own-filter"] {
        let (outcome, stdout) = caged(&[attempt]);
        assert!(
            matches!(&outcome.verdict, Verdict::Refused { source, call } if source == "undoing the cage" && call == "prctl"),
            "{attempt}: {outcome:?}"
        );
        assert!(!stdout.contains("returned"), "{attempt}: {stdout}");
    }
}

/// `/dev/urandom` and `/dev/random` behave as the devices do: every open
/// reads new bytes, as many as asked for, and a descriptor shared by `dup`
/// or `fork` goes on through one stream; and the bytes are the seed's, the
/// same on every run.
#[test]
fn dev_urandom_is_a_stream_per_open() {
    let dir = tempfile::tempdir().unwrap();
    let script = "head -c 8 /dev/urandom | od -An -tx1; head -c 8 /dev/urandom | od -An -tx1; \
                  head -c 8 /dev/random | od -An -tx1; \
                  head -c 300000 /dev/urandom | wc -c; dd if=/dev/urandom bs=1M count=2 iflag=fullblock 2>/dev/null | wc -c; \
                  exec 3</dev/urandom; dd bs=4 count=1 <&3 2>/dev/null | od -An -tx1; dd bs=4 count=1 <&3 2>/dev/null | od -An -tx1";
    let run = |seed: u8| {
        let mut reader = shell(script);
        reader.seed = [seed; 32];
        cage(&reader, dir.path())
    };
    let (first, out) = run(5);
    assert_eq!(first.verdict, Verdict::Ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_ne!(lines[0], lines[1], "two opens, two draws: {out}");
    assert_ne!(lines[1], lines[2], "{out}");
    assert_eq!(lines[3].trim(), "300000", "more than the file holds: {out}");
    assert_eq!(lines[4].trim(), "2097152", "{out}");
    assert_ne!(lines[5], lines[6], "one open file read twice goes on: {out}");
    let (again, out_again) = run(5);
    assert_eq!((&again.root, &out_again), (&first.root, &out));
    let (_, other) = run(6);
    assert_ne!(other.lines().next(), out.lines().next(), "another seed, other bytes");
}

/// The same kind of attempts from a Rust program (static, built here with
/// the toolchain's `rustc`): each fails or ends the run with a refusal,
/// and nothing escapes.
#[test]
fn hostile_rust_program_is_contained() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_rust(
        dir.path(),
        "hostile-rs",
        r#"
use std::io::Write;
use std::time::Duration;
fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    let outcome = match what.as_str() {
        "net" => std::net::TcpStream::connect_timeout(&"1.1.1.1:53".parse().unwrap(), Duration::from_secs(1)).map(drop),
        "read" => std::fs::read("/etc/shadow").map(drop),
        "write" => std::fs::write("/usr/escaped", b"x"),
        "proc" => std::fs::read("/proc/1/mem").map(drop),
        other => panic!("unknown attempt {other}"),
    };
    let mut out = std::io::stdout();
    match outcome {
        Ok(()) => writeln!(out, "ESCAPED {what}").unwrap(),
        Err(error) => writeln!(out, "{what} failed: {error}").unwrap(),
    }
}
"#,
    );
    for what in ["net", "read", "write", "proc"] {
        let attempt = input_program(&binary, &[what]);
        let (outcome, stdout) = cage(&attempt, dir.path());
        assert!(!stdout.contains("ESCAPED"), "{what}: {stdout}");
        assert_eq!(outcome.verdict, Verdict::Ok, "{what}: {stdout}");
        assert!(stdout.starts_with(&format!("{what} failed")), "{what}: {stdout}");
    }
}

/// A Rust program's threads (the standard library's: spawn and join, a
/// channel, a mutex, a condition variable with timed waits, sleeps,
/// scoped threads, the available parallelism) run serialised: two caged
/// runs print the same and
/// have the same root, while what they print depends on the schedule.
#[test]
fn rust_threads_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let binary = compile_rust(
        dir.path(),
        "threads-rs",
        r#"
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
fn main() {
    let start = Instant::now();
    let shared = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let turn = Arc::new((Mutex::new(0u32), Condvar::new()));
    let handles: Vec<_> = (0..6u32)
        .map(|i| {
            let (shared, tx, turn) = (shared.clone(), tx.clone(), turn.clone());
            std::thread::spawn(move || {
                for j in 0..100 {
                    shared.lock().unwrap().push(i);
                    if j % 30 == 0 {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                let (lock, changed) = &*turn;
                let mut current = lock.lock().unwrap();
                while *current != i {
                    current = changed.wait_timeout(current, Duration::from_millis(1)).unwrap().0;
                }
                *current += 1;
                changed.notify_all();
                tx.send((i, start.elapsed().as_nanos())).unwrap();
            })
        })
        .collect();
    drop(tx);
    for handle in handles {
        handle.join().unwrap();
    }
    println!("order {:?}", &shared.lock().unwrap()[..60]);
    println!("sent {:?}", rx.iter().collect::<Vec<_>>());
    let sum: u64 = std::thread::scope(|s| {
        let parts: Vec<_> = (0..4u64).map(|k| s.spawn(move || (0..1_000_000u64).map(|x| x ^ k).sum::<u64>())).collect();
        parts.into_iter().map(|part| part.join().unwrap()).sum()
    });
    println!("scoped sum {sum}");
    // Reads /proc/self/cgroup for a CPU quota: absent in the cage, so it
    // counts the CPUs it may run on.
    println!("parallelism {}", std::thread::available_parallelism().unwrap());
}
"#,
    );
    let job = input_program(&binary, &[]);
    let (first, stdout) = cage(&job, dir.path());
    assert_eq!(first.verdict, Verdict::Ok, "{stdout}");
    assert!(stdout.ends_with("scoped sum 1999998000000\nparallelism 1\n"), "{stdout}");
    assert!(stdout.contains("sent [(0, "), "every thread took its turn: {stdout}");
    let (second, again) = cage(&job, dir.path());
    assert_eq!((&second.root, &again), (&first.root, &stdout));
}

/// A runtime with its own randomness: Python's string hashes, set order,
/// clock, `os.urandom` and `uuid4` are the same in two caged runs (and
/// the roots too), and differ between two native runs. Needs Debian's
/// python3 (the README's setup installs it).
#[test]
fn python_is_deterministic_in_the_cage() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        "import time, os, uuid; print(hash('a'), {1, 2, 'x', 'y'}, time.time(), os.urandom(4).hex(), uuid.uuid4())";
    let python = spec("/usr/bin/python3", &["-c", script]);
    let (first, first_out) = cage(&python, dir.path());
    assert_eq!(first.verdict, Verdict::Ok, "{first_out}");
    let (second, second_out) = cage(&python, dir.path());
    assert_eq!((&second.root, &second_out), (&first.root, &first_out));
    assert!(first_out.contains(" 946684800."), "time.time() is the logical clock: {first_out}");
    let native = || {
        let output = std::process::Command::new("/usr/bin/python3").args(["-c", script]).output().unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_ne!(native(), native(), "natively, hashes, urandom and uuid4 differ between runs");
}
