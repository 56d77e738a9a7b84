//! The `proxy` transport filter: reads a HAProxy PROXY protocol header (v1 text or
//! v2 binary, <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>) from a
//! trusted load balancer and makes the client it names the connection's peer, so
//! limits, logs, `who` and `Received:` see the real client.
//!
//! Only on the server side and only first on the wire (checked in
//! `Registry::build`). It reads exactly the header and not one byte more, so
//! whatever the client sends next reaches the protocol untouched.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ppp::HeaderResult;
use ppp::{v1, v2};
use tokio::io::AsyncReadExt;

use super::{BoxFuture, BoxedIo, ConnMeta, Factory, Filter, FilterContext, Side};

/// v2 signature (proxy-protocol.txt §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (§2.1).
const V1_MAX: usize = 107;

/// An address range of trusted proxies: `10.0.0.0/8`, `::1`, `127.0.0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid address {s:?} in trusted"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?} (0-{max})"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Does the range hold `ip`? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The factory registered under `proxy`: `[filter.proxy] trusted = [...]`
/// (default loopback only), `timeout = "5s"`.
pub fn factory() -> Factory {
    Arc::new(|ctx: &FilterContext<'_>| {
        if ctx.side != Side::Server {
            return Err("the proxy filter only reads headers on listeners".into());
        }
        let mut trusted = vec![Cidr::parse("127.0.0.0/8")?, Cidr::parse("::1")?];
        let mut timeout = Duration::from_secs(5);
        if let Some(v) = ctx.settings {
            let t = v.as_table().ok_or("[filter.proxy] must be a table")?;
            for (k, v) in t {
                match k.as_str() {
                    "trusted" => {
                        let list = v.as_array().ok_or("trusted must be a list of addresses")?;
                        trusted = list
                            .iter()
                            .map(|e| {
                                e.as_str()
                                    .ok_or_else(|| "trusted must hold strings".to_string())
                                    .and_then(Cidr::parse)
                            })
                            .collect::<Result<_, _>>()?;
                    }
                    "timeout" => {
                        timeout =
                            match v {
                                toml::Value::Integer(n) => u64::try_from(*n)
                                    .map(Duration::from_secs)
                                    .map_err(|_| "timeout must not be negative".to_string())?,
                                toml::Value::String(s) => crate::config::parse_duration(s)
                                    .ok_or_else(|| format!("invalid timeout {s:?}"))?,
                                _ => {
                                    return Err(
                                        "timeout must be seconds or a string like \"5s\"".into()
                                    );
                                }
                            };
                        if timeout.is_zero() {
                            return Err("timeout must be more than 0".into());
                        }
                    }
                    other => return Err(format!("unknown setting {other:?} (trusted, timeout)")),
                }
            }
        }
        Ok(Arc::new(ProxyFilter { trusted, timeout }) as Arc<dyn Filter>)
    })
}

/// The `proxy` filter.
pub struct ProxyFilter {
    trusted: Vec<Cidr>,
    timeout: Duration,
}

impl ProxyFilter {
    pub fn new(trusted: Vec<Cidr>, timeout: Duration) -> ProxyFilter {
        ProxyFilter { trusted, timeout }
    }
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Filter for ProxyFilter {
    fn name(&self) -> &str {
        "proxy"
    }

    /// It reads exactly the header and returns the stream itself, unwrapped.
    fn may_hold_input(&self) -> bool {
        false
    }

    fn wrap<'a>(
        &'a self,
        mut io: BoxedIo,
        meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        Box::pin(async move {
            let from = meta.tcp_peer.map(|p| p.ip());
            if !from.is_some_and(|ip| self.trusted.iter().any(|c| c.contains(ip))) {
                tracing::warn!(filter = "proxy", tcp_peer = ?meta.tcp_peer, "connection from an untrusted source refused (not in [filter.proxy] trusted)");
                return Err(refused("PROXY header from an untrusted source".into()));
            }
            let header = tokio::time::timeout(self.timeout, read_header(&mut io))
                .await
                .map_err(|_| {
                    tracing::warn!(filter = "proxy", "no PROXY header within the timeout");
                    io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time")
                })??;
            match source(&header)? {
                Some(real) => {
                    tracing::info!(filter = "proxy", real_peer = %real, "PROXY header");
                    meta.peer = Some(real);
                }
                // LOCAL (health checks) and UNKNOWN: the proxy itself is the peer.
                None => tracing::debug!(filter = "proxy", "PROXY header without a client"),
            }
            Ok(io)
        })
    }
}

/// Read exactly one header (v1 or v2) from `io`, no byte beyond it.
pub async fn read_header(io: &mut BoxedIo) -> io::Result<Vec<u8>> {
    // 12 bytes: the v2 signature, or the start of a v1 line (at least 15 bytes).
    let mut buf = vec![0u8; 12];
    io.read_exact(&mut buf).await?;
    if buf.as_slice() == V2_SIGNATURE {
        // §2.2: version/command, family, then a 16-bit length of what follows.
        let mut fixed = [0u8; 4];
        io.read_exact(&mut fixed).await?;
        buf.extend_from_slice(&fixed);
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        let start = buf.len();
        buf.resize(start + len, 0);
        io.read_exact(buf.get_mut(start..).unwrap_or(&mut []))
            .await?;
        return Ok(buf);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(refused("no PROXY header".into()));
    }
    // v1: one byte at a time up to CRLF, so nothing after the header is consumed.
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(refused("PROXY v1 header too long".into()));
        }
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        buf.push(b[0]);
    }
    Ok(buf)
}

