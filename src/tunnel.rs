//! `maildird tunnel`: the client side of the filter chain on stdin/stdout, so real
//! clients speak through zlib, TLS or an exec filter (mutt's `set tunnel=`,
//! fetchmail's `plugin`, swaks `--pipe`, scripts).
//!
//! It connects, wraps the connection in the listed filters with `Side::Client`
//! (settings from the config's `[filter.*]`, if the file exists), and copies
//! stdin -> connection and connection -> stdout, flushing every chunk so each
//! command reaches the server at once (a zlib sync flush per chunk).

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Config;
use crate::error::CommandError;
use crate::filter::{BoxedIo, ConnMeta, Registry, Side};

/// `maildird tunnel [-c FILE] [--filters a,b] HOST:PORT`. A missing config file
/// means default settings; a bad one is a config error (exit 2); a failed
/// connection or filter set-up is a runtime failure (exit 1).
pub fn run(config_path: &Path, filters: &[String], target: &str) -> Result<(), CommandError> {
    init_logging();
    let config = if config_path.exists() {
        Config::load(config_path).map_err(|e| CommandError::Config(e.to_string()))?
    } else {
        Config::parse("", "defaults").map_err(|e| CommandError::Config(e.to_string()))?
    };
    let chain = Registry::builtin()
        .build(&config, filters, Side::Client)
        .map_err(|e| {
            let at = crate::filter::chains::settings_at(&config, &e);
            CommandError::Config(format!("--filters: {}", e.at(at)))
        })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CommandError::Runtime(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| CommandError::Runtime(format!("connect to {target}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut meta = ConnMeta {
            listener: "tunnel".into(),
            peer: stream.peer_addr().ok(),
            tcp_peer: stream.peer_addr().ok(),
            local: stream.local_addr().ok(),
            ..ConnMeta::default()
        };
        let names = format!("{:?}", chain.names());
        let io = chain
            .apply(Box::new(stream), &mut meta)
            .await
            .map_err(|e| CommandError::Runtime(format!("{target}: filters {names}: {e}")))?;
        relay(io, tokio::io::stdin(), tokio::io::stdout())
            .await
            .map_err(|e| CommandError::Runtime(format!("{target}: filters {names}: {e}")))
    });
    // A blocked read of stdin must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Why a relay failed: what came from the server through the filters was not
/// a mail session. Each of these usually means the server's listener uses
/// other filters than `--filters`.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("reading from the server: {0} (does its listener use the same filters?)")]
    Read(io::Error),
    #[error(
        "the server closed the connection before sending anything \
         (does its listener use the same filters?)"
    )]
    ClosedBeforeData,
    #[error(
        "the server's first bytes are not a mail greeting: {0:?} \
         (does its listener use the same filters?)"
    )]
    NotAGreeting(String),
}

/// Copy `input` -> `io` and `io` -> `output` until the server closes. When
/// `input` ends first, the connection's sending side is shut down (zlib's final
/// block, exec's EOF) and the server's last replies are still passed on. A
/// reader of `output` that goes away ends the relay normally.
pub async fn relay(
    io: BoxedIo,
    input: impl AsyncRead + Unpin,
    output: impl AsyncWrite + Unpin,
) -> Result<(), RelayError> {
    let (from_server, to_server) = tokio::io::split(io);
    let upstream = async move {
        let _ = pump(input, to_server, |_| Ok(())).await;
        // Wait for the server side to finish.
        std::future::pending::<Result<(), RelayError>>().await
    };
    let mut first = true;
    let downstream = pump(from_server, output, move |chunk| {
        if std::mem::take(&mut first) {
            check_greeting(chunk)?;
        }
        Ok(())
    });
    tokio::select! {
        r = upstream => r,
        r = downstream => r,
    }
}

/// An SMTP or POP3 greeting is a line of printable ASCII (`220 ...`,
/// `+OK ...`); a chain that does not match the server's yields bytes that
/// are not (compressed or encrypted data, or garbage).
fn check_greeting(chunk: &[u8]) -> Result<(), RelayError> {
    let line = chunk.split(|&b| b == b'\n').next().unwrap_or(chunk);
    let text = line
        .iter()
        .all(|&b| (b' '..=b'~').contains(&b) || b == b'\r' || b == b'\t');
    if text {
        return Ok(());
    }
    let shown: Vec<u8> = chunk.iter().copied().take(16).collect();
    Err(RelayError::NotAGreeting(
        String::from_utf8_lossy(&shown).into_owned(),
    ))
}

