//! The `log` transport filter: a pass-through wrapper that counts the bytes in each
//! direction (logged when the connection closes) and, with `[filter.log]
//! content = true`, logs every plaintext line with credentials replaced by `****`
//! (secrets never reach a log, at any level: README, Security).
//!
//! The bytes on the wire are never changed: lines are split, truncated and
//! redacted only in the copy that goes to the log.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{BoxFuture, BoxedIo, ConnMeta, Factory, Filter, FilterContext, Side};

/// Longest line prefix kept for the log; the rest of a longer line is dropped
/// from the log (not from the wire) and the entry is marked as truncated.
pub const MAX_LOGGED_LINE: usize = 512;

/// `[filter.log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    /// Log each plaintext line (redacted). Default: false (byte counts only).
    #[serde(default)]
    content: bool,
}

/// The factory registered under `log`.
pub fn factory() -> Factory {
    Arc::new(|ctx: &FilterContext<'_>| {
        let settings: Settings = match ctx.settings {
            Some(v) => v.clone().try_into().map_err(|e| format!("{e}"))?,
            None => Settings::default(),
        };
        Ok(Arc::new(LogFilter {
            content: settings.content,
            side: ctx.side,
        }) as Arc<dyn Filter>)
    })
}

/// The `log` filter.
pub struct LogFilter {
    content: bool,
    side: Side,
}

impl LogFilter {
    pub fn new(content: bool, side: Side) -> LogFilter {
        LogFilter { content, side }
    }
}

impl Filter for LogFilter {
    fn name(&self) -> &str {
        "log"
    }

    /// Every read is passed up as it comes; only a copy is kept for the log.
    fn may_hold_input(&self) -> bool {
        false
    }

    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        _meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        let (content, side) = (self.content, self.side);
        Box::pin(async move { Ok(Box::new(LogIo::new(io, content, side)) as BoxedIo) })
    }
}

/// Who sent a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// The mail client (`C:` in the log).
    Client,
    /// The server (`S:` in the log).
    Server,
}

/// Decides which lines carry credentials. A pure state machine fed the lines of
/// both directions in the order they pass; it returns the text to log.
///
/// SMTP (RFC 4954 §4) and POP3 (RFC 5034 §4) SASL exchanges look alike: the
/// client sends `AUTH MECH [initial-response]`, the server answers with
/// continuations (`334 ...` / `+ ...`) that the client answers with one line
/// each, until a final reply. Every client line from `AUTH` to that final reply
/// is secret (also when a client sends its response before the challenge).
/// POP3 `PASS` (RFC 1939 §7) and the `APOP` digest are secret too.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    in_sasl: bool,
}

const MASK: &str = "****";

impl Redactor {
    pub fn new() -> Redactor {
        Redactor::default()
    }

    /// Feed one line (without its terminator); returns what may be logged.
    pub fn line(&mut self, dir: Dir, line: &[u8]) -> String {
        match dir {
            Dir::Server => {
                // A continuation keeps the exchange open; any other reply ends it.
                self.in_sasl = is_continuation(line);
                printable(line)
            }
            Dir::Client => {
                if self.in_sasl {
                    return MASK.to_string();
                }
                let text = printable(line);
                let mut words = text.split(' ');
                let verb = words.next().unwrap_or("");
                if verb.eq_ignore_ascii_case("AUTH") {
                    // Whatever follows, the next client lines are SASL responses
                    // until the server gives a final reply.
                    self.in_sasl = true;
                    return match (words.next(), words.next()) {
                        (Some(mech), Some(_)) => format!("{verb} {mech} {MASK}"),
                        _ => text,
                    };
                }
                if verb.eq_ignore_ascii_case("PASS") && text.len() > verb.len() {
                    return format!("{verb} {MASK}");
                }
                if verb.eq_ignore_ascii_case("APOP") {
                    return match words.next() {
                        Some(user) => format!("{verb} {user} {MASK}"),
                        None => text,
                    };
                }
                text
            }
        }
    }
}

