//! The executor: runs this node's placed replicas in the cage and reports
//! them.
//!
//! Every tick it looks, in its own replica of the registry, for agreements
//! where this node holds a live replica it has not revealed yet. For each
//! one (at most `RUNS_IN_FLIGHT` at a time): fetch the program and inputs
//! (from this node's store or a peer, digest-checked), run the cage with the
//! agreement's spec and seed, store stdout, the witness log and outputs as
//! artifacts, remember the result on disk, commit to the witness root, and
//! reveal it once every replica has committed. A restarted node finds the
//! remembered result and resumes at the report it had not made: no run is
//! lost and none is reported twice for one attempt.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use docklock_cage::limits::{Limit, Limits};
use docklock_cage::rootfs::Rootfs;
use docklock_cage::run::{RunSpec, Verdict};
use docklock_proto::agreement::{AgreementId, Digest, Envelope, Spec, Workload};
use docklock_proto::client::{ChannelCache, Client};
use docklock_proto::ledger::{Event, EventBody};
use docklock_proto::node::NodeStatus;
use docklock_proto::report::{commitment, Hash, Phase, Revealed, RunReport};
use docklock_proto::v1::{self, agreements_client::AgreementsClient, nodes_client::NodesClient};
use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};
use tonic::Code;

use crate::api::NodeContext;
use crate::artifacts::ArtifactStore;
use crate::worker::WorkerIdentity;

/// Runs this node executes at once (the machine has two cores).
const RUNS_IN_FLIGHT: usize = 2;
/// How often the executor looks for work.
const TICK: Duration = Duration::from_millis(100);
/// Name of the program among the cage's inputs.
pub const PROGRAM_INPUT: &str = ".docklock-program";

/// A run stopped because its replica stopped being this node's.
#[derive(Debug, thiserror::Error)]
#[error("the run was stopped: the replica is no longer this node's")]
struct Cancelled;

/// Set `cancel` once `job` is no longer among the view's jobs; checked every
/// tick, not at every applied entry: a busy registry changes far more often
/// than a run needs to notice.
async fn watch_replica(view: Arc<dyn RegistryView>, job: (AgreementId, u64), cancel: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(TICK).await;
        if view.jobs().await.is_ok_and(|jobs| !jobs.contains(&job)) {
            cancel.store(true, Ordering::Relaxed);
            return;
        }
    }
}

/// A run that yields no result to agree on, reported as a failure and not
/// retried: it cannot start for a reason every node would meet too (the
/// spec asks for something the cage refuses), or a host-dependent limit
/// (wall-clock or CPU time) cut it short, so where it stopped, and so its
/// witness root, says more about this host than about the program.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoResult(pub String);

/// What a finished run left, remembered on disk until it is revealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunResult {
    root: String,
    nonce: String,
    verdict: String,
    stdout: Digest,
    witness: Digest,
    outputs: BTreeMap<String, Digest>,
}

impl RunResult {
    fn revealed(&self) -> anyhow::Result<Revealed> {
        Ok(Revealed {
            root: parse_hash(&self.root)?,
            nonce: parse_hash(&self.nonce)?,
            verdict: self.verdict.clone(),
            stdout: self.stdout,
            witness: self.witness,
            outputs: self.outputs.clone(),
        })
    }
}

fn parse_hash(text: &str) -> anyhow::Result<Hash> {
    let bytes = hex::decode(text)?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("not 32 bytes"))
}

/// The seed of an agreement's run: the spec's, else derived from its id.
pub fn seed_of(id: &AgreementId, spec: &Spec) -> [u8; 32] {
    spec.seed.unwrap_or_else(|| {
        let mut hasher = Sha3_256::new();
        hasher.update(b"docklock-seed-v1\0");
        hasher.update(id.0);
        hasher.finalize().into()
    })
}

