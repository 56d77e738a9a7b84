//! Transport filters end to end (README, transport filters): the real daemon with
//! `filters = [...]` on its listeners, driven by real peers: a python3 raw
//! DEFLATE peer (zlib, RFC 4978 framing), haproxy with send-proxy and
//! send-proxy-v2 (proxy), fetchmail and swaks through `maildird tunnel` (zlib,
//! exec with contrib/filters/xor.py), and the log filter's output after logins.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The env's config with `filters = [...]` on the smtp and pop3 listeners and
/// `extra` TOML appended.
fn filtered_env(smtp: &str, pop3: &str, extra: &str) -> (TestEnv, PathBuf) {
    let env = TestEnv::new();
    let base = env.config_toml(
        "mx.test",
        &format!("127.0.0.1:{}", env.smtp_port),
        &format!("127.0.0.1:{}", env.pop3_port),
        "control.sock",
    );
    let text = base
        .replace(
            "protocol = \"smtp\"\n",
            &format!("protocol = \"smtp\"\nfilters = [{smtp}]\n"),
        )
        .replace(
            "protocol = \"pop3\"\n",
            &format!("protocol = \"pop3\"\nfilters = [{pop3}]\n"),
        );
    let cfg = env.write_config("filtered.toml", &format!("{text}\n{extra}\n"));
    add_user(&env, "alice", PW);
    (env, cfg)
}

#[test]
fn python_raw_deflate_peer_delivers_byte_exact_through_zlib() {
    let (env, cfg) = filtered_env("\"zlib\"", "", "[filter.zlib]\nlevel = 9\n");
    let _d = Daemon::start_with(&env, &cfg);
    let msg = message("deflated", "alice@example.org");
    let path = env.write_file("msg.eml", &msg);
    let out = python_ok(
        r#"
import socket, sys, zlib
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(('127.0.0.1', port), timeout=20)
c = zlib.compressobj(9, zlib.DEFLATED, -15)
d = zlib.decompressobj(-15)
buf = b''
def reply():
    # Each reply must be decodable from what arrived so far (sync flush per reply).
    global buf
    while True:
        i = buf.find(b'\r\n')
        while i >= 0:
            line, buf = buf[:i], buf[i+2:]
            if line[3:4] != b'-':
                return line
            i = buf.find(b'\r\n')
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit('EOF while waiting for a reply')
        buf += d.decompress(chunk)
def send(data):
    s.sendall(c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))
def cmd(line, code):
    send(line + b'\r\n')
    r = reply()
    if not r.startswith(code):
        raise SystemExit('%r -> %r' % (line, r))
r = reply(); assert r.startswith(b'220'), r
cmd(b'EHLO client.test', b'250')
cmd(b'MAIL FROM:<sender@client.test>', b'250')
cmd(b'RCPT TO:<alice@example.org>', b'250')
cmd(b'DATA', b'354')
body = open(path, 'rb').read()
stuffed = b''.join((b'.' + l if l.startswith(b'.') else l) for l in body.splitlines(True))
send(stuffed + b'.\r\n')
r = reply(); assert r.startswith(b'250'), r
cmd(b'QUIT', b'221')
# The peer closes without a final DEFLATE block: the server must take it as EOF.
s.close()
print('SENT')
"#,
        &[&env.smtp_port.to_string(), &path.to_string_lossy()],
    );
    assert!(out.contains("SENT"), "{out}");
    assert_one_delivered(&env, "alice", SMTP_SENDER, &msg);
}

/// python3 smtplib from 127.0.0.2 (the "real client") to `port`.
fn deliver_from_127_0_0_2(port: u16, msg: &[u8], env: &TestEnv) {
    let path = env.write_file(&format!("m{}.eml", unique()), msg);
    let out = python_ok(
        r#"
import smtplib, sys
port, path = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20,
                  source_address=('127.0.0.2', 0)) as s:
    refused = s.sendmail('sender@client.test', ['alice@example.org'], open(path, 'rb').read())
    assert refused == {}, refused
print('SENT')
"#,
        &[&port.to_string(), &path.to_string_lossy()],
    );
    assert!(out.contains("SENT"), "{out}");
}

