//! `docklock-bench kv`: one load generator, two systems.
//!
//! Drives a DockLock cluster (`docklock.v1.Variables`) and an etcd cluster
//! (etcd v3 gRPC through `etcd-client`) with the same worker loop, the same
//! connection count and the same value size, interleaving the two at each
//! concurrency level so that machine noise hits both alike. Requests go to
//! each system's leader. Reports throughput and p50/p99 latency per level and
//! the DockLock/etcd ratios.

mod e2e;
mod ledger;
mod scheduler;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use docklock_proto::v1::cluster_client::ClusterClient;
use docklock_proto::v1::variables_client::VariablesClient;
use docklock_proto::v1::{self, ReadConsistency};
use serde_json::json;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "docklock-bench")]
enum Cli {
    /// Puts and linearizable gets at several concurrency levels.
    Kv(KvArgs),
    /// Write N keys to a DockLock cluster (for memory measurements).
    Fill(FillArgs),
    /// Signed agreement admission throughput and latency.
    Admit(ledger::AdmitArgs),
    /// Sign and verify cost per signature, both algorithms.
    Crypto,
    /// Inclusion and consistency proof generation on a large ledger.
    Proofs(ledger::ProofArgs),
    /// Single-core SHA3-256 throughput of this machine (the crate the cage
    /// hashes with), in MB/s.
    Sha3,
    /// Start-to-exit time of caged runs from a process that stays up (as
    /// an agent runs them), in ms.
    Cage(CageArgs),
    /// Submit → verified latency and throughput of a trivial program at k = 3.
    E2e(e2e::E2eArgs),
    /// Placement rate and join/leave movement, in process.
    SchedulerRing(scheduler::RingArgs),
    /// Simulated workers against a real cluster: heartbeat cost, down
    /// detection, committed placements per second.
    SchedulerCluster(scheduler::ClusterArgs),
}

#[derive(clap::Args, Debug)]
struct CageArgs {
    /// The program (absolute path, visible in the host rootfs).
    #[arg(long)]
    program: String,
    /// Runs measured (after three warm-ups).
    #[arg(long, default_value_t = 40)]
    runs: usize,
    /// Give each run a cgroup.
    #[arg(long)]
    cgroups: bool,
}

