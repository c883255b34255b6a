//! The Rust client SDK.
//!
//! A [`Client`] holds a list of endpoints. Each call goes to the last known
//! leader first, then to the endpoints in turn; an `UNAVAILABLE` answer that
//! names the leader is followed at once. Retries are bounded by
//! [`ClientOptions::attempts_max`] and [`ClientOptions::deadline`]. Writes
//! carry a [`v1::WriteSession`] that stays the same across retries, so a write
//! retried after a lost answer is applied once.
//!
//! ```no_run
//! # async fn example() -> Result<(), tonic::Status> {
//! use docklock_proto::client::{Client, ClientOptions};
//! let client = Client::new(vec!["127.0.0.1:7001".into()], ClientOptions::default())?;
//! client.put("config/region", b"eu-1".to_vec()).await?;
//! let kv = client.get("config/region", false).await?;
//! assert_eq!(kv.value, b"eu-1");
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::v1::cluster_client::ClusterClient;
use crate::v1::variables_client::VariablesClient;
use crate::v1::{self, cas_request, ReadConsistency};
use crate::LEADER_METADATA_KEY;

/// Largest message the client accepts or sends, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// How a client connects and retries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time to establish a connection to one endpoint.
    pub connect_timeout: Duration,
    /// Time one request attempt may take.
    pub request_timeout: Duration,
    /// Most attempts per call, across all endpoints.
    pub attempts_max: u32,
    /// Time one call may take, all attempts included.
    pub deadline: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            attempts_max: 12,
            deadline: Duration::from_secs(15),
        }
    }
}

/// Lazily connected channels by address, shared by every call to that address.
#[derive(Debug)]
pub struct ChannelCache {
    connect_timeout: Duration,
    request_timeout: Duration,
    local_address: Option<std::net::IpAddr>,
    channels: Mutex<BTreeMap<String, Channel>>,
}

impl ChannelCache {
    /// Channels with these timeouts.
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        Self { connect_timeout, request_timeout, local_address: None, channels: Mutex::new(BTreeMap::new()) }
    }

    /// Connect from `address` (a node dials from the address it listens on,
    /// so that a network partition between addresses cuts this path too).
    pub fn with_local_address(mut self, address: Option<std::net::IpAddr>) -> Self {
        self.local_address = address;
        self
    }

    /// The channel to `addr` (`host:port`), created on first use.
    pub fn get(&self, addr: &str) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channel cache lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::invalid_argument(format!("bad address {addr}: {e}")))?
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .local_address(self.local_address)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// A client of a DockLock cluster.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    options: ClientOptions,
    channels: ChannelCache,
    leader: Mutex<Option<String>>,
    client_id: String,
    serial: AtomicU64,
}

/// Pause between rounds over all endpoints, doubling up to a bound.
const BACKOFF_START_MS: u64 = 50;
const BACKOFF_MAX_MS: u64 = 800;

impl Client {
    /// A client for `endpoints` (`host:port`), tried in order.
    pub fn new(endpoints: Vec<String>, options: ClientOptions) -> Result<Self, Status> {
        if endpoints.is_empty() {
            return Err(Status::invalid_argument("no endpoints given"));
        }
        let client_id = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        Ok(Self {
            endpoints,
            channels: ChannelCache::new(options.connect_timeout, options.request_timeout),
            options,
            leader: Mutex::new(None),
            client_id,
            serial: AtomicU64::new(1),
        })
    }

    /// This client's id in write sessions.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A fresh write session; reuse it to retry the same write.
    pub fn next_session(&self) -> v1::WriteSession {
        v1::WriteSession { client_id: self.client_id.clone(), serial: self.serial.fetch_add(1, Ordering::Relaxed) }
    }

    fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.channels.get(addr)
    }

    /// The channel to the node at `addr` (for calls that must reach that
    /// node itself).
    pub fn channel_to(&self, addr: &str) -> Result<Channel, Status> {
        self.channels.get(addr)
    }

    /// Run `call` against the cluster with leader following and bounded retries.
    pub async fn call<R, F, Fut>(&self, call: F) -> Result<R, Status>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let started = Instant::now();
        let mut last_error = Status::unavailable("no attempt made");
        let mut backoff_ms = BACKOFF_START_MS;
        let mut attempts = 0;
        let mut next_endpoint = 0;
        let mut failed = std::collections::BTreeSet::new();
        while attempts < self.options.attempts_max && started.elapsed() < self.options.deadline {
            let leader = self.leader.lock().expect("leader lock").clone();
            let addr = match leader {
                Some(addr) => addr,
                None => {
                    let addr = self.endpoints[next_endpoint % self.endpoints.len()].clone();
                    next_endpoint += 1;
                    addr
                }
            };
            attempts += 1;
            match call(self.channel(&addr)?).await.map_err(|status| self.own_timeout_named(status, &addr)) {
                Ok(response) => {
                    *self.leader.lock().expect("leader lock") = Some(addr);
                    return Ok(response.into_inner());
                }
                Err(status) if retryable(&status) => {
                    // A hint naming a node that just failed us is stale (a
                    // dead leader that followers still name until they
                    // elect another): do not chase it, wait instead.
                    let hint = leader_hint(&status).filter(|hint| *hint != addr && !failed.contains(hint));
                    if leader_hint(&status).is_none() {
                        failed.insert(addr.clone());
                    }
                    let followed = hint.is_some();
                    if !followed && leader_hint(&status).is_some() {
                        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                        failed.clear();
                    }
                    *self.leader.lock().expect("leader lock") = hint;
                    last_error = status;
                    // A fresh leader hint is worth trying at once; a round of
                    // failures waits before the next round.
                    if !followed && next_endpoint % self.endpoints.len() == 0 {
                        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    }
                }
                Err(status) => return Err(status),
            }
        }
        Err(last_error)
    }

    /// tonic reports this client's own per-attempt timeout as CANCELLED
    /// ("Timeout expired"), a code that claims someone called the request
    /// off; gRPC's code for a deadline that passed is DEADLINE_EXCEEDED, and
    /// the message names the node that did not answer.
    fn own_timeout_named(&self, status: Status, addr: &str) -> Status {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&status);
        while let Some(error) = source {
            if error.is::<tonic::TimeoutExpired>() {
                return Status::deadline_exceeded(format!(
                    "{addr} did not answer within {:?}",
                    self.options.request_timeout
                ));
            }
            source = error.source();
        }
        status
    }

    fn variables(channel: Channel) -> VariablesClient<Channel> {
        VariablesClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    fn cluster(channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel)
    }

    /// Write `value` under `key`.
    pub async fn put(&self, key: &str, value: Vec<u8>) -> Result<v1::PutResponse, Status> {
        let request = v1::PutRequest { key: key.into(), value, session: Some(self.next_session()) };
        self.call(|ch| {
            let request = request.clone();
            async move { Self::variables(ch).put(request).await }
        })
        .await
    }

    /// Read `key`; `stale` allows an answer from any node's local state.
    pub async fn get(&self, key: &str, stale: bool) -> Result<v1::KeyValue, Status> {
        let request = v1::GetRequest { key: key.into(), consistency: consistency(stale) as i32 };
        let response = self
            .call(|ch| {
                let request = request.clone();
                async move { Self::variables(ch).get(request).await }
            })
            .await?;
        response.kv.ok_or_else(|| Status::internal("server answered a get without a value"))
    }

    /// Delete `key`; returns what it held, if anything.
    pub async fn delete(&self, key: &str) -> Result<v1::DeleteResponse, Status> {
        let request = v1::DeleteRequest { key: key.into(), session: Some(self.next_session()) };
        self.call(|ch| {
            let request = request.clone();
            async move { Self::variables(ch).delete(request).await }
        })
        .await
    }

    /// One page of keys under `prefix` after `start_after`.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: &str,
        limit: u32,
        stale: bool,
    ) -> Result<v1::ListResponse, Status> {
        let request = v1::ListRequest {
            prefix: prefix.into(),
            start_after: start_after.into(),
            limit,
            consistency: consistency(stale) as i32,
        };
        self.call(|ch| {
            let request = request.clone();
            async move { Self::variables(ch).list(request).await }
        })
        .await
    }

    /// Compare-and-set `key` to `value` if `expect` holds.
    pub async fn cas(&self, key: &str, expect: cas_request::Expect, value: Vec<u8>) -> Result<v1::CasResponse, Status> {
        let request =
            v1::CasRequest { key: key.into(), expect: Some(expect), value, session: Some(self.next_session()) };
        self.call(|ch| {
            let request = request.clone();
            async move { Self::variables(ch).cas(request).await }
        })
        .await
    }

    /// Status as seen by the first endpoint that answers.
    pub async fn status(&self) -> Result<v1::StatusResponse, Status> {
        self.call(|ch| async move { Self::cluster(ch).status(v1::StatusRequest {}).await }).await
    }

    /// Status of the node at `addr` itself, with no retry elsewhere.
    pub async fn status_of(&self, addr: &str) -> Result<v1::StatusResponse, Status> {
        Ok(Self::cluster(self.channel(addr)?).status(v1::StatusRequest {}).await?.into_inner())
    }

    /// Add a learner and wait until it has caught up.
    pub async fn add_learner(&self, id: u64, addr: &str, cluster_id: &str) -> Result<v1::MembershipResponse, Status> {
        let request = v1::AddLearnerRequest { id, addr: addr.into(), cluster_id: cluster_id.into() };
        self.call(|ch| {
            let request = request.clone();
            async move { Self::cluster(ch).add_learner(request).await }
        })
        .await
    }

    /// Promote a learner to voter.
    pub async fn promote(&self, id: u64) -> Result<v1::MembershipResponse, Status> {
        self.call(|ch| async move { Self::cluster(ch).promote(v1::PromoteRequest { id }).await }).await
    }

    /// Remove a member.
    pub async fn remove(&self, id: u64) -> Result<v1::MembershipResponse, Status> {
        self.call(|ch| async move { Self::cluster(ch).remove(v1::RemoveRequest { id }).await }).await
    }
}

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// Errors after which another attempt, possibly elsewhere, may succeed. Writes
/// are safe to retry because their session makes them idempotent.
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled)
}

/// The leader address a node put in an error, if any.
pub fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that accepts connections but never answers: each attempt ends
    /// at the client's own timeout, and the caller sees DEADLINE_EXCEEDED
    /// naming the node, not the CANCELLED tonic reports for it.
    #[tokio::test]
    async fn a_silent_node_is_a_deadline_exceeded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address").to_string();
        let held = tokio::spawn(async move {
            let mut accepted = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                accepted.push(socket);
            }
        });
        let options = ClientOptions {
            request_timeout: Duration::from_millis(200),
            deadline: Duration::from_millis(900),
            ..ClientOptions::default()
        };
        let client = Client::new(vec![addr.clone()], options).expect("client");
        let error = client.put("key", b"value".to_vec()).await.expect_err("a silent node cannot answer");
        assert_eq!(error.code(), Code::DeadlineExceeded, "{error:?}");
        assert!(error.message().contains(&addr), "{error:?}");
        held.abort();
    }
}
