//! A full disk: mail_root on a small tmpfs. Deliveries past the space get
//! `452 4.3.1`, nothing partial appears in `new/`, the daemon keeps serving and
//! recovers when space is freed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use common::*;

/// Unmounts on drop, also when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One delivery over raw SMTP; returns the reply to the end of DATA.
fn send(port: u16, body: &[u8]) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut reply = || loop {
        let mut l = String::new();
        r.read_line(&mut l).expect("read");
        if l.as_bytes().get(3) != Some(&b'-') {
            return l;
        }
    };
    assert!(reply().starts_with("220"));
    for (cmd, want) in [
        (&b"EHLO full.test\r\n"[..], "250"),
        (b"MAIL FROM:<f@full.test>\r\n", "250"),
        (b"RCPT TO:<alice@example.org>\r\n", "250"),
        (b"DATA\r\n", "354"),
    ] {
        w.write_all(cmd).expect("write");
        let l = reply();
        assert!(l.starts_with(want), "{l}");
    }
    w.write_all(body).expect("write");
    let l = reply();
    let _ = w.write_all(b"QUIT\r\n");
    l
}

fn big_message(i: usize) -> Vec<u8> {
    let mut b = format!("Subject: filler {i}\r\n\r\n").into_bytes();
    for _ in 0..2000 {
        b.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n",
        );
    }
    b.extend_from_slice(format!("END {i}\r\n.\r\n").as_bytes());
    b
}

#[test]
fn a_full_disk_gets_452_leaves_nothing_partial_and_recovers() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the full-disk test mounts a tmpfs: run it as root"
    );
    let env = TestEnv::new();
    let root = env.mail_root();
    std::fs::create_dir_all(&root).expect("mkdir");
    let o = run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"])
            .arg(&root),
        b"",
    );
    assert_ok(&o, "mount tmpfs");
    let _m = Mount(root.clone());
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    // ~140 KiB each: the 1 MiB tmpfs fills after a handful.
    let mut delivered = 0;
    let mut refusal = None;
    for i in 0..20 {
        let r = send(env.smtp_port, &big_message(i));
        if r.starts_with("250") {
            delivered += 1;
        } else {
            refusal = Some(r);
            break;
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    assert!(refusal.starts_with("452 4.3.1"), "{refusal}");
    assert!(delivered >= 2, "{delivered}");
    let md = env.maildir("alice");
    // Nothing partial: every file in new/ is a complete message, tmp/ is empty.
    let files = read_new(&env, "alice");
    assert_eq!(files.len(), delivered);
    for (name, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        let i: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: filler "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: partial"));
        assert!(text.ends_with(&format!("END {i}\n")), "{name}: partial");
    }
    assert_eq!(std::fs::read_dir(md.join("tmp")).expect("tmp").count(), 0);
    // Still serving: POP3 lists what is there.
    let d = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(d.stat.0, delivered);
    // Free space, and delivery works again.
    std::fs::remove_file(md.join("new").join(&files[0].0)).expect("free space");
    let r = send(env.smtp_port, &big_message(99));
    assert!(r.starts_with("250"), "after freeing space: {r}");
}
