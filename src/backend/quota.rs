//! Mailbox quotas at delivery (maildird-users(5), maildird.toml(5) QUOTA):
//! each mailbox's rule (its user's `userdb_quota_rule`, else `[quota] rule`),
//! `452 4.2.2` at RCPT when a mailbox is already full, `552 5.2.2` at the end
//! of DATA when the message would take one over, the delivery added to
//! `maildirsize` after it is durable, and a per-sender-per-mailbox rate
//! limit (`450 4.2.1`) so one sender cannot fill a box alone. POP3 removals
//! and mail clients' changes make `maildirsize` stale (directory mtimes),
//! and the next delivery counts the mailbox again (`maildir::quota`).

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bounded::LruMap;
use crate::maildir::Maildir;
use crate::maildir::quota::{self, QuotaRule};
use crate::smtp::reply::Reply;

/// The message would take a mailbox over its quota (carried in `io::Error`
/// from the blocking commit to the reply).
#[derive(Debug, thiserror::Error)]
#[error("mailbox {0} would go over its quota")]
pub struct OverQuota(pub String);

pub fn is_over_quota(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<OverQuota>())
}

pub fn full_reply() -> Reply {
    Reply::new(452, "4.2.2", "Mailbox full").because("quota")
}

pub fn overflow_reply() -> Reply {
    Reply::new(552, "5.2.2", "Message would exceed the mailbox quota").because("quota")
}

