//! The SMTP session over a `Conn` (RFC 5321 §4.1 and §3.3, PIPELINING RFC 2920,
//! CHUNKING RFC 3030): read a line, parse, check, act. Storage is reached only
//! through the `Backend`; message bodies are streamed to its sink in batches.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info};

use super::backend::{Backend, BodySink, Envelope, SessionInfo};
use super::command::{self, Command, MailParams};
use super::data::{BdatDecoder, DotDecoder};
use super::reply::Reply;
use super::state::{self, Chunks, State, Transaction};
use crate::config::BareLf;
use crate::conn::{Conn, ConnError, Line, NoObserver, Observer};
use crate::filter::tls::Upgrade;
use crate::sasl::{self, SaslError};

/// Body bytes are handed to the sink in batches of about this size, so a message
/// is never held whole in memory.
const BATCH: usize = 64 * 1024;

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

/// RFC 4954 §4: a client response line may be up to 12288 octets.
const MAX_AUTH_LINE: usize = 12288;

/// Whether the loop goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// Why a body read stopped early.
enum Stop {
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
    conn: Conn<S>,
    backend: Arc<B>,
    cfg: SessionConfig,
    info: SessionInfo,
    state: State<B::Sink>,
    /// EHLO (true) or HELO (false): for `Received: with` (RFC 3848).
    esmtp: bool,
    /// The AUTH identity. RSET and EHLO never clear it; STARTTLS does.
    auth_user: Option<String>,
    /// Failed AUTH attempts (not reset by STARTTLS, so it cannot buy retries).
    auth_failures: u32,
    /// The connection is encrypted (implicit TLS, or after STARTTLS).
    tls: bool,
    /// How to switch to TLS when the client says STARTTLS; None: not offered.
    starttls: Option<Arc<dyn Upgrade>>,
    /// 4xx/5xx replies so far; at `max_errors` the session ends.
    errors: u32,
    observer: Arc<dyn Observer>,
    /// Turns true when the daemon stops: an idle session then gets `421 4.3.2`.
    shutdown: Option<watch::Receiver<bool>>,
    /// Closing with input left unread (a refused chunk): drain it for a while
    /// so the kernel does not reset the connection under the last replies.
    linger: bool,
}

