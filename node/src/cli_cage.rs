//! `docklock cage run` and `docklock cage inspect`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use docklock_cage::limits::Limits;
use docklock_cage::rootfs::Rootfs;
use docklock_cage::run::{run, RunSpec, Verdict};
use docklock_cage::witness::{self, Record};
use serde_json::json;

use crate::cli::{Output, UsageError};

/// `docklock cage ...`
#[derive(Subcommand, Debug)]
pub enum CageCommand {
    /// Run a program in the cage; prints the verdict and the witness root.
    Run(Box<RunArgs>),
    /// Run again what a witness log recorded and compare: prints `match`
    /// and the root, or the first record where the runs differ (exit 5).
    Replay(Box<ReplayArgs>),
    /// Serve runs for an agent on stdin (the agent starts this itself).
    #[command(hide = true)]
    Launcher,
    /// Print a witness log readably and recompute its root.
    Inspect {
        /// The witness log.
        witness: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// `docklock cage run` flags.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Root filesystem: `host` (a read-only view of the host's system
    /// directories), a rootfs tarball (what `docker export` writes) or an
    /// image (what `docker save` writes, or an OCI layout in a tar),
    /// unpacked once into the cache.
    #[arg(long, default_value = "host")]
    rootfs: String,
    /// Cache of unpacked root filesystems (default: $DOCKLOCK_CACHE_DIR,
    /// $XDG_CACHE_HOME/docklock or ~/.cache/docklock).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Seed, 64 hex characters (default: zeros).
    #[arg(long)]
    seed: Option<String>,
    /// An input: NAME=PATH, visible as /in/NAME.
    #[arg(long = "in", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// Copy the files the program writes under /out here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the witness log here.
    #[arg(long, default_value = "witness.log")]
    witness: PathBuf,
    /// A limit: NAME=VALUE (cpu-secs, wall-ms, memory-mib, processes,
    /// open-files, output-bytes, file-size-bytes).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// An environment variable for the program: KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Output format of the verdict.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
    /// Run without a cgroup (rlimits only; the witness header says so).
    #[arg(long)]
    no_cgroups: bool,
    /// The program (an absolute path inside the cage, or a name found in
    /// /usr/bin or /bin) and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `docklock cage replay` flags.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The witness log of the run to replay.
    witness: PathBuf,
    /// An input the run had: NAME=PATH (its digest must be the recorded one).
    #[arg(long = "in", value_name = "NAME=PATH")]
    inputs: Vec<String>,
    /// The root filesystem, if the run's was not `host` (its digest is
    /// compared through the header).
    #[arg(long, default_value = "host")]
    rootfs: String,
    /// Cache of unpacked root filesystems.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Write the replay's witness log here.
    #[arg(long, default_value = "replay.witness.log")]
    replay_witness: PathBuf,
}

/// The process exit code of each verdict.
pub fn verdict_exit_code(verdict: &Verdict) -> u8 {
    match verdict {
        Verdict::Ok => 0,
        Verdict::ProgramFailed { .. } => 10,
        Verdict::LimitExceeded { .. } => 11,
        Verdict::PolicyViolation { .. } => 12,
        Verdict::Refused { .. } => 13,
        Verdict::CageError { .. } => 14,
    }
}

/// A run whose verdict is not `ok`: `docklock` exits with its code.
#[derive(Debug, thiserror::Error)]
#[error("verdict: {0}")]
pub struct VerdictNotOk(pub String, pub u8);

fn pair(text: &str, what: &str) -> Result<(String, String), UsageError> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| UsageError(format!("{what} {text:?} is not NAME=VALUE")))
}

fn resolve(program: &str) -> String {
    if program.starts_with('/') {
        return program.to_owned();
    }
    ["/usr/bin", "/bin"]
        .iter()
        .map(|dir| format!("{dir}/{program}"))
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or_else(|| format!("/usr/bin/{program}"))
}

