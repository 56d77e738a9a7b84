//! The POP3 session over a `Conn` (RFC 1939 §3-§6): read a line, parse, check the
//! state, act through the `Store`. Replies are queued and flushed only when no
//! pipelined input is waiting (RFC 2449 §6.6 PIPELINING).
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use super::command::{self, Command, MAX_LINE, Secret};
use super::reply::{self, RespCode};
use super::state::{self, Marks, State};
use super::store::{Mailbox, MessageInfo, Store, StoreError};
use crate::conn::{Conn, ConnError, Line};

/// Per-session settings, taken from the config when the connection is accepted.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    /// USER/PASS and AUTH PLAIN are allowed on this connection (TLS, loopback, or config).
    pub plaintext_auth_allowed: bool,
    pub idle_timeout: Duration,
    pub max_errors: u32,
    pub auth_failures: u32,
    pub auth_failure_delay: Duration,
    pub retr_marks_seen: bool,
}

/// RFC 5034 §4: a SASL client response line is not bound by the 255-octet
/// command limit; this bounds it anyway.
const MAX_SASL_LINE: usize = 4096;
/// Replies larger than this are flushed at once instead of piling up behind
/// pipelined commands (a RETR of a big message).
const FLUSH_AT: usize = 64 * 1024;

const PLAINTEXT_DISALLOWED: &str = "Plaintext authentication disallowed on non-secure connection";

/// Whether the session goes on after a command.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

pub struct Session<S, St: Store> {
    conn: Conn<S>,
    store: Arc<St>,
    cfg: SessionConfig,
    state: State<St::Mailbox>,
    /// Protocol errors so far (bounded by `max_errors`).
    errors: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, St: Store> Session<S, St> {
    pub fn new(stream: S, store: Arc<St>, cfg: SessionConfig) -> Self {
        Session {
            conn: Conn::new(stream),
            store,
            cfg,
            state: State::Authorization {
                user: None,
                failures: 0,
            },
            errors: 0,
        }
    }

    /// Run the session to its end. Whatever way it ends other than QUIT in
    /// TRANSACTION, the mailbox is dropped unchanged (RFC 1939 §6).
    pub async fn run(mut self) -> io::Result<()> {
        let r = self.serve().await;
        let f = self.conn.flush().await;
        r.and(f)
    }

    async fn serve(&mut self) -> io::Result<()> {
        // RFC 1939 §4: the greeting.
        self.ok("maildird ready");
        loop {
            let line = match self.conn.read_line(MAX_LINE, self.cfg.idle_timeout).await {
                Ok(Line::Complete(l)) => l,
                Ok(Line::TooLong) => {
                    if self.protocol_error("Line too long") == Flow::Close {
                        return Ok(());
                    }
                    continue;
                }
                Ok(Line::Eof) => {
                    debug!("pop3 client closed the connection");
                    return Ok(());
                }
                // RFC 1939 §3: autologout closes without a response and without UPDATE.
                Err(ConnError::Timeout) => {
                    info!("pop3 autologout");
                    return Ok(());
                }
                Err(ConnError::Io(e)) => return Err(e),
            };
            if self.command(&line).await? == Flow::Close {
                return Ok(());
            }
        }
    }

    /// Parse, check, act.
    async fn command(&mut self, line: &[u8]) -> io::Result<Flow> {
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => return Ok(self.protocol_error(&e.to_string())),
        };
        // Only the keyword: PASS and AUTH arguments are secrets.
        debug!(command = cmd.name(), "pop3 command");
        let have_user = matches!(&self.state, State::Authorization { user: Some(_), .. });
        if let Err(text) = state::check(self.state.phase(), have_user, &cmd) {
            return Ok(self.protocol_error(text));
        }
        match cmd {
            Command::Capa => self.capa(),
            Command::Quit => return self.quit().await,
            Command::User(name) => self.user(name),
            Command::Pass(password) => return self.pass(password).await,
            Command::Auth { mechanism, initial } => return self.auth(mechanism, initial).await,
            // RFC 1939 §7: APOP needs the plaintext password stored; we keep hashes.
            Command::Apop => self.err(None, "APOP not supported"),
            // RFC 2595 §4: STLS arrives with the TLS filter.
            Command::Stls => self.err(None, "STLS not available"),
            other => self.transaction(other).await?,
        }
        Ok(Flow::Continue)
    }

