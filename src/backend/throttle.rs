//! Authentication back-off per client network and per user, across connections
//! (a password-guessing run slows down; a session's own failure delay is
//! separate). Like Dovecot's auth penalty, retrying the *same* wrong password
//! (a phone with a stale password) does not escalate it.
//!
//! Memory is bounded whatever clients send: at most `MAX_KEYS` records, the
//! least recently failed one evicted to make room (amortized O(1), no scan of
//! the map per failure); user names are kept as 16-byte digests, so a 4 KB
//! name costs what `alice` costs; client addresses are grouped by network
//! (`[limits] ipv4_prefix`, `ipv6_prefix`), so one IPv6 /64 is one key.
//!
//! Users that exist have records of their own, in a second map of the same
//! cap, so a flood of made-up names (or of networks) can never evict the
//! back-off a real account has earned; that map only holds real users.
//!
//! Worst case, with every record live (per map): `MAX_KEYS` = 65,536 records of about
//! 120 bytes in a hash table of 131,072 buckets (its load factor is 7/8), about
//! 15 MiB, plus the recency queue of at most 2 * 65,536 entries of 32 bytes,
//! 4 MiB: under 20 MiB in all (half as much again for a moment while the table
//! grows), reached only by 65,536 distinct failing users or networks within
//! `FORGET_AFTER`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bounded::LruMap;
use crate::listen::accept::ClientNet;

/// Failures are forgotten after this much quiet.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Free failures before the penalty starts.
const FREE: u32 = 2;
const BASE: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(15);
/// Distinct wrong passwords remembered per key (fingerprints only).
const REMEMBERED: usize = 8;
/// Hard cap on records (users and client networks together).
const MAX_KEYS: usize = 65_536;
/// Expired records forgotten per failure, oldest first (bounded work per call;
/// the cap holds regardless).
const EXPIRE_PER_CALL: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    /// A client network (see `ClientNet`).
    Ip(IpAddr),
    /// A digest of the lower-cased user name: fixed size whatever its length.
    User([u8; 16]),
}

#[derive(Debug)]
struct Record {
    failures: u32,
    last: Instant,
    /// Fingerprints of the last wrong passwords, oldest first; `seen_len` used.
    seen: [u64; REMEMBERED],
    seen_len: u8,
}

impl Record {
    fn new(now: Instant) -> Record {
        Record {
            failures: 0,
            last: now,
            seen: [0; REMEMBERED],
            seen_len: 0,
        }
    }

    fn seen(&self) -> &[u64] {
        &self.seen[..usize::from(self.seen_len)]
    }

    fn remember(&mut self, fp: u64) {
        let n = usize::from(self.seen_len);
        if n == REMEMBERED {
            self.seen.copy_within(1.., 0);
            self.seen[REMEMBERED - 1] = fp;
        } else {
            self.seen[n] = fp;
            self.seen_len += 1;
        }
    }

    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= FORGET_AFTER
    }
}

#[derive(Debug)]
pub struct AuthThrottle {
    records: Mutex<Maps>,
    net: ClientNet,
}

/// Records of client networks and unknown user names, and those of users
/// that exist (see the module doc).
#[derive(Debug)]
struct Maps {
    open: LruMap<Key, Record>,
    known: LruMap<Key, Record>,
}

impl Default for AuthThrottle {
    fn default() -> AuthThrottle {
        AuthThrottle::new(ClientNet::default())
    }
}

fn fingerprint(user: &str, password: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(password);
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    u64::from_le_bytes(out)
}

fn user_key(user: &str) -> Key {
    let mut h = Sha256::new();
    h.update(b"user\0");
    h.update(user.to_ascii_lowercase().as_bytes());
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    Key::User(out)
}

