//! The worker side of the node lifecycle: describe this host, register it
//! (signed with the node key), and heartbeat to the leader at the interval
//! the leader asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use docklock_proto::agreement::Envelope;
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::crypto::KeyPair;
use docklock_proto::identity::NodeKeyClaim;
use docklock_proto::node::{Capacity, NodeRegistration, NodeType, MACHINE_LABEL};
use docklock_proto::v1::{self, nodes_client::NodesClient};
use tonic::Code;

use crate::api::NodeContext;

/// What this node offers as a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Its type.
    pub node_type: NodeType,
    /// Its failure domain.
    pub zone: String,
    /// Labels constraints can select on.
    pub labels: BTreeMap<String, String>,
    /// CPU (default: the host's cores).
    pub cpu_millis: u64,
    /// Memory (default: the host's).
    pub memory_mib: u64,
}

impl WorkerConfig {
    /// This host's defaults for anything not given.
    pub fn detect(
        node_type: Option<&str>,
        zone: Option<String>,
        labels: &[String],
        cpu_millis: Option<u64>,
        memory_mib: Option<u64>,
    ) -> anyhow::Result<Self> {
        let node_type = match node_type {
            None => NodeType::Hybrid,
            Some(name) => NodeType::parse(name).with_context(|| {
                format!("--node-type {name:?} is not one of {:?}", docklock_proto::agreement::NODE_TYPES)
            })?,
        };
        let mut parsed = BTreeMap::new();
        for label in labels {
            let Some((key, value)) = label.split_once('=') else { bail!("--label {label:?} is not KEY=VALUE") };
            if key == MACHINE_LABEL {
                bail!("--label {MACHINE_LABEL} is set by the node itself (its cage's machine class)");
            }
            parsed.insert(key.to_owned(), value.to_owned());
        }
        // A run's root holds among hosts of one machine class (the witness
        // header's `machine=`): placement keeps an agreement's replicas on
        // one class by this label, so a mixed cluster does not report
        // honest runs as diverged; a spec may also name a class.
        parsed.insert(MACHINE_LABEL.to_owned(), docklock_cage::machine_class().to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Ok(Self {
            node_type,
            zone: zone.unwrap_or_else(|| "default".to_owned()),
            labels: parsed,
            cpu_millis: cpu_millis.unwrap_or(cores * 1000),
            memory_mib: memory_mib.unwrap_or_else(host_memory_mib),
        })
    }

    /// The signed description of node `id` of `cluster_id` at `address`.
    pub fn registration(&self, cluster_id: &str, id: u64, address: &str, token: &[u8]) -> NodeRegistration {
        NodeRegistration {
            cluster_id: cluster_id.to_owned(),
            node_id: id,
            address: address.to_owned(),
            node_type: self.node_type,
            zone: self.zone.clone(),
            labels: self.labels.clone(),
            capacity: Capacity { cpu_millis: self.cpu_millis, memory_mib: self.memory_mib, features: host_features() },
            heartbeat_digest: NodeRegistration::token_digest(token),
        }
    }
}

fn host_memory_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(1024, |kib| kib / 1024)
}

/// Cage features this host offers, as constraints and operators see them.
fn host_features() -> BTreeSet<String> {
    let mut features = BTreeSet::new();
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        features.insert("cgroup-v2".to_owned());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.lines().any(|line| line.starts_with("flags") && line.split_whitespace().any(|f| f == "cpuid_fault")) {
        features.insert("cpuid-faulting".to_owned());
    }
    features
}

/// Pause after a failed registration or heartbeat round.
const RETRY: Duration = Duration::from_millis(500);

/// Who a worker is.
pub struct WorkerIdentity {
    /// Its node id.
    pub id: u64,
    /// The cluster it works for.
    pub cluster_id: String,
    /// Its node key: signs the registration.
    pub key: Arc<KeyPair>,
    /// The address it advertises.
    pub address: String,
}