/// Run `docklock cage ...` (synchronously: a short run should not pay for
/// an async runtime, and the cage forks from the calling thread).
pub fn cage(command: CageCommand) -> anyhow::Result<()> {
    match command {
        CageCommand::Run(args) => run_command(*args),
        CageCommand::Replay(args) => replay(*args),
        CageCommand::Inspect { witness, output } => inspect(&witness, output),
        CageCommand::Launcher => Ok(docklock_cage::launcher::serve()?),
    }
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let rootfs = Rootfs::detect(&args.rootfs).map_err(|e| UsageError(format!("--rootfs: {e}")))?;
    let mut limits = Limits::default();
    for limit in &args.limits {
        limits.set(limit).map_err(UsageError)?;
    }
    let seed = match &args.seed {
        None => [0; 32],
        Some(text) => hex::decode(text)
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| UsageError("--seed must be 64 hex characters".into()))?,
    };
    let inputs = args
        .inputs
        .iter()
        .map(|input| pair(input, "--in").map(|(name, path)| (name, PathBuf::from(path))))
        .collect::<Result<_, _>>()?;
    let env = args.env.iter().map(|var| pair(var, "--env")).collect::<Result<_, _>>()?;
    let spec = RunSpec {
        program: resolve(&args.command[0]),
        args: args.command[1..].to_vec(),
        env,
        inputs,
        limits,
        seed,
        stage_parent: None,
        rootfs,
        cache: args.cache_dir.clone().unwrap_or_else(docklock_cage::run::default_cache),
        cgroups: !args.no_cgroups,
    };
    let output = args.output;
    // The program's stdout goes to ours only for text output.
    let sink: Box<dyn std::io::Write + Send> =
        if output == Output::Text { Box::new(std::io::stdout()) } else { Box::new(std::io::sink()) };
    // Its stderr goes to ours either way: JSON is on stdout.
    let outcome = run(&spec, &args.witness, args.out.as_deref(), sink, std::io::stderr())?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        eprintln!("verdict {}", outcome.verdict.describe());
        if docklock_cage::shows_host_cpu() {
            // Said where people read it: the header alone is easy to miss.
            eprintln!(
                "note: this host cannot fault CPUID, so the program saw the host CPU; the root holds only on hosts \
                 with the same CPU (machine={})",
                docklock_cage::machine_class()
            );
        }
        eprintln!("witness root {} ({} records, {})", outcome.root, outcome.records, args.witness.display());
    }
    match verdict_exit_code(&outcome.verdict) {
        0 => Ok(()),
        code => Err(VerdictNotOk(outcome.verdict.describe(), code).into()),
    }
}

fn read_witness(path: &std::path::Path) -> anyhow::Result<(Vec<Record>, [u8; 32])> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    witness::read(std::io::BufReader::new(file))
        .map_err(|e| crate::cli_audit::VerificationFailed(format!("{}: {e}", path.display())).into())
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let given: Vec<(String, String)> = args.inputs.iter().map(|input| pair(input, "--in")).collect::<Result<_, _>>()?;
    let given: Vec<(String, PathBuf)> = given.into_iter().map(|(name, path)| (name, PathBuf::from(path))).collect();
    let rootfs = Rootfs::detect(&args.rootfs).map_err(|e| UsageError(format!("--rootfs: {e}")))?;
    let cache = args.cache_dir.clone().unwrap_or_else(docklock_cage::run::default_cache);
    let (root, records, verdict) = replay_run(&args.witness, &given, rootfs, cache, &args.replay_witness)?;
    println!("match root {} ({records} records, verdict {verdict})", hex::encode(root));
    Ok(())
}

/// Run again what the witness log at `witness` recorded, with the inputs
/// `given` by name (each checked against its recorded digest), and compare
/// record by record. On a difference, prints it and fails with exit code
/// 5; on a match returns the root, the record count and the verdict.
pub fn replay_run(
    witness_path: &std::path::Path,
    given: &[(String, PathBuf)],
    rootfs: Rootfs,
    cache: PathBuf,
    replay_witness: &std::path::Path,
) -> anyhow::Result<([u8; 32], usize, String)> {
    let (recorded, root) = read_witness(witness_path)?;
    let Some(Record::Header(header)) = recorded.first() else {
        return Err(UsageError(format!("{} has no header", witness_path.display())).into());
    };
    let run_spec = docklock_cage::replay::parse_header(header).map_err(UsageError)?;
    let mut inputs = Vec::new();
    for record in &recorded {
        let Record::Input { name, digest } = record else { continue };
        let (_, path) = given
            .iter()
            .find(|(given_name, _)| given_name == name)
            .ok_or_else(|| UsageError(format!("the run had input {name:?}: pass --in {name}=PATH")))?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if witness::digest(&bytes) != *digest {
            return Err(UsageError(format!(
                "input {name:?} ({}) is not the one recorded (sha3-256:{})",
                path.display(),
                hex::encode(digest)
            ))
            .into());
        }
        inputs.push((name.clone(), path.clone()));
    }
    let spec = run_spec.spec(inputs, rootfs, cache);
    let outcome = run(&spec, replay_witness, None, std::io::sink(), std::io::sink())?;
    let (replayed, _) = read_witness(replay_witness)?;
    match docklock_cage::replay::first_difference(&recorded, &replayed) {
        None => Ok((root, recorded.len(), outcome.verdict.describe())),
        Some(index) => {
            println!("diverged at record {index}");
            if let (Some(Record::Header(was)), Some(Record::Header(is))) = (recorded.get(index), replayed.get(index)) {
                // A header is long; the lines that differ say why (another
                // cage revision, another machine class).
                let lines = |text: &str| text.lines().map(str::to_owned).collect::<std::collections::BTreeSet<_>>();
                let (was, is) = (lines(was), lines(is));
                was.difference(&is).for_each(|line| println!("  recorded: {line}"));
                is.difference(&was).for_each(|line| println!("  replayed: {line}"));
            } else {
                let show = |records: &[Record]| records.get(index).map_or_else(|| "nothing".to_owned(), summary);
                println!("  recorded: {}", show(&recorded));
                println!("  replayed: {}", show(&replayed));
            }
            Err(crate::cli_audit::VerificationFailed(format!("the replay differs at record {index}")).into())
        }
    }
}

