//! Admission of accepted connections: the global cap (a semaphore, seed 001's
//! "limit users"), the per-IP cap, and TCP keep-alive socket options so dead
//! peers are detected (seed 001).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Keepalive;

/// Connection caps shared by all listeners.
pub struct Caps {
    global: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    /// Recent connection times per IP, for the per-minute rate (0: off).
    recent: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    rate_per_minute: u32,
}

const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    TooManyConnections,
    TooManyFromIp,
    RateFromIp,
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
        Caps::with_rate(max_connections, max_per_ip, 0)
    }

    pub fn with_rate(max_connections: usize, max_per_ip: usize, rate_per_minute: u32) -> Arc<Caps> {
        Arc::new(Caps {
            global: Arc::new(Semaphore::new(max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            recent: Mutex::new(HashMap::new()),
            rate_per_minute,
        })
    }

    /// Count a connection attempt from `ip` in the last minute; false when over
    /// the rate. Attempts that are refused count too (a flood stays refused).
    fn within_rate(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate_per_minute == 0 {
            return true;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Keep memory bounded: forget IPs that have been quiet for a window.
        if recent.len() > 4096 {
            recent.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < RATE_WINDOW)
            });
        }
        let q = recent.entry(ip).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
        {
            q.pop_front();
        }
        let ok = q.len() < self.rate_per_minute as usize;
        q.push_back(now);
        if q.len() > self.rate_per_minute as usize {
            q.pop_front();
        }
        ok
    }

    /// Admit a connection from `ip` (None: not an IP peer, e.g. inetd on a pipe).
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Admission, Refused> {
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::TooManyConnections)?;
        let mut admission = Admission {
            _global: global,
            ip: None,
        };
        if let Some(ip) = ip {
            self.admit_ip(&mut admission, ip)?;
        }
        Ok(admission)
    }

    /// Count an admitted connection against its client IP (rate and per-IP cap).
    /// Behind PROXY this runs once the header named the real client, so a
    /// balancer's own address is never what is limited.
    pub fn admit_ip(
        self: &Arc<Self>,
        admission: &mut Admission,
        ip: IpAddr,
    ) -> Result<(), Refused> {
        if admission.ip.is_some() {
            return Ok(());
        }
        let ip = normalize(ip);
        if !self.within_rate(ip, Instant::now()) {
            return Err(Refused::RateFromIp);
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::TooManyFromIp);
        }
        *n += 1;
        admission.ip = Some((ip, self.clone()));
        Ok(())
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
    fn per_ip_rate_over_a_minute() {
        let caps = Caps::with_rate(100, 100, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(caps.within_rate(a, t0));
        assert!(caps.within_rate(a, t0 + Duration::from_secs(1)));
        assert!(caps.within_rate(a, t0 + Duration::from_secs(2)));
        assert!(!caps.within_rate(a, t0 + Duration::from_secs(3)));
        assert!(caps.within_rate("192.0.2.2".parse().unwrap(), t0));
        // A minute after the first attempts, room again.
        assert!(caps.within_rate(a, t0 + Duration::from_secs(62)));
        assert!(Caps::new(1, 1).within_rate(a, t0));
    }

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
