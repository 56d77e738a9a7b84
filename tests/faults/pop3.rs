//! POP3 under faults: a full disk must not lock users out (they log in to
//! delete mail and free space), and a failing unlink during UPDATE deletes
//! no unmarked message, leaves no marked one behind without telling the
//! client, and leaves the mailbox usable.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use crate::common::*;
use crate::tools::*;

/// A logged-in POP3 session (USER/PASS), or the reply that refused it.
fn login(port: u16, user: &str) -> Result<Line, String> {
    let mut c = Line::connect(port);
    let greeting = c.line();
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let r = c.cmd_pop(format!("USER {user}\r\n"));
    assert!(r.starts_with("+OK"), "USER: {r}");
    let r = c.cmd_pop(format!("PASS {PW}\r\n"));
    if r.starts_with("+OK") { Ok(c) } else { Err(r) }
}

/// UIDL: message number -> unique id (the Maildir base name).
fn uidl(c: &mut Line) -> BTreeMap<usize, String> {
    let r = c.cmd_pop("UIDL\r\n");
    assert!(r.starts_with("+OK"), "UIDL: {r}");
    let mut m = BTreeMap::new();
    // Bounded by the mailbox: one line per message, then ".".
    for _ in 0..10_000 {
        let l = c.line();
        let l = l.trim_end();
        if l == "." {
            return m;
        }
        let (n, u) = l.split_once(' ').expect("UIDL line");
        m.insert(n.parse().expect("msg number"), u.to_string());
    }
    panic!("UIDL listing without end");
}

/// Base names of the messages in a Maildir's new/ and cur/.
fn on_disk(maildir: &Path) -> Vec<String> {
    by_base_name(maildir).into_keys().collect()
}

