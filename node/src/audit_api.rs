//! The public gRPC services of identities, agreements and the ledger.
//!
//! Signed requests are checked twice: here, for what needs no registry
//! state (encoding, bounds, spec validity, the signature), so junk never
//! reaches the log; and inside `apply`, for everything (the registry never
//! relies on this edge). Checks that need state (is the key registered, the
//! idempotency key new) are left to `apply`: a follower's state may lag, and
//! its refusal would be wrong.
//!
//! Ledger reads are served from this node's state without a read barrier:
//! every answer names the signed checkpoint it is bound to, so a lagging
//! node can give an older answer but never an unverifiable one.

use std::sync::Arc;
use std::time::Duration;

use docklock_proto::agreement::{AgreementId, Envelope, Spec};
use docklock_proto::crypto::Fingerprint;
use docklock_proto::identity::{IdentityChange, NodeKeyClaim};
use docklock_proto::ledger::{Checkpoint, Event};
use docklock_proto::merkle;
use docklock_proto::v1::agreements_client::AgreementsClient;
use docklock_proto::v1::identities_client::IdentitiesClient;
use docklock_proto::v1::{self, agreements_server, identities_server, ledger_server};
use docklock_raft::agreements::{AgreementRecord, AgreementStatus};
use docklock_raft::types::{Command, Outcome, Request};
use tonic::Status;

use crate::api::{is_forwarded, mark_forwarded, unexpected_outcome, NodeContext};
use crate::status::{self, RegistryError};

/// Largest signed request message (an envelope plus framing).
const SIGNED_REQUEST_BYTES_MAX: usize = docklock_proto::agreement::ENVELOPE_BYTES_MAX + 1024;
/// Default and largest page of agreements or events.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1_000;
/// Largest events response, in event bytes.
const EVENTS_BYTES_MAX: usize = 8 * 1024 * 1024;
/// How long an inclusion proof waits for a checkpoint covering its event.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);
/// How long a watch waits between status checks when nothing is applied.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Most watch streams a node serves at once; more are refused with
/// RESOURCE_EXHAUSTED.
const WATCHES_MAX: usize = 1_024;

fn invalid(error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(error.to_string())
}

/// Decode an envelope at the edge: size, encoding, signature.
pub(crate) fn precheck_envelope(bytes: &[u8]) -> Result<Envelope, Status> {
    if bytes.len() > docklock_proto::agreement::ENVELOPE_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "envelope is {} bytes, more than {}",
            bytes.len(),
            docklock_proto::agreement::ENVELOPE_BYTES_MAX
        )));
    }
    let envelope = Envelope::decode(bytes).map_err(invalid)?;
    Ok(envelope)
}

pub(crate) fn verify(envelope: &Envelope) -> Result<(), Status> {
    envelope.verify().map_err(|error| Status::unauthenticated(error.to_string()))
}

pub(crate) fn parse_agreement_id(text: &str) -> Result<AgreementId, Status> {
    AgreementId::from_hex(text).map_err(Status::invalid_argument)
}

/// Run a signed write on the leader (forwarding once) and return its outcome.
pub(crate) async fn signed_write<T, F, RF>(
    node: &NodeContext,
    forwarded: bool,
    command: Command,
    accept: impl FnOnce(Outcome) -> Result<T, RegistryError>,
    remote: F,
) -> Result<tonic::Response<T>, Status>
where
    F: FnOnce(tonic::transport::Channel) -> RF,
    RF: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    node.serve_or_forward(
        forwarded,
        || async move {
            let response = node.write(Request { session: None, command }).await?;
            if let Some(refused) = status::refusal(&response.outcome, "") {
                return Err(refused.into());
            }
            accept(response.outcome)
        },
        remote,
    )
    .await
}

/// The `Identities` service.
pub struct IdentitiesService {
    node: Arc<NodeContext>,
}

