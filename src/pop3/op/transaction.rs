//! The TRANSACTION commands (RFC 1939 §5, §7): STAT, LIST, RETR, TOP, UIDL,
//! DELE, RSET, NOOP, and QUIT with its UPDATE (RFC 1939 §6).
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use crate::conn::Conn;
use crate::pop3::command::Command;
use crate::pop3::reply::{self, MultilineEncoder, RespCode};
use crate::pop3::session::{Flow, Session, refused};
use crate::pop3::state::{Marks, State};
use crate::pop3::store::{Mailbox, MessageInfo, MessageReader, Store, StoreError};

/// Replies larger than this are flushed at once instead of piling up behind
/// pipelined commands; RETR and TOP flush whenever their output passes it.
const FLUSH_AT: usize = 64 * 1024;

/// Stored bytes encoded at a time during RETR/TOP, between checks of the
/// output's size: encoding at most doubles them (LF -> CRLF, `.` -> `..`), so
/// the output never holds more than `FLUSH_AT` + 2 x `ENCODE_PIECE`, whatever
/// the chunks the store gives.
const ENCODE_PIECE: usize = 16 * 1024;

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

    /// RFC 1939 §5: the TRANSACTION commands. `Flow::Close` when a message
    /// could not be sent to its end.
    pub(in crate::pop3) async fn transaction(&mut self, cmd: Command) -> io::Result<Flow> {
        let flow = match cmd {
            Command::Retr(n) => self.retr(n).await?,
            Command::Top { msg, lines } => self.top(msg, lines).await?,
            other => {
                self.other_transaction(other);
                Flow::Continue
            }
        };
        if self.conn.out_buf().len() > FLUSH_AT {
            self.conn.flush().await?;
        }
        Ok(flow)
    }

    /// RFC 1939 §5 RETR: `+OK`, then the message streamed chunk by chunk;
    /// counted and marked seen only once sent whole.
    async fn retr(&mut self, n: usize) -> io::Result<Flow> {
        let Session {
            conn,
            state,
            cfg,
            stats,
            ..
        } = self;
        let State::Transaction { mailbox, deleted } = state else {
            return Ok(Flow::Continue);
        };
        let i = match deleted.index(n) {
            Ok(i) => i,
            Err(t) => {
                no_such_message(conn.out_buf(), t);
                return Ok(Flow::Continue);
            }
        };
        let mut msg = match mailbox.open(i).await {
            Ok(msg) => msg,
            Err(e) => {
                read_error(conn.out_buf(), e);
                return Ok(Flow::Continue);
            }
        };
        let size = mailbox.messages().get(i).map(|m| m.size).unwrap_or(0);
        reply::ok(conn.out_buf(), &format!("{size} octets"));
        if let Err(e) = send_message(conn, &mut msg, MultilineEncoder::retr()).await? {
            return Ok(torn(e, "RETR"));
        }
        drop(msg);
        stats.retrieved += 1;
        stats.retrieved_bytes += size;
        let metrics = crate::metrics::get();
        metrics.pop3_retrieved.inc();
        metrics.pop3_retrieved_bytes.inc_by(size);
        if cfg.retr_marks_seen {
            mailbox.mark_seen(i).await;
        }
        Ok(Flow::Continue)
    }

    /// RFC 1939 §7 TOP: like RETR, reading the message only as far as needed.
    async fn top(&mut self, n: usize, lines: u64) -> io::Result<Flow> {
        let Session { conn, state, .. } = self;
        let State::Transaction { mailbox, deleted } = state else {
            return Ok(Flow::Continue);
        };
        let opened = match deleted.index(n) {
            Ok(i) => mailbox.open(i).await,
            Err(t) => {
                no_such_message(conn.out_buf(), t);
                return Ok(Flow::Continue);
            }
        };
        match opened {
            Ok(mut msg) => {
                reply::ok(conn.out_buf(), "");
                if let Err(e) = send_message(conn, &mut msg, MultilineEncoder::top(lines)).await? {
                    return Ok(torn(e, "TOP"));
                }
            }
            Err(e) => read_error(conn.out_buf(), e),
        }
        Ok(Flow::Continue)
    }

    /// The TRANSACTION commands that answer from the login snapshot.
    fn other_transaction(&mut self, cmd: Command) {
        let Session { conn, state, .. } = self;
        let State::Transaction { mailbox, deleted } = state else {
            return;
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
    }
}

/// Encode `msg` into the connection's output chunk by chunk, flushing it to
/// the client whenever it passes `FLUSH_AT`: the session holds a bounded part
/// of the message (the store's chunks, at most 2 x 64 KiB, and its output),
/// and a slow client holds the reading back. The outer error is the
/// client's (the connection is lost); the inner one the store's, after the
/// `+OK` and part of the message may have gone out.
async fn send_message<S: AsyncRead + AsyncWrite + Unpin, M: MessageReader>(
    conn: &mut Conn<S>,
    msg: &mut M,
    mut enc: MultilineEncoder,
) -> io::Result<Result<(), StoreError>> {
    'read: loop {
        let chunk = match msg.next_chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        };
        for piece in chunk.chunks(ENCODE_PIECE) {
            make_room(conn.out_buf(), piece.len());
            let more = enc.feed(conn.out_buf(), piece);
            if conn.out_buf().len() >= FLUSH_AT {
                conn.flush().await?;
            }
            if !more {
                break 'read;
            }
        }
    }
    enc.finish(conn.out_buf());
    Ok(Ok(()))
}

/// Make room in `out` for the encoding of `stored` bytes (at most twice as
/// many) and the final `.` line, growing it at most to what the output holds
/// during a RETR (`FLUSH_AT` + 2 x `ENCODE_PIECE`): a `Vec` left to grow by
/// itself could double past it. A small message gets just what it needs.
fn make_room(out: &mut Vec<u8>, stored: usize) {
    let need = out.len() + 2 * stored + 8;
    if need > out.capacity() {
        let most = FLUSH_AT + 2 * ENCODE_PIECE + 8;
        let target = out.capacity().saturating_mul(2).min(most).max(need);
        out.reserve_exact(target - out.len());
    }
}

/// A message that failed after its `+OK` went out: an `-ERR` inside the
/// multi-line response would be read as message text, so the only honest end
/// is to close the connection (without UPDATE: nothing is deleted). What was
/// encoded is still sent; the client sees the response cut short.
fn torn(e: StoreError, command: &'static str) -> Flow {
    warn!(command, error = ?e, "pop3 message read failed midway, closing");
    refused("storage");
    Flow::Close
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

#[cfg(test)]
mod tests {
    use super::*;

    /// RETR's output buffer, encoding the worst case (every byte doubles)
    /// and emptied as a flush would: it never grows past
    /// `FLUSH_AT` + 2 x `ENCODE_PIECE`, and a small message gets a small one.
    #[test]
    fn output_stays_bounded_whatever_the_message() {
        let most = FLUSH_AT + 2 * ENCODE_PIECE + 8;
        let stored = vec![b'\n'; 1 << 20];
        let mut out = Vec::new();
        let mut enc = MultilineEncoder::retr();
        for piece in stored.chunks(ENCODE_PIECE) {
            make_room(&mut out, piece.len());
            enc.feed(&mut out, piece);
            assert!(out.capacity() <= most, "{}", out.capacity());
            if out.len() >= FLUSH_AT {
                out.clear();
            }
        }
        make_room(&mut out, 0);
        enc.finish(&mut out);
        assert!(out.capacity() <= most);
        let mut small = Vec::new();
        make_room(&mut small, 10 * 1024);
        assert!(small.capacity() < 32 * 1024, "{}", small.capacity());
    }
}
