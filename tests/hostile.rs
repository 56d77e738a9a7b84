//! Hostile clients against the real daemon: slowloris, floods past the caps,
//! password guessing, and malformed input. Each gets a clear reply or a closed
//! connection; none crashes the daemon or touches a Maildir it should not.

mod common;

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn slowloris_is_cut_by_timeouts_while_a_normal_client_delivers() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = std::fs::read_to_string(env.config()).expect("config")
        + "\n[limits]\ncommand_timeout = \"2s\"\ngreeting_timeout = \"2s\"\nmax_connections_per_ip = 1000\n";
    let cfg = env.write_config("slow.toml", &cfg);
    let _d = Daemon::start_with(&env, &cfg);
    // 300 connections that each trickle a command one byte at a time, never
    // finishing the line.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", env.smtp_port)).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let start = Instant::now();
    let payload = b"EHLO slowly-but-never-finishing.example";
    let mut open = slow.len();
    let mut round = 0;
    // Bounded: at most 20 s.
    while open > 0 && start.elapsed() < Duration::from_secs(20) {
        open = 0;
        for s in &mut slow {
            let mut buf = [0u8; 512];
            let closed = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if !closed {
                let _ = s.write(&payload[round % payload.len()..][..1]);
                open += 1;
            }
        }
        if round == 2 {
            // Meanwhile a normal client delivers.
            deliver(
                env.smtp_port,
                &["alice@example.org"],
                &message("despite slowloris", "alice@example.org"),
            );
        }
        round += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        open,
        0,
        "{open} trickling connections still open after {:?}",
        start.elapsed()
    );
    assert_eq!(read_new(&env, "alice").len(), 1);
}

#[test]
fn a_connection_flood_past_the_caps_gets_421_and_memory_stays_bounded() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = std::fs::read_to_string(env.config()).expect("config")
        + "\n[limits]\nmax_connections = 100\nmax_connections_per_ip = 100\n";
    let cfg = env.write_config("flood.toml", &cfg);
    let d = Daemon::start_with(&env, &cfg);
    let before = rss_kib(d.pid());
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let mut c = Line::connect(env.smtp_port);
        let r = c.reply();
        if r.starts_with("421 4.7.0") {
            refused += 1;
        } else {
            assert!(r.starts_with("220"), "{r}");
            held.push(c);
        }
    }
    assert_eq!(held.len(), 100);
    assert_eq!(refused, 900);
    let after = rss_kib(d.pid());
    // 100 idle sessions and 900 refusals: well under 32 MiB more.
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Line::connect(env.smtp_port);
        if c.reply().starts_with("220") {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed");
    }
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("after the flood", "alice@example.org"),
    );
}

#[test]
fn password_guessing_is_slowed_and_logged() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = std::fs::read_to_string(env.config()).expect("config")
        + "\n[limits]\nauth_failure_delay = 0\nauth_failures = 100\n";
    let cfg = env.write_config("guess.toml", &cfg);
    let mut d = Daemon::start_with(&env, &cfg);
    let mut c = Line::connect(env.pop3_port);
    assert!(c.line().starts_with("+OK"));
    let mut times = Vec::new();
    for i in 0..6 {
        let t = Instant::now();
        c.send(format!("USER alice\r\nPASS guess-{i}\r\n").as_bytes());
        assert!(c.line().starts_with("+OK"));
        let r = c.line();
        assert!(r.starts_with("-ERR [AUTH]"), "{r}");
        times.push(t.elapsed());
    }
    // Two free failures, then a growing back-off (0.5 s, 1 s, 2 s...).
    assert!(times[3] >= Duration::from_millis(500), "{times:?}");
    assert!(times[5] >= Duration::from_millis(2000), "{times:?}");
    for i in 0..6 {
        let _ = i;
        d.wait_stderr("authentication failure: protocol=pop3 ip=127.0.0.1 user=\"alice\"");
    }
}