impl IdentitiesService {
    /// The tonic server for `node`.
    pub fn server(node: Arc<NodeContext>) -> identities_server::IdentitiesServer<Self> {
        identities_server::IdentitiesServer::new(Self { node })
            .max_decoding_message_size(SIGNED_REQUEST_BYTES_MAX)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

fn identity_changed(outcome: Outcome) -> Result<v1::ChangeIdentityResponse, RegistryError> {
    match outcome {
        Outcome::IdentityChanged { fingerprint, epoch } => {
            Ok(v1::ChangeIdentityResponse { fingerprint: fingerprint.to_hex(), epoch })
        }
        other => Err(unexpected_outcome("identity change", &other)),
    }
}

#[tonic::async_trait]
impl identities_server::Identities for IdentitiesService {
    async fn list(
        &self,
        _request: tonic::Request<v1::ListIdentitiesRequest>,
    ) -> Result<tonic::Response<v1::ListIdentitiesResponse>, Status> {
        self.node.read_barrier().await.map_err(RegistryError::into_status)?;
        let applied = self.node.state.read();
        let registry = &applied.registry;
        let identities = registry
            .identities()
            .map(|(fingerprint, record)| v1::IdentityInfo {
                fingerprint: fingerprint.to_hex(),
                algorithm: record.key.algorithm().name().to_owned(),
                public_key: record.key.as_bytes().to_vec(),
                role: record.role.name().to_owned(),
                node_id: record.node_id,
                revoked: record.revoked,
                added_event: record.added_event,
                revoked_event: record.revoked_event,
            })
            .collect();
        Ok(tonic::Response::new(v1::ListIdentitiesResponse {
            identities,
            epoch: registry.identity_epoch(),
            cluster_id: registry.cluster_id().unwrap_or_default().to_owned(),
        }))
    }

    async fn change(
        &self,
        request: tonic::Request<v1::ChangeIdentityRequest>,
    ) -> Result<tonic::Response<v1::ChangeIdentityResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let envelope = precheck_envelope(&message.envelope)?;
        IdentityChange::decode(&envelope.message).map_err(invalid)?;
        verify(&envelope)?;
        let command = Command::ChangeIdentity { envelope: message.envelope.clone() };
        signed_write(&self.node, forwarded, command, identity_changed, |channel| async move {
            IdentitiesClient::new(channel).change(mark_forwarded(message)).await
        })
        .await
    }

    async fn register_node(
        &self,
        request: tonic::Request<v1::RegisterNodeRequest>,
    ) -> Result<tonic::Response<v1::ChangeIdentityResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let envelope = precheck_envelope(&message.envelope)?;
        NodeKeyClaim::decode(&envelope.message).map_err(invalid)?;
        verify(&envelope)?;
        let command = Command::RegisterNode { envelope: message.envelope.clone() };
        signed_write(&self.node, forwarded, command, identity_changed, |channel| async move {
            IdentitiesClient::new(channel).register_node(mark_forwarded(message)).await
        })
        .await
    }
}

/// The `Agreements` service.
pub struct AgreementsService {
    node: Arc<NodeContext>,
    /// One permit per open watch stream.
    watches: Arc<tokio::sync::Semaphore>,
}

impl AgreementsService {
    /// The tonic server for `node`.
    pub fn server(node: Arc<NodeContext>) -> agreements_server::AgreementsServer<Self> {
        let watches = Arc::new(tokio::sync::Semaphore::new(WATCHES_MAX));
        agreements_server::AgreementsServer::new(Self { node, watches })
            .max_decoding_message_size(SIGNED_REQUEST_BYTES_MAX)
            .max_encoding_message_size(64 * 1024 * 1024)
    }
}

fn page_size(limit: u32) -> Result<usize, Status> {
    match limit as usize {
        0 => Ok(PAGE_DEFAULT),
        n if n > PAGE_MAX => Err(Status::invalid_argument(format!("limit {n} is over the maximum page {PAGE_MAX}"))),
        n => Ok(n),
    }
}

