//! Crash safety (RFC 5321 §6.1): SIGKILL the daemon at random moments while many
//! clients deliver; after each restart every message that got 250 is in `new/`
//! byte-exact, nothing partial is in `new/`, and tmp/ leftovers are swept. POP3:
//! SIGKILL before QUIT deletes nothing; during UPDATE only marked messages go.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One SMTP delivery over raw TCP; true only on a 250 after the data.
fn send_one(port: u16, body: &[u8]) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(w) = s.try_clone() else { return false };
    let mut r = BufReader::new(s);
    let mut w = w;
    let mut reply = |r: &mut BufReader<TcpStream>| -> Option<String> {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).ok()? == 0 {
                return None;
            }
            if l.as_bytes().get(3) != Some(&b'-') {
                return Some(l);
            }
        }
    };
    let step = |w: &mut TcpStream,
                r: &mut BufReader<TcpStream>,
                cmd: &[u8],
                want: &str,
                reply: &mut dyn FnMut(&mut BufReader<TcpStream>) -> Option<String>|
     -> bool {
        w.write_all(cmd).is_ok() && reply(r).is_some_and(|l| l.starts_with(want))
    };
    if !reply(&mut r).is_some_and(|l| l.starts_with("220")) {
        return false;
    }
    step(&mut w, &mut r, b"EHLO crash.test\r\n", "250", &mut reply)
        && step(
            &mut w,
            &mut r,
            b"MAIL FROM:<c@crash.test>\r\n",
            "250",
            &mut reply,
        )
        && step(
            &mut w,
            &mut r,
            b"RCPT TO:<alice@example.org>\r\n",
            "250",
            &mut reply,
        )
        && step(&mut w, &mut r, b"DATA\r\n", "354", &mut reply)
        && step(&mut w, &mut r, body, "250", &mut reply)
}

/// A message whose body identifies it and fills ~20 KiB, so a kill can land
/// in the middle of writing it.
fn body(id: usize) -> (String, Vec<u8>) {
    let tag = format!("crash-msg-{id:06}");
    let mut b = format!("Subject: {tag}\r\nMessage-Id: <{tag}@crash.test>\r\n\r\n").into_bytes();
    for i in 0..256 {
        b.extend_from_slice(
            format!("{tag} line {i:04} the quick brown fox jumps over the lazy dog\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(format!("END {tag}\r\n.\r\n").as_bytes());
    (tag, b)
}

/// Every file in new/ must be a complete message: its tag, and its last line.
fn check_new(env: &TestEnv, acked: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut found = BTreeMap::new();
    for (name, bytes) in read_new(env, "alice") {
        let text = String::from_utf8_lossy(&bytes);
        let tag = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("{name}: no Subject, partial file?"))
            .to_string();
        let (_, want) = body(tag["crash-msg-".len()..].parse().expect("id"));
        // What was sent, CRLF -> LF, without the final dot line.
        let want = to_lf(&want[..want.len() - 3]);
        assert!(
            bytes.ends_with(&want),
            "{name}: {tag} is not byte-exact (partial?)"
        );
        let (s, _) = parse_maildir_name(&name).unwrap_or_else(|| panic!("bad name {name}"));
        assert_eq!(s, bytes.len() as u64, "{name}: S= differs from the size");
        *found.entry(tag).or_insert(0) += 1;
    }
    for tag in acked {
        assert_eq!(
            found.get(tag),
            Some(&1),
            "{tag} got 250 but is not in new/ exactly once"
        );
    }
    found
}

#[test]
fn sigkill_during_concurrent_deliveries_loses_nothing_acknowledged() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut next_id = 0usize;
    // Deterministic "random" kill moments (no flaky seeds), 6 rounds.
    let kill_after_ms = [150u64, 40, 300, 90, 220, 10];
    for (round, wait) in kill_after_ms.iter().enumerate() {
        let d = Daemon::start(&env);
        let port = env.smtp_port;
        let stop = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::new();
        for t in 0..6 {
            let (acked, stop) = (acked.clone(), stop.clone());
            let first = next_id + t * 10_000;
            senders.push(std::thread::spawn(move || {
                let mut id = first;
                // Bounded: at most 500 messages or 15 s per sender per round.
                let deadline = Instant::now() + Duration::from_secs(15);
                while !stop.load(Ordering::Relaxed) && id < first + 500 && Instant::now() < deadline
                {
                    let (tag, b) = body(id);
                    if send_one(port, &b) {
                        acked.lock().expect("lock").insert(tag);
                    }
                    id += 1;
                }
            }));
        }
        // Let deliveries get going (at least one acknowledged), then kill.
        let start = Instant::now();
        while acked.lock().expect("lock").len() <= round && start.elapsed() < WAIT {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(*wait));
        signal(d.pid(), "KILL");
        d.wait_killed();
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            s.join().expect("sender");
        }
        next_id += 100_000;
        let acked_now = acked.lock().expect("lock").clone();
        check_new(&env, &acked_now);
    }
    let total = acked.lock().expect("lock").len();
    let leftovers = std::fs::read_dir(env.maildir("alice").join("tmp"))
        .expect("tmp")
        .count();
    eprintln!(
        "acknowledged {total}, in new/ {}, tmp/ leftovers before restart {leftovers}",
        read_new(&env, "alice").len()
    );
    assert!(total >= 6, "too few deliveries to mean anything: {total}");
    // A restart sweeps what the killed instances left half-written in tmp/.
    let _d = Daemon::start(&env);
    let tmp = env.maildir("alice").join("tmp");
    let deadline = Instant::now() + WAIT;
    while std::fs::read_dir(&tmp).expect("tmp").count() > 0 {
        assert!(
            Instant::now() < deadline,
            "tmp/ leftovers were not swept at start-up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    check_new(&env, &acked.lock().expect("lock").clone());
}

fn pop3_line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).expect("read");
    l
}

