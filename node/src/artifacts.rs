//! The node's content-addressed artifact store and the `Artifacts` service.
//!
//! Artifacts are files named by their SHA3-256 under
//! `DATA_DIR/artifacts/sha3-256/`. An upload streams into
//! `artifacts/partial/<hex>` and is renamed into place only once its bytes
//! hash to the announced digest, so a reader never sees a partial or wrong
//! artifact; a broken upload resumes where it stopped. Fetching from a peer
//! checks the digest the same way: a peer serving wrong bytes is logged and
//! the next one is tried. The registry holds digests, never blobs.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use docklock_proto::agreement::Digest;
use docklock_proto::v1::artifacts_client::ArtifactsClient;
use docklock_proto::v1::{self, artifacts_server};
use futures::StreamExt;
use sha3::{Digest as _, Sha3_256};
use tonic::Status;

/// Bytes per streamed chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest page of a listing.
const LIST_PAGE_MAX: usize = 10_000;

/// Size bounds and retention of a store.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// Largest single artifact.
    pub artifact_bytes_max: u64,
    /// Largest total of all artifacts (partial uploads included).
    pub store_bytes_max: u64,
    /// An artifact no agreement refers to is collected once it has not been
    /// stored, uploaded or asked about for this long (an upload waits for
    /// its agreement that long); so is an abandoned partial upload.
    pub gc_grace: Duration,
    /// How often the collector looks (zero: never).
    pub gc_interval: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            artifact_bytes_max: 1 << 30,
            store_bytes_max: 16 << 30,
            gc_grace: Duration::from_secs(3_600),
            gc_interval: Duration::from_secs(300),
        }
    }
}

/// What one collection removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Files removed (whole artifacts and partial uploads).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such artifact here.
    #[error("artifact {0} is not in this node's store")]
    NotFound(Digest),
    /// Over a size bound.
    #[error("{0}")]
    TooLarge(String),
    /// Bytes that do not hash to the digest, or chunks out of order.
    #[error("{0}")]
    Invalid(String),
    /// Another upload of the same artifact is under way.
    #[error("an upload of {0} is already in progress")]
    Busy(Digest),
    /// The file system failed.
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// The gRPC status (this module's part of the one mapping).
    pub fn into_status(self) -> Status {
        match self {
            Self::NotFound(_) => Status::not_found(self.to_string()),
            Self::TooLarge(_) => Status::resource_exhausted(self.to_string()),
            Self::Invalid(_) => Status::invalid_argument(self.to_string()),
            Self::Busy(_) => Status::aborted(self.to_string()),
            Self::Io(_) => Status::internal(self.to_string()),
        }
    }
}

/// The store.
#[derive(Debug)]
pub struct ArtifactStore {
    dir: PathBuf,
    limits: StoreLimits,
    total: AtomicU64,
    uploading: Mutex<BTreeSet<Digest>>,
}

fn hex_of(digest: &Digest) -> String {
    hex::encode(digest.0)
}

impl ArtifactStore {
    /// Open (creating) the store under `data_dir/artifacts`.
    pub fn open(data_dir: &Path, limits: StoreLimits) -> std::io::Result<Arc<Self>> {
        let dir = data_dir.join("artifacts");
        std::fs::create_dir_all(dir.join("sha3-256"))?;
        std::fs::create_dir_all(dir.join("partial"))?;
        let mut total = 0;
        for sub in ["sha3-256", "partial"] {
            for entry in std::fs::read_dir(dir.join(sub))? {
                total += entry?.metadata()?.len();
            }
        }
        Ok(Arc::new(Self { dir, limits, total: AtomicU64::new(total), uploading: Mutex::new(BTreeSet::new()) }))
    }

