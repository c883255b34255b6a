//! The public gRPC services `Cluster` and `Variables`, and what every
//! service shares ([`NodeContext`], forwarding to the leader).
//!
//! Each handler validates and bounds its input, then runs on the local Raft.
//! When this node is not the leader, the request is forwarded once to the
//! leader (marked with `x-docklock-forwarded` so it is never forwarded twice);
//! if that fails the client gets `UNAVAILABLE` with the leader hint.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use docklock_proto::client::ChannelCache;
use docklock_proto::crypto::KeyPair;
use docklock_proto::v1::cluster_client::ClusterClient;
use docklock_proto::v1::variables_client::VariablesClient;
use docklock_proto::v1::{self, cas_request, cluster_server, variables_server, MemberRole, ReadConsistency};
use docklock_proto::FORWARDED_METADATA_KEY;
use docklock_raft::proposer::Proposer;
use docklock_raft::registry::KEY_BYTES_MAX;
use docklock_raft::sessions::invalid_client_id;
use docklock_raft::store::StateView;
use docklock_raft::types::{Command, Expect, Node, NodeId, Outcome, Raft, Request, Response, Variable, WriteSession};
use openraft::{ChangeMembers, ServerState};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Status;

use crate::nodes_api::Heartbeats;
use crate::read_barrier::ReadBarrier;
use crate::status::{self, NotLeader, RegistryError};
use docklock_scheduler::liveness::Timing;

/// Size bounds of the public API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest variable value, in bytes.
    pub value_bytes_max: usize,
    /// Longest variable name, in bytes.
    pub key_bytes_max: usize,
    /// Default and largest page of a list, in entries.
    pub list_page_default: usize,
    /// Largest page of a list, in entries.
    pub list_page_max: usize,
    /// Largest list response, in value bytes.
    pub list_bytes_max: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            value_bytes_max: 1024 * 1024,
            key_bytes_max: 1024,
            list_page_default: 1_000,
            list_page_max: 10_000,
            list_bytes_max: 8 * 1024 * 1024,
        }
    }
}

impl ApiLimits {
    /// Largest request message the server decodes: a maximal value plus room
    /// for the key and envelope. Larger messages are refused before allocation.
    pub fn request_bytes_max(&self) -> usize {
        self.value_bytes_max * 2 + self.key_bytes_max + 64 * 1024
    }
}

/// Time a forwarded request may take.
const FORWARD_TIMEOUT_MS: u64 = 10_000;

/// How a node reaches others and how often workers must reach it.
#[derive(Debug, Clone, Copy)]
pub struct NetworkSettings {
    /// The address this node dials from (its listen address).
    pub local_address: Option<std::net::IpAddr>,
    /// Worker heartbeat timing.
    pub timing: Timing,
}

/// What the services share: this node's Raft, state and identity.
pub struct NodeContext {
    /// This node's id.
    pub id: NodeId,
    /// The cluster this node belongs to.
    pub cluster_id: String,
    /// The local Raft.
    pub raft: Raft,
    /// Applied state, for reads.
    pub state: StateView,
    /// API size bounds.
    pub limits: ApiLimits,
    /// This node's key: signs checkpoints and its own registration.
    pub key: Arc<KeyPair>,
    /// Workers' heartbeats, while this node leads.
    pub heartbeats: Heartbeats,
    reads: ReadBarrier,
    proposer: Proposer,
    leaders: ChannelCache,
}

impl NodeContext {
    /// Context for node `id` of `cluster_id`.
    pub fn new(
        id: NodeId,
        cluster_id: String,
        raft: Raft,
        state: StateView,
        limits: ApiLimits,
        key: KeyPair,
        network: NetworkSettings,
    ) -> Arc<Self> {
        let NetworkSettings { local_address, timing } = network;
        let reads = ReadBarrier::new(raft.clone());
        let proposer = Proposer::start(raft.clone());
        let leaders = ChannelCache::new(Duration::from_secs(1), Duration::from_millis(FORWARD_TIMEOUT_MS))
            .with_local_address(local_address);
        let heartbeats = Heartbeats::new(timing);
        Arc::new(Self { id, cluster_id, raft, state, limits, key: Arc::new(key), heartbeats, reads, proposer, leaders })
    }