/// `334 ...` (SMTP, RFC 4954 §4) or `+ ...` / a bare `+` (POP3, RFC 5034 §4).
fn is_continuation(line: &[u8]) -> bool {
    line == b"334" || line.starts_with(b"334 ") || line == b"+" || line.starts_with(b"+ ")
}

/// Lossy UTF-8 with control characters escaped, so a line cannot forge log lines.
fn printable(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(line);
    if s.chars().any(char::is_control) {
        s.chars().flat_map(char::escape_debug).collect()
    } else {
        s.into_owned()
    }
}

/// Splits one direction's bytes into lines for the log, keeping at most
/// `MAX_LOGGED_LINE` bytes of each.
#[derive(Debug, Default)]
struct LineSplitter {
    partial: Vec<u8>,
    truncated: bool,
}

impl LineSplitter {
    /// Feed bytes; calls `emit(line, truncated)` for each complete line.
    fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        while !bytes.is_empty() {
            let (chunk, end) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (bytes.get(..i).unwrap_or(&[]), true),
                None => (bytes, false),
            };
            let room = MAX_LOGGED_LINE.saturating_sub(self.partial.len());
            if chunk.len() > room {
                self.truncated = true;
            }
            self.partial
                .extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
            if !end {
                return;
            }
            if self.partial.last() == Some(&b'\r') && !self.truncated {
                self.partial.pop();
            }
            emit(&self.partial, self.truncated);
            self.partial.clear();
            self.truncated = false;
            bytes = bytes.get(chunk.len() + 1..).unwrap_or(&[]);
        }
    }
}

/// The content logger: both directions' splitters and the shared redactor.
#[derive(Debug, Default)]
struct ContentLog {
    redactor: Redactor,
    client: LineSplitter,
    server: LineSplitter,
}

impl ContentLog {
    fn feed(&mut self, dir: Dir, bytes: &[u8]) {
        let redactor = &mut self.redactor;
        let splitter = match dir {
            Dir::Client => &mut self.client,
            Dir::Server => &mut self.server,
        };
        splitter.feed(bytes, |line, truncated| {
            let text = redactor.line(dir, line);
            let who = match dir {
                Dir::Client => "C:",
                Dir::Server => "S:",
            };
            if truncated {
                tracing::info!(filter = "log", "{who} {text} [truncated]");
            } else {
                tracing::info!(filter = "log", "{who} {text}");
            }
        });
    }
}

/// The pass-through stream: counts and (optionally) logs what passes.
pub struct LogIo<T> {
    inner: T,
    side: Side,
    read: u64,
    written: u64,
    content: Option<ContentLog>,
}

impl<T> LogIo<T> {
    pub fn new(inner: T, content: bool, side: Side) -> LogIo<T> {
        LogIo {
            inner,
            side,
            read: 0,
            written: 0,
            content: content.then(ContentLog::default),
        }
    }

    /// Who sent the bytes we read: the client, when we are the server.
    fn read_dir(&self) -> Dir {
        match self.side {
            Side::Server => Dir::Client,
            Side::Client => Dir::Server,
        }
    }

    fn write_dir(&self) -> Dir {
        match self.side {
            Side::Server => Dir::Server,
            Side::Client => Dir::Client,
        }
    }
}

