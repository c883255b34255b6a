//! The `Nodes` gRPC service (worker registration, heartbeats, drain,
//! removal, placement explanations) and the leader's liveness duty.
//!
//! Heartbeats go to the leader and stay in its memory ([`Heartbeats`]); the
//! liveness duty commits only the changes they imply. A heartbeat sent to a
//! follower is answered `UNAVAILABLE` with the leader hint rather than
//! forwarded: forwarding would double the load of the busiest request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use docklock_proto::agreement::AgreementId;
use docklock_proto::node::{NodeRegistration, NodeStatus};
use docklock_proto::v1::nodes_client::NodesClient;
use docklock_proto::v1::{self, nodes_server};
use docklock_raft::nodes::NodeRecord;
use docklock_raft::registry::Registry;
use docklock_raft::types::{Command, Outcome, Request};
use docklock_scheduler::liveness::{Change, Liveness, Timing};
use docklock_scheduler::ring::key_point;
use tonic::Status;

use crate::api::{is_forwarded, mark_forwarded, unexpected_outcome, NodeContext};
use crate::audit_api::{parse_agreement_id, precheck_envelope, signed_write, verify};
use crate::status::{NotLeader, RegistryError};

/// Most status changes the liveness duty proposes per tick.
const CHANGES_PER_TICK: usize = 1_000;
/// How often the liveness duty looks.
const LIVENESS_TICK: Duration = Duration::from_millis(200);
/// Longest heartbeat token accepted.
const TOKEN_BYTES_MAX: usize = 64;

/// The leader's memory of heartbeats and of when it first saw each open
/// agreement, for the term it leads in.
pub struct Heartbeats {
    origin: Instant,
    timing: Timing,
    memory: Mutex<Option<(u64, Liveness)>>,
    first_seen: Mutex<Option<(u64, std::collections::HashMap<AgreementId, u64>)>>,
}

impl Heartbeats {
    /// Memory with this timing.
    pub fn new(timing: Timing) -> Self {
        Self { origin: Instant::now(), timing, memory: Mutex::new(None), first_seen: Mutex::new(None) }
    }

    /// The open agreements whose deadline passed, as this leadership
    /// measures it: from when it first saw them. A new leader starts the
    /// clock again, so a failover can lengthen a deadline, never shorten it.
    fn expired(&self, term: u64, open: impl Iterator<Item = (AgreementId, u64)>) -> Vec<AgreementId> {
        let now = self.now();
        let mut memory = self.first_seen.lock().expect("deadline memory lock");
        if memory.as_ref().is_none_or(|(held, _)| *held != term) {
            *memory = Some((term, std::collections::HashMap::new()));
        }
        let (_, seen) = memory.as_mut().expect("set above");
        let mut still_open = std::collections::HashMap::new();
        let mut expired = Vec::new();
        for (id, timeout_secs) in open {
            let first = seen.get(&id).copied().unwrap_or(now);
            still_open.insert(id, first);
            if now.saturating_sub(first) > timeout_secs.saturating_mul(1000) {
                expired.push(id);
            }
        }
        *seen = still_open;
        expired
    }