/// What `pick` takes from each record of a witness log, in order.
fn recorded<T>(witness_path: &std::path::Path, pick: impl FnMut(Record) -> Option<T>) -> anyhow::Result<Vec<T>> {
    let (recorded, _) = read_witness(witness_path)?;
    Ok(recorded.into_iter().filter_map(pick).collect())
}

/// The inputs a witness log recorded: (name, digest).
pub fn recorded_inputs(witness_path: &std::path::Path) -> anyhow::Result<Vec<(String, [u8; 32])>> {
    recorded(witness_path, |record| match record {
        Record::Input { name, digest } => Some((name, digest)),
        _ => None,
    })
}

/// What the program wrote to stderr, as a witness log recorded it.
pub fn recorded_stderr(witness_path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let chunks = recorded(witness_path, |record| match record {
        Record::Stderr(bytes) => Some(bytes),
        _ => None,
    })?;
    Ok(chunks.concat())
}

/// One record in a line.
fn summary(record: &Record) -> String {
    match record {
        Record::Header(text) => format!("header {}", text.replace('\n', " | ")),
        Record::Input { name, digest } => format!("input {name} sha3-256:{}", hex::encode(digest)),
        Record::Stdout(bytes) => {
            format!("stdout {} bytes {:?}", bytes.len(), String::from_utf8_lossy(&bytes[..bytes.len().min(80)]))
        }
        Record::Stderr(bytes) => {
            format!("stderr {} bytes {:?}", bytes.len(), String::from_utf8_lossy(&bytes[..bytes.len().min(80)]))
        }
        Record::Output { path, size, digest } => format!("output {path} {size} bytes sha3-256:{}", hex::encode(digest)),
        Record::End(verdict) => format!("end {verdict}"),
        Record::Call { name, result, data } => format!("call {name} = {result} wrote {}", hex::encode(data)),
        Record::Read { path, digest } => format!("read {path} sha3-256:{}", hex::encode(digest)),
        Record::Process(name) => format!("process {name}"),
    }
}

fn inspect(path: &std::path::Path, output: Output) -> anyhow::Result<()> {
    let (records, root) = read_witness(path)?;
    let describe = |record: &Record| match record {
        Record::Header(text) => json!({"header": text}),
        Record::Input { name, digest } => json!({"input": name, "digest": hex::encode(digest)}),
        Record::Stdout(bytes) => json!({"stdout": String::from_utf8_lossy(bytes), "bytes": bytes.len()}),
        Record::Stderr(bytes) => json!({"stderr": String::from_utf8_lossy(bytes), "bytes": bytes.len()}),
        Record::Output { path, size, digest } => json!({"output": path, "size": size, "digest": hex::encode(digest)}),
        Record::End(verdict) => json!({"end": verdict}),
        Record::Call { name, result, data } => json!({"call": name, "result": result, "data": hex::encode(data)}),
        Record::Read { path, digest } => json!({"read": path, "digest": hex::encode(digest)}),
        Record::Process(name) => json!({"process": name}),
    };
    if output == Output::Json {
        let document = json!({"root": hex::encode(root), "records": records.iter().map(describe).collect::<Vec<_>>()});
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    for (index, record) in records.iter().enumerate() {
        match record {
            Record::Header(text) => println!(
                "{index:>5} header\n{}",
                text.lines().map(|l| format!("        {l}")).collect::<Vec<_>>().join("\n")
            ),
            other => println!("{index:>5} {}", summary(other)),
        }
    }
    println!("root {} ({} records, recomputed from the log)", hex::encode(root), records.len());
    Ok(())
}
