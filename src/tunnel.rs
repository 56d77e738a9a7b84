//! `maildird tunnel`: the client side of the filter chain on stdin/stdout, so real
//! clients speak through zlib, TLS or an exec filter (mutt's `set tunnel=`,
//! fetchmail's `plugin`, swaks `--pipe`, scripts).
//!
//! It connects, wraps the connection in the listed filters with `Side::Client`
//! (settings from the config's `[filter.*]`, if the file exists), and copies
//! stdin -> connection and connection -> stdout, flushing every chunk so each
//! command reaches the server at once (a zlib sync flush per chunk).

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
        .map_err(|e| CommandError::Config(format!("--filters: {e}")))?;
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
        let io = chain
            .apply(Box::new(stream), &mut meta)
            .await
            .map_err(|e| CommandError::Runtime(format!("filters {:?}: {e}", chain.names())))?;
        relay(io, tokio::io::stdin(), tokio::io::stdout()).await;
        Ok(())
    });
    // A blocked read of stdin must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Copy `input` -> `io` and `io` -> `output` until the server closes. When
/// `input` ends first, the connection's sending side is shut down (zlib's final
/// block, exec's EOF) and the server's last replies are still passed on.
pub async fn relay(io: BoxedIo, input: impl AsyncRead + Unpin, output: impl AsyncWrite + Unpin) {
    let (from_server, to_server) = tokio::io::split(io);
    let upstream = async move {
        pump(input, to_server).await;
        // Wait for the server side to finish.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = upstream => {}
        _ = pump(from_server, output) => {}
    }
}

/// Copy with a flush after every chunk, then shut the destination down.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = buf.get(..n).unwrap_or(&[]);
        if to.write_all(chunk).await.is_err() || to.flush().await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
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
        relay(io, input, output).await;
        let mut out = Vec::new();
        user_out.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"220 hi\r\n221 bye\r\n");
        assert_eq!(server.await.unwrap(), b"NOOP\r\nQUIT\r\n");
    }
}
