//! Admission of accepted connections: the global cap (a semaphore,
//! `max_connections`), the per-IP cap and rate, and TCP keep-alive socket
//! options so dead peers are detected (maildird.toml(5), `[keepalive]`). "Per IP" means per client network: IPv4
//! addresses are grouped by `ipv4_prefix` bits and IPv6 ones by `ipv6_prefix`
//! bits, because one IPv6 site holds a whole /64 (and a host all of 127/8).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::bounded::LruMap;
use crate::config::{Keepalive, Limits};

/// How client addresses are grouped into the networks the per-IP limits (and
/// the login back-off) count: the address with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNet {
    /// 1..=32; 32: every IPv4 address on its own.
    pub ipv4_prefix: u8,
    /// 1..=128; 64: one IPv6 subnet, what a site or a home line gets.
    pub ipv6_prefix: u8,
}

impl Default for ClientNet {
    fn default() -> ClientNet {
        ClientNet {
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

impl ClientNet {
    /// The grouping `[limits]` asks for (validated by `Config::validate`).
    pub fn from_limits(l: &Limits) -> ClientNet {
        ClientNet {
            ipv4_prefix: l.ipv4_prefix.clamp(1, 32) as u8,
            ipv6_prefix: l.ipv6_prefix.clamp(1, 128) as u8,
        }
    }

    /// The network `ip` counts in: IPv4-mapped IPv6 addresses as their IPv4
    /// address, then the host bits cleared.
    pub fn of(&self, ip: IpAddr) -> IpAddr {
        match normalize(ip) {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4_prefix.min(32)))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & mask))
            }
        }
    }

    /// `ip`'s network in CIDR notation, for logs (`192.0.2.0/24`).
    pub fn cidr(&self, ip: IpAddr) -> String {
        let net = self.of(ip);
        let bits = match net {
            IpAddr::V4(_) => self.ipv4_prefix,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        format!("{net}/{bits}")
    }
}

/// Connection caps shared by all listeners.
pub struct Caps {
    global: Arc<Semaphore>,
    /// Admitted connections per client network. An entry lives only while it
    /// has a connection, so there are at most `max_connections` entries.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    /// Recent connection times per client network, for the per-minute rate
    /// (0: off). At most `RATE_KEYS` networks, each with at most
    /// `rate_per_minute + 1` times of 16 bytes: the least recently seen network
    /// is forgotten first.
    recent: Mutex<LruMap<IpAddr, VecDeque<Instant>>>,
    rate_per_minute: u32,
    net: ClientNet,
}

