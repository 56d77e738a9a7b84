//! The control socket with the real daemon: `who`, `kick`, `events`, and who
//! may use them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

struct Pop {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Pop {
    fn login(port: u16, pw: &str) -> (Pop, String) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut p = Pop {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        };
        p.line();
        p.w.write_all(format!("USER alice\r\nPASS {pw}\r\n").as_bytes())
            .expect("write");
        p.line();
        let r = p.line();
        (p, r)
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read");
        l
    }
}

/// `who --json`: one JSON array (`[]` when there are no sessions).
fn who_json(env: &TestEnv) -> Vec<serde_json::Value> {
    let o = maildird(&env.config(), &["who", "--json"], b"");
    assert_ok(&o, "maildird who --json");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.lines().count(), 1, "one line expected: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a JSON array ({e}): {out}"))
}

#[test]
fn who_lists_a_live_session_and_kick_ends_it() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let mut d = Daemon::start(&env);
    assert!(who_json(&env).is_empty(), "no sessions yet");
    let (mut pop, r) = Pop::login(env.pop3_port, PW);
    assert!(r.starts_with("+OK"), "{r}");
    let local = pop.w.local_addr().expect("addr").to_string();
    let sessions = who_json(&env);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s["protocol"], "pop3");
    assert_eq!(s["user"], "alice");
    assert_eq!(s["peer"], local.as_str());
    assert_eq!(s["state"], "transaction");
    assert!(
        s["bytes"][0]["bytes_in"].as_u64().expect("bytes") > 0,
        "{s}"
    );
    // The table form names the same session.
    let o = maildird(&env.config(), &["who"], b"");
    assert_ok(&o, "maildird who");
    assert!(String::from_utf8_lossy(&o.stdout).contains("alice"));

    let o = maildird(&env.config(), &["kick", "--user", "alice"], b"");
    assert_ok(&o, "maildird kick --user alice");
    assert!(String::from_utf8_lossy(&o.stdout).contains("kicked 1 session"));
    let mut rest = String::new();
    assert_eq!(
        pop.r.read_line(&mut rest).expect("read"),
        0,
        "the kicked session is closed: {rest:?}"
    );
    // A kicked POP3 session still ends with its one summary line.
    let line = d.wait_stderr("pop3 session");
    assert!(line.contains("user=\"alice\" retrieved=0"), "{line}");
    let deadline = Instant::now() + WAIT;
    while !who_json(&env).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the kicked session is still listed"
        );
    }
    // Nothing matches now: exit 1.
    let o = maildird(&env.config(), &["kick", "999"], b"");
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

#[test]
fn events_stream_connect_auth_and_close() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let mut ev = Command::new(bin())
        .args(["events", "--json", "-c"])
        .arg(env.config())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn events");
    // It says on stderr when the subscription is live (read on a thread, so the
    // wait is bounded).
    let err = ev.stderr.take().expect("stderr");
    let (etx, erx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut l = String::new();
        let _ = BufReader::new(err).read_line(&mut l);
        let _ = etx.send(l);
    });
    let l = erx.recv_timeout(WAIT).unwrap_or_else(|_| {
        let _ = ev.kill();
        panic!("maildird events never said it was following")
    });
    assert!(l.contains("following session events"), "{l}");
    let (_, r) = Pop::login(env.pop3_port, "wrong");
    assert!(r.starts_with("-ERR"));
    let (mut pop, r) = Pop::login(env.pop3_port, PW);
    assert!(r.starts_with("+OK"));
    pop.w.write_all(b"QUIT\r\n").expect("write");
    pop.line();
    drop(pop);
    let msg = message("events", "alice@example.org");
    deliver(env.smtp_port, &["alice@example.org"], &msg);
    let (tx, rx) = std::sync::mpsc::channel();
    let out = ev.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<(u64, String, Option<String>)> = Vec::new();
    let mut json: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.iter().filter(|e| e.1 == "close").count() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("events so far: {seen:?}"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        seen.push((
            v["session"].as_u64().expect("id"),
            v["event"].as_str().expect("event").to_string(),
            v["user"].as_str().map(str::to_string),
        ));
        json.push(v);
    }
    let _ = ev.kill();
    let _ = ev.wait();
    let first = seen[0].0;
    let kinds = |id: u64| {
        seen.iter()
            .filter(|e| e.0 == id)
            .map(|e| e.1.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(first), ["connect", "auth_fail", "close"], "{seen:?}");
    let second = seen
        .iter()
        .find(|e| e.0 != first)
        .expect("second session")
        .0;
    assert_eq!(read_new(&env, "alice").len(), 1);
    // `size`: the message as the client sent it (before the Received: line).
    let sent_size = msg.len() as u64;
    assert_eq!(kinds(second), ["connect", "auth_ok", "close"], "{seen:?}");
    assert!(
        seen.iter()
            .any(|e| e.1 == "auth_ok" && e.2.as_deref() == Some("alice"))
    );
    // Typed fields (maildird(8), events), no packed `detail` string.
    let of = |kind: &'static str| json.iter().filter(move |v| v["event"] == kind);
    for v in of("auth_ok").chain(of("auth_fail")) {
        assert!(v.get("mechanism").is_none_or(|m| m.is_string()), "{v}");
    }
    let delivery = of("delivery").next().expect("a delivery event");
    assert_eq!(delivery["recipients"], 1, "{delivery}");
    assert_eq!(delivery["size"].as_u64(), Some(sent_size), "{delivery}");
    assert!(
        delivery.get("id").is_none_or(|m| m.is_string()),
        "{delivery}"
    );
    for v in of("close") {
        assert!(v["bytes_in"].as_u64().is_some_and(|n| n > 0), "{v}");
        assert!(v["bytes_out"].as_u64().is_some_and(|n| n > 0), "{v}");
        assert!(v.get("detail").is_none(), "{v}");
    }
}

