//! Attacks through a Maildir shared with its owner's Unix account (`maildird
//! user add --unix-group`): symlinked `cur/` and `tmp/`, a message swapped for
//! a link after login, the POP3 lock as a FIFO or a link to `/dev/zero`, and a
//! leftover Maildir that points `maildird user add` (run by root) at a
//! directory it must not chown.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::common::*;

/// A Unix account created for one test (removed on drop): the attacker.
struct Attacker {
    name: String,
}

impl Attacker {
    fn new() -> Attacker {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the hostile local user tests must run as root: they create a Unix account \
             with useradd and act as it with su (run the tests as root, as CI does)"
        );
        require_tool("su", "util-linux");
        let useradd = require_tool("useradd", "passwd");
        let name = format!("mdx{}x{}", std::process::id() % 100_000, unique());
        let o = run(
            Command::new(useradd)
                .args(["-U", "-M", "-d", "/nonexistent", "-s", "/bin/sh"])
                .arg(&name),
            b"",
        );
        assert_ok(&o, "useradd");
        Attacker { name }
    }

    /// Run a shell command as the attacker; it must succeed.
    fn sh(&self, script: &str) {
        let o = run(
            Command::new("su")
                .arg(&self.name)
                .args(["-s", "/bin/sh", "-c"])
                .arg(format!("set -e; {script}")),
            b"",
        );
        assert_ok(&o, &format!("as {}: {script}", self.name));
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        let _ = Command::new(require_tool("userdel", "passwd"))
            .arg(&self.name)
            .status();
    }
}

/// alice's Maildir shared with the attacker's group (mutt's model), bob a
/// normal user with one message in `new/`. Returns bob's message path.
fn setup(env: &TestEnv, attacker: &Attacker) -> PathBuf {
    add_shared_user(env, "alice", PW, &attacker.name);
    add_user(env, "bob", PW);
    let bob_new = env.maildir("bob").join("new");
    let msg = bob_new.join("1700000000.M1P1Q1R1.mx,S=20,W=21");
    std::fs::write(&msg, b"Subject: bob secret\n").expect("bob's message");
    // As the daemon would have delivered it: the service user's, private.
    give_to_daemon_user(&env.maildir("bob"));
    msg
}

/// One POP3 session: greeting, USER/PASS; returns the PASS reply and the line.
fn pop3_login(port: u16, user: &str) -> (Line, String) {
    let mut c = Line::connect(port);
    assert!(c.line().starts_with("+OK"));
    assert!(c.cmd_pop(format!("USER {user}\r\n")).starts_with("+OK"));
    let r = c.cmd_pop(format!("PASS {PW}\r\n"));
    (c, r)
}

/// A multi-line POP3 answer: the status line and the body up to ".".
fn multi(c: &mut Line, cmd: &str) -> (String, String) {
    let status = c.cmd_pop(cmd);
    let mut body = String::new();
    if status.starts_with("+OK") {
        loop {
            let l = c.line();
            assert!(!l.is_empty(), "connection closed inside {cmd:?}");
            if l == ".\r\n" {
                break;
            }
            body.push_str(&l);
        }
    }
    (status, body)
}

fn assert_bob_untouched(env: &TestEnv, bob_msg: &Path) {
    assert_eq!(
        std::fs::read(bob_msg).expect("bob's message is still there"),
        b"Subject: bob secret\n"
    );
    let d = pop3_dump(env.pop3_port, "bob", PW, &["quit"]);
    assert!(
        d.retr
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("bob secret")),
        "bob still sees his message over POP3"
    );
}

#[test]
fn cur_symlinked_to_another_mailbox_is_refused_not_served_or_deleted() {
    let attacker = Attacker::new();
    let env = TestEnv::new();
    let bob_msg = setup(&env, &attacker);
    let mut d = Daemon::start(&env);
    let alice = env.maildir("alice");
    // Two variants: a relative link to bob's new/, and an absolute one.
    attacker.sh(&format!(
        "cd '{}' && mv cur cur.old && ln -s ../bob/new cur",
        alice.display()
    ));
    let (mut c, r) = pop3_login(env.pop3_port, "alice");
    assert!(r.starts_with("-ERR"), "login must fail, got {r:?}");
    let _ = c.cmd_pop("QUIT\r\n");
    d.wait_stderr("refusing maildir");
    attacker.sh(&format!(
        "cd '{}' && rm cur && ln -s '{}' cur",
        alice.display(),
        env.maildir("bob").join("new").display()
    ));
    let (_c, r) = pop3_login(env.pop3_port, "alice");
    assert!(r.starts_with("-ERR"), "login must fail, got {r:?}");
    assert!(d.log().contains("symbolic link"), "{}", d.log());
    // Delivery to alice is deferred (451), never written through the link.
    let mut s = Line::smtp_ready(env.smtp_port);
    assert!(s.cmd("MAIL FROM:<x@example.net>\r\n").starts_with("250"));
    assert!(s.cmd("RCPT TO:<alice@example.org>\r\n").starts_with("250"));
    let r = s.cmd("DATA\r\n");
    let r = if r.starts_with("354") {
        s.cmd("Subject: x\r\n\r\nhi\r\n.\r\n")
    } else {
        r
    };
    assert!(r.starts_with("451"), "{r:?}");
    assert_bob_untouched(&env, &bob_msg);
    assert_eq!(
        std::fs::read_dir(env.maildir("bob").join("new"))
            .expect("bob new")
            .count(),
        1,
        "nothing was delivered into bob's new/ through alice's link"
    );
}

