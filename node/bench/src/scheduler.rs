//! `docklock-bench scheduler`: the scheduler at scale.
//!
//! `ring`: in-process, no network. The pure placement walk's rate, the
//! registry's placement rate inside `apply` (walk, record, ledger event), and
//! the share of replicas that move when one node joins or leaves.
//!
//! `cluster`: a real cluster on loopback. Registers simulated workers through
//! the public gRPC API (admin-authorised keys, claims, signed registrations),
//! heartbeats them at the interval the leader asks for, and measures the
//! leader's CPU, how fast a silent worker is marked down, and how many
//! placements per second are committed when placement resumes after a pause.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use docklock_proto::agreement::{Constraints, Envelope, Spec};
use docklock_proto::crypto::{Algorithm, KeyPair};
use docklock_proto::identity::{ChangeKind, IdentityChange, NodeKeyClaim, Role};
use docklock_proto::node::{Capacity, NodeRegistration, NodeType};
use docklock_proto::v1::agreements_client::AgreementsClient;
use docklock_proto::v1::cluster_client::ClusterClient;
use docklock_proto::v1::identities_client::IdentitiesClient;
use docklock_proto::v1::nodes_client::NodesClient;
use docklock_proto::v1;
use docklock_raft::nodes::{RECONCILE_BATCH, VNODES_PER_CORE};
use docklock_raft::registry::Registry;
use docklock_raft::types::{Command, Outcome, Request};
use docklock_scheduler::placement::{place, Candidate, Request as PlaceRequest};
use docklock_scheduler::ring::{self, Ring};
use tonic::transport::Channel;

#[derive(clap::Args, Debug)]
pub struct RingArgs {
    /// Worker counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    workers: Vec<u64>,
    /// Agreements placed per measurement.
    #[arg(long, default_value_t = 100_000)]
    agreements: u64,
    /// Replicas per agreement.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Zones the workers spread over.
    #[arg(long, default_value_t = 10)]
    zones: u64,
}

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// DockLock endpoints of the voters.
    #[arg(long, value_delimiter = ',')]
    docklock: Vec<String>,
    /// Voter process ids, ID=PID, to read the leader's CPU time.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<String>,
    /// The admin's key pair file.
    #[arg(long)]
    admin_key: std::path::PathBuf,
    /// Worker counts to step through (placement is measured at each).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    workers: Vec<u64>,
    /// Agreements placed at each step.
    #[arg(long, default_value_t = 20_000)]
    agreements: usize,
    /// Seconds of steady heartbeating over which the leader's CPU is measured.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Zones the simulated workers spread over.
    #[arg(long, default_value_t = 10)]
    zones: u64,
}

/// A simulated worker's first id: clear of the voters' ids.
const FIRST_WORKER: u64 = 1_000;
/// Concurrent requests while registering and submitting.
const CONCURRENCY: usize = 64;

fn capacity() -> Capacity {
    Capacity { cpu_millis: 2_000, memory_mib: 8_192, features: BTreeSet::new() }
}

/// Agreement ids stand-ins: SHA3 of the index, as ids are SHA3 digests.
fn key_of(i: u64) -> u64 {
    use sha3::{Digest, Sha3_256};
    let digest: [u8; 32] = Sha3_256::digest(i.to_be_bytes()).into();
    ring::key_point(&digest)
}

struct PureCluster {
    ring: Ring,
    zones: BTreeMap<u64, String>,
    labels: BTreeMap<String, String>,
    capacity: Capacity,
}

impl PureCluster {
    fn new(workers: u64, zones: u64) -> Self {
        let mut cluster =
            Self { ring: Ring::new(), zones: BTreeMap::new(), labels: BTreeMap::new(), capacity: capacity() };
        for id in 0..workers {
            cluster.add(FIRST_WORKER + id, zones);
        }
        cluster
    }

    fn add(&mut self, id: u64, zones: u64) {
        let zone = format!("zone-{}", id % zones);
        self.ring.insert(id, ring::vnodes_for(VNODES_PER_CORE, self.capacity.cpu_millis), &zone);
        self.zones.insert(id, zone);
    }

    fn remove(&mut self, id: u64) {
        self.ring.remove(id);
        self.zones.remove(&id);
    }