#[derive(clap::Args, Debug)]
struct KvArgs {
    /// DockLock endpoints (any member; the leader is found; empty skips DockLock).
    #[arg(long, value_delimiter = ',')]
    docklock: Vec<String>,
    /// etcd client endpoints, http://HOST:PORT (empty skips etcd).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Concurrency levels for puts.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    put_levels: Vec<usize>,
    /// Concurrency levels for linearizable gets.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256")]
    get_levels: Vec<usize>,
    /// Measured seconds per level (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Most connections per system; workers share them round-robin.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args, Debug)]
struct FillArgs {
    /// DockLock endpoints.
    #[arg(long, value_delimiter = ',')]
    docklock: Vec<String>,
    /// Keys to write.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// The keys gets read; written before the get phases.
const GET_KEYS: usize = 1_000;
/// Keys each put worker cycles through.
const PUT_KEYS_PER_WORKER: usize = 1_000;
/// Most latency samples kept per worker (bounds memory on fast runs).
const SAMPLES_PER_WORKER_MAX: usize = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

/// One connection to one system.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // a handful per run; boxing buys nothing
enum Conn {
    DockLock(VariablesClient<Channel>),
    Etcd(etcd_client::KvClient),
}

impl Conn {
    async fn run(&mut self, op: Op, worker: &str, i: u64, value: &[u8]) -> anyhow::Result<()> {
        match (self, op) {
            (Conn::DockLock(client), Op::Put) => {
                let request = v1::PutRequest {
                    key: format!("bench/{worker}/{}", i as usize % PUT_KEYS_PER_WORKER),
                    value: value.to_vec(),
                    // The SDK's default: every write carries a session.
                    session: Some(v1::WriteSession { client_id: worker.to_owned(), serial: i }),
                };
                client.put(request).await?;
            }
            (Conn::DockLock(client), Op::Get) => {
                let request = v1::GetRequest {
                    key: format!("bench/get/{}", i as usize % GET_KEYS),
                    consistency: ReadConsistency::Linearizable as i32,
                };
                client.get(request).await?;
            }
            (Conn::Etcd(client), Op::Put) => {
                client.put(format!("bench/{worker}/{}", i as usize % PUT_KEYS_PER_WORKER), value, None).await?;
            }
            (Conn::Etcd(client), Op::Get) => {
                // etcd range requests are linearizable unless serializable is set.
                client.get(format!("bench/get/{}", i as usize % GET_KEYS), None).await?;
            }
        }
        Ok(())
    }
}

struct System {
    name: &'static str,
    conns: Vec<Conn>,
}

async fn docklock_system(endpoints: &[String], connections: usize) -> anyhow::Result<System> {
    let first = endpoints.first().context("no docklock endpoint")?;
    let status = ClusterClient::connect(format!("http://{first}")).await?.status(v1::StatusRequest {}).await?;
    let leader = status.into_inner().leader_addr;
    if leader.is_empty() {
        bail!("the docklock cluster has no leader");
    }
    let mut conns = Vec::new();
    for _ in 0..connections {
        let channel = Channel::from_shared(format!("http://{leader}"))?.tcp_nodelay(true).connect().await?;
        conns.push(Conn::DockLock(VariablesClient::new(channel)));
    }
    Ok(System { name: "docklock", conns })
}

async fn etcd_system(endpoints: &[String], connections: usize) -> anyhow::Result<System> {
    let mut probe = etcd_client::Client::connect(endpoints, None).await?;
    let leader_id = probe.status().await?.leader();
    let members = probe.member_list().await?;
    let leader = members
        .members()
        .iter()
        .find(|member| member.id() == leader_id)
        .and_then(|member| member.client_urls().first().cloned())
        .context("etcd leader has no client url")?;
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Conn::Etcd(etcd_client::Client::connect([leader.clone()], None).await?.kv_client()));
    }
    Ok(System { name: "etcd", conns })
}

#[derive(Debug, Clone)]
struct Measurement {
    system: &'static str,
    op: Op,
    concurrency: usize,
    ops: usize,
    errors: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Measurement {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank].as_secs_f64() * 1000.0
}

/// A random tag of this process: write sessions of two bench runs against one
/// cluster must not share client ids, or the second run's writes are
/// answered as retries of the first's (its serials start again at 0).
static PROCESS_NONCE: std::sync::LazyLock<u128> = std::sync::LazyLock::new(|| {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (now.as_nanos() << 32) ^ u128::from(std::process::id())
});

