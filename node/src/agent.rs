//! `docklock agent`: one node of the registry.
//!
//! Start-up order: open the store and check that the data directory belongs
//! to this node and cluster; start Raft; bind and serve gRPC; then either
//! initialize the cluster (initial members, once) or join it (learner, then
//! voter). Restarting with the same flags is always safe.
//!
//! Then the ledger duties run in the background ([`ledger_duties`]): the
//! first leader bootstraps the registry (cluster id and first admin key),
//! every node registers its own key, and the leader signs checkpoints.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use docklock_proto::agreement::Envelope;
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::crypto::{Algorithm, KeyPair, PublicKey};
use docklock_proto::identity::NodeKeyClaim;
use docklock_proto::ledger::Checkpoint;
use docklock_raft::network::{NetworkFactory, PeerSecret, RaftService};
use docklock_raft::store::{Identity, Store, StoreConfig};
use docklock_raft::types::{Command, Outcome, Request};
use docklock_raft::types::{Node, NodeId, Raft};
use docklock_raft::RaftSettings;
use sha3::{Digest, Sha3_256};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::api::{ApiLimits, ClusterService, NetworkSettings, NodeContext, VariablesService};
use crate::artifacts::{ArtifactStore, ArtifactsService, StoreLimits};
use crate::audit_api::{AgreementsService, IdentitiesService, LedgerService};
use crate::executor::Executor;
use crate::worker::WorkerConfig;
use docklock_scheduler::liveness::Timing;

/// How a node finds its cluster.
#[derive(Debug, Clone)]
pub enum Bootstrap {
    /// One of the static initial members (`id -> address`).
    Initial(BTreeMap<NodeId, String>),
    /// A new node joining through the member at this address.
    Join(String),
}

/// Everything an agent needs, after flags, environment and file are merged.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's id (1 or more).
    pub id: NodeId,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Address peers and clients use to reach this node.
    pub advertise: String,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Cluster name; part of the cluster id.
    pub cluster_name: String,
    /// Initial cluster or join target.
    pub bootstrap: Bootstrap,
    /// Raft timing and compaction.
    pub raft: RaftSettings,
    /// API size bounds.
    pub limits: ApiLimits,
    /// Storage settings.
    pub store: StoreConfig,
    /// The first admin's public key file (initial members only).
    pub admin_key: Option<PathBuf>,
    /// Time between checkpoints while the ledger grows.
    pub checkpoint_interval: Duration,
    /// What this node offers as a worker; `None`: it only votes.
    pub worker: Option<WorkerConfig>,
    /// Worker heartbeat timing (the leader's side).
    pub heartbeat_timing: Timing,
    /// Bounds of the artifact store.
    pub store_limits: StoreLimits,
    /// The secret every member holds to authenticate Raft messages; `None`
    /// accepts any (a warning at start).
    pub peer_secret: Option<PeerSecret>,
}