/// Would a message of `size` bytes not fit in the mailbox at `path` under
/// `rule` (with `size` 1: is it full)? A Maildir not yet created is empty.
/// Blocking.
pub fn refuses(path: &Path, rule: &QuotaRule, size: u64) -> io::Result<bool> {
    let md = match Maildir::open(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    quota::would_exceed(&md, rule, size, 1)
}

/// Refuse (`OverQuota`) when `size` bytes more would take a target over its
/// rule. `rules` is aligned with `targets`. Blocking.
pub fn check_fits(targets: &[Maildir], rules: &[Option<QuotaRule>], size: u64) -> io::Result<()> {
    for (md, rule) in targets.iter().zip(rules) {
        if let Some(rule) = rule {
            if quota::would_exceed(md, rule, size, 1)? {
                return Err(io::Error::other(OverQuota(md.path().display().to_string())));
            }
        }
    }
    Ok(())
}

/// Add a durable delivery of `size` bytes to each target's `maildirsize`
/// (a cache: failures are logged, never refuse mail). Blocking.
pub fn account(targets: &[Maildir], rules: &[Option<QuotaRule>], size: u64) {
    for (md, rule) in targets.iter().zip(rules) {
        if let Some(rule) = rule {
            let bytes = i64::try_from(size).unwrap_or(i64::MAX);
            if let Err(e) = quota::add(md, rule, bytes, 1) {
                tracing::warn!(maildir = %md.path().display(), error = %e, "cannot update maildirsize");
            }
        }
    }
}

/// Most (sender, mailbox) pairs remembered. Past it, expired ones are
/// dropped; if none are, new pairs go uncounted until some expire (fail
/// open for newcomers; the counts already kept are never reset, so nobody
/// can wipe them by flooding the table).
const MAX_KEYS: usize = 100_000;

/// Messages stored per (sender, mailbox) per window (mox limits how fast
/// one sender fills a box). Checked at RCPT, counted once a message is
/// stored. Keys are hashes with a random seed: fixed memory per key
/// whatever the address length.
#[derive(Debug)]
pub struct SenderRate {
    limit: u32,
    window: Duration,
    seed: RandomState,
    /// (window start, messages) per key; shared with the reloaded config's.
    seen: Arc<Mutex<LruMap<u64, (Instant, u32)>>>,
}

impl SenderRate {
    pub fn new(limit: u32, window: Duration) -> SenderRate {
        SenderRate {
            limit,
            window,
            seed: RandomState::new(),
            seen: Arc::new(Mutex::new(LruMap::new(MAX_KEYS))),
        }
    }

    /// The same counts under a reloaded config's `limit` and `window`.
    pub fn reloaded(&self, limit: u32, window: Duration) -> SenderRate {
        SenderRate {
            limit,
            window,
            seed: self.seed.clone(),
            seen: self.seen.clone(),
        }
    }

    fn key(&self, sender: &str, mailbox: &str) -> u64 {
        self.seed.hash_one((sender.to_ascii_lowercase(), mailbox))
    }

    /// May `sender` send `mailbox` one more message now?
    pub fn admits(&self, sender: &str, mailbox: &str, now: Instant) -> bool {
        let key = self.key(sender, mailbox);
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&key) {
            Some((start, n)) if now.duration_since(*start) < self.window => *n < self.limit,
            _ => true,
        }
    }

    /// Count one message stored from `sender` into `mailbox`.
    pub fn record(&self, sender: &str, mailbox: &str, now: Instant) {
        let key = self.key(sender, mailbox);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_KEYS && seen.get(&key).is_none() {
            // Full: the least recently counted pair goes only if its window
            // is over; live counts are never dropped for a newcomer.
            let window = self.window;
            let expired = |e: &(Instant, u32)| now.duration_since(e.0) >= window;
            if seen.pop_oldest_if(expired).is_none() {
                tracing::warn!(
                    keys = MAX_KEYS,
                    "sender rate table full; not counting new senders"
                );
                return;
            }
        }
        let e = seen.touch_or_insert_with(key, || (now, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

pub fn rate_reply() -> Reply {
    Reply::new(
        450,
        "4.2.1",
        "Too much mail from this sender for this mailbox, try again later",
    )
    .because("sender_rate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_stored_messages_per_sender_and_mailbox_in_windows() {
        let r = SenderRate::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        // Asking does not count.
        for _ in 0..5 {
            assert!(r.admits("a@x", "alice", t0));
        }
        r.record("a@x", "alice", t0);
        r.record("A@X", "alice", t0);
        assert!(!r.admits("a@x", "alice", t0 + Duration::from_secs(1)));
        // Another mailbox, another sender: their own budgets.
        assert!(r.admits("a@x", "bob", t0));
        assert!(r.admits("b@x", "alice", t0));
        // The next window.
        assert!(r.admits("a@x", "alice", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn a_full_table_keeps_its_counts() {
        let r = SenderRate::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        r.record("victim@x", "alice", t0);
        for i in 0..MAX_KEYS + 10 {
            r.record(&format!("s{i}@x"), "alice", t0);
        }
        assert!(r.seen.lock().unwrap().len() <= MAX_KEYS);
        assert!(
            !r.admits("victim@x", "alice", t0),
            "a flood reset the counts"
        );
    }

    #[test]
    fn fits_and_accounts() {
        let t = tempfile::tempdir().unwrap();
        let md = Maildir::ensure(&t.path().join("alice")).unwrap();
        let limit = QuotaRule {
            storage: Some(1000),
            messages: None,
        };
        let rule = Some(limit);
        let targets = [md.clone()];
        check_fits(&targets, &[rule], 1000).unwrap();
        let e = check_fits(&targets, &[rule], 1001).unwrap_err();
        assert!(is_over_quota(&e));
        check_fits(&targets, &[None], 10_000).unwrap();
        assert!(!refuses(&t.path().join("nobody-yet"), &limit, 1).unwrap());
        assert!(refuses(md.path(), &limit, 1001).unwrap());
        // Accounted: maildirsize (written by the first check) gets the line.
        account(&targets, &[rule], 5);
        let text = std::fs::read_to_string(md.path().join("maildirsize")).unwrap();
        assert_eq!(text, "1000S\n0 0\n5 1\n");
        // A full box: a message file of 1000 bytes, counted (maildirsize
        // removed: a change in the same clock tick as its last write is
        // not seen by mtimes).
        std::fs::remove_file(md.path().join("maildirsize")).unwrap();
        std::fs::write(md.path().join("new/1.M1P1.h,S=1000"), vec![b'x'; 1000]).unwrap();
        assert!(refuses(md.path(), &limit, 1).unwrap());
    }
}