/// Run `op` with `concurrency` workers for warm-up plus `seconds`.
/// `run` names the measurement so that write sessions never repeat a
/// (client id, serial) pair of an earlier level.
async fn measure(
    system: &System,
    run: usize,
    op: Op,
    concurrency: usize,
    seconds: u64,
    value: Arc<Vec<u8>>,
) -> Measurement {
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut conn = system.conns[worker % system.conns.len()].clone();
        let value = value.clone();
        let worker = format!("bench-{}-{run}-{worker}", *PROCESS_NONCE);
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            let mut i = 0u64;
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                i += 1;
                let result = conn.run(op, &worker, i, &value).await;
                if started >= warmup_end && samples.len() < SAMPLES_PER_WORKER_MAX {
                    match result {
                        Ok(()) => samples.push(started.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
            }
            (samples, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (samples, task_errors) = task.await.expect("worker task");
        all.extend(samples);
        errors += task_errors;
    }
    all.sort_unstable();
    Measurement {
        system: system.name,
        op,
        concurrency,
        ops: all.len(),
        errors,
        seconds: seconds as f64,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

async fn prepare_gets(system: &System, value: &[u8]) -> anyhow::Result<()> {
    let mut conn = system.conns[0].clone();
    for i in 0..GET_KEYS {
        match &mut conn {
            Conn::DockLock(client) => {
                let request = v1::PutRequest { key: format!("bench/get/{i}"), value: value.to_vec(), session: None };
                client.put(request).await?;
            }
            Conn::Etcd(client) => {
                client.put(format!("bench/get/{i}"), value, None).await?;
            }
        }
    }
    Ok(())
}

/// The endpoints a list flag names: `--etcd ""` (or `--docklock ""`) names
/// none, as leaving the flag out does, so a script can skip a system.
fn named(endpoints: &[String]) -> Vec<String> {
    endpoints.iter().filter(|endpoint| !endpoint.is_empty()).cloned().collect()
}

async fn kv(args: KvArgs) -> anyhow::Result<()> {
    let value = Arc::new(vec![b'x'; args.value_bytes]);
    let mut systems = Vec::new();
    let docklock = named(&args.docklock);
    if !docklock.is_empty() {
        systems.push(docklock_system(&docklock, args.connections).await.context("connect to docklock")?);
    }
    let etcd = named(&args.etcd);
    if !etcd.is_empty() {
        systems.push(etcd_system(&etcd, args.connections).await.context("connect to etcd")?);
    }
    for system in &systems {
        prepare_gets(system, &value).await.with_context(|| format!("prepare {}", system.name))?;
    }
    let plan: Vec<(Op, usize)> = args
        .put_levels
        .iter()
        .map(|level| (Op::Put, *level))
        .chain(args.get_levels.iter().map(|level| (Op::Get, *level)))
        .collect();
    let mut results = Vec::new();
    for (run, (op, level)) in plan.into_iter().enumerate() {
        // Interleave: each system runs this level before the next level.
        for system in &systems {
            let measurement = measure(system, run, op, level, args.seconds, value.clone()).await;
            eprintln!(
                "{:<9} {:<4} c={:<4} {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                measurement.system,
                op.name(),
                level,
                measurement.throughput(),
                measurement.p50_ms,
                measurement.p99_ms,
                measurement.errors
            );
            results.push(measurement);
        }
    }
    print_table(&results);
    if let Some(path) = args.json {
        let rows: Vec<_> = results
            .iter()
            .map(|m| {
                json!({
                    "system": m.system, "op": m.op.name(), "concurrency": m.concurrency,
                    "ops": m.ops, "errors": m.errors, "seconds": m.seconds,
                    "throughput": m.throughput(), "p50_ms": m.p50_ms, "p99_ms": m.p99_ms,
                })
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

fn print_table(results: &[Measurement]) {
    println!("| op | clients | DockLock ops/s | etcd ops/s | ratio | DockLock p50 ms | etcd p50 ms | DockLock p99 ms | etcd p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let find = |system: &str, op: Op, level: usize| {
        results.iter().find(|m| m.system == system && m.op == op && m.concurrency == level)
    };
    let mut seen = Vec::new();
    for m in results {
        if seen.contains(&(m.op, m.concurrency)) {
            continue;
        }
        seen.push((m.op, m.concurrency));
        let (d, e) = (find("docklock", m.op, m.concurrency), find("etcd", m.op, m.concurrency));
        let cell = |m: Option<&Measurement>, f: fn(&Measurement) -> f64, digits: usize| {
            m.map_or("-".to_owned(), |m| format!("{:.*}", digits, f(m)))
        };
        let ratio = match (d, e) {
            (Some(d), Some(e)) => format!("{:.2}x", d.throughput() / e.throughput()),
            _ => "-".to_owned(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.op.name(),
            m.concurrency,
            cell(d, Measurement::throughput, 0),
            cell(e, Measurement::throughput, 0),
            ratio,
            cell(d, |m| m.p50_ms, 2),
            cell(e, |m| m.p50_ms, 2),
            cell(d, |m| m.p99_ms, 2),
            cell(e, |m| m.p99_ms, 2),
        );
    }
}

/// `request` until it is not refused `Unavailable` (no leader, or one that
/// cannot confirm its leadership), at most `tries` times, `pause` apart.
async fn retrying<T, F: std::future::Future<Output = Result<T, tonic::Status>>>(
    tries: u32,
    pause: Duration,
    mut request: impl FnMut() -> F,
) -> Result<T, tonic::Status> {
    let mut tried = 1;
    loop {
        match request().await {
            Err(status) if status.code() == tonic::Code::Unavailable && tried < tries => {
                tried += 1;
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// Tries of one fill put while the cluster has no leader, 100 ms apart.
const FILL_TRIES: u32 = 100;

async fn fill(args: FillArgs) -> anyhow::Result<()> {
    let system = docklock_system(&args.docklock, args.concurrency.min(16)).await?;
    let value = vec![b'v'; args.value_bytes];
    let per_worker = args.keys.div_ceil(args.concurrency);
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let mut conn = system.conns[worker % system.conns.len()].clone();
        let value = value.clone();
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            let Conn::DockLock(client) = &mut conn else { unreachable!("docklock system") };
            for i in worker * per_worker..((worker + 1) * per_worker).min(keys) {
                // A fresh cluster may still be electing (its first leader
                // can lose to a slower node's vote): retry that, bounded.
                // Writing the same value again is harmless.
                let put = || {
                    let (mut client, value) = (client.clone(), value.clone());
                    async move {
                        client.put(v1::PutRequest { key: format!("fill/{i:08}"), value, session: None }).await
                    }
                };
                retrying(FILL_TRIES, Duration::from_millis(100), put).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("wrote {} keys of {} bytes", args.keys, args.value_bytes);
    Ok(())
}

fn sha3_throughput() {
    use sha3::Digest as _;
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let mut total = 0usize;
    while started.elapsed() < Duration::from_secs(2) {
        std::hint::black_box(sha3::Sha3_256::digest(&chunk));
        total += chunk.len();
    }
    println!("{:.0}", total as f64 / started.elapsed().as_secs_f64() / 1e6);
}

/// Caged runs in a loop in this process: mean and min start-to-exit.
fn cage_starts(args: CageArgs) -> anyhow::Result<()> {
    use docklock_cage::run::{run, RunSpec, Verdict};
    let dir = tempfile::tempdir()?;
    let spec = RunSpec {
        program: args.program,
        args: Vec::new(),
        env: Vec::new(),
        inputs: Vec::new(),
        limits: docklock_cage::limits::Limits::default(),
        seed: [0; 32],
        stage_parent: None,
        rootfs: docklock_cage::rootfs::Rootfs::Host,
        cache: dir.path().join("cache"),
        cgroups: args.cgroups,
    };
    let witness = dir.path().join("witness.log");
    let mut times = Vec::with_capacity(args.runs);
    for index in 0..args.runs + 3 {
        // Deleting the last run's log is not part of a run (ext4 with
        // online discard here: 1-4 ms to free a file's blocks).
        let _ = std::fs::remove_file(&witness);
        let started = Instant::now();
        let outcome = run(&spec, &witness, None, std::io::sink(), std::io::sink())?;
        anyhow::ensure!(outcome.verdict == Verdict::Ok, "run {index}: {}", outcome.verdict.describe());
        if index >= 3 {
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!("{mean:.2} {min:.2}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Kv(args) => kv(args).await,
        Cli::Fill(args) => fill(args).await,
        Cli::Admit(args) => ledger::admit(args).await,
        Cli::Crypto => {
            ledger::crypto();
            Ok(())
        }
        Cli::Proofs(args) => ledger::proofs(args).await,
        Cli::Sha3 => {
            sha3_throughput();
            Ok(())
        }
        // The cage forks from the calling thread and waits for its
        // children: a blocking thread of its own.
        Cli::Cage(args) => tokio::task::spawn_blocking(move || cage_starts(args)).await?,
        Cli::SchedulerRing(args) => tokio::task::spawn_blocking(move || scheduler::ring_bench(args)).await?,
        Cli::SchedulerCluster(args) => scheduler::cluster_bench(args).await,
        Cli::E2e(args) => e2e::e2e(args).await,
    }
}
