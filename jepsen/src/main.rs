//! `docklock-jepsen test ...`: run one chaos test and write its results
//! directory. Exits 0 when the history is valid, 1 when invalid, 2 when the
//! checker could not decide (unknown), 3 when the test could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use docklock_jepsen::{BackendKind, Fault, TestConfig, Verdict, Workload, ALL_FAULTS};

#[derive(Parser, Debug)]
#[command(name = "docklock-jepsen", version, about)]
enum Cli {
    /// Run a test against a fresh local cluster.
    Test(TestArgs),
    /// Remove what a killed run left behind (agent processes, the iptables
    /// chain, network namespaces, containers, their network and image).
    Clean,
}

#[derive(clap::Args, Debug)]
struct TestArgs {
    /// Workload: register, set or ledger.
    #[arg(long, default_value = "register")]
    workload: Workload,
    /// Faults, comma separated: kill, kill-leader, kill-majority, pause,
    /// pause-leader, partition-leader, partition-halves, partition-bridge,
    /// partition-ring, netem, member-replace, member-grow; the groups
    /// `partition` (every partition) and `membership` (both membership
    /// faults); `all` for every one; empty for none.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause")]
    nemesis: Vec<String>,
    /// Where the nodes run: netns (a network namespace each, on a bridge),
    /// loopback (loopback addresses; no netem) or docker (a container each).
    #[arg(long, default_value = "netns")]
    backend: BackendKind,
    /// Nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Client processes.
    #[arg(long, default_value_t = 6)]
    concurrency: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Seconds between faults.
    #[arg(long, default_value_t = 6)]
    nemesis_interval: u64,
    /// Seed of the schedule (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keys of the register workload.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Results directory (default: jepsen-results/<seed>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The docklock binary (default: next to this one).
    #[arg(long)]
    docklock_bin: Option<PathBuf>,
    /// Seconds the checker may take.
    #[arg(long, default_value_t = 60)]
    check_seconds: u64,
}

fn sibling_docklock() -> PathBuf {
    let here = std::env::current_exe().unwrap_or_default();
    here.with_file_name("docklock")
}

/// The faults named on the command line; `all` stands for every one.
fn parse_faults(names: &[String]) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    for name in names.iter().map(|name| name.trim()).filter(|name| !name.is_empty()) {
        match name {
            "all" => faults.extend(ALL_FAULTS),
            // Groups, as Jepsen names its nemesis packages.
            "partition" => faults.extend(ALL_FAULTS.iter().filter(|fault| fault.is_partition())),
            "membership" => faults.extend([Fault::MemberReplace, Fault::MemberGrow]),
            _ => faults.push(name.parse()?),
        }
    }
    // Each fault once, in the order first named.
    let mut seen = Vec::new();
    faults.retain(|fault| {
        let first = !seen.contains(fault);
        seen.push(*fault);
        first
    });
    Ok(faults)
}

fn main() -> ExitCode {
    let args = match Cli::parse() {
        Cli::Test(args) => args,
        Cli::Clean => {
            return match docklock_jepsen::leftovers::clean() {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(3)
                }
            };
        }
    };
    let faults = match parse_faults(&args.nemesis) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(3);
        }
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = TestConfig {
        workload: args.workload,
        binary: args.docklock_bin.unwrap_or_else(sibling_docklock),
        nodes: args.nodes,
        concurrency: args.concurrency,
        time_limit: Duration::from_secs(args.time_limit),
        faults,
        nemesis_interval: Duration::from_secs(args.nemesis_interval),
        seed,
        keys: args.keys,
        out_dir: args.out.unwrap_or_else(|| PathBuf::from(format!("jepsen-results/{seed}"))),
        check_budget: Duration::from_secs(args.check_seconds),
        backend: args.backend,
    };
    println!("seed {seed}; results in {}", config.out_dir.display());
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    // On Ctrl-C the run is dropped, and with it the firewall (its chain is
    // removed) and the cluster (its processes are killed).
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = docklock_jepsen::run(config) => Some(outcome),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(outcome) = outcome else {
        eprintln!("interrupted; the cluster, its network and firewall rules were removed");
        return ExitCode::from(130);
    };
    match outcome {
        Ok(results) => {
            println!("{}", serde_json::to_string_pretty(&results).unwrap_or_default());
            match results.verdict {
                Verdict::Valid => ExitCode::SUCCESS,
                Verdict::Invalid => ExitCode::from(1),
                Verdict::Unknown => ExitCode::from(2),
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(3)
        }
    }
}
