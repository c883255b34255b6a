//! The Raft transport over tonic: openraft's RPCs, encoded with bincode, in a
//! bounded gRPC envelope that names the sender's cluster.
//!
//! Error mapping: a peer that cannot be reached (refused, reset, timed out)
//! is openraft's `Unreachable`, which makes openraft back off; a request too
//! large for the envelope is `PayloadTooLarge` with a smaller entry count, so
//! openraft splits the batch; an error the remote Raft returned is a
//! `RemoteError`, a reply rather than a transport failure.
//!
//! Authentication: whoever can call this service can steer the cluster (ask
//! for votes at a high term, then append or install a snapshot of its
//! choosing), and the cluster id it checks is public. With a
//! [`PeerSecret`] every request and reply carries a tag keyed by it, and a
//! request without the right one is refused before it is decoded. Replays
//! need no defence here: Raft is correct over a network that duplicates and
//! reorders messages, and an old message carries an old term.

use std::error::Error;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use docklock_proto::v1::raft_client::RaftClient;
use docklock_proto::v1::raft_server;
use docklock_proto::v1::RaftMessage;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha3::{Digest as _, Sha3_256};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::types::{Node, NodeId, Raft, TypeConfig};

/// Largest Raft message on the wire, in bytes. openraft's snapshot chunks and
/// append batches are sized below it; a larger append batch is split.
pub const RAFT_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Snapshot chunk size handed to openraft, in bytes.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Pause before retrying an unreachable peer.
const UNREACHABLE_BACKOFF_MS: u64 = 200;
/// Time to connect to a peer.
const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// HTTP/2 keep-alive ping interval on peer connections (a ping unanswered
/// for twice this closes the connection).
const KEEPALIVE_MS: u64 = 1_000;

/// Shortest peer secret accepted, in bytes.
pub const PEER_SECRET_BYTES_MIN: usize = 32;
/// Longest peer secret file read, in bytes.
const PEER_SECRET_BYTES_MAX: usize = 4096;

/// The secret the members of one cluster share to authenticate each other's
/// Raft messages. A tag is SHA3-256 over the secret and the message (SHA3,
/// unlike SHA-2, has no length extension, so the keyed prefix is a MAC).
#[derive(Clone)]
pub struct PeerSecret(Arc<[u8]>);

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

impl PeerSecret {
    /// A secret of at least [`PEER_SECRET_BYTES_MIN`] bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if !(PEER_SECRET_BYTES_MIN..=PEER_SECRET_BYTES_MAX).contains(&bytes.len()) {
            return Err(format!(
                "a peer secret must be {PEER_SECRET_BYTES_MIN} to {PEER_SECRET_BYTES_MAX} bytes, got {} \
                 (make one with `head -c 32 /dev/urandom > peer.secret`)",
                bytes.len()
            ));
        }
        Ok(Self(bytes.into()))
    }

    /// The secret in the file at `path`, its bytes as they are.
    pub fn read(path: &Path) -> Result<Self, String> {
        use std::io::Read;
        let about = |e: &dyn std::fmt::Display| format!("peer secret file {}: {e}", path.display());
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|file| file.take(PEER_SECRET_BYTES_MAX as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| about(&e))?;
        Self::new(&bytes).map_err(|e| about(&e))
    }

    /// The tag of `message` as a request (`reply` false) or reply of `call`.
    pub fn tag(&self, call: &str, reply: bool, message: &RaftMessage) -> Vec<u8> {
        let mut hash = Sha3_256::new();
        let part = |hash: &mut Sha3_256, bytes: &[u8]| {
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        };
        part(&mut hash, b"docklock raft peer tag v1");
        part(&mut hash, &self.0);
        part(&mut hash, call.as_bytes());
        part(&mut hash, &[u8::from(reply)]);
        part(&mut hash, message.cluster_id.as_bytes());
        part(&mut hash, &message.from.to_be_bytes());
        part(&mut hash, &message.payload);
        hash.finalize().to_vec()
    }

    /// Whether `message` carries its tag (compared in constant time).
    fn verifies(&self, call: &str, reply: bool, message: &RaftMessage) -> bool {
        let expected = self.tag(call, reply, message);
        expected.len() == message.mac.len()
            && expected.iter().zip(&message.mac).fold(0u8, |differ, (a, b)| differ | (a ^ b)) == 0
    }
}

