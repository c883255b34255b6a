//! `docklock-bench admit | crypto | proofs`: the ledger issue's figures.
//!
//! - `admit`: signed agreements submitted to a 3-node cluster's leader by
//!   `concurrency` workers; each is verified at the edge and again in every
//!   node's `apply`, then committed. Envelopes are signed before the timed
//!   window (signing is the client's cost, measured by `crypto`), and, in
//!   the same run, plain variable puts at the same concurrency for scale.
//! - `crypto`: sign and verify per signature, ML-DSA-65 and Dilithium3.
//! - `proofs`: inclusion and consistency proof generation on a ledger of N
//!   events in a real sled store, written through the real state machine.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use docklock_proto::agreement::{Envelope, Spec};
use docklock_proto::crypto::{Algorithm, KeyPair};
use docklock_proto::v1;
use docklock_proto::v1::agreements_client::AgreementsClient;
use docklock_proto::v1::cluster_client::ClusterClient;
use docklock_proto::v1::variables_client::VariablesClient;
use tonic::transport::Channel;

use crate::percentile;

#[derive(clap::Args, Debug)]
pub struct AdmitArgs {
    /// DockLock endpoints (the leader is found).
    #[arg(long, value_delimiter = ',')]
    docklock: Vec<String>,
    /// A submitter's key pair file (registered with role submitter).
    #[arg(long)]
    key: std::path::PathBuf,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Envelopes signed in advance (the run stops early if they run out).
    #[arg(long, default_value_t = 40_000)]
    envelopes: usize,
}

#[derive(clap::Args, Debug)]
pub struct ProofArgs {
    /// Events in the ledger.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Proofs of each kind to time.
    #[arg(long, default_value_t = 2_000)]
    samples: usize,
}

async fn leader_channel(endpoints: &[String]) -> anyhow::Result<Channel> {
    let first = endpoints.first().context("no docklock endpoint")?;
    let status = ClusterClient::connect(format!("http://{first}")).await?.status(v1::StatusRequest {}).await?;
    let leader = status.into_inner().leader_addr;
    anyhow::ensure!(!leader.is_empty(), "the cluster has no leader");
    Ok(Channel::from_shared(format!("http://{leader}"))?.tcp_nodelay(true).connect().await?)
}

struct Run {
    ops: usize,
    errors: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    first_error: Option<String>,
}

/// `workers` tasks call `op(i)` with a shared counter until the window ends.
async fn timed<F, Fut>(workers: usize, seconds: u64, op: F) -> Run
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<Result<(), tonic::Status>>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut samples, mut errors, mut first_error) = (Vec::new(), 0usize, None);
            let mut last = Instant::now();
            while Instant::now() < end {
                let started = Instant::now();
                let Some(result) = op(next.fetch_add(1, Ordering::Relaxed)).await else { break };
                last = Instant::now();
                if started >= warmup_end {
                    match result {
                        Ok(()) => samples.push(started.elapsed()),
                        Err(status) => {
                            errors += 1;
                            first_error.get_or_insert(status.to_string());
                        }
                    }
                }
            }
            (samples, errors, first_error, last)
        }));
    }
    let (mut all, mut errors, mut first_error, mut finished) = (Vec::new(), 0, None, warmup_end);
    for task in tasks {
        let (samples, task_errors, task_error, last) = task.await.expect("worker");
        all.extend(samples);
        errors += task_errors;
        first_error = first_error.or(task_error);
        finished = finished.max(last);
    }
    all.sort_unstable();
    // A run that ran out of envelopes ends early: divide by the time used.
    let seconds = finished.saturating_duration_since(warmup_end).as_secs_f64().max(0.001);
    Run { ops: all.len(), errors, seconds, p50_ms: percentile(&all, 0.5), p99_ms: percentile(&all, 0.99), first_error }
}

fn report(name: &str, run: &Run) {
    println!(
        "| {name} | {:.0} | {:.2} | {:.2} | {} |",
        run.ops as f64 / run.seconds,
        run.p50_ms,
        run.p99_ms,
        run.errors
    );
    if let Some(error) = &run.first_error {
        eprintln!("{name}: first error: {error}");
    }
}