    /// Propose a registry command and wait for its outcome.
    pub async fn write(&self, request: Request) -> Result<Response, RegistryError> {
        self.proposer.propose(request).await.map_err(status::propose_error)
    }

    /// Wait until a read of local state is linearizable.
    pub async fn read_barrier(&self) -> Result<(), RegistryError> {
        self.reads.wait().await
    }

    /// Run `local`; if another node leads, forward with `remote` once.
    pub(crate) async fn serve_or_forward<T, L, R, LF, RF>(
        &self,
        forwarded: bool,
        local: L,
        remote: R,
    ) -> Result<tonic::Response<T>, Status>
    where
        L: FnOnce() -> LF,
        LF: Future<Output = Result<T, RegistryError>>,
        R: FnOnce(Channel) -> RF,
        RF: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match local().await {
            Ok(reply) => Ok(tonic::Response::new(reply)),
            Err(RegistryError::NotLeader(NotLeader { leader: Some((leader_id, addr)) }))
                if !forwarded && leader_id != self.id =>
            {
                remote(self.leaders.get(&addr)?).await.map_err(|status| {
                    tracing::debug!(%status, leader = leader_id, "forwarding to the leader failed");
                    if status.code() == tonic::Code::Unavailable {
                        NotLeader { leader: Some((leader_id, addr)) }.into_status()
                    } else {
                        status
                    }
                })
            }
            Err(error) => Err(error.into_status()),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("key must not be empty"));
        }
        let bound = self.limits.key_bytes_max.min(KEY_BYTES_MAX);
        if key.len() > bound {
            return Err(Status::resource_exhausted(format!("key is {} bytes; the limit is {bound}", key.len())));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        let bound = self.limits.value_bytes_max;
        if value.len() > bound {
            return Err(Status::resource_exhausted(format!(
                "value is {} bytes; the limit is {bound} (agent flag --value-bytes-max)",
                value.len()
            )));
        }
        Ok(())
    }

    fn metrics(&self) -> openraft::RaftMetrics<NodeId, Node> {
        self.raft.metrics().borrow().clone()
    }
}

pub(crate) fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_METADATA_KEY)
}

pub(crate) fn mark_forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_METADATA_KEY, MetadataValue::from_static("1"));
    request
}

fn session(session: Option<v1::WriteSession>) -> Result<Option<WriteSession>, Status> {
    let Some(session) = session else { return Ok(None) };
    if let Some(reason) = invalid_client_id(&session.client_id) {
        return Err(Status::invalid_argument(reason));
    }
    Ok(Some(WriteSession { client_id: session.client_id, serial: session.serial }))
}

/// A write applied with an outcome its command cannot produce: a bug, not
/// bad input.
pub(crate) fn unexpected_outcome(operation: &str, outcome: &Outcome) -> RegistryError {
    Status::internal(format!("{operation} applied as {outcome:?}")).into()
}

fn key_value(key: &str, variable: Variable) -> v1::KeyValue {
    v1::KeyValue {
        key: key.to_owned(),
        value: variable.value,
        version: variable.version,
        create_revision: variable.create_revision,
        mod_revision: variable.mod_revision,
    }
}

fn variables_client(channel: Channel, limits: &ApiLimits) -> VariablesClient<Channel> {
    VariablesClient::new(channel)
        .max_decoding_message_size(limits.request_bytes_max() + limits.list_bytes_max)
        .max_encoding_message_size(limits.request_bytes_max())
}

/// The `Variables` service.
pub struct VariablesService {
    node: Arc<NodeContext>,
}