/// Creates a [`PeerClient`] per target; openraft calls it per replication
/// stream, per election and per linearizable read round.
///
/// Each peer's HTTP/2 channel is made once and shared by every client of it
/// (a channel multiplexes calls and reconnects by itself): openraft asks for
/// a new client at every read round, and a fresh channel per round cost a
/// TCP and HTTP/2 handshake to each follower per round — most of a
/// linearizable read's latency — and left a socket in TIME_WAIT per round.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    cluster_id: String,
    self_id: NodeId,
    secret: Option<PeerSecret>,
    local_address: Option<std::net::IpAddr>,
    /// Each peer's channel, with the address it dials.
    channels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<NodeId, (String, Channel)>>>,
}

impl NetworkFactory {
    /// Transport for node `self_id` of cluster `cluster_id`, dialing peers
    /// from `local_address` when given (the address the node listens on),
    /// tagging its messages with `secret` when given.
    pub fn new(
        cluster_id: String,
        self_id: NodeId,
        local_address: Option<std::net::IpAddr>,
        secret: Option<PeerSecret>,
    ) -> Self {
        Self { cluster_id, self_id, secret, local_address, channels: Default::default() }
    }

    /// The channel to `target` at `addr`: the shared one, or a new one if
    /// there is none yet or the peer's address changed.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some((known, channel)) = channels.get(&target) {
            if known == addr {
                return Ok(channel.clone());
            }
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map(|endpoint| {
                endpoint
                    .connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
                    .local_address(self.local_address)
                    .tcp_nodelay(true)
                    // A shared connection that went dead (a peer cut off by a
                    // partition) is noticed and replaced at the next call.
                    .http2_keep_alive_interval(Duration::from_millis(KEEPALIVE_MS))
                    .keep_alive_timeout(Duration::from_millis(KEEPALIVE_MS * 2))
                    .keep_alive_while_idle(true)
                    .connect_lazy()
            })
            .map_err(|e| e.to_string())?;
        channels.insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        PeerClient {
            target,
            node: node.clone(),
            channel: self.channel(target, &node.addr),
            cluster_id: self.cluster_id.clone(),
            self_id: self.self_id,
            secret: self.secret.clone(),
        }
    }
}

/// A connection to one peer.
pub struct PeerClient {
    target: NodeId,
    node: Node,
    channel: Result<Channel, String>,
    cluster_id: String,
    self_id: NodeId,
    secret: Option<PeerSecret>,
}

/// Why a call to a peer failed before the peer's Raft answered.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("peer {addr}: {status}")]
    Status { addr: String, status: Status },
    #[error("peer address {addr} is invalid: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error("message codec: {0}")]
    Codec(#[from] bincode::Error),
}

enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Method {
    /// Its name in a tag: a tagged message of one call is no good for another.
    fn name(&self) -> &'static str {
        match self {
            Method::AppendEntries => "AppendEntries",
            Method::Vote => "Vote",
            Method::InstallSnapshot => "InstallSnapshot",
        }
    }
}

impl PeerClient {
    async fn send<Req, Resp, E>(
        &mut self,
        method: Method,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let payload = bincode::serialize(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if payload.len() > RAFT_MESSAGE_BYTES_MAX {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(1)));
        }
        let reply = self.call(method, payload, option.hard_ttl()).await.map_err(|error| match &error {
            TransportError::Status { status, .. } if status.code() == Code::ResourceExhausted => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(1))
            }
            // Another cluster, or another peer secret: misconfigured, not unreachable.
            TransportError::Status { status, .. }
                if matches!(status.code(), Code::FailedPrecondition | Code::Unauthenticated) =>
            {
                RPCError::Network(NetworkError::new(&error))
            }
            _ => RPCError::Unreachable(Unreachable::new(&error)),
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node.clone(), e)))
    }

    async fn call(&mut self, method: Method, payload: Vec<u8>, ttl: Duration) -> Result<Vec<u8>, TransportError> {
        let addr = self.node.addr.clone();
        let channel = self
            .channel
            .as_ref()
            .map_err(|reason| TransportError::BadAddress { addr: addr.clone(), reason: reason.clone() })?
            .clone();
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX + 1024);
        let mut message = RaftMessage { cluster_id: self.cluster_id.clone(), from: self.self_id, payload, mac: vec![] };
        if let Some(secret) = &self.secret {
            message.mac = secret.tag(method.name(), false, &message);
        }
        let mut request = Request::new(message);
        request.set_timeout(ttl);
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| TransportError::Status { addr: addr.clone(), status })?.into_inner();
        if self.secret.as_ref().is_some_and(|secret| !secret.verifies(method.name(), true, &reply)) {
            let status = Status::unauthenticated("the reply does not carry this cluster's peer tag");
            return Err(TransportError::Status { addr, status });
        }
        Ok(reply.payload)
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        match self.send(Method::AppendEntries, &rpc, &option).await {
            // Halve the batch rather than give up: openraft retries with fewer.
            Err(RPCError::PayloadTooLarge(_)) if entries > 1 => {
                Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(entries / 2)))
            }
            other => other,
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>> {
        self.send(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.send(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(UNREACHABLE_BACKOFF_MS)))
    }
}

