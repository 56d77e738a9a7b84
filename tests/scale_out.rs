//! Scale-out: two maildird hosts share one mail root behind a real haproxy
//! sending PROXY v2. Thousands of messages through haproxy all arrive exactly
//! once, both hosts served, the POP3 lock holds across hosts, and an independent
//! Maildir reader sees one consistent store.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn loadgen() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_maildird"));
    bin.parent()
        .expect("target dir")
        .join("examples")
        .join("loadgen")
}

/// A config for host `name` on its own ports, sharing env's mail root and
/// users file; SMTP behind haproxy (proxy filter, loopback trusted).
fn host_config(env: &TestEnv, name: &str, smtp: u16, pop3: u16) -> PathBuf {
    let text = format!(
        "hostname = \"{name}\"\ndomains = [\"example.org\"]\nmail_root = \"mail\"\nusers_file = \"users\"\n\
         control_socket = \"{name}.sock\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n\
         [limits]\nmax_connections_per_ip = 1000\n\
         [filter.proxy]\ntrusted = [\"127.0.0.1\"]\n\
         [[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:{smtp}\"\nfilters = [\"proxy\"]\n\
         [[listener]]\nname = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:{pop3}\"\n"
    );
    let text = if nix::unistd::geteuid().is_root() {
        text
    } else {
        text.replace("user = \"nobody\"\ngroup = \"nogroup\"\n", "")
    };
    env.write_config(&format!("{name}.toml"), &text)
}

fn pop3_login(port: u16) -> (BufReader<TcpStream>, TcpStream, String) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut line = || {
        let mut l = String::new();
        r.read_line(&mut l).expect("read");
        l
    };
    line();
    w.write_all(format!("USER alice\r\nPASS {PW}\r\n").as_bytes())
        .expect("write");
    line();
    let reply = line();
    (r, w, reply)
}

#[test]
fn two_hosts_behind_haproxy_share_one_maildir_store() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let (s1, p1, s2, p2, front) = (
        free_port(),
        free_port(),
        free_port(),
        free_port(),
        free_port(),
    );
    let _a = Daemon::start_with(&env, &host_config(&env, "mx1.test", s1, p1));
    let _b = Daemon::start_with(&env, &host_config(&env, "mx2.test", s2, p2));
    let _h = haproxy(&env, front, &[s1, s2], "send-proxy-v2");
    // 3000 messages, 20 connections at a time, 10 per connection, pipelined.
    let o = run_timeout(
        Command::new(loadgen())
            .args([
                "smtp",
                &format!("127.0.0.1:{front}"),
                "--conc",
                "20",
                "--count",
                "3000",
                "--size",
                "1024",
            ])
            .args([
                "--per-conn",
                "10",
                "--pipelining",
                "--time-limit",
                "240",
                "--rcpt",
                "alice@example.org",
                "--maildir",
            ])
            .arg(env.maildir("alice")),
        b"",
        Duration::from_secs(250),
    );
    assert_ok(&o, "loadgen through haproxy");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("acked 3000") && out.contains("delivered 3000"),
        "{out}"
    );
    // Exactly once: one file per acknowledged message, none extra; both hosts wrote.
    let files = read_new(&env, "alice");
    assert_eq!(files.len(), 3000);
    let by = |h: &str| {
        files
            .iter()
            .filter(|(n, _)| n.contains(&format!(".{h},")))
            .count()
    };
    assert!(
        by("mx1.test") > 0 && by("mx2.test") > 0,
        "mx1 {} mx2 {}",
        by("mx1.test"),
        by("mx2.test")
    );
    assert_eq!(by("mx1.test") + by("mx2.test"), 3000);
    // The real client (127.0.0.1 here, not haproxy's own source) is in Received.
    assert!(String::from_utf8_lossy(&files[0].1).contains("([127.0.0.1])"));

    // The POP3 lock holds across hosts, both ways.
    let (_r, mut w, ok) = pop3_login(p1);
    assert!(ok.starts_with("+OK"), "{ok}");
    let (_, _, busy) = pop3_login(p2);
    assert!(busy.starts_with("-ERR [IN-USE]"), "{busy}");
    w.write_all(b"QUIT\r\n").expect("quit");
    drop(_r);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_r2, mut w2, r) = pop3_login(p2);
        if r.starts_with("+OK 3000 messages") || r.starts_with("+OK Logged in, 3000 messages") {
            let _ = w2.write_all(b"QUIT\r\n");
            break;
        }
        assert!(Instant::now() < deadline, "mx2 never got the mailbox: {r}");
    }
    // An independent reader (python's mailbox.Maildir) sees one consistent store.
    let out = python_ok(
        "import mailbox, sys\nm = mailbox.Maildir(sys.argv[1], create=False)\nprint(len(m), len(set(m.keys())))",
        &[&env.maildir("alice").to_string_lossy()],
    );
    assert_eq!(out.trim(), "3000 3000");
}

fn greeting_from(src: &str, port: u16) -> (Line, String) {
    let mut c = Line::connect_from(Some(src), port);
    let greeting = c.line();
    (c, greeting)
}

#[test]
fn per_ip_limits_apply_to_the_real_client_behind_proxy() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let (smtp, pop3, front) = (free_port(), free_port(), free_port());
    let cfg = host_config(&env, "mx1.test", smtp, pop3);
    let text = std::fs::read_to_string(&cfg).expect("config").replace(
        "max_connections_per_ip = 1000",
        "max_connections_per_ip = 1",
    );
    let cfg = env.write_config("one-per-ip.toml", &text);
    let _d = Daemon::start_with(&env, &cfg);
    let _h = haproxy(&env, front, &[smtp], "send-proxy-v2");
    // Every connection arrives from haproxy's 127.0.0.1; the cap of one per IP
    // applies to the clients named in the PROXY headers.
    let (_a, ga) = greeting_from("127.0.0.2", front);
    assert!(ga.starts_with("220"), "{ga}");
    let (_b, gb) = greeting_from("127.0.0.3", front);
    assert!(
        gb.starts_with("220"),
        "another client is not limited by the first: {gb}"
    );
    let (_c, gc) = greeting_from("127.0.0.2", front);
    assert!(
        gc.starts_with("421 4.7.0"),
        "a second connection from 127.0.0.2: {gc}"
    );
}
