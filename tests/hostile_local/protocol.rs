//! Security issue 12, black box: STARTTLS over a filter that may hold input
//! back is a config error everywhere the config is read; an absurd BDAT before
//! MAIL gets its replies and a closed connection; a body line `\r.` and other
//! CR/dot mixes reach POP3 clients, strict and lenient, as the same lines and
//! with LIST sizes equal to what RETR sends.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

/// A self-signed P-256 certificate and key as `cert.pem` / `key.pem` in the env.
fn self_signed(env: &TestEnv) {
    let openssl = require_tool("openssl", "openssl");
    let o = run(
        Command::new(openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "key.pem",
            ])
            .args(["-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost"])
            .current_dir(env.path()),
        b"",
    );
    assert_ok(&o, "openssl req -x509");
}

/// The env's config with `listener_lines` added to the smtp and pop3
/// listeners, a `[tls]` section and an exec filter running cat.
fn config_with(env: &TestEnv, name: &str, smtp: &str, pop3: &str) -> PathBuf {
    let cat = require_tool("cat", "coreutils");
    let text = std::fs::read_to_string(env.config())
        .expect("config")
        .replace(
            "protocol = \"smtp\"\n",
            &format!("protocol = \"smtp\"\n{smtp}"),
        )
        .replace(
            "protocol = \"pop3\"\n",
            &format!("protocol = \"pop3\"\n{pop3}"),
        )
        + &format!(
            "\n[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
             [filter.exec.rot]\ncommand = [\"{}\"]\n",
            cat.display()
        );
    env.write_config(name, &text)
}

fn check_config(cfg: &Path) -> std::process::Output {
    maildird(cfg, &["check-config"], b"")
}

/// EHLO and QUIT through implicit TLS and raw DEFLATE (python's ssl and zlib).
fn tls_zlib_ehlo(port: u16) {
    let out = python_ok(
        r#"
import socket, ssl, sys, zlib
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=20))
c = zlib.compressobj(6, zlib.DEFLATED, -15)
d = zlib.decompressobj(-15)
buf = b''
def send(b):
    s.sendall(c.compress(b) + c.flush(zlib.Z_SYNC_FLUSH))
def line():
    global buf
    for _ in range(1000):
        if b'\n' in buf:
            l, buf = buf.split(b'\n', 1)
            return l.decode()
        data = s.recv(4096)
        if not data:
            raise SystemExit('closed by the server')
        buf += d.decompress(data)
    raise SystemExit('no line')
def reply():
    for _ in range(100):
        l = line()
        if l[3:4] != '-':
            return l
    raise SystemExit('endless reply')
g = reply(); assert g.startswith('220'), g
send(b'EHLO client.test\r\n'); r = reply(); assert r.startswith('250'), r
send(b'QUIT\r\n'); r = reply(); assert r.startswith('221'), r
print('OK')
"#,
        &[&port.to_string()],
    );
    assert_eq!(out.trim(), "OK");
}

#[test]
fn starttls_over_a_buffering_filter_is_refused_by_check_config_serve_and_reload() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    self_signed(&env);
    // (config, the listener and filter the error must name)
    let bad = [
        (
            config_with(
                &env,
                "zlib.toml",
                "filters = [\"zlib\"]\nstarttls = true\n",
                "",
            ),
            "\"smtp\"",
            "\"zlib\"",
            "[\"tls\", \"zlib\"]",
        ),
        (
            config_with(
                &env,
                "exec.toml",
                "",
                "filters = [\"log\", \"exec.rot\"]\nstarttls = true\n",
            ),
            "\"pop3\"",
            "\"exec.rot\"",
            "[\"tls\", \"log\", \"exec.rot\"]",
        ),
    ];
    for (cfg, listener, filter, implicit) in &bad {
        let o = check_config(cfg);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{}", show(&o));
        assert!(
            err.contains(&format!(
                "listener {listener}: starttls = true cannot be used with filter {filter}"
            )) && err.contains(&format!("filters = {implicit} without starttls")),
            "{}",
            show(&o)
        );
        // `serve` refuses it the same way, before listening.
        let o = run(Command::new(bin()).arg("serve").arg("-c").arg(cfg), b"");
        assert_eq!(o.status.code(), Some(2), "{}", show(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(filter),
            "{}",
            show(&o)
        );
    }
    // Implicit TLS under zlib is the way, and log alone may stay under STARTTLS.
    let good = config_with(
        &env,
        "implicit.toml",
        "filters = [\"tls\", \"zlib\"]\n",
        "filters = [\"log\"]\nstarttls = true\n",
    );
    assert_ok(&check_config(&good), "check-config with tls + zlib");
    let mut d = Daemon::start_with(&env, &good);
    tls_zlib_ehlo(env.smtp_port);
    // SIGHUP with the bad config: refused, the running config stays.
    std::fs::copy(&bad[0].0, &good).expect("copy the bad config over");
    signal(d.pid(), "HUP");
    let line = d.wait_stderr("reload: bad filters");
    assert!(line.contains("zlib") && line.contains("starttls"), "{line}");
    tls_zlib_ehlo(env.smtp_port);
}