/// What the loop asks its host about.
pub trait WorkerHost: Send + Sync {
    /// Whether the node's key is registered (registration must wait for it).
    fn key_registered(&self) -> bool;
    /// Whether the host is shutting down.
    fn stopping(&self) -> bool;
}

impl WorkerHost for NodeContext {
    fn key_registered(&self) -> bool {
        self.state.read().registry.node_key(self.id).is_some()
    }

    fn stopping(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Shutdown
    }
}

/// Register this node as a worker once its key is in the registry, then
/// heartbeat for as long as the node runs.
pub async fn worker_duty(node: Arc<NodeContext>, config: WorkerConfig, advertise: String) {
    let options = ClientOptions { attempts_max: 4, deadline: Duration::from_secs(5), ..ClientOptions::default() };
    let Ok(client) = Client::new(vec![advertise.clone()], options) else { return };
    let identity =
        WorkerIdentity { id: node.id, cluster_id: node.cluster_id.clone(), key: node.key.clone(), address: advertise };
    work(&*node, &identity, &config, &client).await;
}

/// Register `identity` as a worker through `client`, then heartbeat until the
/// host stops or the node is removed.
pub async fn work(host: &dyn WorkerHost, identity: &WorkerIdentity, config: &WorkerConfig, client: &Client) {
    let id = identity.id;
    let token: [u8; 32] = rand::random();
    let registration = config.registration(&identity.cluster_id, id, &identity.address, &token);
    let envelope = Envelope::sign(registration.canonical(), &identity.key).canonical();
    let mut registered = false;
    let mut interval = RETRY;
    loop {
        if host.stopping() {
            return;
        }
        if !host.key_registered() {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let result = if registered {
            let request = v1::HeartbeatRequest { node_id: id, token: token.to_vec() };
            client
                .call(|channel| {
                    let request = request.clone();
                    async move { NodesClient::new(channel).heartbeat(request).await }
                })
                .await
        } else {
            let request = v1::RegisterWorkerRequest { envelope: envelope.clone() };
            client
                .call(|channel| {
                    let request = request.clone();
                    async move { NodesClient::new(channel).register(request).await }
                })
                .await
        };
        match result {
            Ok(response) => {
                if !registered {
                    tracing::info!(node = id, zone = %config.zone, "registered as a worker");
                }
                registered = true;
                // The leader sizes the interval so that all workers together
                // stay within its heartbeat budget; the TTL is three of them,
                // so one lost heartbeat never makes a node down.
                interval = Duration::from_millis(response.interval_ms.max(50));
            }
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unauthenticated) => {
                tracing::warn!(node = id, %status, "heartbeat refused; registering again");
                registered = false;
                interval = RETRY;
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                tracing::error!(node = id, %status, "this node was removed; it no longer works for the cluster");
                return;
            }
            Err(status) => {
                tracing::debug!(node = id, %status, "heartbeat failed; will retry");
                interval = RETRY.min(interval);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// A worker-only node: no Raft, no registry replica. It claims its node key
/// (which an admin must have added with role `node`), then registers and
/// heartbeats through the cluster's public API. It serves gRPC health on its
/// listen address so the address it registers answers.
pub struct WorkerOnly {
    identity: WorkerIdentity,
    config: WorkerConfig,
    client: Client,
    claimed: std::sync::atomic::AtomicBool,
    stopping: std::sync::atomic::AtomicBool,
    /// This node's artifact store (served on its address).
    pub store: Arc<crate::artifacts::ArtifactStore>,
    data_dir: std::path::PathBuf,
    endpoints: Vec<String>,
    view: Mutex<Option<Arc<crate::executor::RemoteView>>>,
}

impl WorkerHost for WorkerOnly {
    fn key_registered(&self) -> bool {
        self.claimed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl WorkerOnly {
    /// Prepare a worker-only node `id` with its data in `data_dir`, reaching
    /// the cluster through `endpoints`.
    pub async fn start(
        id: u64,
        data_dir: &std::path::Path,
        address: String,
        endpoints: Vec<String>,
        config: WorkerConfig,
        store_limits: crate::artifacts::StoreLimits,
    ) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        let store = crate::artifacts::ArtifactStore::open(data_dir, store_limits)
            .with_context(|| format!("cannot open the artifact store in {}", data_dir.display()))?;
        let key = crate::agent::node_key(data_dir)?;
        let public = data_dir.join(format!("{}.pub", crate::agent::NODE_KEY_FILE));
        if !public.exists() {
            key.public().write_new(&public)?;
        }
        let client = Client::new(endpoints.clone(), ClientOptions::default())?;
        let cluster_id = client.status().await.context("cannot reach the cluster")?.cluster_id;
        check_worker_identity(data_dir, id, &cluster_id)?;
        let identity = WorkerIdentity { id, cluster_id, key: Arc::new(key), address };
        let claimed = std::sync::atomic::AtomicBool::new(false);
        let stopping = std::sync::atomic::AtomicBool::new(false);
        Ok(Arc::new(Self {
            identity,
            config,
            client,
            claimed,
            stopping,
            store,
            data_dir: data_dir.to_owned(),
            endpoints,
            view: Mutex::new(None),
        }))
    }

    /// Claim the key (retrying until an admin has authorised it), then work.
    pub async fn run(self: Arc<Self>) {
        let claim = NodeKeyClaim { cluster_id: self.identity.cluster_id.clone(), node_id: self.identity.id };
        let envelope = Envelope::sign(claim.canonical(), &self.identity.key).canonical();
        let mut warned = false;
        while !self.stopping() {
            match self.client.register_node(envelope.clone()).await {
                Ok(_) => {
                    self.claimed.store(true, std::sync::atomic::Ordering::Relaxed);
                    break;
                }
                Err(status) if status.code() == Code::PermissionDenied && !warned => {
                    warned = true;
                    tracing::error!(
                        node = self.identity.id,
                        key = %self.identity.key.public().fingerprint(),
                        %status,
                        "this worker's key is not authorised; an admin must run: \
                         docklock identity add DATA_DIR/node.key.pub --role node --key ADMIN_KEY"
                    );
                }
                Err(status) => tracing::debug!(%status, "key claim failed; will retry"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match self.start_executor() {
            Ok(()) => {}
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "cannot start the executor; this node takes no runs")
            }
        }
        work(&*self, &self.identity, &self.config, &self.client).await;
    }

    /// Run placed replicas: the registry is read through the public API.
    fn start_executor(&self) -> anyhow::Result<()> {
        let view = crate::executor::RemoteView::new(
            Client::new(self.endpoints.clone(), ClientOptions::default())?,
            self.identity.id,
        );
        let identity = WorkerIdentity {
            id: self.identity.id,
            cluster_id: self.identity.cluster_id.clone(),
            key: self.identity.key.clone(),
            address: self.identity.address.clone(),
        };
        let reports = Client::new(self.endpoints.clone(), ClientOptions::default())?;
        let executor =
            crate::executor::Executor::new(view.clone(), identity, self.store.clone(), &self.data_dir, reports)?;
        *self.view.lock().expect("view lock") = Some(view);
        tokio::spawn(executor.duty());
        Ok(())
    }

    /// Stop heartbeating and running.
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(view) = self.view.lock().expect("view lock").as_ref() {
            view.stop();
        }
    }
}

/// The file recording which cluster and node id a worker's data directory
/// belongs to.
const WORKER_IDENTITY_FILE: &str = "worker-identity";

fn check_worker_identity(data_dir: &std::path::Path, id: u64, cluster_id: &str) -> anyhow::Result<()> {
    let path = data_dir.join(WORKER_IDENTITY_FILE);
    let expected = format!("{cluster_id} {id}\n");
    match std::fs::read_to_string(&path) {
        Ok(stored) if stored == expected => Ok(()),
        Ok(stored) => bail!(
            "data directory {} belongs to {:?} (cluster, node), not {:?}; use its id and cluster or another directory",
            data_dir.display(),
            stored.trim(),
            expected.trim()
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, expected).with_context(|| format!("cannot write {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}
