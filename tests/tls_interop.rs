//! TLS interop against a standalone daemon: `openssl s_client -starttls smtp|pop3`,
//! curl `smtps://` and `pop3s://` on implicit-TLS listeners, swaks `--tls` with
//! AUTH PLAIN and LOGIN on a submission listener, and the STARTTLS plaintext
//! injection test (CVE-2011-0411 class) over a real socket. The test CA and the
//! server certificate are made by the openssl CLI in the test's temp dir.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// Ports and files of the TLS test world.
struct Tls {
    env: TestEnv,
    /// Submission (587-like) with STARTTLS.
    submission: u16,
    /// Implicit TLS submission (465-like).
    smtps: u16,
    /// Implicit TLS POP3 (995-like).
    pop3s: u16,
    ca: PathBuf,
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 with CN `cn`.
fn make_pki(env: &TestEnv, name: &str, cn: &str) -> PathBuf {
    let openssl = require_tool("openssl", "openssl");
    let dir = env.subdir(name);
    let ext = env.write_file(
        &format!("{name}/ext"),
        b"basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    );
    let steps: [Vec<&str>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=maildird test CA",
        ],
        vec![
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out", "srv.csr",
            "-subj",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "cert.pem",
            "-extfile",
        ],
    ];
    let subj = format!("/CN={cn}");
    for (i, step) in steps.iter().enumerate() {
        let mut cmd = Command::new(&openssl);
        cmd.args(step).current_dir(&dir);
        match i {
            1 => {
                cmd.arg(&subj);
            }
            2 => {
                cmd.arg(&ext);
            }
            _ => {}
        }
        assert_ok(&run(&mut cmd, b""), "openssl");
    }
    dir
}

impl Tls {
    fn new() -> Tls {
        let env = TestEnv::new();
        add_user(&env, "alice", PW);
        let pki = make_pki(&env, "pki", "maildird-tls-test");
        let (submission, smtps, pop3s) = (free_port(), free_port(), free_port());
        let base = env.config_toml(
            "mx.test",
            &format!("127.0.0.1:{}", env.smtp_port),
            &format!("127.0.0.1:{}", env.pop3_port),
            "control.sock",
        );
        let base = base
            .replace(
                "protocol = \"smtp\"\n",
                "protocol = \"smtp\"\nstarttls = true\n",
            )
            .replace(
                "protocol = \"pop3\"\n",
                "protocol = \"pop3\"\nstarttls = true\n",
            );
        let cfg = format!(
            "{base}\n\
             [[listener]]\nname = \"submission\"\nprotocol = \"submission\"\n\
             bind = \"127.0.0.1:{submission}\"\nstarttls = true\n\n\
             [[listener]]\nname = \"submissions\"\nprotocol = \"submission\"\n\
             bind = \"127.0.0.1:{smtps}\"\nfilters = [\"tls\"]\n\n\
             [[listener]]\nname = \"pop3s\"\nprotocol = \"pop3\"\n\
             bind = \"127.0.0.1:{pop3s}\"\nfilters = [\"tls\"]\n\n\
             [tls]\ncert = \"pki/cert.pem\"\nkey = \"pki/key.pem\"\n"
        );
        env.write_config("maildird.toml", &cfg);
        Tls {
            env,
            submission,
            smtps,
            pop3s,
            ca: pki.join("ca.pem"),
        }
    }

