//! The POP3 session over a `Conn` (RFC 1939 §3-§6): read a line, parse, check the
//! state, act through the `Store`. Replies are queued and flushed only when no
//! pipelined input is waiting (RFC 2449 §6.6 PIPELINING).
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::command::{self, Command, MAX_LINE, Secret};
use super::reply::{self, RespCode};
use super::state::{self, Marks, State};
use super::store::{Mailbox, MessageInfo, Store, StoreError};
use crate::conn::{Conn, ConnError, Line, NoObserver, Observer};
use crate::filter::tls::Upgrade;
use crate::sasl::{self, SaslError};

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
    /// STLS (RFC 2595 §4) is offered through this until the connection is TLS.
    starttls: Option<Arc<dyn Upgrade>>,
    observer: Arc<dyn Observer>,
    /// Turns true when the daemon stops: a session waiting for a command is told
    /// and closed without UPDATE (nothing is deleted).
    shutdown: Option<watch::Receiver<bool>>,
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
            // RFC 1939 §7: APOP needs the plaintext password stored; we keep hashes.
            Command::Apop => self.err(None, "APOP not supported"),
            Command::Stls => return self.stls().await,
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
        // RFC 2595 §4: STLS only where it can be used now (AUTHORIZATION, not yet TLS).
        if self.starttls.is_some() && matches!(self.state, State::Authorization { .. }) {
            body.push_str("STLS\n");
        }
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

    /// RFC 2595 §4 STLS (AUTHORIZATION only, checked by `state::check`).
    /// Refused when pipelined input follows it (CVE-2011-0411 class): those bytes
    /// came in plaintext and are dropped with the connection, never executed.
    async fn stls(&mut self) -> io::Result<Flow> {
        let Some(upgrade) = self.starttls.clone() else {
            self.err(None, "STLS not available");
            return Ok(Flow::Continue);
        };
        if self.conn.buffered_input() != 0 {
            info!(
                pipelined = self.conn.buffered_input(),
                "STLS refused: plaintext pipelined after it; closing"
            );
            self.err(None, "STLS refused: commands pipelined after STLS");
            return Ok(Flow::Close);
        }
        self.ok("Begin TLS negotiation");
        self.conn.flush().await?;
        if let Err(e) = upgrade.upgrade().await {
            info!(error = %e, "TLS handshake failed");
            return Err(e);
        }
        debug!("TLS started");
        // RFC 2595 §4: back to AUTHORIZATION with nothing remembered (a USER
        // given before is forgotten); failures still count. Logins in plaintext
        // are now protected by TLS.
        let failures = match &self.state {
            State::Authorization { failures, .. } => *failures,
            _ => 0,
        };
        self.state = State::Authorization {
            user: None,
            failures,
        };
        self.cfg.plaintext_auth_allowed = true;
        self.starttls = None;
        Ok(Flow::Continue)
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
                    Ok(Line::TooLong) => return Ok(self.protocol_error("line too long")),
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
        let decoded = std::str::from_utf8(&response.0)
            .map_err(|_| SaslError::Base64)
            .and_then(sasl::decode_plain);
        let plain = match decoded {
            Ok(p) => p,
            // No proxy logins: an authorization identity must name the same user.
            Err(SaslError::AuthzidMismatch) => return self.login_failed("").await,
            Err(_) => {
                self.err(None, "Invalid SASL PLAIN response");
                return Ok(Flow::Continue);
            }
        };
        self.login(plain.authcid, Secret(plain.password.expose().to_vec()))
            .await
    }

    /// Check credentials and open the mailbox; enter TRANSACTION (RFC 1939 §4).
    async fn login(&mut self, user: String, password: Secret) -> io::Result<Flow> {
        match self.store.login(&user, &password.0, self.cfg.client).await {
            Ok(mailbox) => {
                let (count, size) = totals(mailbox.messages(), None);
                info!(user = ?user, messages = count, "pop3 login");
                self.observer.auth(&user, "", true);
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
        warn!(user = ?crate::logging::LogName(user), failures, "pop3 authentication failed");
        self.observer.auth(user, "", false);
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
                Err(t) => reply::err(out, None, t),
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
                Err(t) => reply::err(out, None, t),
            },
            // RFC 1939 §5 RETR.
            Command::Retr(n) => match deleted.index(n) {
                Ok(i) => match mailbox.read(i).await {
                    Ok(body) => {
                        let size = mailbox.messages().get(i).map(|m| m.size).unwrap_or(0);
                        reply::ok(out, &format!("{size} octets"));
                        reply::multiline(out, &body);
                        if cfg.retr_marks_seen {
                            mailbox.mark_seen(i).await;
                        }
                    }
                    Err(e) => read_error(out, e),
                },
                Err(t) => reply::err(out, None, t),
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
                Err(t) => reply::err(out, None, t),
            },
            // RFC 1939 §5 DELE: only marks.
            Command::Dele(n) => match deleted.mark(n) {
                Ok(()) => reply::ok(out, &format!("Message {n} deleted")),
                Err(t) => reply::err(out, None, t),
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
            _ => reply::err(out, None, "Command not allowed now"),
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
        // Sizes may come from `W=` in names the owner chose: never overflow.
        .fold((0, 0), |(c, s), (_, m)| (c + 1, s.saturating_add(m.size)))
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
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MSGS: [&[u8]; 4] = [
        b"Subject: one\n\nhello\n.\n..\nbye\n",
        b"Subject: two\r\n\r\nline1\r\nline2\r\n",
        b"no newline",
        b"gone\n",
    ];
    /// The fourth message is removed by "mutt" after login.
    const GONE: usize = 3;
    const PASSWORD: &[u8] = b"s3cret pass";

    #[derive(Debug, Default, Clone)]
    struct Log {
        commits: Vec<Vec<usize>>,
        drops: usize,
        seen: Vec<usize>,
        logins: Vec<(String, Vec<u8>)>,
    }

    struct FakeStore {
        log: Arc<Mutex<Log>>,
    }

    struct FakeMailbox {
        info: Vec<MessageInfo>,
        fail_commit: bool,
        log: Arc<Mutex<Log>>,
    }

    impl Drop for FakeMailbox {
        fn drop(&mut self) {
            self.log.lock().unwrap().drops += 1;
        }
    }

    impl Store for FakeStore {
        type Mailbox = FakeMailbox;
        async fn login(
            &self,
            user: &str,
            password: &[u8],
            _client: Option<std::net::IpAddr>,
        ) -> Result<FakeMailbox, StoreError> {
            self.log
                .lock()
                .unwrap()
                .logins
                .push((user.to_string(), password.to_vec()));
            match user {
                "locked" => return Err(StoreError::InUse),
                "broken" => return Err(StoreError::Temporary),
                "alice" | "flaky" if password == PASSWORD => {}
                _ => return Err(StoreError::Auth),
            }
            Ok(FakeMailbox {
                info: MSGS
                    .iter()
                    .enumerate()
                    .map(|(i, m)| MessageInfo {
                        uidl: format!("uid-{}", i + 1),
                        size: reply::crlf_size(m),
                    })
                    .collect(),
                fail_commit: user == "flaky",
                log: self.log.clone(),
            })
        }
    }

    impl Mailbox for FakeMailbox {
        fn messages(&self) -> &[MessageInfo] {
            &self.info
        }
        async fn read(&mut self, index: usize) -> Result<Vec<u8>, StoreError> {
            match MSGS.get(index) {
                Some(_) if index == GONE => Err(StoreError::Gone),
                Some(m) => Ok(m.to_vec()),
                None => Err(StoreError::Gone),
            }
        }
        async fn mark_seen(&mut self, index: usize) {
            self.log.lock().unwrap().seen.push(index);
        }
        async fn commit_deletes(self, indexes: Vec<usize>) -> Result<(), StoreError> {
            self.log.lock().unwrap().commits.push(indexes);
            if self.fail_commit {
                Err(StoreError::Temporary)
            } else {
                Ok(())
            }
        }
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            hostname: "test.example".into(),
            plaintext_auth_allowed: true,
            idle_timeout: Duration::from_secs(600),
            max_errors: 50,
            auth_failures: 3,
            auth_failure_delay: Duration::from_secs(2),
            retr_marks_seen: false,
            client: None,
        }
    }

    /// An idle connection costs its task: the session's future stays small
    /// because every command's state is boxed only while the command runs
    /// (the idle-memory goal is under 8 KiB per connection, all included).
    #[test]
    fn idle_session_future_is_small() {
        let (_io, server) = tokio::io::duplex(64);
        let store = Arc::new(FakeStore {
            log: Arc::new(Mutex::new(Log::default())),
        });
        let run = Session::new(server, store, cfg()).run();
        let size = std::mem::size_of_val(&run);
        // The session itself is part of it (measured: 1216 bytes).
        assert!(size <= 1536, "pop3 session future is {size} bytes");
    }

    /// Pipeline `input`, optionally close our sending side, and collect every
    /// byte the session sends until it closes.
    async fn talk(cfg: SessionConfig, input: &[u8], close_input: bool) -> (String, Log) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let log = Arc::new(Mutex::new(Log::default()));
        let store = Arc::new(FakeStore { log: log.clone() });
        let task = tokio::spawn(Session::new(server, store, cfg).run());
        client.write_all(input).await.unwrap();
        if close_input {
            client.shutdown().await.unwrap();
        }
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap().unwrap();
        let log = log.lock().unwrap().clone();
        (String::from_utf8(out).unwrap(), log)
    }

    async fn run(input: &str) -> (String, Log) {
        talk(cfg(), input.as_bytes(), true).await
    }

    const GREET: &str = "+OK maildird ready\r\n";
    const LOGIN: &str = "USER alice\r\nPASS s3cret pass\r\n";
    const LOGGED_IN: &str = "+OK\r\n+OK Logged in, 4 messages (83 octets)\r\n";
    const BYE: &str = "+OK maildird signing off\r\n";
    const CAPA_ALL: &str = "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nSASL PLAIN\r\nEXPIRE NEVER\r\nIMPLEMENTATION maildird\r\n.\r\n";

    fn plain(authz: &str, user: &str, pass: &[u8]) -> String {
        let mut raw = format!("{authz}\0{user}\0").into_bytes();
        raw.extend_from_slice(pass);
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
    }

    #[tokio::test(start_paused = true)]
    async fn capa_in_both_states_and_quit() {
        let (out, log) = run(&format!("CAPA\r\n{LOGIN}CAPA\r\nQUIT\r\n")).await;
        assert_eq!(out, format!("{GREET}{CAPA_ALL}{LOGGED_IN}{CAPA_ALL}{BYE}"));
        assert_eq!(log.logins, vec![("alice".into(), PASSWORD.to_vec())]);
        assert_eq!(log.commits, vec![Vec::<usize>::new()]);
    }

    #[tokio::test(start_paused = true)]
    async fn plaintext_refused_when_not_allowed() {
        let mut c = cfg();
        c.plaintext_auth_allowed = false;
        let input = format!(
            "CAPA\r\nUSER alice\r\nPASS s3cret pass\r\nAUTH PLAIN {}\r\nAUTH PLAIN\r\nAUTH\r\nQUIT\r\n",
            plain("", "alice", PASSWORD)
        );
        let (out, log) = talk(c, input.as_bytes(), true).await;
        let refused =
            "-ERR [AUTH] Plaintext authentication disallowed on non-secure connection\r\n";
        assert_eq!(
            out,
            format!(
                "{GREET}+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION maildird\r\n.\r\n{refused}-ERR USER first\r\n{refused}{refused}+OK\r\n.\r\n{BYE}"
            )
        );
        assert!(log.logins.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_state_commands_get_err_and_the_session_goes_on() {
        let before = "STAT\r\nLIST\r\nLIST 1\r\nRETR 1\r\nDELE 1\r\nNOOP\r\nRSET\r\nTOP 1 0\r\nUIDL\r\nUIDL 1\r\nPASS x\r\n";
        let after = "USER alice\r\nPASS x\r\nAUTH PLAIN\r\nAPOP a b\r\nSTLS\r\n";
        let (out, log) = run(&format!(
            "{before}STLS\r\nAPOP alice abc\r\n{LOGIN}{after}NOOP\r\nQUIT\r\n"
        ))
        .await;
        let want = format!(
            "{GREET}{}-ERR USER first\r\n-ERR STLS not available\r\n-ERR APOP not supported\r\n{LOGGED_IN}{}+OK\r\n{BYE}",
            "-ERR Not logged in\r\n".repeat(10),
            "-ERR Already logged in\r\n".repeat(5),
        );
        assert_eq!(out, want);
        assert_eq!(log.logins.len(), 1);
        assert_eq!(log.commits, vec![Vec::<usize>::new()]);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_logins_are_delayed_alike_and_close_after_the_limit() {
        let start = tokio::time::Instant::now();
        let (out, log) = run(
            "USER alice\r\nPASS wrong\r\nUSER nobody\r\nPASS s3cret pass\r\nUSER alice\r\nPASS nope\r\nNOOP\r\n",
        )
        .await;
        let failed = "+OK\r\n-ERR [AUTH] Authentication failed\r\n";
        assert_eq!(out, format!("{GREET}{}", failed.repeat(3)));
        assert!(
            start.elapsed() >= Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(log.logins.len(), 3);
        assert_eq!(log.drops, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_login_then_success() {
        let (out, _) = run(&format!(
            "USER alice\r\nPASS bad\r\nPASS x\r\n{LOGIN}QUIT\r\n"
        ))
        .await;
        assert_eq!(
            out,
            format!(
                "{GREET}+OK\r\n-ERR [AUTH] Authentication failed\r\n-ERR USER first\r\n{LOGGED_IN}{BYE}"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_use_and_temporary_failures_carry_codes() {
        let (out, log) = run(&format!(
            "USER locked\r\nPASS s3cret pass\r\nUSER broken\r\nPASS s3cret pass\r\n{LOGIN}QUIT\r\n"
        ))
        .await;
        assert_eq!(
            out,
            format!(
                "{GREET}+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n+OK\r\n-ERR [SYS/TEMP] Mailbox unavailable, try again later\r\n{LOGGED_IN}{BYE}"
            )
        );
        assert_eq!(log.logins.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn auth_plain_initial_response() {
        let (out, log) = run(&format!(
            "AUTH PLAIN {}\r\nQUIT\r\n",
            plain("", "alice", PASSWORD)
        ))
        .await;
        assert_eq!(
            out,
            format!("{GREET}+OK Logged in, 4 messages (83 octets)\r\n{BYE}")
        );
        assert_eq!(log.logins, vec![("alice".into(), PASSWORD.to_vec())]);
    }

    #[tokio::test(start_paused = true)]
    async fn auth_plain_continuation_and_authzid() {
        let (out, _) = run(&format!(
            "auth plain\r\n{}\r\nQUIT\r\n",
            plain("alice", "alice", PASSWORD)
        ))
        .await;
        assert_eq!(
            out,
            format!("{GREET}+ \r\n+OK Logged in, 4 messages (83 octets)\r\n{BYE}")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn auth_cancel_errors_and_mechanism_list() {
        let input = format!(
            "AUTH\r\nAUTH PLAIN\r\n*\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!!\r\nAUTH PLAIN {}\r\nAUTH PLAIN {}\r\nQUIT\r\n",
            plain("bob", "alice", PASSWORD),
            plain("", "alice", b"wrong"),
        );
        let (out, log) = run(&input).await;
        assert_eq!(
            out,
            format!(
                "{GREET}+OK\r\nPLAIN\r\n.\r\n+ \r\n-ERR Authentication cancelled\r\n-ERR Unsupported authentication mechanism\r\n-ERR Invalid SASL PLAIN response\r\n-ERR [AUTH] Authentication failed\r\n-ERR [AUTH] Authentication failed\r\n{BYE}"
            )
        );
        // The proxy attempt never reached the store; the wrong password did.
        assert_eq!(log.logins, vec![("alice".into(), b"wrong".to_vec())]);
    }

    #[tokio::test(start_paused = true)]
    async fn stat_list_uidl_values() {
        let (out, _) = run(&format!(
            "{LOGIN}STAT\r\nLIST\r\nLIST 2\r\nLIST 5\r\nUIDL\r\nUIDL 3\r\nUIDL 9\r\nNOOP\r\nQUIT\r\n"
        ))
        .await;
        assert_eq!(
            out,
            format!(
                "{GREET}{LOGGED_IN}+OK 4 83\r\n+OK 4 messages (83 octets)\r\n1 35\r\n2 30\r\n3 12\r\n4 6\r\n.\r\n+OK 2 30\r\n-ERR No such message\r\n+OK\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n4 uid-4\r\n.\r\n+OK 3 uid-3\r\n-ERR No such message\r\n+OK\r\n{BYE}"
            )
        );
    }

    /// Undo dot-stuffing of a multi-line body (without its `.\r\n`).
    fn unstuff(body: &str) -> String {
        body.split_inclusive("\r\n")
            .map(|l| l.strip_prefix('.').unwrap_or(l))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn list_size_equals_the_octets_retr_sends() {
        for (i, m) in MSGS.iter().enumerate().take(GONE) {
            let n = i + 1;
            let (out, _) = run(&format!("{LOGIN}LIST {n}\r\nRETR {n}\r\nQUIT\r\n")).await;
            let rest = out.strip_prefix(&format!("{GREET}{LOGGED_IN}")).unwrap();
            let (list, rest) = rest.split_once("\r\n").unwrap();
            let size: u64 = list.rsplit(' ').next().unwrap().parse().unwrap();
            let rest = rest
                .strip_prefix(&format!("+OK {size} octets\r\n"))
                .unwrap();
            let body = rest.strip_suffix(&format!(".\r\n{BYE}")).unwrap();
            assert_eq!(unstuff(body).len() as u64, size, "message {n}");
            assert_eq!(size, reply::crlf_size(m));
        }
        let (out, _) = run(&format!("{LOGIN}RETR 1\r\nQUIT\r\n")).await;
        assert_eq!(
            out,
            format!(
                "{GREET}{LOGGED_IN}+OK 35 octets\r\nSubject: one\r\n\r\nhello\r\n..\r\n...\r\nbye\r\n.\r\n{BYE}"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn top_and_a_gone_message() {
        let (out, _) = run(&format!(
            "{LOGIN}TOP 1 0\r\nTOP 2 1\r\nTOP 3 5\r\nRETR 4\r\nTOP 4 0\r\nRETR 5\r\nNOOP\r\nQUIT\r\n"
        ))
        .await;
        assert_eq!(
            out,
            format!(
                "{GREET}{LOGGED_IN}+OK\r\nSubject: one\r\n\r\n.\r\n+OK\r\nSubject: two\r\n\r\nline1\r\n.\r\n+OK\r\nno newline\r\n.\r\n-ERR Message no longer exists\r\n-ERR Message no longer exists\r\n-ERR No such message\r\n+OK\r\n{BYE}"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn dele_then_rset_unmarks() {
        let (out, log) = run(&format!(
            "{LOGIN}DELE 1\r\nDELE 1\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nTOP 1 0\r\nUIDL 1\r\nRSET\r\nSTAT\r\nQUIT\r\n"
        ))
        .await;
        let del = "-ERR Message already deleted\r\n";
        assert_eq!(
            out,
            format!(
                "{GREET}{LOGGED_IN}+OK Message 1 deleted\r\n{del}+OK 3 48\r\n{}+OK 4 messages (83 octets)\r\n+OK 4 83\r\n{BYE}",
                del.repeat(4)
            )
        );
        assert_eq!(log.commits, vec![Vec::<usize>::new()]);
    }

    #[tokio::test(start_paused = true)]
    async fn dele_and_quit_commits_exactly_the_marked_messages() {
        let (out, log) = run(&format!(
            "{LOGIN}DELE 2\r\nDELE 4\r\nLIST\r\nQUIT\r\nNOOP\r\n"
        ))
        .await;
        assert_eq!(
            out,
            format!(
                "{GREET}{LOGGED_IN}+OK Message 2 deleted\r\n+OK Message 4 deleted\r\n+OK 2 messages (47 octets)\r\n1 35\r\n3 12\r\n.\r\n{BYE}"
            )
        );
        assert_eq!(log.commits, vec![vec![1, 3]]);
        assert_eq!(log.drops, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_update_is_reported() {
        let (out, log) = run("USER flaky\r\nPASS s3cret pass\r\nDELE 1\r\nQUIT\r\n").await;
        assert_eq!(
            out,
            format!(
                "{GREET}{LOGGED_IN}+OK Message 1 deleted\r\n-ERR [SYS/TEMP] Some deleted messages were not removed\r\n"
            )
        );
        assert_eq!(log.commits, vec![vec![0]]);
    }

    #[tokio::test(start_paused = true)]
    async fn eof_without_quit_commits_nothing() {
        let (out, log) = run(&format!("{LOGIN}DELE 1\r\nDELE 2\r\n")).await;
        assert_eq!(
            out,
            format!("{GREET}{LOGGED_IN}+OK Message 1 deleted\r\n+OK Message 2 deleted\r\n")
        );
        assert!(log.commits.is_empty());
        assert_eq!(log.drops, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn autologout_closes_silently_without_update() {
        let start = tokio::time::Instant::now();
        let (out, log) = talk(cfg(), format!("{LOGIN}DELE 1\r\n").as_bytes(), false).await;
        assert_eq!(out, format!("{GREET}{LOGGED_IN}+OK Message 1 deleted\r\n"));
        assert!(start.elapsed() >= Duration::from_secs(600));
        assert!(log.commits.is_empty());
        assert_eq!(log.drops, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retr_marks_seen_when_configured() {
        let mut c = cfg();
        c.retr_marks_seen = true;
        let input = format!("{LOGIN}TOP 2 0\r\nRETR 3\r\nRETR 4\r\nQUIT\r\n");
        let (_, log) = talk(c, input.as_bytes(), true).await;
        assert_eq!(log.seen, vec![2]);
        let (_, log) = run(&input).await;
        assert!(log.seen.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn long_lines_and_the_error_cap() {
        let long = "x".repeat(300);
        let (out, _) = run(&format!("{long}\r\nNOOP\r\nQUIT\r\n")).await;
        assert_eq!(
            out,
            format!("{GREET}-ERR line too long\r\n-ERR Not logged in\r\n{BYE}")
        );
        let mut c = cfg();
        c.max_errors = 2;
        let (out, _) = talk(c, b"FOO\r\nLIST x\r\nBAR\r\nQUIT\r\n", true).await;
        assert_eq!(
            out,
            format!(
                "{GREET}-ERR Unknown command\r\n-ERR Syntax error: not a number\r\n-ERR Too many errors, closing connection\r\n"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn quit_in_authorization() {
        let (out, log) = run("QUIT\r\nNOOP\r\n").await;
        assert_eq!(out, format!("{GREET}{BYE}"));
        assert!(log.commits.is_empty());
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

    struct Stls {
        client: tokio::io::DuplexStream,
        up: Arc<FakeUpgrade>,
        log: Arc<Mutex<Log>>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    impl Stls {
        fn start(cfg: SessionConfig) -> Stls {
            let (client, server) = tokio::io::duplex(1 << 20);
            let log = Arc::new(Mutex::new(Log::default()));
            let store = Arc::new(FakeStore { log: log.clone() });
            let up = Arc::new(FakeUpgrade::default());
            let session = Session::new(server, store, cfg).with_starttls(up.clone());
            let task = tokio::spawn(session.run());
            Stls {
                client,
                up,
                log,
                task,
            }
        }

        async fn say(&mut self, send: &str, want: &str) {
            self.client.write_all(send.as_bytes()).await.unwrap();
            let mut got = vec![0; want.len()];
            self.client.read_exact(&mut got).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&got), want);
        }

        async fn rest(mut self) -> String {
            let mut out = Vec::new();
            self.client.read_to_end(&mut out).await.unwrap();
            self.task.await.unwrap().unwrap();
            String::from_utf8(out).unwrap()
        }
    }

    const CAPA_STLS_ONLY: &str = "+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION maildird\r\n.\r\n";
    const BEGIN_TLS: &str = "+OK Begin TLS negotiation\r\n";

    #[tokio::test(start_paused = true)]
    async fn stls_resets_and_allows_plaintext_logins() {
        let mut c = cfg();
        c.plaintext_auth_allowed = false;
        let mut s = Stls::start(c);
        s.say("", GREET).await;
        s.say("CAPA\r\n", CAPA_STLS_ONLY).await;
        s.say(
            "USER alice\r\n",
            "-ERR [AUTH] Plaintext authentication disallowed on non-secure connection\r\n",
        )
        .await;
        s.say("STLS\r\n", BEGIN_TLS).await;
        assert_eq!(*s.up.count.lock().unwrap(), 1);
        // Now secure: USER is offered and works; STLS is gone.
        s.say("CAPA\r\n", CAPA_ALL).await;
        s.say("STLS\r\n", "-ERR STLS not available\r\n").await;
        s.say(LOGIN, LOGGED_IN).await;
        // RFC 2595 §4: STLS only in AUTHORIZATION; CAPA no longer lists it.
        s.say("STLS\r\n", "-ERR Already logged in\r\n").await;
        s.say("QUIT\r\n", BYE).await;
        let log = s.log.clone();
        assert_eq!(s.rest().await, "");
        assert_eq!(log.lock().unwrap().logins.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stls_forgets_user_given_before() {
        let mut s = Stls::start(cfg());
        s.say("", GREET).await;
        s.say("USER alice\r\n", "+OK\r\n").await;
        s.say("STLS\r\n", BEGIN_TLS).await;
        s.say("PASS s3cret pass\r\n", "-ERR USER first\r\n").await;
        s.say("QUIT\r\n", BYE).await;
        assert_eq!(s.rest().await, "");
    }

    #[tokio::test(start_paused = true)]
    async fn stls_with_pipelined_plaintext_is_refused() {
        let mut s = Stls::start(cfg());
        s.say("", GREET).await;
        // CVE-2011-0411 class: the USER/PASS after STLS must never run.
        s.client
            .write_all(format!("STLS\r\n{LOGIN}").as_bytes())
            .await
            .unwrap();
        let up = s.up.clone();
        let log = s.log.clone();
        assert_eq!(
            s.rest().await,
            "-ERR STLS refused: commands pipelined after STLS\r\n"
        );
        assert_eq!(*up.count.lock().unwrap(), 0);
        assert!(log.lock().unwrap().logins.is_empty());
    }
}