    /// Milliseconds on this process's monotonic clock.
    fn now(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Run `f` on the memory of leadership term `term`; a new term starts a
    /// fresh memory (every node gets a full grace period).
    fn with<R>(&self, term: u64, f: impl FnOnce(&mut Liveness, u64) -> R) -> R {
        let now = self.now();
        let mut memory = self.memory.lock().expect("heartbeat memory lock");
        if memory.as_ref().is_none_or(|(held, _)| *held != term) {
            *memory = Some((term, Liveness::new(now)));
        }
        let (_, liveness) = memory.as_mut().expect("set above");
        f(liveness, now)
    }

    /// Interval and TTL for a registry of this size.
    fn timing_for(&self, registry: &Registry) -> (u64, u64) {
        let nodes = registry.live_node_count();
        (self.timing.interval_ms(nodes), self.timing.ttl_ms(nodes))
    }
}

fn not_leader(node: &NodeContext) -> Status {
    let metrics = node.raft.metrics().borrow().clone();
    let leader = metrics
        .current_leader
        .and_then(|id| metrics.membership_config.membership().get_node(&id).map(|member| (id, member.addr.clone())));
    NotLeader { leader }.into_status()
}

/// This node's leadership term, if it leads.
fn leading_term(node: &NodeContext) -> Option<u64> {
    let metrics = node.raft.metrics();
    let metrics = metrics.borrow();
    (metrics.current_leader == Some(node.id)).then_some(metrics.current_term)
}

/// A node as the API shows it.
fn node_info(registry: &Registry, id: u64, record: &NodeRecord, heard_ms_ago: Option<u64>) -> v1::NodeInfo {
    let registration = &record.registration;
    v1::NodeInfo {
        id,
        address: registration.address.clone(),
        node_type: registration.node_type.name().to_owned(),
        zone: registration.zone.clone(),
        labels: registration.labels.clone().into_iter().collect(),
        cpu_millis: registration.capacity.cpu_millis,
        memory_mib: registration.capacity.memory_mib,
        features: registration.capacity.features.iter().cloned().collect(),
        status: record.status.name().to_owned(),
        draining: record.draining,
        placements: registry.assigned_to(id).count() as u64,
        registered_event: record.registered_event,
        status_event: record.status_event,
        heard_ms_ago,
    }
}

/// The `Nodes` service.
pub struct NodesService {
    node: Arc<NodeContext>,
}

impl NodesService {
    /// The tonic server for `node`.
    pub fn server(node: Arc<NodeContext>) -> nodes_server::NodesServer<Self> {
        nodes_server::NodesServer::new(Self { node })
            .max_decoding_message_size(docklock_proto::agreement::ENVELOPE_BYTES_MAX + 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    fn heartbeat_response(&self, id: u64) -> Result<v1::HeartbeatResponse, Status> {
        let applied = self.node.state.read();
        let registry = &applied.registry;
        let record = registry.node(id).ok_or_else(|| Status::not_found(format!("node {id} is not registered")))?;
        let (interval_ms, ttl_ms) = self.node.heartbeats.timing_for(registry);
        Ok(v1::HeartbeatResponse {
            interval_ms,
            ttl_ms,
            status: record.status.name().to_owned(),
            draining: record.draining,
        })
    }

    async fn change(
        &self,
        forwarded: bool,
        id: u64,
        command: Command,
        remote: impl AsyncFnOnce(NodesClient<tonic::transport::Channel>) -> Result<tonic::Response<v1::NodeInfo>, Status>,
    ) -> Result<tonic::Response<v1::NodeInfo>, Status> {
        let node = self.node.clone();
        signed_write(
            &self.node,
            forwarded,
            command,
            move |outcome| match outcome {
                Outcome::NodeChanged { .. } => {
                    let applied = node.state.read();
                    let registry = &applied.registry;
                    let record = registry.node(id).ok_or_else(|| unexpected_outcome("node change", &outcome))?;
                    Ok(node_info(registry, id, record, None))
                }
                other => Err(unexpected_outcome("node change", &other)),
            },
            |channel| remote(NodesClient::new(channel)),
        )
        .await
    }
}

#[tonic::async_trait]
impl nodes_server::Nodes for NodesService {
    async fn register(
        &self,
        request: tonic::Request<v1::RegisterWorkerRequest>,
    ) -> Result<tonic::Response<v1::HeartbeatResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let envelope = precheck_envelope(&message.envelope)?;
        let registration =
            NodeRegistration::decode(&envelope.message).map_err(|e| Status::invalid_argument(e.to_string()))?;
        verify(&envelope)?;
        let id = registration.node_id;
        // Heard from now, before the registration can commit: the liveness
        // duty must not see a registered node it has never heard of.
        if let Some(term) = leading_term(&self.node) {
            self.node.heartbeats.with(term, |liveness, now| liveness.heartbeat(id, now));
        }
        let command = Command::RegisterWorker { envelope: message.envelope.clone() };
        let node = self.node.clone();
        signed_write(
            &self.node,
            forwarded,
            command,
            move |outcome| match outcome {
                Outcome::NodeChanged { .. } => {
                    NodesService { node }.heartbeat_response(id).map_err(RegistryError::Status)
                }
                other => Err(unexpected_outcome("registration", &other)),
            },
            |channel| async move { NodesClient::new(channel).register(mark_forwarded(message)).await },
        )
        .await
    }

    async fn heartbeat(
        &self,
        request: tonic::Request<v1::HeartbeatRequest>,
    ) -> Result<tonic::Response<v1::HeartbeatResponse>, Status> {
        let message = request.into_inner();
        let Some(term) = leading_term(&self.node) else { return Err(not_leader(&self.node)) };
        if message.token.len() > TOKEN_BYTES_MAX {
            return Err(Status::invalid_argument(format!("heartbeat token over {TOKEN_BYTES_MAX} bytes")));
        }
        let id = message.node_id;
        {
            let applied = self.node.state.read();
            let record = applied.registry.node(id).ok_or_else(|| {
                Status::not_found(format!("node {id} is not registered; register before heartbeating"))
            })?;
            if record.status == NodeStatus::Left {
                return Err(Status::failed_precondition(format!("node {id} was removed")));
            }
            if NodeRegistration::token_digest(&message.token) != record.registration.heartbeat_digest {
                return Err(Status::unauthenticated(format!(
                    "heartbeat token does not match node {id}'s registration; register again"
                )));
            }
        }
        self.node.heartbeats.with(term, |liveness, now| liveness.heartbeat(id, now));
        Ok(tonic::Response::new(self.heartbeat_response(id)?))
    }

    async fn list(
        &self,
        request: tonic::Request<v1::ListNodesRequest>,
    ) -> Result<tonic::Response<v1::ListNodesResponse>, Status> {
        let counts_only = request.into_inner().counts_only;
        self.node.read_barrier().await.map_err(RegistryError::into_status)?;
        let term = leading_term(&self.node);
        let applied = self.node.state.read();
        let registry = &applied.registry;
        let heard =
            |id: u64| term.map(|term| self.node.heartbeats.with(term, |l, now| now - l.last_heard(id).min(now)));
        let nodes = if counts_only {
            Vec::new()
        } else {
            registry.nodes().map(|(id, record)| node_info(registry, *id, record, heard(*id))).collect()
        };
        let (interval_ms, ttl_ms) = self.node.heartbeats.timing_for(registry);
        Ok(tonic::Response::new(v1::ListNodesResponse {
            nodes,
            interval_ms,
            ttl_ms,
            unsettled: registry.unsettled_count() as u64,
            scheduling_paused: registry.scheduling_paused(),
            vnodes_per_core: registry.vnodes_per_core(),
        }))
    }

    async fn drain(
        &self,
        request: tonic::Request<v1::DrainNodeRequest>,
    ) -> Result<tonic::Response<v1::NodeInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let command = Command::DrainNode { node_id: message.id, drain: message.drain };
        self.change(forwarded, message.id, command, async move |mut client| client.drain(mark_forwarded(message)).await)
            .await
    }