#[test]
fn haproxy_send_proxy_v1_and_v2_put_the_real_client_in_received() {
    let (env, cfg) = filtered_env(
        "\"proxy\", \"log\"",
        "",
        "[filter.proxy]\ntrusted = [\"127.0.0.1\"]\ntimeout = \"5s\"\n",
    );
    let mut d = Daemon::start_with(&env, &cfg);
    for (i, mode) in ["send-proxy", "send-proxy-v2"].into_iter().enumerate() {
        let port = free_port();
        let _h = haproxy(&env, port, &[env.smtp_port], mode);
        let msg = message(&format!("via haproxy {mode}"), "alice@example.org");
        deliver_from_127_0_0_2(port, &msg, &env);
        let files = read_new(&env, "alice");
        assert_eq!(files.len(), i + 1, "{mode}");
        let (_, body) = files
            .iter()
            .find(|(_, b)| b.windows(mode.len()).any(|w| w == mode.as_bytes()))
            .expect("the message");
        let text = String::from_utf8_lossy(body);
        let received = text
            .lines()
            .find(|l| l.starts_with("Received:"))
            .unwrap_or("");
        assert!(
            received.contains("([127.0.0.2])"),
            "{mode}: Received: does not name the real client: {received:?}\n{}",
            d.log()
        );
    }
    // Behind PROXY every line of a session names the real client once the
    // PROXY header has named it; lines before that name the balancer (`via`).
    let log = d.log();
    let sessions: Vec<String> = log
        .lines()
        .filter(|l| l.contains("message accepted"))
        .filter_map(|l| l.split("{session=").nth(1)?.split(' ').next())
        .map(str::to_string)
        .collect();
    assert_eq!(sessions.len(), 2, "{log}");
    for s in sessions {
        let tag = format!("{{session={s} ");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
        let real = lines
            .iter()
            .position(|l| l.contains("client=127.0.0.2:"))
            .expect("a line naming the real client");
        assert!(real <= 2, "the real client comes late: {lines:#?}");
        for l in &lines {
            assert!(l.contains("via=127.0.0.1:"), "{l}");
        }
        for l in &lines[real..] {
            assert!(l.contains("client=127.0.0.2:"), "{l}");
        }
        assert!(lines.len() > real + 3, "{lines:#?}");
    }
    // A PROXY header from a source not in `trusted` (127.0.0.2): closed unanswered.
    let mut s = socket_from_127_0_0_2(env.smtp_port);
    use std::io::{Read, Write};
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 4444 25\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "untrusted PROXY got an answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    d.wait_stderr("untrusted source refused");
    assert_eq!(read_new(&env, "alice").len(), 2);
}

/// A TCP connection to 127.0.0.1:`port` from 127.0.0.2.
fn socket_from_127_0_0_2(port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(
        &format!("127.0.0.1:{port}")
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.into()
}

#[test]
fn fetchmail_plugin_fetches_over_maildird_tunnel_with_zlib() {
    let (env, cfg) = filtered_env("", "\"zlib\"", "");
    let _d = Daemon::start_with(&env, &cfg);
    let msg = message("fetched through zlib", "alice@example.org");
    deliver(env.smtp_port, &["alice@example.org"], &msg);
    let fm = require_tool("fetchmail", "fetchmail");
    let home = env.subdir("fetchmail-home");
    let out = env.subdir("fetched");
    let rc = home.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\nset invisible\n\
             poll 127.0.0.1 with proto POP3 port {port} auth password\n\
             \tplugin \"{bin} tunnel -c {cfg} --filters zlib %h:%p\"\n\
             \tuser \"alice\" there with password \"{PW}\"\n\
             \toptions keep fetchall no rewrite sslproto ''\n\
             \tmda \"cat > {out}/msg.$$\"\n",
            port = env.pop3_port,
            bin = bin().display(),
            cfg = cfg.display(),
            out = out.display()
        ),
    )
    .unwrap();
    chmod(&rc, 0o600);
    let o = run(
        Command::new(fm)
            .env("FETCHMAILHOME", &home)
            .env("HOME", &home)
            .arg("--pidfile")
            .arg(home.join("fetchmail.pid"))
            .arg("--idfile")
            .arg(home.join("fetchids"))
            .args(["-v", "--nodetach", "-f"])
            .arg(&rc),
        b"",
    );
    assert_ok(&o, "fetchmail with plugin = maildird tunnel --filters zlib");
    let got: Vec<Vec<u8>> = read_files(&out).into_iter().map(|x| x.1).collect();
    let want: Vec<Vec<u8>> = read_new(&env, "alice").into_iter().map(|x| x.1).collect();
    assert_eq!(got.len(), 1, "{}", show(&o));
    assert!(
        got == want,
        "fetched message differs from the Maildir file\n{}",
        show(&o)
    );
}