impl VariablesService {
    /// The tonic server for `node`, bounded by its limits.
    pub fn server(node: Arc<NodeContext>) -> variables_server::VariablesServer<Self> {
        let limits = node.limits.clone();
        variables_server::VariablesServer::new(Self { node })
            .max_decoding_message_size(limits.request_bytes_max())
            .max_encoding_message_size(limits.request_bytes_max() + limits.list_bytes_max)
    }

    async fn write_outcome(&self, key: &str, request: Request) -> Result<(u64, Outcome), RegistryError> {
        let response = self.node.write(request).await?;
        if let Some(refused) = status::refusal(&response.outcome, key) {
            return Err(refused.into());
        }
        Ok((response.revision, response.outcome))
    }

    /// Wait for a linearizable read point unless the read is stale.
    async fn read_point(&self, consistency: i32) -> Result<(), RegistryError> {
        match ReadConsistency::try_from(consistency) {
            Ok(ReadConsistency::Stale) => Ok(()),
            // The harness's deliberately broken build (see node/Cargo.toml).
            Ok(ReadConsistency::Linearizable) if cfg!(feature = "broken-stale-reads") => Ok(()),
            Ok(ReadConsistency::Linearizable) => self.node.read_barrier().await,
            Err(_) => Err(Status::invalid_argument(format!("unknown read consistency {consistency}")).into()),
        }
    }
}