    async fn remove(
        &self,
        request: tonic::Request<v1::RemoveNodeRequest>,
    ) -> Result<tonic::Response<v1::NodeInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let command = Command::RemoveNode { node_id: message.id };
        self.change(forwarded, message.id, command, async move |mut client| {
            client.remove(mark_forwarded(message)).await
        })
        .await
    }

    async fn set_scheduling(
        &self,
        request: tonic::Request<v1::SetSchedulingRequest>,
    ) -> Result<tonic::Response<v1::SchedulingInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let command = Command::SetScheduling { paused: message.paused };
        signed_write(&self.node, forwarded, command, scheduling_info, |channel| async move {
            NodesClient::new(channel).set_scheduling(mark_forwarded(message)).await
        })
        .await
    }

    async fn configure_ring(
        &self,
        request: tonic::Request<v1::ConfigureRingRequest>,
    ) -> Result<tonic::Response<v1::SchedulingInfo>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let command = Command::ConfigureRing { vnodes_per_core: message.vnodes_per_core };
        signed_write(&self.node, forwarded, command, scheduling_info, |channel| async move {
            NodesClient::new(channel).configure_ring(mark_forwarded(message)).await
        })
        .await
    }

    async fn assignments(
        &self,
        request: tonic::Request<v1::AssignmentsRequest>,
    ) -> Result<tonic::Response<v1::AssignmentsResponse>, Status> {
        let node = request.into_inner().node_id;
        let applied = self.node.state.read();
        let assignments = applied
            .registry
            .open_replicas(node)
            .into_iter()
            .map(|(id, attempt, revealed)| v1::Assignment { agreement_id: id.to_hex(), attempt, revealed })
            .collect();
        Ok(tonic::Response::new(v1::AssignmentsResponse { assignments }))
    }

    async fn placement(
        &self,
        request: tonic::Request<v1::PlacementRequest>,
    ) -> Result<tonic::Response<v1::PlacementResponse>, Status> {
        let message = request.into_inner();
        let id: AgreementId = parse_agreement_id(&message.agreement_id)?;
        if !message.stale {
            self.node.read_barrier().await.map_err(RegistryError::into_status)?;
        }
        let applied = self.node.state.read();
        let registry = &applied.registry;
        let record = registry.agreement(&id).ok_or_else(|| Status::not_found(format!("agreement {id} not found")))?;
        let now = registry.compute_placement(&id, false).expect("agreement exists");
        let fresh = registry.compute_placement(&id, true).expect("agreement exists");
        Ok(tonic::Response::new(v1::PlacementResponse {
            agreement_id: id.to_hex(),
            status: record.status.name().to_owned(),
            replicas: record.replicas,
            attempt: record.attempt,
            placed: record.placed.iter().map(|r| v1::ReplicaInfo { node: r.node, attempt: r.attempt }).collect(),
            lost: record.lost.iter().copied().collect(),
            pending_reason: record.pending.clone().unwrap_or_default(),
            key_point: format!("{:016x}", key_point(&id.0)),
            walk: fresh
                .steps
                .iter()
                .map(|step| v1::PlacementStep {
                    point: format!("{:016x}", step.point),
                    node: step.node,
                    decision: step.decision.to_string(),
                })
                .collect(),
            steps_omitted: fresh.steps_omitted as u64,
            would_add: now.added.clone(),
            from_scratch: fresh.nodes,
        }))
    }
}

