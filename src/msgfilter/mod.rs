//! Message filters: after the body has arrived and before the 250, each
//! message of a listener with `message_filters` is handed, in order, to
//! milters (rspamd, OpenDKIM, ClamAV... over the Sendmail milter protocol)
//! and to programs (`exec`, e.g. `spamc`), which may refuse it, defer it,
//! discard it, quarantine it into `.Junk`, edit its header section, or (a
//! program) rewrite it. maildird.toml(5), MESSAGE FILTERS.

pub mod exec;
pub mod message;
pub mod milter;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::maildir::Maildir;
use crate::smtp::reply::Reply;
use message::{HeaderTooBig, Message};

/// What a filter that fails (down, too slow, speaking nonsense) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// `451 4.7.1`: the client tries again later (Postfix's default).
    Tempfail,
    /// Deliver as if the filter had accepted it.
    Accept,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Tempfail => "tempfail",
            OnError::Accept => "accept",
        }
    }
}

/// The session facts a filter sees (milter macros, exec environment).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The message id (milter macro `i`).
    pub id: String,
    /// Our host name (macro `j`).
    pub hostname: String,
    pub client: Option<SocketAddr>,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub auth_user: Option<String>,
}

/// One filter's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refuse (5xx); the filter's own reply when it gave one.
    Reject(Option<Reply>),
    /// Defer (4xx); the filter's own reply when it gave one.
    Tempfail(Option<Reply>),
    /// Accept with 250 and deliver nothing.
    Discard,
}

impl Verdict {
    /// A milter's `SMFIR_REPLYCODE` text (`554 5.7.1 Gtube pattern`, maybe
    /// several lines): a 5xx rejects, a 4xx defers; anything else is not a
    /// refusal a milter may send, and defers with our own text.
    pub fn from_reply_text(text: &str) -> Verdict {
        match parse_reply(text) {
            Some(r) if r.code >= 500 => Verdict::Reject(Some(r)),
            // 421 closes the session; the session goes on here: 451.
            Some(mut r) if r.code == 421 => {
                r.code = 451;
                Verdict::Tempfail(Some(r))
            }
            Some(r) => Verdict::Tempfail(Some(r)),
            None => Verdict::Tempfail(None),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Discard => "discard",
        }
    }
}

/// `NNN[-| ][X.Y.Z ]text` lines into a reply; only 4xx and 5xx, the
/// enhanced code's class matching the reply code's (RFC 3463), control
/// characters dropped and each line at most 400 bytes.
pub fn parse_reply(text: &str) -> Option<Reply> {
    let mut code = None;
    let mut status: Option<String> = None;
    let mut lines = Vec::new();
    for raw in text
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
    {
        let c: u16 = raw.get(..3)?.parse().ok()?;
        if !(400..600).contains(&c) || code.is_some_and(|k| k != c) {
            return None;
        }
        code = Some(c);
        let rest = raw.get(3..).unwrap_or("").trim_start_matches(['-', ' ']);
        let (st, txt) = match rest.split_once(' ') {
            Some((s, t)) if is_status(s, c) => (Some(s), t),
            None if is_status(rest, c) => (Some(rest), ""),
            _ => (None, rest),
        };
        if status.is_none() {
            status = st.map(str::to_string);
        }
        let clean: String = txt
            .chars()
            .filter(|ch| !ch.is_control())
            .take(400)
            .collect();
        lines.push(clean);
    }
    let code = code?;
    let status = status.unwrap_or_else(|| if code >= 500 { "5.7.1" } else { "4.7.1" }.into());
    let mut r = Reply::new(code, status, String::new()).because("filter");
    r.lines = if lines.is_empty() {
        vec![String::new()]
    } else {
        lines
    };
    Some(r)
}

fn is_status(s: &str, code: u16) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts.first().and_then(|p| p.parse::<u16>().ok()) == Some(code / 100)
}

/// `[milter.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    /// `host:port` or a Unix socket path.
    pub address: String,
    /// Each connect, read and write (maildird.toml(5)).
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::de_duration"
    )]
    pub timeout: Duration,
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
}

