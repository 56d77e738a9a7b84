//! The `zlib` transport filter: raw DEFLATE (RFC 1951, no zlib header: wbits -15)
//! in both directions, with the framing of RFC 4978 §4: every flush of the stream
//! ends with a sync flush (an empty stored block, `00 00 ff ff`), so each reply
//! is decodable by the peer as soon as it is sent. Symmetric: the same filter
//! serves the daemon and `maildird tunnel`.
//!
//! Buffers are bounded: compressed input is read 16 KiB at a time and inflated
//! straight into the caller's buffer; compressed output is drained to the wire
//! before more is accepted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{BoxFuture, BoxedIo, ConnMeta, Factory, Filter, FilterContext};

/// Compressed bytes read from the wire per read.
const IN_BUF: usize = 16 * 1024;
/// Compressed bytes held for the wire before new input is refused (back-pressure).
const OUT_BUF: usize = 16 * 1024;

/// `[filter.zlib]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Compression level 0-9 (default 6, zlib's default).
    #[serde(default = "default_level")]
    level: u32,
}

fn default_level() -> u32 {
    6
}

/// The factory registered under `zlib`.
pub fn factory() -> Factory {
    Arc::new(|ctx: &FilterContext<'_>| {
        let settings: Settings = match ctx.settings {
            Some(v) => v.clone().try_into().map_err(|e| format!("{e}"))?,
            None => Settings {
                level: default_level(),
            },
        };
        if settings.level > 9 {
            return Err(format!("level must be 0-9, not {}", settings.level));
        }
        Ok(Arc::new(ZlibFilter {
            level: settings.level,
        }) as Arc<dyn Filter>)
    })
}

/// The `zlib` filter.
pub struct ZlibFilter {
    level: u32,
}

impl Filter for ZlibFilter {
    fn name(&self) -> &str {
        "zlib"
    }

    /// One DEFLATE block can carry STARTTLS and the commands after it; what is
    /// not yet inflated into the caller's buffer stays here.
    fn may_hold_input(&self) -> bool {
        true
    }

    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        _meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        let level = self.level;
        Box::pin(async move { Ok(Box::new(ZlibIo::new(io, level)) as BoxedIo) })
    }
}

/// A stream that deflates what is written and inflates what is read.
pub struct ZlibIo<T> {
    inner: T,
    inflate: Decompress,
    /// Compressed input: `rbuf[rpos..rlen]` is not inflated yet.
    rbuf: Box<[u8]>,
    rpos: usize,
    rlen: usize,
    /// The wire reached EOF, or the peer finished its stream.
    read_done: bool,
    deflate: Compress,
    /// Compressed output: `wbuf[wpos..]` is not on the wire yet.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Input was deflated since the last sync flush.
    dirty: bool,
    /// A flush block is in `wbuf`, waiting to be drained.
    flush_emitted: bool,
    finished: bool,
    /// The peer's DEFLATE stream ended with a final block.
    stream_end: bool,
}