    /// Where a whole artifact lives.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("sha3-256").join(hex_of(digest))
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("partial").join(hex_of(digest))
    }

    /// The size of a whole artifact, if present.
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Bytes of an unfinished upload.
    pub fn partial_bytes(&self, digest: &Digest) -> u64 {
        std::fs::metadata(self.partial_path(digest)).map_or(0, |m| m.len())
    }

    /// Mark `digest` as used now: its collection grace period restarts.
    pub fn touch(&self, digest: &Digest) {
        if let Ok(file) = std::fs::File::open(self.path(digest)) {
            // Best effort: a failed touch only shortens the grace period.
            let _ = file.set_modified(SystemTime::now());
        }
    }

    /// Remove every whole artifact not in `keep` and every partial upload no
    /// one is writing that has not been used for `grace`.
    pub fn collect(&self, keep: &BTreeSet<Digest>, grace: Duration) -> std::io::Result<Collected> {
        let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut collected = Collected::default();
        for (sub, partial) in [("sha3-256", false), ("partial", true)] {
            for entry in std::fs::read_dir(self.dir.join(sub))? {
                let entry = entry?;
                let Some(digest) =
                    entry.file_name().to_str().and_then(|name| Digest::parse(&format!("sha3-256:{name}")).ok())
                else {
                    continue;
                };
                if !partial && keep.contains(&digest) {
                    continue;
                }
                // Holding the upload set: no upload of it can begin (and
                // touch or extend it) while it is judged and removed.
                let uploading = self.uploading.lock().expect("upload set");
                if uploading.contains(&digest) {
                    continue;
                }
                let Ok(metadata) = entry.metadata() else { continue };
                if metadata.modified()? > cutoff {
                    continue;
                }
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        self.total.fetch_sub(metadata.len(), Ordering::Relaxed);
                        collected.files += 1;
                        collected.bytes += metadata.len();
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
                drop(uploading);
            }
        }
        Ok(collected)
    }

    /// Bytes held in total.
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: u64) -> Result<(), StoreError> {
        let total = self.total.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > self.limits.store_bytes_max {
            self.total.fetch_sub(bytes, Ordering::Relaxed);
            return Err(StoreError::TooLarge(format!(
                "the store would hold {total} bytes, more than its bound of {} (agent flag --store-bytes-max)",
                self.limits.store_bytes_max
            )));
        }
        Ok(())
    }

    /// The right to store `digest` of `size` bytes: within the bound on
    /// one artifact, and no one else storing it (until the guard drops).
    fn claim(self: &Arc<Self>, digest: Digest, size: u64) -> Result<UploadGuard, StoreError> {
        if size > self.limits.artifact_bytes_max {
            return Err(StoreError::TooLarge(format!(
                "artifact is {size} bytes, more than the bound of {} (agent flag --artifact-bytes-max)",
                self.limits.artifact_bytes_max
            )));
        }
        if !self.uploading.lock().expect("upload set").insert(digest) {
            return Err(StoreError::Busy(digest));
        }
        Ok(UploadGuard { store: self.clone(), digest })
    }

    /// Start (or resume) writing `digest` of `size` bytes at `offset`.
    pub fn begin(self: &Arc<Self>, digest: Digest, size: u64, offset: u64) -> Result<Upload, StoreError> {
        let guard = self.claim(digest, size)?;
        if self.size(&digest).is_some() {
            self.touch(&digest);
            return Ok(Upload { guard, file: None, hasher: Sha3_256::new(), written: size, size, reserved: false });
        }
        let partial = self.partial_bytes(&digest);
        if partial > size {
            // One digest has one size: an earlier upload announced more.
            return Err(StoreError::Invalid(format!(
                "upload of {digest} already holds {partial} bytes, more than the {size} announced now"
            )));
        }
        if offset != partial {
            return Err(StoreError::Invalid(format!(
                "upload of {digest} must resume at offset {partial}, not {offset}"
            )));
        }
        self.reserve(size.saturating_sub(partial))?;
        let path = self.partial_path(&digest);
        let mut hasher = Sha3_256::new();
        if partial > 0 {
            let mut existing = std::fs::File::open(&path)?;
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                let read = existing.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                hasher.update(&buffer[..read]);
            }
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Upload { guard, file: Some(file), hasher, written: partial, size, reserved: true })
    }

    /// Store `bytes` (an output, a log) and return their digest.
    pub fn put_bytes(self: &Arc<Self>, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if self.size(&digest).is_some() {
            self.touch(&digest);
            return Ok(digest);
        }
        let mut upload = self.begin(digest, bytes.len() as u64, self.partial_bytes(&digest))?;
        let already = upload.written as usize;
        upload.write(&bytes[already.min(bytes.len())..])?;
        upload.finish()?;
        Ok(digest)
    }

    /// Store the file at `path`, streaming; returns its digest.
    pub fn put_file(self: &Arc<Self>, path: &Path) -> Result<Digest, StoreError> {
        let digest = digest_of_file(path)?;
        if self.size(&digest).is_some() {
            self.touch(&digest);
            return Ok(digest);
        }
        let size = std::fs::metadata(path)?.len();
        // A local copy: start over rather than trust a partial.
        let _ = std::fs::remove_file(self.partial_path(&digest));
        let mut upload = self.begin(digest, size, 0)?;
        let mut file = std::fs::File::open(path)?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            upload.write(&buffer[..read])?;
        }
        upload.finish()?;
        Ok(digest)
    }

    /// Store the file at `path` by moving it into the store: on one file
    /// system that is a rename (no copy and no new file: a run's witness
    /// log, stdout and outputs are written once and then only stored),
    /// else a copy. The file must not change while this runs. Returns its
    /// digest; `path` is gone unless the digest was stored already.
    pub fn adopt_file(self: &Arc<Self>, path: &Path) -> Result<Digest, StoreError> {
        let mut file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        let digest = digest_of(&mut file)?;
        let guard = self.claim(digest, size)?;
        if self.size(&digest).is_some() {
            self.touch(&digest);
            return Ok(digest);
        }
        self.reserve(size)?;
        let moved = file.sync_all().and_then(|()| std::fs::rename(path, self.path(&digest)));
        match moved {
            Ok(()) => Ok(digest),
            Err(error) => {
                self.total.fetch_sub(size, Ordering::Relaxed);
                drop(guard);
                match error.kind() {
                    std::io::ErrorKind::CrossesDevices => self.put_file(path),
                    _ => Err(error.into()),
                }
            }
        }
    }

    /// Whole artifacts after `start_after`, in digest order, at most `limit`.
    pub fn list(&self, start_after: Option<Digest>, limit: usize) -> std::io::Result<(Vec<(Digest, u64)>, bool)> {
        let mut all: Vec<(Digest, u64)> = Vec::new();
        for entry in std::fs::read_dir(self.dir.join("sha3-256"))? {
            let entry = entry?;
            let Some(digest) =
                entry.file_name().to_str().and_then(|name| Digest::parse(&format!("sha3-256:{name}")).ok())
            else {
                continue;
            };
            if start_after.is_none_or(|after| digest.0 > after.0) {
                all.push((digest, entry.metadata()?.len()));
            }
        }
        all.sort_by_key(|(digest, _)| digest.0);
        let more = all.len() > limit;
        all.truncate(limit);
        Ok((all, more))
    }

    /// Make `digest` present: from this store, else from the first peer that
    /// serves bytes hashing to it. Wrong bytes are logged and discarded.
    pub async fn fetch(
        self: &Arc<Self>,
        digest: Digest,
        peers: &[(u64, String)],
        channels: &docklock_proto::client::ChannelCache,
    ) -> Result<(), String> {
        if self.size(&digest).is_some() {
            return Ok(());
        }
        let mut failures = Vec::new();
        for (node, address) in peers {
            match self.fetch_from(digest, address, channels).await {
                Ok(()) => return Ok(()),
                Err(reason) => {
                    tracing::warn!(%digest, node, %address, %reason, "fetching an artifact from a peer failed");
                    failures.push(format!("node {node}: {reason}"));
                }
            }
        }
        Err(format!("no peer served {digest}: {}", failures.join("; ")))
    }

    async fn fetch_from(
        self: &Arc<Self>,
        digest: Digest,
        address: &str,
        channels: &docklock_proto::client::ChannelCache,
    ) -> Result<(), String> {
        let channel = channels.get(address).map_err(|status| status.to_string())?;
        let mut client = ArtifactsClient::new(channel).max_decoding_message_size(CHUNK_BYTES * 2);
        let stat = client
            .stat(v1::StatArtifactRequest { digest: digest.to_string() })
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        if !stat.present {
            return Err("does not have it".into());
        }
        // Discard any earlier partial copy: a fetch starts over.
        let _ = std::fs::remove_file(self.partial_path(&digest));
        let mut upload = self.begin(digest, stat.size, 0).map_err(|e| e.to_string())?;
        let mut stream = client
            .download(v1::DownloadRequest { digest: digest.to_string(), offset: 0 })
            .await
            .map_err(|status| status.message().to_owned())?
            .into_inner();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|status| status.message().to_owned())?;
            upload.write(&chunk.data).map_err(|e| e.to_string())?;
        }
        match upload.finish() {
            Ok(()) => Ok(()),
            Err(error) => {
                let _ = std::fs::remove_file(self.partial_path(&digest));
                Err(format!("served wrong bytes: {error}"))
            }
        }
    }
}

