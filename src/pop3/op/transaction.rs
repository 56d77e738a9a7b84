//! The TRANSACTION commands (RFC 1939 §5, §7): STAT, LIST, RETR, TOP, UIDL,
//! DELE, RSET, NOOP, and QUIT with its UPDATE (RFC 1939 §6).
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use crate::pop3::command::Command;
use crate::pop3::reply::{self, RespCode};
use crate::pop3::session::{Flow, Session, refused};
use crate::pop3::state::{Marks, State};
use crate::pop3::store::{Mailbox, MessageInfo, Store, StoreError};

/// Replies larger than this are flushed at once instead of piling up behind
/// pipelined commands (a RETR of a big message).
const FLUSH_AT: usize = 64 * 1024;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, St: Store> Session<S, St> {
    /// RFC 1939 §6 QUIT: from TRANSACTION, enter UPDATE and remove the marked messages.
    pub(in crate::pop3) async fn quit(&mut self) -> io::Result<Flow> {
        match std::mem::replace(&mut self.state, State::Update) {
            State::Transaction { mailbox, deleted } => {
                let marked = deleted.marked();
                let n = marked.len();
                match mailbox.commit_deletes(marked).await {
                    Ok(()) => {
                        self.stats.deleted = n;
                        crate::metrics::get().pop3_deleted.inc_by(n as u64);
                        self.ok("maildird signing off");
                    }
                    Err(_) => {
                        warn!(reason = "storage", "pop3 update failed");
                        refused("storage");
                        self.err(
                            Some(RespCode::SysTemp),
                            "Some deleted messages were not removed",
                        );
                    }
                }
            }
            _ => self.ok("maildird signing off"),
        }
        Ok(Flow::Close)
    }

    /// RFC 1939 §5: the TRANSACTION commands.
    pub(in crate::pop3) async fn transaction(&mut self, cmd: Command) -> io::Result<()> {
        let Session {
            conn,
            state,
            cfg,
            stats,
            ..
        } = self;
        let State::Transaction { mailbox, deleted } = state else {
            return Ok(());
        };
        // Replies are encoded straight into the connection's output buffer.
        let out = conn.out_buf();
        match cmd {
            // RFC 1939 §5 STAT.
            Command::Stat => {
                let (count, size) = totals(mailbox.messages(), Some(deleted));
                reply::ok(out, &format!("{count} {size}"));
            }
            // RFC 1939 §5 LIST.
            Command::List(None) => {
                let (count, size) = totals(mailbox.messages(), Some(deleted));
                reply::ok(out, &format!("{count} messages ({size} octets)"));
                let mut body = String::new();
                for (i, m) in live(mailbox.messages(), deleted) {
                    body.push_str(&format!("{} {}\n", i + 1, m.size));
                }
                reply::multiline(out, body.as_bytes());
            }
            Command::List(Some(n)) => match message(mailbox.messages(), deleted, n) {
                Ok(m) => reply::ok(out, &format!("{n} {}", m.size)),
                Err(t) => no_such_message(out, t),
            },
            // RFC 1939 §7 UIDL.
            Command::Uidl(None) => {
                reply::ok(out, "");
                let mut body = String::new();
                for (i, m) in live(mailbox.messages(), deleted) {
                    body.push_str(&format!("{} {}\n", i + 1, m.uidl));
                }
                reply::multiline(out, body.as_bytes());
            }
            Command::Uidl(Some(n)) => match message(mailbox.messages(), deleted, n) {
                Ok(m) => reply::ok(out, &format!("{n} {}", m.uidl)),
                Err(t) => no_such_message(out, t),
            },
            // RFC 1939 §5 RETR.
            Command::Retr(n) => match deleted.index(n) {
                Ok(i) => match mailbox.read(i).await {
                    Ok(body) => {
                        let size = mailbox.messages().get(i).map(|m| m.size).unwrap_or(0);
                        reply::ok(out, &format!("{size} octets"));
                        reply::multiline(out, &body);
                        stats.retrieved += 1;
                        stats.retrieved_bytes += size;
                        let metrics = crate::metrics::get();
                        metrics.pop3_retrieved.inc();
                        metrics.pop3_retrieved_bytes.inc_by(size);
                        if cfg.retr_marks_seen {
                            mailbox.mark_seen(i).await;
                        }
                    }
                    Err(e) => read_error(out, e),
                },
                Err(t) => no_such_message(out, t),
            },
            // RFC 1939 §7 TOP.
            Command::Top { msg, lines } => match deleted.index(msg) {
                Ok(i) => match mailbox.read(i).await {
                    Ok(body) => {
                        reply::ok(out, "");
                        reply::multiline(out, reply::top(&body, lines));
                    }
                    Err(e) => read_error(out, e),
                },
                Err(t) => no_such_message(out, t),
            },
            // RFC 1939 §5 DELE: only marks.
            Command::Dele(n) => match deleted.mark(n) {
                Ok(()) => reply::ok(out, &format!("Message {n} deleted")),
                Err(t) => no_such_message(out, t),
            },
            // RFC 1939 §5 NOOP.
            Command::Noop => reply::ok(out, ""),
            // RFC 1939 §5 RSET.
            Command::Rset => {
                deleted.clear();
                let (count, size) = totals(mailbox.messages(), Some(deleted));
                reply::ok(out, &format!("{count} messages ({size} octets)"));
            }
            // `state::check` let through only TRANSACTION commands.
            _ => {
                refused("sequence");
                reply::err(out, None, "Command not allowed now")
            }
        }
        if conn.out_buf().len() > FLUSH_AT {
            conn.flush().await?;
        }
        Ok(())
    }
}

/// The wire text of a failed read: generic (logs carry the details).
fn read_error(out: &mut Vec<u8>, e: StoreError) {
    match e {
        StoreError::Gone => no_such_message(out, "Message no longer exists"),
        _ => {
            refused("storage");
            reply::err(out, Some(RespCode::SysTemp), "Cannot read message")
        }
    }
}

/// A message number that names no message (or one gone meanwhile).
fn no_such_message(out: &mut Vec<u8>, text: &str) {
    refused("no_such_message");
    reply::err(out, None, text);
}

/// Messages not marked deleted, with their snapshot index.
fn live<'a>(
    msgs: &'a [MessageInfo],
    deleted: &'a Marks,
) -> impl Iterator<Item = (usize, &'a MessageInfo)> + 'a {
    msgs.iter()
        .enumerate()
        .filter(move |(i, _)| !deleted.is_deleted(*i))
}

/// Count and total size, leaving out deleted messages (RFC 1939 §5 STAT).
pub(super) fn totals(msgs: &[MessageInfo], deleted: Option<&Marks>) -> (usize, u64) {
    msgs.iter()
        .enumerate()
        .filter(|(i, _)| !deleted.is_some_and(|d| d.is_deleted(*i)))
        // Sizes may come from `W=` in names the owner chose: never overflow.
        .fold((0, 0), |(c, s), (_, m)| (c + 1, s.saturating_add(m.size)))
}

/// Message `n` (1-based), unless it is marked deleted or does not exist.
fn message<'a>(
    msgs: &'a [MessageInfo],
    deleted: &Marks,
    n: usize,
) -> Result<&'a MessageInfo, &'static str> {
    let i = deleted.index(n)?;
    msgs.get(i).ok_or("No such message")
}