/// The server side of the transport: hands RPCs to the local Raft.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    cluster_id: String,
    self_id: NodeId,
    secret: Option<PeerSecret>,
}

impl RaftService {
    /// Serve `raft`, node `self_id`, for peers of `cluster_id` (holding
    /// `secret`, when given).
    pub fn new(raft: Raft, cluster_id: String, self_id: NodeId, secret: Option<PeerSecret>) -> Self {
        Self { raft, cluster_id, self_id, secret }
    }

    /// The tonic server for this service, with its message bound.
    pub fn into_server(self) -> raft_server::RaftServer<Self> {
        raft_server::RaftServer::new(self)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX + 1024)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX)
    }

    fn open<T: DeserializeOwned>(&self, method: &Method, request: Request<RaftMessage>) -> Result<T, Status> {
        let message = request.into_inner();
        if self.secret.as_ref().is_some_and(|secret| !secret.verifies(method.name(), false, &message)) {
            return Err(Status::unauthenticated(format!(
                "raft message claiming node {} does not carry this cluster's peer tag \
                 (every member needs the same --peer-secret-file)",
                message.from
            )));
        }
        if message.cluster_id != self.cluster_id {
            return Err(Status::failed_precondition(format!(
                "raft message from node {} of cluster {:?}; this node belongs to cluster {:?}",
                message.from, message.cluster_id, self.cluster_id
            )));
        }
        bincode::deserialize(&message.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message from node {}: {e}", message.from)))
    }

    fn seal<T: Serialize>(&self, method: &Method, reply: &T) -> Result<tonic::Response<RaftMessage>, Status> {
        let payload = bincode::serialize(reply).map_err(|e| Status::internal(format!("encode raft reply: {e}")))?;
        let mut message = RaftMessage { cluster_id: self.cluster_id.clone(), from: self.self_id, payload, mac: vec![] };
        if let Some(secret) = &self.secret {
            message.mac = secret.tag(method.name(), true, &message);
        }
        Ok(tonic::Response::new(message))
    }
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(&Method::AppendEntries, request)?;
        self.seal(&Method::AppendEntries, &self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        let rpc: VoteRequest<NodeId> = self.open(&Method::Vote, request)?;
        self.seal(&Method::Vote, &self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, request: Request<RaftMessage>) -> Result<tonic::Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(&Method::InstallSnapshot, request)?;
        self.seal(&Method::InstallSnapshot, &self.raft.install_snapshot(rpc).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tag names its secret, call, direction and every field; a message
    /// with any of them changed does not verify.
    #[test]
    fn a_tag_verifies_only_its_own_message() {
        let secret = PeerSecret::new(&[7; 32]).unwrap();
        let mut message = RaftMessage { cluster_id: "c".into(), from: 2, payload: b"vote".to_vec(), mac: vec![] };
        message.mac = secret.tag("Vote", false, &message);
        assert!(secret.verifies("Vote", false, &message));
        assert!(!secret.verifies("AppendEntries", false, &message), "another call");
        assert!(!secret.verifies("Vote", true, &message), "a reply");
        assert!(!PeerSecret::new(&[8; 32]).unwrap().verifies("Vote", false, &message), "another secret");
        for change in [
            &(|m: &mut RaftMessage| m.from = 3) as &dyn Fn(&mut RaftMessage),
            &|m| m.cluster_id.push('x'),
            &|m| m.payload[0] ^= 1,
            &|m| m.mac[31] ^= 1,
            &|m| m.mac.clear(),
        ] {
            let mut changed = message.clone();
            change(&mut changed);
            assert!(!secret.verifies("Vote", false, &changed));
        }
        let short = PeerSecret::new(&[1; 31]).unwrap_err();
        assert!(short.contains("32 to 4096 bytes, got 31"), "{short}");
    }
}
