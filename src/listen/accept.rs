//! Admission of accepted connections: the global cap (a semaphore, seed 001's
//! "limit users"), the per-IP cap, and TCP keep-alive socket options so dead
//! peers are detected (seed 001).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Keepalive;

/// Connection caps shared by all listeners.
pub struct Caps {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
    TooManyFromIp,
}

/// Holds a connection's place; dropping it frees the slot.
pub struct Admission {
    _global: OwnedSemaphorePermit,
    ip: Option<(IpAddr, Arc<Caps>)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((ip, caps)) = self.ip.take() {
            let mut m = caps.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl Caps {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<Caps> {
        Arc::new(Caps {
            global: Arc::new(Semaphore::new(max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        })
    }

    /// Admit a connection from `ip` (None: not an IP peer, e.g. inetd on a pipe).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admission, Refused> {
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::TooManyConnections)?;
        let Some(ip) = ip else {
            return Ok(Admission {
                _global: global,
                ip: None,
            });
        };
        let ip = normalize(ip);
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::TooManyFromIp);
        }
        *n += 1;
        Ok(Admission {
            _global: global,
            ip: Some((ip, self.clone())),
        })
    }

    /// Connections currently admitted.
    pub fn in_use(&self, max_connections: usize) -> usize {
        max_connections.saturating_sub(self.global.available_permits())
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Apply keep-alive and TCP_USER_TIMEOUT to an accepted connection.
pub fn apply_keepalive(stream: &TcpStream, ka: &Keepalive) -> std::io::Result<()> {
    let sock = SockRef::from(stream);
    if ka.enabled {
        let params = TcpKeepalive::new()
            .with_time(ka.idle)
            .with_interval(ka.interval)
            .with_retries(ka.count);
        sock.set_tcp_keepalive(&params)?;
    }
    if !ka.user_timeout.is_zero() {
        sock.set_tcp_user_timeout(Some(ka.user_timeout))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_and_per_ip_caps() {
        let caps = Caps::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let c: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = caps.admit(Some(a)).unwrap();
        let _p2 = caps.admit(Some(b)).unwrap();
        assert_eq!(caps.admit(Some(a)).err(), Some(Refused::TooManyFromIp));
        let _p3 = caps.admit(Some(c)).unwrap();
        assert_eq!(caps.admit(None).err(), Some(Refused::TooManyConnections));
        drop(p1);
        assert_eq!(caps.in_use(3), 2);
        let _p4 = caps.admit(Some(a)).unwrap();
    }
}
