//! `docklock-bench e2e`: submit → verified for a trivial static program at
//! k = 3 on a real cluster: latency one at a time (p50, p99) and sustained
//! throughput with concurrent submitters.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use docklock_proto::agreement::{Envelope, Spec};
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::crypto::KeyPair;
use docklock_proto::v1::agreements_client::AgreementsClient;
use docklock_proto::v1;
use futures::StreamExt;
use sha3::Digest as _;
use tonic::transport::Channel;

#[derive(clap::Args, Debug)]
pub struct E2eArgs {
    /// DockLock endpoints.
    #[arg(long, value_delimiter = ',')]
    docklock: Vec<String>,
    /// A key pair allowed to submit.
    #[arg(long)]
    key: std::path::PathBuf,
    /// The program to run (a static binary that exits 0).
    #[arg(long)]
    program: std::path::PathBuf,
    /// Agreements timed one at a time.
    #[arg(long, default_value_t = 100)]
    sequential: usize,
    /// Concurrent submitters in the throughput phase.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e3
}

/// Tries of one request while the leader cannot confirm its leadership
/// (`Unavailable`: a heartbeat round without a quorum, as on a starved
/// machine), 50 ms apart. A repeated submission that had committed is
/// refused as `AlreadyExists`, and the agreement's id is then its
/// envelope's digest.
const UNAVAILABLE_TRIES: u32 = 40;
const UNAVAILABLE_PAUSE: Duration = Duration::from_millis(50);

/// Submit one signed agreement and follow it to its verdict.
async fn one(channel: Channel, envelope: Vec<u8>) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let client = AgreementsClient::new(channel);
    let submit = || {
        let (mut client, envelope) = (client.clone(), envelope.clone());
        async move { client.submit(v1::SubmitAgreementRequest { envelope }).await }
    };
    let id = match crate::retrying(UNAVAILABLE_TRIES, UNAVAILABLE_PAUSE, submit).await {
        Ok(response) => response.into_inner().id,
        // A retried submission that had committed: its id is its digest.
        Err(status) if status.code() == tonic::Code::AlreadyExists => {
            docklock_proto::agreement::AgreementId(sha3::Sha3_256::digest(&envelope).into()).to_hex()
        }
        Err(status) => return Err(status.into()),
    };
    let watch = || {
        let (mut client, id) = (client.clone(), id.clone());
        async move { client.watch(v1::WatchAgreementRequest { id, follow: true }).await }
    };
    let mut watch = crate::retrying(UNAVAILABLE_TRIES, UNAVAILABLE_PAUSE, watch).await?.into_inner();
    while let Some(info) = watch.next().await {
        let info = info?;
        if matches!(info.status.as_str(), "verified" | "diverged" | "timed-out" | "failed") {
            return Ok((started.elapsed(), info.status));
        }
    }
    anyhow::bail!("the watch ended before a verdict")
}

/// `docklock-bench e2e`.
pub async fn e2e(args: E2eArgs) -> anyhow::Result<()> {
    let key = Arc::new(KeyPair::read(&args.key)?);
    let client = Client::new(args.docklock.clone(), ClientOptions::default())?;
    let program = client.upload_file(&args.program, |_, _| {}).await?;
    let leader = client.status().await?.leader_addr;
    let channel = Channel::from_shared(format!("http://{leader}"))?.tcp_nodelay(true).connect().await?;
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let total = args.sequential + args.seconds as usize * 400;
    eprintln!("signing {total} agreements ...");
    let envelopes: Arc<Vec<Vec<u8>>> = Arc::new({
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            (0..total)
                .map(|i| {
                    let yaml = format!(
                        "program: {program}\nreplicas: 3\ntimeout_secs: 60\nidempotency_key: e2e-{nonce}-{i}\n"
                    );
                    Envelope::sign(Spec::from_yaml(&yaml).expect("valid").canonical(), &key).canonical()
                })
                .collect()
        })
        .await?
    });
    // Warm up: the first run on each node fetches the program from a peer.
    for i in 0..3 {
        let (_, status) = one(channel.clone(), envelopes[i].clone()).await?;
        anyhow::ensure!(status == "verified", "warm-up run {i} was {status}");
    }
    let mut latencies = Vec::new();
    for i in 3..args.sequential {
        let (latency, status) = one(channel.clone(), envelopes[i].clone()).await?;
        anyhow::ensure!(status == "verified", "run {i} was {status}");
        latencies.push(latency);
    }
    latencies.sort_unstable();

    let next = Arc::new(AtomicUsize::new(args.sequential));
    let verified = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (channel, envelopes, next, verified) = (channel.clone(), envelopes.clone(), next.clone(), verified.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(envelope) = envelopes.get(i).cloned() else { break };
                let (_, status) = one(channel.clone(), envelope).await?;
                anyhow::ensure!(status == "verified", "run {i} was {status}");
                verified.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await?.context("a submitter failed")?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| submit → verified, p50 (one at a time, {} runs) | {:.1} ms |", latencies.len(), percentile(&latencies, 0.5));
    println!("| submit → verified, p99 | {:.1} ms |", percentile(&latencies, 0.99));
    println!(
        "| verified agreements per second ({} submitters, {:.0} s) | {:.1} |",
        args.concurrency,
        elapsed,
        verified.load(Ordering::Relaxed) as f64 / elapsed
    );
    Ok(())
}
