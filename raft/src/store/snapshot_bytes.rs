//! The bytes of a snapshot, built on first use.
//!
//! openraft asks for the current snapshot at every start, but only reads its
//! meta there; the bytes are read only when a follower needs them. A sent
//! snapshot carries the whole audit ledger, so building it eagerly made
//! every start O(ledger) in time and memory. [`SnapshotBytes`] defers the
//! build to the first read, seek or write.

use std::fmt;
use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

type Build = Box<dyn FnOnce() -> io::Result<Vec<u8>> + Send>;

enum Inner {
    Ready(Cursor<Vec<u8>>),
    Pending(Option<Build>),
}

/// A snapshot's bytes, in memory once built.
pub struct SnapshotBytes {
    inner: Inner,
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
        Self { inner: Inner::Ready(Cursor::new(bytes)) }
    }

    /// Bytes `build` makes when first needed.
    pub fn lazy(build: impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static) -> Self {
        Self { inner: Inner::Pending(Some(Box::new(build))) }
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
        match self.get_mut().cursor() {
            Ok(cursor) => Pin::new(cursor).poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
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

    use tokio::io::{AsyncReadExt, AsyncSeekExt};

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
}