impl<T> Drop for LogIo<T> {
    fn drop(&mut self) {
        // Dropped inside the session's span, so the line carries the session id.
        let (from_peer, to_peer) = (self.read, self.written);
        tracing::info!(filter = "log", from_peer, to_peer, "bytes");
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LogIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let new = buf.filled().get(before..).unwrap_or(&[]);
            this.read += new.len() as u64;
            let dir = this.read_dir();
            if let Some(c) = this.content.as_mut() {
                c.feed(dir, new);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LogIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            // Only what the inner stream accepted has passed.
            let sent = buf.get(..n).unwrap_or(buf);
            this.written += n as u64;
            let dir = this.write_dir();
            if let Some(c) = this.content.as_mut() {
                c.feed(dir, sent);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use Dir::{Client as C, Server as S};

    /// Feeds a transcript; returns what would be logged for each line.
    fn run(lines: &[(Dir, &str)]) -> Vec<String> {
        let mut r = Redactor::new();
        lines
            .iter()
            .map(|(d, l)| r.line(*d, l.as_bytes()))
            .collect()
    }

    #[test]
    fn redaction_table() {
        // (transcript, expected log lines, secrets that must not appear)
        #[allow(clippy::type_complexity)]
        let cases: &[(&[(Dir, &str)], &[&str])] = &[
            // SMTP AUTH PLAIN with an initial response (RFC 4954 §4).
            (
                &[
                    (C, "AUTH PLAIN AGFsaWNlAHMzY3JldA=="),
                    (S, "235 2.7.0 ok"),
                    (C, "MAIL FROM:<a@b>"),
                ],
                &["AUTH PLAIN ****", "235 2.7.0 ok", "MAIL FROM:<a@b>"],
            ),
            // SMTP AUTH PLAIN without: the response answers a 334.
            (
                &[
                    (C, "auth plain"),
                    (S, "334 "),
                    (C, "AGFsaWNlAHMzY3JldA=="),
                    (S, "235 2.7.0 ok"),
                    (C, "QUIT"),
                ],
                &["auth plain", "334 ", "****", "235 2.7.0 ok", "QUIT"],
            ),
            // SMTP AUTH LOGIN: user and password answer challenges.
            (
                &[
                    (C, "AUTH LOGIN"),
                    (S, "334 VXNlcm5hbWU6"),
                    (C, "YWxpY2U="),
                    (S, "334 UGFzc3dvcmQ6"),
                    (C, "czNjcmV0"),
                    (S, "535 5.7.8 no"),
                    (C, "NOOP"),
                ],
                &[
                    "AUTH LOGIN",
                    "334 VXNlcm5hbWU6",
                    "****",
                    "334 UGFzc3dvcmQ6",
                    "****",
                    "535 5.7.8 no",
                    "NOOP",
                ],
            ),
            // AUTH LOGIN with the user name as initial response.
            (
                &[
                    (C, "AUTH LOGIN YWxpY2U="),
                    (S, "334 UGFzc3dvcmQ6"),
                    (C, "czNjcmV0"),
                    (S, "235 ok"),
                ],
                &["AUTH LOGIN ****", "334 UGFzc3dvcmQ6", "****", "235 ok"],
            ),
            // A client that sends its response before the challenge arrives.
            (
                &[
                    (C, "AUTH PLAIN"),
                    (C, "AGFsaWNlAHMzY3JldA=="),
                    (S, "334 "),
                    (S, "235 ok"),
                ],
                &["AUTH PLAIN", "****", "334 ", "235 ok"],
            ),
            // Any client line answering a 334, even without a visible AUTH.
            (&[(S, "334 x"), (C, "secret")], &["334 x", "****"]),
            // POP3 USER/PASS (RFC 1939 §7).
            (
                &[
                    (C, "USER alice"),
                    (S, "+OK"),
                    (C, "PASS s3cret Pw"),
                    (S, "+OK logged in"),
                    (C, "pass x"),
                    (C, "STAT"),
                ],
                &[
                    "USER alice",
                    "+OK",
                    "PASS ****",
                    "+OK logged in",
                    "pass ****",
                    "STAT",
                ],
            ),
            // POP3 AUTH PLAIN (RFC 5034): initial response and continuation forms.
            (
                &[
                    (C, "AUTH PLAIN AGFsaWNlAHMzY3JldA=="),
                    (S, "+OK"),
                    (C, "AUTH PLAIN"),
                    (S, "+ "),
                    (C, "AGFsaWNlAHMzY3JldA=="),
                    (S, "-ERR [AUTH] no"),
                    (S, "+"),
                    (C, "cancel?"),
                    (S, "+OK"),
                    (C, "LIST"),
                ],
                &[
                    "AUTH PLAIN ****",
                    "+OK",
                    "AUTH PLAIN",
                    "+ ",
                    "****",
                    "-ERR [AUTH] no",
                    "+",
                    "****",
                    "+OK",
                    "LIST",
                ],
            ),
            // APOP (RFC 1939 §7): the digest.
            (
                &[
                    (C, "APOP alice c4c9334bac560ecc979e58001b3e22fb"),
                    (S, "+OK"),
                ],
                &["APOP alice ****", "+OK"],
            ),
            // "+OK" is not a continuation; control characters are escaped.
            (
                &[(S, "+OK ready"), (C, "NOOP\u{1b}[2J")],
                &["+OK ready", "NOOP\\u{1b}[2J"],
            ),
        ];
        for (transcript, want) in cases {
            assert_eq!(run(transcript), *want, "transcript {transcript:?}");
        }
    }

    #[test]
    fn splitter_handles_split_crlf_and_long_lines() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for part in [&b"PA"[..], b"SS x\r", b"\nNO", b"OP\n"] {
            s.feed(part, |l, t| out.push((l.to_vec(), t)));
        }
        let long = vec![b'a'; MAX_LOGGED_LINE + 10];
        s.feed(&long, |l, t| out.push((l.to_vec(), t)));
        s.feed(b"\r\n", |l, t| out.push((l.to_vec(), t)));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], (b"PASS x".to_vec(), false));
        assert_eq!(out[1], (b"NOOP".to_vec(), false));
        assert_eq!(out[2].0.len(), MAX_LOGGED_LINE);
        assert!(out[2].1);
    }

