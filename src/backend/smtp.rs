//! `smtp::Backend` over recipient resolution and durable Maildir delivery: the
//! trace headers, batching body bytes into `spawn_blocking` writes, and mapping
//! storage errors to generic replies (details go to the log; maildird(8), MAILDIR).

use std::io;
use std::mem;
use std::net::IpAddr;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::Backend;
use super::checked::{StageParams, Staged};
use super::quota::{SenderRate, full_reply, rate_reply, refuses};
use super::recipients::resolve;
use crate::auth::{Role, validate_name};
use crate::maildir::deliver::{Delivery, RollbackFailed, scratch_file, staging_maildir};
use crate::maildir::name::UniqueName;
use crate::maildir::quota::QuotaRule;
use crate::maildir::{Maildir, fsat, is_no_space, is_stale_handle};
use crate::smtp::backend::{
    Authenticated, Backend as SmtpBackend, BodySink, Envelope, SessionInfo, Stored,
};
use crate::smtp::reply::Reply;

/// Body bytes are handed to a blocking task in batches of about this size:
/// one thread hop per batch, not per line, and bounded memory per message.
const BATCH: usize = 64 * 1024;

pub(super) fn temp_failure() -> Reply {
    Reply::new(451, "4.3.0", "Temporary failure")
}

/// Wire text stays generic; the log gets the error (STYLE.md "wire text
/// generic"). `id`: the message, once it has one. The session span names the
/// session and the client.
pub(super) fn storage_failure(e: &io::Error, id: Option<&str>, what: &str) -> Reply {
    let id = id.map(tracing::field::display);
    if is_no_space(e) {
        tracing::error!(id, error = %e, "{what}: no space left");
        Reply::new(452, "4.3.1", "Insufficient system storage")
    } else if fsat::is_refused(e) {
        // Its owner put a link or a special file where a Maildir directory
        // belongs: deferred (the admin can repair it), never followed.
        tracing::error!(id, error = %e, "{what}: refusing maildir");
        temp_failure()
    } else {
        tracing::warn!(id, error = %e, "{what} failed");
        temp_failure()
    }
}

impl SmtpBackend for Backend {
    type Sink = MaildirSink;

    /// RFC 4954 AUTH: the password check of `Backend::authenticate` (bounded,
    /// off the async threads, same cost for unknown users) plus the role.
    async fn login(
        &self,
        user: &str,
        password: &[u8],
        client: Option<IpAddr>,
    ) -> Option<Authenticated> {
        let entry = Backend::authenticate(self, user, password, client).await?;
        Some(Authenticated {
            may_submit: entry.has_role(Role::Submit),
            user: entry.name,
        })
    }

