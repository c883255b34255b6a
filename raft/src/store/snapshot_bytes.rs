//! The bytes of a snapshot, built on first use.
//!
//! openraft asks for the current snapshot at every start, but only reads its
//! meta there; the bytes are read only when a follower needs them. A sent
//! snapshot carries the whole audit ledger, so building it eagerly made
//! every start O(ledger) in time and memory. [`SnapshotBytes`] defers the
//! build to the first read, seek or write.
//!
//! A snapshot being received is written by whatever a peer sends: writes
//! that leave a gap or pass [`RECEIVED_BYTES_MAX`] are refused (a chunk at
//! offset 2^45 would otherwise make the vector reserve that much and abort
//! the process), and the finished bytes are checked at shutdown, which
//! openraft calls before it hands the snapshot to the state machine: an
//! error there goes back to the sender, while one from the state machine's
//! install stops this node's Raft.

use std::fmt;
use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

type Build = Box<dyn FnOnce() -> io::Result<Vec<u8>> + Send>;

/// What a received snapshot must pass before it is installed.
pub type Check = fn(&[u8]) -> io::Result<()>;

/// Largest snapshot this node accepts from a peer. Snapshots are held in
/// memory whole; this is far above any registry this design serves and
/// below what a node of this class could allocate.
pub const RECEIVED_BYTES_MAX: u64 = 8 << 30;

enum Inner {
    Ready(Cursor<Vec<u8>>),
    Pending(Option<Build>),
}

/// A snapshot's bytes, in memory once built.
pub struct SnapshotBytes {
    inner: Inner,
    /// Set for bytes being received.
    check: Option<Check>,
}

impl fmt::Debug for SnapshotBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Inner::Ready(cursor) => write!(f, "SnapshotBytes({} bytes)", cursor.get_ref().len()),
            Inner::Pending(_) => f.write_str("SnapshotBytes(not built yet)"),
        }
    }
}

impl Default for SnapshotBytes {
    fn default() -> Self {
        Self::ready(Vec::new())
    }
}

impl SnapshotBytes {
    /// Bytes already in memory (a snapshot being received).
    pub fn ready(bytes: Vec<u8>) -> Self {
        Self { inner: Inner::Ready(Cursor::new(bytes)), check: None }
    }

    /// Empty bytes a peer's chunks fill, which must pass `check` when done.
    pub fn receiving(check: Check) -> Self {
        Self { inner: Inner::Ready(Cursor::new(Vec::new())), check: Some(check) }
    }

    /// Bytes `build` makes when first needed.
    pub fn lazy(build: impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static) -> Self {
        Self { inner: Inner::Pending(Some(Box::new(build))), check: None }
    }

    fn cursor(&mut self) -> io::Result<&mut Cursor<Vec<u8>>> {
        if let Inner::Pending(build) = &mut self.inner {
            let build = build.take().ok_or_else(|| io::Error::other("an earlier snapshot build failed"))?;
            self.inner = Inner::Ready(Cursor::new(build()?));
        }
        match &mut self.inner {
            Inner::Ready(cursor) => Ok(cursor),
            Inner::Pending(_) => unreachable!("built above"),
        }
    }

    /// All the bytes, building them if needed.
    pub fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        self.cursor()?;
        match self.inner {
            Inner::Ready(cursor) => Ok(cursor.into_inner()),
            Inner::Pending(_) => unreachable!("built above"),
        }
    }
}

impl AsyncRead for SnapshotBytes {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().cursor() {
            Ok(cursor) => Pin::new(cursor).poll_read(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl AsyncWrite for SnapshotBytes {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let cursor = match self.get_mut().cursor() {
            Ok(cursor) => cursor,
            Err(error) => return Poll::Ready(Err(error)),
        };
        let (position, len) = (cursor.position(), cursor.get_ref().len() as u64);
        if position > len {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot chunk at offset {position} leaves a gap after the {len} bytes received"),
            )));
        }
        if position.saturating_add(buf.len() as u64) > RECEIVED_BYTES_MAX {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("snapshot larger than {RECEIVED_BYTES_MAX} bytes"),
            )));
        }
        Pin::new(cursor).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(check) = this.check else { return Poll::Ready(Ok(())) };
        Poll::Ready(this.cursor().and_then(|cursor| check(cursor.get_ref())))
    }
}

impl AsyncSeek for SnapshotBytes {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(self.get_mut().cursor()?).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut().cursor() {
            Ok(cursor) => Pin::new(cursor).poll_complete(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn builds_once_on_first_use() {
        let built = Arc::new(AtomicBool::new(false));
        let flag = built.clone();
        let mut bytes = SnapshotBytes::lazy(move || {
            flag.store(true, Ordering::SeqCst);
            Ok(b"hello".to_vec())
        });
        assert!(!built.load(Ordering::SeqCst), "nothing is built before use");
        bytes.seek(SeekFrom::Start(1)).await.unwrap();
        let mut read = String::new();
        bytes.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "ello");
        assert!(built.load(Ordering::SeqCst));
        assert_eq!(bytes.into_bytes().unwrap(), b"hello");
    }

    #[tokio::test]
    async fn received_bytes_refuse_gaps_and_fail_their_check() {
        let mut bytes = SnapshotBytes::receiving(|data| match data {
            b"good" => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "not good")),
        });
        bytes.write_all(b"go").await.unwrap();
        bytes.seek(SeekFrom::Start(1 << 45)).await.unwrap();
        let gap = bytes.write_all(b"x").await.unwrap_err();
        assert!(gap.to_string().contains("leaves a gap after the 2 bytes"), "{gap}");
        // A resent chunk overwrites; the next continues.
        bytes.seek(SeekFrom::Start(0)).await.unwrap();
        bytes.write_all(b"ba").await.unwrap();
        assert!(bytes.shutdown().await.is_err(), "\"ba\" fails the check");
        bytes.seek(SeekFrom::Start(0)).await.unwrap();
        bytes.write_all(b"good").await.unwrap();
        bytes.shutdown().await.unwrap();
        assert_eq!(bytes.into_bytes().unwrap(), b"good");
    }
}
