//! The wire end of a connection: a stream slot that STARTTLS/STLS can take out,
//! wrap in TLS and put back while every filter above keeps its place (so a `log`
//! filter above the wire logs plaintext before and after the upgrade).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::BoxedIo;

/// The stream at the bottom of a chain. Reads and writes go to the stream in its
/// slot; while the slot is empty (an upgrade in progress) they fail.
pub struct Wire {
    slot: Arc<Mutex<Option<BoxedIo>>>,
}

/// Takes the stream out of a `Wire` and puts a new one in (STARTTLS).
#[derive(Clone)]
pub struct WireHandle {
    slot: Arc<Mutex<Option<BoxedIo>>>,
}

impl Wire {
    pub fn new(io: BoxedIo) -> (Wire, WireHandle) {
        let slot = Arc::new(Mutex::new(Some(io)));
        (Wire { slot: slot.clone() }, WireHandle { slot })
    }

    fn lock(&self) -> MutexGuard<'_, Option<BoxedIo>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WireHandle {
    /// Take the wire stream out (the `Wire` fails I/O until `put`).
    pub fn take(&self) -> Option<BoxedIo> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Put a (new) stream in.
    pub fn put(&self, io: BoxedIo) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(io);
    }
}

fn empty() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the wire is being upgraded")
}

impl AsyncRead for Wire {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.lock().as_mut() {
            Some(io) => Pin::new(io).poll_read(cx, buf),
            None => Poll::Ready(Err(empty())),
        }
    }
}

impl AsyncWrite for Wire {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.lock().as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(empty())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.lock().as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(empty())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.lock().as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn swap_the_stream_under_a_wire() {
        let (mut a, server_a) = tokio::io::duplex(64);
        let (mut b, server_b) = tokio::io::duplex(64);
        let (mut wire, handle) = Wire::new(Box::new(server_a));
        wire.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"one");
        let old = handle.take().unwrap();
        assert!(wire.write_all(b"x").await.is_err());
        drop(old);
        handle.put(Box::new(server_b));
        wire.write_all(b"two").await.unwrap();
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two");
        b.write_all(b"ack").await.unwrap();
        wire.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ack");
    }
}