impl AuthThrottle {
    /// Back-off state that groups client addresses as `net` says.
    pub fn new(net: ClientNet) -> AuthThrottle {
        AuthThrottle {
            records: Mutex::new(Maps {
                open: LruMap::new(MAX_KEYS),
                known: LruMap::new(MAX_KEYS),
            }),
            net,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(&self, ip: Option<IpAddr>, user: &str) -> ([Key; 2], usize) {
        let user = user_key(user);
        // Loopback is the admin's own tools and the tests' clients: per user
        // only. Judged before masking: `::1` in its /64 is `::`, not loopback.
        let ip = ip
            .filter(|i| !crate::listen::accept::is_loopback(*i))
            .map(|i| self.net.of(i));
        match ip {
            Some(ip) => ([user, Key::Ip(ip)], 2),
            None => ([user, user], 1),
        }
    }

    /// How long to wait before checking this attempt.
    pub fn delay(&self, ip: Option<IpAddr>, user: &str, now: Instant) -> Duration {
        let (keys, n) = self.keys(ip, user);
        let maps = self.lock();
        let n = keys[..n]
            .iter()
            .flat_map(|k| [maps.open.get(k), maps.known.get(k)])
            .flatten()
            .filter(|r| !r.expired(now))
            .map(|r| r.failures)
            .max()
            .unwrap_or(0);
        if n <= FREE {
            return Duration::ZERO;
        }
        let exp = (n - FREE - 1).min(16);
        BASE.saturating_mul(1 << exp).min(MAX)
    }

    /// A failed login; `exists`: the user is in the users file (its record
    /// then lives in the map a flood of made-up names cannot evict from).
    pub fn failed(
        &self,
        ip: Option<IpAddr>,
        user: &str,
        password: &[u8],
        exists: bool,
        now: Instant,
    ) {
        let fp = fingerprint(user, password);
        let (keys, n) = self.keys(ip, user);
        let mut guard = self.lock();
        let maps = &mut *guard;
        for map in [&mut maps.open, &mut maps.known] {
            for _ in 0..EXPIRE_PER_CALL {
                if map.pop_oldest_if(|r| r.expired(now)).is_none() {
                    break;
                }
            }
        }
        for k in &keys[..n] {
            let map = match k {
                Key::User(_) if exists => &mut maps.known,
                _ => &mut maps.open,
            };
            let r = map.touch_or_insert_with(*k, || Record::new(now));
            if r.expired(now) {
                *r = Record::new(now);
            }
            r.last = now;
            if r.seen().contains(&fp) {
                continue; // the same stale password again: no escalation
            }
            r.failures = r.failures.saturating_add(1);
            r.remember(fp);
        }
    }

    pub fn succeeded(&self, ip: Option<IpAddr>, user: &str) {
        let (keys, n) = self.keys(ip, user);
        let mut maps = self.lock();
        for k in &keys[..n] {
            maps.open.remove(k);
            maps.known.remove(k);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let maps = self.lock();
        maps.open.len() + maps.known.len()
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
            t.failed(ip, "alice", format!("guess{i}").as_bytes(), false, now);
        }
        // The same stale password, many times: still free.
        for _ in 0..10 {
            t.failed(ip, "alice", b"guess0", false, now);
        }
        assert_eq!(t.delay(ip, "alice", now), Duration::ZERO);
        t.failed(ip, "alice", b"guess-new", false, now);
        assert_eq!(t.delay(ip, "alice", now), BASE);
        t.failed(ip, "alice", b"another", false, now);
        assert_eq!(t.delay(ip, "alice", now), BASE * 2);
        // The IP is penalised for other users too; another IP for this user too.
        assert_eq!(t.delay(ip, "bob", now), BASE * 2);
        assert_eq!(
            t.delay(Some("192.0.2.8".parse().unwrap()), "ALICE", now),
            BASE * 2
        );
        // Capped, and forgotten after a quiet period or a success.
        for i in 0..40 {
            t.failed(ip, "alice", format!("x{i}").as_bytes(), false, now);
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
            t.failed(lo, "alice", format!("g{i}").as_bytes(), false, now);
        }
        assert!(t.delay(lo, "alice", now) > Duration::ZERO);
        assert_eq!(t.delay(lo, "bob", now), Duration::ZERO);
        // Also as IPv4-mapped IPv6 (a dual-stack socket): still loopback.
        let mapped: Option<IpAddr> = Some("::ffff:127.0.0.1".parse().unwrap());
        assert!(t.delay(mapped, "alice", now) > Duration::ZERO);
        assert_eq!(t.delay(mapped, "bob", now), Duration::ZERO);
        // IPv6 loopback with the default /64 prefix (masked it would be `::`).
        let v6lo: Option<IpAddr> = Some("::1".parse().unwrap());
        for i in 0..5 {
            t.failed(v6lo, "carol", format!("g{i}").as_bytes(), false, now);
        }
        assert_eq!(t.delay(v6lo, "dave", now), Duration::ZERO);
    }

    #[test]
    fn a_client_network_is_one_key() {
        let t = AuthThrottle::new(ClientNet {
            ipv4_prefix: 24,
            ipv6_prefix: 64,
        });
        let now = Instant::now();
        // Guesses spread over a /64 and a /24 add up per network.
        for i in 0..4u32 {
            let v6: IpAddr = format!("2001:db8:0:7::{:x}", i + 1).parse().unwrap();
            t.failed(Some(v6), &format!("u{i}"), b"pw", false, now);
            let v4: IpAddr = format!("198.51.100.{}", i + 1).parse().unwrap();
            t.failed(Some(v4), &format!("v{i}"), b"pw", false, now);
        }
        let other_host: IpAddr = "2001:db8:0:7:ffff::1".parse().unwrap();
        assert_eq!(t.delay(Some(other_host), "nobody", now), BASE * 2);
        let mapped: IpAddr = "::ffff:198.51.100.200".parse().unwrap();
        assert_eq!(t.delay(Some(mapped), "nobody", now), BASE * 2);
        let next_net: IpAddr = "2001:db8:0:8::1".parse().unwrap();
        assert_eq!(t.delay(Some(next_net), "nobody", now), Duration::ZERO);
        // The default counts IPv4 addresses one by one.
        let d = AuthThrottle::default();
        for i in 0..4u32 {
            let v4: IpAddr = format!("198.51.100.{}", i + 1).parse().unwrap();
            d.failed(Some(v4), &format!("v{i}"), b"pw", false, now);
        }
        let v4: IpAddr = "198.51.100.9".parse().unwrap();
        assert_eq!(d.delay(Some(v4), "nobody", now), Duration::ZERO);
    }

    #[test]
    fn long_user_names_are_fixed_size_keys_and_case_blind() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let long = "A".repeat(4096);
        for i in 0..3 {
            t.failed(None, &long, format!("p{i}").as_bytes(), false, now);
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.delay(None, &long.to_lowercase(), now), BASE);
        // A different long name is another user.
        assert_eq!(t.delay(None, &format!("{long}B"), now), Duration::ZERO);
        assert!(std::mem::size_of::<Key>() <= 24);
    }

    #[test]
    fn the_record_count_has_a_hard_cap_and_evicts_the_oldest() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let guesser: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        // A victim's record first, then a flood of unique names from one network,
        // all within FORGET_AFTER, so nothing has expired.
        for i in 0..3 {
            t.failed(None, "victim", format!("v{i}").as_bytes(), false, now);
        }
        assert_eq!(t.delay(None, "victim", now), BASE);
        for i in 0..(MAX_KEYS + 1000) {
            t.failed(guesser, &format!("{i:0>200}"), b"x", false, now);
            assert!(t.len() <= MAX_KEYS);
        }
        assert_eq!(t.len(), MAX_KEYS);
        // The guessing network failed last and most: it is kept (and slowed);
        // the victim's old record went first.
        assert_eq!(t.delay(guesser, "anyone", now), MAX);
        assert_eq!(t.delay(None, "victim", now), Duration::ZERO);
        // The newest names are still there: two more failures make three.
        t.failed(None, &format!("{:0>200}", MAX_KEYS + 999), b"y", false, now);
        t.failed(None, &format!("{:0>200}", MAX_KEYS + 999), b"z", false, now);
        assert_eq!(
            t.delay(None, &format!("{:0>200}", MAX_KEYS + 999), now),
            BASE
        );
    }