/// The nonce of this node's commitment for one attempt: derived from its
/// key, so no other node can guess it, and the same on every computation,
/// so a run repeated after a crash (its remembered result lost with the
/// page cache, its commitment already in the log) reveals a nonce that
/// still matches what it committed.
fn run_nonce(identity: &WorkerIdentity, id: &AgreementId, attempt: u64) -> [u8; 32] {
    let mut context = b"docklock run nonce v1\0".to_vec();
    context.extend_from_slice(&id.0);
    context.extend_from_slice(&attempt.to_le_bytes());
    identity.key.derive_secret(&context)
}

/// A test-only fault: in debug builds, `DOCKLOCK_TEST_FAULT_SEED=1` makes
/// this node run with another seed, so its witness root differs from its
/// peers' (the divergence test uses it). Release builds have no such knob.
fn test_fault_seed(seed: [u8; 32]) -> [u8; 32] {
    #[cfg(debug_assertions)]
    if std::env::var_os("DOCKLOCK_TEST_FAULT_SEED").is_some() {
        let mut perturbed = seed;
        perturbed[0] ^= 1;
        return perturbed;
    }
    seed
}

/// The cage limits of a spec.
pub fn cage_limits(spec: &Spec) -> Limits {
    let limits = &spec.limits;
    Limits {
        cpu_secs: limits.cpu_ms.div_ceil(1000).max(1),
        wall_ms: limits.wall_ms,
        memory_mib: limits.memory_mib,
        processes: limits.processes,
        open_files: limits.open_files,
        output_bytes: limits.output_bytes,
        file_size_bytes: limits.file_size_bytes,
        out_bytes: limits.output_bytes,
        ..Limits::default()
    }
}

/// What the executor needs from the registry: read from this node's own
/// replica ([`LocalView`]) or, on a worker-only node, through the public
/// API ([`RemoteView`]).
#[tonic::async_trait]
pub trait RegistryView: Send + Sync {
    /// This node's replicas that are placed or running and not revealed:
    /// (agreement, attempt).
    async fn jobs(&self) -> anyhow::Result<Vec<(AgreementId, u64)>>;
    /// The spec as admitted.
    async fn spec(&self, id: &AgreementId) -> anyhow::Result<Spec>;
    /// Peers to fetch artifacts from: every ready worker but this one.
    async fn peers(&self) -> Vec<(u64, String)>;
    /// Whether every replica of `id` has committed, as far as this view
    /// can tell (a view that cannot tell says yes: the reveal is then
    /// refused until it is so).
    async fn all_committed(&self, id: &AgreementId) -> bool;
    /// Until the registry may have changed since this `waiter` last looked
    /// (at once if it has already). Each waiter keeps its own state, so no
    /// waiter misses a change another one consumed.
    async fn changed(&self, waiter: &mut Waiter);
    /// Whether the node is shutting down.
    fn stopping(&self) -> bool;
}

/// What one waiter of [`RegistryView::changed`] has seen.
#[derive(Default)]
pub struct Waiter(Option<tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, docklock_raft::types::Node>>>);

/// The registry as this node's replica holds it.
pub struct LocalView {
    node: Arc<NodeContext>,
}

impl LocalView {
    /// A view of `node`'s replica.
    pub fn new(node: Arc<NodeContext>) -> Arc<Self> {
        Arc::new(Self { node })
    }
}

#[tonic::async_trait]
impl RegistryView for LocalView {
    async fn jobs(&self) -> anyhow::Result<Vec<(AgreementId, u64)>> {
        let applied = self.node.state.read();
        let replicas = applied.registry.open_replicas(self.node.id);
        Ok(replicas.into_iter().filter(|(_, _, revealed)| !revealed).map(|(id, attempt, _)| (id, attempt)).collect())
    }

    async fn spec(&self, id: &AgreementId) -> anyhow::Result<Spec> {
        let index = self.node.state.read().registry.agreement(id).context("agreement gone")?.event_index;
        let bytes = self.node.state.ledger().event(index)?;
        let EventBody::AgreementAdmitted { envelope, .. } = Event::decode(&bytes)?.body else {
            bail!("ledger event {index} is not the admission of {id}");
        };
        Ok(Spec::decode(&Envelope::decode(&envelope)?.message)?)
    }

