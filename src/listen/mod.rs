//! Listening sockets: inherited from systemd (`activation`), bound by the daemon
//! (`standalone`), or one connection on stdin/stdout (`inetd`); `accept` runs the
//! accept loop with connection caps and keep-alive.

pub mod accept;
pub mod activation;
pub mod first_read;
pub mod inetd;
pub mod standalone;

use std::net::TcpListener;

use crate::config::{Config, ListenerConfig};

/// A listening socket and the listener config it serves.
#[derive(Debug)]
pub struct Bound {
    pub config: ListenerConfig,
    pub socket: TcpListener,
    /// Inherited from systemd (true) or bound by us (false).
    pub inherited: bool,
}

/// Take the listening sockets: the ones systemd passed, or, when it passed none,
/// bind each listener's `bind` address. Must run before any thread exists.
pub fn take_sockets(config: &Config) -> Result<Vec<Bound>, String> {
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
            return Err("systemd passed sockets but none matches a [[listener]] (by FileDescriptorName= or address)".into());
        }
        return Ok(bound);
    }
    standalone::bind_all(&config.listeners)
}