/// Collect `store` every `limits.gc_interval`, keeping what `referenced`
/// returns (every artifact an agreement of this node's registry replica
/// refers to). Runs until the process ends.
pub async fn collector<F>(store: Arc<ArtifactStore>, referenced: F)
where
    F: Fn() -> BTreeSet<Digest> + Send + 'static,
{
    let StoreLimits { gc_interval, gc_grace, .. } = store.limits;
    if gc_interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(gc_interval).await;
        let keep = referenced();
        let target = store.clone();
        match tokio::task::spawn_blocking(move || target.collect(&keep, gc_grace)).await {
            Ok(Ok(collected)) if collected.files > 0 => {
                tracing::info!(files = collected.files, bytes = collected.bytes, "collected unreferenced artifacts");
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "artifact collection failed"),
            Err(error) => tracing::warn!(%error, "artifact collection panicked"),
        }
    }
}

/// SHA3-256 of a file, streamed.
pub fn digest_of_file(path: &Path) -> std::io::Result<Digest> {
    digest_of(&mut std::fs::File::open(path)?)
}

/// SHA3-256 of what `file` reads from where it is to its end.
fn digest_of(file: &mut std::fs::File) -> std::io::Result<Digest> {
    let mut hasher = Sha3_256::new();
    let mut buffer = vec![0u8; CHUNK_BYTES];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(Digest(hasher.finalize().into()))
}

