//! The greeting timeout: a client that sends nothing at all within a deadline
//! after connecting is dropped, so silent connections (slowloris, dead peers
//! behind NAT) hold a slot for seconds, not for the full command timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Fails reads with `TimedOut` if no byte arrived within the deadline; after the
/// first byte it is a plain pass-through.
pub struct FirstReadDeadline<T> {
    inner: T,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> FirstReadDeadline<T> {
    pub fn new(inner: T, timeout: Duration) -> Self {
        FirstReadDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(Instant::now() + timeout))),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FirstReadDeadline<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                self.deadline = None;
            }
            return r;
        }
        if let (Poll::Pending, Some(d)) = (&r, self.deadline.as_mut()) {
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no data from the client",
                )));
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FirstReadDeadline<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silent_client_times_out_talking_client_does_not() {
        let (_client, server) = tokio::io::duplex(64);
        let mut s = FirstReadDeadline::new(server, Duration::from_secs(30));
        let mut b = [0u8; 4];
        let e = s.read(&mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = tokio::io::duplex(64);
        let mut s = FirstReadDeadline::new(server, Duration::from_secs(30));
        client.write_all(b"EHLO").await.unwrap();
        assert_eq!(s.read(&mut b).await.unwrap(), 4);
        // After the first byte the deadline is gone: a later read waits past it.
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
    }
}