    #[test]
    fn expired_records_are_forgotten_as_new_failures_come() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..100 {
            t.failed(None, &format!("u{i}"), b"x", false, now);
        }
        let later = now + FORGET_AFTER;
        for i in 0..5 {
            t.failed(None, &format!("w{i}"), b"x", false, later);
        }
        // Each failure forgets up to EXPIRE_PER_CALL expired records.
        assert_eq!(t.len(), 100 - 5 * EXPIRE_PER_CALL + 5);
        // An expired record that fails again starts over.
        for i in 0..3 {
            t.failed(None, "u99", format!("p{i}").as_bytes(), false, now);
        }
        t.failed(None, "u99", b"new", false, later + FORGET_AFTER);
        assert_eq!(t.delay(None, "u99", later + FORGET_AFTER), Duration::ZERO);
    }

    #[test]
    fn a_flood_of_made_up_names_cannot_evict_a_real_users_back_off() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        for i in 0..5 {
            t.failed(None, "alice", format!("guess{i}").as_bytes(), true, now);
        }
        let earned = t.delay(None, "alice", now);
        assert!(earned > Duration::ZERO);
        // More made-up names than the cap, from loopback (per user only).
        for i in 0..(MAX_KEYS + 10) {
            t.failed(None, &format!("nobody{i}"), b"x", false, now);
        }
        assert_eq!(t.delay(None, "alice", now), earned);
        assert!(t.len() <= MAX_KEYS + 1);
        t.succeeded(None, "alice");
        assert_eq!(t.delay(None, "alice", now), Duration::ZERO);
    }
}