fn hung_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    )
}

/// Copy with a flush after every chunk (each one checked by `check` first),
/// then shut the destination down. Errors reading `from` are returned, as is
/// an end before any data; a destination that fails ends the copy quietly.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut check: impl FnMut(&[u8]) -> Result<(), RelayError>,
) -> Result<(), RelayError> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = false;
    let result = loop {
        let n = match from.read(&mut buf).await {
            Ok(0) if !seen => break Err(RelayError::ClosedBeforeData),
            Ok(0) => break Ok(()),
            // After the session ran, a hang-up without a clean end (no TLS
            // close_notify, a reset after QUIT) is still the end.
            Err(e) if seen && hung_up(&e) => break Ok(()),
            Err(e) => break Err(RelayError::Read(e)),
            Ok(n) => n,
        };
        seen = true;
        let chunk = buf.get(..n).unwrap_or(&[]);
        if let Err(e) = check(chunk) {
            break Err(e);
        }
        if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
            break Ok(());
        }
    };
    let _ = to.shutdown().await;
    result
}

/// Warnings and errors on stderr (`MAILDIRD_LOG` to see more): a tunnel runs
/// under a mail client's terminal, so it stays quiet by default.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILDIRD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::zlib::ZlibIo;

    #[tokio::test]
    async fn relays_both_ways_through_zlib_and_passes_last_replies() {
        // Server: a zlib end that answers each line, then closes after QUIT.
        let (client_wire, server_wire) = tokio::io::duplex(256);
        let server = tokio::spawn(async move {
            let mut s = ZlibIo::new(server_wire, 6);
            s.write_all(b"220 hi\r\n").await.unwrap();
            s.flush().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if n == 0 || got.ends_with(b"QUIT\r\n") {
                    break;
                }
            }
            s.write_all(b"221 bye\r\n").await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let io: BoxedIo = Box::new(ZlibIo::new(client_wire, 6));
        let (mut user_in, input) = tokio::io::duplex(256);
        let (output, mut user_out) = tokio::io::duplex(256);
        // Input ends right after QUIT: the 221 must still come out.
        user_in.write_all(b"NOOP\r\nQUIT\r\n").await.unwrap();
        drop(user_in);
        relay(io, input, output).await.unwrap();
        let mut out = Vec::new();
        user_out.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"220 hi\r\n221 bye\r\n");
        assert_eq!(server.await.unwrap(), b"NOOP\r\nQUIT\r\n");
    }

    /// The client speaks zlib, the server plain text: the inflate error (or
    /// garbage, or an early close) is the relay's error, and nothing reaches
    /// the user.
    #[tokio::test]
    async fn a_chain_the_server_does_not_speak_is_an_error() {
        for (server_says, want) in [
            (
                &b"220 mx.test ESMTP maildird\r\n"[..],
                "reading from the server",
            ),
            (&b""[..], "closed the connection before"),
        ] {
            let (client_wire, mut server_wire) = tokio::io::duplex(256);
            server_wire.write_all(server_says).await.unwrap();
            drop(server_wire);
            let io: BoxedIo = Box::new(ZlibIo::new(client_wire, 6));
            let (output, mut user_out) = tokio::io::duplex(256);
            let err = relay(io, tokio::io::empty(), output).await.unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
            let mut out = Vec::new();
            user_out.read_to_end(&mut out).await.unwrap();
            assert!(out.is_empty(), "{out:?}");
        }
    }

    #[test]
    fn greetings_are_printable_lines() {
        assert!(check_greeting(b"220 mx.test ESMTP\r\n").is_ok());
        assert!(check_greeting(b"+OK ready\r\n\x00binary later").is_ok());
        assert!(check_greeting(b"\x16\x03\x01\x00").is_err());
        assert!(check_greeting(b"2\xff0 x\r\n").is_err());
    }
}