    fn place(&self, key: u64, replicas: u32) -> Vec<u64> {
        let constraints = Constraints::default();
        let avoid = BTreeSet::new();
        let request = PlaceRequest { key, replicas, constraints: &constraints, memory_mib: 512, keep: &[], avoid: &avoid };
        place(&self.ring, &request, |id| {
            self.zones.get(&id).map(|zone| Candidate {
                ready: true,
                draining: false,
                node_type: NodeType::Compute,
                zone,
                labels: &self.labels,
                capacity: &self.capacity,
            })
        })
        .nodes
    }
}

fn moved_share(before: &[Vec<u64>], after: &[Vec<u64>]) -> f64 {
    let moved: usize = before.iter().zip(after).map(|(old, new)| new.iter().filter(|n| !old.contains(n)).count()).sum();
    let total: usize = before.iter().map(Vec::len).sum();
    moved as f64 / total as f64
}

/// An in-process registry with `workers` registered workers and an admin.
fn registry_with_workers(workers: u64, zones: u64) -> (Registry, KeyPair) {
    let mut registry = Registry::default();
    registry.apply_membership(1, vec![1, 2, 3], vec![]);
    let admin = KeyPair::generate(Algorithm::MlDsa65);
    let apply = |registry: &mut Registry, command| registry.apply(&Request { session: None, command }, 1).outcome;
    apply(&mut registry, Command::Bootstrap { cluster_id: "bench".into(), admin: Some(admin.public().clone()) });
    for index in 0..workers {
        let id = FIRST_WORKER + index;
        let key = KeyPair::generate(Algorithm::MlDsa65);
        let change = IdentityChange {
            cluster_id: "bench".into(),
            epoch: registry.identity_epoch(),
            kind: ChangeKind::Add { key: key.public().clone(), role: Role::Node },
        };
        apply(&mut registry, Command::ChangeIdentity { envelope: Envelope::sign(change.canonical(), &admin).canonical() });
        let claim = NodeKeyClaim { cluster_id: "bench".into(), node_id: id };
        apply(&mut registry, Command::RegisterNode { envelope: Envelope::sign(claim.canonical(), &key).canonical() });
        let registration = simulated_registration("bench", id, zones, b"token");
        let outcome =
            apply(&mut registry, Command::RegisterWorker { envelope: Envelope::sign(registration.canonical(), &key).canonical() });
        assert!(matches!(outcome, Outcome::NodeChanged { .. }), "{outcome:?}");
    }
    (registry, admin)
}

fn simulated_registration(cluster_id: &str, id: u64, zones: u64, token: &[u8]) -> NodeRegistration {
    NodeRegistration {
        cluster_id: cluster_id.to_owned(),
        node_id: id,
        address: format!("10.{}.{}.{}:7000", (id >> 16) & 255, (id >> 8) & 255, id & 255),
        node_type: NodeType::Compute,
        zone: format!("zone-{}", id % zones),
        labels: BTreeMap::new(),
        capacity: capacity(),
        heartbeat_digest: NodeRegistration::token_digest(token),
    }
}

fn bench_spec(tag: &str, i: usize) -> Spec {
    let yaml = format!(
        "program: sha3-256:{}\nreplicas: 3\ntimeout_secs: 600\nidempotency_key: {tag}-{i}\n",
        "cd".repeat(32)
    );
    Spec::from_yaml(&yaml).expect("bench spec is valid")
}