/// What a program's result means (`[exec.NAME] result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecResult {
    /// Its output (exit 0) is the new message, e.g. `spamc`.
    Message,
    /// Its exit code is the verdict: 0 accept, 1 reject, 75 tempfail.
    ExitCode,
}

/// `[exec.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    pub result: ExecResult,
    /// From start to exit.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::de_duration"
    )]
    pub timeout: Duration,
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_on_error() -> OnError {
    OnError::Tempfail
}

/// One configured message filter.
#[derive(Debug, Clone)]
pub enum Filter {
    Milter {
        name: String,
        address: milter::Address,
        timeout: Duration,
        on_error: OnError,
    },
    Exec {
        name: String,
        config: ExecConfig,
    },
}

impl Filter {
    pub fn name(&self) -> &str {
        match self {
            Filter::Milter { name, .. } | Filter::Exec { name, .. } => name,
        }
    }

    fn on_error(&self) -> OnError {
        match self {
            Filter::Milter { on_error, .. } => *on_error,
            Filter::Exec { config, .. } => config.on_error,
        }
    }

    /// Resolve `milter.NAME` or `exec.NAME` against the config's tables.
    pub fn resolve(
        entry: &str,
        milters: &std::collections::BTreeMap<String, MilterConfig>,
        execs: &std::collections::BTreeMap<String, ExecConfig>,
    ) -> Result<Filter, String> {
        match entry.split_once('.') {
            Some(("milter", n)) => {
                let m = milters
                    .get(n)
                    .ok_or_else(|| format!("message filter {entry:?}: no [milter.{n}] table"))?;
                Ok(Filter::Milter {
                    name: entry.to_string(),
                    address: milter::Address::parse(&m.address)
                        .map_err(|e| format!("[milter.{n}] address: {e}"))?,
                    timeout: m.timeout,
                    on_error: m.on_error,
                })
            }
            Some(("exec", n)) => {
                let e = execs
                    .get(n)
                    .ok_or_else(|| format!("message filter {entry:?}: no [exec.{n}] table"))?;
                if e.command.first().is_none_or(|p| !p.starts_with('/')) {
                    return Err(format!(
                        "[exec.{n}] command must start with an absolute path"
                    ));
                }
                Ok(Filter::Exec {
                    name: entry.to_string(),
                    config: e.clone(),
                })
            }
            _ => Err(format!(
                "message filter {entry:?}: expected \"milter.NAME\" or \"exec.NAME\""
            )),
        }
    }
}

/// What the filters decided for the message.
#[derive(Debug)]
pub enum Decision {
    /// Deliver (into `.Junk` when a filter quarantined it: the reason).
    Deliver { quarantine: Option<String> },
    /// Refuse with this reply (logged by the session).
    Refuse(Reply),
    /// 250, nothing delivered: the filter that discarded it.
    Discard(String),
}

fn unavailable() -> Reply {
    Reply::new(451, "4.7.1", "Content filter unavailable, try again later").because("filter")
}

