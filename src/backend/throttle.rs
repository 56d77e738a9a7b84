//! Authentication back-off per client IP and per user, across connections (a
//! password-guessing run slows down; a session's own failure delay is separate).
//! Like Dovecot's auth penalty, retrying the *same* wrong password (a phone with
//! a stale password) does not escalate it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Failures are forgotten after this much quiet.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Free failures before the penalty starts.
const FREE: u32 = 2;
const BASE: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(15);
/// Distinct wrong passwords remembered per key (fingerprints only).
const REMEMBERED: usize = 8;
/// Bounded memory under a flood of keys.
const MAX_KEYS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(String),
}

#[derive(Debug)]
struct Record {
    failures: u32,
    last: Instant,
    seen: VecDeque<[u8; 16]>,
}

#[derive(Debug, Default)]
pub struct AuthThrottle {
    records: Mutex<HashMap<Key, Record>>,
}

fn fingerprint(user: &str, password: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password);
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

fn keys(ip: Option<IpAddr>, user: &str) -> Vec<Key> {
    let mut k = vec![Key::User(user.to_ascii_lowercase())];
    // Loopback is the admin's own tools and the tests' clients: per user only.
    if let Some(ip) = ip.filter(|i| !i.is_loopback()) {
        k.push(Key::Ip(ip));
    }
    k
}

impl AuthThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long to wait before checking this attempt.
    pub fn delay(&self, ip: Option<IpAddr>, user: &str, now: Instant) -> Duration {
        let map = self.lock();
        let n = keys(ip, user)
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|r| now.duration_since(r.last) < FORGET_AFTER)
            .map(|r| r.failures)
            .max()
            .unwrap_or(0);
        if n <= FREE {
            return Duration::ZERO;
        }
        let exp = (n - FREE - 1).min(16);
        BASE.saturating_mul(1 << exp).min(MAX)
    }

    pub fn failed(&self, ip: Option<IpAddr>, user: &str, password: &[u8], now: Instant) {
        let fp = fingerprint(user, password);
        let mut map = self.lock();
        if map.len() >= MAX_KEYS {
            map.retain(|_, r| now.duration_since(r.last) < FORGET_AFTER);
        }
        for k in keys(ip, user) {
            let r = map.entry(k).or_insert(Record {
                failures: 0,
                last: now,
                seen: VecDeque::new(),
            });
            if now.duration_since(r.last) >= FORGET_AFTER {
                r.failures = 0;
                r.seen.clear();
            }
            r.last = now;
            if r.seen.contains(&fp) {
                continue; // the same stale password again: no escalation
            }
            r.failures = r.failures.saturating_add(1);
            if r.seen.len() == REMEMBERED {
                r.seen.pop_front();
            }
            r.seen.push_back(fp);
        }
    }

    pub fn succeeded(&self, ip: Option<IpAddr>, user: &str) {
        let mut map = self.lock();
        for k in keys(ip, user) {
            map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalates_per_user_and_ip_but_not_for_the_same_password() {
        let t = AuthThrottle::default();
        let ip: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let now = Instant::now();
        for i in 0..FREE {
            assert_eq!(t.delay(ip, "alice", now), Duration::ZERO);
            t.failed(ip, "alice", format!("guess{i}").as_bytes(), now);
        }
        // The same stale password, many times: still free.
        for _ in 0..10 {
            t.failed(ip, "alice", b"guess0", now);
        }
        assert_eq!(t.delay(ip, "alice", now), Duration::ZERO);
        t.failed(ip, "alice", b"guess-new", now);
        assert_eq!(t.delay(ip, "alice", now), BASE);
        t.failed(ip, "alice", b"another", now);
        assert_eq!(t.delay(ip, "alice", now), BASE * 2);
        // The IP is penalised for other users too; another IP for this user too.
        assert_eq!(t.delay(ip, "bob", now), BASE * 2);
        assert_eq!(
            t.delay(Some("192.0.2.8".parse().unwrap()), "ALICE", now),
            BASE * 2
        );
        // Capped, and forgotten after a quiet period or a success.
        for i in 0..40 {
            t.failed(ip, "alice", format!("x{i}").as_bytes(), now);
        }
        assert_eq!(t.delay(ip, "alice", now), MAX);
        assert_eq!(t.delay(ip, "alice", now + FORGET_AFTER), Duration::ZERO);
        t.succeeded(ip, "alice");
        assert_eq!(t.delay(ip, "alice", now), Duration::ZERO);
    }

    #[test]
    fn loopback_is_throttled_per_user_only() {
        let t = AuthThrottle::default();
        let lo: Option<IpAddr> = Some("127.0.0.1".parse().unwrap());
        let now = Instant::now();
        for i in 0..5 {
            t.failed(lo, "alice", format!("g{i}").as_bytes(), now);
        }
        assert!(t.delay(lo, "alice", now) > Duration::ZERO);
        assert_eq!(t.delay(lo, "bob", now), Duration::ZERO);
    }
}