#[test]
fn message_swapped_for_a_link_after_login_is_not_served_or_deleted() {
    let attacker = Attacker::new();
    let env = TestEnv::new();
    let bob_msg = setup(&env, &attacker);
    let mut d = Daemon::start(&env);
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("alice's own", "alice@example.org"),
    );
    let (mut c, r) = pop3_login(env.pop3_port, "alice");
    assert!(r.starts_with("+OK"), "{r:?}");
    let (status, list) = multi(&mut c, "LIST\r\n");
    assert!(
        status.starts_with("+OK") && list.lines().count() == 1,
        "{list:?}"
    );
    // After the snapshot, the attacker swaps the message for a link to bob's.
    let new = env.maildir("alice").join("new");
    attacker.sh(&format!(
        "cd '{}' && for f in *; do rm \"$f\"; ln -s '{}' \"$f\"; done",
        new.display(),
        bob_msg.display()
    ));
    let (status, body) = multi(&mut c, "RETR 1\r\n");
    assert!(
        status.starts_with("-ERR"),
        "RETR must refuse: {status:?} {body:?}"
    );
    assert!(!body.contains("bob secret"));
    let (status, body) = multi(&mut c, "TOP 1 0\r\n");
    assert!(status.starts_with("-ERR") && !body.contains("bob secret"));
    assert!(c.cmd_pop("DELE 1\r\n").starts_with("+OK"));
    assert!(c.cmd_pop("QUIT\r\n").starts_with("+OK"));
    d.wait_stderr("not a regular file");
    assert_bob_untouched(&env, &bob_msg);
}

#[test]
fn tmp_symlinked_to_another_mailbox_is_not_swept() {
    let attacker = Attacker::new();
    let env = TestEnv::new();
    let bob_msg = setup(&env, &attacker);
    // bob's cur/ holds a file named like a dead writer's tmp file of this host
    // and 40 hours old: both sweeps would delete it if they followed the link.
    let bait = env
        .maildir("bob")
        .join("cur")
        .join(format!("1700000000.M1P999999Q1R1.{}", env.hostname));
    std::fs::write(&bait, b"Subject: bob old\n").expect("bait");
    let old = std::time::SystemTime::now() - Duration::from_secs(40 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&bait)
        .and_then(|f| f.set_modified(old))
        .expect("age");
    give_to_daemon_user(&env.maildir("bob"));
    attacker.sh(&format!(
        "cd '{}' && rmdir tmp && ln -s ../bob/cur tmp",
        env.maildir("alice").display()
    ));
    let mut d = Daemon::start(&env);
    let line = d.wait_stderr("tmp sweep: refusing maildir");
    assert!(line.contains("alice"), "{line}");
    assert!(
        bait.exists(),
        "the sweep deleted bob's mail through alice's tmp link"
    );
    assert_bob_untouched(&env, &bob_msg);
    assert_eq!(pop3_dump(env.pop3_port, "bob", PW, &["quit"]).stat.0, 2);
}

#[test]
fn user_add_refuses_to_chown_through_a_planted_link() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: user add chowns"
    );
    let env = TestEnv::new();
    // A leftover Maildir (kept by `user del`) whose cur/ points at a directory
    // of root's (standing in for /etc).
    let target = env.subdir("etc-like");
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let before = std::fs::metadata(&target).expect("stat");
    let md = env.mail_root().join("carol");
    for sub in ["tmp", "new"] {
        std::fs::create_dir_all(md.join(sub)).expect("mkdir");
    }
    std::os::unix::fs::symlink(&target, md.join("cur")).expect("symlink");
    let group = nix::unistd::Group::from_gid(nix::unistd::getgid())
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| "root".into());
    let o = maildird(
        &env.config(),
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--unix-group",
            &group,
        ],
        format!("{PW}\n").as_bytes(),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cur") && err.contains("symbolic link") && err.contains("refusing"),
        "the error must say what was found: {err}"
    );
    let after = std::fs::metadata(&target).expect("stat");
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode()),
        "the link's target must not be chowned or chmodded"
    );
}