/// An agreement as the API shows it; with the envelope and spec when
/// `envelope` is given.
fn agreement_info(id: &AgreementId, record: &AgreementRecord, envelope: Option<Vec<u8>>) -> v1::AgreementInfo {
    let spec_yaml = envelope
        .as_deref()
        .and_then(|bytes| Envelope::decode(bytes).ok())
        .and_then(|envelope| Spec::decode(&envelope.message).ok())
        .map(|spec| spec.to_yaml())
        .unwrap_or_default();
    v1::AgreementInfo {
        id: id.to_hex(),
        status: record.status.name().to_owned(),
        signer: record.signer.to_hex(),
        idempotency_key: record.idempotency_key.clone(),
        event_index: record.event_index,
        replicas: record.replicas,
        labels: record.labels.clone().into_iter().collect(),
        envelope: envelope.unwrap_or_default(),
        spec_yaml,
        attempt: record.attempt,
        placed: record.placed.iter().map(|r| v1::ReplicaInfo { node: r.node, attempt: r.attempt }).collect(),
        pending_reason: record.pending.clone().unwrap_or_default(),
        failure: record.failure.as_ref().map(|(node, reason)| format!("node {node}: {reason}")).unwrap_or_default(),
        runs: record
            .runs
            .iter()
            .map(|(node, run)| {
                let revealed = run.revealed.as_ref();
                v1::RunInfo {
                    node: *node,
                    attempt: run.attempt,
                    commitment: hex::encode(run.commitment),
                    root: revealed.map(|r| hex::encode(r.root)).unwrap_or_default(),
                    verdict: revealed.map(|r| r.verdict.clone()).unwrap_or_default(),
                    stdout: revealed.map(|r| r.stdout.to_string()).unwrap_or_default(),
                    witness: revealed.map(|r| r.witness.to_string()).unwrap_or_default(),
                    outputs: revealed
                        .map(|r| r.outputs.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
                        .unwrap_or_default(),
                }
            })
            .collect(),
        history: record
            .history
            .iter()
            .map(|(status, event_index)| v1::StatusChange {
                status: status.name().to_owned(),
                event_index: *event_index,
            })
            .collect(),
    }
}

impl AgreementsService {
    /// The agreement with its envelope, read from its ledger event.
    fn full_info(&self, id: &AgreementId) -> Result<v1::AgreementInfo, Status> {
        let record = {
            let applied = self.node.state.read();
            applied
                .registry
                .agreement(id)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("agreement {id} not found")))?
        };
        let event = self.node.state.ledger().event(record.event_index).map_err(|e| Status::internal(e.to_string()))?;
        let envelope = match Event::decode(&event).map(|event| event.body) {
            Ok(docklock_proto::ledger::EventBody::AgreementAdmitted { envelope, .. }) => envelope,
            _ => return Err(Status::internal(format!("ledger event {} is not agreement {id}", record.event_index))),
        };
        Ok(agreement_info(id, &record, Some(envelope)))
    }
}

type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::AgreementInfo, Status>> + Send>>;

#[tonic::async_trait]
impl agreements_server::Agreements for AgreementsService {
    async fn submit(
        &self,
        request: tonic::Request<v1::SubmitAgreementRequest>,
    ) -> Result<tonic::Response<v1::SubmitAgreementResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let envelope = precheck_envelope(&message.envelope)?;
        Spec::decode(&envelope.message).map_err(|error| match error {
            docklock_proto::agreement::SpecError::TooLarge(_) => Status::resource_exhausted(error.to_string()),
            _ => invalid(error),
        })?;
        verify(&envelope)?;
        let command = Command::SubmitAgreement { envelope: message.envelope.clone() };
        let accept = |outcome| match outcome {
            Outcome::Admitted { id, event_index } => Ok(v1::SubmitAgreementResponse { id: id.to_hex(), event_index }),
            other => Err(unexpected_outcome("agreement submission", &other)),
        };
        signed_write(&self.node, forwarded, command, accept, |channel| async move {
            AgreementsClient::new(channel)
                .max_encoding_message_size(SIGNED_REQUEST_BYTES_MAX)
                .submit(mark_forwarded(message))
                .await
        })
        .await
    }

    async fn get(
        &self,
        request: tonic::Request<v1::GetAgreementRequest>,
    ) -> Result<tonic::Response<v1::AgreementInfo>, Status> {
        let id = parse_agreement_id(&request.get_ref().id)?;
        self.node.read_barrier().await.map_err(RegistryError::into_status)?;
        self.full_info(&id).map(tonic::Response::new)
    }

    async fn list(
        &self,
        request: tonic::Request<v1::ListAgreementsRequest>,
    ) -> Result<tonic::Response<v1::ListAgreementsResponse>, Status> {
        let message = request.into_inner();
        let limit = page_size(message.limit)?;
        let signer = match message.signer.as_str() {
            "" => None,
            text => Some(Fingerprint::from_hex(text).map_err(Status::invalid_argument)?),
        };
        let status = match message.status.as_str() {
            "" => None,
            text => Some(
                AgreementStatus::ALL
                    .into_iter()
                    .find(|status| status.name() == text)
                    .ok_or_else(|| Status::invalid_argument(format!("unknown status {text:?}")))?,
            ),
        };
        let start_after = match message.start_after.as_str() {
            "" => None,
            text => Some(parse_agreement_id(text)?),
        };
        self.node.read_barrier().await.map_err(RegistryError::into_status)?;
        let applied = self.node.state.read();
        let (page, more) = applied.registry.list_agreements(start_after, signer, status, limit);
        let agreements = page.iter().map(|(id, record)| agreement_info(id, record, None)).collect();
        Ok(tonic::Response::new(v1::ListAgreementsResponse { agreements, more }))
    }

    async fn report(
        &self,
        request: tonic::Request<v1::ReportRunRequest>,
    ) -> Result<tonic::Response<v1::ReportRunResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let message = request.into_inner();
        let envelope = precheck_envelope(&message.envelope)?;
        docklock_proto::report::RunReport::decode(&envelope.message).map_err(invalid)?;
        verify(&envelope)?;
        let command = Command::ReportRun { envelope: message.envelope.clone() };
        let accept = |outcome| match outcome {
            Outcome::RunReported { status } => Ok(v1::ReportRunResponse { status: status.name().to_owned() }),
            other => Err(unexpected_outcome("run report", &other)),
        };
        signed_write(&self.node, forwarded, command, accept, |channel| async move {
            AgreementsClient::new(channel)
                .max_encoding_message_size(SIGNED_REQUEST_BYTES_MAX)
                .report(mark_forwarded(message))
                .await
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<v1::WatchAgreementRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        let message = request.into_inner();
        let id = parse_agreement_id(&message.id)?;
        self.node.read_barrier().await.map_err(RegistryError::into_status)?;
        let first = self.full_info(&id)?;
        let node = self.node.clone();
        let follow = message.follow;
        // Held by the stream: released when the client goes away.
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!("this node already serves {WATCHES_MAX} watch streams; retry later"))
        })?;
        let stream = async_stream(first, follow, move |seen| {
            let node = node.clone();
            // Naming the permit makes the closure own it, so it lives as
            // long as the stream.
            let _held = &permit;
            async move {
                let mut metrics = node.raft.metrics();
                loop {
                    let history_len = {
                        let applied = node.state.read();
                        applied.registry.agreement(&id).map_or(0, |record| record.history.len())
                    };
                    if history_len > seen {
                        let applied = node.state.read();
                        let record = applied.registry.agreement(&id)?.clone();
                        return Some(agreement_info(&id, &record, None));
                    }
                    // Wake on the next applied change, or poll: the stream
                    // ends when the client goes away and tonic drops it, or
                    // when raft stops.
                    if let Ok(Err(_)) = tokio::time::timeout(WATCH_POLL, metrics.changed()).await {
                        return None;
                    }
                }
            }
        });
        Ok(tonic::Response::new(stream))
    }
}