/// Run `filters` in order over `msg`. `staging`: where an exec filter's
/// output is kept (an unlinked file in its `tmp/`). Returns the message as
/// the filters left it.
pub async fn run(
    filters: &[Filter],
    ctx: Arc<Context>,
    mut msg: Message,
    staging: Maildir,
    max_size: u64,
) -> (Decision, Option<Message>) {
    let mut quarantine = None;
    for f in filters {
        let result = match f {
            Filter::Milter {
                address, timeout, ..
            } => {
                let (address, timeout, mctx) = (address.clone(), *timeout, ctx.clone());
                let done = tokio::task::spawn_blocking(move || {
                    let r = milter::run(&address, timeout, &mctx, &msg);
                    (msg, r)
                })
                .await;
                let Ok((m, r)) = done else {
                    tracing::error!(id = %ctx.id, filter = f.name(), "milter task failed");
                    return (Decision::Refuse(unavailable()), None);
                };
                msg = m;
                match r {
                    // Edits that would overflow the header are the filter's
                    // doing: a failure, with none of them applied.
                    Ok(out) => match msg.apply_all(out.edits) {
                        Ok(()) => {
                            if let Some(q) = out.quarantine {
                                quarantine = Some(q);
                            }
                            Ok(out.verdict.unwrap_or(Verdict::Accept))
                        }
                        Err(HeaderTooBig) => Err("its header edits overflow 1 MiB".to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
            Filter::Exec { config, .. } => {
                let (m, r) = exec::run(config, &ctx, msg, &staging, max_size).await;
                msg = m;
                r
            }
        };
        let verdict = match result {
            Ok(v) => v,
            Err(e) => match f.on_error() {
                OnError::Tempfail => {
                    tracing::error!(id = %ctx.id, filter = f.name(), error = %e, "message filter failed; deferring the message");
                    return (Decision::Refuse(unavailable()), Some(msg));
                }
                OnError::Accept => {
                    tracing::warn!(id = %ctx.id, filter = f.name(), error = %e, "message filter failed; accepting without it");
                    continue;
                }
            },
        };
        tracing::info!(id = %ctx.id, filter = f.name(), verdict = verdict.as_str(), quarantine = quarantine.as_deref(), "message filter");
        match verdict {
            Verdict::Accept => {}
            Verdict::Reject(r) => {
                let r = r.unwrap_or_else(|| {
                    Reply::new(550, "5.7.1", "Message content rejected").because("filter")
                });
                return (Decision::Refuse(r), Some(msg));
            }
            Verdict::Tempfail(r) => {
                let r = r.unwrap_or_else(|| {
                    Reply::new(
                        451,
                        "4.7.1",
                        "Message deferred by a content filter, try again later",
                    )
                    .because("filter")
                });
                return (Decision::Refuse(r), Some(msg));
            }
            Verdict::Discard => return (Decision::Discard(f.name().to_string()), Some(msg)),
        }
    }
    (Decision::Deliver { quarantine }, Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut v = Vec::new();
        r.encode(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn milter_reply_texts() {
        let table = [
            (
                "554 5.7.1 Gtube pattern",
                Some("554 5.7.1 Gtube pattern\r\n"),
            ),
            ("550 Spam", Some("550 5.7.1 Spam\r\n")),
            ("451 4.7.1 Try later\r\n", Some("451 4.7.1 Try later\r\n")),
            ("450 4.2.0", Some("450 4.2.0\r\n")),
            (
                "550-5.7.1 first\r\n550 5.7.1 second",
                Some("550-5.7.1 first\r\n550 5.7.1 second\r\n"),
            ),
            // Class mismatch: the enhanced code is text then.
            ("550 4.7.1 odd", Some("550 5.7.1 4.7.1 odd\r\n")),
            ("554 5.7.1 bad\x07bell", Some("554 5.7.1 badbell\r\n")),
            ("250 ok", None),
            ("55", None),
            ("abc def", None),
            ("550-a\r\n451 b", None),
        ];
        for (text, want) in table {
            assert_eq!(
                parse_reply(text).as_ref().map(wire).as_deref(),
                want,
                "{text:?}"
            );
        }
        assert!(matches!(
            Verdict::from_reply_text("554 5.7.1 x"),
            Verdict::Reject(Some(_))
        ));
        assert!(matches!(
            Verdict::from_reply_text("421 4.7.0 x"),
            Verdict::Tempfail(Some(_))
        ));
        assert_eq!(Verdict::from_reply_text("250 ok"), Verdict::Tempfail(None));
    }

    #[test]
    fn entries_resolve() {
        let mut milters = std::collections::BTreeMap::new();
        milters.insert(
            "rspamd".to_string(),
            MilterConfig {
                address: "127.0.0.1:11332".into(),
                timeout: Duration::from_secs(5),
                on_error: OnError::Accept,
            },
        );
        let mut execs = std::collections::BTreeMap::new();
        execs.insert(
            "rel".to_string(),
            ExecConfig {
                command: vec!["spamc".into()],
                result: ExecResult::Message,
                timeout: Duration::from_secs(5),
                on_error: OnError::Tempfail,
            },
        );
        let f = Filter::resolve("milter.rspamd", &milters, &execs).unwrap();
        assert_eq!(f.name(), "milter.rspamd");
        assert_eq!(f.on_error(), OnError::Accept);
        for bad in ["milter.none", "exec.rel", "exec.none", "rspamd", "filter.x"] {
            assert!(Filter::resolve(bad, &milters, &execs).is_err(), "{bad}");
        }
    }
}