impl AgentConfig {
    /// Refuse settings that cannot describe a node, before touching any data.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.id == 0 {
            bail!("node id 0 is reserved; ids start at 1");
        }
        if let Bootstrap::Initial(members) = &self.bootstrap {
            match members.get(&self.id) {
                None => bail!("node {} is not in the initial cluster; use --join to add a new node", self.id),
                Some(addr) if *addr != self.advertise => bail!(
                    "node {} is listed at {addr} in the initial cluster but advertises {}",
                    self.id,
                    self.advertise
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The cluster id of a statically bootstrapped cluster: derived from its
/// name, initial members and first admin key, so every initial member
/// computes the same id, and a node started with another member list or
/// another admin key is recognised as foreign.
pub fn cluster_id_for(name: &str, members: &BTreeMap<NodeId, String>, admin: Option<&PublicKey>) -> String {
    let mut hasher = Sha3_256::new();
    hasher.update(b"docklock-cluster-v1\0");
    hasher.update(name.as_bytes());
    for (id, addr) in members {
        hasher.update(format!("\0{id}={addr}").as_bytes());
    }
    if let Some(admin) = admin {
        hasher.update(b"\0admin=");
        hasher.update(admin.fingerprint().0);
    }
    hex::encode(&hasher.finalize()[..12])
}

/// The node's key file in its data directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// Load the node's key, creating it (mode 0600) at first start.
pub(crate) fn node_key(data_dir: &std::path::Path) -> anyhow::Result<KeyPair> {
    let path = data_dir.join(NODE_KEY_FILE);
    if !path.exists() {
        KeyPair::generate(Algorithm::MlDsa65).write_new(&path)?;
    }
    Ok(KeyPair::read(&path)?)
}

/// Parse `1=HOST:PORT,2=HOST:PORT,...`.
pub fn parse_initial_cluster(text: &str) -> anyhow::Result<BTreeMap<NodeId, String>> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part.split_once('=').with_context(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id.trim().parse().with_context(|| format!("{id:?} is not a node id"))?;
        if id == 0 {
            bail!("node id 0 is reserved; ids start at 1");
        }
        addr.trim().parse::<SocketAddr>().with_context(|| format!("{addr:?} is not HOST:PORT"))?;
        if members.insert(id, addr.trim().to_owned()).is_some() {
            bail!("node id {id} appears twice in the initial cluster");
        }
    }
    if members.is_empty() {
        bail!("the initial cluster lists no members");
    }
    Ok(members)
}

/// A running agent.
pub struct Agent {
    /// The node's shared context.
    pub node: Arc<NodeContext>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Agent {
    /// Start the node; it serves until [`Agent::stop`].
    pub async fn start(config: AgentConfig) -> anyhow::Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        let store = Store::open(&config.data_dir.join("registry"), &config.store)?;
        let admin = config.admin_key.as_deref().map(PublicKey::read).transpose()?;
        let identity = settle_identity(&config, &store, admin.as_ref()).await?;
        let key = node_key(&config.data_dir)?;
        tracing::info!(node = config.id, key = %key.public().fingerprint(), "node key loaded");
        tracing::info!(node = config.id, cluster = %identity.cluster_id, "store opened");

        let raft_config = docklock_raft::raft_config(&config.cluster_name, &config.raft)?;
        // Dial peers from the listen address, so that a partition between
        // addresses (the chaos harness's, or a real one) cuts every path.
        let local_address = (!config.listen.ip().is_unspecified()).then(|| config.listen.ip());
        if config.peer_secret.is_none() {
            tracing::warn!(
                node = config.id,
                "no --peer-secret-file: anyone who can reach this port can send Raft messages to this node"
            );
        }
        let network =
            NetworkFactory::new(identity.cluster_id.clone(), config.id, local_address, config.peer_secret.clone());
        let state = store.state_machine.view();
        let raft = Raft::new(config.id, raft_config, network, store.log.clone(), store.state_machine.clone())
            .await
            .context("cannot start raft")?;
        let node = NodeContext::new(
            config.id,
            identity.cluster_id.clone(),
            raft.clone(),
            state,
            config.limits.clone(),
            key,
            NetworkSettings { local_address, timing: config.heartbeat_timing },
        );

        let store = ArtifactStore::open(&config.data_dir, config.store_limits)
            .with_context(|| format!("cannot open the artifact store in {}", config.data_dir.display()))?;
        let listener =
            TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let raft_service = RaftService::new(raft.clone(), identity.cluster_id.clone(), config.id, config.peer_secret);
        let server = tokio::spawn(serve(node.clone(), raft_service, store.clone(), listener, stopped));
        tokio::spawn(snapshot_by_requests(node.clone(), config.raft.snapshot_requests));
        tokio::spawn(crate::nodes_api::liveness_duty(node.clone()));
        let replica = node.clone();
        tokio::spawn(crate::artifacts::collector(store.clone(), move || {
            replica.state.read().registry.referenced_artifacts()
        }));
        if let Some(worker) = &config.worker {
            tokio::spawn(crate::worker::worker_duty(node.clone(), worker.clone(), config.advertise.clone()));
            let identity = crate::worker::WorkerIdentity {
                id: node.id,
                cluster_id: node.cluster_id.clone(),
                key: node.key.clone(),
                address: config.advertise.clone(),
            };
            let options = ClientOptions { deadline: Duration::from_secs(10), ..ClientOptions::default() };
            let client = Client::new(vec![config.advertise.clone()], options)?;
            let view = crate::executor::LocalView::new(node.clone());
            let executor = Executor::new(view, identity, store.clone(), &config.data_dir, client)?;
            tokio::spawn(executor.duty());
        }
        let bootstrap_admin = match &config.bootstrap {
            Bootstrap::Initial(_) => Some(admin),
            Bootstrap::Join(_) => None,
        };
        tokio::spawn(ledger_duties(
            node.clone(),
            bootstrap_admin,
            config.advertise.clone(),
            config.checkpoint_interval,
        ));

        match &config.bootstrap {
            Bootstrap::Initial(members) => initialize(&raft, members).await?,
            Bootstrap::Join(target) => {
                tokio::spawn(join(node.clone(), target.clone(), config.advertise.clone()));
            }
        }
        Ok(Self { node, server, shutdown })
    }

    /// Stop serving and shut Raft down.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.node.raft.shutdown().await.context("raft shutdown")?;
        self.server.await??;
        Ok(())
    }
}

/// Check the data directory belongs to this node and cluster; stamp it at
/// first start.
async fn settle_identity(config: &AgentConfig, store: &Store, admin: Option<&PublicKey>) -> anyhow::Result<Identity> {
    let stored = store.identity()?;
    if let Some(stored) = &stored {
        if stored.node_id != config.id {
            bail!(
                "data directory {} belongs to node {}, not node {}; use that node's id or another directory",
                config.data_dir.display(),
                stored.node_id,
                config.id
            );
        }
    }
    let cluster_id = match &config.bootstrap {
        Bootstrap::Initial(members) => {
            if !members.contains_key(&config.id) {
                bail!("node {} is not in the initial cluster; use --join to add a new node", config.id);
            }
            cluster_id_for(&config.cluster_name, members, admin)
        }
        Bootstrap::Join(target) => match &stored {
            Some(stored) => stored.cluster_id.clone(),
            None => {
                let client = Client::new(vec![target.clone()], ClientOptions::default())?;
                client.status().await.with_context(|| format!("cannot reach {target} to join"))?.cluster_id
            }
        },
    };
    match stored {
        Some(stored) if stored.cluster_id != cluster_id => bail!(
            "data directory {} belongs to cluster {}, but these flags describe cluster {}; \
             check --initial-cluster and --cluster-name, or use another directory",
            config.data_dir.display(),
            stored.cluster_id,
            cluster_id
        ),
        Some(stored) => Ok(stored),
        None => {
            let identity = Identity { cluster_id, node_id: config.id };
            store.set_identity(&identity).await?;
            Ok(identity)
        }
    }
}

/// Initialize a fresh initial member. Every initial member does this with
/// the same member list, which openraft documents as safe; a node that has
/// any log or vote is already initialized and skips it.
async fn initialize(raft: &Raft, members: &BTreeMap<NodeId, String>) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        return Ok(());
    }
    let nodes: BTreeMap<NodeId, Node> = members.iter().map(|(id, addr)| (*id, Node::new(addr.clone()))).collect();
    match raft.initialize(nodes).await {
        Ok(()) => Ok(()),
        Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
        Err(error) => Err(error).context("cannot initialize the cluster"),
    }
}

