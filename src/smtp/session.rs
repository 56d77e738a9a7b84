//! The SMTP session over a `Conn` (RFC 5321 §4.1 and §3.3, PIPELINING RFC 2920,
//! CHUNKING RFC 3030): the session's state, the read loop, and the dispatch of
//! each line (parse, sequence check, handler). The handlers live in `op/`, one
//! file per command group. Storage is reached only through the `Backend`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info};

use super::backend::{Backend, BodySink, SessionInfo};
use super::command::{self, Command};
use super::reply::Reply;
use super::state::{self, State};
use crate::config::BareLf;
use crate::conn::{Conn, ConnError, Line};
use crate::filter::tls::Upgrade;
use crate::observer::{NoObserver, Observer};

/// Per-session settings, taken from the config when the connection is accepted.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_command_line: usize,
    pub max_text_line: usize,
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub bare_lf: BareLf,
    /// The connection is encrypted from the start (an implicit-TLS listener).
    pub tls: bool,
    /// A submission listener (RFC 6409): AUTH is offered, MAIL requires it, and
    /// the user needs the `submit` role.
    pub submission: bool,
    /// AUTH may be offered without TLS (a loopback peer, or
    /// `[smtp] allow_plaintext_auth`).
    pub plaintext_auth_allowed: bool,
    /// Failed AUTH attempts before the session is closed.
    pub auth_failures: u32,
    /// Wait before answering a failed AUTH.
    pub auth_failure_delay: Duration,
}

/// How long a connection closed with input still arriving (a refused BDAT
/// chunk) is read and drained after the last reply.
const LINGER: Duration = Duration::from_secs(2);

/// Whether the loop goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Close,
}

/// Why a body read stopped early.
pub(super) enum Stop {
    Eof,
    Timeout,
    Io(io::Error),
}

impl From<ConnError> for Stop {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Timeout => Stop::Timeout,
            ConnError::Io(e) => Stop::Io(e),
        }
    }
}

