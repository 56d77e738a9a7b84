//! How the daemon gets its sockets: systemd socket activation (`LISTEN_FDS` with and
//! without `LISTEN_FDNAMES`, via systemd-socket-activate) and inetd-style single
//! sessions on stdin/stdout (swaks `--pipe`, and `Accept=yes` sockets) (maildird(8)).

mod common;

use std::net::TcpStream;
use std::process::Command;

use common::*;

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Nothing accepts connections on `port` (the daemon did not bind its config address).
fn assert_not_listening(port: u16) {
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on 127.0.0.1:{port}: the daemon bound its own socket"
    );
}

/// Delivers one message over SMTP on `smtp`, reads it back over POP3 on `pop3`, and
/// checks both ends against the Maildir.
fn deliver_and_fetch(env: &TestEnv, smtp: u16, pop3: u16) {
    let swaks = require_tool("swaks", "swaks");
    let msg = message("activated", "alice@example.org");
    let data = swaks_data(env, &msg);
    let o = run(
        Command::new(swaks)
            .args(["--server", "127.0.0.1", "--port"])
            .arg(smtp.to_string())
            .args([
                "--helo",
                "client.test",
                "--from",
                SMTP_SENDER,
                "--to",
                "alice@example.org",
                "--data",
            ])
            .arg(&data),
        b"",
    );
    assert_ok(&o, "swaks");
    assert_one_delivered(env, "alice", SMTP_SENDER, &msg);
    let d = pop3_dump(pop3, "alice", PW, &["quit"]);
    assert!(d.greeting.starts_with("+OK"), "{:?}", d.greeting);
    assert_eq!(d.stat.0, 1);
    assert_pop3_matches_maildir(&d, &env.maildir("alice"));
    assert!(d.retr[0].ends_with(&msg));
}

#[test]
fn socket_activation_with_fdnames_uses_the_inherited_sockets() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // The config binds env.smtp_port/env.pop3_port, where nobody listens: only the
    // named inherited sockets can make this work.
    let (p_smtp, p_pop3) = (free_port(), free_port());
    let d = Daemon::socket_activated(
        &env,
        &env.config(),
        &[addr(p_smtp), addr(p_pop3)],
        Some("smtp:pop3"),
    );
    // systemd-socket-activate exec()s the daemon on the first connection.
    let first = TcpStream::connect(("127.0.0.1", p_smtp)).expect("connect to the activated socket");
    d.wait_ready();
    drop(first);
    deliver_and_fetch(&env, p_smtp, p_pop3);
    assert_not_listening(env.smtp_port);
    assert_not_listening(env.pop3_port);
    let st = d.stop();
    assert!(st.success(), "activated daemon exited {st} on SIGTERM");
}

#[test]
fn socket_activation_without_fdnames_matches_by_address() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let (p_smtp, p_pop3) = (free_port(), free_port());
    let cfg = env.write_config(
        "activated.toml",
        &env.config_toml("mx.test", &addr(p_smtp), &addr(p_pop3), "control.sock"),
    );
    // POP3 first: fd 3 is pop3 and fd 4 smtp, the reverse of the config's order, so
    // matching by position would swap the protocols.
    let d = Daemon::socket_activated(&env, &cfg, &[addr(p_pop3), addr(p_smtp)], None);
    let first = TcpStream::connect(("127.0.0.1", p_smtp)).expect("connect to the activated socket");
    d.wait_ready();
    drop(first);
    deliver_and_fetch(&env, p_smtp, p_pop3);
}

#[test]
fn inetd_smtp_session_over_swaks_pipe() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let swaks = require_tool("swaks", "swaks");
    let msg = message("inetd pipe", "alice@example.org");
    let data = swaks_data(&env, &msg);
    let pipe = format!(
        "{} serve --inetd smtp -c {}",
        bin().display(),
        env.config().display()
    );
    let o = run(
        Command::new(swaks)
            .args([
                "--pipe",
                &pipe,
                "--helo",
                "client.test",
                "--from",
                SMTP_SENDER,
            ])
            .args(["--to", "alice@example.org", "--data"])
            .arg(&data),
        b"",
    );
    assert_ok(&o, "swaks --pipe");
    let transcript = String::from_utf8_lossy(&o.stdout);
    assert!(
        transcript.contains("220 mx.test ESMTP maildird"),
        "{transcript}"
    );
    assert_one_delivered(&env, "alice", SMTP_SENDER, &msg);
    // Nothing else was started: no listener on the configured ports.
    assert_not_listening(env.smtp_port);
}

#[test]
fn inetd_sessions_on_accepted_sockets() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let (p_smtp, p_pop3) = (free_port(), free_port());
    let _smtp = Daemon::inetd_accept(&env, &env.config(), &addr(p_smtp), "smtp");
    let _pop3 = Daemon::inetd_accept(&env, &env.config(), &addr(p_pop3), "pop3");
    // Each connection is its own process; the peer is a real loopback socket, so the
    // Received line names it and POP3 USER/PASS is allowed.
    let msg = message("inetd accept", "alice@example.org");
    deliver(p_smtp, &["alice@example.org"], &msg);
    let (_, bytes) = assert_one_delivered(&env, "alice", SMTP_SENDER, &msg);
    assert!(String::from_utf8_lossy(&bytes).contains("([127.0.0.1])"));
    let d = pop3_dump(p_pop3, "alice", PW, &["dele", "1", "quit"]);
    assert_eq!(d.stat.0, 1);
    assert!(d.retr[0].ends_with(&msg));
    assert!(d.stdout.contains("QUIT +OK"), "{}", d.stdout);
    assert!(
        by_base_name(&env.maildir("alice")).is_empty(),
        "DELE+QUIT over inetd did not remove"
    );
}