/// A stream that yields `first`, then (when `follow`) each newer status from
/// `next(seen_history_len)`.
fn async_stream<F, Fut>(first: v1::AgreementInfo, follow: bool, next: F) -> WatchStream
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<v1::AgreementInfo>> + Send,
{
    let seen = first.history.len();
    let head = futures::stream::once(async move { Ok(first) });
    if !follow {
        return Box::pin(head);
    }
    let next = Arc::new(next);
    let tail = futures::stream::unfold(seen, move |seen| {
        let next = next.clone();
        async move {
            let info = next(seen).await?;
            let seen = info.history.len();
            Some((Ok(info), seen))
        }
    });
    Box::pin(futures::StreamExt::chain(head, tail))
}

/// The `Ledger` service.
pub struct LedgerService {
    node: Arc<NodeContext>,
}

impl LedgerService {
    /// The tonic server for `node`.
    pub fn server(node: Arc<NodeContext>) -> ledger_server::LedgerServer<Self> {
        ledger_server::LedgerServer::new(Self { node }).max_encoding_message_size(64 * 1024 * 1024)
    }

    /// The latest checkpoint and the ledger size on this node.
    fn heads(&self) -> (Option<Checkpoint>, u64) {
        let applied = self.node.state.read();
        let ledger = applied.registry.ledger();
        (ledger.latest_checkpoint().cloned(), ledger.size())
    }

    fn checkpoint_of_size(&self, size: u64) -> Result<Checkpoint, Status> {
        self.node
            .state
            .ledger()
            .checkpoint(size)
            .map_err(storage)?
            .ok_or_else(|| Status::not_found(format!("no checkpoint of tree size {size} was recorded")))
    }

    /// The first checkpoint covering `size` events, waiting briefly for the
    /// leader to issue one.
    async fn checkpoint_covering(&self, size: u64) -> Result<Checkpoint, Status> {
        let deadline = tokio::time::Instant::now() + CHECKPOINT_WAIT;
        let mut metrics = self.node.raft.metrics();
        loop {
            let (latest, _) = self.heads();
            let latest_size = latest.as_ref().map_or(0, |c| c.tree_size);
            if latest_size >= size {
                if let Some(checkpoint) =
                    self.node.state.ledger().checkpoint_covering(size, latest_size).map_err(storage)?
                {
                    return Ok(checkpoint);
                }
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Status::unavailable("this node is shutting down")),
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "no checkpoint covers {size} events yet (latest covers {latest_size}); retry shortly"
                    )))
                }
            }
        }
    }
}

fn storage(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("ledger storage: {error}"))
}

