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
        CageCommand::Inspect { witness, output } => inspect(&witness, output),
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
    let outcome = run(&spec, &args.witness, args.out.as_deref(), sink)?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        eprintln!("verdict {}", outcome.verdict.describe());
        eprintln!("witness root {} ({} records, {})", outcome.root, outcome.records, args.witness.display());
    }
    match verdict_exit_code(&outcome.verdict) {
        0 => Ok(()),
        code => Err(VerdictNotOk(outcome.verdict.describe(), code).into()),
    }
}

fn inspect(path: &std::path::Path, output: Output) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (records, root) = witness::read(std::io::BufReader::new(file))
        .map_err(|e| crate::cli_audit::VerificationFailed(format!("{}: {e}", path.display())))?;
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
            Record::Input { name, digest } => println!("{index:>5} input  {name} sha3-256:{}", hex::encode(digest)),
            Record::Stdout(bytes) => println!("{index:>5} stdout {} bytes", bytes.len()),
            Record::Stderr(bytes) => println!("{index:>5} stderr {} bytes", bytes.len()),
            Record::Output { path, size, digest } => {
                println!("{index:>5} output {path} {size} bytes sha3-256:{}", hex::encode(digest))
            }
            Record::End(verdict) => println!("{index:>5} end    {verdict}"),
            Record::Call { name, result, data } => {
                println!("{index:>5} call   {name} = {result} wrote {}", hex::encode(data))
            }
            Record::Read { path, digest } => println!("{index:>5} read   {path} sha3-256:{}", hex::encode(digest)),
            Record::Process(name) => println!("{index:>5} process {name}"),
        }
    }
    println!("root {} ({} records, recomputed from the log)", hex::encode(root), records.len());
    Ok(())
}
