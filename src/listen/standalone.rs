//! Sockets bound by the daemon itself when systemd passed none.

use std::net::TcpListener;

use socket2::{Domain, Protocol as SockProto, Socket, Type};

use super::{Bound, ListenError};
use crate::config::ListenerConfig;

/// Bind every listener that has a `bind` address (SO_REUSEADDR, IPV6_V6ONLY off
/// for `[::]`, backlog 1024, non-blocking).
pub fn bind_all(listeners: &[ListenerConfig]) -> Result<Vec<Bound>, ListenError> {
    let mut out = Vec::new();
    for l in listeners {
        let Some(addr) = l.bind else {
            tracing::info!(listener = %l.name, "no socket from systemd and no bind address; not serving it");
            continue;
        };
        let bind = || -> std::io::Result<TcpListener> {
            let s = Socket::new(
                Domain::for_address(addr),
                Type::STREAM,
                Some(SockProto::TCP),
            )?;
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(false)?;
            }
            s.bind(&addr.into())?;
            s.listen(1024)?;
            s.set_nonblocking(true)?;
            s.set_cloexec(true)?;
            Ok(s.into())
        };
        let socket = bind().map_err(|source| ListenError::Bind {
            name: l.name.clone(),
            addr,
            source,
        })?;
        out.push(Bound {
            config: l.clone(),
            socket,
            inherited: false,
        });
    }
    if out.is_empty() {
        return Err(ListenError::NothingToServe);
    }
    Ok(out)
}