#[test]
fn absurd_bdat_before_mail_is_answered_and_closed_and_the_daemon_serves_on() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let too_large = "421 4.7.0 mx.test Error: BDAT chunk too large to skip; closing\r\n";
    // Before EHLO, after EHLO, and with chunk bytes pipelined behind it.
    for (greet, junk, first) in [
        (false, 0, "503 5.5.1 Error: send HELO/EHLO first\r\n"),
        (true, 0, "503 5.5.1 Error: need MAIL command\r\n"),
        (true, 64 * 1024, "503 5.5.1 Error: need MAIL command\r\n"),
    ] {
        let mut c = if greet {
            Line::smtp_ready(env.smtp_port)
        } else {
            let mut c = Line::connect(env.smtp_port);
            assert!(c.reply().starts_with("220"));
            c
        };
        let mut bytes = b"BDAT 99999999999999 LAST\r\n".to_vec();
        bytes.resize(bytes.len() + junk, b'x');
        c.send(&bytes);
        assert_eq!(c.line(), first);
        assert_eq!(c.line(), too_large);
        assert_eq!(c.line(), "", "the connection must be closed");
    }
    // A small chunk before MAIL is read away: its QUIT is data, not a command.
    let mut c = Line::smtp_ready(env.smtp_port);
    assert_eq!(
        c.cmd("BDAT 6 LAST\r\nQUIT\r\n"),
        "503 5.5.1 Error: need MAIL command\r\n"
    );
    assert_eq!(c.cmd("NOOP\r\n"), "250 2.0.0 Ok\r\n");
    assert_eq!(c.cmd("QUIT\r\n"), "221 2.0.0 Bye\r\n");
    // Another client is served as usual.
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("after the absurd chunk", "alice@example.org"),
    );
    assert_eq!(read_new(&env, "alice").len(), 1);
}

/// The headers every test message starts with (after ours: Return-Path, Received...).
const HEAD: &str = "From: a@example.net\r\nTo: alice@example.org\r\n";

/// (how it is sent, the body on the wire after HEAD, the lines a POP3 client
/// must get from `From:` on). A lone CR is a line end; a dot after it is text.
fn messages() -> Vec<(&'static str, Vec<u8>, Vec<&'static str>)> {
    let data_body = b"Subject: cr dot data\r\n\r\nbefore\r\n\r.\r\na\r.\r\n\r..\r\n..\r\n...x\r\n\
bare\rcr\r\ncr at end\r\r\n\r\r\nlf\n.x\r\nlast\r\n"
        .to_vec();
    let data_lines = vec![
        "Subject: cr dot data",
        "",
        "before",
        "",
        ".",
        "a",
        ".",
        "",
        "..",
        ".",
        "..x",
        "bare",
        "cr",
        "cr at end",
        "",
        "",
        "",
        "lf",
        ".x",
        "last",
    ];
    let bdat_body =
        b"Subject: cr dot bdat\r\n\r\n\r.\r\n.\r\n..\r\na\r.\r\nno newline at end".to_vec();
    let bdat_lines = vec![
        "Subject: cr dot bdat",
        "",
        "",
        ".",
        ".",
        "..",
        "a",
        ".",
        "no newline at end",
    ];
    vec![
        ("DATA", data_body, data_lines),
        ("BDAT", bdat_body, bdat_lines),
    ]
}

/// POP3 from python: poplib (lines split at LF, CRLF stripped) and a lenient
/// reader that splits at CR, LF or CRLF, which must find the end of each RETR
/// at the same place (its next line is the reply to NOOP).
const POP3_READERS: &str = r#"
import poplib, socket, sys
port, pw = int(sys.argv[1]), sys.argv[2]
p = poplib.POP3('127.0.0.1', port, timeout=20)
p.user('alice'); p.pass_(pw)
listing = [tuple(map(int, e.split())) for e in p.list()[1]]
for n, size in listing:
    resp, lines, octets = p.retr(n)
    print('M', n, size, octets)
    for l in lines:
        print('P', l.hex())
p.quit()
s = socket.create_connection(('127.0.0.1', port), timeout=20)
f = s.makefile('rb')
def lenient():
    out = b''
    for _ in range(100000):
        b = f.read(1)
        if not b:
            raise SystemExit('closed by the server')
        if b == b'\n':
            return out
        if b == b'\r':
            if f.peek(1)[:1] == b'\n':
                f.read(1)
            return out
        out += b
    raise SystemExit('endless line')
assert lenient().startswith(b'+OK')
for cmd in (b'USER alice', b'PASS ' + pw.encode()):
    s.sendall(cmd + b'\r\n'); r = lenient(); assert r.startswith(b'+OK'), r
for n, size in listing:
    s.sendall(b'RETR %d\r\n' % n)
    r = lenient(); assert r.startswith(b'+OK'), r
    for _ in range(10000):
        l = lenient()
        if l == b'.':
            break
        print('L', (l[1:] if l.startswith(b'.') else l).hex())
    s.sendall(b'NOOP\r\n')
    print('N', lenient().decode())