const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Client networks whose connection rate is tracked at once. Worst case about
/// `RATE_KEYS * (64 + 16 * rate_per_minute)` bytes: 8 MiB at a rate of 30.
const RATE_KEYS: usize = 16_384;
/// Quiet networks forgotten per connection attempt (bounded work per accept;
/// the hard cap holds regardless).
const EXPIRE_PER_CALL: usize = 8;

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
        Caps::build(max_connections, max_per_ip, 0, ClientNet::default())
    }

    /// The caps `[limits]` configures.
    pub fn from_limits(l: &Limits) -> Arc<Caps> {
        Caps::build(
            l.max_connections,
            l.max_connections_per_ip,
            l.max_connection_rate_per_ip,
            ClientNet::from_limits(l),
        )
    }

    fn build(
        max_connections: usize,
        max_per_ip: usize,
        rate_per_minute: u32,
        net: ClientNet,
    ) -> Arc<Caps> {
        Arc::new(Caps {
            global: Arc::new(Semaphore::new(max_connections)),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
            recent: Mutex::new(LruMap::new(RATE_KEYS)),
            rate_per_minute,
            net,
        })
    }

    /// How client addresses are grouped (for log lines).
    pub fn client_net(&self) -> ClientNet {
        self.net
    }

    /// Count a connection attempt from network `net` in the last minute; false
    /// when over the rate. Attempts that are refused count too (a flood stays
    /// refused).
    fn within_rate(&self, net: IpAddr, now: Instant) -> bool {
        if self.rate_per_minute == 0 {
            return true;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Forget networks that have been quiet for a window, oldest first.
        for _ in 0..EXPIRE_PER_CALL {
            let quiet = |q: &VecDeque<Instant>| {
                q.back()
                    .is_none_or(|t| now.saturating_duration_since(*t) >= RATE_WINDOW)
            };
            if recent.pop_oldest_if(quiet).is_none() {
                break;
            }
        }
        let q = recent.touch_or_insert_with(net, VecDeque::new);
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= RATE_WINDOW)
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

    /// Count an admitted connection against its client network (rate and
    /// per-IP cap). Behind PROXY this runs once the header named the real
    /// client, so a balancer's own address is never what is limited.
    pub fn admit_ip(
        self: &Arc<Self>,
        admission: &mut Admission,
        ip: IpAddr,
    ) -> Result<(), Refused> {
        if admission.ip.is_some() {
            return Ok(());
        }
        let net = self.net.of(ip);
        if !self.within_rate(net, Instant::now()) {
            return Err(Refused::RateFromIp);
        }
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(net).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::TooManyFromIp);
        }
        *n += 1;
        admission.ip = Some((net, self.clone()));
        Ok(())
    }

    /// Connections currently admitted.
    pub fn in_use(&self, max_connections: usize) -> usize {
        max_connections.saturating_sub(self.global.available_permits())
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
/// Loopback, also as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`).
pub fn is_loopback(ip: IpAddr) -> bool {
    normalize(ip).is_loopback()
}

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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn with_rate(rate: u32) -> Arc<Caps> {
        Caps::build(100, 100, rate, ClientNet::default())
    }

    #[test]
    fn per_ip_rate_over_a_minute() {
        let caps = with_rate(3);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert!(caps.within_rate(a, t0));
        assert!(caps.within_rate(a, t0 + Duration::from_secs(1)));
        assert!(caps.within_rate(a, t0 + Duration::from_secs(2)));
        assert!(!caps.within_rate(a, t0 + Duration::from_secs(3)));
        assert!(caps.within_rate(ip("192.0.2.2"), t0));
        // A minute after the first attempts, room again.
        assert!(caps.within_rate(a, t0 + Duration::from_secs(62)));
        assert!(Caps::new(1, 1).within_rate(a, t0));
    }

    #[test]
    fn global_and_per_ip_caps() {
        let caps = Caps::new(3, 2);
        let a = ip("192.0.2.1");
        let b = ip("::ffff:192.0.2.1");
        let c = ip("192.0.2.2");
        let p1 = caps.admit(Some(a)).unwrap();
        let _p2 = caps.admit(Some(b)).unwrap();
        assert_eq!(caps.admit(Some(a)).err(), Some(Refused::TooManyFromIp));
        let _p3 = caps.admit(Some(c)).unwrap();
        assert_eq!(caps.admit(None).err(), Some(Refused::TooManyConnections));
        drop(p1);
        assert_eq!(caps.in_use(3), 2);
        let _p4 = caps.admit(Some(a)).unwrap();
    }

    #[test]
    fn prefix_masking() {
        let n = |v4, v6| ClientNet {
            ipv4_prefix: v4,
            ipv6_prefix: v6,
        };
        for (net, addr, want) in [
            (n(32, 64), "192.0.2.77", "192.0.2.77"),
            (n(24, 64), "192.0.2.77", "192.0.2.0"),
            (n(8, 64), "127.0.0.3", "127.0.0.0"),
            (n(1, 64), "192.0.2.77", "128.0.0.0"),
            (n(31, 64), "192.0.2.77", "192.0.2.76"),
            // IPv4-mapped IPv6 is IPv4, masked with the IPv4 prefix.
            (n(24, 64), "::ffff:192.0.2.77", "192.0.2.0"),
            (n(32, 128), "::ffff:192.0.2.77", "192.0.2.77"),
            (
                n(32, 64),
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                "2001:db8:1:2::",
            ),
            (
                n(32, 48),
                "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
                "2001:db8:1::",
            ),
            (n(32, 56), "2001:db8:1:2ff::1", "2001:db8:1:200::"),
            (n(32, 128), "2001:db8::1", "2001:db8::1"),
            (n(32, 1), "2001:db8::1", "::"),
            (n(32, 64), "::1", "::"),
        ] {
            assert_eq!(net.of(ip(addr)), ip(want), "{addr} with {net:?}");
        }
        assert_eq!(n(24, 64).cidr(ip("::ffff:192.0.2.77")), "192.0.2.0/24");
        assert_eq!(n(32, 64).cidr(ip("2001:db8::7")), "2001:db8::/64");
        let mut l = Limits::default();
        assert_eq!(ClientNet::from_limits(&l), ClientNet::default());
        l.ipv4_prefix = 16;
        l.ipv6_prefix = 48;
        assert_eq!(ClientNet::from_limits(&l), n(16, 48));
    }

    #[test]
    fn a_whole_prefix_shares_the_per_ip_cap_and_rate() {
        let net = ClientNet {
            ipv4_prefix: 8,
            ipv6_prefix: 64,
        };
        let caps = Caps::build(100, 2, 0, net);
        let _a = caps.admit(Some(ip("127.0.0.1"))).unwrap();
        let _b = caps.admit(Some(ip("::ffff:127.0.0.2"))).unwrap();
        assert_eq!(
            caps.admit(Some(ip("127.9.9.9"))).err(),
            Some(Refused::TooManyFromIp)
        );
        let _c = caps.admit(Some(ip("10.0.0.1"))).unwrap();
        // Every address of one IPv6 /64 is one client; the next /64 is another.
        let _d = caps.admit(Some(ip("2001:db8:0:1::1"))).unwrap();
        let _e = caps.admit(Some(ip("2001:db8:0:1:ffff::2"))).unwrap();
        assert_eq!(
            caps.admit(Some(ip("2001:db8:0:1:1234:5678:9abc:def0")))
                .err(),
            Some(Refused::TooManyFromIp)
        );
        let _f = caps.admit(Some(ip("2001:db8:0:2::1"))).unwrap();
        drop(_d);
        let _g = caps.admit(Some(ip("2001:db8:0:1::3"))).unwrap();

        let rated = Caps::build(100, 100, 2, net);
        assert!(rated.admit(Some(ip("2001:db8::1"))).is_ok());
        assert!(rated.admit(Some(ip("2001:db8::2"))).is_ok());
        assert_eq!(
            rated.admit(Some(ip("2001:db8::3"))).err(),
            Some(Refused::RateFromIp)
        );
        assert!(rated.admit(Some(ip("2001:db8:0:1::3"))).is_ok());
    }

    #[test]
    fn the_rate_map_has_a_hard_cap() {
        let caps = with_rate(5);
        let t0 = Instant::now();
        // A flood of distinct networks within one window: none is quiet yet,
        // so the least recently seen ones are evicted, never a full scan.
        for i in 0..(RATE_KEYS as u32 * 3) {
            let a = IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + i));
            assert!(caps.within_rate(a, t0));
        }
        assert_eq!(caps.recent.lock().unwrap().len(), RATE_KEYS);
        // A network that keeps connecting stays tracked (and limited) under the flood.
        let hot = ip("192.0.2.1");
        for _ in 0..5 {
            assert!(caps.within_rate(hot, t0));
        }
        for i in 0..(RATE_KEYS as u32 - 1) {
            let a = IpAddr::V4(Ipv4Addr::from_bits(0x0b00_0000 + i));
            assert!(caps.within_rate(a, t0));
            if i % 1000 == 0 {
                assert!(!caps.within_rate(hot, t0), "the hot network was forgotten");
            }
        }
        // Once quiet for a window, networks are forgotten as new ones come.
        let later = t0 + RATE_WINDOW;
        for i in 0..100u32 {
            assert!(caps.within_rate(IpAddr::V4(Ipv4Addr::from_bits(0x0c00_0000 + i)), later));
        }
        assert!(caps.recent.lock().unwrap().len() < RATE_KEYS);
    }
}
