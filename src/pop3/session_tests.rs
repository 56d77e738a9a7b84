//! The POP3 session's tests: a fake `Store` and STLS upgrade, one test client
//! (`Client`) and one helper for the repeated login script (`logged_in`).
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::{Session, SessionConfig};
use crate::filter::tls::Upgrade;
use crate::pop3::reply;
use crate::pop3::store::{Mailbox, MessageInfo, MessageReader, Store, StoreError};

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
    /// Reading fails after the first chunk ("torn").
    fail_read: bool,
    log: Arc<Mutex<Log>>,
}

/// Bytes per chunk of the fake's messages: small, so that every message
/// crosses chunk edges.
const FAKE_CHUNK: usize = 5;

/// A fake message: `data` in `FAKE_CHUNK` pieces, failing after the first
/// when `fail` is set.
struct FakeMessage {
    data: &'static [u8],
    pos: usize,
    fail: bool,
}

impl MessageReader for FakeMessage {
    async fn next_chunk(&mut self) -> Result<Option<&[u8]>, StoreError> {
        if self.fail && self.pos > 0 {
            return Err(StoreError::Temporary);
        }
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let chunk = rest.get(..FAKE_CHUNK).unwrap_or(rest);
        self.pos += chunk.len();
        Ok((!chunk.is_empty()).then_some(chunk))
    }
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
            "alice" | "flaky" | "torn" if password == PASSWORD => {}
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
            fail_read: user == "torn",
            log: self.log.clone(),
        })
    }
}