#[test]
fn swaks_through_tunnel_and_an_exec_filter() {
    let xor = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/filters/xor.py"
    ))
    .expect("contrib/filters/xor.py");
    let (env, cfg) = filtered_env("\"exec.x\"", "", "");
    // The daemon may run as nobody: give it its own readable copy.
    let prog = env.write_file("xor.py", &xor);
    chmod(&prog, 0o755);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[filter.exec.x]\ncommand = [\"{}\", \"0x33\"]\n",
            prog.display()
        ),
    )
    .unwrap();
    let _d = Daemon::start_with(&env, &cfg);
    // Without the filter on the client side, the greeting is garbage.
    let mut raw = TcpStream::connect(("127.0.0.1", env.smtp_port)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(&mut raw, &mut first).unwrap();
    assert_eq!(first, [b'2' ^ 0x33, b'2' ^ 0x33, b'0' ^ 0x33]);
    drop(raw);
    let swaks = require_tool("swaks", "swaks");
    let msg = message("through exec", "alice@example.org");
    let o = run(
        Command::new(swaks)
            .arg("--pipe")
            .arg(format!(
                "{} tunnel -c {} --filters exec.x 127.0.0.1:{}",
                bin().display(),
                cfg.display(),
                env.smtp_port
            ))
            .args(["--helo", "client.test", "--from", SMTP_SENDER])
            .args(["--to", "alice@example.org"])
            .arg("--data")
            .arg(swaks_data(&env, &msg)),
        b"",
    );
    assert_ok(&o, "swaks --pipe maildird tunnel --filters exec.x");
    assert_one_delivered(&env, "alice", SMTP_SENDER, &msg);
}

#[test]
fn log_filter_shows_protocol_lines_but_never_the_password() {
    let (env, cfg) = filtered_env("\"log\"", "\"log\"", "[filter.log]\ncontent = true\n");
    let mut d = Daemon::start_with(&env, &cfg);
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("logged", "alice@example.org"),
    );
    let out = python_ok(
        r#"
import base64, poplib, sys
port, pw = int(sys.argv[1]), sys.argv[2]
p = poplib.POP3('127.0.0.1', port, timeout=20)
p.user('alice'); p.pass_(pw); print(p.stat()); p.quit()
tok = base64.b64encode(b'\0alice\0' + pw.encode()).decode()
p = poplib.POP3('127.0.0.1', port, timeout=20)
print(p._shortcmd('AUTH PLAIN ' + tok)); p.quit()
p = poplib.POP3('127.0.0.1', port, timeout=20)
r = p._shortcmd('AUTH PLAIN')
assert r.startswith(b'+'), r
print(p._shortcmd(tok)); p.quit()
print('DONE')
"#,
        &[&env.pop3_port.to_string(), PW],
    );
    assert!(out.contains("DONE"), "{out}");
    d.wait_stderr("to_peer=");
    // The third session's close line comes last.
    let deadline = Instant::now() + WAIT;
    while d.log().matches("to_peer=").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "byte counts missing:\n{}",
            d.log()
        );
        d.wait_stderr("to_peer=");
    }
    let log = d.log();
    for want in [
        "C: USER alice",
        "C: PASS ****",
        "C: AUTH PLAIN ****",
        "C: AUTH PLAIN",
        "S: + ",
        "C: ****",
        "S: +OK",
        "FROM:<sender@client.test>",
        "S: 250",
    ] {
        assert!(log.contains(want), "log lacks {want:?}:\n{log}");
    }
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for secret in [
        PW.to_string(),
        b64.encode(format!("\0alice\0{PW}")),
        b64.encode(PW),
    ] {
        assert!(
            !log.contains(&secret),
            "the log holds a secret {secret:?}:\n{log}"
        );
    }
}

