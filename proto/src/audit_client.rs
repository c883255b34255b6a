//! The client SDK for identities, agreements and the ledger.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use docklock_proto::agreement::{Envelope, Spec};
//! use docklock_proto::client::{Client, ClientOptions};
//! use docklock_proto::crypto::{Algorithm, KeyPair};
//!
//! let key = KeyPair::generate(Algorithm::MlDsa65);
//! let spec = Spec::from_yaml(&std::fs::read_to_string("job.yaml")?)?;
//! let envelope = Envelope::sign(spec.canonical(), &key);
//! let client = Client::new(vec!["127.0.0.1:7001".into()], ClientOptions::default())?;
//! let submitted = client.submit_agreement(&envelope).await?;
//! // A self-contained proof of the admission, checked here with no network.
//! let bundle = client.inclusion_bundle(submitted.event_index).await?;
//! let verified = bundle.verify(&[])?;
//! println!("agreement {} is event {} of checkpoint {}", submitted.id, verified.event.index,
//!     verified.checkpoint.tree_size);
//! # Ok(()) }
//! ```

use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::agreement::{AgreementId, Envelope};
use crate::client::{Client, MESSAGE_BYTES_MAX};
use crate::crypto::KeyPair;
use crate::identity::{ChangeKind, IdentityChange};
use crate::ledger::{Bundle, Checkpoint, Event};
use crate::merkle::{self, Hash};
use crate::v1;
use crate::v1::agreements_client::AgreementsClient;
use crate::v1::identities_client::IdentitiesClient;
use crate::v1::ledger_client::LedgerClient;
use crate::AGREEMENT_ID_METADATA_KEY;

/// An admitted agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// Its id.
    pub id: AgreementId,
    /// The ledger event that admitted it.
    pub event_index: u64,
    /// Whether it existed already (a repeated submission, or a retry whose
    /// first answer was lost).
    pub existed: bool,
}

/// Times an identity change is re-signed when another change won the epoch.
const EPOCH_RETRIES: u32 = 3;