#[test]
fn only_root_and_the_daemon_group_may_use_the_control_socket() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates a Unix user: run it as root"
    );
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let name = format!("mdc{}x{}", std::process::id() % 100_000, unique());
    let useradd = require_tool("useradd", "passwd");
    assert_ok(
        &run(
            Command::new(useradd)
                .args(["-M", "-s", "/bin/sh"])
                .arg(&name),
            b"",
        ),
        "useradd",
    );
    let _cleanup = scopeguard(name.clone());
    let as_user = |sock_mode: Option<u32>| {
        if let Some(m) = sock_mode {
            chmod(&env.path().join("control.sock"), m);
        }
        run(
            Command::new("su")
                .arg(&name)
                .args(["-s", "/bin/sh", "-c"])
                .arg(format!(
                    "{} who -c {}",
                    bin().display(),
                    env.config().display()
                )),
            b"",
        )
    };
    // The socket file is 0660 nobody:nogroup: the file system already says no...
    let o = as_user(None);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .to_lowercase()
            .contains("permission denied"),
        "{}",
        show(&o)
    );
    // ...and with the file opened up, SO_PEERCRED still refuses.
    let o = as_user(Some(0o666));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("root or the daemon's group only"),
        "{}",
        show(&o)
    );
    // Root may.
    assert_ok(&maildird(&env.config(), &["who"], b""), "who as root");
}

/// SIGTERM: exit 0, the control socket file gone, and "stopped" as the last
/// log line. The socket's directory does not exist beforehand, as without
/// systemd's RuntimeDirectory=: the daemon creates it and, started as root,
/// gives it to its service user, so it can still remove the socket after the
/// privilege drop.
#[test]
fn a_clean_stop_removes_the_control_socket_and_logs_stopped() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // A users file from an earlier version: the removed admin role loads, with
    // a warning naming the user.
    let users = std::fs::read_to_string(env.users_file()).expect("users");
    std::fs::write(
        env.users_file(),
        format!("{users}boss:{{PLAIN}}x::::::roles=pop3,admin\n"),
    )
    .expect("write users");
    let cfg = env.config_toml(
        &env.hostname,
        &format!("127.0.0.1:{}", env.smtp_port),
        &format!("127.0.0.1:{}", env.pop3_port),
        "run/control.sock",
    );
    let cfg = env.write_config("stop.toml", &cfg);
    let sock = env.path().join("run/control.sock");
    let d = Daemon::start_with(&env, &cfg);
    assert!(sock.exists(), "no control socket while running");
    assert_ok(&maildird(&cfg, &["who"], b""), "who");
    let (status, log) = d.stop_with_log();
    assert_eq!(status.code(), Some(0), "exit status\n{log}");
    assert!(!sock.exists(), "control socket left behind\n{log}");
    let last = log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    assert!(last.contains("stopped"), "last line {last:?}\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("user \"boss\"") && l.contains("has no effect")),
        "no warning about the admin role\n{log}"
    );
}

/// There is no admin role (the control socket's permissions decide who may use
/// it): `user add --role admin` is refused, and an existing `roles=admin` line
/// still passes `check-config`, with a warning naming the user.
#[test]
fn the_admin_role_is_refused_for_new_users_and_ignored_in_old_files() {
    let env = TestEnv::new();
    let o = maildird(
        &env.config(),
        &[
            "user",
            "add",
            "boss",
            "--password-stdin",
            "--role",
            "pop3,admin",
        ],
        b"pw\n",
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no role \"admin\""), "{}", show(&o));
    assert!(!env.users_file().exists(), "{}", show(&o));
    std::fs::write(env.users_file(), "boss:{PLAIN}x::::::roles=admin,pop3\n").expect("users");
    let o = maildird(&env.config(), &["check-config"], b"");
    assert_ok(&o, "check-config");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("user \"boss\": role \"admin\" has no effect"),
        "{}",
        show(&o)
    );
    let o = maildird(&env.config(), &["user", "list"], b"");
    assert_ok(&o, "user list");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "boss\tpop3\n");
}

/// Removes the Unix user at the end of the test.
struct UserGuard(String);
fn scopeguard(name: String) -> UserGuard {
    UserGuard(name)
}
impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}