#[test]
fn sigkill_between_dele_and_quit_deletes_nothing() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::start(&env);
    for i in 0..3 {
        deliver(
            env.smtp_port,
            &["alice@example.org"],
            &message(&format!("m{i}"), "alice@example.org"),
        );
    }
    let before = snapshot(&env.maildir("alice"));
    let s = TcpStream::connect(("127.0.0.1", env.pop3_port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    pop3_line(&mut r);
    for cmd in [
        "USER alice\r\n".to_string(),
        format!("PASS {PW}\r\n"),
        "DELE 1\r\n".into(),
        "DELE 2\r\n".into(),
    ] {
        w.write_all(cmd.as_bytes()).expect("write");
        assert!(pop3_line(&mut r).starts_with("+OK"));
    }
    signal(d.pid(), "KILL");
    d.wait_killed();
    assert_eq!(snapshot(&env.maildir("alice")), before);
    // The dead session's lock does not block the next login.
    let _d = Daemon::start(&env);
    let after = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(after.stat.0, 3);
}

#[test]
fn sigkill_during_update_removes_only_marked_messages() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::start(&env);
    let n = 200;
    let maildir = env.maildir("alice");
    // Fill the Maildir directly (fast), in the daemon's own layout.
    for i in 0..n {
        let name = format!("{}.M{i}P1Q{i}R0.fill,S=10,W=11", 1_700_000_000 + i);
        std::fs::write(
            maildir.join("new").join(&name),
            format!("Subject: {i}\n\nx\n"),
        )
        .expect("fill");
    }
    give_to_daemon_user(&maildir);
    let all = snapshot(&maildir);
    let s = TcpStream::connect(("127.0.0.1", env.pop3_port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    pop3_line(&mut r);
    let mut batch = format!("USER alice\r\nPASS {PW}\r\n");
    for i in 1..=n / 2 {
        batch.push_str(&format!("DELE {i}\r\n"));
    }
    w.write_all(batch.as_bytes()).expect("write");
    for _ in 0..(2 + n / 2) {
        assert!(pop3_line(&mut r).starts_with("+OK"));
    }
    // QUIT starts UPDATE; kill right away so the kill lands during the unlinks.
    w.write_all(b"QUIT\r\n").expect("write");
    signal(d.pid(), "KILL");
    d.wait_killed();
    let left = snapshot(&maildir);
    // Messages are listed in delivery order: the marked ones are the first n/2.
    let names: Vec<&String> = all.keys().collect();
    for kept in &names[n / 2..] {
        assert!(left.contains_key(*kept), "unmarked {kept} disappeared");
    }
    for k in left.keys() {
        assert_eq!(left[k], all[k], "{k} changed");
    }
}