/// How an AUTH exchange ended before the password check.
enum Exchange {
    Credentials(String, sasl::Password),
    /// A reply has been decided (cancel, bad base64...).
    Refused(Reply),
    /// The connection ended or timed out during the exchange.
    Stopped(Stop),
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
                    self.queue(&Reply::new(421, "4.3.2", text));
                    return self.conn.flush().await;
                }
                Err(e) => Err(e),
            };
            let flow = match line {
                // Boxed: the larger states of a command (DATA, AUTH, STARTTLS)
                // are allocated only while it runs, not for every idle session.
                Ok(Line::Complete(line)) => Box::pin(self.command(&line)).await?,
                // RFC 5321 §4.5.3.1.4; Conn has already read the line to its end.
                Ok(Line::TooLong) => self.reply(Reply::new(500, "5.5.2", "Line too long")),
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

    fn queue(&mut self, r: &Reply) {
        let mut buf = Vec::with_capacity(64);
        r.encode(&mut buf);
        self.conn.queue(&buf);
    }

    /// Queue a reply, counting errors (RFC 5321 §4.3.2 leaves the limit to us;
    /// Postfix's `smtpd_hard_error_limit` does the same).
    fn reply(&mut self, r: Reply) -> Flow {
        self.queue(&r);
        if r.is_positive() {
            return Flow::Continue;
        }
        self.errors += 1;
        if self.errors >= self.cfg.max_errors {
            info!(
                session = self.info.id,
                errors = self.errors,
                "too many errors"
            );
            let text = format!("{} Too many errors", self.cfg.hostname);
            self.queue(&Reply::new(421, "4.7.0", text));
            return Flow::Close;
        }
        Flow::Continue
    }

    /// End of input in the middle of something: EOF closes quietly, a timeout
    /// gets a 421 (RFC 5321 §4.5.3.2), an I/O error ends the session with it.
    fn stopped(&mut self, stop: Stop) -> io::Result<Flow> {
        match stop {
            Stop::Eof => {
                debug!(session = self.info.id, "client closed the connection");
                Ok(Flow::Close)
            }
            Stop::Timeout => {
                info!(session = self.info.id, "timeout");
                let text = format!("{} Error: timeout exceeded", self.cfg.hostname);
                self.queue(&Reply::new(421, "4.4.2", text));
                Ok(Flow::Close)
            }
            Stop::Io(e) => Err(e),
        }
    }

    /// Drop the mail transaction, aborting a BDAT body in progress. The session
    /// (greeting, AUTH) stays.
    async fn reset_transaction(&mut self) {
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
            // RFC 5321 §4.1.1.5
            Command::Rset => {
                self.reset_transaction().await;
                self.reply(Reply::new(250, "2.0.0", "Ok"))
            }
            // RFC 5321 §4.1.1.9
            Command::Noop => self.reply(Reply::new(250, "2.0.0", "Ok")),
            // RFC 5321 §4.1.1.10
            Command::Quit => {
                self.queue(&Reply::new(221, "2.0.0", "Bye"));
                Flow::Close
            }
            // RFC 5321 §3.5.3: 252 when we will not say, but will accept.
            Command::Vrfy(_) => self.reply(Reply::new(
                252,
                "2.5.0",
                "Cannot VRFY user, but will accept message",
            )),
            // RFC 5321 §3.5.2: EXPN may be refused; lists are nobody's business.
            Command::Expn(_) => self.reply(Reply::new(502, "5.5.1", "EXPN not available")),
            // RFC 5321 §4.1.1.8
            Command::Help => self.reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
            )),
        };
        Ok(flow)
    }

    /// RFC 5321 §4.1.1.1: EHLO/HELO (also mid-session) resets the transaction.
    async fn ehlo(&mut self, domain: String, esmtp: bool) -> Flow {
        self.reset_transaction().await;
        self.state = State::Idle;
        self.esmtp = esmtp;
        self.info.helo = domain;
        let host = self.cfg.hostname.clone();
        // RFC 2034 §3: no enhanced status code on the EHLO/HELO reply.
        let reply = if esmtp {
            let mut lines = vec![
                host,
                "PIPELINING".into(),
                format!("SIZE {}", self.cfg.max_message_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SMTPUTF8".into(),
                "CHUNKING".into(),
            ];
            // What this connection can do now: STARTTLS until it is TLS, AUTH
            // once it may be used without exposing the password.
            if self.starttls.is_some() && !self.tls {
                lines.push("STARTTLS".into());
            }
            if self.auth_offered() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            Reply {
                code: 250,
                status: "",
                lines,
            }
        } else {
            Reply::new(250, "", host)
        };
        self.reply(reply)
    }

    /// RFC 5321 §4.1.1.2, with SIZE (RFC 1870 §6), BODY (RFC 6152), SMTPUTF8.
    fn mail(&mut self, from: String, params: MailParams) -> Flow {
        if params.size.is_some_and(|n| n > self.cfg.max_message_size) {
            return self.reply(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        let env = Envelope {
            mail_from: from,
            rcpts: Vec::new(),
            body_8bit: params.body_8bit,
            smtputf8: params.smtputf8,
            declared_size: params.size,
        };
        self.state = State::Mail(Transaction::new(env));
        self.reply(Reply::new(250, "2.1.0", "Ok"))
    }

    /// RFC 5321 §4.1.1.3.
    async fn rcpt(&mut self, to: String) -> Flow {
        let State::Mail(tx) = &mut self.state else {
            return self.reply(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        // RFC 6531 §3.4: a Unicode address needs SMTPUTF8 on MAIL.
        let refusal = if !to.is_ascii() && !tx.env.smtputf8 {
            Some(Reply::new(
                553,
                "5.6.7",
                "Must declare SMTPUTF8 to send Unicode addresses",
            ))
        } else if tx.env.rcpts.len() >= self.cfg.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 lets the client send the rest later.
            Some(Reply::new(452, "4.5.3", "Too many recipients"))
        } else {
            match self.backend.resolve_recipient(&to).await {
                Ok(mailbox) => {
                    let entry = (to, mailbox);
                    // The same recipient twice gets one copy.
                    if !tx.env.rcpts.contains(&entry) {
                        tx.env.rcpts.push(entry);
                    }
                    None
                }
                Err(r) => {
                    info!(session = self.info.id, rcpt = %to, code = r.code, "recipient refused");
                    Some(r)
                }
            }
        };
        match refusal {
            Some(r) => {
                tx.refused += 1;
                self.reply(r)
            }
            None => self.reply(Reply::new(250, "2.1.5", "Ok")),
        }
    }

    /// Fill in what the backend's `Received:` needs (RFC 3848, RFC 6531 §3.7.4).
    fn describe_session(&mut self, env: &Envelope) {
        let base = match (env.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        // RFC 3848 §2 (ESMTPS, ESMTPA, ESMTPSA), RFC 6531 §3.7.4 (UTF8SMTPSA).
        let mut proto = base.to_string();
        if base != "SMTP" {
            if self.tls {
                proto.push('S');
            }
            if self.auth_user.is_some() {
                proto.push('A');
            }
        }
        self.info.with_protocol = proto;
        self.info.auth_user = self.auth_user.clone();
    }

    /// RFC 5321 §4.1.1.4 and §4.5.2: the body up to `CRLF.CRLF`, streamed to the
    /// sink. Whatever goes wrong, the body is read to its end so that its lines
    /// are never taken as commands.
    async fn data(&mut self) -> io::Result<Flow> {
        self.observer.state("data");
        let State::Mail(tx) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(self.reply(Reply::new(503, "5.5.1", "Error: need MAIL command")));
        };
        let env = tx.env;
        self.queue(&Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        self.describe_session(&env);
        let (mut sink, mut failure) = match self.backend.begin(&self.info, &env).await {
            Ok(sink) => (Some(sink), None),
            Err(r) => (None, Some(r)),
        };
        let mut decoder = DotDecoder::new(self.cfg.bare_lf, self.cfg.max_text_line);
        let mut out = Vec::with_capacity(BATCH + 16 * 1024);
        let mut size: u64 = 0;
        loop {
            let feed = match self.fill(self.cfg.data_timeout).await {
                Ok(buf) => {
                    let before = out.len();
                    let feed = decoder.feed(buf, &mut out);
                    size += crlf_size(out.get(before..).unwrap_or_default());
                    feed
                }
                Err(stop) => {
                    abort(sink).await;
                    return self.stopped(stop);
                }
            };
            self.conn.consume(feed.consumed);
            if failure.is_none() && size > self.cfg.max_message_size {
                failure = Some(too_big());
                abort(sink.take()).await;
            }
            if failure.is_none()
                && (out.len() >= BATCH || feed.done)
                && let Err(r) = write(&mut sink, &out).await
            {
                failure = Some(r);
                abort(sink.take()).await;
            }
            // Written, or to be thrown away after a failure.
            if failure.is_some() || out.len() >= BATCH || feed.done {
                out.clear();
            }
            if feed.done {
                break;
            }
        }
        let result = match (failure, decoder.finish(), sink) {
            (Some(r), _, sink) | (None, Err(r), sink) => {
                abort(sink).await;
                Err(r)
            }
            (None, Ok(()), Some(sink)) => sink.commit().await,
            (None, Ok(()), None) => Err(Reply::new(451, "4.3.0", "Error: internal error")),
        };
        Ok(self.delivered(&env, size, result))
    }

    /// RFC 3030 §2: `BDAT size [LAST]`, exactly `size` octets follow.
    async fn bdat(&mut self, size: u64, last: bool) -> io::Result<Flow> {
        self.observer.state("data");
        let State::Mail(mut tx) = std::mem::replace(&mut self.state, State::Idle) else {
            return Ok(self.reply(Reply::new(503, "5.5.1", "Error: need MAIL command")));
        };
        let mut chunks = match tx.chunks.take() {
            Some(chunks) => chunks,
            None => {
                self.describe_session(&tx.env);
                match self.backend.begin(&self.info, &tx.env).await {
                    Ok(sink) => Chunks {
                        sink,
                        decoder: BdatDecoder::new(self.cfg.max_text_line),
                        size: 0,
                    },
                    Err(r) => return self.refuse_chunk(size, r).await,
                }
            }
        };
        // The chunk size counts CRLF as two octets, like SIZE (RFC 1870), so the
        // limit can be enforced before reading.
        let total = chunks.size.saturating_add(size);
        if total > self.cfg.max_message_size {
            chunks.sink.abort().await;
            info!(session = self.info.id, size = total, "message too big");
            return self.refuse_chunk(size, too_big()).await;
        }
        let mut out = Vec::with_capacity(BATCH + 16 * 1024);
        let mut remaining = size;
        while remaining > 0 {
            let n = match self.fill(self.cfg.data_timeout).await {
                Ok(buf) => {
                    let n = buf
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    chunks
                        .decoder
                        .feed(buf.get(..n).unwrap_or_default(), &mut out);
                    n
                }
                Err(stop) => {
                    chunks.sink.abort().await;
                    return self.stopped(stop);
                }
            };
            self.conn.consume(n);
            remaining -= n as u64;
            if out.len() >= BATCH {
                if let Err(r) = put(&mut chunks.sink, &out).await {
                    chunks.sink.abort().await;
                    return self.refuse_chunk(remaining, r).await;
                }
                out.clear();
            }
        }
        chunks.size = total;
        if !last {
            if let Err(r) = put(&mut chunks.sink, &out).await {
                chunks.sink.abort().await;
                return Ok(self.reply(r));
            }
            tx.chunks = Some(chunks);
            self.state = State::Mail(tx);
            let text = format!("{size} octets received");
            return Ok(self.reply(Reply::new(250, "2.0.0", text)));
        }
        let result = match chunks.decoder.finish(&mut out) {
            Ok(()) => match put(&mut chunks.sink, &out).await {
                Ok(()) => chunks.sink.commit().await,
                Err(r) => {
                    chunks.sink.abort().await;
                    Err(r)
                }
            },
            Err(r) => {
                chunks.sink.abort().await;
                Err(r)
            }
        };
        Ok(self.delivered(&tx.env, total, result))
    }

    /// A chunk that will not be stored: read it away, answer, and (RFC 3030 §2)
    /// leave the transaction failed (the state is already back to Idle, or was
    /// never past it when the sequence check refused the BDAT).
    async fn refuse_chunk(&mut self, remaining: u64, r: Reply) -> io::Result<Flow> {
        // A chunk larger than any message we accept is not worth reading just to
        // skip it (`BDAT 99999999999999`), and until it is skipped nothing the
        // client sends can be told from chunk data: answer, then say we close
        // (RFC 5321 §3.8: a server closes only after a 421) and close.
        if remaining > self.cfg.max_message_size {
            info!(
                session = self.info.id,
                size = remaining,
                code = r.code,
                "BDAT chunk too large to skip; closing"
            );
            self.queue(&r);
            let text = format!(
                "{} Error: BDAT chunk too large to skip; closing",
                self.cfg.hostname
            );
            self.queue(&Reply::new(421, "4.7.0", text));
            // The client may have pipelined chunk data we will not read.
            self.linger = true;
            return Ok(Flow::Close);
        }
        if let Err(stop) = self.discard(remaining).await {
            return self.stopped(stop);
        }
        Ok(self.reply(r))
    }

    /// Log the outcome of a transaction (never content) and answer it.
    fn delivered(&mut self, env: &Envelope, size: u64, result: Result<(), Reply>) -> Flow {
        match result {
            Ok(()) => {
                info!(
                    session = self.info.id,
                    from = %env.mail_from,
                    rcpts = env.rcpts.len(),
                    size,
                    result = "delivered",
                    "message accepted"
                );
                self.observer.delivered(env.rcpts.len(), size);
                self.reply(Reply::new(250, "2.0.0", "Ok: delivered"))
            }
            Err(r) => {
                info!(
                    session = self.info.id,
                    from = %env.mail_from,
                    rcpts = env.rcpts.len(),
                    size,
                    result = r.code,
                    "message refused"
                );
                self.reply(r)
            }
        }
    }

    /// AUTH is offered on submission listeners over TLS, or in plaintext where
    /// the config allows it (loopback, `[smtp] allow_plaintext_auth`).
    fn auth_offered(&self) -> bool {
        self.cfg.submission && (self.tls || self.cfg.plaintext_auth_allowed)
    }

    /// RFC 3207 §4: STARTTLS. Refused when pipelined input follows the command
    /// (CVE-2011-0411: those bytes were sent in plaintext and must never run as
    /// if they came over TLS); after the handshake the session starts over.
    async fn starttls(&mut self) -> io::Result<Flow> {
        let Some(upgrade) = self.starttls.clone().filter(|_| !self.tls) else {
            return Ok(if self.tls {
                self.reply(Reply::new(503, "5.5.1", "Error: TLS already active"))
            } else {
                self.reply(Reply::new(502, "5.5.1", "Error: command not implemented"))
            });
        };
        if self.conn.buffered_input() != 0 {
            info!(
                session = self.info.id,
                pipelined = self.conn.buffered_input(),
                "STARTTLS refused: plaintext pipelined after it; closing"
            );
            // The pipelined bytes are dropped with the connection, never executed.
            self.queue(&Reply::new(
                454,
                "4.7.0",
                "TLS not available: commands pipelined after STARTTLS",
            ));
            return Ok(Flow::Close);
        }
        self.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.conn.flush().await?;
        if let Err(e) = upgrade.upgrade().await {
            // Nothing can be said: the client expects TLS and there is none.
            info!(session = self.info.id, error = %e, "TLS handshake failed");
            return Err(e);
        }
        debug!(session = self.info.id, "TLS started");
        // RFC 3207 §4.2: discard all knowledge obtained from the client; it must
        // send EHLO again. AUTH goes too.
        self.reset_transaction().await;
        self.state = State::Connected;
        self.esmtp = false;
        self.info.helo.clear();
        self.auth_user = None;
        self.tls = true;
        self.starttls = None;
        Ok(Flow::Continue)
    }

    /// RFC 4954 §4: AUTH PLAIN (RFC 4616) and LOGIN. Credentials are never logged.
    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> io::Result<Flow> {
        if !self.cfg.submission {
            return Ok(self.reply(Reply::new(502, "5.5.1", "Error: command not implemented")));
        }
        if !self.auth_offered() {
            // RFC 4954 §6.
            return Ok(self.reply(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            )));
        }
        if self.auth_user.is_some() {
            return Ok(self.reply(Reply::new(503, "5.5.1", "Error: already authenticated")));
        }
        let exchange = match mechanism.as_str() {
            "PLAIN" => self.auth_plain(initial).await,
            "LOGIN" => self.auth_login(initial).await,
            _ => Exchange::Refused(Reply::new(504, "5.5.4", "Unrecognized authentication type")),
        };
        let (user, password) = match exchange {
            Exchange::Credentials(u, p) => (u, p),
            Exchange::Refused(r) => return Ok(self.reply(r)),
            Exchange::Stopped(stop) => return self.stopped(stop),
        };
        let outcome = self
            .backend
            .login(&user, password.expose(), self.info.peer.map(|p| p.ip()))
            .await;
        drop(password);
        match outcome {
            Some(a) if a.may_submit || !self.cfg.submission => {
                info!(session = self.info.id, user = ?a.user, mechanism = %mechanism, "smtp login");
                self.observer.auth(&a.user, &mechanism, true);
                self.auth_user = Some(a.user);
                Ok(self.reply(Reply::new(235, "2.7.0", "Authentication successful")))
            }
            Some(a) => {
                info!(session = self.info.id, user = ?a.user, "smtp login refused: no submit role");
                self.auth_failed(&user).await
            }
            None => self.auth_failed(&user).await,
        }
    }

    /// Every failure looks the same on the wire: a delay, `535 5.7.8`, and the
    /// connection closed after `auth_failures`.
    async fn auth_failed(&mut self, user: &str) -> io::Result<Flow> {
        self.auth_failures += 1;
        self.observer.auth(user, "", false);
        // Debug-formatted so a hostile name cannot forge log lines.
        tracing::warn!(
            session = self.info.id,
            peer = ?self.info.peer,
            user = ?crate::logging::LogName(user),
            failures = self.auth_failures,
            "smtp authentication failed"
        );
        self.conn.flush().await?;
        tokio::time::sleep(self.cfg.auth_failure_delay).await;
        let flow = self.reply(Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid",
        ));
        if flow == Flow::Continue && self.auth_failures >= self.cfg.auth_failures {
            let text = format!("{} Too many authentication failures", self.cfg.hostname);
            self.queue(&Reply::new(421, "4.7.0", text));
            return Ok(Flow::Close);
        }
        Ok(flow)
    }

    /// RFC 4616 via RFC 4954 §4: the initial response, or an empty `334` challenge.
    async fn auth_plain(&mut self, initial: Option<String>) -> Exchange {
        let response = match initial {
            Some(r) => r,
            None => match self.challenge("").await {
                Ok(r) => r,
                Err(e) => return e,
            },
        };
        match sasl::decode_plain(&response) {
            Ok(p) => Exchange::Credentials(p.authcid.clone(), p.password.clone()),
            // No proxy logins: treated as a failed login, like a wrong password.
            Err(SaslError::AuthzidMismatch) => {
                Exchange::Credentials(String::new(), sasl::Password::new(Vec::new()))
            }
            Err(e) => Exchange::Refused(sasl_refusal(e)),
        }
    }

    /// The LOGIN mechanism: `334 Username:` and `334 Password:` (base64), the
    /// user name possibly given as the initial response.
    async fn auth_login(&mut self, initial: Option<String>) -> Exchange {
        let user_b64 = match initial {
            Some(r) => r,
            None => match self.challenge("VXNlcm5hbWU6").await {
                Ok(r) => r,
                Err(e) => return e,
            },
        };
        let user = match sasl::decode_login_step(&user_b64) {
            Ok(u) => u,
            Err(e) => return Exchange::Refused(sasl_refusal(e)),
        };
        let pass_b64 = match self.challenge("UGFzc3dvcmQ6").await {
            Ok(r) => r,
            Err(e) => return e,
        };
        match sasl::decode_login_password(&pass_b64) {
            Ok(p) => Exchange::Credentials(user, p),
            Err(e) => Exchange::Refused(sasl_refusal(e)),
        }
    }

    /// Send a `334` challenge and read the client's response line.
    async fn challenge(&mut self, b64: &str) -> Result<String, Exchange> {
        self.conn.queue(format!("334 {b64}\r\n").as_bytes());
        match self
            .conn
            .read_line(MAX_AUTH_LINE, self.cfg.command_timeout)
            .await
        {
            Ok(Line::Complete(l)) => match String::from_utf8(l) {
                Ok(s) => Ok(s),
                Err(_) => Err(Exchange::Refused(sasl_refusal(SaslError::Base64))),
            },
            Ok(Line::TooLong) => Err(Exchange::Refused(Reply::new(
                500,
                "5.5.6",
                "Authentication Exchange line is too long",
            ))),
            Ok(Line::Eof) => Err(Exchange::Stopped(Stop::Eof)),
            Err(e) => Err(Exchange::Stopped(e.into())),
        }
    }

    /// Buffered input, waiting up to `timeout`; EOF is an error here.
    async fn fill(&mut self, timeout: Duration) -> Result<&[u8], Stop> {
        let buf = self.conn.fill(timeout).await?;
        if buf.is_empty() {
            return Err(Stop::Eof);
        }
        Ok(buf)
    }

    /// Read and drop exactly `n` octets (a refused BDAT chunk).
    async fn discard(&mut self, mut n: u64) -> Result<(), Stop> {
        while n > 0 {
            let len = self.fill(self.cfg.data_timeout).await?.len();
            let take = len.min(usize::try_from(n).unwrap_or(usize::MAX));
            self.conn.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

/// RFC 4954 §4: `*` cancels (501 5.0.0); undecodable responses get 501 5.5.2.
fn sasl_refusal(e: SaslError) -> Reply {
    match e {
        SaslError::Cancelled => Reply::new(501, "5.0.0", "Authentication cancelled"),
        _ => Reply::new(501, "5.5.2", "Cannot decode response"),
    }
}

fn too_big() -> Reply {
    Reply::new(552, "5.3.4", "Message too big")
}

/// Size on the wire of LF-terminated text: every LF was a CRLF (RFC 1870).
fn crlf_size(lf_text: &[u8]) -> u64 {
    let lfs = lf_text.iter().filter(|&&b| b == b'\n').count();
    (lf_text.len() + lfs) as u64
}

/// Hand bytes to the sink; empty batches are not worth a call.
async fn put<K: BodySink>(sink: &mut K, bytes: &[u8]) -> Result<(), Reply> {
    if bytes.is_empty() {
        return Ok(());
    }
    sink.write(bytes).await
}

async fn write<K: BodySink>(sink: &mut Option<K>, bytes: &[u8]) -> Result<(), Reply> {
    match sink {
        Some(sink) => put(sink, bytes).await,
        None => Ok(()),
    }
}

async fn abort<K: BodySink>(sink: Option<K>) {
    if let Some(sink) = sink {
        sink.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadBuf};
    use tokio::task::JoinHandle;

    /// What the fake backend saw.
    #[derive(Debug, Default)]
    struct Log {
        /// (helo, with_protocol, envelope) per `begin`.
        begins: Vec<(String, String, Envelope)>,
        /// (envelope, body) per commit.
        delivered: Vec<(Envelope, Vec<u8>)>,
        /// Sizes of every `write` call.
        writes: Vec<usize>,
        aborted: usize,
    }

    #[derive(Default)]
    struct Fake {
        log: Arc<Mutex<Log>>,
    }

    struct FakeSink {
        log: Arc<Mutex<Log>>,
        env: Envelope,
        body: Vec<u8>,
    }

    impl Backend for Fake {
        type Sink = FakeSink;

        fn login(
            &self,
            user: &str,
            password: &[u8],
            _client: Option<std::net::IpAddr>,
        ) -> impl Future<Output = Option<crate::smtp::Authenticated>> + Send {
            let ok = password == b"pw" && matches!(user, "alice" | "nosubmit");
            std::future::ready(ok.then(|| crate::smtp::Authenticated {
                user: user.to_string(),
                may_submit: user == "alice",
            }))
        }

        fn resolve_recipient(
            &self,
            address: &str,
        ) -> impl Future<Output = Result<String, Reply>> + Send {
            let local = address.split('@').next().unwrap_or("").to_lowercase();
            let r = if local.starts_with("unknown") {
                Err(Reply::new(
                    550,
                    "5.1.1",
                    "Recipient address rejected: User unknown",
                ))
            } else {
                Ok(local)
            };
            std::future::ready(r)
        }

        fn begin(
            &self,
            info: &SessionInfo,
            env: &Envelope,
        ) -> impl Future<Output = Result<FakeSink, Reply>> + Send {
            self.log.lock().unwrap().begins.push((
                info.helo.clone(),
                info.with_protocol.clone(),
                env.clone(),
            ));
            let r = if env.mail_from == "fail@x.test" {
                Err(Reply::new(451, "4.3.0", "Temporary failure"))
            } else {
                Ok(FakeSink {
                    log: self.log.clone(),
                    env: env.clone(),
                    body: Vec::new(),
                })
            };
            std::future::ready(r)
        }
    }

    impl BodySink for FakeSink {
        fn write(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), Reply>> + Send {
            self.log.lock().unwrap().writes.push(bytes.len());
            self.body.extend_from_slice(bytes);
            std::future::ready(Ok(()))
        }

        fn commit(self) -> impl Future<Output = Result<(), Reply>> + Send {
            self.log
                .lock()
                .unwrap()
                .delivered
                .push((self.env, self.body));
            std::future::ready(Ok(()))
        }

        fn abort(self) -> impl Future<Output = ()> + Send {
            self.log.lock().unwrap().aborted += 1;
            std::future::ready(())
        }
    }

    fn config() -> SessionConfig {
        SessionConfig {
            hostname: "mx.test".into(),
            max_message_size: 10_000,
            max_recipients: 100,
            max_command_line: 512,
            max_text_line: 1000,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            bare_lf: BareLf::Normalize,
            tls: false,
            submission: false,
            plaintext_auth_allowed: false,
            auth_failures: 3,
            auth_failure_delay: Duration::from_secs(2),
        }
    }

    struct Client {
        io: DuplexStream,
        log: Arc<Mutex<Log>>,
        session: JoinHandle<io::Result<()>>,
    }

    fn start(cfg: SessionConfig) -> Client {
        let (io, server) = tokio::io::duplex(1 << 20);
        start_on(server, io, cfg, None)
    }

    fn test_info() -> SessionInfo {
        SessionInfo {
            id: 1,
            peer: None,
            helo: String::new(),
            with_protocol: String::new(),
            auth_user: None,
        }
    }

    fn start_on<S>(
        server: S,
        io: DuplexStream,
        cfg: SessionConfig,
        upgrade: Option<Arc<dyn Upgrade>>,
    ) -> Client
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let fake = Fake::default();
        let log = fake.log.clone();
        // tokio::spawn also proves the session future is Send.
        let mut session = Session::new(server, Arc::new(fake), cfg, test_info());
        if let Some(u) = upgrade {
            session = session.with_starttls(u);
        }
        let session = tokio::spawn(session.run());
        Client { io, log, session }
    }

    /// An idle connection costs its task: the session's future stays small
    /// because every command's state is boxed only while the command runs
    /// (the idle-memory goal is under 8 KiB per connection, all included).
    #[test]
    fn idle_session_future_is_small() {
        let (_io, server) = tokio::io::duplex(64);
        let session = Session::new(server, Arc::new(Fake::default()), config(), test_info());
        let run = session.run();
        let size = std::mem::size_of_val(&run);
        // The session itself is part of it (measured: 1960 bytes).
        assert!(size <= 2048, "smtp session future is {size} bytes");
    }

    const GREETING: &str = "220 mx.test ESMTP maildird\r\n";
    const EHLO_REPLY: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
        250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
    const OK: &str = "250 2.0.0 Ok\r\n";
    const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
    const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
    const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
    const DELIVERED: &str = "250 2.0.0 Ok: delivered\r\n";
    const BYE: &str = "221 2.0.0 Bye\r\n";

    impl Client {
        async fn send(&mut self, bytes: &str) {
            self.io.write_all(bytes.as_bytes()).await.unwrap();
        }

        /// Read exactly the expected bytes and compare.
        async fn expect(&mut self, want: &str) {
            let mut got = vec![0; want.len()];
            self.io.read_exact(&mut got).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&got), want);
        }

        async fn say(&mut self, line: &str, want: &str) {
            self.send(line).await;
            self.expect(want).await;
        }

        /// The session closes the connection and ends without error.
        async fn expect_close(mut self) -> Arc<Mutex<Log>> {
            let mut rest = Vec::new();
            self.io.read_to_end(&mut rest).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&rest), "");
            self.session.await.unwrap().unwrap();
            self.log
        }

        async fn quit(mut self) -> Arc<Mutex<Log>> {
            self.say("QUIT\r\n", BYE).await;
            self.expect_close().await
        }

        async fn ehlo(&mut self) {
            self.expect(GREETING).await;
            self.say("EHLO client.test\r\n", EHLO_REPLY).await;
        }
    }

    #[tokio::test]
    async fn greeting_ehlo_helo_and_quit() {
        let mut c = start(config());
        c.ehlo().await;
        c.say("HELO other.test\r\n", "250 mx.test\r\n").await;
        c.say("NOOP\r\n", OK).await;
        c.say(
            "VRFY alice\r\n",
            "252 2.5.0 Cannot VRFY user, but will accept message\r\n",
        )
        .await;
        c.say("EXPN staff\r\n", "502 5.5.1 EXPN not available\r\n")
            .await;
        c.say(
            "HELP\r\n",
            "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n",
        )
        .await;
        c.say(
            "STARTTLS\r\n",
            "502 5.5.1 Error: command not implemented\r\n",
        )
        .await;
        c.say(
            "AUTH PLAIN AGEAYg==\r\n",
            "502 5.5.1 Error: command not implemented\r\n",
        )
        .await;
        c.quit().await;
    }

    /// Records every write the session makes to the stream.
    struct Recorder {
        inner: DuplexStream,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = r {
                self.writes.lock().unwrap().push(buf[..n].to_vec());
            }
            r
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    // RFC 2920 §3.2: the replies to a pipelined group go out in one write.
    #[tokio::test]
    async fn pipelined_group_is_answered_in_order_with_one_write() {
        let (io, server) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(Mutex::new(Vec::new()));
        let server = Recorder {
            inner: server,
            writes: writes.clone(),
        };
        let mut c = start_on(server, io, config(), None);
        c.ehlo().await;
        writes.lock().unwrap().clear();
        c.send("MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nRCPT TO:<unknown@d>\r\nRCPT TO:<b@d>\r\nDATA\r\n")
            .await;
        let group = format!(
            "{MAIL_OK}{RCPT_OK}550 5.1.1 Recipient address rejected: User unknown\r\n{RCPT_OK}{GO_AHEAD}"
        );
        c.expect(&group).await;
        assert_eq!(*writes.lock().unwrap(), vec![group.into_bytes()]);
        c.say("Hi\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        let (env, body) = &log.delivered[0];
        assert_eq!(env.mail_from, "s@x.test");
        assert_eq!(
            env.rcpts,
            vec![("a@d".into(), "a".into()), ("b@d".into(), "b".into())]
        );
        assert_eq!(body, b"Hi\n");
    }

    #[tokio::test]
    async fn ehlo_and_rset_reset_the_transaction() {
        let mut c = start(config());
        c.ehlo().await;
        c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
        c.say("RCPT TO:<a@d>\r\n", RCPT_OK).await;
        c.say("EHLO again.test\r\n", EHLO_REPLY).await;
        c.say(
            "RCPT TO:<a@d>\r\n",
            "503 5.5.1 Error: need MAIL command\r\n",
        )
        .await;
        c.say("DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n")
            .await;
        c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
        c.say("RCPT TO:<a@d>\r\n", RCPT_OK).await;
        c.say("RSET\r\n", OK).await;
        c.say("DATA\r\n", "503 5.5.1 Error: need MAIL command\r\n")
            .await;
        // The session survives: a new transaction works and HELO data is kept.
        c.say("MAIL FROM:<>\r\n", MAIL_OK).await;
        c.say(
            "MAIL FROM:<>\r\n",
            "503 5.5.1 Error: nested MAIL command\r\n",
        )
        .await;
        c.say("RCPT TO:<b@d>\r\n", RCPT_OK).await;
        c.say("DATA\r\n", GO_AHEAD).await;
        c.say("x\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.delivered.len(), 1);
        assert_eq!(log.delivered[0].0.mail_from, "");
        assert_eq!(log.delivered[0].0.rcpts, vec![("b@d".into(), "b".into())]);
        assert_eq!(log.begins[0].0, "again.test");
        assert_eq!(log.begins[0].1, "ESMTP");
    }

    #[tokio::test]
    async fn commands_before_helo_are_refused() {
        let mut c = start(config());
        c.expect(GREETING).await;
        c.say(
            "MAIL FROM:<s@x.test>\r\n",
            "503 5.5.1 Error: send HELO/EHLO first\r\n",
        )
        .await;
        c.say("RSET\r\n", OK).await;
        c.say("HELO c.test\r\n", "250 mx.test\r\n").await;
        c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
        c.say("RCPT TO:<a@d>\r\n", RCPT_OK).await;
        c.say("DATA\r\n", GO_AHEAD).await;
        c.say(".\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(
            (log.begins[0].0.as_str(), log.begins[0].1.as_str()),
            ("c.test", "SMTP")
        );
        assert_eq!(log.delivered[0].1, b"");
    }

    #[tokio::test]
    async fn recipient_cap() {
        let mut c = start(SessionConfig {
            max_errors: 1000,
            ..config()
        });
        c.ehlo().await;
        let mut cmds = String::from("MAIL FROM:<s@x.test>\r\n");
        let mut want = String::from(MAIL_OK);
        for i in 0..100 {
            cmds.push_str(&format!("RCPT TO:<u{i}@d>\r\n"));
            want.push_str(RCPT_OK);
        }
        cmds.push_str("RCPT TO:<one-too-many@d>\r\nDATA\r\n");
        want.push_str("452 4.5.3 Too many recipients\r\n");
        want.push_str(GO_AHEAD);
        c.say(&cmds, &want).await;
        c.say("x\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.delivered[0].0.rcpts.len(), 100);
        assert_eq!(log.delivered[0].0.rcpts[99].1, "u99");
    }

    #[tokio::test]
    async fn postmaster_unknown_users_and_no_valid_recipients() {
        let mut c = start(config());
        c.ehlo().await;
        c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
        c.say(
            "RCPT TO:<unknown1@d>\r\n",
            "550 5.1.1 Recipient address rejected: User unknown\r\n",
        )
        .await;
        c.say("DATA\r\n", "554 5.5.1 Error: no valid recipients\r\n")
            .await;
        c.say(
            "BDAT 3 LAST\r\nabc",
            "554 5.5.1 Error: no valid recipients\r\n",
        )
        .await;
        c.say("RCPT TO:<Postmaster>\r\n", RCPT_OK).await;
        // Same recipient twice: one copy.
        c.say("RCPT TO:<Postmaster>\r\n", RCPT_OK).await;
        c.say(
            "RCPT TO:<jörg@d>\r\n",
            "553 5.6.7 Must declare SMTPUTF8 to send Unicode addresses\r\n",
        )
        .await;
        c.say("DATA\r\n", GO_AHEAD).await;
        c.say("x\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(
            log.delivered[0].0.rcpts,
            vec![("Postmaster".into(), "postmaster".into())]
        );
    }

    #[tokio::test]
    async fn smtputf8_transaction() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<jörg@x.test> SMTPUTF8 BODY=8BITMIME SIZE=20\r\n",
            MAIL_OK,
        )
        .await;
        c.say("RCPT TO:<zoë@d>\r\n", RCPT_OK).await;
        c.say("DATA\r\n", GO_AHEAD).await;
        c.say("x\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        let (_, proto, env) = &log.begins[0];
        assert_eq!(proto, "UTF8SMTP");
        assert!(env.smtputf8 && env.body_8bit);
        assert_eq!(env.declared_size, Some(20));
        assert_eq!(env.rcpts, vec![("zoë@d".into(), "zoë".into())]);
    }

    #[tokio::test]
    async fn bad_lines_get_replies() {
        let mut c = start(config());
        c.ehlo().await;
        let long = format!("NOOP {}\r\n", "x".repeat(600));
        c.say(&long, "500 5.5.2 Line too long\r\n").await;
        c.say("FROB\r\n", "500 5.5.2 Error: command not recognized\r\n")
            .await;
        c.say(
            "NO\0OP\r\n",
            "500 5.5.2 Error: invalid character in command\r\n",
        )
        .await;
        c.say(
            "MAIL FROM:<a@b> X=1\r\n",
            "555 5.5.4 Unsupported or malformed MAIL FROM parameter\r\n",
        )
        .await;
        c.say("NOOP\r\n", OK).await;
        c.quit().await;
    }

    #[tokio::test]
    async fn error_cap_closes_the_session() {
        let mut c = start(SessionConfig {
            max_errors: 3,
            ..config()
        });
        c.ehlo().await;
        c.say("FROB\r\n", "500 5.5.2 Error: command not recognized\r\n")
            .await;
        c.say(
            "RCPT TO:<a@d>\r\n",
            "503 5.5.1 Error: need MAIL command\r\n",
        )
        .await;
        c.say(
            "FROB\r\nNOOP\r\n",
            "500 5.5.2 Error: command not recognized\r\n421 4.7.0 mx.test Too many errors\r\n",
        )
        .await;
        c.expect_close().await;
    }

    #[tokio::test]
    async fn oversize_declared_and_streamed() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test> SIZE=10001\r\n",
            "552 5.3.4 Message size exceeds fixed maximum message size\r\n",
        )
        .await;
        c.say("MAIL FROM:<s@x.test> SIZE=10000\r\n", MAIL_OK).await;
        c.say("RCPT TO:<a@d>\r\n", RCPT_OK).await;
        c.say("DATA\r\n", GO_AHEAD).await;
        // 200 lines of 100 octets: 20000 > 10000. The body is read to its end and
        // the next command is answered.
        let line = format!("{}\r\n", "y".repeat(98));
        c.send(&line.repeat(200)).await;
        c.say(
            ".\r\nNOOP\r\n",
            &format!("552 5.3.4 Message too big\r\n{OK}"),
        )
        .await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert!(log.delivered.is_empty());
        assert_eq!(log.aborted, 1);
    }

    #[tokio::test]
    async fn exactly_the_limit_is_accepted() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        // 100 lines of 100 octets (CRLF counted): exactly 10000.
        let line = format!("{}\r\n", "y".repeat(98));
        c.say(&format!("{}.\r\n", line.repeat(100)), DELIVERED)
            .await;
        let log = c.quit().await;
        assert_eq!(log.lock().unwrap().delivered[0].1.len(), 9900);
    }

    #[tokio::test]
    async fn large_message_is_streamed_in_batches() {
        let mut c = start(SessionConfig {
            max_message_size: 1 << 20,
            ..config()
        });
        c.expect(GREETING).await;
        c.say("HELO c\r\n", "250 mx.test\r\n").await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        let line = format!("{}\r\n", "z".repeat(510));
        c.say(&format!("{}.\r\n", line.repeat(1000)), DELIVERED)
            .await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.delivered[0].1.len(), 511_000);
        assert!(log.writes.len() >= 7, "{:?}", log.writes);
        assert!(
            log.writes.iter().all(|&n| n < BATCH + 16 * 1024),
            "{:?}",
            log.writes
        );
    }

    #[tokio::test(start_paused = true)]
    async fn command_timeout() {
        let mut c = start(config());
        c.ehlo().await;
        c.expect("421 4.4.2 mx.test Error: timeout exceeded\r\n")
            .await;
        c.expect_close().await;
    }

    #[tokio::test(start_paused = true)]
    async fn data_timeout_aborts_the_message() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.send("half a message\r\n").await;
        c.expect("421 4.4.2 mx.test Error: timeout exceeded\r\n")
            .await;
        let log = c.expect_close().await;
        let log = log.lock().unwrap();
        assert!(log.delivered.is_empty());
        assert_eq!(log.aborted, 1);
    }

    #[tokio::test]
    async fn eof_during_data_aborts() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.send("partial\r\n").await;
        c.io.shutdown().await.unwrap();
        let log = c.expect_close().await;
        let log = log.lock().unwrap();
        assert!(log.delivered.is_empty());
        assert_eq!(log.aborted, 1);
    }

    #[tokio::test]
    async fn dot_stuffing_and_smuggling_make_one_message() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say(
            "..first\r\nhi\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<b@d>\r\nDATA\r\nsmuggled\r\n.\r\n",
            DELIVERED,
        )
        .await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.delivered.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&log.delivered[0].1),
            ".first\nhi\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<b@d>\nDATA\nsmuggled\n"
        );
    }

    #[tokio::test]
    async fn bare_lf_reject_and_long_lines() {
        let mut c = start(SessionConfig {
            bare_lf: BareLf::Reject,
            ..config()
        });
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say(
            "a\nb\r\n.\r\n",
            "554 5.6.0 Message contains bare LF line endings\r\n",
        )
        .await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say(
            &format!("{}\r\n.\r\n", "l".repeat(999)),
            "552 5.6.0 Message has lines too long\r\n",
        )
        .await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert!(log.delivered.is_empty());
        assert_eq!(log.aborted, 2);
    }

    #[tokio::test]
    async fn begin_failure_discards_the_body() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<fail@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say(
            "QUIT\r\n.\r\nNOOP\r\n",
            &format!("451 4.3.0 Temporary failure\r\n{OK}"),
        )
        .await;
        c.say(
            "MAIL FROM:<fail@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.say("BDAT 6\r\nQUIT\r\n", "451 4.3.0 Temporary failure\r\n")
            .await;
        // RFC 3030 §2: the failed transaction is over; pipelined chunks get 503.
        c.say(
            "BDAT 6 LAST\r\nQUIT\r\n",
            "503 5.5.1 Error: need MAIL command\r\n",
        )
        .await;
        let log = c.quit().await;
        assert!(log.lock().unwrap().delivered.is_empty());
    }

    // RFC 3030
    #[tokio::test]
    async fn bdat_chunks() {
        let mut c = start(config());
        c.ehlo().await;
        // A refused chunk is still read: its "QUIT" is data, not a command.
        c.say(
            "BDAT 6\r\nQUIT\r\n",
            "503 5.5.1 Error: need MAIL command\r\n",
        )
        .await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.say("BDAT 5\r\nab\r\nc", "250 2.0.0 5 octets received\r\n")
            .await;
        c.say("RCPT TO:<b@d>\r\n", "503 5.5.1 Error: RCPT after BDAT\r\n")
            .await;
        c.say("DATA\r\n", "503 5.5.1 Error: DATA after BDAT\r\n")
            .await;
        c.say("BDAT 0\r\n", "250 2.0.0 0 octets received\r\n").await;
        // CR at the end of one chunk, LF at the start of the next.
        c.say("BDAT 4\r\n\r\n.\r", "250 2.0.0 4 octets received\r\n")
            .await;
        c.say("BDAT 2 LAST\r\n\nxNOOP\r\n", &format!("{DELIVERED}{OK}"))
            .await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.say("BDAT 0 LAST\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.delivered.len(), 2);
        assert_eq!(String::from_utf8_lossy(&log.delivered[0].1), "ab\nc\n.\nx");
        assert_eq!(log.delivered[1].1, b"");
        assert!(!log.writes.contains(&0), "{:?}", log.writes);
        assert_eq!(log.begins[0].1, "ESMTP");
    }

    #[tokio::test]
    async fn bdat_oversize_and_rset() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.say("BDAT 4\r\nabcd", "250 2.0.0 4 octets received\r\n")
            .await;
        let big = "b".repeat(9_997);
        c.say(
            &format!("BDAT 9997\r\n{big}NOOP\r\n"),
            &format!("552 5.3.4 Message too big\r\n{OK}"),
        )
        .await;
        c.say("BDAT 1 LAST\r\nx", "503 5.5.1 Error: need MAIL command\r\n")
            .await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.say("BDAT 4\r\nabcd", "250 2.0.0 4 octets received\r\n")
            .await;
        c.say("RSET\r\n", OK).await;
        c.say("BDAT 1 LAST\r\nx", "503 5.5.1 Error: need MAIL command\r\n")
            .await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.say("BDAT 4\r\nabcd", "250 2.0.0 4 octets received\r\n")
            .await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert!(log.delivered.is_empty());
        // Oversize, RSET, and QUIT in the middle of the third transaction.
        assert_eq!(log.aborted, 3);
    }

    const TOO_LARGE: &str = "421 4.7.0 mx.test Error: BDAT chunk too large to skip; closing\r\n";

    /// RFC 3030 §2: a refused chunk is still read away, whatever refused it;
    /// one larger than any message (max_message_size is 10000 here) cannot be,
    /// so it gets its refusal, a 421, and the connection is closed.
    #[tokio::test]
    async fn refused_bdat_chunks_are_skipped_or_the_session_closed() {
        // (state before, BDAT line and what follows, replies, still open)
        let need_mail = "503 5.5.1 Error: need MAIL command\r\n";
        let cases: &[(&str, String, String, bool)] = &[
            (
                "",
                "BDAT 4 LAST\r\nNOOPNOOP\r\n".into(),
                format!("503 5.5.1 Error: send HELO/EHLO first\r\n{OK}"),
                true,
            ),
            (
                "EHLO",
                "BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n".into(),
                format!("{need_mail}{OK}"),
                true,
            ),
            // Exactly the largest message: read away.
            (
                "EHLO",
                format!("BDAT 10000\r\n{}NOOP\r\n", "Q".repeat(10_000)),
                format!("{need_mail}{OK}"),
                true,
            ),
            (
                "EHLO",
                "BDAT 10001 LAST\r\n".into(),
                format!("{need_mail}{TOO_LARGE}"),
                false,
            ),
            (
                "EHLO",
                "BDAT 99999999999999 LAST\r\n".into(),
                format!("{need_mail}{TOO_LARGE}"),
                false,
            ),
            // Pipelined chunk data we will not read does not hide the replies.
            (
                "EHLO",
                format!("BDAT 99999999999999 LAST\r\n{}", "x".repeat(50_000)),
                format!("{need_mail}{TOO_LARGE}"),
                false,
            ),
            (
                "MAIL",
                "BDAT 99999999999999 LAST\r\n".into(),
                format!("552 5.3.4 Message too big\r\n{TOO_LARGE}"),
                false,
            ),
            // MAIL without RCPT: refused by the sequence check, still read away.
            (
                "MAIL-NO-RCPT",
                "BDAT 3\r\nabcNOOP\r\n".into(),
                format!("503 5.5.1 Error: need RCPT command\r\n{OK}"),
                true,
            ),
        ];
        for (before, bdat, want, open) in cases {
            let mut c = start(config());
            match *before {
                "" => c.expect(GREETING).await,
                "EHLO" => c.ehlo().await,
                "MAIL" => {
                    c.ehlo().await;
                    c.say(
                        "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
                        &format!("{MAIL_OK}{RCPT_OK}"),
                    )
                    .await;
                }
                _ => {
                    c.ehlo().await;
                    c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
                }
            }
            c.say(bdat, want).await;
            let log = if *open {
                c.quit().await
            } else {
                // Nothing more: the session closes without waiting for us.
                let mut rest = Vec::new();
                c.io.read_to_end(&mut rest).await.unwrap();
                assert_eq!(String::from_utf8_lossy(&rest), "", "{bdat:.40}");
                c.io.shutdown().await.unwrap();
                c.session.await.unwrap().unwrap();
                c.log
            };
            let log = log.lock().unwrap();
            assert!(log.delivered.is_empty(), "{bdat:.40}");
            assert_eq!(log.aborted, usize::from(*before == "MAIL"), "{bdat:.40}");
        }
    }

    #[tokio::test]
    async fn eof_during_bdat_aborts() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\n",
            &format!("{MAIL_OK}{RCPT_OK}"),
        )
        .await;
        c.send("BDAT 100\r\nshort").await;
        c.io.shutdown().await.unwrap();
        let log = c.expect_close().await;
        assert_eq!(log.lock().unwrap().aborted, 1);
    }

    #[tokio::test]
    async fn commands_pipelined_after_the_end_of_data_are_answered() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say("body\r\n.\r\nQUIT\r\n", &format!("{DELIVERED}{BYE}"))
            .await;
        let log = c.expect_close().await;
        assert_eq!(log.lock().unwrap().delivered[0].1, b"body\n");
    }

    #[tokio::test]
    async fn eof_between_commands_ends_quietly() {
        let mut c = start(config());
        c.ehlo().await;
        c.io.shutdown().await.unwrap();
        c.expect_close().await;
    }

    /// Pretends to run a handshake: the stream stays plaintext, so tests can
    /// check what the session does before and after.
    #[derive(Default)]
    struct FakeUpgrade {
        count: Mutex<u32>,
    }

    impl Upgrade for FakeUpgrade {
        fn upgrade(&self) -> crate::filter::BoxFuture<'_, io::Result<()>> {
            *self.count.lock().unwrap() += 1;
            Box::pin(std::future::ready(Ok(())))
        }
    }

    const EHLO_STARTTLS: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
        250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 STARTTLS\r\n";
    const EHLO_AUTH: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
        250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n";
    const READY: &str = "220 2.0.0 Ready to start TLS\r\n";
    const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
    const AUTH_BAD: &str = "535 5.7.8 Authentication credentials invalid\r\n";
    const AUTH_NEEDED: &str = "530 5.7.0 Authentication required\r\n";
    /// base64("\0alice\0pw")
    const ALICE_PLAIN: &str = "AGFsaWNlAHB3";

    fn submission() -> SessionConfig {
        SessionConfig {
            submission: true,
            ..config()
        }
    }

    fn start_tls(cfg: SessionConfig) -> (Client, Arc<FakeUpgrade>) {
        let up = Arc::new(FakeUpgrade::default());
        let (io, server) = tokio::io::duplex(1 << 20);
        (start_on(server, io, cfg, Some(up.clone())), up)
    }

    #[tokio::test]
    async fn starttls_resets_the_session() {
        let (mut c, up) = start_tls(config());
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_STARTTLS).await;
        c.say("MAIL FROM:<s@x.test>\r\n", MAIL_OK).await;
        // RFC 3207 §4: not in the middle of a transaction.
        c.say(
            "STARTTLS\r\n",
            "503 5.5.1 Error: MAIL transaction in progress\r\n",
        )
        .await;
        c.say("RSET\r\n", OK).await;
        c.say("STARTTLS\r\n", READY).await;
        assert_eq!(*up.count.lock().unwrap(), 1);
        // Everything is forgotten: EHLO again, and STARTTLS is no longer offered.
        c.say(
            "MAIL FROM:<s@x.test>\r\n",
            "503 5.5.1 Error: send HELO/EHLO first\r\n",
        )
        .await;
        c.say("EHLO client.test\r\n", EHLO_REPLY).await;
        c.say("STARTTLS\r\n", "503 5.5.1 Error: TLS already active\r\n")
            .await;
        c.say(
            "MAIL FROM:<s@x.test>\r\nRCPT TO:<a@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say("hi\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        let log = log.lock().unwrap();
        assert_eq!(log.begins[0].1, "ESMTPS");
        assert_eq!(*up.count.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn starttls_with_pipelined_plaintext_is_refused() {
        let (mut c, up) = start_tls(config());
        c.expect(GREETING).await;
        // CVE-2011-0411: RSET rides in the same packet as STARTTLS.
        c.send("EHLO client.test\r\nSTARTTLS\r\nRSET\r\n").await;
        c.expect(EHLO_STARTTLS).await;
        c.expect("454 4.7.0 TLS not available: commands pipelined after STARTTLS\r\n")
            .await;
        // The RSET is never answered: the connection closes.
        c.expect_close().await;
        assert_eq!(*up.count.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn starttls_not_offered() {
        let mut c = start(config());
        c.ehlo().await;
        c.say(
            "STARTTLS\r\n",
            "502 5.5.1 Error: command not implemented\r\n",
        )
        .await;
        c.quit().await;
    }

    #[tokio::test(start_paused = true)]
    async fn auth_plain_and_login_on_a_tls_submission_connection() {
        let cfg = SessionConfig {
            tls: true,
            ..submission()
        };
        let mut c = start(cfg.clone());
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say("MAIL FROM:<alice@example.org>\r\n", AUTH_NEEDED)
            .await;
        c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
            .await;
        c.say(
            "AUTH PLAIN\r\n",
            "503 5.5.1 Error: already authenticated\r\n",
        )
        .await;
        // AUTH survives RSET and a new EHLO.
        c.say("RSET\r\n", OK).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say(
            "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@d>\r\nDATA\r\n",
            &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}"),
        )
        .await;
        c.say("hi\r\n.\r\n", DELIVERED).await;
        let log = c.quit().await;
        assert_eq!(log.lock().unwrap().begins[0].1, "ESMTPSA");

        // LOGIN, with challenges; PLAIN with an empty challenge.
        let mut c = start(cfg);
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n").await;
        c.say("YWxpY2U=\r\n", "334 UGFzc3dvcmQ6\r\n").await;
        c.say("cHc=\r\n", AUTH_OK).await;
        c.quit().await;
        let mut c = start(submission_tls());
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say("AUTH PLAIN\r\n", "334 \r\n").await;
        c.say(&format!("{ALICE_PLAIN}\r\n"), AUTH_OK).await;
        c.quit().await;
        // LOGIN with the user name as initial response.
        let mut c = start(submission_tls());
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say("AUTH LOGIN YWxpY2U=\r\n", "334 UGFzc3dvcmQ6\r\n")
            .await;
        c.say("cHc=\r\n", AUTH_OK).await;
        c.quit().await;
    }

    fn submission_tls() -> SessionConfig {
        SessionConfig {
            tls: true,
            ..submission()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn auth_failures_cancel_and_bad_input() {
        let mut c = start(SessionConfig {
            auth_failures: 2,
            ..submission_tls()
        });
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say("AUTH PLAIN\r\n", "334 \r\n").await;
        c.say("*\r\n", "501 5.0.0 Authentication cancelled\r\n")
            .await;
        c.say("AUTH LOGIN\r\n", "334 VXNlcm5hbWU6\r\n").await;
        c.say("*\r\n", "501 5.0.0 Authentication cancelled\r\n")
            .await;
        c.say("AUTH PLAIN !!!\r\n", "501 5.5.2 Cannot decode response\r\n")
            .await;
        c.say(
            "AUTH CRAM-MD5\r\n",
            "504 5.5.4 Unrecognized authentication type\r\n",
        )
        .await;
        // The user without the submit role fails like a wrong password.
        let start = tokio::time::Instant::now();
        // base64("\0nosubmit\0pw")
        c.say("AUTH PLAIN AG5vc3VibWl0AHB3\r\n", AUTH_BAD).await;
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "no failure delay"
        );
        // base64("\0alice\0wrong"): the second failure closes the session.
        c.say(
            "AUTH PLAIN AGFsaWNlAHdyb25n\r\n",
            &format!("{AUTH_BAD}421 4.7.0 mx.test Too many authentication failures\r\n"),
        )
        .await;
        c.expect_close().await;
    }

    #[tokio::test]
    async fn auth_needs_tls_or_permission_and_a_submission_listener() {
        // Submission in plaintext from a remote peer: not offered, 538 if tried.
        let (mut c, _up) = start_tls(submission());
        c.expect(GREETING).await;
        c.say("AUTH PLAIN\r\n", "503 5.5.1 Error: send EHLO first\r\n")
            .await;
        c.say("EHLO client.test\r\n", EHLO_STARTTLS).await;
        c.say(
            &format!("AUTH PLAIN {ALICE_PLAIN}\r\n"),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
        )
        .await;
        // After STARTTLS it is offered.
        c.say("STARTTLS\r\n", READY).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
            .await;
        c.quit().await;
        // A plain smtp listener offers no AUTH at all.
        let mut c = start(SessionConfig {
            tls: true,
            ..config()
        });
        c.ehlo().await;
        c.say(
            &format!("AUTH PLAIN {ALICE_PLAIN}\r\n"),
            "502 5.5.1 Error: command not implemented\r\n",
        )
        .await;
        c.quit().await;
        // Loopback (or allow_plaintext_auth): offered without TLS.
        let mut c = start(SessionConfig {
            plaintext_auth_allowed: true,
            ..submission()
        });
        c.expect(GREETING).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
            .await;
        c.quit().await;
    }

    #[tokio::test]
    async fn starttls_clears_auth() {
        let (mut c, _up) = start_tls(SessionConfig {
            plaintext_auth_allowed: true,
            ..submission()
        });
        c.expect(GREETING).await;
        c.say(
            "EHLO client.test\r\n",
            &EHLO_STARTTLS.replace("250 STARTTLS", "250-STARTTLS\r\n250 AUTH PLAIN LOGIN"),
        )
        .await;
        c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
            .await;
        c.say("STARTTLS\r\n", READY).await;
        c.say("EHLO client.test\r\n", EHLO_AUTH).await;
        c.say("MAIL FROM:<alice@example.org>\r\n", AUTH_NEEDED)
            .await;
        c.say(&format!("AUTH PLAIN {ALICE_PLAIN}\r\n"), AUTH_OK)
            .await;
        c.say("MAIL FROM:<alice@example.org>\r\n", MAIL_OK).await;
        c.quit().await;
    }
}
