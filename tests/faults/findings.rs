//! One test per finding of issue 13 that needs no injected fault: what the
//! client gets and what is on disk when a POP3 session's lock is lost.

use super::common::*;
use super::tools::{Strace, Tmpfs};

#[test]
fn a_session_whose_lock_was_lost_deletes_nothing_at_quit() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // The lock is checked every third of this: every second.
    let cfg = env.config_with("lost.toml", "\n[pop3]\nlock_stale_after = \"3s\"\n");
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

/// One message to alice and bob while strace injects `injects` into the
/// daemon `pid`; returns the reply to the end of DATA.
fn to_alice_and_bob_with_faults(env: &TestEnv, pid: u32, trace: &str, injects: &[&str]) -> String {
    let _s = Strace::attach(pid, trace, injects, &[], &env.path().join("strace.txt"));
    let mut c = Line::smtp_ready(env.smtp_port);
    assert!(c.cmd("MAIL FROM:<x@example.net>\r\n").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.org>\r\n").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.org>\r\n").starts_with("250"));
    assert!(c.cmd("DATA\r\n").starts_with("354"));
    c.cmd("Subject: faults\r\n\r\nbody\r\n.\r\n")
}

/// The second recipient's link fails, then every unlink fails too (the
/// rollback of the first link and the tmp file): the client gets a 451 that
/// names the message id, and the copy that stayed in alice's new/ carries that
/// id, so the duplicate after the client's retry is explained.
#[test]
fn a_rollback_that_fails_is_named_in_the_reply_and_the_log() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "strace -p needs root here"
    );
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    let mut d = Daemon::start(&env);
    let reply = to_alice_and_bob_with_faults(
        &env,
        d.pid(),
        "linkat,unlinkat",
        &["linkat:error=EIO:when=2", "unlinkat:error=EIO"],
    );
    assert!(reply.starts_with("451 4.3.0"), "{reply:?}");
    let id = reply
        .split_whitespace()
        .skip_while(|w| *w != "of")
        .nth(1)
        .unwrap_or_else(|| panic!("no id in {reply:?}"))
        .to_string();
    // In the order logged: the tmp file that stayed, then the copies.
    let tmp_line = d.wait_stderr("cannot remove a delivery's tmp file");
    let line = d.wait_stderr("rollback too");
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("alice/new/"), "{line}");
    let alice = read_new(&env, "alice");
    assert_eq!(alice.len(), 1, "the copy that could not be removed");
    assert!(alice[0].0.starts_with(&id), "{} vs {id}", alice[0].0);
    assert!(read_new(&env, "bob").is_empty());
    let tmp = read_files(&env.maildir("alice").join("tmp"));
    assert_eq!(tmp.len(), 1);
    assert!(tmp_line.contains(&tmp[0].0), "{tmp_line}");
    // Without faults the daemon delivers normally again.
    deliver(
        env.smtp_port,
        &["bob@example.org"],
        &message("after", "bob@example.org"),
    );
    assert_eq!(read_new(&env, "bob").len(), 1);
}

/// bob's Maildir on its own tmpfs (EXDEV from alice's): his copy is written
/// in his own tmp/ and linked into new/; when its fsync fails, the client
/// gets a 451 and neither new/ nor tmp/ holds anything of it.
#[test]
fn a_maildir_on_another_filesystem_never_shows_a_partial_copy() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: mount, strace"
    );
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    let bob = env.maildir("bob");
    let _m = Tmpfs::mount(&bob, "size=4m,mode=0700");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir(bob.join(sub)).expect("mkdir");
    }
    give_to_daemon_user(&bob);
    let mut d = Daemon::start(&env);
    // Without faults: a separate, complete copy.
    deliver(
        env.smtp_port,
        &["alice@example.org", "bob@example.org"],
        &message("across", "alice@example.org"),
    );
    let (a, b) = (read_new(&env, "alice"), read_new(&env, "bob"));
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!(a[0].1, b[0].1, "byte-exact copy");
    assert!(read_files(&bob.join("tmp")).is_empty());
    // The copy's fsync fails (the second fsync of the commit: the staged file
    // first, then bob's copy).
    let reply = to_alice_and_bob_with_faults(&env, d.pid(), "fsync", &["fsync:error=EIO:when=2"]);
    assert!(reply.starts_with("451"), "{reply:?}");
    d.wait_stderr("maildir commit failed");
    assert_eq!(read_new(&env, "alice").len(), 1, "only the first message");
    assert_eq!(read_new(&env, "bob").len(), 1, "only the first message");
    assert!(
        read_files(&bob.join("tmp")).is_empty(),
        "no partial copy left"
    );
    assert!(read_files(&env.maildir("alice").join("tmp")).is_empty());
}