#[tonic::async_trait]
impl variables_server::Variables for VariablesService {
    async fn put(&self, request: tonic::Request<v1::PutRequest>) -> Result<tonic::Response<v1::PutResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.node.check_key(&message.key)?;
        self.node.check_value(&message.value)?;
        let proposal = Request {
            session: session(message.session.clone())?,
            command: Command::Put { key: message.key.clone(), value: message.value.clone() },
        };
        let key = message.key.clone();
        self.node
            .serve_or_forward(
                forwarded,
                || async move {
                    match self.write_outcome(&key, proposal).await? {
                        (revision, Outcome::Written { current, prev }) => Ok(v1::PutResponse {
                            revision,
                            kv: Some(key_value(&key, current)),
                            prev: prev.map(|p| key_value(&key, p)),
                        }),
                        (_, other) => Err(unexpected_outcome("put", &other)),
                    }
                },
                |channel| async move {
                    variables_client(channel, &self.node.limits)
                        .put(mark_forwarded(message))
                        .await
                },
            )
            .await
    }

    async fn get(&self, request: tonic::Request<v1::GetRequest>) -> Result<tonic::Response<v1::GetResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.node.check_key(&message.key)?;
        let (key, consistency) = (message.key.clone(), message.consistency);
        self.node
            .serve_or_forward(
                forwarded,
                || async move {
                    self.read_point(consistency).await?;
                    let applied = self.node.state.read();
                    let variable = applied
                        .registry
                        .variable(&key)
                        .cloned()
                        .ok_or_else(|| Status::not_found(format!("key {key:?} not found")))?;
                    Ok(v1::GetResponse { kv: Some(key_value(&key, variable)), revision: applied.registry.revision() })
                },
                |channel| async move {
                    variables_client(channel, &self.node.limits)
                        .get(mark_forwarded(message))
                        .await
                },
            )
            .await
    }

    async fn delete(
        &self,
        request: tonic::Request<v1::DeleteRequest>,
    ) -> Result<tonic::Response<v1::DeleteResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.node.check_key(&message.key)?;
        let proposal = Request {
            session: session(message.session.clone())?,
            command: Command::Delete { key: message.key.clone() },
        };
        let key = message.key.clone();
        self.node
            .serve_or_forward(
                forwarded,
                || async move {
                    match self.write_outcome(&key, proposal).await? {
                        (revision, Outcome::Deleted { prev }) => Ok(v1::DeleteResponse {
                            revision,
                            prev: prev.map(|p| key_value(&key, p)),
                        }),
                        (_, other) => Err(unexpected_outcome("delete", &other)),
                    }
                },
                |channel| async move {
                    variables_client(channel, &self.node.limits)
                        .delete(mark_forwarded(message))
                        .await
                },
            )
            .await
    }

    async fn list(
        &self,
        request: tonic::Request<v1::ListRequest>,
    ) -> Result<tonic::Response<v1::ListResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let limits = &self.node.limits;
        if message.prefix.len() > limits.key_bytes_max || message.start_after.len() > limits.key_bytes_max {
            return Err(Status::resource_exhausted("prefix or start_after longer than the key limit"));
        }
        let page = match message.limit as usize {
            0 => limits.list_page_default,
            n if n > limits.list_page_max => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum page {}",
                    limits.list_page_max
                )))
            }
            n => n,
        };
        let (prefix, start_after, consistency) =
            (message.prefix.clone(), message.start_after.clone(), message.consistency);
        self.node
            .serve_or_forward(
                forwarded,
                || async move {
                    self.read_point(consistency).await?;
                    let applied = self.node.state.read();
                    let (entries, mut more) = applied.registry.list_variables(&prefix, &start_after, page);
                    let mut kvs = Vec::with_capacity(entries.len());
                    let mut bytes = 0;
                    for (key, variable) in entries {
                        bytes += key.len() + variable.value.len();
                        if bytes > limits.list_bytes_max && !kvs.is_empty() {
                            more = true;
                            break;
                        }
                        kvs.push(key_value(&key, variable));
                    }
                    Ok(v1::ListResponse { kvs, more, revision: applied.registry.revision() })
                },
                |channel| async move { variables_client(channel, limits).list(mark_forwarded(message)).await },
            )
            .await
    }

    async fn cas(&self, request: tonic::Request<v1::CasRequest>) -> Result<tonic::Response<v1::CasResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.node.check_key(&message.key)?;
        self.node.check_value(&message.value)?;
        let expect = match message.expect.clone() {
            Some(cas_request::Expect::ExpectValue(value)) => {
                self.node.check_value(&value)?;
                Expect::Value(value)
            }
            Some(cas_request::Expect::ExpectVersion(version)) => Expect::Version(version),
            Some(cas_request::Expect::ExpectAbsent(true)) => Expect::Absent,
            Some(cas_request::Expect::ExpectAbsent(false)) | None => {
                return Err(Status::invalid_argument("compare-and-set needs an expectation: value, version or absent"))
            }
        };
        let proposal = Request {
            session: session(message.session.clone())?,
            command: Command::Cas { key: message.key.clone(), expect, value: message.value.clone() },
        };
        let key = message.key.clone();
        self.node
            .serve_or_forward(
                forwarded,
                || async move {
                    match self.write_outcome(&key, proposal).await? {
                        (revision, Outcome::Written { current, .. }) => Ok(v1::CasResponse {
                            revision,
                            kv: Some(key_value(&key, current)),
                        }),
                        (_, other) => Err(unexpected_outcome("cas", &other)),
                    }
                },
                |channel| async move {
                    variables_client(channel, &self.node.limits)
                        .cas(mark_forwarded(message))
                        .await
                },
            )
            .await
    }
}

/// The `Cluster` service.
pub struct ClusterService {
    node: Arc<NodeContext>,
}

impl ClusterService {
    /// The tonic server for `node`.
    pub fn server(node: Arc<NodeContext>) -> cluster_server::ClusterServer<Self> {
        cluster_server::ClusterServer::new(Self { node })
    }

    fn members(&self) -> Vec<v1::Member> {
        members_of(&self.node.metrics())
    }

    fn check_node_id(id: u64) -> Result<(), Status> {
        if id == 0 {
            return Err(Status::invalid_argument("node id 0 is reserved; ids start at 1"));
        }
        Ok(())
    }

    /// The role of member `id`, or NOT_FOUND with `hint`.
    fn member_role(&self, id: u64, hint: &str) -> Result<MemberRole, Status> {
        Self::check_node_id(id)?;
        let members = self.members();
        let member = members.iter().find(|member| member.id == id);
        let member = member.ok_or_else(|| Status::not_found(format!("node {id} is not a member; {hint}")))?;
        Ok(MemberRole::try_from(member.role).unwrap_or(MemberRole::Unspecified))
    }