struct UploadGuard {
    store: Arc<ArtifactStore>,
    digest: Digest,
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.store.uploading.lock().expect("upload set").remove(&self.digest);
    }
}

/// One upload in progress; only one per digest at a time. The store's
/// total counts the whole announced size while it runs; what was never
/// written is given back when it ends, however it ends.
pub struct Upload {
    guard: UploadGuard,
    file: Option<std::fs::File>,
    hasher: Sha3_256,
    written: u64,
    size: u64,
    reserved: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.reserved {
            self.guard.store.total.fetch_sub(self.size - self.written, Ordering::Relaxed);
        }
    }
}

impl Upload {
    /// Bytes written so far (the resume offset).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Append bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else { return Ok(()) };
        if self.written + bytes.len() as u64 > self.size {
            return Err(StoreError::Invalid(format!("more than the announced {} bytes", self.size)));
        }
        file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Check the size and digest and move the artifact into place. A
    /// mismatch removes the partial file.
    pub fn finish(mut self) -> Result<(), StoreError> {
        let Some(file) = self.file.take() else { return Ok(()) };
        let store = self.guard.store.clone();
        let digest = self.guard.digest;
        if self.written != self.size {
            return Err(StoreError::Invalid(format!(
                "upload of {digest} ended at {} of {} bytes; resume from there",
                self.written, self.size
            )));
        }
        let actual = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if actual != digest {
            drop(file);
            let _ = std::fs::remove_file(store.partial_path(&digest));
            store.total.fetch_sub(self.written, Ordering::Relaxed);
            self.written = self.size;
            return Err(StoreError::Invalid(format!("bytes hash to {actual}, not {digest}")));
        }
        file.sync_all()?;
        std::fs::rename(store.partial_path(&digest), store.path(&digest))?;
        Ok(())
    }
}