    fn ok(&mut self, text: &str) {
        let mut out = Vec::new();
        reply::ok(&mut out, text);
        self.conn.queue(&out);
    }

    fn err(&mut self, code: Option<RespCode>, text: &str) {
        let mut out = Vec::new();
        reply::err(&mut out, code, text);
        self.conn.queue(&out);
    }

    /// A syntax or state error: `-ERR`, and the session goes on until `max_errors`.
    fn protocol_error(&mut self, text: &str) -> Flow {
        self.errors += 1;
        if self.errors > self.cfg.max_errors {
            warn!(errors = self.errors, "pop3 too many errors, closing");
            self.err(None, "Too many errors, closing connection");
            Flow::Close
        } else {
            self.err(None, text);
            Flow::Continue
        }
    }

    /// RFC 2449 §5 CAPA (both states).
    fn capa(&mut self) {
        let mut body = String::from("TOP\nUIDL\n");
        if self.cfg.plaintext_auth_allowed {
            body.push_str("USER\n");
        }
        body.push_str("RESP-CODES\nAUTH-RESP-CODE\nPIPELINING\n");
        if self.cfg.plaintext_auth_allowed {
            body.push_str("SASL PLAIN\n");
        }
        body.push_str("EXPIRE NEVER\nIMPLEMENTATION maildird\n");
        let mut out = Vec::new();
        reply::ok(&mut out, "Capability list follows");
        reply::multiline(&mut out, body.as_bytes());
        self.conn.queue(&out);
    }

    /// RFC 1939 §7 USER.
    fn user(&mut self, name: String) {
        if !self.cfg.plaintext_auth_allowed {
            self.err(Some(RespCode::Auth), PLAINTEXT_DISALLOWED);
            return;
        }
        if let State::Authorization { user, .. } = &mut self.state {
            *user = Some(name);
        }
        self.ok("");
    }

    /// RFC 1939 §7 PASS.
    async fn pass(&mut self, password: Secret) -> io::Result<Flow> {
        let user = match &mut self.state {
            State::Authorization { user, .. } => user.take(),
            _ => None,
        };
        match user {
            Some(u) => self.login(u, password).await,
            None => Ok(self.protocol_error("USER first")),
        }
    }