/// Attempts to join before giving up (with backoff).
const JOIN_ATTEMPTS_MAX: u32 = 30;

/// Join as a learner, wait to catch up, then become a voter.
async fn join(node: Arc<NodeContext>, target: String, advertise: String) {
    let options = ClientOptions { request_timeout: Duration::from_secs(120), ..ClientOptions::default() };
    let Ok(client) = Client::new(vec![target.clone()], options) else {
        return;
    };
    for attempt in 1..=JOIN_ATTEMPTS_MAX {
        let membership = node.raft.metrics().borrow().membership_config.clone();
        let is_voter = membership.membership().voter_ids().any(|id| id == node.id);
        if is_voter {
            tracing::info!(node = node.id, "member of the cluster as a voter");
            return;
        }
        let result = async {
            if membership.membership().get_node(&node.id).is_none() {
                client.add_learner(node.id, &advertise, &node.cluster_id).await?;
                tracing::info!(node = node.id, "joined as a learner and caught up");
            }
            client.promote(node.id).await
        }
        .await;
        match result {
            Ok(_) => {
                tracing::info!(node = node.id, "promoted to voter");
                return;
            }
            Err(status) => {
                tracing::warn!(node = node.id, attempt, %status, "join attempt failed");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(6)))).await;
            }
        }
    }
    tracing::error!(node = node.id, "gave up joining after {JOIN_ATTEMPTS_MAX} attempts");
}

