//! The `exec` transport filter: an external program as a filter, so users plug in
//! a transformation without recompiling (`[filter.exec.NAME] command = [...]`).
//!
//! Protocol (documented in maildird(8), EXEC FILTER PROTOCOL): per connection two
//! processes are started, `command... decode` (stdin: bytes from the wire side,
//! stdout: bytes toward the protocol) and `command... encode` (stdin: bytes from
//! the protocol, stdout: bytes toward the wire), with `MAILDIRD_PEER`,
//! `MAILDIRD_LISTENER` and `MAILDIRD_SIDE` (server|client) in the environment.
//! They must write their output as soon as they have it (unbuffered). When
//! either exits the connection ends; both are killed when the connection ends.
//!
//! The processes are spawned with `std::process` and their pipes driven by
//! tokio's `unix::pipe` (the tokio `process` feature is not enabled).

use std::future::Future;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::{BoxFuture, BoxedIo, ConnMeta, Factory, Filter, FilterContext, Side};

/// How long the encoder may take to pass on the last replies when the
/// connection ends before it is killed.
const LINGER: Duration = Duration::from_secs(5);

/// The factory registered under `exec` (used for every `exec.NAME`).
pub fn factory() -> Factory {
    Arc::new(|ctx: &FilterContext<'_>| {
        if !ctx.name.starts_with("exec.") {
            return Err("name the program: exec.NAME with a [filter.exec.NAME] section".into());
        }
        let settings = ctx
            .settings
            .and_then(toml::Value::as_table)
            .ok_or_else(|| format!("needs a [filter.{}] section with command = [...]", ctx.name))?;
        let mut command = None;
        for (k, v) in settings {
            match k.as_str() {
                "command" => {
                    let list = v
                        .as_array()
                        .ok_or("command must be a list: [\"/path/prog\", \"arg\"...]")?;
                    let words: Vec<String> = list
                        .iter()
                        .map(|w| w.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or("command must hold strings")?;
                    command = Some(words);
                }
                other => return Err(format!("unknown setting {other:?} (command)")),
            }
        }
        let command = command.ok_or("command = [\"/path/prog\", ...] is required")?;
        let prog = command.first().ok_or("command must not be empty")?;
        let prog = PathBuf::from(prog);
        if prog.components().count() > 1 && !prog.is_file() {
            return Err(format!("program {} not found", prog.display()));
        }
        Ok(Arc::new(ExecFilter {
            name: ctx.name.to_string(),
            command,
            side: ctx.side,
        }) as Arc<dyn Filter>)
    })
}

/// An `exec.NAME` filter.
pub struct ExecFilter {
    name: String,
    command: Vec<String>,
    side: Side,
}

impl ExecFilter {
    pub fn new(name: &str, command: Vec<String>, side: Side) -> ExecFilter {
        ExecFilter {
            name: name.to_string(),
            command,
            side,
        }
    }

