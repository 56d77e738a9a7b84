//! The line reader/writer over a connection's (filtered) byte stream, shared by
//! SMTP and POP3: bounded lines that are never silently chopped, raw reads for
//! DATA/BDAT, and output that is flushed only when the client has nothing more
//! pipelined (RFC 2920 §3.2: one write per group of replies).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Resolves once `rx` holds `true` (the daemon is stopping); never if the
/// sender is gone without saying so.
async fn until_stopping(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What reading a line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its terminator (CRLF, or a bare LF).
    Complete(Vec<u8>),
    /// The line exceeded the limit; it was read up to its end and discarded.
    TooLong,
    /// The peer closed the connection (possibly in the middle of a line).
    Eof,
}

/// Errors of the connection layer.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Size of the read buffer while a body (DATA, BDAT) streams in.
const BULK_READ: usize = 16 * 1024;
/// Reads while waiting for a command go through a stack buffer of this size,
/// so an idle connection holds no read buffer at all.
const IDLE_READ: usize = 2 * 1024;

/// A buffered connection: reads lines and raw bytes, buffers replies.
///
/// Memory: while the session waits for its next command with nothing buffered,
/// both buffers are released, so an idle connection costs only its task; the
/// read buffer grows to `BULK_READ` only while a body streams in.
pub struct Conn<S> {
    stream: S,
    /// Input read but not yet consumed: `inbuf[pos..]`.
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    /// Total bytes read from / written to the stream (for logs and `who`).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            stream,
            inbuf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn buffer(&self) -> &[u8] {
        &self.inbuf[self.pos..]
    }

    /// Bytes the client sent that have been read from the stream but not yet
    /// consumed (pipelined input). STARTTLS/STLS must refuse when this is not 0.
    pub fn buffered_input(&self) -> usize {
        self.inbuf.len() - self.pos
    }