impl<T> ZlibIo<T> {
    /// `level`: 0 (store) to 9 (best).
    pub fn new(inner: T, level: u32) -> ZlibIo<T> {
        ZlibIo {
            inner,
            // `false`: no zlib header, i.e. raw DEFLATE (wbits -15).
            inflate: Decompress::new(false),
            rbuf: vec![0u8; IN_BUF].into_boxed_slice(),
            rpos: 0,
            rlen: 0,
            read_done: false,
            deflate: Compress::new(Compression::new(level.min(9)), false),
            wbuf: Vec::with_capacity(OUT_BUF + 64),
            wpos: 0,
            dirty: false,
            flush_emitted: false,
            finished: false,
            stream_end: false,
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zlib: {e}"))
}

impl<T: AsyncWrite + Unpin> ZlibIo<T> {
    /// Write all pending compressed output to the wire.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let pending = self.wbuf.get(self.wpos..).unwrap_or(&[]);
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// Emit a sync (or finish) flush into `wbuf` and drain it. zlib's rule: the
    /// flush is complete when deflate left room in the output buffer.
    fn poll_deflate_flush(
        &mut self,
        cx: &mut Context<'_>,
        flush: FlushCompress,
    ) -> Poll<io::Result<()>> {
        if !self.flush_emitted {
            loop {
                ready!(self.poll_drain(cx))?;
                self.deflate
                    .compress_vec(&[], &mut self.wbuf, flush)
                    .map_err(invalid)?;
                if self.wbuf.len() < self.wbuf.capacity() {
                    break;
                }
            }
            // Only the draining is left: a retry after Pending must not flush again.
            self.flush_emitted = true;
        }
        ready!(self.poll_drain(cx))?;
        self.flush_emitted = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ZlibIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 || this.stream_end {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Inflate what we have (also with no input: inflate may hold output).
            let input = this.rbuf.get(this.rpos..this.rlen).unwrap_or(&[]);
            let (in0, out0) = (this.inflate.total_in(), this.inflate.total_out());
            let out = buf.initialize_unfilled();
            let status = this
                .inflate
                .decompress(input, out, FlushDecompress::None)
                .map_err(invalid)?;
            let consumed = usize::try_from(this.inflate.total_in() - in0).unwrap_or(0);
            let produced = usize::try_from(this.inflate.total_out() - out0).unwrap_or(0);
            this.rpos += consumed;
            if produced > 0 {
                buf.advance(produced);
                return Poll::Ready(Ok(()));
            }
            if status == Status::StreamEnd {
                // The peer finished its DEFLATE stream: end of data.
                this.stream_end = true;
                return Poll::Ready(Ok(()));
            }
            if consumed > 0 {
                continue;
            }
            if this.read_done {
                // EOF with or without a final block: a clean end (RFC 4978 has no
                // trailer; the connection closing ends the stream).
                return Poll::Ready(Ok(()));
            }
            // Need more compressed input.
            if this.rpos == this.rlen {
                this.rpos = 0;
                this.rlen = 0;
            }
            let mut rb = ReadBuf::new(this.rbuf.get_mut(this.rlen..).unwrap_or(&mut []));
            if rb.remaining() == 0 {
                // Cannot happen: inflate consumes input while it has output room.
                return Poll::Ready(Err(invalid("input buffer stuck")));
            }
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.read_done = true;
            }
            this.rlen += n;
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ZlibIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if this.wbuf.len() >= OUT_BUF {
                ready!(this.poll_drain(cx))?;
            }
            let in0 = this.deflate.total_in();
            this.deflate
                .compress_vec(buf, &mut this.wbuf, FlushCompress::None)
                .map_err(invalid)?;
            let consumed = usize::try_from(this.deflate.total_in() - in0).unwrap_or(0);
            if consumed > 0 {
                this.dirty = true;
                return Poll::Ready(Ok(consumed));
            }
            // Output buffer full: drain it, then deflate again.
            ready!(this.poll_drain(cx))?;
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.dirty {
            ready!(this.poll_deflate_flush(cx, FlushCompress::Sync))?;
            this.dirty = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.finished {
            // A final block lets the peer tell a complete stream from a cut one.
            ready!(this.poll_deflate_flush(cx, FlushCompress::Finish))?;
            this.finished = true;
            this.dirty = false;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Inflate raw DEFLATE with a fresh, independent decoder (sync flushed input).
    fn inflate_all(d: &mut Decompress, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            let in0 = d.total_in();
            out.reserve(4096);
            d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                .unwrap();
            pos += (d.total_in() - in0) as usize;
            if pos == input.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn each_flush_makes_the_write_decodable_now() {
        let (mut peer, server) = tokio::io::duplex(1 << 16);
        let mut io = ZlibIo::new(server, 6);
        let mut d = Decompress::new(false);
        for reply in [
            &b"220 hello\r\n"[..],
            b"250-one\r\n250 two\r\n",
            b"354 go\r\n",
        ] {
            io.write_all(reply).await.unwrap();
            io.flush().await.unwrap();
            // Everything sent so far is on the duplex; it must end in a sync marker.
            let mut wire = vec![0u8; 1 << 16];
            let n = peer.read(&mut wire).await.unwrap();
            assert!(wire[..n].ends_with(&[0, 0, 0xff, 0xff]), "{:?}", &wire[..n]);
            assert_eq!(inflate_all(&mut d, &wire[..n]), reply);
        }
        // A flush with nothing new writes nothing.
        io.flush().await.unwrap();
        io.write_all(b"x").await.unwrap();
        io.flush().await.unwrap();
        let mut wire = vec![0u8; 64];
        let n = peer.read(&mut wire).await.unwrap();
        assert_eq!(inflate_all(&mut d, &wire[..n]), b"x");
    }

    #[tokio::test]
    async fn reads_a_peer_stream_and_eof_without_trailer_is_clean() {
        let (mut peer, server) = tokio::io::duplex(1 << 16);
        let mut io = ZlibIo::new(server, 6);
        let mut c = Compress::new(Compression::default(), false);
        let mut wire = Vec::with_capacity(1024);
        c.compress_vec(b"EHLO x\r\n", &mut wire, FlushCompress::Sync)
            .unwrap();
        peer.write_all(&wire).await.unwrap();
        let mut line = [0u8; 8];
        io.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"EHLO x\r\n");
        drop(peer);
        let mut rest = Vec::new();
        assert_eq!(io.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let (mut peer, server) = tokio::io::duplex(1 << 16);
        let mut io = ZlibIo::new(server, 6);
        peer.write_all(&[0xff; 64]).await.unwrap();
        let mut buf = [0u8; 16];
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    async fn write_chunked(io: &mut (impl AsyncWrite + Unpin), data: &[u8], cuts: &[usize]) {
        let mut rest = data;
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            io.write_all(&rest[..n]).await.unwrap();
            if i % 3 == 0 {
                io.flush().await.unwrap();
            }
            rest = &rest[n..];
            i += 1;
        }
        io.flush().await.unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Two ZlibIo ends over a small duplex: random data in random chunks
        /// arrives byte-exact both ways, the stream then closes cleanly.
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..40_000),
                      text in proptest::collection::vec(b'a'..=b'e', 0..40_000),
                      cuts in proptest::collection::vec(1usize..5000, 1..20),
                      level in 0u32..=9) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (a, b) = tokio::io::duplex(333);
                let mut a = ZlibIo::new(a, level);
                let mut b = ZlibIo::new(b, 9 - level);
                let (d1, t1, c1) = (data.clone(), text.clone(), cuts.clone());
                let task = tokio::spawn(async move {
                    write_chunked(&mut a, &d1, &c1).await;
                    write_chunked(&mut a, &t1, &c1).await;
                    a.shutdown().await.unwrap();
                    let mut back = Vec::new();
                    a.read_to_end(&mut back).await.unwrap();
                    back
                });
                let mut got = Vec::new();
                b.read_to_end(&mut got).await.unwrap();
                let mut want = data.clone();
                want.extend_from_slice(&text);
                assert_eq!(got.len(), want.len());
                assert!(got == want);
                write_chunked(&mut b, &got, &cuts).await;
                b.shutdown().await.unwrap();
                let back = task.await.unwrap();
                assert!(back == want);
            });
        }
    }
}