/// `docklock-bench scheduler ring`.
pub fn ring_bench(args: RingArgs) -> anyhow::Result<()> {
    println!("| workers | pure walk placements/s (k={}) | registry apply placements/s | join: moved share (expected 1/(n+1)) | leave: moved share (expected 1/n) | leave: only its replicas moved |", args.replicas);
    println!("|---:|---:|---:|---:|---:|---|");
    for &workers in &args.workers {
        let mut cluster = PureCluster::new(workers, args.zones);
        let keys: Vec<u64> = (0..args.agreements).map(key_of).collect();
        let started = Instant::now();
        let before: Vec<Vec<u64>> = keys.iter().map(|&key| cluster.place(key, args.replicas)).collect();
        let pure_rate = keys.len() as f64 / started.elapsed().as_secs_f64();
        anyhow::ensure!(before.iter().all(|nodes| nodes.len() == args.replicas as usize), "short placement");

        let joined = FIRST_WORKER + workers;
        cluster.add(joined, args.zones);
        let after_join: Vec<Vec<u64>> = keys.iter().map(|&key| cluster.place(key, args.replicas)).collect();
        let join_share = moved_share(&before, &after_join);
        cluster.remove(joined);

        let leaving = FIRST_WORKER + workers / 2;
        cluster.remove(leaving);
        let after_leave: Vec<Vec<u64>> = keys.iter().map(|&key| cluster.place(key, args.replicas)).collect();
        let leave_share = moved_share(&before, &after_leave);
        let only_its = before.iter().zip(&after_leave).all(|(old, new)| old.contains(&leaving) || old == new);

        // The registry's own path: admitted while paused, then placed by
        // Reconcile entries (walk, records, ledger events) without Raft.
        let placed = args.agreements.min(50_000) as usize;
        let (mut registry, admin) = registry_with_workers(workers, args.zones);
        let apply = |registry: &mut Registry, command| registry.apply(&Request { session: None, command }, 2).outcome;
        apply(&mut registry, Command::SetScheduling { paused: true });
        for i in 0..placed {
            let envelope = Envelope::sign(bench_spec("ring", i).canonical(), &admin).canonical();
            let outcome = apply(&mut registry, Command::SubmitAgreement { envelope });
            anyhow::ensure!(matches!(outcome, Outcome::Admitted { .. }), "{outcome:?}");
        }
        apply(&mut registry, Command::SetScheduling { paused: false });
        let started = Instant::now();
        while registry.reconcile_due() {
            apply(&mut registry, Command::Reconcile);
            registry.seal_entry();
        }
        let apply_rate = placed as f64 / started.elapsed().as_secs_f64();
        anyhow::ensure!(registry.unsettled_count() == 0, "{} left unplaced", registry.unsettled_count());

        println!(
            "| {workers} | {pure_rate:.0} | {apply_rate:.0} | {join_share:.5} ({:.5}) | {leave_share:.5} ({:.5}) | {} |",
            1.0 / (workers + 1) as f64,
            1.0 / workers as f64,
            if only_its { "yes" } else { "NO" }
        );
    }
    eprintln!("(registry apply: {RECONCILE_BATCH} placements per Reconcile entry, one node's apply, no Raft)");
    Ok(())
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks_per_second()?)
}

fn clock_ticks_per_second() -> anyhow::Result<f64> {
    let output = std::process::Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect().await?)
}

async fn leader(endpoints: &[String]) -> anyhow::Result<(u64, String)> {
    let first = endpoints.first().context("no endpoint")?;
    let status = ClusterClient::new(connect(first).await?).status(v1::StatusRequest {}).await?.into_inner();
    anyhow::ensure!(!status.leader_addr.is_empty(), "no leader");
    Ok((status.leader_id.context("no leader id")?, status.leader_addr))
}

/// A simulated worker: its key and heartbeat token.
struct Simulated {
    id: u64,
    key: KeyPair,
    token: [u8; 32],
}

/// Run `op` on every item with `CONCURRENCY` in flight; fail on the first error.
async fn concurrently<T, F, Fut>(items: Vec<T>, op: F) -> anyhow::Result<()>
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    use futures::StreamExt;
    let op = Arc::new(op);
    let mut results = futures::stream::iter(items.into_iter().map(|item| {
        let op = op.clone();
        async move { op(item).await }
    }))
    .buffer_unordered(CONCURRENCY);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(())
}

async fn register_workers(
    channel: &Channel,
    admin: &KeyPair,
    cluster_id: &str,
    range: std::ops::Range<u64>,
    zones: u64,
) -> anyhow::Result<Vec<Arc<Simulated>>> {
    let started = Instant::now();
    let workers: Vec<Arc<Simulated>> = range
        .map(|id| Arc::new(Simulated { id, key: KeyPair::generate(Algorithm::MlDsa65), token: rand_token(id) }))
        .collect();
    // Admin authorisations are ordered by the identity epoch: one at a time.
    let mut identities = IdentitiesClient::new(channel.clone());
    let mut epoch = identities.list(v1::ListIdentitiesRequest {}).await?.into_inner().epoch;
    for worker in &workers {
        let change = IdentityChange {
            cluster_id: cluster_id.to_owned(),
            epoch,
            kind: ChangeKind::Add { key: worker.key.public().clone(), role: Role::Node },
        };
        let request = v1::ChangeIdentityRequest { envelope: Envelope::sign(change.canonical(), admin).canonical() };
        epoch = identities.change(request).await?.into_inner().epoch;
    }
    let authorised = started.elapsed();
    let cluster = cluster_id.to_owned();
    let channel_for_claims = channel.clone();
    concurrently(workers.clone(), move |worker| {
        let mut client = IdentitiesClient::new(channel_for_claims.clone());
        let claim = NodeKeyClaim { cluster_id: cluster.clone(), node_id: worker.id };
        let envelope = Envelope::sign(claim.canonical(), &worker.key).canonical();
        async move {
            client.register_node(v1::RegisterNodeRequest { envelope }).await?;
            Ok(())
        }
    })
    .await?;
    let cluster = cluster_id.to_owned();
    let channel_for_registrations = channel.clone();
    concurrently(workers.clone(), move |worker| {
        let mut client = NodesClient::new(channel_for_registrations.clone());
        let registration = simulated_registration(&cluster, worker.id, zones, &worker.token);
        let envelope = Envelope::sign(registration.canonical(), &worker.key).canonical();
        async move {
            client.register(v1::RegisterWorkerRequest { envelope }).await?;
            Ok(())
        }
    })
    .await?;
    eprintln!(
        "registered {} workers in {:.1} s (admin authorisations, one epoch each: {:.1} s)",
        workers.len(),
        started.elapsed().as_secs_f64(),
        authorised.as_secs_f64()
    );
    Ok(workers)
}