impl Mailbox for FakeMailbox {
    fn messages(&self) -> &[MessageInfo] {
        &self.info
    }
    type Message = FakeMessage;
    async fn open(&mut self, index: usize) -> Result<FakeMessage, StoreError> {
        match MSGS.get(index) {
            Some(_) if index == GONE => Err(StoreError::Gone),
            Some(m) => Ok(FakeMessage {
                data: m,
                pos: 0,
                fail: self.fail_read,
            }),
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

/// The client end of a session over an in-memory pipe.
struct Client {
    client: DuplexStream,
    up: Arc<FakeUpgrade>,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<io::Result<()>>,
}

impl Client {
    /// A session without STLS.
    fn start(cfg: SessionConfig) -> Client {
        Client::spawn(cfg, false)
    }

    /// A session offering STLS through a `FakeUpgrade`.
    fn with_stls(cfg: SessionConfig) -> Client {
        Client::spawn(cfg, true)
    }

    fn spawn(cfg: SessionConfig, stls: bool) -> Client {
        let (client, server) = tokio::io::duplex(1 << 20);
        let log = Arc::new(Mutex::new(Log::default()));
        let store = Arc::new(FakeStore { log: log.clone() });
        let up = Arc::new(FakeUpgrade::default());
        let mut session = Session::new(server, store, cfg);
        if stls {
            session = session.with_starttls(up.clone());
        }
        let task = tokio::spawn(session.run());
        Client {
            client,
            up,
            log,
            task,
        }
    }

    async fn send(&mut self, input: &[u8]) {
        self.client.write_all(input).await.unwrap();
    }

    /// Send `send` and read exactly `want` back.
    async fn say(&mut self, send: &str, want: &str) {
        self.send(send.as_bytes()).await;
        let mut got = vec![0; want.len()];
        self.client.read_exact(&mut got).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
    }

    /// Close our sending side.
    async fn close_input(&mut self) {
        self.client.shutdown().await.unwrap();
    }

    /// Every byte the session sends until it closes, once it has ended cleanly,
    /// and what the store saw.
    async fn finish(mut self) -> (String, Log) {
        let mut out = Vec::new();
        self.client.read_to_end(&mut out).await.unwrap();
        self.task.await.unwrap().unwrap();
        let log = self.log.lock().unwrap().clone();
        (String::from_utf8(out).unwrap(), log)
    }
}

/// Pipeline `input`, optionally close our sending side, and collect every
/// byte the session sends until it closes.
async fn talk(cfg: SessionConfig, input: &[u8], close_input: bool) -> (String, Log) {
    let mut c = Client::start(cfg);
    c.send(input).await;
    if close_input {
        c.close_input().await;
    }
    c.finish().await
}

async fn run(input: &str) -> (String, Log) {
    talk(cfg(), input.as_bytes(), true).await
}

/// The repeated login script: pipeline `LOGIN` then `cmds`, check that the
/// greeting and the two login replies come first, and return what follows.
async fn logged_in(cfg: SessionConfig, cmds: &str, close_input: bool) -> (String, Log) {
    let (out, log) = talk(cfg, format!("{LOGIN}{cmds}").as_bytes(), close_input).await;
    let Some(rest) = out.strip_prefix(&format!("{GREET}{LOGGED_IN}")) else {
        panic!("no greeting and login in {out:?}");
    };
    (rest.to_string(), log)
}

/// `logged_in` with the default config, closing our side after `cmds`.
async fn after_login(cmds: &str) -> (String, Log) {
    logged_in(cfg(), cmds, true).await
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
    let refused = "-ERR [AUTH] Plaintext authentication disallowed on non-secure connection\r\n";
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
    let (out, _) = after_login(
        "STAT\r\nLIST\r\nLIST 2\r\nLIST 5\r\nUIDL\r\nUIDL 3\r\nUIDL 9\r\nNOOP\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        out,
        format!(
            "+OK 4 83\r\n+OK 4 messages (83 octets)\r\n1 35\r\n2 30\r\n3 12\r\n4 6\r\n.\r\n+OK 2 30\r\n-ERR No such message\r\n+OK\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n4 uid-4\r\n.\r\n+OK 3 uid-3\r\n-ERR No such message\r\n+OK\r\n{BYE}"
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
        let (rest, _) = after_login(&format!("LIST {n}\r\nRETR {n}\r\nQUIT\r\n")).await;
        let (list, rest) = rest.split_once("\r\n").unwrap();
        let size: u64 = list.rsplit(' ').next().unwrap().parse().unwrap();
        let rest = rest
            .strip_prefix(&format!("+OK {size} octets\r\n"))
            .unwrap();
        let body = rest.strip_suffix(&format!(".\r\n{BYE}")).unwrap();
        assert_eq!(unstuff(body).len() as u64, size, "message {n}");
        assert_eq!(size, reply::crlf_size(m));
    }
    let (out, _) = after_login("RETR 1\r\nQUIT\r\n").await;
    assert_eq!(
        out,
        format!("+OK 35 octets\r\nSubject: one\r\n\r\nhello\r\n..\r\n...\r\nbye\r\n.\r\n{BYE}")
    );
}

#[tokio::test(start_paused = true)]
async fn top_and_a_gone_message() {
    let (out, _) = after_login(
        "TOP 1 0\r\nTOP 2 1\r\nTOP 3 5\r\nRETR 4\r\nTOP 4 0\r\nRETR 5\r\nNOOP\r\nQUIT\r\n",
    )
    .await;
    assert_eq!(
        out,
        format!(
            "+OK\r\nSubject: one\r\n\r\n.\r\n+OK\r\nSubject: two\r\n\r\nline1\r\n.\r\n+OK\r\nno newline\r\n.\r\n-ERR Message no longer exists\r\n-ERR Message no longer exists\r\n-ERR No such message\r\n+OK\r\n{BYE}"
        )
    );
}

/// A message whose reading fails after its `+OK` and first chunk went out:
/// no `-ERR` inside the response, the connection closes (the pipelined NOOP
/// is not answered) and nothing is committed.
#[tokio::test(start_paused = true)]
async fn a_read_failing_midway_closes_the_connection() {
    let (out, log) =
        run("USER torn\r\nPASS s3cret pass\r\nDELE 2\r\nRETR 1\r\nNOOP\r\nQUIT\r\n").await;
    assert_eq!(
        out,
        format!("{GREET}{LOGGED_IN}+OK Message 2 deleted\r\n+OK 35 octets\r\nSubje")
    );
    assert!(log.commits.is_empty());
    assert_eq!(log.drops, 1);
    assert!(log.seen.is_empty());
}

/// A message far larger than any buffer, in the fake's tiny chunks, arrives
/// exactly as `multiline` encodes it whole.
#[tokio::test(start_paused = true)]
async fn retr_streams_a_message_as_multiline_encodes_it() {
    let (out, _) = after_login("RETR 1\r\nTOP 1 1\r\nTOP 2 0\r\nRETR 3\r\nQUIT\r\n").await;
    let mut want = b"+OK 35 octets\r\n".to_vec();
    reply::multiline(&mut want, MSGS[0]);
    want.extend_from_slice(b"+OK\r\n");
    reply::multiline(&mut want, reply::top(MSGS[0], 1));
    want.extend_from_slice(b"+OK\r\n");
    reply::multiline(&mut want, reply::top(MSGS[1], 0));
    want.extend_from_slice(b"+OK 12 octets\r\n");
    reply::multiline(&mut want, MSGS[2]);
    want.extend_from_slice(BYE.as_bytes());
    assert_eq!(out, String::from_utf8(want).unwrap());
}

#[tokio::test(start_paused = true)]
async fn dele_then_rset_unmarks() {
    let (out, log) = after_login(
        "DELE 1\r\nDELE 1\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nTOP 1 0\r\nUIDL 1\r\nRSET\r\nSTAT\r\nQUIT\r\n",
    )
    .await;
    let del = "-ERR Message already deleted\r\n";
    assert_eq!(
        out,
        format!(
            "+OK Message 1 deleted\r\n{del}+OK 3 48\r\n{}+OK 4 messages (83 octets)\r\n+OK 4 83\r\n{BYE}",
            del.repeat(4)
        )
    );
    assert_eq!(log.commits, vec![Vec::<usize>::new()]);
}

#[tokio::test(start_paused = true)]
async fn dele_and_quit_commits_exactly_the_marked_messages() {
    let (out, log) = after_login("DELE 2\r\nDELE 4\r\nLIST\r\nQUIT\r\nNOOP\r\n").await;
    assert_eq!(
        out,
        format!(
            "+OK Message 2 deleted\r\n+OK Message 4 deleted\r\n+OK 2 messages (47 octets)\r\n1 35\r\n3 12\r\n.\r\n{BYE}"
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
    let (out, log) = after_login("DELE 1\r\nDELE 2\r\n").await;
    assert_eq!(out, "+OK Message 1 deleted\r\n+OK Message 2 deleted\r\n");
    assert!(log.commits.is_empty());
    assert_eq!(log.drops, 1);
}

#[tokio::test(start_paused = true)]
async fn autologout_closes_silently_without_update() {
    let start = tokio::time::Instant::now();
    let (out, log) = logged_in(cfg(), "DELE 1\r\n", false).await;
    assert_eq!(out, "+OK Message 1 deleted\r\n");
    assert!(start.elapsed() >= Duration::from_secs(600));
    assert!(log.commits.is_empty());
    assert_eq!(log.drops, 1);
}

#[tokio::test(start_paused = true)]
async fn retr_marks_seen_when_configured() {
    let mut c = cfg();
    c.retr_marks_seen = true;
    let input = "TOP 2 0\r\nRETR 3\r\nRETR 4\r\nQUIT\r\n";
    let (_, log) = logged_in(c, input, true).await;
    assert_eq!(log.seen, vec![2]);
    let (_, log) = after_login(input).await;
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

const CAPA_STLS_ONLY: &str = "+OK Capability list follows\r\nTOP\r\nUIDL\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION maildird\r\n.\r\n";
const BEGIN_TLS: &str = "+OK Begin TLS negotiation\r\n";

#[tokio::test(start_paused = true)]
async fn stls_resets_and_allows_plaintext_logins() {
    let mut c = cfg();
    c.plaintext_auth_allowed = false;
    let mut s = Client::with_stls(c);
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
    let (rest, log) = s.finish().await;
    assert_eq!(rest, "");
    assert_eq!(log.logins.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn stls_forgets_user_given_before() {
    let mut s = Client::with_stls(cfg());
    s.say("", GREET).await;
    s.say("USER alice\r\n", "+OK\r\n").await;
    s.say("STLS\r\n", BEGIN_TLS).await;
    s.say("PASS s3cret pass\r\n", "-ERR USER first\r\n").await;
    s.say("QUIT\r\n", BYE).await;
    assert_eq!(s.finish().await.0, "");
}

#[tokio::test(start_paused = true)]
async fn stls_with_pipelined_plaintext_is_refused() {
    let mut s = Client::with_stls(cfg());
    s.say("", GREET).await;
    // CVE-2011-0411 class: the USER/PASS after STLS must never run.
    s.send(format!("STLS\r\n{LOGIN}").as_bytes()).await;
    let up = s.up.clone();
    let (rest, log) = s.finish().await;
    assert_eq!(rest, "-ERR STLS refused: commands pipelined after STLS\r\n");
    assert_eq!(*up.count.lock().unwrap(), 0);
    assert!(log.logins.is_empty());
}