/// The client address a complete header names (`None` for LOCAL / UNKNOWN).
pub fn source(header: &[u8]) -> io::Result<Option<SocketAddr>> {
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match (h.command, h.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, _) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(refused(format!("bad PROXY v1 header: {e}"))),
        HeaderResult::V2(Err(e)) => Err(refused(format!("bad PROXY v2 header: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn cidr_table() {
        let cases = [
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.0/8", "127.9.9.9", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("0.0.0.0/0", "1.2.3.4", true),
            ("::1", "::1", true),
            ("::1", "127.0.0.1", false),
            ("2001:db8::/32", "2001:db8:1::5", true),
            ("2001:db8::/32", "2001:db9::5", false),
            ("::/0", "fe80::1", true),
        ];
        for (net, ip, want) in cases {
            let c = Cidr::parse(net).unwrap();
            assert_eq!(c.contains(ip.parse().unwrap()), want, "{net} {ip}");
        }
        for bad in ["10.0.0.0/33", "::/129", "example.org", "1.2.3.4/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    fn v2_header(cmd: u8, src: &str) -> Vec<u8> {
        let src: SocketAddr = src.parse().unwrap();
        let mut h = V2_SIGNATURE.to_vec();
        match src {
            SocketAddr::V4(s) => {
                h.extend_from_slice(&[0x20 | cmd, 0x11, 0, 12]);
                h.extend_from_slice(&s.ip().octets());
                h.extend_from_slice(&[10, 0, 0, 1]);
                h.extend_from_slice(&s.port().to_be_bytes());
                h.extend_from_slice(&25u16.to_be_bytes());
            }
            SocketAddr::V6(s) => {
                h.extend_from_slice(&[0x20 | cmd, 0x21, 0, 36]);
                h.extend_from_slice(&s.ip().octets());
                h.extend_from_slice(&[0; 16]);
                h.extend_from_slice(&s.port().to_be_bytes());
                h.extend_from_slice(&25u16.to_be_bytes());
            }
        }
        h
    }

    async fn wrap(bytes: &[u8], tcp_peer: &str) -> (io::Result<Vec<u8>>, ConnMeta) {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(bytes).await.unwrap();
        drop(client);
        let f = ProxyFilter::new(
            vec![Cidr::parse("127.0.0.0/8").unwrap()],
            Duration::from_secs(5),
        );
        let peer: SocketAddr = tcp_peer.parse().unwrap();
        let mut meta = ConnMeta {
            peer: Some(peer),
            tcp_peer: Some(peer),
            ..ConnMeta::default()
        };
        let r = match f.wrap(Box::new(server), &mut meta).await {
            Ok(mut io) => {
                let mut rest = Vec::new();
                io.read_to_end(&mut rest).await.map(|_| rest)
            }
            Err(e) => Err(e),
        };
        (r, meta)
    }

    #[tokio::test]
    async fn headers_set_the_peer_and_leave_the_rest() {
        let mut v2 = v2_header(1, "192.0.2.7:4444");
        v2.extend_from_slice(b"EHLO x\r\n");
        let mut v2_6 = v2_header(1, "[2001:db8::7]:4444");
        v2_6.extend_from_slice(b"QUIT\r\n");
        let mut local = v2_header(0, "192.0.2.7:4444");
        local.extend_from_slice(b"NOOP\r\n");
        let cases: [(&[u8], Option<&str>, &[u8]); 6] = [
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 4444 25\r\nEHLO x\r\n",
                Some("192.0.2.7:4444"),
                b"EHLO x\r\n",
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 4444 25\r\nUSER a\r\n",
                Some("[2001:db8::7]:4444"),
                b"USER a\r\n",
            ),
            (b"PROXY UNKNOWN\r\nX", None, b"X"),
            (&v2, Some("192.0.2.7:4444"), b"EHLO x\r\n"),
            (&v2_6, Some("[2001:db8::7]:4444"), b"QUIT\r\n"),
            (&local, None, b"NOOP\r\n"),
        ];
        for (bytes, want, rest) in cases {
            let (r, meta) = wrap(bytes, "127.0.0.1:5000").await;
            assert_eq!(r.unwrap(), rest);
            let want = want.map(|w| w.parse::<SocketAddr>().unwrap());
            assert_eq!(
                meta.peer,
                Some(want.unwrap_or("127.0.0.1:5000".parse().unwrap()))
            );
        }
    }

    #[tokio::test]
    async fn refusals() {
        // Untrusted source: refused before reading.
        let (r, meta) = wrap(
            b"PROXY TCP4 192.0.2.7 10.0.0.1 4444 25\r\n",
            "192.0.2.1:5000",
        )
        .await;
        assert!(r.is_err());
        assert_eq!(meta.peer, Some("192.0.2.1:5000".parse().unwrap()));
        // No header, a bad header, an overlong v1 line, a cut v2 header.
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        for bad in [
            &b"EHLO example.org\r\n"[..],
            b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n",
            long.as_bytes(),
            &v2_header(1, "192.0.2.7:4444")[..20],
        ] {
            let (r, _) = wrap(bad, "127.0.0.1:5000").await;
            assert!(r.is_err(), "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_proxy_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let f = ProxyFilter::new(vec![Cidr::parse("::1").unwrap()], Duration::from_secs(5));
        let mut meta = ConnMeta {
            tcp_peer: Some("[::1]:9".parse().unwrap()),
            ..ConnMeta::default()
        };
        let e = f.wrap(Box::new(server), &mut meta).await.err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