    /// Queue bytes for the peer. They are sent by `flush`, or automatically before
    /// a read that would block.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// The output buffer itself, to encode large replies into it without a copy.
    pub fn out_buf(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Send all queued output now.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.bytes_out += self.out.len() as u64;
            self.out.clear();
        }
        self.stream.flush().await
    }

    /// Flush queued output if no pipelined input is waiting (RFC 2920 §3.2).
    async fn flush_if_idle(&mut self) -> io::Result<()> {
        if self.buffered_input() == 0 {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Make input available: the buffered rest, or one read from the stream
    /// (empty at EOF). `bulk`: a body is streaming in, read into a large heap
    /// buffer; otherwise the session waits for a command, and reads via a stack
    /// buffer so that nothing stays allocated while it waits.
    async fn fill_buf(&mut self, bulk: bool) -> io::Result<&[u8]> {
        if self.buffered_input() == 0 {
            self.pos = 0;
            if bulk {
                self.inbuf.clear();
                self.inbuf.reserve(BULK_READ);
                let n = self.stream.read_buf(&mut self.inbuf).await?;
                debug_assert_eq!(n, self.inbuf.len());
            } else {
                self.inbuf = Vec::new();
                self.out.shrink_to(0);
                let (stream, inbuf) = (&mut self.stream, &mut self.inbuf);
                // The stack buffer lives only inside one poll, so it is not part
                // of the session's future while the connection waits.
                std::future::poll_fn(|cx| {
                    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); IDLE_READ];
                    let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
                    std::task::ready!(std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb))?;
                    inbuf.extend_from_slice(rb.filled());
                    std::task::Poll::Ready(Ok::<_, io::Error>(()))
                })
                .await?;
            }
        }
        Ok(self.buffer())
    }

    /// Read one line of at most `max` octets (terminator included), with a timeout.
    /// A longer line is consumed to its end and reported as `TooLong`, never chopped.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, ConnError> {
        self.flush_if_idle().await?;
        match tokio::time::timeout(timeout, self.read_line_inner(max)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout),
        }
    }

    /// `read_line` for the next command, also watching `stop` (the daemon is
    /// stopping): `Ok(None)` when it turned true. Commands already pipelined are
    /// answered first (`biased`).
    pub async fn read_command(
        &mut self,
        max: usize,
        timeout: Duration,
        stop: Option<tokio::sync::watch::Receiver<bool>>,
    ) -> Result<Option<Line>, ConnError> {
        let read = self.read_line(max, timeout);
        match stop {
            Some(rx) => tokio::select! {
                biased;
                r = read => r.map(Some),
                _ = until_stopping(rx) => Ok(None),
            },
            None => read.await.map(Some),
        }
    }

    async fn read_line_inner(&mut self, max: usize) -> Result<Line, ConnError> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            if self.buffered_input() == 0 {
                self.flush().await?;
            }
            let buf = self.fill_buf(false).await?;
            if buf.is_empty() {
                return Ok(Line::Eof);
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if !too_long {
                if line.len() + take > max {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(&buf[..take]);
                }
            }
            self.consume(take);
            if done {
                if too_long {
                    return Ok(Line::TooLong);
                }
                line.pop(); // LF
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Line::Complete(line));
            }
        }
    }

    /// Wait (with a timeout) until input is buffered and return it without
    /// consuming it; empty at EOF. Pair with `consume` so that bytes after the end of
    /// DATA stay buffered for the next pipelined command.
    pub async fn fill(&mut self, timeout: Duration) -> Result<&[u8], ConnError> {
        self.flush_if_idle().await?;
        match tokio::time::timeout(timeout, self.fill_buf(true)).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ConnError::Timeout),
        }
    }

    /// Mark `n` bytes returned by `fill` as used.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buffered_input());
        self.pos += n;
        self.bytes_in += n as u64;
    }

    /// End the connection cleanly: flush, then shut down our sending side, so
    /// that over TLS a close_notify goes out (openssl and others report a
    /// truncation attack otherwise). Bounded: a peer that stopped reading must
    /// not hold the task.
    pub async fn close(self) -> io::Result<()> {
        const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
        match tokio::time::timeout(CLOSE_TIMEOUT, self.into_inner()).await {
            Ok(Ok(mut stream)) => {
                // The peer may be gone already; its reset is no news.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "closing timed out")),
        }
    }

    /// Like `close`, then read and drop whatever the peer still sends until it
    /// closes too or `linger` has passed (a lingering close, as HTTP servers
    /// do): closing a socket with unread input makes the kernel answer with a
    /// reset, which can destroy the last replies before the client reads them.
    pub async fn close_lingering(self, linger: Duration) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + linger;
        let mut stream = match tokio::time::timeout_at(deadline, self.into_inner()).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "closing timed out")),
        };
        if tokio::time::timeout_at(deadline, stream.shutdown())
            .await
            .is_err()
        {
            return Ok(());
        }
        // On the heap: this future is part of every session's.
        let mut sink = vec![0u8; 16 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Give back the stream (after flushing).
    async fn into_inner(mut self) -> io::Result<S> {
        self.flush().await?;
        Ok(self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn lines_crlf_lf_and_too_long() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut c = Conn::new(server);
        tokio::spawn(async move {
            client.write_all(b"HELO a\r\nNOOP\n").await.unwrap();
            client.write_all(&[b'x'; 100]).await.unwrap();
            client.write_all(b"\r\nQUIT\r\npartial").await.unwrap();
        });
        assert_eq!(
            c.read_line(20, T).await.unwrap(),
            Line::Complete(b"HELO a".to_vec())
        );
        assert_eq!(
            c.read_line(20, T).await.unwrap(),
            Line::Complete(b"NOOP".to_vec())
        );
        assert_eq!(c.read_line(20, T).await.unwrap(), Line::TooLong);
        assert_eq!(
            c.read_line(20, T).await.unwrap(),
            Line::Complete(b"QUIT".to_vec())
        );
        assert_eq!(c.read_line(20, T).await.unwrap(), Line::Eof);
    }

    #[tokio::test]
    async fn limit_counts_the_terminator() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut c = Conn::new(server);
        client.write_all(b"abcd\r\nabc\r\n").await.unwrap();
        assert_eq!(c.read_line(5, T).await.unwrap(), Line::TooLong);
        assert_eq!(
            c.read_line(5, T).await.unwrap(),
            Line::Complete(b"abc".to_vec())
        );
    }

    /// Lines and bodies larger than one stack read arrive whole, and input
    /// pipelined behind a line stays buffered for `fill`.
    #[tokio::test]
    async fn reads_across_the_stack_buffer_and_bulk_fill() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut c = Conn::new(server);
        let long = vec![b'x'; IDLE_READ * 3];
        let body = vec![b'y'; BULK_READ * 2];
        let mut input = long.clone();
        input.extend_from_slice(b"\r\nDATA\r\n");
        input.extend_from_slice(&body);
        tokio::spawn(async move { client.write_all(&input).await.unwrap() });
        assert_eq!(
            c.read_line(IDLE_READ * 4, T).await.unwrap(),
            Line::Complete(long)
        );
        assert_eq!(
            c.read_line(100, T).await.unwrap(),
            Line::Complete(b"DATA".to_vec())
        );
        let mut got = Vec::new();
        while got.len() < body.len() {
            let b = c.fill(T).await.unwrap();
            assert!(!b.is_empty());
            let n = b.len();
            got.extend_from_slice(b);
            c.consume(n);
        }
        assert_eq!(got, body);
        assert_eq!(c.bytes_in as usize, IDLE_READ * 3 + 8 + BULK_READ * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_is_reported() {
        let (_client, server) = tokio::io::duplex(64);
        let mut c = Conn::new(server);
        assert!(matches!(c.read_line(20, T).await, Err(ConnError::Timeout)));
    }
}