#[test]
fn malformed_smtp_input_gets_clear_replies() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let mut c = Line::smtp_ready(env.smtp_port);
    let long = vec![b'A'; 5000];
    assert!(
        c.cmd([&long[..], b"\r\n"].concat())
            .starts_with("500 5.5.2")
    );
    assert!(c.cmd(b"NO\0OP\r\n").starts_with("500 5.5.2"));
    let r = c.cmd(b"MAIL FROM:<\xff\xfe@example.net>\r\n");
    assert!(r.starts_with("5"), "invalid UTF-8 sender: {r}");
    // A name that would climb out of mail_root: bad dot-atom syntax (RFC 5321
    // §4.1.2) is refused as such; quoted, it parses and is an unknown user.
    assert!(c.cmd(b"MAIL FROM:<a@example.net>\r\n").starts_with("250"));
    for (rcpt, want) in [
        (&b"RCPT TO:<../x@example.org>\r\n"[..], "501 5.1.3"),
        (b"RCPT TO:<\"../x\"@example.org>\r\n", "550 5.1.1"),
        (b"RCPT TO:<\"alice/../../x\"@example.org>\r\n", "550 5.1.1"),
    ] {
        let r = c.cmd(rcpt);
        assert!(
            r.starts_with(want),
            "{} -> {r}",
            String::from_utf8_lossy(rcpt)
        );
    }
    assert!(c.cmd(b"RSET\r\n").starts_with("250"));
    // A huge BDAT chunk is refused before it is read, and the connection closed
    // after a 421 (its bytes are not worth skipping).
    assert!(c.cmd(b"MAIL FROM:<a@example.net>\r\n").starts_with("250"));
    assert!(c.cmd(b"RCPT TO:<alice@example.org>\r\n").starts_with("250"));
    let r = c.cmd(b"BDAT 99999999999999 LAST\r\n");
    assert!(r.starts_with("552 5.3.4"), "{r}");
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    let mut rest = String::new();
    assert_eq!(
        c.r.read_line(&mut rest).expect("read"),
        0,
        "expected close, got {rest:?}"
    );
    // The daemon is fine: a normal delivery works, nothing escaped mail_root.
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("after the garbage", "alice@example.org"),
    );
    assert!(!env.path().join("x").exists() && !env.mail_root().join("..").join("x").exists());
    let entries: Vec<String> = std::fs::read_dir(env.mail_root())
        .expect("mail_root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, ["alice"]);
}

#[test]
fn ten_thousand_recipients_are_bounded() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let mut c = Line::smtp_ready(env.smtp_port);
    assert!(c.cmd(b"MAIL FROM:<a@example.net>\r\n").starts_with("250"));
    // Pipelined from a writer thread; the reader counts replies until the close.
    let mut w = c.w.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for i in 0..10_000 {
            if w.write_all(format!("RCPT TO:<alice+{i}@example.org>\r\n").as_bytes())
                .is_err()
            {
                return;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
    });
    let (mut ok, mut full, mut last) = (0, 0, String::new());
    loop {
        let mut l = String::new();
        if c.r.read_line(&mut l).unwrap_or(0) == 0 {
            break;
        }
        if l.starts_with("250") {
            ok += 1;
        } else if l.starts_with("452 4.5.3") {
            full += 1;
        }
        last = l;
    }
    writer.join().expect("writer");
    assert_eq!(ok, 1000, "max_recipients accepted");
    assert!(full >= 1, "the excess got 452 4.5.3");
    assert!(
        last.starts_with("421 4.7.0"),
        "then the error cap ends it: {last}"
    );
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("still serving", "alice@example.org"),
    );
}

#[test]
fn malformed_pop3_input_gets_err_and_the_session_goes_on() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let mut c = Line::connect(env.pop3_port);
    assert!(c.line().starts_with("+OK"));
    for bad in [
        &b"AUTH PLAIN !!!notbase64!!!\r\n"[..],
        b"LIST\0\r\n",
        b"RETR -1\r\n",
        b"\xff\xfe\r\n",
    ] {
        let r = c.cmd(bad);
        assert!(
            r.starts_with("-ERR"),
            "{:?} -> {r}",
            String::from_utf8_lossy(bad)
        );
    }
    let long = [&vec![b'X'; 1000][..], b"\r\n"].concat();
    assert!(c.cmd(&long).starts_with("-ERR"));
    c.send(b"USER ../x\r\n");
    c.line();
    c.send(format!("PASS {PW}\r\n").as_bytes());
    assert!(c.line().starts_with("-ERR [AUTH]"));
    assert!(c.cmd(b"CAPA\r\n").starts_with("+OK"), "the session goes on");
}
