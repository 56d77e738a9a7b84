//! Operations: privileges, sd_notify, reload and stop, connection caps and
//! keep-alive, driven against the real daemon started as users start it.

mod common;

use std::io::BufRead;
use std::net::TcpStream;
use std::process::Command;

use common::*;

fn with_extra(env: &TestEnv, extra: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(env.config()).expect("config") + extra;
    env.write_config("extra.toml", &text)
}

fn proc_status(pid: u32) -> Vec<String> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let p = task.expect("task").path().join("status");
        all.push(std::fs::read_to_string(p).expect("status"));
    }
    all
}

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} must run as root (it starts the daemon as root, as admins do)"
    );
}

#[test]
fn started_as_root_it_serves_without_root_privileges() {
    require_root("the privilege test");
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::start(&env);
    // It serves: a delivery works after the drop.
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("after the drop", "alice@example.org"),
    );
    let tasks = proc_status(d.pid());
    assert!(tasks.len() > 1, "expected the runtime's threads");
    for st in &tasks {
        for key in ["Uid:", "Gid:"] {
            let ids: Vec<&str> = field(st, key).split_whitespace().collect();
            assert!(ids.iter().all(|i| *i != "0"), "{key} {ids:?} in\n{st}");
        }
        assert_eq!(
            field(st, "Groups:").split_whitespace().find(|g| *g == "0"),
            None
        );
        for key in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            assert_eq!(field(st, key), "0000000000000000", "{key}");
        }
        assert_eq!(field(st, "NoNewPrivs:"), "1");
    }
}

#[test]
fn a_missing_service_user_is_a_config_error_exit_2() {
    require_root("the missing-user test");
    let env = TestEnv::new();
    let cfg = std::fs::read_to_string(env.config())
        .expect("config")
        .replace("user = \"nobody\"", "user = \"no-such-maildird-user\"");
    let cfg = env.write_config("nouser.toml", &cfg);
    let o = run(Command::new(bin()).arg("serve").arg("-c").arg(&cfg), b"");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no-such-maildird-user"),
        "{}",
        show(&o)
    );
}

#[test]
fn notify_ready_reloading_and_stopping_in_order() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::spawn_unready(&env, &env.config());
    let first = d.wait_notify("READY=1");
    assert!(
        first.iter().any(|l| l.starts_with("STATUS=")),
        "READY comes with a STATUS line: {first:?}"
    );
    signal(d.pid(), "HUP");
    let reload = d.wait_notify("READY=1");
    let r = reload
        .iter()
        .position(|l| l == "RELOADING=1")
        .expect("RELOADING=1 before READY=1");
    assert!(
        r < reload.iter().rposition(|l| l == "READY=1").unwrap_or(0),
        "{reload:?}"
    );
    signal(d.pid(), "TERM");
    d.wait_notify("STOPPING=1");
    assert!(d.stop().success());
}

#[test]
fn sighup_adds_a_user_without_dropping_a_pop3_session() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let mut d = Daemon::start(&env);
    let mut pop = Line::connect(env.pop3_port);
    assert!(pop.line().starts_with("+OK"));
    assert!(pop.cmd_pop("USER alice\r\n").starts_with("+OK"));
    assert!(pop.cmd_pop(format!("PASS {PW}\r\n")).starts_with("+OK"));
    // bob is not known yet; the failure is one stable line for fail2ban.
    assert!(pop3_login_fails(env.pop3_port, "bob"));
    d.wait_stderr("authentication failure: protocol=pop3 ip=127.0.0.1 user=\"bob\"");
    add_user(&env, "bob", PW);
    signal(d.pid(), "HUP");
    d.wait_notify("RELOADING=1");
    d.wait_notify("READY=1");
    let bob = pop3_dump(env.pop3_port, "bob", PW, &["quit"]);
    assert_eq!(bob.stat.0, 0);
    // alice's session is still alive and in TRANSACTION.
    assert!(pop.cmd_pop("STAT\r\n").starts_with("+OK 0 0"));
    assert!(pop.cmd_pop("QUIT\r\n").starts_with("+OK"));
}

fn pop3_login_fails(port: u16, user: &str) -> bool {
    let mut p = Line::connect(port);
    p.line();
    p.cmd_pop(format!("USER {user}\r\n"));
    p.cmd_pop(format!("PASS {PW}\r\n")).starts_with("-ERR")
}

#[test]
fn sigterm_during_data_still_delivers_and_exits_0() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::start(&env);
    let mut c = Line::connect(env.smtp_port);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("EHLO client.test\r\n").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@client.test>\r\n").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>\r\n").starts_with("250"));
    assert!(c.cmd("DATA\r\n").starts_with("354"));
    c.send("Subject: in flight\r\n\r\nfirst half\r\n");
    signal(d.pid(), "TERM");
    d.wait_notify("STOPPING=1");
    // No new connections once stopping.
    assert!(
        TcpStream::connect(("127.0.0.1", env.smtp_port)).is_err(),
        "still accepting after SIGTERM"
    );
    c.send("second half\r\n");
    assert!(
        c.cmd(".\r\n").starts_with("250 2.0.0"),
        "the transfer in flight must complete"
    );
    c.send("QUIT\r\n");
    let files = read_new(&env, "alice");
    assert_eq!(files.len(), 1);
    assert!(
        files[0]
            .1
            .ends_with(b"Subject: in flight\n\nfirst half\nsecond half\n")
    );
    assert!(d.stop().success(), "exit status after SIGTERM");
}