/// How often the request-count snapshot policy is checked.
const SNAPSHOT_CHECK_MS: u64 = 1_000;

/// Trigger a snapshot once `threshold` requests were applied since the last.
async fn snapshot_by_requests(node: Arc<NodeContext>, threshold: u64) {
    let mut ticks = tokio::time::interval(Duration::from_millis(SNAPSHOT_CHECK_MS));
    loop {
        ticks.tick().await;
        if node.state.requests_since_snapshot() >= threshold && node.raft.trigger().snapshot().await.is_err() {
            return; // raft stopped
        }
    }
}

/// How often the ledger duties look for work.
const DUTIES_TICK: Duration = Duration::from_millis(200);

/// The background work that keeps the ledger attributable, every
/// `interval`: bootstrap the registry once (an initial member that leads,
/// with the admin key it was given), register this node's key once it is a
/// member, and — while leading — sign a checkpoint when the ledger grew.
async fn ledger_duties(
    node: Arc<NodeContext>,
    bootstrap_admin: Option<Option<PublicKey>>,
    advertise: String,
    interval: Duration,
) {
    let fingerprint = node.key.public().fingerprint();
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(DUTIES_TICK.min(interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Ok(client) = Client::new(vec![advertise], ClientOptions::default()) else { return };
    loop {
        ticks.tick().await;
        let metrics = node.raft.metrics().borrow().clone();
        if metrics.state == openraft::ServerState::Shutdown {
            return;
        }
        let leading = metrics.current_leader == Some(node.id);
        let (bootstrapped, member, registered, due) = {
            let applied = node.state.read();
            let registry = &applied.registry;
            (
                registry.cluster_id().is_some(),
                metrics.membership_config.membership().get_node(&node.id).is_some(),
                registry.node_key(node.id).is_some(),
                registry.checkpoint_due(node.id, &fingerprint),
            )
        };
        if !bootstrapped {
            if let (true, Some(admin)) = (leading, &bootstrap_admin) {
                let command = Command::Bootstrap { cluster_id: node.cluster_id.clone(), admin: admin.clone() };
                if let Err(error) = node.write(Request { session: None, command }).await {
                    tracing::debug!(?error, "bootstrap proposal failed; will retry");
                }
            }
            continue;
        }
        if member && !registered {
            let claim = NodeKeyClaim { cluster_id: node.cluster_id.clone(), node_id: node.id };
            let envelope = Envelope::sign(claim.canonical(), &node.key).canonical();
            match client.register_node(envelope).await {
                Ok(_) => tracing::info!(node = node.id, key = %fingerprint, "node key registered"),
                Err(status) => tracing::warn!(node = node.id, %status, "node key registration failed; will retry"),
            }
            continue;
        }
        if last_checkpoint.elapsed() < interval {
            continue;
        }
        if let (true, Some((tree_size, root, chain_head))) = (leading, due) {
            last_checkpoint = tokio::time::Instant::now();
            let signed = Checkpoint::signed_bytes(&node.cluster_id, tree_size, &root, &chain_head);
            let checkpoint = Checkpoint {
                cluster_id: node.cluster_id.clone(),
                tree_size,
                root,
                chain_head,
                signer_node: node.id,
                signer_key: node.key.public().clone(),
                signature: node.key.sign(&signed),
            };
            let command = Command::Checkpoint { checkpoint: Box::new(checkpoint) };
            match node.write(Request { session: None, command }).await {
                Ok(response) if matches!(response.outcome, Outcome::CheckpointRecorded { .. }) => {}
                Ok(response) => tracing::debug!(outcome = ?response.outcome, "checkpoint not recorded"),
                Err(error) => tracing::debug!(?error, "checkpoint proposal failed"),
            }
        }
    }
}

async fn serve(
    node: Arc<NodeContext>,
    raft_service: RaftService,
    store: Arc<ArtifactStore>,
    listener: TcpListener,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), tonic::transport::Error> {
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(node.clone(), health));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(docklock_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(tower::util::MapResponseLayer::new(crate::status::size_limit_as_resource_exhausted::<tonic::body::Body>))
        .add_service(raft_service.into_server())
        .add_service(ClusterService::server(node.clone()))
        .add_service(VariablesService::server(node.clone()))
        .add_service(IdentitiesService::server(node.clone()))
        .add_service(AgreementsService::server(node.clone()))
        .add_service(LedgerService::server(node.clone()))
        .add_service(crate::nodes_api::NodesService::server(node.clone()))
        .add_service(ArtifactsService::server(store))
        .add_service(health_service)
        .add_service(reflection)
        // Accepted sockets need TCP_NODELAY set here: the builder's own
        // nodelay applies only to listeners tonic binds itself, and without
        // it small responses wait on delayed ACKs (~40 ms per request).
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
            let _ = stopped.await;
        })
        .await
}