    /// A tracing writer that collects everything logged, at every level.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn logs_lines_without_secrets_and_passes_bytes_unchanged() {
        let cap = Captured::default();
        let w = cap.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        let _g = tracing::subscriber::set_default(sub);
        let (mut client, server) = tokio::io::duplex(64);
        {
            let mut io = LogIo::new(server, true, Side::Server);
            client.write_all(b"USER alice\r\nPA").await.unwrap();
            client.write_all(b"SS hunter2\r\n").await.unwrap();
            let mut buf = vec![0u8; 24];
            io.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, b"USER alice\r\nPASS hunter2");
            io.write_all(b"+OK welcome\r\n").await.unwrap();
            let mut rest = [0u8; 2];
            io.read_exact(&mut rest).await.unwrap();
            let mut got = [0u8; 13];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"+OK welcome\r\n");
        }
        let log = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
        assert!(log.contains("C: USER alice"), "{log}");
        assert!(log.contains("C: PASS ****"), "{log}");
        assert!(log.contains("S: +OK welcome"), "{log}");
        assert!(log.contains("from_peer=26 to_peer=13"), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
    }

    proptest! {
        /// Whatever the chunking, bytes pass both ways unchanged.
        #[test]
        fn pass_through(data in proptest::collection::vec(any::<u8>(), 0..4096),
                        cuts in proptest::collection::vec(1usize..300, 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let (mut peer, server) = tokio::io::duplex(97);
                let mut io = LogIo::new(server, true, Side::Server);
                let d2 = data.clone();
                let c2 = cuts.clone();
                let writer = tokio::spawn(async move {
                    let mut rest = &d2[..];
                    let mut i = 0;
                    while !rest.is_empty() {
                        let n = c2[i % c2.len()].min(rest.len());
                        peer.write_all(&rest[..n]).await.unwrap();
                        rest = &rest[n..];
                        i += 1;
                    }
                    let mut back = Vec::new();
                    peer.shutdown().await.unwrap();
                    peer.read_to_end(&mut back).await.unwrap();
                    back
                });
                let mut got = Vec::new();
                io.read_to_end(&mut got).await.unwrap();
                let mut rest = &got[..];
                let mut i = 0;
                while !rest.is_empty() {
                    let n = cuts[(i + 1) % cuts.len()].min(rest.len());
                    io.write_all(&rest[..n]).await.unwrap();
                    rest = &rest[n..];
                    i += 1;
                }
                io.shutdown().await.unwrap();
                drop(io);
                let back = writer.await.unwrap();
                assert_eq!(&got, &data);
                assert_eq!(&back, &data);
            });
        }
    }
}