fn scheduling_info(outcome: Outcome) -> Result<v1::SchedulingInfo, RegistryError> {
    match outcome {
        Outcome::Scheduling { paused, unsettled, vnodes_per_core } => {
            Ok(v1::SchedulingInfo { paused, unsettled, vnodes_per_core })
        }
        other => Err(unexpected_outcome("scheduler setting", &other)),
    }
}

/// Most `Reconcile` entries the liveness duty proposes per tick, back to
/// back (each re-places at most one batch).
const RECONCILES_PER_TICK: usize = 64;

/// The leader's liveness duty: every tick, commit the status changes the
/// heartbeats imply, and keep reconciling while agreements wait for a walk.
pub async fn liveness_duty(node: Arc<NodeContext>) {
    let mut ticks = tokio::time::interval(LIVENESS_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if node.raft.metrics().borrow().state == openraft::ServerState::Shutdown {
            return;
        }
        let Some(term) = leading_term(&node) else { continue };
        let (changes, reconcile, expired) = {
            let applied = node.state.read();
            let registry = &applied.registry;
            let (_, ttl) = node.heartbeats.timing_for(registry);
            let statuses = registry.nodes().map(|(id, record)| (*id, record.status));
            let changes = node.heartbeats.with(term, |liveness, now| liveness.changes(now, ttl, statuses));
            let open = registry.open_agreements().map(|(id, record)| (*id, record.timeout_secs));
            (changes, registry.reconcile_due(), node.heartbeats.expired(term, open))
        };
        for id in expired.into_iter().take(CHANGES_PER_TICK) {
            tracing::info!(agreement = %id, "deadline passed");
            if let Err(error) = node.write(Request { session: None, command: Command::TimeOut { id } }).await {
                tracing::debug!(?error, "time-out not committed; will retry");
            }
        }
        let writes = changes.into_iter().take(CHANGES_PER_TICK).map(|change| {
            let (node_id, status) = match change {
                Change::Down(id) => (id, NodeStatus::Down),
                Change::Ready(id) => (id, NodeStatus::Ready),
            };
            tracing::info!(node = node_id, status = status.name(), "liveness change");
            node.write(Request { session: None, command: Command::SetNodeStatus { node_id, status } })
        });
        for result in futures::future::join_all(writes).await {
            if let Err(error) = result {
                tracing::debug!(?error, "liveness change not committed; will retry");
            }
        }
        if !reconcile {
            continue;
        }
        for _ in 0..RECONCILES_PER_TICK {
            match node.write(Request { session: None, command: Command::Reconcile }).await {
                Ok(_) if node.state.read().registry.reconcile_due() => {}
                Ok(_) => break,
                Err(error) => {
                    tracing::debug!(?error, "reconcile not committed; will retry");
                    break;
                }
            }
        }
    }
}