fn rand_token(id: u64) -> [u8; 32] {
    use sha3::{Digest, Sha3_256};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Sha3_256::digest(format!("{id}/{nanos}")).into()
}

/// Heartbeat counters shared by the simulated workers.
#[derive(Default)]
struct Beats {
    sent: AtomicU64,
    failed: AtomicU64,
    interval_ms: AtomicU64,
}

/// Start heartbeating `worker` until `stop` (or its own `silenced` flag).
fn heartbeat(channel: Channel, worker: Arc<Simulated>, beats: Arc<Beats>, stop: Arc<AtomicBool>, silenced: Arc<AtomicBool>, last: Arc<AtomicU64>, origin: Instant) {
    tokio::spawn(async move {
        let mut client = NodesClient::new(channel);
        // Spread the first beats over one interval.
        let interval = beats.interval_ms.load(Ordering::Relaxed).max(100);
        tokio::time::sleep(Duration::from_millis(worker.id * 7919 % interval)).await;
        while !stop.load(Ordering::Relaxed) && !silenced.load(Ordering::Relaxed) {
            let request = v1::HeartbeatRequest { node_id: worker.id, token: worker.token.to_vec() };
            match client.heartbeat(request).await {
                Ok(response) => {
                    beats.sent.fetch_add(1, Ordering::Relaxed);
                    last.store(origin.elapsed().as_millis() as u64, Ordering::Relaxed);
                    beats.interval_ms.store(response.into_inner().interval_ms, Ordering::Relaxed);
                }
                Err(_) => {
                    beats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            tokio::time::sleep(Duration::from_millis(beats.interval_ms.load(Ordering::Relaxed).max(100))).await;
        }
    });
}

async fn counts(channel: &Channel) -> anyhow::Result<v1::ListNodesResponse> {
    Ok(NodesClient::new(channel.clone()).list(v1::ListNodesRequest { counts_only: true }).await?.into_inner())
}

/// Submit `count` agreements while placement is paused, resume, and time
/// until every one is placed: placements committed per second.
async fn placement_throughput(channel: &Channel, admin: &Arc<KeyPair>, tag: &str, count: usize) -> anyhow::Result<(f64, f64)> {
    let mut nodes = NodesClient::new(channel.clone());
    nodes.set_scheduling(v1::SetSchedulingRequest { paused: true }).await?;
    let envelopes: Vec<Vec<u8>> = {
        let (admin, tag) = (admin.clone(), tag.to_owned());
        tokio::task::spawn_blocking(move || {
            (0..count).map(|i| Envelope::sign(bench_spec(&tag, i).canonical(), &admin).canonical()).collect()
        })
        .await?
    };
    let submitting = Instant::now();
    let channel_for_submit = channel.clone();
    concurrently(envelopes, move |envelope| {
        let mut client = AgreementsClient::new(channel_for_submit.clone());
        async move {
            client.submit(v1::SubmitAgreementRequest { envelope }).await?;
            Ok(())
        }
    })
    .await?;
    let admit_rate = count as f64 / submitting.elapsed().as_secs_f64();
    let started = Instant::now();
    let resumed = nodes.set_scheduling(v1::SetSchedulingRequest { paused: false }).await?.into_inner();
    anyhow::ensure!(resumed.unsettled as usize >= count, "only {} waiting", resumed.unsettled);
    loop {
        let waiting = counts(channel).await?.unsettled;
        if waiting == 0 {
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "{waiting} still unplaced after 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((count as f64 / started.elapsed().as_secs_f64(), admit_rate))
}

/// `docklock-bench scheduler cluster`.
pub async fn cluster_bench(args: ClusterArgs) -> anyhow::Result<()> {
    let pids: BTreeMap<u64, u32> = args
        .pids
        .iter()
        .map(|pair| {
            let (id, pid) = pair.split_once('=').context("--pids takes ID=PID")?;
            Ok((id.parse()?, pid.parse()?))
        })
        .collect::<anyhow::Result<_>>()?;
    let admin = Arc::new(KeyPair::read(&args.admin_key)?);
    let (leader_id, leader_addr) = leader(&args.docklock).await?;
    let leader_pid = *pids.get(&leader_id).context("no pid for the leader")?;
    let channel = connect(&leader_addr).await?;
    let cluster_id = IdentitiesClient::new(channel.clone()).list(v1::ListIdentitiesRequest {}).await?.into_inner().cluster_id;

    // Idle baseline: the leader with no workers heartbeating.
    let before = cpu_seconds(leader_pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = (cpu_seconds(leader_pid)? - before) / 5.0;

    let origin = Instant::now();
    let beats = Arc::new(Beats::default());
    beats.interval_ms.store(1_000, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let channels: Vec<Channel> = {
        let mut channels = Vec::new();
        for _ in 0..8 {
            channels.push(connect(&leader_addr).await?);
        }
        channels
    };
    let mut all: Vec<(Arc<Simulated>, Arc<AtomicBool>, Arc<AtomicU64>)> = Vec::new();
    let mut registered = 0u64;
    println!("| workers | heartbeat interval ms | TTL ms | heartbeats/s received | leader CPU % of one core (idle {:.1}%) | silent worker marked down after (TTL + ...) | agreements placed & committed /s (k=3) | admissions/s while paused |", idle * 100.0);
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &target in &args.workers {
        let range = FIRST_WORKER + registered..FIRST_WORKER + target;
        let fresh = register_workers(&channel, &admin, &cluster_id, range, args.zones).await?;
        for worker in fresh {
            let (silenced, last) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
            let lane = channels[worker.id as usize % channels.len()].clone();
            heartbeat(lane, worker.clone(), beats.clone(), stop.clone(), silenced.clone(), last.clone(), origin);
            all.push((worker, silenced, last));
        }
        registered = target;
        let timing = counts(&channel).await?;
        // Settle for one interval at the new size, then measure.
        tokio::time::sleep(Duration::from_millis(timing.interval_ms + 500)).await;
        let (cpu_before, sent_before, window) = (cpu_seconds(leader_pid)?, beats.sent.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let elapsed = window.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(leader_pid)? - cpu_before) / elapsed;
        let rate = (beats.sent.load(Ordering::Relaxed) - sent_before) as f64 / elapsed;
        let listed = counts(&channel).await?;
        anyhow::ensure!(beats.failed.load(Ordering::Relaxed) == 0, "{} heartbeats failed", beats.failed.load(Ordering::Relaxed));

        // One worker goes silent: time from its last heartbeat to `down`.
        let (victim, silenced, last) = all.iter().find(|(w, s, _)| w.id % 97 == 13 && !s.load(Ordering::Relaxed)).context("a victim")?;
        silenced.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let last_beat = last.load(Ordering::Relaxed);
        let down_after = loop {
            let nodes = NodesClient::new(channel.clone()).list(v1::ListNodesRequest { counts_only: false }).await?.into_inner();
            if nodes.nodes.iter().any(|n| n.id == victim.id && n.status == "down") {
                break origin.elapsed().as_millis() as u64 - last_beat;
            }
            anyhow::ensure!(origin.elapsed().as_millis() as u64 - last_beat < listed.ttl_ms * 4, "worker {} never marked down", victim.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };

        let (placed_rate, admit_rate) = placement_throughput(&channel, &admin, &format!("w{target}"), args.agreements).await?;
        println!(
            "| {target} | {} | {} | {rate:.0} | {:.1} | {} ms (TTL + {} ms) | {placed_rate:.0} | {admit_rate:.0} |",
            listed.interval_ms,
            listed.ttl_ms,
            cpu * 100.0,
            down_after,
            down_after as i64 - listed.ttl_ms as i64
        );
    }
    stop.store(true, Ordering::Relaxed);
    Ok(())
}