    fn ca(&self) -> &str {
        self.ca.to_str().expect("utf-8 path")
    }
}

/// `openssl s_client -starttls PROTO`, sending `input` after the handshake and
/// reading until the server closes.
fn s_client(t: &Tls, port: u16, proto: &str, input: &str) -> Output {
    let openssl = require_tool("openssl", "openssl");
    run_timeout(
        Command::new(openssl)
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-starttls", proto, "-CAfile", t.ca()])
            .args(["-verify_return_error", "-verify_hostname", "localhost"])
            .args(["-crlf", "-ign_eof"]),
        input.as_bytes(),
        WAIT,
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn openssl_starttls_smtp_then_ehlo_and_delivery() {
    let t = Tls::new();
    let _d = Daemon::start(&t.env);
    let o = s_client(
        &t,
        t.env.smtp_port,
        "smtp",
        "EHLO after.test\nMAIL FROM:<s@client.test>\nRCPT TO:<alice@example.org>\nDATA\nSubject: over starttls\n\nhello\n.\nQUIT\n",
    );
    assert_ok(&o, "openssl s_client -starttls smtp");
    let out = stdout(&o);
    assert!(
        out.contains("CN = maildird-tls-test"),
        "subject\n{}",
        show(&o)
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{}", show(&o));
    // The EHLO after the handshake no longer offers STARTTLS.
    assert!(out.contains("250 CHUNKING"), "{}", show(&o));
    assert!(!out.contains("STARTTLS"), "{}", show(&o));
    assert!(out.contains("250 2.0.0 Ok: delivered"), "{}", show(&o));
    assert!(out.contains("221 2.0.0 Bye"), "{}", show(&o));
    let files = read_new(&t.env, "alice");
    assert_eq!(files.len(), 1);
    let text = String::from_utf8_lossy(&files[0].1);
    assert!(text.contains("with ESMTPS id"), "{text}");
    assert!(text.contains("from after.test"), "{text}");
}

#[test]
fn openssl_starttls_pop3_then_login() {
    let t = Tls::new();
    let _d = Daemon::start(&t.env);
    deliver(
        t.env.smtp_port,
        &["alice@example.org"],
        &message("for pop3", "alice@example.org"),
    );
    let o = s_client(
        &t,
        t.env.pop3_port,
        "pop3",
        &format!("CAPA\nUSER alice\nPASS {PW}\nSTAT\nQUIT\n"),
    );
    assert_ok(&o, "openssl s_client -starttls pop3");
    let out = stdout(&o);
    assert!(
        out.contains("CN = maildird-tls-test"),
        "subject\n{}",
        show(&o)
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{}", show(&o));
    assert!(out.contains("+OK Logged in, 1 messages"), "{}", show(&o));
    assert!(out.contains("+OK maildird signing off"), "{}", show(&o));
    // After STLS, CAPA does not offer it again.
    assert!(out.contains("IMPLEMENTATION maildird"), "{}", show(&o));
    assert!(!out.contains("\nSTLS"), "{}", show(&o));
}

#[test]
fn curl_smtps_submission_and_pop3s() {
    let t = Tls::new();
    let _d = Daemon::start(&t.env);
    let curl = require_tool("curl", "curl");
    let msg = message("curl smtps", "alice@example.org");
    let file = t.env.write_file("msg.eml", &msg);
    let o = run(
        Command::new(&curl)
            .args(["-sS", "--cacert", t.ca(), "--user"])
            .arg(format!("alice:{PW}"))
            .args([
                "--mail-from",
                "alice@example.org",
                "--mail-rcpt",
                "alice@example.org",
            ])
            .arg("--upload-file")
            .arg(&file)
            .arg(format!("smtps://localhost:{}", t.smtps)),
        b"",
    );
    assert_ok(&o, "curl smtps");
    let files = read_new(&t.env, "alice");
    assert_eq!(files.len(), 1);
    let text = String::from_utf8_lossy(&files[0].1);
    assert!(text.contains("with ESMTPSA id"), "{text}");
    assert!(text.contains("Subject: curl smtps"), "{text}");

    let o = run(
        Command::new(&curl)
            .args(["-sS", "--cacert", t.ca(), "--user"])
            .arg(format!("alice:{PW}"))
            .arg(format!("pop3s://localhost:{}/1", t.pop3s)),
        b"",
    );
    assert_ok(&o, "curl pop3s RETR");
    assert_eq!(
        o.stdout,
        to_crlf(&files[0].1),
        "pop3s RETR differs from the file"
    );

    // Without the CA, curl refuses the certificate: it really is TLS, and ours.
    let o = run(
        Command::new(&curl)
            .args(["-sS", "--user"])
            .arg(format!("alice:{PW}"))
            .arg(format!("pop3s://localhost:{}/1", t.pop3s)),
        b"",
    );
    assert!(!o.status.success(), "curl without --cacert\n{}", show(&o));
}

/// swaks against the STARTTLS submission listener.
fn swaks(t: &Tls, args: &[&str]) -> Output {
    let swaks = require_tool("swaks", "swaks");
    run(
        Command::new(swaks)
            .args(["--server", "127.0.0.1", "--port"])
            .arg(t.submission.to_string())
            .args(["--helo", "client.test", "--from", "alice@example.org"])
            .args(["--to", "alice@example.org", "--tls", "--tls-verify"])
            .args(["--tls-ca-path", t.ca(), "--tls-sni", "localhost"])
            .args(["--auth-user", "alice"])
            .args(args),
        b"",
    )
}

fn server_said(out: &Output, text: &str) -> bool {
    stdout(out).lines().any(|l| {
        (l.starts_with("<-") || l.starts_with("<~") || l.starts_with("<**")) && l.contains(text)
    })
}

#[test]
fn swaks_tls_auth_plain_and_login_on_submission() {
    let t = Tls::new();
    let d = Daemon::start(&t.env);
    for mech in ["PLAIN", "LOGIN"] {
        let o = swaks(&t, &["--auth", mech, "--auth-password", PW]);
        assert_ok(&o, &format!("swaks --tls --auth {mech}"));
        assert!(
            server_said(&o, "220 2.0.0 Ready to start TLS"),
            "{}",
            show(&o)
        );
        assert!(server_said(&o, "235 2.7.0"), "{}", show(&o));
    }
    let files = read_new(&t.env, "alice");
    assert_eq!(files.len(), 2);
    for (_, f) in &files {
        let text = String::from_utf8_lossy(f);
        assert!(text.contains("with ESMTPSA id"), "{text}");
    }
    // A wrong password: 535, nothing delivered.
    let o = swaks(
        &t,
        &["--auth", "PLAIN", "--auth-password", "wrong-password"],
    );
    assert!(!o.status.success(), "{}", show(&o));
    assert!(server_said(&o, "535 5.7.8"), "{}", show(&o));
    assert_eq!(read_new(&t.env, "alice").len(), 2);
    // Without AUTH, submission refuses MAIL.
    let swaks_bin = require_tool("swaks", "swaks");
    let o = run(
        Command::new(swaks_bin)
            .args(["--server", "127.0.0.1", "--port"])
            .arg(t.submission.to_string())
            .args(["--from", "alice@example.org", "--to", "alice@example.org"])
            .args(["--tls", "--tls-ca-path", t.ca()]),
        b"",
    );
    assert!(
        server_said(&o, "530 5.7.0 Authentication required"),
        "{}",
        show(&o)
    );
    // Secrets never reach the log (README, Security).
    let log = d.log();
    assert!(log.contains("smtp login"), "{log}");
    assert!(!log.contains(PW), "{log}");
    assert!(!log.contains("wrong-password"), "{log}");
}

#[test]
fn starttls_injection_is_refused_and_state_is_reset() {
    let t = Tls::new();
    let _d = Daemon::start(&t.env);
    let out = python_ok(
        r#"
import socket, ssl, sys
port, pop3_port, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def read_reply(f):
    lines = []
    while True:
        l = f.readline()
        if not l:
            raise SystemExit('EOF while reading a reply; got %r' % lines)
        lines.append(l)
        if l[3:4] != b'-':
            return b''.join(lines)

def read_all(s):
    data = b''
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return data
        data += chunk

# 1. STARTTLS and RSET in one packet: refused, RSET never answered, closed.
s = socket.create_connection(('127.0.0.1', port), timeout=20)
f = s.makefile('rb')
assert read_reply(f).startswith(b'220 '), 'greeting'
s.sendall(b'EHLO inject.test\r\n')
assert b'STARTTLS' in read_reply(f), 'STARTTLS advertised'
s.sendall(b'STARTTLS\r\nRSET\r\n')
rest = f.read()
assert rest.startswith(b'454 4.7.0'), rest
assert b'250' not in rest, rest
print('SMTP-REFUSED')

# 2. A clean STARTTLS: after the handshake the session starts over.
ctx = ssl.create_default_context(cafile=ca)
s = socket.create_connection(('127.0.0.1', port), timeout=20)
f = s.makefile('rb')
read_reply(f)
s.sendall(b'EHLO inject.test\r\n')
read_reply(f)
s.sendall(b'STARTTLS\r\n')
assert read_reply(f).startswith(b'220 2.0.0'), 'ready'
t = ctx.wrap_socket(s, server_hostname='localhost')
tf = t.makefile('rb')
t.sendall(b'MAIL FROM:<a@b.test>\r\n')
r = read_reply(tf)
assert r.startswith(b'503 5.5.1'), r
t.sendall(b'EHLO again.test\r\n')
r = read_reply(tf)
assert b'STARTTLS' not in r, r
t.sendall(b'QUIT\r\n')
assert read_reply(tf).startswith(b'221'), 'bye'
print('SMTP-RESET')

# 3. POP3: STLS with USER pipelined behind it.
s = socket.create_connection(('127.0.0.1', pop3_port), timeout=20)
f = s.makefile('rb')
assert f.readline().startswith(b'+OK'), 'greeting'
s.sendall(b'STLS\r\nUSER alice\r\n')
rest = f.read()
assert rest.startswith(b'-ERR'), rest
assert b'+OK' not in rest, rest
print('POP3-REFUSED')
"#,
        &[
            &t.env.smtp_port.to_string(),
            &t.env.pop3_port.to_string(),
            t.ca(),
        ],
    );
    for step in ["SMTP-REFUSED", "SMTP-RESET", "POP3-REFUSED"] {
        assert!(out.contains(step), "{out}");
    }
}

#[test]
fn bad_certificate_path_is_a_config_error() {
    let t = Tls::new();
    let cfg = std::fs::read_to_string(t.env.config())
        .expect("config")
        .replace("pki/cert.pem", "pki/missing.pem");
    let path = t.env.write_config("bad.toml", &cfg);
    let o = run_timeout(
        Command::new(bin()).arg("serve").arg("-c").arg(&path),
        b"",
        Duration::from_secs(20),
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("missing.pem"),
        "{}",
        show(&o)
    );
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let t = Tls::new();
    let mut d = Daemon::start(&t.env);
    let openssl = require_tool("openssl", "openssl");
    let subject = |ca: &str| {
        let o = run_timeout(
            Command::new(&openssl)
                .args(["s_client", "-connect"])
                .arg(format!("127.0.0.1:{}", t.pop3s))
                .args(["-CAfile", ca, "-verify_return_error", "-crlf", "-ign_eof"]),
            b"QUIT\n",
            WAIT,
        );
        assert_ok(&o, "openssl s_client pop3s");
        stdout(&o)
    };
    assert!(subject(t.ca()).contains("CN = maildird-tls-test"));
    // A session that is open across the reload.
    let mut py = Command::new(require_tool("python3", "python3"));
    py.arg("-c")
        .arg(
            r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=20), server_hostname='localhost')
f = s.makefile('rb')
assert f.readline().startswith(b'+OK')
print('OPEN', flush=True)
sys.stdin.readline()
s.sendall(b'NOOP\r\n')
r = f.readline()
assert r.startswith(b'-ERR') or r.startswith(b'+OK'), r
s.sendall(b'QUIT\r\n')
assert f.readline().startswith(b'+OK'), 'quit'
print('SURVIVED', flush=True)
"#,
        )
        .arg(t.pop3s.to_string())
        .arg(t.ca())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = py.spawn().expect("python3");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).expect("read");
    assert_eq!(line.trim(), "OPEN");

    let fresh = make_pki(&t.env, "pki2", "maildird-reloaded");
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(fresh.join(f), t.env.path().join("pki").join(f)).expect("copy");
    }
    give_to_daemon_user(&t.env.path().join("pki"));
    signal(d.pid(), "HUP");
    d.wait_stderr("reloaded the TLS certificate");
    let new_ca = fresh.join("ca.pem");
    assert!(subject(new_ca.to_str().expect("utf-8")).contains("CN = maildird-reloaded"));

    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"go\n").expect("write");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read");
    assert!(child.wait().expect("wait").success(), "{rest}");
    assert!(rest.contains("SURVIVED"), "{rest}");
}
