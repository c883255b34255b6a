//! The worker side of the node lifecycle: describe this host, register it
//! (signed with the node key), and heartbeat to the leader at the interval
//! the leader asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use docklock_proto::agreement::Envelope;
use docklock_proto::client::{Client, ClientOptions};
use docklock_proto::node::{Capacity, NodeRegistration, NodeType};
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
            parsed.insert(key.to_owned(), value.to_owned());
        }
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

/// Register this node as a worker once its key is in the registry, then
/// heartbeat for as long as the node runs.
pub async fn worker_duty(node: Arc<NodeContext>, config: WorkerConfig, advertise: String) {
    let options = ClientOptions { attempts_max: 4, deadline: Duration::from_secs(5), ..ClientOptions::default() };
    let Ok(client) = Client::new(vec![advertise.clone()], options) else { return };
    let token: [u8; 32] = rand::random();
    let registration = config.registration(&node.cluster_id, node.id, &advertise, &token);
    let envelope = Envelope::sign(registration.canonical(), &node.key).canonical();
    let mut registered = false;
    let mut interval = RETRY;
    loop {
        if node.raft.metrics().borrow().state == openraft::ServerState::Shutdown {
            return;
        }
        let key_registered = node.state.read().registry.node_key(node.id).is_some();
        if !key_registered {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let result = if registered {
            let request = v1::HeartbeatRequest { node_id: node.id, token: token.to_vec() };
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
                    tracing::info!(node = node.id, zone = %config.zone, "registered as a worker");
                }
                registered = true;
                // The leader sizes the interval so that all workers together
                // stay within its heartbeat budget; the TTL is three of them,
                // so one lost heartbeat never makes a node down.
                interval = Duration::from_millis(response.interval_ms.max(50));
            }
            Err(status) if matches!(status.code(), Code::NotFound | Code::Unauthenticated) => {
                tracing::warn!(node = node.id, %status, "heartbeat refused; registering again");
                registered = false;
                interval = RETRY;
            }
            Err(status) if status.code() == Code::FailedPrecondition => {
                tracing::error!(node = node.id, %status, "this node was removed; it no longer works for the cluster");
                return;
            }
            Err(status) => {
                tracing::debug!(node = node.id, %status, "heartbeat failed; will retry");
                interval = RETRY.min(interval);
            }
        }
        tokio::time::sleep(interval).await;
    }
}