pub struct Session<S, B: Backend> {
    pub(super) conn: Conn<S>,
    pub(super) backend: Arc<B>,
    pub(super) cfg: SessionConfig,
    pub(super) info: SessionInfo,
    pub(super) state: State<B::Sink>,
    /// EHLO (true) or HELO (false): for `Received: with` (RFC 3848).
    pub(super) esmtp: bool,
    /// The AUTH identity. RSET and EHLO never clear it; STARTTLS does.
    pub(super) auth_user: Option<String>,
    /// Failed AUTH attempts (not reset by STARTTLS, so it cannot buy retries).
    pub(super) auth_failures: u32,
    /// The connection is encrypted (implicit TLS, or after STARTTLS).
    pub(super) tls: bool,
    /// How to switch to TLS when the client says STARTTLS; None: not offered.
    pub(super) starttls: Option<Arc<dyn Upgrade>>,
    /// 4xx/5xx replies so far; at `max_errors` the session ends.
    pub(super) errors: u32,
    pub(super) observer: Arc<dyn Observer>,
    /// Turns true when the daemon stops: an idle session then gets `421 4.3.2`.
    pub(super) shutdown: Option<watch::Receiver<bool>>,
    /// Closing with input left unread (a refused chunk): drain it for a while
    /// so the kernel does not reset the connection under the last replies.
    pub(super) linger: bool,
    /// The verb of the command being answered (for refusal log lines).
    pub(super) cmd: &'static str,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    pub fn new(stream: S, backend: Arc<B>, cfg: SessionConfig, info: SessionInfo) -> Self {
        let auth_user = info.auth_user.clone();
        Session {
            conn: Conn::new(stream),
            backend,
            tls: cfg.tls,
            cfg,
            info,
            state: State::Connected,
            esmtp: false,
            auth_user,
            auth_failures: 0,
            starttls: None,
            errors: 0,
            observer: Arc::new(NoObserver),
            shutdown: None,
            linger: false,
            cmd: "CONNECT",
        }
    }

    /// Report state, logins and deliveries to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// When `shutdown` turns true, a session waiting for a command answers
    /// `421 4.3.2` and closes; a transaction in progress finishes first.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Connected => "connected",
            State::Idle => "idle",
            State::Mail(_) => "mail",
        }
    }

    /// Offer STARTTLS (RFC 3207), upgrading through `upgrade`. Ignored on a
    /// connection that is already TLS.
    pub fn with_starttls(mut self, upgrade: Arc<dyn Upgrade>) -> Self {
        if !self.tls {
            self.starttls = Some(upgrade);
        }
        self
    }

    /// Run the session to its end (QUIT, EOF, timeout, error cap).
    pub async fn run(mut self) -> io::Result<()> {
        let result = self.serve().await;
        // Whatever ended the session, a half-received BDAT body is discarded.
        self.reset_transaction().await;
        debug!(
            session = self.info.id,
            bytes_in = self.conn.bytes_in,
            bytes_out = self.conn.bytes_out,
            "smtp session ended"
        );
        let closed = if self.linger {
            // Boxed: rare, and it must not grow every idle session's future.
            Box::pin(self.conn.close_lingering(LINGER)).await
        } else {
            self.conn.close().await
        };
        result.and(closed)
    }

    async fn serve(&mut self) -> io::Result<()> {
        // RFC 5321 §4.2, RFC 2034 §3: no enhanced status code on the greeting.
        let greeting = format!("{} ESMTP maildird", self.cfg.hostname);
        self.queue(&Reply::new(220, "", greeting));
        loop {
            self.observer.state(self.state_name());
            // Until a line comes, a reply (a timeout's 421) answers no command.
            self.cmd = "-";
            // A transaction in progress finishes even when the daemon stops.
            let stop = self
                .shutdown
                .clone()
                .filter(|_| !matches!(self.state, State::Mail(_)));
            let line = match self
                .conn
                .read_command(self.cfg.max_command_line, self.cfg.command_timeout, stop)
                .await
            {
                Ok(Some(line)) => Ok(line),
                Ok(None) => {
                    let text = format!("{} Service shutting down", self.cfg.hostname);
                    self.close_with(Reply::new(421, "4.3.2", text));
                    return self.conn.flush().await;
                }
                Err(e) => Err(e),
            };
            let flow = match line {
                // Boxed: the larger states of a command (DATA, AUTH, STARTTLS)
                // are allocated only while it runs, not for every idle session.
                Ok(Line::Complete(line)) => Box::pin(self.command(&line)).await?,
                // RFC 5321 §4.5.3.1.4; Conn has already read the line to its end.
                Ok(Line::TooLong) => {
                    self.cmd = "?";
                    self.reply(Reply::new(500, "5.5.2", "Line too long"))
                }
                Ok(Line::Eof) => {
                    debug!(session = self.info.id, "client closed the connection");
                    Flow::Close
                }
                Err(e) => self.stopped(e.into())?,
            };
            if flow == Flow::Close {
                return self.conn.flush().await;
            }
        }
    }

    pub(super) fn queue(&mut self, r: &Reply) {
        let mut buf = Vec::with_capacity(64);
        r.encode(&mut buf);
        self.conn.queue(&buf);
    }

    /// Queue a reply, counting errors (RFC 5321 §4.3.2 leaves the limit to us;
    /// Postfix's `smtpd_hard_error_limit` does the same). A refusal gets its
    /// one log line here.
    pub(super) fn reply(&mut self, r: Reply) -> Flow {
        if !r.is_positive() {
            self.refused(&r, None);
        }
        self.answer(r)
    }

    /// `reply` for a refusal that was already logged with more detail.
    pub(super) fn answer(&mut self, r: Reply) -> Flow {
        self.queue(&r);
        if r.is_positive() {
            return Flow::Continue;
        }
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            let text = format!("{} Too many errors", self.cfg.hostname);
            self.close_with(Reply::new(421, "4.7.0", text));
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Queue a reply that ends the session (a 421, or STARTTLS's 454), logged
    /// as a refusal like any other.
    pub(super) fn close_with(&mut self, r: Reply) {
        self.refused(&r, None);
        self.queue(&r);
    }

    /// "smtp" or "submission", as metrics label sessions.
    pub(super) fn protocol_name(&self) -> &'static str {
        if self.cfg.submission {
            "submission"
        } else {
            "smtp"
        }
    }

    /// The one log line of a refusal (the session span names the client), and
    /// its count in the metrics.
    pub(super) fn refused(&self, r: &Reply, to: Option<&str>) {
        let reason = r.reason();
        crate::metrics::get().refused(self.protocol_name(), reason);
        info!(
            code = r.code,
            status = %r.status,
            reason = %reason,
            cmd = %self.cmd,
            helo = ?self.info.helo,
            to,
            "refused"
        );
    }

    /// End of input in the middle of something: EOF closes quietly, a timeout
    /// gets a 421 (RFC 5321 §4.5.3.2), an I/O error ends the session with it.
    pub(super) fn stopped(&mut self, stop: Stop) -> io::Result<Flow> {
        match stop {
            Stop::Eof => {
                debug!(session = self.info.id, "client closed the connection");
                Ok(Flow::Close)
            }
            Stop::Timeout => {
                let text = format!("{} Error: timeout exceeded", self.cfg.hostname);
                self.close_with(Reply::new(421, "4.4.2", text));
                Ok(Flow::Close)
            }
            Stop::Io(e) => Err(e),
        }
    }

    /// Drop the mail transaction, aborting a BDAT body in progress. The session
    /// (greeting, AUTH) stays.
    pub(super) async fn reset_transaction(&mut self) {
        let next = match self.state {
            State::Connected => State::Connected,
            _ => State::Idle,
        };
        if let State::Mail(tx) = std::mem::replace(&mut self.state, next)
            && let Some(chunks) = tx.chunks
        {
            chunks.sink.abort().await;
        }
    }

    /// Parse, check, act.
    async fn command(&mut self, line: &[u8]) -> io::Result<Flow> {
        self.cmd = command::verb(line);
        let cmd = match command::parse(line) {
            Ok(cmd) => cmd,
            Err(r) => return Ok(self.reply(r)),
        };
        if let Err(r) = state::check(&self.state, &cmd) {
            // RFC 3030 §2: the chunk follows the command whatever the answer, so
            // it must be read and thrown away, never taken as commands (or, when
            // it is too large to skip, the connection closed after the reply).
            if let Command::Bdat { size, .. } = cmd {
                return self.refuse_chunk(size, r).await;
            }
            return Ok(self.reply(r));
        }
        let flow = match cmd {
            // RFC 4954 §6: a submission server wants AUTH before the transaction.
            Command::Mail { .. } if self.cfg.submission && self.auth_user.is_none() => {
                self.reply(Reply::new(530, "5.7.0", "Authentication required"))
            }
            Command::StartTls => return self.starttls().await,
            Command::Auth(args) => return self.auth(args.mechanism, args.initial_response).await,
            Command::Ehlo(domain) => self.ehlo(domain, true).await,
            Command::Helo(domain) => self.ehlo(domain, false).await,
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to).await,
            Command::Data => return self.data().await,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => self.rset().await,
            Command::Noop => self.noop(),
            Command::Quit => self.quit(),
            Command::Vrfy(_) => self.vrfy(),
            Command::Expn(_) => self.expn(),
            Command::Help => self.help(),
        };
        Ok(flow)
    }
}

#[cfg(test)]
mod tests;