s.sendall(b'QUIT\r\n'); lenient()
"#;

/// One message as `POP3_READERS` saw it.
#[derive(Debug, Default)]
struct Retr {
    list: u64,
    /// poplib's count of the octets RETR sent (dot-stuffing undone).
    octets: u64,
    /// poplib's lines.
    strict: Vec<String>,
    /// The lenient reader's lines (unstuffed).
    lenient: Vec<String>,
    /// The reply the lenient reader got to NOOP after the RETR.
    noop: String,
}

fn parse_readers(out: &str) -> Vec<Retr> {
    let hex = |h: &str| -> String {
        let bytes: Vec<u8> = (0..h.len() / 2)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let mut msgs: Vec<Retr> = Vec::new();
    let mut lenient_at = 0;
    for l in out.lines() {
        let (tag, rest) = l.split_once(' ').unwrap_or((l, ""));
        match tag {
            "M" => {
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().expect("n")).collect();
                msgs.push(Retr {
                    list: v[1],
                    octets: v[2],
                    ..Retr::default()
                });
            }
            "P" => msgs.last_mut().expect("M first").strict.push(hex(rest)),
            "L" => msgs[lenient_at].lenient.push(hex(rest)),
            "N" => {
                msgs[lenient_at].noop = rest.to_string();
                lenient_at += 1;
            }
            _ => panic!("unexpected output {l:?}\n{out}"),
        }
    }
    assert_eq!(lenient_at, msgs.len(), "{out}");
    msgs
}

#[test]
fn cr_dot_lines_reach_pop3_clients_as_stored_with_exact_sizes() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    for (how, body, _) in messages() {
        let mut c = Line::smtp_ready(env.smtp_port);
        assert!(c.cmd("MAIL FROM:<a@example.net>\r\n").starts_with("250"));
        assert!(c.cmd("RCPT TO:<alice@example.org>\r\n").starts_with("250"));
        let mut msg = HEAD.as_bytes().to_vec();
        msg.extend_from_slice(&body);
        if how == "DATA" {
            assert!(c.cmd("DATA\r\n").starts_with("354"));
            msg.extend_from_slice(b".\r\n");
            assert!(c.cmd(&msg).starts_with("250 2.0.0"), "{how}");
        } else {
            // Two chunks, cut between a CR and its LF.
            let cut = msg.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 1;
            let (a, b) = msg.split_at(cut);
            let mut first = format!("BDAT {}\r\n", a.len()).into_bytes();
            first.extend_from_slice(a);
            assert!(c.cmd(&first).starts_with("250 2.0.0"), "{how}");
            let mut last = format!("BDAT {} LAST\r\n", b.len()).into_bytes();
            last.extend_from_slice(b);
            assert!(c.cmd(&last).starts_with("250 2.0.0"), "{how}");
        }
        assert!(c.cmd("QUIT\r\n").starts_with("221"));
    }
    // Stored: no CR left, W= as counted by LIST below.
    let files = read_new(&env, "alice");
    assert_eq!(files.len(), 2);
    let mut w_sizes: Vec<u64> = Vec::new();
    for (name, bytes) in &files {
        assert!(!bytes.contains(&b'\r'), "{name}: {bytes:?}");
        let (_, w) = parse_maildir_name(name).unwrap_or_else(|| panic!("name {name}"));
        w_sizes.push(w);
    }
    let out = python_ok(POP3_READERS, &[&env.pop3_port.to_string(), PW]);
    // Per message: LIST size, poplib's octets and lines, the lenient lines, NOOP.
    let msgs = parse_readers(&out);
    assert_eq!(msgs.len(), 2, "{out}");
    w_sizes.sort_unstable();
    let mut list_sizes: Vec<u64> = msgs.iter().map(|m| m.list).collect();
    list_sizes.sort_unstable();
    assert_eq!(list_sizes, w_sizes, "LIST sizes are the W= of the names");
    let want = messages();
    for m in &msgs {
        assert_eq!(
            m.list, m.octets,
            "LIST size == octets RETR sent (unstuffed)"
        );
        assert_eq!(
            m.strict, m.lenient,
            "strict and lenient clients read the same lines"
        );
        assert!(
            m.noop.starts_with("+OK"),
            "RETR ended early: NOOP got {:?}",
            m.noop
        );
        let strict = &m.strict;
        let from = strict
            .iter()
            .position(|l| l == "From: a@example.net")
            .unwrap_or_else(|| panic!("no From: in {strict:?}"));
        let (_, _, lines) = want
            .iter()
            .find(|(_, _, lines)| {
                strict.get(from + 2).map(String::as_str) == lines.first().copied()
            })
            .unwrap_or_else(|| panic!("unknown message {strict:?}"));
        assert_eq!(strict[from + 1], "To: alice@example.org");
        assert_eq!(&strict[from + 2..], lines.as_slice(), "{strict:?}");
    }
}
