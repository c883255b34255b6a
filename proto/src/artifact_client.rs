//! The client SDK for artifacts: streamed, resumable uploads and
//! digest-checked downloads.

use std::io::{Read, Seek, Write};
use std::path::Path;

use futures::StreamExt;
use sha3::{Digest as _, Sha3_256};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::agreement::Digest;
use crate::client::Client;
use crate::v1;
use crate::v1::artifacts_client::ArtifactsClient;

/// Bytes per uploaded chunk.
pub const UPLOAD_CHUNK_BYTES: usize = 256 * 1024;

fn artifacts(channel: Channel) -> ArtifactsClient<Channel> {
    ArtifactsClient::new(channel).max_decoding_message_size(UPLOAD_CHUNK_BYTES * 2)
}

/// SHA3-256 and size of a file, streamed.
pub fn digest_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha3_256::new();
    let mut buffer = vec![0u8; UPLOAD_CHUNK_BYTES];
    let mut size = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok((Digest(hasher.finalize().into()), size));
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
}

fn io_status(error: std::io::Error) -> Status {
    Status::invalid_argument(error.to_string())
}

impl Client {
    /// Upload the file at `path` to the node this client reaches; resumes
    /// where a broken earlier upload stopped. `progress(sent, total)` is
    /// called after each chunk. Returns the digest.
    pub async fn upload_file(
        &self,
        path: &Path,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<Digest, Status> {
        let (digest, size) = digest_file(path).map_err(io_status)?;
        let progress = std::sync::Arc::new(progress);
        self.call(|channel| {
            let (progress, path) = (progress.clone(), path.to_owned());
            async move {
                let mut client = artifacts(channel);
                let stat = client.stat(v1::StatArtifactRequest { digest: digest.to_string() }).await?.into_inner();
                if stat.present {
                    progress(size, size);
                    return Ok(tonic::Response::new(stat));
                }
                let offset = stat.partial_bytes.min(size);
                let mut file = std::fs::File::open(&path).map_err(io_status)?;
                file.seek(std::io::SeekFrom::Start(offset)).map_err(io_status)?;
                // The first chunk names the artifact (and goes even for an empty
                // file); the rest follow until the end of the file.
                let chunks = futures::stream::unfold((file, offset, true), move |(mut file, at, first)| {
                    let progress = progress.clone();
                    async move {
                        if !first && at >= size {
                            return None;
                        }
                        let mut buffer = vec![0u8; UPLOAD_CHUNK_BYTES];
                        let read = file.read(&mut buffer).ok()?;
                        if read == 0 && !first {
                            return None;
                        }
                        buffer.truncate(read);
                        let (name, total) = if first { (digest.to_string(), size) } else { (String::new(), 0) };
                        progress(at + read as u64, size);
                        let chunk = v1::UploadChunk { digest: name, size: total, offset: at, data: buffer };
                        Some((chunk, (file, at + read as u64, false)))
                    }
                });
                client.upload(chunks).await
            }
        })
        .await?;
        Ok(digest)
    }

    /// Download `digest` from the node at `addr` into `out`, checking the
    /// digest; a mismatch removes `out` and is an error.
    pub async fn download_from(&self, addr: &str, digest: &Digest, out: &Path) -> Result<u64, Status> {
        let mut client = artifacts(self.channel_to(addr)?);
        let mut stream =
            client.download(v1::DownloadRequest { digest: digest.to_string(), offset: 0 }).await?.into_inner();
        let mut file = std::fs::File::create(out).map_err(io_status)?;
        let mut hasher = Sha3_256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk.data);
            file.write_all(&chunk.data).map_err(io_status)?;
            size += chunk.data.len() as u64;
        }
        let actual = Digest(hasher.finalize().into());
        if actual != *digest {
            let _ = std::fs::remove_file(out);
            return Err(Status::data_loss(format!("node {addr} served bytes hashing to {actual}, not {digest}")));
        }
        Ok(size)
    }

    /// Download `digest` from the first of `addrs` that has it.
    pub async fn download_any(&self, addrs: &[String], digest: &Digest, out: &Path) -> Result<u64, Status> {
        let mut last = Status::not_found(format!("no node holds {digest}"));
        for addr in addrs {
            match self.download_from(addr, digest, out).await {
                Ok(size) => return Ok(size),
                Err(status) if matches!(status.code(), Code::NotFound | Code::Unavailable | Code::DataLoss) => {
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// Every worker as the cluster lists it (linearizable), with the
    /// heartbeat timing and the scheduler's state.
    pub async fn list_nodes(&self) -> Result<v1::ListNodesResponse, Status> {
        let request = v1::ListNodesRequest { counts_only: false };
        self.call(|channel| async move { crate::v1::nodes_client::NodesClient::new(channel).list(request).await }).await
    }

    /// One page of the artifacts the reached node holds.
    pub async fn list_artifacts(&self, start_after: &str, limit: u32) -> Result<v1::ListArtifactsResponse, Status> {
        let request = v1::ListArtifactsRequest { start_after: start_after.to_owned(), limit };
        self.call(|channel| {
            let request = request.clone();
            async move { artifacts(channel).list(request).await }
        })
        .await
    }
}