#[test]
fn lock_file_as_fifo_or_dev_zero_is_refused_quickly() {
    let attacker = Attacker::new();
    let env = TestEnv::new();
    let bob_msg = setup(&env, &attacker);
    let mut d = Daemon::start(&env);
    let lock = env.maildir("alice").join("maildird-pop3.lock");
    attacker.sh(&format!("rm -f '{0}' && mkfifo '{0}'", lock.display()));
    let base = proc_status(d.pid(), "Threads");
    let start = Instant::now();
    for _ in 0..40 {
        let (mut c, r) = pop3_login(env.pop3_port, "alice");
        assert!(r.starts_with("-ERR"), "{r:?}");
        let _ = c.cmd_pop("QUIT\r\n");
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "40 refused logins took {:?}",
        start.elapsed()
    );
    d.wait_stderr("refusing mailbox lock");
    assert!(d.log().contains("FIFO"), "{}", d.log());
    // No thread was parked in open(): the pool did not grow by one per login.
    let now = proc_status(d.pid(), "Threads");
    assert!(now < base + 20, "threads {base} -> {now} after 40 logins");
    // A link to /dev/zero: refused without reading it.
    attacker.sh(&format!(
        "rm '{0}' && ln -s /dev/zero '{0}'",
        lock.display()
    ));
    let (_c, r) = pop3_login(env.pop3_port, "alice");
    assert!(r.starts_with("-ERR"), "{r:?}");
    d.wait_stderr("symbolic link");
    // Others are still served, and SIGTERM still stops the daemon at once.
    assert_bob_untouched(&env, &bob_msg);
    let t = Instant::now();
    assert!(d.stop().success());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn a_message_to_a_shared_and_a_private_mailbox_is_two_files() {
    let attacker = Attacker::new();
    let env = TestEnv::new();
    let _ = setup(&env, &attacker);
    let _d = Daemon::start(&env);
    // alice (shared with the attacker's group) first, so the old code staged
    // the one inode 0660 in her tmp/ and hard-linked it into bob's new/.
    deliver(
        env.smtp_port,
        &["alice@example.org", "bob@example.org"],
        &message("to both", "alice@example.org"),
    );
    let newest = |user: &str| -> PathBuf {
        let dir = env.maildir(user).join("new");
        std::fs::read_dir(&dir)
            .expect("new/")
            .map(|e| e.expect("entry").path())
            .find(|p| {
                std::fs::read(p).is_ok_and(|b| String::from_utf8_lossy(&b).contains("to both"))
            })
            .unwrap_or_else(|| panic!("no message in {}", dir.display()))
    };
    let (a, b) = (newest("alice"), newest("bob"));
    let bob_before = std::fs::read(&b).expect("bob's copy");
    assert_ne!(
        std::fs::metadata(&a).expect("a").ino(),
        std::fs::metadata(&b).expect("b").ino(),
        "a shared Maildir must not hold a link to another mailbox's file"
    );
    // The attacker rewrites her own copy: bob's stays as delivered.
    attacker.sh(&format!("echo forged > '{}'", a.display()));
    assert_eq!(std::fs::read(&b).expect("bob's copy"), bob_before);
    assert_eq!(std::fs::metadata(&b).expect("b").mode() & 0o077, 0);
    let dump = pop3_dump(env.pop3_port, "bob", PW, &["quit"]);
    assert!(
        dump.retr
            .iter()
            .all(|m| !String::from_utf8_lossy(m).contains("forged"))
    );
}

#[test]
fn a_huge_sparse_file_is_refused_by_retr_and_the_daemon_serves_on() {
    let attacker = Attacker::new();
    let env = TestEnv::new();
    let bob_msg = setup(&env, &attacker);
    let mut d = Daemon::start(&env);
    // 1 TiB of holes, named like a message with a small W=.
    attacker.sh(&format!(
        "truncate -s 1T '{}'",
        env.maildir("alice")
            .join("cur")
            .join("1700000000.M1P1Q1R1.evil,S=10,W=10:2,S")
            .display()
    ));
    let (mut c, r) = pop3_login(env.pop3_port, "alice");
    assert!(r.starts_with("+OK"), "{r:?}");
    let (status, _) = multi(&mut c, "RETR 1\r\n");
    assert!(status.starts_with("-ERR"), "{status:?}");
    let (status, _) = multi(&mut c, "TOP 1 0\r\n");
    assert!(status.starts_with("-ERR"), "{status:?}");
    assert!(c.cmd_pop("QUIT\r\n").starts_with("+OK"));
    d.wait_stderr("larger than the limit");
    assert_bob_untouched(&env, &bob_msg);
}
