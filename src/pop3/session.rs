//! The POP3 session over a `Conn` (RFC 1939 §3-§6): the session struct, the read
//! loop and dispatch (parse, check the state, call the handler in `op/`). Replies
//! are queued and flushed only when no pipelined input is waiting (RFC 2449 §6.6
//! PIPELINING).
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::command::{self, Command, MAX_LINE};
use super::reply::{self, RespCode};
use super::state::{self, State};
use super::store::Store;
use crate::conn::{Conn, ConnError, Line};
use crate::filter::tls::Upgrade;
use crate::observer::{NoObserver, Observer};

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
    /// The client's IP (behind PROXY: the real one), for the login back-off.
    pub client: Option<std::net::IpAddr>,
}

/// Whether the session goes on after a command.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Close,
}

pub struct Session<S, St: Store> {
    pub(super) conn: Conn<S>,
    pub(super) store: Arc<St>,
    pub(super) cfg: SessionConfig,
    pub(super) state: State<St::Mailbox>,
    /// Protocol errors so far (bounded by `max_errors`).
    errors: u32,
    /// STLS (RFC 2595 §4) is offered through this until the connection is TLS.
    pub(super) starttls: Option<Arc<dyn Upgrade>>,
    pub(super) observer: Arc<dyn Observer>,
    /// Turns true when the daemon stops: a session waiting for a command is told
    /// and closed without UPDATE (nothing is deleted).
    shutdown: Option<watch::Receiver<bool>>,
    /// What the session did, for its closing log line.
    pub(super) stats: Stats,
}

/// A logged-in session's work, logged once when it ends: on drop, so a
/// session ended from outside (kicked, the daemon stopping) has its line too.
#[derive(Debug)]
pub(super) struct Stats {
    pub(super) user: Option<String>,
    pub(super) retrieved: u64,
    pub(super) retrieved_bytes: u64,
    pub(super) deleted: usize,
    started: Instant,
}

impl Drop for Stats {
    fn drop(&mut self) {
        if let Some(user) = &self.user {
            info!(
                user = ?crate::logging::LogName(user),
                retrieved = self.retrieved,
                retrieved_bytes = self.retrieved_bytes,
                deleted = self.deleted,
                duration = format_args!("{:.3}", self.started.elapsed().as_secs_f64()),
                "pop3 session"
            );
        }
    }
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
            starttls: None,
            observer: Arc::new(NoObserver),
            shutdown: None,
            stats: Stats {
                user: None,
                retrieved: 0,
                retrieved_bytes: 0,
                deleted: 0,
                started: Instant::now(),
            },
        }
    }

    /// Offer STLS, upgrading through `upgrade` (a connection that is already
    /// TLS should not be given one).
    pub fn with_starttls(mut self, upgrade: Arc<dyn Upgrade>) -> Self {
        self.starttls = Some(upgrade);
        self
    }

    /// Report state and logins to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Stop waiting for commands when `shutdown` turns true.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// Run the session to its end. Whatever way it ends other than QUIT in
    /// TRANSACTION, the mailbox is dropped unchanged (RFC 1939 §6).
    pub async fn run(mut self) -> io::Result<()> {
        let r = self.serve().await;
        r.and(self.conn.close().await)
    }

    async fn serve(&mut self) -> io::Result<()> {
        // RFC 1939 §4: the greeting.
        self.ok("maildird ready");
        loop {
            self.observer.state(match self.state {
                State::Authorization { .. } => "authorization",
                State::Transaction { .. } => "transaction",
                State::Update => "update",
            });
            let line = match self
                .conn
                .read_command(MAX_LINE, self.cfg.idle_timeout, self.shutdown.clone())
                .await
            {
                Ok(Some(line)) => Ok(line),
                Ok(None) => {
                    refused("shutdown");
                    self.err(
                        Some(RespCode::SysTemp),
                        "Server shutting down, try again later",
                    );
                    return self.conn.flush().await;
                }
                Err(e) => Err(e),
            };
            let line = match line {
                Ok(Line::Complete(l)) => l,
                Ok(Line::TooLong) => {
                    if self.protocol_error("line too long") == Flow::Close {
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
            // Boxed: RETR, login and STLS states are allocated only while
            // they run, not for every idle session.
            if Box::pin(self.command(&line)).await? == Flow::Close {
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
            Command::Apop => self.apop(),
            Command::Stls => return self.stls().await,
            other => return self.transaction(other).await,
        }
        Ok(Flow::Continue)
    }

    /// Queue `+OK text`.
    pub(super) fn ok(&mut self, text: &str) {
        let mut out = Vec::new();
        reply::ok(&mut out, text);
        self.conn.queue(&out);
    }

    /// Queue `-ERR [code] text`.
    pub(super) fn err(&mut self, code: Option<RespCode>, text: &str) {
        let mut out = Vec::new();
        reply::err(&mut out, code, text);
        self.conn.queue(&out);
    }

    /// A syntax or state error: `-ERR`, and the session goes on until `max_errors`.
    pub(super) fn protocol_error(&mut self, text: &str) -> Flow {
        self.errors += 1;
        if self.errors > self.cfg.max_errors {
            warn!(
                errors = self.errors,
                reason = "limits",
                "pop3 too many errors, closing"
            );
            refused("limits");
            self.err(None, "Too many errors, closing connection");
            Flow::Close
        } else {
            refused("syntax");
            self.err(None, text);
            Flow::Continue
        }
    }
}

/// Count a POP3 refusal in the metrics.
pub(super) fn refused(reason: &'static str) {
    crate::metrics::get().refused("pop3", reason);
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