fn agreements(channel: Channel) -> AgreementsClient<Channel> {
    AgreementsClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

fn identities(channel: Channel) -> IdentitiesClient<Channel> {
    IdentitiesClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

fn ledger(channel: Channel) -> LedgerClient<Channel> {
    LedgerClient::new(channel).max_decoding_message_size(MESSAGE_BYTES_MAX)
}

fn parse_checkpoint(json: &str) -> Result<Checkpoint, Status> {
    serde_json::from_str(json).map_err(|e| Status::internal(format!("server sent an unreadable checkpoint: {e}")))
}

fn hashes(proof: &[Vec<u8>]) -> Result<Vec<Hash>, Status> {
    proof
        .iter()
        .map(|bytes| {
            Hash::try_from(bytes.as_slice())
                .map_err(|_| Status::internal("server sent a proof hash of the wrong length"))
        })
        .collect()
}

impl Client {
    /// Submit a signed agreement. A repeat of an admitted agreement — the
    /// same spec by the same signer, even signed again (ML-DSA signatures
    /// are randomised) — is success with `existed` and the first id; another
    /// spec under an idempotency key already used is `ALREADY_EXISTS`.
    pub async fn submit_agreement(&self, envelope: &Envelope) -> Result<Submitted, Status> {
        let request = v1::SubmitAgreementRequest { envelope: envelope.canonical() };
        let answer = self
            .call(|ch| {
                let request = request.clone();
                async move { agreements(ch).submit(request).await }
            })
            .await;
        match answer {
            Ok(response) => Ok(Submitted {
                id: AgreementId::from_hex(&response.id).map_err(Status::internal)?,
                event_index: response.event_index,
                existed: false,
            }),
            Err(status) if status.code() == Code::AlreadyExists => {
                let Some(existing) = existing_id(&status) else { return Err(status) };
                let info = self.get_agreement(&existing).await?;
                let same = Envelope::decode(&info.envelope)
                    .is_ok_and(|first| first.message == envelope.message && first.signer == envelope.signer);
                if same {
                    Ok(Submitted { id: existing, event_index: info.event_index, existed: true })
                } else {
                    Err(status)
                }
            }
            Err(status) => Err(status),
        }
    }

    /// An agreement, with its envelope and spec.
    pub async fn get_agreement(&self, id: &AgreementId) -> Result<v1::AgreementInfo, Status> {
        let request = v1::GetAgreementRequest { id: id.to_hex() };
        self.call(|ch| {
            let request = request.clone();
            async move { agreements(ch).get(request).await }
        })
        .await
    }

    /// One page of agreements.
    pub async fn list_agreements(
        &self,
        request: v1::ListAgreementsRequest,
    ) -> Result<v1::ListAgreementsResponse, Status> {
        self.call(|ch| {
            let request = request.clone();
            async move { agreements(ch).list(request).await }
        })
        .await
    }

    /// The agreement's status now and, with `follow`, each change after.
    pub async fn watch_agreement(
        &self,
        id: &AgreementId,
        follow: bool,
    ) -> Result<tonic::Streaming<v1::AgreementInfo>, Status> {
        let request = v1::WatchAgreementRequest { id: id.to_hex(), follow };
        self.call(|ch| {
            let request = request.clone();
            async move { agreements(ch).watch(request).await }
        })
        .await
    }

    /// Every identity and the current epoch.
    pub async fn list_identities(&self) -> Result<v1::ListIdentitiesResponse, Status> {
        self.call(|ch| async move { identities(ch).list(v1::ListIdentitiesRequest {}).await }).await
    }

    /// Sign `kind` with the admin `key` at the current epoch and apply it;
    /// re-signs if another change took the epoch first.
    pub async fn change_identity(&self, kind: ChangeKind, key: &KeyPair) -> Result<v1::ChangeIdentityResponse, Status> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.list_identities().await?;
            let change = IdentityChange { cluster_id: current.cluster_id, epoch: current.epoch, kind: kind.clone() };
            let request = v1::ChangeIdentityRequest { envelope: Envelope::sign(change.canonical(), key).canonical() };
            let answer = self
                .call(|ch| {
                    let request = request.clone();
                    async move { identities(ch).change(request).await }
                })
                .await;
            match answer {
                Err(status)
                    if status.code() == Code::FailedPrecondition
                        && status.message().contains("identity epoch")
                        && attempt < EPOCH_RETRIES => {}
                other => return other,
            }
        }
    }

    /// Register a node's key (a canonical envelope around its claim).
    pub async fn register_node(&self, envelope: Vec<u8>) -> Result<v1::ChangeIdentityResponse, Status> {
        let request = v1::RegisterNodeRequest { envelope };
        self.call(|ch| {
            let request = request.clone();
            async move { identities(ch).register_node(request).await }
        })
        .await
    }

    /// The latest checkpoint, or the one of exactly `tree_size`.
    pub async fn checkpoint(&self, tree_size: Option<u64>) -> Result<Checkpoint, Status> {
        let response =
            self.call(|ch| async move { ledger(ch).checkpoint(v1::CheckpointRequest { tree_size }).await }).await?;
        parse_checkpoint(&response.checkpoint_json)
    }

    /// A page of events from `start`, and the ledger's size.
    pub async fn events(&self, start: u64, limit: u32) -> Result<v1::EventsResponse, Status> {
        self.call(|ch| async move { ledger(ch).events(v1::EventsRequest { start, limit }).await }).await
    }

    /// A proof bundle for event `index`, checked here before it is returned
    /// (its checkpoint signature is checked; whether the signer is a node of
    /// the cluster is for [`Client::check_node_key`]).
    pub async fn inclusion_bundle(&self, index: u64) -> Result<Bundle, Status> {
        let response =
            self.call(|ch| async move {
                ledger(ch).inclusion_proof(v1::InclusionProofRequest { index, tree_size: None }).await
            })
            .await?;
        let bundle =
            Bundle::new(&response.event, &hashes(&response.proof)?, parse_checkpoint(&response.checkpoint_json)?);
        bundle.verify(&[]).map_err(|e| Status::data_loss(format!("the server's proof does not verify: {e}")))?;
        Ok(bundle)
    }

    /// Prove the cluster's latest checkpoint extends `old`: returns the new
    /// checkpoint once the consistency proof between them verifies and both
    /// are signed by registered node keys.
    pub async fn prove_consistency(&self, old: &Checkpoint) -> Result<Checkpoint, Status> {
        old.verify_signature().map_err(|e| Status::invalid_argument(format!("old checkpoint: {e}")))?;
        self.check_node_key(old).await?;
        let old_size = old.tree_size;
        let response = self
            .call(|ch| async move {
                ledger(ch).consistency_proof(v1::ConsistencyProofRequest { old_size, new_size: None }).await
            })
            .await?;
        let new = parse_checkpoint(&response.checkpoint_json)?;
        new.verify_signature().map_err(|e| Status::data_loss(format!("new checkpoint: {e}")))?;
        self.check_node_key(&new).await?;
        if new.cluster_id != old.cluster_id {
            return Err(Status::failed_precondition("the checkpoints belong to different clusters"));
        }
        if old_size == new.tree_size {
            return if old.root == new.root && old.chain_head == new.chain_head {
                Ok(new)
            } else {
                Err(Status::data_loss("two checkpoints of the same size disagree: the log forked"))
            };
        }
        merkle::verify_consistency(old_size, new.tree_size, &old.root, &new.root, &hashes(&response.proof)?)
            .map_err(|e| Status::data_loss(format!("consistency proof does not verify: {e}")))?;
        Ok(new)
    }

    /// Check that `checkpoint` is signed by the registered node key of the
    /// node it names.
    pub async fn check_node_key(&self, checkpoint: &Checkpoint) -> Result<(), Status> {
        let identities = self.list_identities().await?;
        let fingerprint = checkpoint.signer_key.fingerprint().to_hex();
        let registered = identities.identities.iter().any(|identity| {
            identity.fingerprint == fingerprint
                && identity.role == "node"
                && identity.node_id == Some(checkpoint.signer_node)
        });
        if registered {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "checkpoint signer {fingerprint} is not a registered node key of node {}",
                checkpoint.signer_node
            )))
        }
    }

    /// The chain head after `size` events (default: all) on the node at
    /// `addr`, with no retry elsewhere: to compare nodes.
    pub async fn chain_head_of(&self, addr: &str, size: Option<u64>) -> Result<(u64, Hash), Status> {
        let channel = self.channel_to(addr)?;
        let response = ledger(channel).chain_head(v1::ChainHeadRequest { size }).await?.into_inner();
        let head = Hash::try_from(response.chain_head.as_slice()).map_err(|_| Status::internal("bad chain head"))?;
        Ok((response.size, head))
    }

    /// Decode one page of events.
    pub fn decode_events(response: &v1::EventsResponse) -> Result<Vec<Event>, Status> {
        response
            .events
            .iter()
            .map(|event| {
                Event::decode(&event.event).map_err(|e| Status::data_loss(format!("event {}: {e}", event.index)))
            })
            .collect()
    }
}

/// The agreement an `ALREADY_EXISTS` answer names.
pub fn existing_id(status: &Status) -> Option<AgreementId> {
    let value = status.metadata().get(AGREEMENT_ID_METADATA_KEY)?.to_str().ok()?;
    AgreementId::from_hex(value).ok()
}