#[test]
fn connections_over_the_caps_get_421() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = with_extra(
        &env,
        "\n[limits]\nmax_connections = 3\nmax_connections_per_ip = 2\n",
    );
    let _d = Daemon::start_with(&env, &cfg);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Line::connect(env.smtp_port);
        assert!(c.reply().starts_with("220"));
        held.push(c);
    }
    // Per IP: a third connection from 127.0.0.1 is refused...
    let mut c = Line::connect(env.smtp_port);
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    // ...one from 127.0.0.2 is fine (global 3)...
    let mut other = Line::connect_from(Some("127.0.0.2"), env.smtp_port);
    assert!(other.reply().starts_with("220"));
    // ...and the fourth overall is refused, on POP3 in its own words.
    let mut p = Line::connect_from(Some("127.0.0.3"), env.pop3_port);
    let r = p.line();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    // A freed slot is usable again.
    drop(held.pop());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut c = Line::connect(env.smtp_port);
        let r = c.reply();
        if r.starts_with("220") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot never freed: {r}"
        );
    }
}

fn keepalive_timer(port: u16) -> String {
    let ss = require_tool("ss", "iproute2");
    let o = run(
        Command::new(ss).args([
            "-tnoH",
            "state",
            "established",
            "sport",
            "=",
            &format!(":{port}"),
        ]),
        b"",
    );
    assert_ok(&o, "ss");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn keepalive_options_are_set_on_accepted_sockets() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = with_extra(
        &env,
        "\n[keepalive]\nidle = \"77s\"\ninterval = \"5s\"\ncount = 3\n",
    );
    let _d = Daemon::start_with(&env, &cfg);
    let mut c = Line::connect(env.smtp_port);
    assert!(c.reply().starts_with("220"));
    let out = keepalive_timer(env.smtp_port);
    // ss shows the server side's keep-alive timer, counting down from `idle`.
    let timer = out
        .split("timer:(")
        .nth(1)
        .unwrap_or_else(|| panic!("no timer in {out:?}"));
    assert!(timer.starts_with("keepalive,"), "{out}");
    let secs: String = timer
        .trim_start_matches("keepalive,")
        .chars()
        .take_while(|c| *c != ',')
        .collect();
    assert!(
        secs.starts_with("1min1") || secs.starts_with("1min"),
        "idle 77s shows as ~1min17sec: {secs}"
    );
}

#[test]
fn keepalive_can_be_turned_off() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = with_extra(&env, "\n[keepalive]\nenabled = false\nuser_timeout = 0\n");
    let _d = Daemon::start_with(&env, &cfg);
    let mut c = Line::connect(env.smtp_port);
    assert!(c.reply().starts_with("220"));
    let out = keepalive_timer(env.smtp_port);
    assert!(!out.contains("keepalive"), "{out}");
}

#[test]
fn sigterm_closes_an_idle_pop3_session_without_deleting() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::start(&env);
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("keep me", "alice@example.org"),
    );
    let before = snapshot(&env.maildir("alice"));
    let mut pop = Line::connect(env.pop3_port);
    assert!(pop.line().starts_with("+OK"));
    assert!(pop.cmd_pop("USER alice\r\n").starts_with("+OK"));
    assert!(pop.cmd_pop(format!("PASS {PW}\r\n")).starts_with("+OK"));
    assert!(pop.cmd_pop("DELE 1\r\n").starts_with("+OK"));
    signal(d.pid(), "TERM");
    let r = pop.line();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    assert!(d.stop().success());
    // Never reached UPDATE: the marked message is still there (RFC 1939 §6).
    assert_eq!(snapshot(&env.maildir("alice")), before);
}

#[test]
fn sighup_applies_a_new_config_and_keeps_the_old_one_when_broken() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let mut d = Daemon::start(&env);
    let rcpt = |addr: &str| {
        let mut c = Line::connect(env.smtp_port);
        c.reply();
        c.cmd("EHLO client.test\r\n");
        c.cmd("MAIL FROM:<s@client.test>\r\n");
        c.cmd(format!("RCPT TO:<{addr}>\r\n"))
    };
    assert!(rcpt("alice@example.net").starts_with("550 5.7.1"));
    let text = std::fs::read_to_string(env.config()).expect("config");
    // A broken config: reported, the old one stays.
    std::fs::write(env.config(), "this is = = not toml\n").expect("write");
    signal(d.pid(), "HUP");
    d.wait_stderr("bad config");
    d.wait_notify("READY=1");
    assert!(rcpt("alice@example.org").starts_with("250"));
    // A new local domain takes effect for new connections.
    let text = text.replace(
        "domains = [\"example.org\"]",
        "domains = [\"example.org\", \"example.net\"]",
    );
    std::fs::write(env.config(), text).expect("write");
    signal(d.pid(), "HUP");
    d.wait_notify("READY=1");
    assert!(rcpt("alice@example.net").starts_with("250"));
}

