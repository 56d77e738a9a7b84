//! Memory under a login flood, and per-network connection caps.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::*;

/// Failed logins in the flood, over `CONNECTIONS` parallel connections.
const LOGINS: usize = 100_000;
const CONNECTIONS: usize = 8;
/// The whole flood must finish within this (it takes a few seconds).
const FLOOD_LIMIT: Duration = Duration::from_secs(120);
/// What the flood may add to the daemon's RSS: the back-off table is capped
/// at about 20 MiB (`backend::throttle`), plus allocator slack per thread.
const RSS_GROWTH_KIB: u64 = 32 * 1024;

/// A unique user name of 1,000 to 3,000 bytes (POP3 AUTH PLAIN's response
/// line takes up to 4,096 bytes, so about 3,000 bytes of name).
fn flood_name(i: usize) -> String {
    let len = 1000 + (i * 7919) % 2001;
    let mut s = format!("Flood{i:07}-");
    s.extend(std::iter::repeat_n('x', len - s.len()));
    s
}

/// POP3 `AUTH PLAIN` with the response on its own line (RFC 5034 §4), for
/// `count` unique names starting at `first`, pipelined on one connection; then
/// QUIT. Returns the number of `-ERR [AUTH]` replies.
fn flood_connection(port: u16, first: usize, count: usize, deadline: Instant) -> usize {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut greeting = String::new();
    r.read_line(&mut greeting).expect("greeting");
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut w = BufWriter::with_capacity(64 * 1024, w);
        let b64 = base64::engine::general_purpose::STANDARD;
        for i in first..first + count {
            let plain = format!("\0{}\0wrong-{i}", flood_name(i));
            let line = format!("AUTH PLAIN\r\n{}\r\n", b64.encode(plain));
            if w.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
        let _ = w.write_all(b"QUIT\r\n");
        let _ = w.flush();
    });
    let (mut challenges, mut failed) = (0, 0);
    // Bounded: two replies per login and one for QUIT, each read within WAIT.
    for _ in 0..2 * count + 1 {
        assert!(
            Instant::now() < deadline,
            "flood still running at the deadline"
        );
        let mut l = String::new();
        if r.read_line(&mut l).expect("read reply") == 0 {
            break;
        }
        if l == "+ \r\n" {
            challenges += 1;
        } else if l.starts_with("-ERR [AUTH] Authentication failed") {
            failed += 1;
        } else {
            assert!(l.starts_with("+OK"), "unexpected reply {l:?}");
            break;
        }
    }
    writer.join().expect("writer");
    let _ = s.shutdown(Shutdown::Both);
    assert_eq!(challenges, count);
    failed
}

#[test]
fn a_flood_of_failed_logins_with_unique_long_names_leaves_memory_bounded() {
    let env = TestEnv::new();
    // An unknown user costs a verification of the first user's hash (constant
    // time): with `{SHA512-CRYPT}` that is 40 ms in this debug build, and
    // `hash_concurrency` runs two at once, so 100,000 failures would take over
    // half an hour. `{PLAIN}` makes it free: this test is about memory.
    env.write_file(
        "users",
        format!("alice:{{PLAIN}}{PW}::::::roles=pop3\n").as_bytes(),
    );
    // No per-session delay or failure cap: the flood runs at full speed.
    // Loopback is back-off per user only, and every name is new.
    let cfg = env.config_with(
        "flood.toml",
        "\n[limits]\nauth_failure_delay = 0\nauth_failures = 1000000\n",
    );
    // The harness keeps every stderr line in memory: two log lines per failure
    // with a 3 KB name would be 600 MB in this process. Errors only.
    let d = Daemon::spawn_unready_env(&env, &cfg, &[("MAILDIRD_LOG", "error")]);
    d.wait_ready();
    // Warm up (runtime and hashing threads exist), then measure.
    let deadline = Instant::now() + FLOOD_LIMIT;
    assert_eq!(flood_connection(env.pop3_port, LOGINS, 10, deadline), 10);
    let before = rss_kib(d.pid());
    let start = Instant::now();
    let per = LOGINS / CONNECTIONS;
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let port = env.pop3_port;
            std::thread::spawn(move || flood_connection(port, c * per, per, deadline))
        })
        .collect();
    let failed: usize = threads.into_iter().map(|t| t.join().expect("flood")).sum();
    let took = start.elapsed();
    let after = rss_kib(d.pid());
    eprintln!(
        "{failed} failed logins in {took:?}: RSS {before} KiB -> {after} KiB (+{} KiB)",
        after.saturating_sub(before)
    );
    assert_eq!(failed, LOGINS);
    assert!(
        after < before + RSS_GROWTH_KIB,
        "RSS grew from {before} KiB to {after} KiB after {LOGINS} failed logins"
    );
    // Still serving, and the real user is not locked out.
    let dump = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(dump.stat.0, 0);
}

/// Connect from `src` (an address of 127.0.0.0/8) to SMTP; the first reply line.
fn smtp_greeting_from(src: &str, port: u16) -> (Line, String) {
    let mut c = Line::connect_from(Some(src), port);
    let r = c.reply();
    (c, r)
}

#[test]
fn the_per_ip_cap_counts_a_whole_ipv4_prefix() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = env.config_with(
        "prefix8.toml",
        "\n[limits]\nmax_connections_per_ip = 2\nipv4_prefix = 8\n",
    );
    let mut d = Daemon::start_with(&env, &cfg);
    let (_a, r) = smtp_greeting_from("127.0.0.1", env.smtp_port);
    assert!(r.starts_with("220 "), "{r}");
    let (_b, r) = smtp_greeting_from("127.0.0.2", env.smtp_port);
    assert!(r.starts_with("220 "), "{r}");
    // A third address of the same /8 is the same client, over its cap.
    let (mut c, r) = smtp_greeting_from("127.0.0.3", env.smtp_port);
    assert!(
        r.starts_with("421 4.7.0 mx.test Too many connections from your address"),
        "{r}"
    );
    let mut rest = String::new();
    assert_eq!(
        c.r.read_line(&mut rest).expect("read"),
        0,
        "then closed: {rest:?}"
    );
    let line = d.wait_stderr("connection refused by limits");
    for want in [
        "peer=127.0.0.3:",
        "network=127.0.0.0/8",
        "reason=TooManyFromIp",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    // POP3 counts in the same table, and says so in its own words.
    let mut p = Line::connect_from(Some("127.1.2.3"), env.pop3_port);
    let r = p.line();
    assert!(
        r.starts_with("-ERR [SYS/TEMP] Too many connections from your address"),
        "{r}"
    );
    drop(d);

    // The default /32: three addresses are three clients.
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = env.config_with("cap2.toml", "\n[limits]\nmax_connections_per_ip = 2\n");
    let mut d = Daemon::start_with(&env, &cfg);
    let mut held = Vec::new();
    for src in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let (c, r) = smtp_greeting_from(src, env.smtp_port);
        assert!(r.starts_with("220 "), "{src}: {r}");
        held.push(c);
    }
    // ...each with its own cap of 2.
    let (_c, r) = smtp_greeting_from("127.0.0.3", env.smtp_port);
    assert!(r.starts_with("220 "), "{r}");
    let (_c2, r) = smtp_greeting_from("127.0.0.3", env.smtp_port);
    assert!(r.starts_with("421 4.7.0"), "{r}");
    let line = d.wait_stderr("connection refused by limits");
    assert!(line.contains("network=127.0.0.3/32"), "{line}");
}