pub async fn admit(args: AdmitArgs) -> anyhow::Result<()> {
    let key = Arc::new(KeyPair::read(&args.key)?);
    let nonce: u64 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
    eprintln!("signing {} envelopes ({}) ...", args.envelopes, key.public().algorithm());
    let signing = Instant::now();
    let envelopes: Vec<Vec<u8>> = {
        let key = key.clone();
        let count = args.envelopes;
        tokio::task::spawn_blocking(move || {
            (0..count)
                .map(|i| {
                    let yaml = format!(
                        "program: sha3-256:{}\nargs: [--part, '{i}']\nreplicas: 3\ntimeout_secs: 600\n\
                         idempotency_key: bench-{nonce}-{i}\n",
                        "ab".repeat(32)
                    );
                    let spec = Spec::from_yaml(&yaml).expect("bench spec is valid");
                    Envelope::sign(spec.canonical(), &key).canonical()
                })
                .collect()
        })
        .await?
    };
    eprintln!("signed in {:.1} s", signing.elapsed().as_secs_f64());
    let envelopes = Arc::new(envelopes);
    let channel = leader_channel(&args.docklock).await?;
    println!("| operation (c={}) | ops/s | p50 ms | p99 ms | errors |", args.concurrency);
    println!("|---|---:|---:|---:|---:|");
    let admit = {
        let (channel, envelopes) = (channel.clone(), envelopes.clone());
        timed(args.concurrency, args.seconds, move |i| {
            let mut client = AgreementsClient::new(channel.clone());
            let envelope = envelopes.get(i).cloned();
            async move {
                let envelope = envelope?;
                Some(client.submit(v1::SubmitAgreementRequest { envelope }).await.map(|_| ()))
            }
        })
        .await
    };
    report("agreement admission", &admit);
    let puts = {
        let channel = channel.clone();
        timed(args.concurrency, args.seconds, move |i| {
            let mut client = VariablesClient::new(channel.clone());
            async move {
                let request =
                    v1::PutRequest { key: format!("bench/admit/{}", i % 4096), value: vec![b'x'; 256], session: None };
                Some(client.put(request).await.map(|_| ()))
            }
        })
        .await
    };
    report("variable put (256 B), same run", &puts);
    println!(
        "\nadmission / put throughput: {:.2}x",
        (admit.ops as f64 / admit.seconds) / (puts.ops as f64 / puts.seconds)
    );
    Ok(())
}

/// Mean microseconds of `op` over `iterations`.
fn time_us(iterations: usize, mut op: impl FnMut()) -> f64 {
    let started = Instant::now();
    for _ in 0..iterations {
        op();
    }
    started.elapsed().as_secs_f64() * 1e6 / iterations as f64
}

pub fn crypto() {
    let message = Spec::from_yaml(&format!("program: sha3-256:{}\nreplicas: 3\ntimeout_secs: 60\n", "cd".repeat(32)))
        .expect("valid")
        .canonical();
    println!("| algorithm | sign µs | verify µs | public key B | signature B |");
    println!("|---|---:|---:|---:|---:|");
    for alg in Algorithm::ALL {
        let key = KeyPair::generate(alg);
        let signature = key.sign(&message);
        let iterations = 500;
        let sign = time_us(iterations, || {
            std::hint::black_box(key.sign(&message));
        });
        let verify = time_us(iterations, || {
            key.public().verify(&message, &signature).expect("verifies");
        });
        println!("| {alg} | {sign:.0} | {verify:.0} | {} | {} |", alg.public_key_bytes(), alg.signature_bytes());
    }
}

pub async fn proofs(args: ProofArgs) -> anyhow::Result<()> {
    use docklock_proto::merkle;
    use docklock_raft::store::{Store, StoreConfig};
    use docklock_raft::types::{Command, Entry, LogId, Proposal, Request};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};

    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), &StoreConfig::default())?;
    let mut machine = store.state_machine.clone();
    let filling = Instant::now();
    const PER_ENTRY: u64 = 1_000;
    let mut index = 0;
    let mut written = 0;
    while written < args.events {
        let mut entries = Vec::new();
        for _ in 0..100 {
            if written >= args.events {
                break;
            }
            index += 1;
            let count = PER_ENTRY.min(args.events - written);
            written += count;
            let requests = (0..count)
                .map(|i| Request {
                    session: None,
                    command: Command::Put { key: format!("k{}", i % 64), value: vec![1; 32] },
                })
                .collect();
            entries.push(Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(Proposal { requests }),
            });
        }
        machine.apply(entries).await?;
    }
    let view = machine.view();
    let size = view.read().registry.ledger().size();
    eprintln!("wrote {size} ledger events in {:.1} s", filling.elapsed().as_secs_f64());
    let ledger = view.ledger().clone();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut random = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let root = view.read().registry.ledger().root();
    let mut inclusion = Vec::new();
    for _ in 0..args.samples {
        let index = random(size);
        let started = Instant::now();
        let proof = merkle::inclusion_proof(&ledger, index, size)?;
        inclusion.push(started.elapsed());
        let leaf = merkle::leaf_hash(&ledger.event(index)?);
        merkle::verify_inclusion(&leaf, index, size, &proof, &root)?;
    }
    let mut consistency = Vec::new();
    for _ in 0..args.samples {
        let old = 1 + random(size - 1);
        let started = Instant::now();
        let proof = merkle::consistency_proof(&ledger, old, size)?;
        consistency.push(started.elapsed());
        let old_root = merkle::root_at(&ledger, old)?;
        merkle::verify_consistency(old, size, &old_root, &root, &proof)?;
    }
    inclusion.sort_unstable();
    consistency.sort_unstable();
    let us = |sorted: &[Duration], p: f64| percentile(sorted, p) * 1000.0;
    println!("| proof on {size} events | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|");
    for (name, sorted) in [("inclusion", &inclusion), ("consistency", &consistency)] {
        println!("| {name} | {:.1} | {:.1} | {:.1} |", us(sorted, 0.5), us(sorted, 0.99), us(sorted, 1.0));
    }
    Ok(())
}