    /// RFC 5321 §4.1.1.3: the mailboxes of a user or an alias.
    async fn resolve_recipient(&self, address: &str, env: &Envelope) -> Result<Vec<String>, Reply> {
        let users = self.users();
        let aliases = self.aliases();
        let mailboxes = resolve(
            address,
            &self.config.domains,
            &self.config.recipient_delimiter,
            &users,
            &aliases,
        )
        .map_err(|refusal| refusal.reply())?;
        // Quotas: a mailbox already full, or too full for the SIZE the
        // client declared, refuses the recipient now, so the message goes
        // to the others (452: try again later).
        let size = env.declared_size.unwrap_or(1).max(1);
        let full: Vec<(std::path::PathBuf, QuotaRule)> = mailboxes
            .iter()
            .filter_map(|m| Some((self.config.mail_root.join(m), self.quota_rule(&users, m)?)))
            .collect();
        if !full.is_empty() {
            let checked = tokio::task::spawn_blocking(move || {
                full.iter()
                    .map(|(p, r)| (p.clone(), refuses(p, r, size)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (path, r) in checked {
                match r {
                    Ok(true) => return Err(full_reply()),
                    Ok(false) => {}
                    // A cache we cannot read decides nothing: delivery will
                    // say what is wrong with the Maildir.
                    Err(e) => {
                        tracing::warn!(maildir = %path.display(), error = %e, "cannot read the quota")
                    }
                }
            }
        }
        if let Some(rate) = &self.sender_rate {
            let now = std::time::Instant::now();
            if !mailboxes
                .iter()
                .all(|m| rate.admits(&env.mail_from, m, now))
            {
                return Err(rate_reply());
            }
        }
        Ok(mailboxes)
    }

    async fn begin(&self, info: &SessionInfo, env: &Envelope) -> Result<MaildirSink, Reply> {
        let mailboxes = distinct_mailboxes(env);
        if mailboxes.is_empty() {
            return Err(Reply::new(554, "5.5.1", "No valid recipients"));
        }
        // Resolution already validated these; check again because they become paths.
        if let Some(bad) = mailboxes.iter().find(|m| validate_name(m).is_err()) {
            tracing::error!(mailbox = ?bad, "refusing unsafe mailbox name");
            return Err(temp_failure());
        }
        let paths: Vec<std::path::PathBuf> = mailboxes
            .iter()
            .map(|m| self.config.mail_root.join(m))
            .collect();
        let users = self.users();
        let quotas: Vec<Option<QuotaRule>> = mailboxes
            .iter()
            .map(|m| self.quota_rule(&users, m))
            .collect();
        let delivered_to = (self.config.smtp.delivered_to && mailboxes.len() == 1)
            .then(|| env.rcpts.first().map(|(addr, _)| addr.clone()))
            .flatten();
        // Checks on: mail from outside (not an authenticated submission)
        // over the network (a local pipe has no address to check).
        let checks = self
            .checks
            .clone()
            .filter(|_| info.auth_user.is_none() && info.peer.is_some());
        let filters = self.message_filters.get(&info.listener).cloned();
        let stage = (checks.is_some() || filters.is_some()).then(|| StageParams {
            checks,
            filters,
            info: info.clone(),
            env: env.clone(),
            host: self.config.hostname.clone(),
            delivered_to: delivered_to.clone(),
            max_read: super::pop3::max_read(self.config.limits.max_message_size),
            quotas: quotas.clone(),
        });
        let rate = self.sender_rate.clone().map(|r| (r, env.mail_from.clone()));
        let host = self.config.hostname.clone();
        let sink = |body: Body, targets: Vec<Maildir>| MaildirSink {
            id: body.id().to_string(),
            delivery: Some(body),
            buf: Vec::with_capacity(BATCH),
            targets,
            paths: paths.clone(),
            mailboxes: mailboxes.clone(),
            quotas: quotas.clone(),
            rate: rate.clone(),
            host: host.clone(),
            maildirs: self.maildirs.clone(),
        };
        // The common case: Maildirs delivered to before, no checks or
        // filters. Nothing to do on disk until the body is in: the message
        // file is created, written, fsynced and linked in one blocking task
        // at the end (or at the first full batch of a big message).
        if stage.is_none() {
            let known: Option<Vec<Maildir>> =
                paths.iter().map(|p| self.maildirs.known(p)).collect();
            if let Some(targets) = known {
                let name = UniqueName::generate(&host);
                let headers = trace_headers(
                    info,
                    env,
                    &host,
                    name.id(),
                    delivered_to.as_deref(),
                    None,
                    Timestamp::now(),
                );
                return Ok(sink(Body::Pending { name, headers }, targets));
            }
        }
        let (info, env) = (info.clone(), env.clone());
        let maildirs = self.maildirs.clone();
        let (paths2, host2) = (paths.clone(), host.clone());
        let started = tokio::task::spawn_blocking(move || -> io::Result<(Body, Vec<Maildir>)> {
            let host = host2;
            let targets = paths2
                .iter()
                .map(|p| maildirs.ensure(p))
                .collect::<io::Result<Vec<Maildir>>>()?;
            if let Some(p) = stage {
                let staging = staging_maildir(&targets)?;
                let scratch = scratch_file(staging, &host)?;
                let staged = Staged::new(scratch, staging.clone(), p);
                return Ok((Body::Staged(Box::new(staged)), targets));
            }
            let mut delivery = Delivery::begin(&targets, &host)?;
            let headers = trace_headers(
                &info,
                &env,
                &host,
                delivery.id(),
                delivered_to.as_deref(),
                None,
                Timestamp::now(),
            );
            delivery.write(headers.as_bytes())?;
            Ok((Body::Direct(delivery), targets))
        })
        .await;
        match started {
            Ok(Ok((body, targets))) => Ok(sink(body, targets)),
            Ok(Err(e)) => {
                self.maildirs.forget(&paths);
                Err(storage_failure(&e, None, "maildir delivery start"))
            }
            Err(e) => {
                tracing::error!(error = %e, "delivery task failed");
                Err(temp_failure())
            }
        }
    }
}

/// The mailboxes of an envelope (aliases expanded), in order, once each.
fn distinct_mailboxes(env: &Envelope) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in env.rcpts.iter().flat_map(|(_, mailboxes)| mailboxes) {
        if !m.is_empty() && !out.contains(m) {
            out.push(m.clone());
        }
    }
    out
}

/// Client-supplied text goes into a header: no control characters, ever.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `Return-Path:`, optional `Delivered-To:` and `Received:` (RFC 5321 §4.4,
/// RFC 5322 §3.6.7), with LF line endings as stored in the Maildir.
/// `auth`: an `Authentication-Results:` header to put above `Received:`.
pub fn trace_headers(
    info: &SessionInfo,
    env: &Envelope,
    hostname: &str,
    id: &str,
    delivered_to: Option<&str>,
    auth: Option<&str>,
    now: Timestamp,
) -> String {
    let mut h = format!("Return-Path: <{}>\n", header_safe(&env.mail_from));
    if let Some(rcpt) = delivered_to {
        h.push_str(&format!("Delivered-To: {}\n", header_safe(rcpt)));
    }
    if let Some(a) = auth {
        h.push_str(a);
    }
    let helo = if info.helo.is_empty() {
        "unknown".to_string()
    } else {
        header_safe(&info.helo)
    };
    let peer = match info.peer.map(|a| a.ip().to_canonical()) {
        Some(IpAddr::V4(ip)) => format!("([{ip}])"),
        // RFC 5321 §4.1.3: an IPv6 address literal is tagged.
        Some(IpAddr::V6(ip)) => format!("([IPv6:{ip}])"),
        None => "(unknown)".to_string(),
    };
    h.push_str(&format!(
        "Received: from {helo} {peer}\n\tby {hostname} (maildird) with {} id {id}",
        header_safe(&info.with_protocol),
    ));
    if let [(addr, _)] = env.rcpts.as_slice() {
        h.push_str(&format!("\n\tfor <{}>", header_safe(addr)));
    }
    let date = jiff::fmt::rfc2822::to_string(&now.to_zoned(TimeZone::UTC))
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string());
    h.push_str(&format!(";\n\t{date}\n"));
    h
}

/// A pending message's file in `targets`, with its trace headers written:
/// under its announced name, or another should that be taken in `tmp/` (the
/// `Received:` id then follows the file).
fn open_pending(
    name: &UniqueName,
    headers: &str,
    targets: &[Maildir],
    host: &str,
) -> io::Result<Delivery> {
    let mut d = Delivery::begin_named(targets, host, Some(name.clone()))?;
    if d.id() == name.id() {
        d.write(headers.as_bytes())?;
    } else {
        let renamed =
            headers.replacen(&format!(" id {}", name.id()), &format!(" id {}", d.id()), 1);
        d.write(renamed.as_bytes())?;
    }
    Ok(d)
}

/// Where a message's body goes while it arrives.
#[derive(Debug)]
enum Body {
    /// Nothing on disk yet: the message file gets this name and these trace
    /// headers when the first batch is written or at commit.
    Pending { name: UniqueName, headers: String },
    /// Straight into the message file (trace headers already in it).
    Direct(Delivery),
    /// Into a scratch file, checked before the message file is written.
    Staged(Box<Staged>),
}

impl Body {
    fn id(&self) -> &str {
        match self {
            Body::Pending { name, .. } => name.id(),
            Body::Direct(d) => d.id(),
            Body::Staged(s) => s.id(),
        }
    }

    /// Append body bytes (blocking): a pending message file is created
    /// in `targets` first.
    fn write(&mut self, bytes: &[u8], targets: &[Maildir], host: &str) -> io::Result<()> {
        match self {
            Body::Pending { name, headers } => {
                let mut d = open_pending(name, headers, targets, host)?;
                d.write(bytes)?;
                *self = Body::Direct(d);
                Ok(())
            }
            Body::Direct(d) => d.write(bytes),
            Body::Staged(s) => s.write(bytes),
        }
    }
}

/// A message on its way into Maildir: bytes are batched, then written by a
/// blocking task. Dropped without `commit`, its `Delivery` removes the tmp
/// file (a staged body's scratch file was never linked).
#[derive(Debug)]
pub struct MaildirSink {
    id: String,
    /// None after a failed write: every later call answers 451.
    delivery: Option<Body>,
    buf: Vec<u8>,
    targets: Vec<Maildir>,
    /// The mailbox name of each target, in the same order.
    mailboxes: Vec<String>,
    /// Where each target is (forgotten by `maildirs` when delivery fails).
    paths: Vec<std::path::PathBuf>,
    /// The quota rule of each target, in the same order.
    quotas: Vec<Option<QuotaRule>>,
    /// The per-sender rate and this message's sender: counted once stored.
    rate: Option<(Arc<SenderRate>, String)>,
    host: String,
    maildirs: Arc<super::maildirs::Maildirs>,
}

impl MaildirSink {
    /// 250 means durable (maildird(8), MAILDIR): fsync, link into every `new/`,
    /// fsync them; only then Ok.
    async fn store(&mut self) -> Result<Stored, Reply> {
        let Some(body) = self.delivery.take() else {
            return Err(temp_failure());
        };
        let buf = mem::take(&mut self.buf);
        let targets = mem::take(&mut self.targets);
        let mailboxes = mem::take(&mut self.mailboxes);
        let id = mem::take(&mut self.id);
        let body = match body {
            Body::Staged(s) => {
                let r = s.commit(buf, targets, mailboxes).await;
                if r.is_err() {
                    // Checked again next time (a refusal costs one ensure).
                    self.maildirs.forget(&self.paths);
                }
                return r;
            }
            other => other,
        };
        let quotas = mem::take(&mut self.quotas);
        let host = self.host.clone();
        let (maildirs, paths) = (self.maildirs.clone(), self.paths.clone());
        let log_id = id.clone();
        let done = tokio::task::spawn_blocking(move || match body {
            Body::Pending { name, headers } => {
                let whole = |targets: &[Maildir]| {
                    let d = open_pending(&name, &headers, targets, &host)?;
                    finish(d, &buf, targets, &quotas)
                };
                match whole(&targets) {
                    // The whole message is still here: once more through
                    // new handles (shared storage that failed over, or a
                    // directory replaced under a cached handle).
                    Err(e) if is_stale_handle(&e) && RollbackFailed::of(&e).is_none() => {
                        tracing::warn!(id = %log_id, error = %e, "maildir delivery failed on a stale handle; trying once more");
                        maildirs.forget(&paths);
                        let fresh = paths
                            .iter()
                            .map(|p| maildirs.ensure(p))
                            .collect::<io::Result<Vec<Maildir>>>()?;
                        whole(&fresh)
                    }
                    r => r,
                }
            }
            Body::Direct(d) => finish(d, &buf, &targets, &quotas),
            Body::Staged(_) => Err(io::Error::other("staged message in the direct path")),
        })
        .await;
        match done {
            Ok(Ok(paths)) => Ok(Stored {
                id,
                files: mailboxes.into_iter().zip(paths).collect(),
                auth: None,
                folder: None,
                discarded: None,
            }),
            Ok(Err(e)) => {
                self.maildirs.forget(&self.paths);
                Err(commit_failure(&e, &id))
            }
            Err(e) => {
                tracing::error!(id = %id, error = %e, "delivery task failed");
                Err(temp_failure())
            }
        }
    }

    async fn flush_batch(&mut self) -> Result<(), Reply> {
        let Some(mut delivery) = self.delivery.take() else {
            return Err(temp_failure());
        };
        let mut buf = mem::take(&mut self.buf);
        let (targets, host) = (self.targets.clone(), self.host.clone());
        // On error the Delivery is dropped inside the blocking task, which
        // unlinks its tmp file off the async threads.
        let done = tokio::task::spawn_blocking(move || {
            delivery.write(&buf, &targets, &host)?;
            buf.clear();
            Ok::<_, io::Error>((delivery, buf))
        })
        .await;
        match done {
            Ok(Ok((delivery, buf))) => {
                self.delivery = Some(delivery);
                self.buf = buf;
                Ok(())
            }
            Ok(Err(e)) => {
                self.maildirs.forget(&self.paths);
                Err(storage_failure(&e, Some(&self.id), "maildir write"))
            }
            Err(e) => {
                tracing::error!(id = %self.id, error = %e, "delivery task failed");
                Err(temp_failure())
            }
        }
    }
}

impl BodySink for MaildirSink {
    fn id(&self) -> &str {
        &self.id
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Reply> {
        if self.delivery.is_none() {
            return Err(temp_failure());
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BATCH {
            self.flush_batch().await?;
        }
        Ok(())
    }

    /// 250 means durable (maildird(8), MAILDIR): fsync, link into every `new/`,
    /// fsync them; only then Ok.
    async fn commit(mut self) -> Result<Stored, Reply> {
        let rate = self.rate.take();
        let mailboxes = self.mailboxes.clone();
        let stored = self.store().await;
        // The sender's rate counts messages stored, not recipients asked
        // for: a forged sender that never sends DATA uses nobody's budget.
        if let (Ok(s), Some((rate, sender))) = (&stored, rate) {
            if s.discarded.is_none() {
                let now = std::time::Instant::now();
                for m in &mailboxes {
                    rate.record(&sender, m, now);
                }
            }
        }
        stored
    }

    async fn abort(mut self) {
        if let Some(delivery) = self.delivery.take() {
            let _ = tokio::task::spawn_blocking(move || drop(delivery)).await;
        }
    }
}

/// Write the last bytes of a message, check its quotas, and commit it.
fn finish(
    mut delivery: Delivery,
    bytes: &[u8],
    targets: &[Maildir],
    quotas: &[Option<QuotaRule>],
) -> io::Result<Vec<std::path::PathBuf>> {
    delivery.write(bytes)?;
    let size = delivery.size();
    super::quota::check_fits(targets, quotas, size)?;
    let paths = delivery.commit(targets)?;
    super::quota::account(targets, quotas, size);
    Ok(paths)
}

/// The reply to a failed commit (details in the log).
pub(super) fn commit_failure(e: &io::Error, id: &str) -> Reply {
    if super::quota::is_over_quota(e) {
        tracing::info!(id, error = %e, "over quota");
        return super::quota::overflow_reply();
    }
    match RollbackFailed::of(e) {
        // Some copies stayed in new/ after a failure: say which, in the
        // log and (by id) in the reply, so a duplicate after the
        // client's retry can be explained.
        Some(r) => {
            tracing::error!(id = %r.id, remaining = ?r.remaining, error = %r.error, "maildir commit failed and its rollback too");
            Reply::new(
                451,
                "4.3.0",
                format!(
                    "Temporary failure; copies of {} may have been delivered",
                    r.id
                ),
            )
        }
        None => storage_failure(e, Some(id), "maildir commit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    fn backend(dir: &Path, delivered_to: bool) -> Backend {
        fs::write(
            dir.join("users"),
            "alice:{PLAIN}a\nbob:{PLAIN}b\nroot:{PLAIN}r\n",
        )
        .unwrap();
        fs::write(dir.join("aliases"), "team: alice, bob\npostmaster: root\n").unwrap();
        let mut cfg = Config::parse(
            "hostname = \"mx.example.org\"\ndomains = [\"example.org\"]\n",
            "t",
        )
        .unwrap();
        cfg.mail_root = dir.join("mail");
        cfg.users_file = dir.join("users");
        cfg.aliases_file = Some(dir.join("aliases"));
        cfg.smtp.delivered_to = delivered_to;
        Backend::load(Arc::new(cfg)).unwrap()
    }

    fn info(peer: Option<&str>) -> SessionInfo {
        SessionInfo {
            id: 42,
            peer: peer.map(|p| p.parse().unwrap()),
            helo: "client.example".into(),
            with_protocol: "ESMTPS".into(),
            auth_user: None,
            listener: "smtp".into(),
        }
    }

    fn envelope(rcpts: &[(&str, &[&str])]) -> Envelope {
        Envelope {
            mail_from: "sender@remote.example".into(),
            rcpts: rcpts
                .iter()
                .map(|(a, m)| (a.to_string(), m.iter().map(|m| m.to_string()).collect()))
                .collect(),
            ..Envelope::default()
        }
    }

    fn files(dir: PathBuf) -> Vec<PathBuf> {
        match fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn wire(r: Reply) -> String {
        let mut v = Vec::new();
        r.encode(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn trace_headers_exact() {
        let now: Timestamp = "2026-11-22T00:43:09Z".parse().unwrap();
        let one = envelope(&[("alice@example.org", &["alice"])]);
        assert_eq!(
            trace_headers(
                &info(Some("192.0.2.7:4321")),
                &one,
                "mx.example.org",
                "1795315389.M42P1234Q7R0000beef",
                Some("alice@example.org"),
                None,
                now
            ),
            "Return-Path: <sender@remote.example>\n\
             Delivered-To: alice@example.org\n\
             Received: from client.example ([192.0.2.7])\n\
             \tby mx.example.org (maildird) with ESMTPS id 1795315389.M42P1234Q7R0000beef\n\
             \tfor <alice@example.org>;\n\
             \tSun, 22 Nov 2026 00:43:09 +0000\n"
        );
        let mut two = envelope(&[("a@example.org", &["alice"]), ("b@example.org", &["bob"])]);
        two.mail_from = String::new();
        let mut i = info(None);
        i.helo = "evil\r\nX-Injected: 1".into();
        assert_eq!(
            trace_headers(&i, &two, "mx.example.org", "X1", None, None, now),
            "Return-Path: <>\n\
             Received: from evil??X-Injected: 1 (unknown)\n\
             \tby mx.example.org (maildird) with ESMTPS id X1;\n\
             \tSun, 22 Nov 2026 00:43:09 +0000\n"
        );
        // IPv4-mapped IPv6 peers show as IPv4; real IPv6 is tagged (RFC 5321 §4.1.3).
        let h = trace_headers(
            &info(Some("[::ffff:192.0.2.9]:25")),
            &two,
            "h",
            "X",
            None,
            None,
            now,
        );
        assert!(h.contains("from client.example ([192.0.2.9])\n"), "{h}");
        let h = trace_headers(
            &info(Some("[2001:db8::1]:25")),
            &two,
            "h",
            "X",
            None,
            None,
            now,
        );
        assert!(h.contains("([IPv6:2001:db8::1])\n"), "{h}");
        let h = trace_headers(&info(Some("[::1]:25")), &two, "h", "X", None, None, now);
        assert!(h.contains("([IPv6:::1])\n"), "{h}");
    }

    #[test]
    fn mailboxes_split_and_dedupe() {
        let env = envelope(&[
            ("t@x", &["alice", "bob"]),
            ("a@x", &["alice"]),
            ("c@x", &["carol"]),
        ]);
        assert_eq!(distinct_mailboxes(&env), ["alice", "bob", "carol"]);
    }

    #[tokio::test]
    async fn resolve_recipient_replies() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), true);
        assert_eq!(
            b.resolve_recipient("Alice+x@Example.org", &Envelope::default())
                .await
                .unwrap(),
            ["alice"]
        );
        assert_eq!(
            b.resolve_recipient("team@example.org", &Envelope::default())
                .await
                .unwrap(),
            ["alice", "bob"]
        );
        assert_eq!(
            b.resolve_recipient("postmaster", &Envelope::default())
                .await
                .unwrap(),
            ["root"]
        );
        assert_eq!(
            wire(
                b.resolve_recipient("alice@elsewhere.example", &Envelope::default())
                    .await
                    .unwrap_err()
            ),
            "550 5.7.1 Relaying denied\r\n"
        );
        assert_eq!(
            wire(
                b.resolve_recipient("zed@example.org", &Envelope::default())
                    .await
                    .unwrap_err()
            ),
            "550 5.1.1 User unknown\r\n"
        );
    }

    #[tokio::test]
    async fn delivers_one_recipient_with_headers_and_batches() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), true);
        let env = envelope(&[("alice@example.org", &["alice"])]);
        let mut sink = b.begin(&info(Some("192.0.2.7:4321")), &env).await.unwrap();
        let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq\n";
        sink.write(b"Subject: big\n\n").await.unwrap();
        // ~200 KiB: several batches through spawn_blocking.
        for _ in 0..3200 {
            sink.write(line).await.unwrap();
        }
        // Nothing visible in new/ before commit.
        let md = t.path().join("mail/alice");
        assert!(files(md.join("new")).is_empty());
        assert_eq!(files(md.join("tmp")).len(), 1);
        let id = sink.id().to_string();
        let stored = sink.commit().await.unwrap();

        let delivered = files(md.join("new"));
        assert_eq!(delivered.len(), 1);
        assert!(files(md.join("tmp")).is_empty());
        // One id: in Received:, at the start of the file name, in the receipt.
        assert_eq!(stored.files, [("alice".to_string(), delivered[0].clone())]);
        let name = delivered[0].file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(&format!("{id}.")), "{name} vs {id}");
        let text = fs::read_to_string(&delivered[0]).unwrap();
        let prefix = format!(
            "Return-Path: <sender@remote.example>\n\
             Delivered-To: alice@example.org\n\
             Received: from client.example ([192.0.2.7])\n\
             \tby mx.example.org (maildird) with ESMTPS id {id}\n\
             \tfor <alice@example.org>;\n\t"
        );
        assert!(text.starts_with(&prefix), "{}", &text[..300]);
        let (date, rest) = text[prefix.len()..].split_once('\n').unwrap();
        jiff::fmt::rfc2822::parse(date).unwrap();
        assert!(date.ends_with(" +0000"), "{date}");
        let body = String::from_utf8(line.to_vec()).unwrap().repeat(3200);
        assert_eq!(rest, format!("Subject: big\n\n{body}"));
        // The name carries the sizes POP3 will use.
        let name = delivered[0].file_name().unwrap().to_str().unwrap();
        let size = text.len() as u64;
        let lfs = text.matches('\n').count() as u64;
        assert_eq!(
            crate::maildir::name::parse_sizes(name),
            (Some(size), Some(size + lfs))
        );
    }

    /// A Maildir delivered to before: the second message is pending (no
    /// file until commit), then stored in one go with its id everywhere;
    /// a big one becomes a file at its first batch; an abort leaves nothing.
    #[tokio::test]
    async fn known_maildirs_deliver_in_one_step() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), true);
        let env = envelope(&[("alice@example.org", &["alice"])]);
        let first = b.begin(&info(None), &env).await.unwrap();
        first.commit().await.unwrap();
        let md = t.path().join("mail/alice");
        let mut sink = b.begin(&info(None), &env).await.unwrap();
        assert!(matches!(sink.delivery, Some(Body::Pending { .. })));
        sink.write(b"Subject: two\n\nsmall\n").await.unwrap();
        assert!(
            files(md.join("tmp")).is_empty(),
            "nothing on disk before commit"
        );
        let id = sink.id().to_string();
        let stored = sink.commit().await.unwrap();
        assert_eq!(stored.id, id);
        let text = fs::read_to_string(&stored.files[0].1).unwrap();
        assert!(text.contains(&format!(" id {id}\n")), "{text}");
        assert!(text.ends_with("\nSubject: two\n\nsmall\n"), "{text}");
        assert_eq!(files(md.join("new")).len(), 2);
        // Big: a file appears at the first full batch.
        let mut sink = b.begin(&info(None), &env).await.unwrap();
        sink.write(&[b'x'; BATCH + 1]).await.unwrap();
        assert!(matches!(sink.delivery, Some(Body::Direct(_))));
        assert_eq!(files(md.join("tmp")).len(), 1);
        sink.abort().await;
        assert!(files(md.join("tmp")).is_empty());
        // Pending and aborted: nothing anywhere.
        let mut sink = b.begin(&info(None), &env).await.unwrap();
        sink.write(b"x\n").await.unwrap();
        sink.abort().await;
        assert!(files(md.join("tmp")).is_empty());
        assert_eq!(files(md.join("new")).len(), 2);
    }

    #[tokio::test]
    async fn alias_delivers_one_inode_to_each_mailbox() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), true);
        let rcpt = b
            .resolve_recipient("team@example.org", &Envelope::default())
            .await
            .unwrap();
        let env = envelope(&[
            (
                "team@example.org",
                &rcpt.iter().map(String::as_str).collect::<Vec<_>>(),
            ),
            ("alice@example.org", &["alice"]),
        ]);
        let mut sink = b.begin(&info(None), &env).await.unwrap();
        sink.write(b"Subject: hi\n\nbody\n").await.unwrap();
        sink.commit().await.unwrap();
        let a = files(t.path().join("mail/alice/new"));
        let bo = files(t.path().join("mail/bob/new"));
        assert_eq!((a.len(), bo.len()), (1, 1));
        assert_eq!(
            fs::metadata(&a[0]).unwrap().ino(),
            fs::metadata(&bo[0]).unwrap().ino()
        );
        let text = fs::read_to_string(&a[0]).unwrap();
        // Two mailboxes: no Delivered-To; two RCPTs: no `for`.
        assert!(!text.contains("Delivered-To:"), "{text}");
        assert!(!text.contains("\tfor <"), "{text}");
        assert!(
            text.contains("Received: from client.example (unknown)\n"),
            "{text}"
        );
        assert!(text.ends_with("\nSubject: hi\n\nbody\n"), "{text}");
    }

    #[tokio::test]
    async fn delivered_to_can_be_turned_off() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), false);
        let env = envelope(&[("bob@example.org", &["bob"])]);
        let sink = b.begin(&info(None), &env).await.unwrap();
        sink.commit().await.unwrap();
        let f = files(t.path().join("mail/bob/new"));
        let text = fs::read_to_string(&f[0]).unwrap();
        assert!(!text.contains("Delivered-To:"), "{text}");
        assert!(text.contains("\tfor <bob@example.org>;"), "{text}");
    }

    #[tokio::test]
    async fn abort_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), true);
        let env = envelope(&[("alice@example.org", &["alice"])]);
        let mut sink = b.begin(&info(None), &env).await.unwrap();
        sink.write(&[b'x'; BATCH + 10]).await.unwrap();
        assert_eq!(files(t.path().join("mail/alice/tmp")).len(), 1);
        sink.abort().await;
        assert!(files(t.path().join("mail/alice/tmp")).is_empty());
        assert!(files(t.path().join("mail/alice/new")).is_empty());
    }

    #[tokio::test]
    async fn commit_failure_is_451_and_leaves_no_copy() {
        let t = tempfile::tempdir().unwrap();
        let b = backend(t.path(), true);
        let env = envelope(&[("team@example.org", &["alice", "bob"])]);
        let mut sink = b.begin(&info(None), &env).await.unwrap();
        sink.write(b"body\n").await.unwrap();
        // bob's new/ turns into a regular file: the second link fails even as root.
        let bob_new = t.path().join("mail/bob/new");
        fs::remove_dir(&bob_new).unwrap();
        fs::write(&bob_new, b"").unwrap();
        let e = sink.commit().await.unwrap_err();
        assert_eq!(wire(e), "451 4.3.0 Temporary failure\r\n");
        assert!(files(t.path().join("mail/alice/new")).is_empty());
        assert!(files(t.path().join("mail/alice/tmp")).is_empty());
        // begin itself fails the same way while the Maildir is broken.
        let e = b.begin(&info(None), &env).await.unwrap_err();
        assert_eq!(wire(e), "451 4.3.0 Temporary failure\r\n");
        assert!(files(t.path().join("mail/alice/tmp")).is_empty());
    }

    #[test]
    fn no_space_maps_to_452() {
        let e = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(
            wire(storage_failure(&e, None, "t")),
            "452 4.3.1 Insufficient system storage\r\n"
        );
        let e = io::Error::from_raw_os_error(nix::libc::EDQUOT);
        assert_eq!(
            wire(storage_failure(&e, None, "t")),
            "452 4.3.1 Insufficient system storage\r\n"
        );
        let e = io::Error::from_raw_os_error(nix::libc::EIO);
        assert_eq!(
            wire(storage_failure(&e, None, "t")),
            "451 4.3.0 Temporary failure\r\n"
        );
    }
}
