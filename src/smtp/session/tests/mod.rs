//! The session tests: a fake backend that records what it is given, a fake
//! STARTTLS upgrade, and one test client that speaks to a session over an
//! in-memory stream. The tests, one file per command group, assert the exact
//! reply bytes.

use super::*;
use crate::smtp::backend::{BodySink, Envelope, Stored};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

mod auth;
mod bdat;
mod data;
mod envelope;
mod hello;
mod read_loop;
mod starttls;

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
        _env: &Envelope,
    ) -> impl Future<Output = Result<Vec<String>, Reply>> + Send {
        let local = address.split('@').next().unwrap_or("").to_lowercase();
        let r = if local.starts_with("unknown") {
            Err(Reply::new(
                550,
                "5.1.1",
                "Recipient address rejected: User unknown",
            ))
        } else {
            Ok(vec![local])
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
    fn id(&self) -> &str {
        "FAKEID"
    }

    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), Reply>> + Send {
        self.log.lock().unwrap().writes.push(bytes.len());
        self.body.extend_from_slice(bytes);
        std::future::ready(Ok(()))
    }

    fn commit(self) -> impl Future<Output = Result<Stored, Reply>> + Send {
        self.log
            .lock()
            .unwrap()
            .delivered
            .push((self.env, self.body));
        std::future::ready(Ok(Stored::default()))
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
        listener: "test".into(),
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

const GREETING: &str = "220 mx.test ESMTP maildird\r\n";
const EHLO_REPLY: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n\
    250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
const OK: &str = "250 2.0.0 Ok\r\n";
const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
const DELIVERED: &str = "250 2.0.0 Ok: delivered as FAKEID\r\n";
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

    /// MAIL FROM and one RCPT TO per recipient, pipelined; all accepted.
    async fn envelope(&mut self, from: &str, rcpts: &[&str]) {
        let (cmds, want) = envelope_script(from, rcpts);
        self.say(&cmds, &want).await;
    }

    /// The envelope and DATA, pipelined; all accepted, up to the `354`.
    async fn data(&mut self, from: &str, rcpts: &[&str]) {
        let (cmds, want) = envelope_script(from, rcpts);
        self.say(&format!("{cmds}DATA\r\n"), &format!("{want}{GO_AHEAD}"))
            .await;
    }

    /// A whole transaction: envelope and DATA pipelined, then `body` and the
    /// final dot; delivered.
    async fn transaction(&mut self, from: &str, rcpts: &[&str], body: &str) {
        self.data(from, rcpts).await;
        self.say(&format!("{body}.\r\n"), DELIVERED).await;
    }
}

/// The commands of an envelope and the replies that accept them.
fn envelope_script(from: &str, rcpts: &[&str]) -> (String, String) {
    let mut cmds = format!("MAIL FROM:<{from}>\r\n");
    let mut want = String::from(MAIL_OK);
    for rcpt in rcpts {
        cmds.push_str(&format!("RCPT TO:<{rcpt}>\r\n"));
        want.push_str(RCPT_OK);
    }
    (cmds, want)
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

fn submission_tls() -> SessionConfig {
    SessionConfig {
        tls: true,
        ..submission()
    }
}
