//! Listening sockets: inherited from systemd (`activation`), bound by the daemon
//! (`standalone`), or one connection on stdin/stdout (`inetd`); `accept_loop`
//! hands each accepted connection on; `accept` holds the connection caps and
//! keep-alive options.

pub mod accept;
pub mod activation;
pub mod inetd;
pub mod standalone;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{Config, ListenerConfig};

/// A listening socket and the listener config it serves.
#[derive(Debug)]
pub struct Bound {
    pub config: ListenerConfig,
    pub socket: TcpListener,
    /// Inherited from systemd (true) or bound by us (false).
    pub inherited: bool,
}

/// Why the listening sockets could not be taken (a runtime failure, exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket activation: {0}")]
    Activation(#[source] libsystemd::errors::SdError),
    #[error("socket activation: fd {fd}: {source}")]
    NonBlocking { fd: i32, source: std::io::Error },
    #[error(
        "systemd passed sockets but none matches a [[listener]] (by FileDescriptorName= or address)"
    )]
    NoMatch,
    #[error("listener {name:?}: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("nothing to serve: no socket from systemd and no [[listener]] with a bind address")]
    NothingToServe,
}

/// Take the listening sockets: the ones systemd passed, or, when it passed none,
/// bind each listener's `bind` address. Must run before any thread exists.
pub fn take_sockets(config: &Config) -> Result<Vec<Bound>, ListenError> {
    let inherited = activation::receive()?;
    if !inherited.is_empty() {
        let (bound, unmatched) = activation::match_listeners(&config.listeners, inherited);
        for a in unmatched {
            tracing::warn!(name = %a.name.as_deref().unwrap_or("-"), addr = ?a.local, "systemd passed a socket that matches no [[listener]]; ignoring it");
        }
        for l in &config.listeners {
            if !bound.iter().any(|b| b.config.name == l.name) {
                tracing::info!(listener = %l.name, "no socket from systemd for this listener; not serving it");
            }
        }
        if bound.is_empty() {
            return Err(ListenError::NoMatch);
        }
        return Ok(bound);
    }
    standalone::bind_all(&config.listeners)
}

/// Accept connections on `listener` until `stop` turns true, handing each to
/// `on_accept` with its peer. On a dual-stack socket (systemd's
/// BindIPv6Only=both) IPv4 clients arrive as `::ffff:a.b.c.d`: they are handed
/// on as the IPv4 clients they are. Accept errors (EMFILE and friends) back off
/// briefly instead of spinning.
pub async fn accept_loop(
    name: &str,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    mut on_accept: impl FnMut(tokio::net::TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => on_accept(stream, canonical(peer)),
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}