#[test]
fn impossible_chains_are_config_errors() {
    let (env, cfg) = filtered_env("\"log\", \"proxy\"", "", "");
    // `serve` refuses to start (check-config does not build chains yet).
    let o = run(Command::new(bin()).args(["serve", "-c"]).arg(&cfg), b"");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("must be first"),
        "{}",
        show(&o)
    );
    drop(env);
    // The tunnel: a proxy filter on the client side is a usage error; a refused
    // connection a runtime failure.
    let missing = PathBuf::from("/nonexistent/maildird.toml");
    let o = run(
        Command::new(bin())
            .args(["tunnel", "-c"])
            .arg(&missing)
            .args(["--filters", "proxy", "127.0.0.1:1"]),
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let o = run(
        Command::new(bin())
            .args(["tunnel", "-c"])
            .arg(&missing)
            .args(["--filters", "zlib", &format!("127.0.0.1:{port}")]),
        b"",
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

#[test]
fn mutt_reads_pop3_over_maildird_tunnel_with_zlib() {
    let tmux_bin = require_tool("tmux", "tmux");
    let mutt = require_tool("mutt", "mutt");
    let (env, cfg) = filtered_env("", "\"zlib\"", "");
    let d = Daemon::start_with(&env, &cfg);
    for subject in ["first zlib message", "second zlib message"] {
        deliver(
            env.smtp_port,
            &["alice@example.org"],
            &message(subject, "alice@example.org"),
        );
    }
    let home = env.subdir("mutt-home");
    // mutt asks to create ~/Mail (its default `folder`) when it is missing.
    std::fs::create_dir_all(home.join("Mail")).unwrap();
    let muttrc = env.write_config(
        "muttrc",
        &format!(
            "set tunnel=\"{bin} tunnel -c {cfg} --filters zlib 127.0.0.1:{port}\"\n\
             set pop_pass=\"{PW}\"\n\
             set ssl_starttls=no\nset ssl_force_tls=no\n\
             set pop_delete=no\nset move=no\nset confirmappend=no\n\
             set header_cache=\"\"\nset message_cachedir=\"\"\n",
            bin = bin().display(),
            cfg = cfg.display(),
            port = env.pop3_port
        ),
    );
    let tmux = Tmux {
        bin: tmux_bin,
        sock: env.path().join("tmux.sock"),
    };
    tmux.start(&format!(
        "HOME={} TERM=screen exec {} -n -F {} -f pop://alice@127.0.0.1/",
        home.display(),
        mutt.display(),
        muttrc.display()
    ));
    tmux.wait_screen("the POP3 message list", |s| {
        s.contains("first zlib message") && s.contains("second zlib message")
    });
    tmux.keys(&["Enter"]);
    tmux.wait_screen("the pager (RETR through zlib)", |s| {
        s.contains("leading dot line") && s.contains("8-bit body")
    });
    tmux.keys(&["q"]);
    tmux.wait_screen("the index again", |s| !s.contains("leading dot line"));
    tmux.keys(&["q"]);
    let deadline = Instant::now() + WAIT;
    while tmux.alive() {
        assert!(
            Instant::now() < deadline,
            "mutt did not quit:\n{}",
            tmux.capture().unwrap_or_default()
        );
        if let Some(s) = tmux.capture() {
            if s.contains("yes/no")
                || s.contains("no/yes")
                || s.contains("[no]")
                || s.contains("[yes]")
            {
                tmux.keys(&["n"]);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The session went through the zlib listener: a plain POP3 client cannot talk
    // to it (the greeting is DEFLATE data, not "+OK").
    let mut raw = TcpStream::connect(("127.0.0.1", env.pop3_port)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let mut first = [0u8; 3];
    std::io::Read::read_exact(&mut raw, &mut first).unwrap();
    assert_ne!(&first, b"+OK");
    assert!(d.log().contains("pop3 login"), "{}", d.log());
    assert_eq!(
        read_new(&env, "alice").len() + read_cur(&env, "alice").len(),
        2
    );
}