    async fn peers(&self) -> Vec<(u64, String)> {
        let applied = self.node.state.read();
        applied
            .registry
            .nodes()
            .filter(|(id, record)| **id != self.node.id && record.status == NodeStatus::Ready)
            .map(|(id, record)| (*id, record.registration.address.clone()))
            .collect()
    }

    async fn all_committed(&self, id: &AgreementId) -> bool {
        // Gone means concluded or moved: the caller finds that out next.
        self.node.state.read().registry.agreement(id).is_none_or(|record| record.all_committed())
    }

    async fn changed(&self, waiter: &mut Waiter) {
        // Raft's metrics change with every applied entry (and more often);
        // a waiter's own receiver remembers what it has seen.
        let metrics = waiter.0.get_or_insert_with(|| self.node.raft.metrics());
        tokio::select! {
            _ = metrics.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }

    fn stopping(&self) -> bool {
        self.node.raft.metrics().borrow().state == openraft::ServerState::Shutdown
    }
}

/// The registry through the public API, for a worker-only node: polled.
pub struct RemoteView {
    client: Client,
    node: u64,
    stopping: std::sync::atomic::AtomicBool,
}

impl RemoteView {
    /// A view for worker `node` through `client`.
    pub fn new(client: Client, node: u64) -> Arc<Self> {
        Arc::new(Self { client, node, stopping: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Stop the executor using this view.
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl RegistryView for RemoteView {
    async fn jobs(&self) -> anyhow::Result<Vec<(AgreementId, u64)>> {
        let request = v1::AssignmentsRequest { node_id: self.node };
        let response =
            self.client.call(|channel| async move { NodesClient::new(channel).assignments(request).await }).await?;
        response
            .assignments
            .into_iter()
            .filter(|assignment| !assignment.revealed)
            .map(|assignment| {
                Ok((AgreementId::from_hex(&assignment.agreement_id).map_err(anyhow::Error::msg)?, assignment.attempt))
            })
            .collect()
    }

    async fn spec(&self, id: &AgreementId) -> anyhow::Result<Spec> {
        let info = self.client.get_agreement(id).await?;
        Ok(Spec::decode(&Envelope::decode(&info.envelope)?.message)?)
    }

    async fn peers(&self) -> Vec<(u64, String)> {
        self.client
            .list_nodes()
            .await
            .map(|list| {
                list.nodes
                    .into_iter()
                    .filter(|node| node.id != self.node && node.status == "ready")
                    .map(|node| (node.id, node.address))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn all_committed(&self, _id: &AgreementId) -> bool {
        true
    }

    async fn changed(&self, _waiter: &mut Waiter) {
        tokio::time::sleep(REMOTE_POLL).await;
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// How often a worker-only node asks for its assignments.
const REMOTE_POLL: Duration = Duration::from_millis(200);
/// How often the directories of finished runs are collected.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a finished run's directory (its `result.json`, and the files
/// the store already held) stays after it last changed: long enough that
/// a view which has not applied the reveal yet finds the result again
/// rather than running the replica a second time.
const RUN_DIR_GRACE: Duration = Duration::from_secs(600);
/// Most run directories one sweep removes, so a node that comes back to a
/// large backlog spreads the work.
const SWEEP_MAX: usize = 10_000;

/// The executor of one node.
pub struct Executor {
    view: Arc<dyn RegistryView>,
    identity: WorkerIdentity,
    store: Arc<ArtifactStore>,
    runs_dir: PathBuf,
    cache_dir: PathBuf,
    client: Client,
    channels: ChannelCache,
    in_flight: Mutex<BTreeSet<(AgreementId, u64)>>,
    permits: tokio::sync::Semaphore,
    /// Runs start in a small process of their own (`docklock cage
    /// launcher`), not by forking the agent.
    launcher: Arc<docklock_cage::launcher::Launcher>,
}

impl Executor {
    /// An executor for the node `identity` names, reading the registry
    /// through `view`, reporting through `client`, keeping runs under
    /// `data_dir/runs`.
    pub fn new(
        view: Arc<dyn RegistryView>,
        identity: WorkerIdentity,
        store: Arc<ArtifactStore>,
        data_dir: &Path,
        client: Client,
    ) -> anyhow::Result<Arc<Self>> {
        let runs_dir = data_dir.join("runs");
        std::fs::create_dir_all(&runs_dir)?;
        let channels = ChannelCache::new(Duration::from_secs(2), Duration::from_secs(60));
        let launcher = docklock_cage::launcher::Launcher::new(&std::env::current_exe()?, &["cage", "launcher"]);
        Ok(Arc::new(Self {
            view,
            identity,
            store,
            runs_dir,
            cache_dir: data_dir.join("cage-cache"),
            client,
            channels,
            in_flight: Mutex::new(BTreeSet::new()),
            permits: tokio::sync::Semaphore::new(RUNS_IN_FLIGHT),
            launcher: Arc::new(launcher),
        }))
    }

    /// Look for work whenever the registry may have changed until the node
    /// stops.
    pub async fn duty(self: Arc<Self>) {
        tokio::spawn(self.clone().sweep());
        let mut waiter = Waiter::default();
        loop {
            self.view.changed(&mut waiter).await;
            if self.view.stopping() {
                return;
            }
            let jobs = match self.view.jobs().await {
                Ok(jobs) => jobs,
                Err(error) => {
                    tracing::debug!(error = format!("{error:#}"), "cannot read this node's assignments");
                    continue;
                }
            };
            for job in jobs {
                if !self.in_flight.lock().expect("in-flight set").insert(job) {
                    continue;
                }
                let executor = self.clone();
                tokio::spawn(async move {
                    let (id, attempt) = job;
                    if let Err(error) = executor.clone().execute(id, attempt).await {
                        tracing::warn!(agreement = %id, attempt, error = format!("{error:#}"), "run not reported; will retry");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    executor.in_flight.lock().expect("in-flight set").remove(&job);
                });
            }
        }
    }

    fn run_dir(&self, id: &AgreementId, attempt: u64) -> PathBuf {
        self.runs_dir.join(id.to_hex()).join(attempt.to_string())
    }

    /// Remove the directories of runs that are no longer this node's work,
    /// once a minute until the node stops. Without it every run would
    /// leave its directory behind for good. Removing one is never unsafe,
    /// only wasteful: a replica whose remembered result is gone runs again
    /// and, its nonce being derived, reports the same commitment.
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if self.view.stopping() {
                return;
            }
            let Ok(mut keep) = self.view.jobs().await.map(BTreeSet::from_iter) else { continue };
            keep.extend(self.in_flight.lock().expect("in-flight set").iter().copied());
            let runs_dir = self.runs_dir.clone();
            let swept = tokio::task::spawn_blocking(move || {
                sweep_runs(&runs_dir, &keep, std::time::SystemTime::now(), RUN_DIR_GRACE, SWEEP_MAX)
            })
            .await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => tracing::debug!(removed, "collected finished runs' directories"),
                Ok(Err(error)) => tracing::warn!(%error, "cannot collect finished runs' directories"),
                Err(error) => tracing::warn!(%error, "the run directory sweep stopped"),
            }
        }
    }

    /// Run (or resume) one replica to its reveal.
    async fn execute(self: Arc<Self>, id: AgreementId, attempt: u64) -> anyhow::Result<()> {
        let dir = self.run_dir(&id, attempt);
        let result_path = dir.join("result.json");
        let result = match std::fs::read(&result_path) {
            Ok(bytes) => serde_json::from_slice::<RunResult>(&bytes).context("reading the remembered result")?,
            Err(_) => {
                let _permit = self.permits.acquire().await?;
                let result = match self.run(&id, attempt, &dir).await {
                    Ok(result) => result,
                    Err(error) if error.is::<Cancelled>() => {
                        tracing::info!(agreement = %id, attempt, "run stopped: the replica is no longer this node's");
                        return Ok(());
                    }
                    Err(error) => {
                        let Some(failure) = error.downcast_ref::<NoResult>() else { return Err(error) };
                        tracing::warn!(agreement = %id, attempt, reason = %failure, "the run has no result to agree on");
                        let mut reason = failure.0.clone();
                        reason.truncate(docklock_proto::report::FAIL_REASON_BYTES_MAX);
                        self.report(id, attempt, Phase::Fail(reason)).await?;
                        return Ok(());
                    }
                };
                let temporary = dir.join("result.json.tmp");
                std::fs::write(&temporary, serde_json::to_vec_pretty(&result)?)?;
                std::fs::rename(&temporary, &result_path)?;
                result
            }
        };
        let revealed = result.revealed()?;
        let commit = Phase::Commit(commitment(&revealed.root, &revealed.nonce));
        self.report(id, attempt, commit).await?;
        // Reveal once every replica has committed; give up once the replica
        // is no longer this node's (the agreement concluded or moved).
        let mut waiter = Waiter::default();
        loop {
            // Wait for the others' commitments here rather than have the
            // leader refuse a signed reveal at every change.
            while !self.view.all_committed(&id).await {
                if !self.view.jobs().await?.contains(&(id, attempt)) {
                    return Ok(());
                }
                self.view.changed(&mut waiter).await;
            }
            match self.report(id, attempt, Phase::Reveal(Box::new(revealed.clone()))).await {
                Ok(status) => {
                    tracing::info!(agreement = %id, attempt, root = %result.root, %status, "run revealed");
                    return Ok(());
                }
                Err(status)
                    if status.code() == Code::FailedPrecondition && status.message().contains("have committed") =>
                {
                    self.view.changed(&mut waiter).await;
                }
                Err(status) => bail!("reveal refused: {}", status.message()),
            }
            if !self.view.jobs().await?.contains(&(id, attempt)) {
                return Ok(());
            }
        }
    }

    async fn report(&self, id: AgreementId, attempt: u64, phase: Phase) -> Result<String, tonic::Status> {
        let identity = &self.identity;
        let report =
            RunReport { cluster_id: identity.cluster_id.clone(), agreement: id, attempt, node: identity.id, phase };
        let envelope = Envelope::sign(report.canonical(), &identity.key).canonical();
        let request = v1::ReportRunRequest { envelope };
        let response = self
            .client
            .call(|channel| {
                let request = request.clone();
                async move { AgreementsClient::new(channel).report(request).await }
            })
            .await?;
        Ok(response.status)
    }

    async fn fetch(&self, digest: Digest) -> anyhow::Result<PathBuf> {
        self.store.fetch(digest, &self.view.peers().await, &self.channels).await.map_err(anyhow::Error::msg)?;
        Ok(self.store.path(&digest))
    }

    /// Fetch what the spec names and run it in the cage.
    async fn run(&self, id: &AgreementId, attempt: u64, dir: &Path) -> anyhow::Result<RunResult> {
        let spec = self.view.spec(id).await?;
        if spec.inputs.contains_key(PROGRAM_INPUT) {
            return Err(NoResult(format!("an input may not be named {PROGRAM_INPUT}")).into());
        }
        std::fs::create_dir_all(dir)?;
        let mut inputs = Vec::new();
        for (name, digest) in &spec.inputs {
            inputs.push((name.clone(), self.fetch(*digest).await?));
        }
        let (program, args, rootfs) = match spec.workload {
            Workload::Program(digest) => {
                // The store's file itself (the cage makes every input
                // executable): no copy, and the cage's digest cache knows
                // the file from the last run.
                inputs.push((PROGRAM_INPUT.to_owned(), self.fetch(digest).await?));
                (format!("/in/{PROGRAM_INPUT}"), spec.args.clone(), Rootfs::Host)
            }
            Workload::Image(digest) => {
                let image = self.fetch(digest).await?;
                let program = spec
                    .args
                    .first()
                    .ok_or_else(|| NoResult("an image agreement names its program as args[0]".into()))?
                    .clone();
                (program, spec.args[1..].to_vec(), Rootfs::Image(image))
            }
        };
        let run_spec = RunSpec {
            program,
            args,
            env: spec.env.clone().into_iter().collect(),
            inputs,
            limits: cage_limits(&spec),
            seed: test_fault_seed(seed_of(id, &spec)),
            stage_parent: Some(self.runs_dir.clone()),
            rootfs,
            cache: self.cache_dir.clone(),
            cgroups: true,
        };
        let witness_path = dir.join("witness.log");
        let out_dir = dir.join("out");
        let stdout_path = dir.join("stdout");
        // A replica that stops being this node's while it runs (the
        // agreement timed out, or the replica moved) is stopped: its result
        // could no longer be reported, and its CPU is someone else's.
        let cancel = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch_replica(self.view.clone(), (*id, attempt), cancel.clone()));
        let launcher = self.launcher.clone();
        let ran = tokio::task::spawn_blocking(move || {
            let outcome =
                launcher.run(&run_spec, &witness_path, Some(&out_dir), &stdout_path, &cancel).map_err(|error| {
                    match error {
                        docklock_cage::run::CageError::Spec(reason) => anyhow::Error::new(NoResult(reason)),
                        docklock_cage::run::CageError::Cancelled => anyhow::Error::new(Cancelled),
                        other => other.into(),
                    }
                })?;
            anyhow::Ok((outcome, witness_path, out_dir, stdout_path))
        })
        .await;
        watcher.abort();
        let (outcome, witness_path, out_dir, stdout_path) = ran??;
        if let Verdict::LimitExceeded { limit: limit @ (Limit::Wall | Limit::Cpu) } = outcome.verdict {
            return Err(NoResult(format!(
                "the run exceeded its {} limit on this node; how far it got depends on the host, so there is no \
                 result to agree on (bound runaway programs with the deterministic `events` limit)",
                limit.name()
            ))
            .into());
        }
        let store = self.store.clone();
        let (stdout, witness, outputs) = tokio::task::spawn_blocking(move || {
            let stdout = store.adopt_file(&stdout_path)?;
            let witness = store.adopt_file(&witness_path)?;
            let mut outputs = BTreeMap::new();
            for name in &outcome.outputs {
                let path = out_dir.join(name);
                if path.is_file() {
                    outputs.insert(name.clone(), store.adopt_file(&path)?);
                }
            }
            anyhow::Ok((stdout, witness, outputs))
        })
        .await??;
        tracing::info!(agreement = %id, verdict = %outcome.verdict.describe(), root = %outcome.root, "run finished");
        let nonce = run_nonce(&self.identity, id, attempt);
        Ok(RunResult {
            root: outcome.root,
            nonce: hex::encode(nonce),
            verdict: outcome.verdict.describe(),
            stdout,
            witness,
            outputs,
        })
    }
}

/// Remove `runs_dir/<agreement>/<attempt>` directories that `keep` does
/// not name and that have not changed for `grace` before `now`, at most
/// `max` of them; an agreement's directory goes once it is empty.
/// Anything else there (the cage's mount point) is left alone, and a run
/// that cannot be read or removed is skipped, so one bad directory does
/// not stop the collection of the rest. Returns how many run directories
/// went.
fn sweep_runs(
    runs_dir: &Path,
    keep: &BTreeSet<(AgreementId, u64)>,
    now: std::time::SystemTime,
    grace: Duration,
    max: usize,
) -> std::io::Result<usize> {
    let mut removed = 0;
    for agreement in std::fs::read_dir(runs_dir)? {
        let agreement = agreement?;
        let Some(id) = agreement.file_name().to_str().and_then(|name| AgreementId::from_hex(name).ok()) else {
            continue;
        };
        let Ok(runs) = std::fs::read_dir(agreement.path()) else { continue };
        for run in runs.flatten() {
            if removed >= max {
                return Ok(removed);
            }
            let Some(attempt) = run.file_name().to_str().and_then(|name| name.parse::<u64>().ok()) else { continue };
            let changed = run.metadata().and_then(|meta| meta.modified());
            let settled = changed.is_ok_and(|changed| now.duration_since(changed).is_ok_and(|age| age >= grace));
            if settled && !keep.contains(&(id, attempt)) && std::fs::remove_dir_all(run.path()).is_ok() {
                removed += 1;
            }
        }
        // Fails while runs of the agreement remain, which is the point.
        let _ = std::fs::remove_dir(agreement.path());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use docklock_proto::crypto::{Algorithm, KeyPair};

    #[test]
    fn a_run_nonce_is_the_same_on_a_rerun_and_differs_per_attempt_and_node() {
        let identity = |key: Arc<KeyPair>| WorkerIdentity { id: 1, cluster_id: "c".into(), key, address: "a".into() };
        let (key, other) = (Arc::new(KeyPair::generate(Algorithm::MlDsa65)), KeyPair::generate(Algorithm::MlDsa65));
        let (node, other) = (identity(key), identity(Arc::new(other)));
        let id = AgreementId([7; 32]);
        assert_eq!(run_nonce(&node, &id, 1), run_nonce(&node, &id, 1));
        assert_ne!(run_nonce(&node, &id, 1), run_nonce(&node, &id, 2));
        assert_ne!(run_nonce(&node, &id, 1), run_nonce(&node, &AgreementId([8; 32]), 1));
        assert_ne!(run_nonce(&node, &id, 1), run_nonce(&other, &id, 1));
    }

    #[test]
    fn the_sweep_removes_settled_runs_that_are_not_this_nodes_work_and_nothing_else() {
        let runs = tempfile::tempdir().unwrap();
        let make = |id: &AgreementId, attempt: u64| {
            let dir = runs.path().join(id.to_hex()).join(attempt.to_string());
            std::fs::create_dir_all(dir.join("out")).unwrap();
            std::fs::write(dir.join("result.json"), b"{}").unwrap();
            dir
        };
        let (done, assigned, other) = (AgreementId([1; 32]), AgreementId([2; 32]), AgreementId([3; 32]));
        let finished = make(&done, 1);
        let still_mine = make(&assigned, 4);
        let (older, newer) = (make(&other, 1), make(&other, 2));
        let mount_point = runs.path().join("docklock-cage-root-0");
        std::fs::create_dir(&mount_point).unwrap();
        let keep = BTreeSet::from([(assigned, 4), (other, 2)]);
        let grace = Duration::from_secs(600);
        let now = std::time::SystemTime::now();

        // Nothing has settled yet.
        assert_eq!(sweep_runs(runs.path(), &keep, now, grace, 100).unwrap(), 0);
        assert!(finished.exists() && older.exists());

        let later = now + grace + Duration::from_secs(1);
        assert_eq!(sweep_runs(runs.path(), &keep, later, grace, 100).unwrap(), 2);
        assert!(!finished.exists() && !older.exists(), "settled runs nobody needs are removed");
        assert!(!runs.path().join(done.to_hex()).exists(), "an agreement's empty directory goes too");
        assert!(still_mine.join("result.json").exists() && newer.join("result.json").exists(), "kept runs stay");
        assert!(runs.path().join(other.to_hex()).exists(), "an agreement with a kept run stays");
        assert!(mount_point.exists(), "the cage's mount point is not a run");

        // A bounded sweep removes at most its share.
        let (a, b) = (make(&done, 1), make(&done, 2));
        assert_eq!(sweep_runs(runs.path(), &keep, later, grace, 1).unwrap(), 1);
        assert!(a.exists() != b.exists());
    }
}