    /// RFC 5034 §4 AUTH; only PLAIN (RFC 4616) is offered.
    async fn auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<Secret>,
    ) -> io::Result<Flow> {
        let Some(mechanism) = mechanism else {
            // Pre-RFC 5034 clients send a bare AUTH to list mechanisms.
            let mut out = Vec::new();
            reply::ok(&mut out, "");
            let list: &[u8] = if self.cfg.plaintext_auth_allowed {
                b"PLAIN\n"
            } else {
                b""
            };
            reply::multiline(&mut out, list);
            self.conn.queue(&out);
            return Ok(Flow::Continue);
        };
        if mechanism != "PLAIN" {
            self.err(None, "Unsupported authentication mechanism");
            return Ok(Flow::Continue);
        }
        if !self.cfg.plaintext_auth_allowed {
            self.err(Some(RespCode::Auth), PLAINTEXT_DISALLOWED);
            return Ok(Flow::Continue);
        }
        let response = match initial {
            Some(r) => r,
            None => {
                // RFC 5034 §4: an empty server challenge.
                self.conn.queue(b"+ \r\n");
                match self
                    .conn
                    .read_line(MAX_SASL_LINE, self.cfg.idle_timeout)
                    .await
                {
                    Ok(Line::Complete(l)) => Secret(l),
                    Ok(Line::TooLong) => return Ok(self.protocol_error("Line too long")),
                    Ok(Line::Eof) | Err(ConnError::Timeout) => return Ok(Flow::Close),
                    Err(ConnError::Io(e)) => return Err(e),
                }
            }
        };
        // RFC 5034 §4: `*` cancels the exchange.
        if response.0 == b"*" {
            self.err(None, "Authentication cancelled");
            return Ok(Flow::Continue);
        }
        // TODO: switch to crate::sasl::decode_plain once it lands.
        let Some(plain) = decode_plain(&response.0) else {
            self.err(None, "Invalid SASL PLAIN response");
            return Ok(Flow::Continue);
        };
        // No proxy logins: an authorization identity must name the same user.
        if !plain.authzid.is_empty() && plain.authzid != plain.authcid {
            return self.login_failed(&plain.authcid).await;
        }
        self.login(plain.authcid, Secret(plain.password)).await
    }

    /// Check credentials and open the mailbox; enter TRANSACTION (RFC 1939 §4).
    async fn login(&mut self, user: String, password: Secret) -> io::Result<Flow> {
        match self.store.login(&user, &password.0).await {
            Ok(mailbox) => {
                let (count, size) = totals(mailbox.messages(), None);
                info!(user = ?user, messages = count, "pop3 login");
                self.state = State::Transaction {
                    deleted: Marks::new(mailbox.messages().len()),
                    mailbox,
                };
                self.ok(&format!("Logged in, {count} messages ({size} octets)"));
                Ok(Flow::Continue)
            }
            Err(StoreError::Auth) => self.login_failed(&user).await,
            Err(StoreError::InUse) => {
                info!(user = ?user, "pop3 mailbox in use");
                self.err(
                    Some(RespCode::InUse),
                    "Mailbox is locked by another POP3 session",
                );
                Ok(Flow::Continue)
            }
            Err(StoreError::Temporary | StoreError::Gone) => {
                warn!(user = ?user, "pop3 mailbox could not be opened");
                self.err(
                    Some(RespCode::SysTemp),
                    "Mailbox unavailable, try again later",
                );
                Ok(Flow::Continue)
            }
        }
    }

    /// One path for unknown users, wrong passwords and refused roles: delay, the
    /// same reply, and close after `auth_failures`.
    async fn login_failed(&mut self, user: &str) -> io::Result<Flow> {
        let failures = match &mut self.state {
            State::Authorization { failures, .. } => {
                *failures += 1;
                *failures
            }
            _ => 0,
        };
        // Debug-formatted so a hostile name cannot forge log lines.
        warn!(user = ?user, failures, "pop3 authentication failed");
        // Flush what is queued before sleeping so earlier replies are not held.
        self.conn.flush().await?;
        tokio::time::sleep(self.cfg.auth_failure_delay).await;
        self.err(Some(RespCode::Auth), "Authentication failed");
        if failures >= self.cfg.auth_failures {
            Ok(Flow::Close)
        } else {
            Ok(Flow::Continue)
        }
    }

    /// RFC 1939 §6 QUIT: from TRANSACTION, enter UPDATE and remove the marked messages.
    async fn quit(&mut self) -> io::Result<Flow> {
        match std::mem::replace(&mut self.state, State::Update) {
            State::Transaction { mailbox, deleted } => {
                let marked = deleted.marked();
                let n = marked.len();
                match mailbox.commit_deletes(marked).await {
                    Ok(()) => {
                        info!(deleted = n, "pop3 update");
                        self.ok("maildird signing off");
                    }
                    Err(_) => {
                        warn!("pop3 update failed");
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
    async fn transaction(&mut self, cmd: Command) -> io::Result<()> {
        let Session {
            conn, state, cfg, ..
        } = self;
        let State::Transaction { mailbox, deleted } = state else {
            return Ok(());
        };
        let mut out = Vec::new();
        match cmd {
            // RFC 1939 §5 STAT.
            Command::Stat => {
                let (count, size) = totals(mailbox.messages(), Some(deleted));
                reply::ok(&mut out, &format!("{count} {size}"));
            }
            // RFC 1939 §5 LIST.
            Command::List(None) => {
                let (count, size) = totals(mailbox.messages(), Some(deleted));
                reply::ok(&mut out, &format!("{count} messages ({size} octets)"));
                let mut body = String::new();
                for (i, m) in live(mailbox.messages(), deleted) {
                    body.push_str(&format!("{} {}\n", i + 1, m.size));
                }
                reply::multiline(&mut out, body.as_bytes());
            }
            Command::List(Some(n)) => match message(mailbox.messages(), deleted, n) {
                Ok(m) => reply::ok(&mut out, &format!("{n} {}", m.size)),
                Err(t) => reply::err(&mut out, None, t),
            },
            // RFC 1939 §7 UIDL.
            Command::Uidl(None) => {
                reply::ok(&mut out, "");
                let mut body = String::new();
                for (i, m) in live(mailbox.messages(), deleted) {
                    body.push_str(&format!("{} {}\n", i + 1, m.uidl));
                }
                reply::multiline(&mut out, body.as_bytes());
            }
            Command::Uidl(Some(n)) => match message(mailbox.messages(), deleted, n) {
                Ok(m) => reply::ok(&mut out, &format!("{n} {}", m.uidl)),
                Err(t) => reply::err(&mut out, None, t),
            },
            // RFC 1939 §5 RETR.
            Command::Retr(n) => match deleted.index(n) {
                Ok(i) => match mailbox.read(i).await {
                    Ok(body) => {
                        let size = mailbox.messages().get(i).map(|m| m.size).unwrap_or(0);
                        reply::ok(&mut out, &format!("{size} octets"));
                        reply::multiline(&mut out, &body);
                        if cfg.retr_marks_seen {
                            mailbox.mark_seen(i).await;
                        }
                    }
                    Err(e) => read_error(&mut out, e),
                },
                Err(t) => reply::err(&mut out, None, t),
            },
            // RFC 1939 §7 TOP.
            Command::Top { msg, lines } => match deleted.index(msg) {
                Ok(i) => match mailbox.read(i).await {
                    Ok(body) => {
                        reply::ok(&mut out, "");
                        reply::multiline(&mut out, reply::top(&body, lines));
                    }
                    Err(e) => read_error(&mut out, e),
                },
                Err(t) => reply::err(&mut out, None, t),
            },
            // RFC 1939 §5 DELE: only marks.
            Command::Dele(n) => match deleted.mark(n) {
                Ok(()) => reply::ok(&mut out, &format!("Message {n} deleted")),
                Err(t) => reply::err(&mut out, None, t),
            },
            // RFC 1939 §5 NOOP.
            Command::Noop => reply::ok(&mut out, ""),
            // RFC 1939 §5 RSET.
            Command::Rset => {
                deleted.clear();
                let (count, size) = totals(mailbox.messages(), Some(deleted));
                reply::ok(&mut out, &format!("{count} messages ({size} octets)"));
            }
            // `state::check` let through only TRANSACTION commands.
            _ => reply::err(&mut out, None, "Command not allowed now"),
        }
        conn.queue(&out);
        if out.len() > FLUSH_AT {
            conn.flush().await?;
        }
        Ok(())
    }
}

/// The wire text of a failed read: generic (logs carry the details).
fn read_error(out: &mut Vec<u8>, e: StoreError) {
    match e {
        StoreError::Gone => reply::err(out, None, "Message no longer exists"),
        _ => reply::err(out, Some(RespCode::SysTemp), "Cannot read message"),
    }
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
fn totals(msgs: &[MessageInfo], deleted: Option<&Marks>) -> (usize, u64) {
    msgs.iter()
        .enumerate()
        .filter(|(i, _)| !deleted.is_some_and(|d| d.is_deleted(*i)))
        .fold((0, 0), |(c, s), (_, m)| (c + 1, s + m.size))
}

fn message<'a>(
    msgs: &'a [MessageInfo],
    deleted: &Marks,
    n: usize,
) -> Result<&'a MessageInfo, &'static str> {
    let i = deleted.index(n)?;
    msgs.get(i).ok_or("No such message")
}

/// RFC 4616 PLAIN: `authzid NUL authcid NUL passwd`, base64 encoded.
struct Plain {
    authzid: String,
    authcid: String,
    password: Vec<u8>,
}

fn decode_plain(b64: &[u8]) -> Option<Plain> {
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let mut parts = raw.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let authcid = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let password = parts.next()?.to_vec();
    if parts.next().is_some() || authcid.is_empty() || password.is_empty() {
        return None;
    }
    Some(Plain {
        authzid,
        authcid,
        password,
    })
}