    fn spawn(&self, mode: &str, meta: &ConnMeta) -> io::Result<(Child, OwnedFd, OwnedFd)> {
        let (prog, args) = self
            .command
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .arg(mode)
            .env(
                "MAILDIRD_PEER",
                meta.peer.map(|p| p.to_string()).unwrap_or_default(),
            )
            .env("MAILDIRD_LISTENER", &meta.listener)
            .env(
                "MAILDIRD_SIDE",
                match self.side {
                    Side::Server => "server",
                    Side::Client => "client",
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {prog}: {e}", self.name)))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("no pipes"));
        };
        Ok((child, OwnedFd::from(stdin), OwnedFd::from(stdout)))
    }
}

/// The two processes of a connection; killed (and reaped) once.
#[derive(Default)]
struct Procs(Mutex<Vec<Child>>);

impl Procs {
    fn kill_all(&self) {
        let children = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for mut c in children {
            let _ = c.kill();
            if !matches!(c.try_wait(), Ok(Some(_))) {
                // SIGKILL is not instant; reap without blocking the runtime.
                std::thread::spawn(move || {
                    let _ = c.wait();
                });
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl Filter for ExecFilter {
    fn name(&self) -> &str {
        &self.name
    }

    /// An external program: whatever it buffers can never be inspected.
    fn may_hold_input(&self) -> bool {
        true
    }

    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        Box::pin(async move {
            let procs = Arc::new(Procs::default());
            let (dec, dec_in, dec_out) = self.spawn("decode", meta)?;
            procs.0.lock().unwrap_or_else(|p| p.into_inner()).push(dec);
            let (enc, enc_in, enc_out) = self.spawn("encode", meta)?;
            procs.0.lock().unwrap_or_else(|p| p.into_inner()).push(enc);
            let dec_in = pipe::Sender::from_owned_fd(dec_in)?;
            let dec_out = pipe::Receiver::from_owned_fd(dec_out)?;
            let enc_in = pipe::Sender::from_owned_fd(enc_in)?;
            let enc_out = pipe::Receiver::from_owned_fd(enc_out)?;
            let (wire_r, wire_w) = tokio::io::split(io);
            // wire -> decode: the wire's EOF closes decode's stdin.
            let inbound = tokio::spawn(pump(wire_r, dec_in, false));
            // encode -> wire: when encode exits, the connection ends.
            let p2 = procs.clone();
            let outbound = tokio::spawn(async move {
                pump(enc_out, wire_w, true).await;
                p2.kill_all();
            });
            Ok(Box::new(ExecIo {
                from_decode: dec_out,
                to_encode: Some(enc_in),
                inbound: Some(inbound),
                outbound: Some(outbound),
                procs,
            }) as BoxedIo)
        })
    }
}

/// Copy until EOF or an error, flushing each chunk (the peer must see replies
/// now); then shut the destination down.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, flush: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or(&[]);
        if to.write_all(chunk).await.is_err() {
            break;
        }
        if flush && to.flush().await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The protocol's end: reads what `decode` writes, writes to `encode`.
pub struct ExecIo {
    from_decode: pipe::Receiver,
    to_encode: Option<pipe::Sender>,
    inbound: Option<JoinHandle<()>>,
    outbound: Option<JoinHandle<()>>,
    procs: Arc<Procs>,
}

impl AsyncRead for ExecIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.from_decode).poll_read(cx, buf)
    }
}

impl AsyncWrite for ExecIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.to_encode.as_mut() {
            Some(p) => Pin::new(p).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.to_encode.as_mut() {
            Some(p) => Pin::new(p).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    /// Close encode's stdin and wait until it has passed everything to the wire.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.to_encode = None;
        if let Some(h) = self.outbound.as_mut() {
            if Pin::new(h).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.outbound = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for ExecIo {
    fn drop(&mut self) {
        // EOF to encode; it passes on the last replies, then both are killed.
        self.to_encode = None;
        let procs = self.procs.clone();
        let outbound = self.outbound.take();
        let inbound = self.inbound.take();
        let finish = async move {
            if let Some(h) = outbound {
                let _ = tokio::time::timeout(LINGER, h).await;
            }
            if let Some(h) = inbound {
                h.abort();
            }
            procs.kill_all();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(finish);
            }
            Err(_) => {
                if let Some(h) = &self.inbound {
                    h.abort();
                }
                self.procs.kill_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn filter(script: &str) -> ExecFilter {
        ExecFilter::new(
            "exec.t",
            vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into()],
            Side::Server,
        )
    }

    #[tokio::test]
    async fn bytes_pass_through_both_programs() {
        // decode upper-cases (sed -u: unbuffered), encode prefixes side and listener.
        let f = filter(
            r#"case "$1" in decode) exec sed -u y/abcdefghijklmnopqrstuvwxyz/ABCDEFGHIJKLMNOPQRSTUVWXYZ/;; encode) printf "$MAILDIRD_SIDE:$MAILDIRD_LISTENER:"; exec cat;; esac"#,
        );
        let (mut client, server) = tokio::io::duplex(1024);
        let mut meta = ConnMeta {
            listener: "smtp".into(),
            ..ConnMeta::default()
        };
        let mut io = f.wrap(Box::new(server), &mut meta).await.unwrap();
        client.write_all(b"ehlo x\r\n").await.unwrap();
        let mut buf = [0u8; 8];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"EHLO X\r\n");
        io.write_all(b"250 ok\r\n").await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"server:smtp:250 ok\r\n");
    }

    #[tokio::test]
    async fn a_program_that_exits_ends_the_connection() {
        // decode exits at once: the protocol sees EOF; encode exiting closes the wire.
        let f = filter(r#"case "$1" in decode) exit 0;; encode) exit 0;; esac"#);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut meta = ConnMeta::default();
        let mut io = f.wrap(Box::new(server), &mut meta).await.unwrap();
        let mut buf = Vec::new();
        assert_eq!(io.read_to_end(&mut buf).await.unwrap(), 0);
        let mut got = Vec::new();
        assert_eq!(client.read_to_end(&mut got).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let f = ExecFilter::new("exec.t", vec!["/nonexistent/prog".into()], Side::Server);
        let (_c, server) = tokio::io::duplex(64);
        let mut meta = ConnMeta::default();
        assert!(f.wrap(Box::new(server), &mut meta).await.is_err());
    }

    #[test]
    fn settings_are_checked() {
        let reg = super::super::Registry::builtin();
        let cases = [
            ("", "exec.x", "needs a [filter.exec.x]"),
            ("[filter.exec.x]\n", "exec.x", "required"),
            ("[filter.exec.x]\ncommand = []\n", "exec.x", "empty"),
            (
                "[filter.exec.x]\ncommand = \"/bin/cat\"\n",
                "exec.x",
                "must be a list",
            ),
            (
                "[filter.exec.x]\ncommand = [\"/no/such\"]\n",
                "exec.x",
                "not found",
            ),
            (
                "[filter.exec.x]\ncommand = [\"/bin/cat\"]\nx = 1\n",
                "exec.x",
                "unknown setting",
            ),
            ("", "exec", "exec.NAME"),
        ];
        for (cfg, name, want) in cases {
            let cfg = crate::config::Config::parse(cfg, "t").unwrap();
            let e = reg
                .build(&cfg, &[name.to_string()], Side::Server)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(want), "{cfg:?}: {e}");
        }
        let cfg = crate::config::Config::parse("[filter.exec.x]\ncommand = [\"/bin/cat\"]\n", "t")
            .unwrap();
        assert!(reg.build(&cfg, &["exec.x".into()], Side::Client).is_ok());
    }
}