#[test]
fn the_watchdog_is_fed_when_systemd_asks() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::spawn_unready_env(&env, &env.config(), &[("WATCHDOG_USEC", "400000")]);
    d.wait_notify("READY=1");
    d.wait_notify("WATCHDOG=1");
    d.wait_notify("WATCHDOG=1");
}

#[test]
fn a_silent_client_is_dropped_by_the_greeting_timeout() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = with_extra(&env, "\n[limits]\ngreeting_timeout = \"1s\"\n");
    let _d = Daemon::start_with(&env, &cfg);
    let mut silent = Line::connect(env.smtp_port);
    assert!(silent.reply().starts_with("220"));
    // A talking client is unaffected by the short deadline.
    let mut talker = Line::connect(env.smtp_port);
    assert!(talker.reply().starts_with("220"));
    assert!(talker.cmd("EHLO client.test\r\n").starts_with("250"));
    // The silent one is closed (EOF) well before the 5-minute command timeout.
    let start = std::time::Instant::now();
    let mut rest = String::new();
    let n = silent
        .r
        .read_line(&mut rest)
        .expect("read until the server closes");
    assert_eq!(n, 0, "expected EOF, got {rest:?}");
    assert!(start.elapsed() < WAIT);
    assert!(talker.cmd("NOOP\r\n").starts_with("250"));
}

#[test]
fn connections_over_the_per_ip_rate_get_421() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = with_extra(&env, "\n[limits]\nmax_connection_rate_per_ip = 3\n");
    let _d = Daemon::start_with(&env, &cfg);
    for _ in 0..3 {
        let mut c = Line::connect_from(Some("127.0.0.5"), env.smtp_port);
        assert!(c.reply().starts_with("220"));
    }
    let mut c = Line::connect_from(Some("127.0.0.5"), env.smtp_port);
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    // Another address is not affected.
    let mut other = Line::connect_from(Some("127.0.0.6"), env.smtp_port);
    assert!(other.reply().starts_with("220"));
}

fn rcpt_reply(port: u16, addr: &str) -> String {
    let mut c = Line::connect(port);
    c.reply();
    c.cmd("EHLO client.test\r\n");
    c.cmd("MAIL FROM:<s@client.test>\r\n");
    c.cmd(format!("RCPT TO:<{addr}>\r\n"))
}

#[test]
fn a_user_added_while_running_is_served_without_a_reload() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    assert!(rcpt_reply(env.smtp_port, "carol@example.org").starts_with("550 5.1.1"));
    add_user(&env, "carol", PW);
    // The users file is re-read when it changes: the next lookup sees carol.
    let r = rcpt_reply(env.smtp_port, "carol@example.org");
    assert!(
        r.starts_with("250"),
        "carol is not known without a reload: {r}"
    );
}

#[test]
fn ipv4_clients_of_a_dual_stack_socket_count_as_ipv4() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let text = std::fs::read_to_string(env.config())
        .expect("config")
        .replace(
            &format!("127.0.0.1:{}", env.smtp_port),
            &format!("[::]:{}", env.smtp_port),
        )
        .replace(
            &format!("127.0.0.1:{}", env.pop3_port),
            &format!("[::]:{}", env.pop3_port),
        );
    let cfg = env.write_config("dual.toml", &text);
    let _d = Daemon::start_with(&env, &cfg);
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("dual stack", "alice@example.org"),
    );
    let files = read_new(&env, "alice");
    let text = String::from_utf8_lossy(&files[0].1);
    assert!(text.contains("([127.0.0.1])"), "{text}");
    // Plaintext POP3 login is allowed from loopback (not ::ffff:127.0.0.1).
    let d = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(d.stat.0, 1);
}

#[test]
fn a_listener_can_have_its_own_keepalive() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // The pop3 listener is the config's last table: its own keep-alive follows it.
    let cfg = with_extra(
        &env,
        "keepalive = { idle = \"33s\" }\n\n[keepalive]\nidle = \"77s\"\n",
    );
    let _d = Daemon::start_with(&env, &cfg);
    let mut smtp = Line::connect(env.smtp_port);
    assert!(smtp.reply().starts_with("220"));
    let mut pop = Line::connect(env.pop3_port);
    assert!(pop.line().starts_with("+OK"));
    let timer = |port| {
        let out = keepalive_timer(port);
        let t = out
            .split("timer:(keepalive,")
            .nth(1)
            .unwrap_or_else(|| panic!("no keepalive timer: {out}"))
            .to_string();
        t.chars().take_while(|c| *c != ',').collect::<String>()
    };
    assert!(timer(env.smtp_port).starts_with("1min"), "global idle 77s");
    let p = timer(env.pop3_port);
    assert!(
        p.starts_with("3") && p.ends_with("sec") && !p.contains("min"),
        "listener idle 33s: {p}"
    );
}