/// Health: the process is live as soon as it serves (service ""); the
/// registry services are ready only while a leader is known.
async fn report_health(node: Arc<NodeContext>, health: tonic_health::server::HealthReporter) {
    use tonic_health::ServingStatus;
    health.set_service_status("", ServingStatus::Serving).await;
    let mut metrics = node.raft.metrics();
    let mut reported = None;
    loop {
        let ready = metrics.borrow().current_leader.is_some();
        // Metrics change with every write; publish only when readiness flips.
        if reported != Some(ready) {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in [
                "docklock.v1.Variables",
                "docklock.v1.Cluster",
                "docklock.v1.Identities",
                "docklock.v1.Agreements",
                "docklock.v1.Ledger",
                "docklock.v1.Nodes",
            ] {
                health.set_service_status(service, status).await;
            }
            reported = Some(ready);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Member lists parse strictly and the cluster id depends on them.
    #[test]
    fn initial_cluster_parsing_and_identity() {
        let members = parse_initial_cluster("1=127.0.0.1:7001, 2=127.0.0.1:7002").unwrap();
        assert_eq!(members.len(), 2);
        assert!(parse_initial_cluster("1=127.0.0.1:7001,1=127.0.0.1:7002").is_err());
        assert!(parse_initial_cluster("0=127.0.0.1:7001").is_err());
        assert!(parse_initial_cluster("1=nowhere").is_err());
        let other = parse_initial_cluster("1=127.0.0.1:7001,2=127.0.0.1:7003").unwrap();
        assert_ne!(cluster_id_for("c", &members, None), cluster_id_for("c", &other, None));
        assert_ne!(cluster_id_for("c", &members, None), cluster_id_for("d", &members, None));
        assert_eq!(cluster_id_for("c", &members, None), cluster_id_for("c", &members.clone(), None));
        let admin = KeyPair::generate(Algorithm::MlDsa65);
        assert_ne!(cluster_id_for("c", &members, None), cluster_id_for("c", &members, Some(admin.public())));
    }
}