    async fn change(&self, change: ChangeMembers<NodeId, Node>) -> Result<v1::MembershipResponse, RegistryError> {
        let written = self.node.raft.change_membership(change, false).await.map_err(status::write_error)?;
        Ok(v1::MembershipResponse { index: written.log_id.index, members: self.members() })
    }
}

/// The members in `metrics`' membership, with matched indexes when leader.
pub fn members_of(metrics: &openraft::RaftMetrics<NodeId, Node>) -> Vec<v1::Member> {
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(id, node)| v1::Member {
            id: *id,
            addr: node.addr.clone(),
            role: if voters.contains(id) { MemberRole::Voter } else { MemberRole::Learner } as i32,
            matched_index: metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(id))
                .map(|matched| matched.map_or(0, |log_id| log_id.index)),
        })
        .collect()
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        _request: tonic::Request<v1::StatusRequest>,
    ) -> Result<tonic::Response<v1::StatusResponse>, Status> {
        let metrics = self.node.metrics();
        let membership = metrics.membership_config.membership();
        let leader_addr = metrics
            .current_leader
            .and_then(|leader| membership.get_node(&leader).map(|node| node.addr.clone()))
            .unwrap_or_default();
        Ok(tonic::Response::new(v1::StatusResponse {
            cluster_id: self.node.cluster_id.clone(),
            node_id: self.node.id,
            state: state_name(metrics.state).to_owned(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            leader_addr,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            snapshot_index: metrics.snapshot.map_or(0, |id| id.index),
            purged_index: metrics.purged.map_or(0, |id| id.index),
            members: members_of(&metrics),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: self.node.state.read().registry.revision(),
        }))
    }

    async fn add_learner(
        &self,
        request: tonic::Request<v1::AddLearnerRequest>,
    ) -> Result<tonic::Response<v1::MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        Self::check_node_id(message.id)?;
        if message.addr.is_empty() || message.addr.len() > 256 || message.addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Status::invalid_argument(format!("learner address {:?} is not HOST:PORT", message.addr)));
        }
        if !message.cluster_id.is_empty() && message.cluster_id != self.node.cluster_id {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to cluster {:?}, not {:?}",
                message.id, message.cluster_id, self.node.cluster_id
            )));
        }
        let metrics = self.node.metrics();
        let membership = metrics.membership_config.membership();
        if let Some(existing) = membership.get_node(&message.id) {
            if existing.addr != message.addr {
                return Err(Status::already_exists(format!(
                    "node {} is already a member at {}; remove it first to change its address",
                    message.id, existing.addr
                )));
            }
        }
        let (id, node) = (message.id, Node::new(message.addr.clone()));
        self.node
            .serve_or_forward(
                forwarded,
                || async move {
                    let written = self.node.raft.add_learner(id, node, true).await.map_err(status::write_error)?;
                    Ok(v1::MembershipResponse { index: written.log_id.index, members: self.members() })
                },
                |channel| async move { ClusterClient::new(channel).add_learner(mark_forwarded(message)).await },
            )
            .await
    }

    async fn promote(
        &self,
        request: tonic::Request<v1::PromoteRequest>,
    ) -> Result<tonic::Response<v1::MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        self.member_role(message.id, "add it as a learner first")?;
        let id = message.id;
        self.node
            .serve_or_forward(
                forwarded,
                || self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id]))),
                |channel| async move { ClusterClient::new(channel).promote(mark_forwarded(message)).await },
            )
            .await
    }

    async fn remove(
        &self,
        request: tonic::Request<v1::RemoveRequest>,
    ) -> Result<tonic::Response<v1::MembershipResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let role = self.member_role(message.id, "nothing to remove")?;
        let id = message.id;
        let change = if role == MemberRole::Voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.node
            .serve_or_forward(
                forwarded,
                || self.change(change),
                |channel| async move { ClusterClient::new(channel).remove(mark_forwarded(message)).await },
            )
            .await
    }
}