fn checkpoint_json(checkpoint: &Checkpoint) -> String {
    serde_json::to_string(checkpoint).expect("checkpoint encodes")
}

#[tonic::async_trait]
impl ledger_server::Ledger for LedgerService {
    async fn checkpoint(
        &self,
        request: tonic::Request<v1::CheckpointRequest>,
    ) -> Result<tonic::Response<v1::CheckpointResponse>, Status> {
        let checkpoint = match request.get_ref().tree_size {
            Some(size) => self.checkpoint_of_size(size)?,
            None => self.heads().0.ok_or_else(|| Status::not_found("no checkpoint has been issued yet"))?,
        };
        Ok(tonic::Response::new(v1::CheckpointResponse { checkpoint_json: checkpoint_json(&checkpoint) }))
    }

    async fn events(
        &self,
        request: tonic::Request<v1::EventsRequest>,
    ) -> Result<tonic::Response<v1::EventsResponse>, Status> {
        let message = request.into_inner();
        let limit = page_size(message.limit)? as u64;
        let (_, size) = self.heads();
        let end = message.start.saturating_add(limit).min(size);
        let mut events = Vec::new();
        let mut bytes = 0;
        for index in message.start..end {
            let event = self.node.state.ledger().event(index).map_err(storage)?;
            bytes += event.len();
            if bytes > EVENTS_BYTES_MAX && !events.is_empty() {
                break;
            }
            let kind = Event::decode(&event).map(|e| e.body.kind()).unwrap_or("undecodable");
            events.push(v1::LedgerEvent { index, event, kind: kind.to_owned() });
        }
        Ok(tonic::Response::new(v1::EventsResponse { events, size }))
    }

    async fn inclusion_proof(
        &self,
        request: tonic::Request<v1::InclusionProofRequest>,
    ) -> Result<tonic::Response<v1::InclusionProofResponse>, Status> {
        let message = request.into_inner();
        let (_, size) = self.heads();
        if message.index >= size {
            return Err(Status::not_found(format!("event {} does not exist; the ledger holds {size}", message.index)));
        }
        let checkpoint = match message.tree_size {
            Some(tree_size) if tree_size <= message.index => {
                return Err(Status::invalid_argument(format!(
                    "tree size {tree_size} does not include event {}",
                    message.index
                )))
            }
            Some(tree_size) => self.checkpoint_of_size(tree_size)?,
            None => self.checkpoint_covering(message.index + 1).await?,
        };
        let ledger = self.node.state.ledger();
        let proof = merkle::inclusion_proof(ledger, message.index, checkpoint.tree_size).map_err(storage)?;
        Ok(tonic::Response::new(v1::InclusionProofResponse {
            event: ledger.event(message.index).map_err(storage)?,
            proof: proof.iter().map(|hash| hash.to_vec()).collect(),
            checkpoint_json: checkpoint_json(&checkpoint),
        }))
    }

    async fn consistency_proof(
        &self,
        request: tonic::Request<v1::ConsistencyProofRequest>,
    ) -> Result<tonic::Response<v1::ConsistencyProofResponse>, Status> {
        let message = request.into_inner();
        let checkpoint = match message.new_size {
            Some(size) => self.checkpoint_of_size(size)?,
            None => self.heads().0.ok_or_else(|| Status::not_found("no checkpoint has been issued yet"))?,
        };
        if message.old_size == 0 || message.old_size > checkpoint.tree_size {
            return Err(Status::invalid_argument(format!(
                "old size {} must be between 1 and the checkpoint's {}",
                message.old_size, checkpoint.tree_size
            )));
        }
        let proof = merkle::consistency_proof(self.node.state.ledger(), message.old_size, checkpoint.tree_size)
            .map_err(storage)?;
        Ok(tonic::Response::new(v1::ConsistencyProofResponse {
            proof: proof.iter().map(|hash| hash.to_vec()).collect(),
            checkpoint_json: checkpoint_json(&checkpoint),
        }))
    }

    async fn chain_head(
        &self,
        request: tonic::Request<v1::ChainHeadRequest>,
    ) -> Result<tonic::Response<v1::ChainHeadResponse>, Status> {
        let (_, size) = self.heads();
        let wanted = request.get_ref().size.unwrap_or(size);
        if wanted > size {
            return Err(Status::out_of_range(format!("this node's ledger holds {size} events, not {wanted}")));
        }
        let head = self.node.state.ledger().chain_head(wanted).map_err(storage)?;
        Ok(tonic::Response::new(v1::ChainHeadResponse { size: wanted, chain_head: head.to_vec() }))
    }
}
