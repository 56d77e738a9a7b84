//! One test per finding of issue 13 that needs no injected fault: what the
//! client gets and what is on disk when a POP3 session's lock is lost.

use super::common::*;

fn config_with(env: &TestEnv, name: &str, extra: &str) -> std::path::PathBuf {
    let cfg = std::fs::read_to_string(env.config()).expect("config") + extra;
    env.write_config(name, &cfg)
}

#[test]
fn a_session_whose_lock_was_lost_deletes_nothing_at_quit() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // The lock is checked every third of this: every second.
    let cfg = config_with(&env, "lost.toml", "\n[pop3]\nlock_stale_after = \"3s\"\n");
    let mut d = Daemon::start_with(&env, &cfg);
    for s in ["one", "two"] {
        deliver(
            env.smtp_port,
            &["alice@example.org"],
            &message(s, "alice@example.org"),
        );
    }
    let before = snapshot(&env.maildir("alice"));
    assert_eq!(before.len(), 2);
    let mut c = Line::connect(env.pop3_port);
    assert!(c.line().starts_with("+OK"));
    assert!(c.cmd_pop("USER alice\r\n").starts_with("+OK"));
    assert!(c.cmd_pop(format!("PASS {PW}\r\n")).starts_with("+OK"));
    assert!(c.cmd_pop("DELE 1\r\n").starts_with("+OK"));
    // Someone (an admin's cleanup, another tool) removes the lock file: a
    // second session could now lock a new one, so this one no longer owns
    // the maildrop.
    let lock = env.maildir("alice").join("maildird-pop3.lock");
    std::fs::remove_file(&lock).expect("remove lock");
    d.wait_stderr("mailbox lock lost");
    let r = c.cmd_pop("QUIT\r\n");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r:?}");
    assert_eq!(snapshot(&env.maildir("alice")), before, "nothing deleted");
    // A new session locks afresh and may delete.
    let dump = pop3_dump(env.pop3_port, "alice", PW, &["dele", "1", "quit"]);
    assert_eq!(dump.stat.0, 2);
    assert_eq!(snapshot(&env.maildir("alice")).len(), 1);
}

#[test]
fn a_maildir_without_a_lock_file_gets_one_at_start_up() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // As an earlier version left it: no lock file.
    let lock = env.maildir("alice").join("maildird-pop3.lock");
    std::fs::remove_file(&lock).expect("remove lock");
    let mut d = Daemon::start(&env);
    // The start-up sweep creates it; a login then needs no disk space.
    let line = d.wait_stderr("start-up sweep done");
    assert!(line.contains("lock_files=1"), "{line}");
    assert!(lock.is_file());
}