/// One SMTP delivery to alice over a raw session; the reply to the data.
fn smtp_send(port: u16, body: &str) -> String {
    let mut c = Line::smtp_ready(port);
    for (cmd, want) in [
        ("MAIL FROM:<full@client.test>\r\n", "250"),
        ("RCPT TO:<alice@example.org>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        let r = c.cmd(cmd);
        assert!(r.starts_with(want), "{cmd}: {r}");
    }
    let r = c.cmd(format!("{body}.\r\n"));
    let _ = c.cmd("QUIT\r\n");
    r
}

fn filler_message(i: usize) -> String {
    let mut b = format!("Subject: full-disk {i}\r\n\r\n");
    for _ in 0..1000 {
        b.push_str("0123456789012345678901234567890123456789012345678901234567890123456789\r\n");
    }
    b.push_str(&format!("END {i}\r\n"));
    b
}

#[test]
fn pop3_on_a_full_disk_logs_in_deletes_and_frees_the_space() {
    let env = TestEnv::new();
    // Few inodes too: "full" means no block and no inode left.
    let fs = Tmpfs::mount(&env.mail_root(), "size=1m,nr_inodes=64,mode=0755");
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    // ~70 KiB each: a dozen fill the 1 MiB.
    let mut delivered = 0;
    let mut refusal = None;
    for i in 0..40 {
        let r = smtp_send(env.smtp_port, &filler_message(i));
        if r.starts_with("250") {
            delivered += 1;
        } else {
            refusal = Some(r);
            break;
        }
    }
    let refusal = refusal.expect("the tmpfs never filled up");
    assert!(refusal.starts_with("452"), "{refusal}");
    assert!(delivered >= 3, "{delivered}");
    // The rest of the blocks, then the rest of the inodes (root's files, outside
    // any Maildir).
    let fill = env.mail_root().join(".fill");
    std::fs::create_dir(&fill).expect("mkdir .fill");
    let mut f = File::create(fill.join("blocks")).expect("create filler");
    let chunk = [0x55u8; 4096];
    for _ in 0..1024 {
        match f.write(&chunk) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    drop(f);
    for i in 0..1000 {
        if File::create(fill.join(format!("i{i}"))).is_err() {
            break;
        }
    }
    let (bytes, inodes) = fs.free();
    assert!(
        bytes < 4096 && inodes == 0,
        "not full: {bytes} bytes, {inodes} inodes free"
    );
    let md = env.maildir("alice");
    let before = on_disk(&md);
    assert_eq!(before.len(), delivered);

    // The user can still log in, delete and quit.
    let mut c = login(env.pop3_port, "alice").unwrap_or_else(|r| {
        panic!("POP3 login on a full disk was refused: {r}(the lock must need no new disk space)")
    });
    let ids = uidl(&mut c);
    assert_eq!(ids.len(), delivered);
    let r = c.cmd_pop("DELE 1\r\n");
    assert!(r.starts_with("+OK"), "DELE 1: {r}");
    let r = c.cmd_pop("QUIT\r\n");
    assert!(r.starts_with("+OK"), "QUIT on a full disk: {r}");
    let after = on_disk(&md);
    assert!(
        !after.contains(&ids[&1]),
        "the deleted message is still there"
    );
    assert_eq!(after.len(), delivered - 1, "{after:?}");
    let (freed, _) = fs.free();
    assert!(freed >= 64 * 1024, "DELE+QUIT freed only {freed} bytes");
    // Not stuck: the next login works, and so does a delivery.
    let mut c = login(env.pop3_port, "alice").unwrap_or_else(|r| panic!("second login: {r}"));
    assert_eq!(uidl(&mut c).len(), delivered - 1);
    assert!(c.cmd_pop("QUIT\r\n").starts_with("+OK"));
    // tmpfs counts every hard link against nr_inodes (mm/shmem.c, shmem_link),
    // so a delivery (tmp file + its link into new/) needs two slots where the
    // deleted message freed one: give back the block filler's inode (a disk
    // filesystem needs no inode for a link).
    std::fs::remove_file(fill.join("blocks")).expect("free the block filler");
    let r = smtp_send(env.smtp_port, "Subject: after freeing\r\n\r\nsmall\r\n");
    assert!(
        r.starts_with("250"),
        "delivery after DELE+QUIT freed space: {r}"
    );
}

/// alice with `n` messages; returns the running daemon.
fn mailbox_with(env: &TestEnv, n: usize) -> Daemon {
    add_user(env, "alice", PW);
    let d = Daemon::start(env);
    for i in 0..n {
        deliver(
            env.smtp_port,
            &["alice@example.org"],
            &message(&format!("update {i}"), "alice@example.org"),
        );
    }
    d
}

#[test]
fn pop3_update_with_one_failing_unlink_removes_every_other_marked_message() {
    let env = TestEnv::new();
    let d = mailbox_with(&env, 10);
    let md = env.maildir("alice");
    let mut c = login(env.pop3_port, "alice").expect("login");
    let ids = uidl(&mut c);
    assert_eq!(ids.len(), 10);
    let marked: Vec<usize> = (1..=10).filter(|n| n % 2 == 0).collect();
    for n in &marked {
        let r = c.cmd_pop(format!("DELE {n}\r\n"));
        assert!(r.starts_with("+OK"), "DELE {n}: {r}");
    }
    // Only the message unlinks (descriptors of new/ and cur/), and only the
    // second of them fails.
    let strace = Strace::attach(
        d.pid(),
        "unlinkat",
        &["unlinkat:error=EIO:when=2"],
        &[&md.join("new"), &md.join("cur")],
        &env.path().join("strace-update.txt"),
    );
    let reply = c.cmd_pop("QUIT\r\n");
    let injected = strace.detach();
    assert_eq!(injected.total(), 1, "{injected:?}");
    let left = on_disk(&md);
    for (n, id) in &ids {
        if !marked.contains(n) {
            assert!(left.contains(id), "unmarked message {n} ({id}) was deleted");
        }
    }
    let marked_left: Vec<usize> = marked
        .iter()
        .copied()
        .filter(|n| left.contains(&ids[n]))
        .collect();
    eprintln!("QUIT: {reply:?}; marked messages left: {marked_left:?}");
    if reply.starts_with("+OK") {
        assert!(
            marked_left.is_empty(),
            "+OK but marked {marked_left:?} are still there"
        );
    } else {
        assert!(reply.starts_with("-ERR"), "{reply}");
        // UPDATE goes on after a failure: only the message whose unlink failed stays.
        assert_eq!(
            marked_left.len(),
            1,
            "one unlink failed, yet marked messages {marked_left:?} are left: UPDATE must try every marked message"
        );
    }
    // The mailbox is not stuck, and lists exactly what is on disk.
    let mut c = login(env.pop3_port, "alice").unwrap_or_else(|r| panic!("login after UPDATE: {r}"));
    assert_eq!(uidl(&mut c).len(), left.len());
    assert!(c.cmd_pop("QUIT\r\n").starts_with("+OK"));
}

#[test]
fn pop3_update_when_every_unlink_fails_tells_the_client_and_leaves_the_mailbox_usable() {
    let env = TestEnv::new();
    let d = mailbox_with(&env, 4);
    let md = env.maildir("alice");
    let mut c = login(env.pop3_port, "alice").expect("login");
    let ids = uidl(&mut c);
    for n in [1, 3] {
        let r = c.cmd_pop(format!("DELE {n}\r\n"));
        assert!(r.starts_with("+OK"), "DELE {n}: {r}");
    }
    let before = on_disk(&md);
    // Every unlinkat in the Maildir fails: messages and the lock's.
    let strace = Strace::attach(
        d.pid(),
        "unlinkat",
        &["unlinkat:error=EIO"],
        &[&md, &md.join("new"), &md.join("cur")],
        &env.path().join("strace-update-all.txt"),
    );
    let reply = c.cmd_pop("QUIT\r\n");
    let injected = strace.detach();
    assert!(injected.total() >= 1, "{injected:?}");
    assert!(
        reply.starts_with("-ERR"),
        "no marked message could be removed, yet QUIT answered {reply:?}"
    );
    assert_eq!(
        on_disk(&md),
        before,
        "a message went although every unlink failed"
    );
    assert_eq!(ids.len(), before.len());
    // A failed unlink of the lock must not lock the mailbox until a restart.
    let mut c = login(env.pop3_port, "alice")
        .unwrap_or_else(|r| panic!("login after an UPDATE whose unlinks failed: {r}"));
    let now = uidl(&mut c);
    assert_eq!(now.len(), 4);
    // Now the deletions go through.
    for (n, id) in &now {
        if id == &ids[&1] || id == &ids[&3] {
            assert!(c.cmd_pop(format!("DELE {n}\r\n")).starts_with("+OK"));
        }
    }
    let r = c.cmd_pop("QUIT\r\n");
    assert!(r.starts_with("+OK"), "{r}");
    let left = on_disk(&md);
    assert_eq!(left.len(), 2);
    assert!(!left.contains(&ids[&1]) && !left.contains(&ids[&3]));
}