fn parse_digest(text: &str) -> Result<Digest, Status> {
    Digest::parse(text).map_err(Status::invalid_argument)
}

/// The `Artifacts` service.
pub struct ArtifactsService {
    store: Arc<ArtifactStore>,
}

impl ArtifactsService {
    /// The tonic server for `store`.
    pub fn server(store: Arc<ArtifactStore>) -> artifacts_server::ArtifactsServer<Self> {
        artifacts_server::ArtifactsServer::new(Self { store })
            .max_decoding_message_size(CHUNK_BYTES + 4096)
            .max_encoding_message_size(CHUNK_BYTES + 4096)
    }

    fn info(&self, digest: Digest) -> v1::ArtifactInfo {
        let size = self.store.size(&digest);
        v1::ArtifactInfo {
            digest: digest.to_string(),
            present: size.is_some(),
            size: size.unwrap_or(0),
            partial_bytes: if size.is_some() { 0 } else { self.store.partial_bytes(&digest) },
        }
    }
}

/// Run the store's file work on a blocking thread: the runtime may have a
/// single thread (`--threads 1`), which a disk wait must not hold.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(StoreError::into_status),
        Err(error) => Err(Status::internal(format!("artifact store work failed: {error}"))),
    }
}

type DownloadStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::DownloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl artifacts_server::Artifacts for ArtifactsService {
    async fn upload(
        &self,
        request: tonic::Request<tonic::Streaming<v1::UploadChunk>>,
    ) -> Result<tonic::Response<v1::ArtifactInfo>, Status> {
        let mut stream = request.into_inner();
        let first =
            stream.next().await.ok_or_else(|| Status::invalid_argument("an upload needs at least one chunk"))??;
        let digest = parse_digest(&first.digest)?;
        let store = self.store.clone();
        let mut upload = off_runtime(move || {
            let mut upload = store.begin(digest, first.size, first.offset)?;
            upload.write(&first.data)?;
            Ok(upload)
        })
        .await?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if chunk.offset != 0 && chunk.offset != upload.written() {
                return Err(Status::invalid_argument(format!(
                    "chunk at offset {} but {} bytes were written",
                    chunk.offset,
                    upload.written()
                )));
            }
            upload = off_runtime(move || upload.write(&chunk.data).map(|()| upload)).await?;
        }
        off_runtime(move || upload.finish()).await?;
        Ok(tonic::Response::new(self.info(digest)))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: tonic::Request<v1::DownloadRequest>,
    ) -> Result<tonic::Response<Self::DownloadStream>, Status> {
        let message = request.into_inner();
        let digest = parse_digest(&message.digest)?;
        let path = self.store.path(&digest);
        let mut file = std::fs::File::open(&path).map_err(|_| StoreError::NotFound(digest).into_status())?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(message.offset))
            .map_err(|e| Status::invalid_argument(format!("offset {}: {e}", message.offset)))?;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                match file.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(read) => {
                        if sender.blocking_send(Ok(v1::DownloadChunk { data: buffer[..read].to_vec() })).is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let _ = sender.blocking_send(Err(Status::internal(format!("reading {digest}: {error}"))));
                        return;
                    }
                }
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn stat(
        &self,
        request: tonic::Request<v1::StatArtifactRequest>,
    ) -> Result<tonic::Response<v1::ArtifactInfo>, Status> {
        let digest = parse_digest(&request.into_inner().digest)?;
        // A client asks before it uploads and then submits: the artifact is
        // about to be referenced, so its grace period restarts.
        self.store.touch(&digest);
        Ok(tonic::Response::new(self.info(digest)))
    }

    async fn list(
        &self,
        request: tonic::Request<v1::ListArtifactsRequest>,
    ) -> Result<tonic::Response<v1::ListArtifactsResponse>, Status> {
        let message = request.into_inner();
        let start_after = (!message.start_after.is_empty()).then(|| parse_digest(&message.start_after)).transpose()?;
        let limit = match message.limit as usize {
            0 => 1_000,
            n => n.min(LIST_PAGE_MAX),
        };
        let (page, more) = self.store.list(start_after, limit).map_err(|e| Status::internal(e.to_string()))?;
        let artifacts = page
            .into_iter()
            .map(|(digest, size)| v1::ArtifactInfo {
                digest: digest.to_string(),
                present: true,
                size,
                partial_bytes: 0,
            })
            .collect();
        Ok(tonic::Response::new(v1::ListArtifactsResponse { artifacts, more, total_bytes: self.store.total_bytes() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's file is moved in whole (its bytes, under its digest, counted
    /// in the total); one stored already stays where it is; bounds hold.
    #[test]
    fn adopted_files_are_moved_into_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits { artifact_bytes_max: 64, store_bytes_max: 100, ..StoreLimits::default() };
        let store = ArtifactStore::open(&dir.path().join("store"), limits).unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let witness = file("witness.log", b"a witness log");
        let digest = store.adopt_file(&witness).unwrap();
        assert_eq!(digest, Digest::of(b"a witness log"));
        assert_eq!(std::fs::read(store.path(&digest)).unwrap(), b"a witness log");
        assert!(!witness.exists(), "moved, not copied");
        assert_eq!(store.total_bytes(), 13);
        let again = file("stdout", b"a witness log");
        assert_eq!(store.adopt_file(&again).unwrap(), digest);
        assert!(again.exists(), "a file stored already stays");
        assert_eq!(store.total_bytes(), 13);
        let large = file("large", &[0; 65]);
        assert!(matches!(store.adopt_file(&large), Err(StoreError::TooLarge(_))));
        let fills = file("fills", &[1; 60]);
        store.adopt_file(&fills).unwrap();
        let over = file("over", &[2; 60]);
        assert!(matches!(store.adopt_file(&over), Err(StoreError::TooLarge(_))));
        assert!(over.exists(), "a refused file stays where it was");
        assert_eq!(store.total_bytes(), 73);
    }

    /// Uploads land only when they hash right; a broken one resumes; bounds
    /// hold.
    #[test]
    fn collection_keeps_referenced_recent_and_uploading_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), StoreLimits::default()).unwrap();
        let age = |path: &Path| {
            let old = SystemTime::now() - Duration::from_secs(7_200);
            std::fs::File::open(path).unwrap().set_modified(old).unwrap();
        };
        let unreferenced = store.put_bytes(b"no agreement names me").unwrap();
        let referenced = store.put_bytes(b"an agreement's input").unwrap();
        let recent = store.put_bytes(b"uploaded a moment ago").unwrap();
        let asked_again = store.put_bytes(b"old, but stored again just now").unwrap();
        for digest in [unreferenced, referenced, asked_again] {
            age(&store.path(&digest));
        }
        store.put_bytes(b"old, but stored again just now").unwrap();
        // An upload abandoned long ago, and one under way (old bytes, but
        // someone is writing it).
        let abandoned = Digest::of(b"abandoned upload");
        let mut upload = store.begin(abandoned, 16, 0).unwrap();
        upload.write(b"abandoned").unwrap();
        drop(upload);
        age(&store.partial_path(&abandoned));
        let writing = Digest::of(b"being written");
        let mut live = store.begin(writing, 13, 0).unwrap();
        live.write(b"being").unwrap();
        age(&store.partial_path(&writing));

        let before = store.total_bytes();
        let collected = store.collect(&[referenced].into(), Duration::from_secs(3_600)).unwrap();
        let freed = b"no agreement names me".len() as u64 + b"abandoned".len() as u64;
        assert_eq!(collected, Collected { files: 2, bytes: freed });
        assert_eq!(store.total_bytes(), before - freed, "the store's total follows");
        assert_eq!(store.size(&unreferenced), None);
        for kept in [referenced, recent, asked_again] {
            assert!(store.size(&kept).is_some(), "{kept} was kept");
        }
        assert_eq!(store.partial_bytes(&abandoned), 0);
        assert_eq!(store.partial_bytes(&writing), 5, "an upload under way is not collected");
        live.write(b" written").unwrap();
        live.finish().unwrap();
        assert!(store.size(&writing).is_some());
    }

    #[test]
    fn uploads_are_checked_resumable_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = StoreLimits { artifact_bytes_max: 1000, store_bytes_max: 1500, ..StoreLimits::default() };
        let store = ArtifactStore::open(dir.path(), limits).unwrap();
        let bytes = vec![7u8; 800];
        let digest = Digest::of(&bytes);
        let mut upload = store.begin(digest, 800, 0).unwrap();
        assert!(matches!(store.begin(digest, 800, 0), Err(StoreError::Busy(_))), "one upload per digest");
        upload.write(&bytes[..300]).unwrap();
        assert!(matches!(upload.finish(), Err(StoreError::Invalid(_))), "short");
        assert_eq!(store.partial_bytes(&digest), 300);
        assert!(matches!(store.begin(digest, 800, 0), Err(StoreError::Invalid(_))), "must resume at 300");
        let total = store.total_bytes();
        let smaller = store.begin(digest, 200, 300).err().expect("a resume announcing fewer bytes than it holds");
        assert!(smaller.to_string().contains("already holds 300 bytes, more than the 200"), "{smaller}");
        assert_eq!(store.total_bytes(), total, "nothing reserved or given back");
        let mut resumed = store.begin(digest, 800, 300).unwrap();
        resumed.write(&bytes[300..]).unwrap();
        resumed.finish().unwrap();
        assert_eq!(store.size(&digest), Some(800));
        assert_eq!(std::fs::read(store.path(&digest)).unwrap(), bytes);

        let wrong = Digest::of(b"something else");
        let mut lying = store.begin(wrong, 3, 0).unwrap();
        lying.write(b"abc").unwrap();
        assert!(matches!(lying.finish(), Err(StoreError::Invalid(_))), "wrong bytes");
        assert_eq!(store.size(&wrong), None);
        assert!(matches!(store.put_bytes(&[1u8; 1001]), Err(StoreError::TooLarge(_))), "per artifact");
        assert!(matches!(store.put_bytes(&[2u8; 900]), Err(StoreError::TooLarge(_))), "per store");
        let (listed, more) = store.list(None, 10).unwrap();
        assert_eq!((listed, more), (vec![(digest, 800)], false));
        assert_eq!(store.total_bytes(), 800, "failed uploads gave their reservations back");
    }

    /// Serve `store` on a real loopback socket; returns its address.
    async fn serve(store: Arc<ArtifactStore>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ArtifactsService::server(store))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        address
    }

    /// A peer serving corrupted bytes is rejected and the artifact comes
    /// from the next peer; nothing wrong is ever stored.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_corrupt_peer_is_rejected_and_another_serves() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<_> =
            dirs.iter().map(|d| ArtifactStore::open(d.path(), StoreLimits::default()).unwrap()).collect();
        let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let digest = stores[0].put_bytes(&bytes).unwrap();
        stores[1].put_bytes(&bytes).unwrap();
        // The first peer's copy rots on disk (or the peer lies).
        let mut rotten = bytes.clone();
        rotten[300_000] ^= 0xff;
        std::fs::write(stores[0].path(&digest), &rotten).unwrap();
        let peers = vec![(1, serve(stores[0].clone()).await), (2, serve(stores[1].clone()).await)];
        let channels = docklock_proto::client::ChannelCache::new(
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(10),
        );
        stores[2].fetch(digest, &peers, &channels).await.unwrap();
        assert_eq!(std::fs::read(stores[2].path(&digest)).unwrap(), bytes);
        assert_eq!(stores[2].partial_bytes(&digest), 0, "the rejected copy left nothing behind");

        // Only liars: an error naming each, and still nothing stored.
        let other = Digest::of(b"not here");
        let error = stores[2].fetch(other, &peers[..1], &channels).await.unwrap_err();
        assert!(error.contains("node 1"), "{error}");
        let lonely_dir = tempfile::tempdir().unwrap();
        let lonely = ArtifactStore::open(lonely_dir.path(), StoreLimits::default()).unwrap();
        let error = lonely.fetch(digest, &peers[..1], &channels).await.unwrap_err();
        assert!(error.contains("wrong bytes"), "{error}");
        assert_eq!(lonely.size(&digest), None);
    }
}
