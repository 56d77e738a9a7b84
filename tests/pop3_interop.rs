//! POP3 interop against a standalone daemon: python3 poplib, curl, fetchmail, getmail6
//! and mutt (sharing the Maildir) must see exactly the stored messages, and the
//! one-session lock must hold, also between two daemons (maildird(8), MAILDIR and POP3;
//! RFC 1939, 2449).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// An env with alice and two messages delivered over SMTP; returns the daemon too.
fn env_with_two_messages() -> (TestEnv, Daemon, Vec<Vec<u8>>) {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let d = Daemon::start(&env);
    let msgs = vec![
        message("first message", "alice@example.org"),
        message("second message", "alice@example.org"),
    ];
    for m in &msgs {
        deliver(env.smtp_port, &["alice@example.org"], m);
    }
    assert_eq!(read_new(&env, "alice").len(), 2);
    (env, d, msgs)
}

#[test]
fn poplib_stat_list_uidl_top_retr_match_the_maildir() {
    let (env, _d, msgs) = env_with_two_messages();
    let before = snapshot(&env.maildir("alice"));
    let d = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert!(d.greeting.starts_with("+OK"), "greeting {:?}", d.greeting);
    for cap in ["TOP", "UIDL", "USER", "RESP-CODES", "PIPELINING"] {
        assert!(
            d.capa.iter().any(|c| c == cap),
            "CAPA lacks {cap}: {:?}",
            d.capa
        );
    }
    assert!(
        d.capa
            .iter()
            .any(|c| c.split_whitespace().eq(["SASL", "PLAIN"])
                || (c.starts_with("SASL ") && c.split_whitespace().any(|m| m == "PLAIN"))),
        "CAPA lacks SASL PLAIN: {:?}",
        d.capa
    );
    assert_pop3_matches_maildir(&d, &env.maildir("alice"));
    // Both messages retrieved, each ending with what was sent (CRLF on the wire).
    for m in &msgs {
        assert!(
            d.retr.iter().any(|r| r.ends_with(m)),
            "a sent message is missing from RETR"
        );
    }
    for (_, uid) in &d.uidl {
        assert!(
            uid.len() <= 70 && uid.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "RFC 1939 §7 UIDL {uid:?}"
        );
    }
    assert!(d.stdout.contains("QUIT +OK"), "{}", d.stdout);
    // No DELE: QUIT leaves the Maildir byte-identical.
    assert_eq!(snapshot(&env.maildir("alice")), before);
}

#[test]
fn poplib_dele_then_quit_removes_only_that_message() {
    let (env, _d, _) = env_with_two_messages();
    let first = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    let (_, uid1) = first
        .uidl
        .iter()
        .find(|(i, _)| *i == 1)
        .cloned()
        .expect("uidl 1");
    let (_, uid2) = first
        .uidl
        .iter()
        .find(|(i, _)| *i == 2)
        .cloned()
        .expect("uidl 2");
    let d = pop3_dump(env.pop3_port, "alice", PW, &["dele", "1", "quit"]);
    assert!(d.stdout.contains("QUIT +OK"), "{}", d.stdout);
    // RFC 1939 §6: +OK to QUIT means the deletions are done.
    let left = by_base_name(&env.maildir("alice"));
    assert!(
        !left.contains_key(&uid1),
        "DELEd message still there: {:?}",
        left.keys()
    );
    assert!(
        left.contains_key(&uid2),
        "the other message vanished: {:?}",
        left.keys()
    );
    let after = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(
        after.uidl.iter().map(|x| &x.1).collect::<Vec<_>>(),
        vec![&uid2]
    );
}

#[test]
fn poplib_second_concurrent_session_gets_in_use() {
    let (env, _d, _) = env_with_two_messages();
    let out = python_ok(
        r#"
import poplib, sys
port, pw = int(sys.argv[1]), sys.argv[2]
p1 = poplib.POP3('127.0.0.1', port, timeout=20)
p1.user('alice'); p1.pass_(pw)
print('FIRST', p1.stat())
p2 = poplib.POP3('127.0.0.1', port, timeout=20)
p2.user('alice')
try:
    p2.pass_(pw)
    print('SECOND LOGGED IN')
except poplib.error_proto as e:
    print('SECOND', e.args[0].decode())
p2.close()
print('QUIT1', p1.quit().decode())
p3 = poplib.POP3('127.0.0.1', port, timeout=20)
p3.user('alice'); p3.pass_(pw)
print('THIRD', p3.stat())
p3.quit()
"#,
        &[&env.pop3_port.to_string(), PW],
    );
    assert!(out.contains("SECOND -ERR [IN-USE]"), "{out}");
    assert!(!out.contains("SECOND LOGGED IN"), "{out}");
    assert!(
        out.contains("THIRD (2,"),
        "lock not released after QUIT: {out}"
    );
}

#[test]
fn poplib_dele_then_dropped_connection_changes_nothing() {
    let (env, _d, _) = env_with_two_messages();
    let before = snapshot(&env.maildir("alice"));
    let d = pop3_dump(
        env.pop3_port,
        "alice",
        PW,
        &["dele", "1", "dele", "2", "drop"],
    );
    assert!(d.stdout.contains("DROPPED"), "{}", d.stdout);
    // A new session (retrying while the dropped one is torn down, which proves the
    // daemon finished with it) still sees both messages, and no file changed.
    let again = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(again.stat.0, 2, "messages lost after a dropped session");
    assert_eq!(
        snapshot(&env.maildir("alice")),
        before,
        "Maildir changed by a dropped session"
    );
}

#[test]
fn curl_pop3_list_and_retr_byte_exact() {
    let (env, _d, _) = env_with_two_messages();
    let curl = require_tool("curl", "curl");
    let dump = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    let o = run(
        Command::new(&curl)
            .args(["-sS", "--fail", "-u"])
            .arg(format!("alice:{PW}"))
            .arg(format!("pop3://127.0.0.1:{}/", env.pop3_port)),
        b"",
    );
    assert_ok(&o, "curl pop3 LIST");
    let list = String::from_utf8_lossy(&o.stdout);
    let want: String = dump
        .list
        .iter()
        .map(|(i, s)| format!("{i} {s}\r\n"))
        .collect();
    assert_eq!(list, want);
    for i in 1..=2 {
        let o = run(
            Command::new(&curl)
                .args(["-sS", "--fail", "-u"])
                .arg(format!("alice:{PW}"))
                .arg(format!("pop3://127.0.0.1:{}/{i}", env.pop3_port)),
            b"",
        );
        assert_ok(&o, "curl pop3 RETR");
        let (_, uid) = &dump.uidl[i - 1];
        let (_, file) = &by_base_name(&env.maildir("alice"))[uid];
        assert!(
            o.stdout == to_crlf(file),
            "curl RETR {i} differs from the file with CRLF\n{}",
            show(&o)
        );
    }
}

/// Runs fetchmail once against the env with an MDA writing each message to `out/`.
fn fetchmail(env: &TestEnv, out: &Path, keep: bool) -> std::process::Output {
    let fm = require_tool("fetchmail", "fetchmail");
    let home = env.subdir("fetchmail-home");
    let rc = home.join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no syslog\nset invisible\n\
             poll 127.0.0.1 with proto POP3 port {port} auth password\n\
             \tuser \"alice\" there with password \"{PW}\"\n\
             \toptions {keep} fetchall no rewrite sslproto ''\n\
             \tmda \"cat > {out}/msg.$$\"\n",
            port = env.pop3_port,
            keep = if keep { "keep" } else { "no keep" },
            out = out.display()
        ),
    )
    .expect("write fetchmailrc");
    chmod(&rc, 0o600); // fetchmail refuses a readable rc file holding a password
    run(
        Command::new(fm)
            .env("FETCHMAILHOME", &home)
            .env("HOME", &home)
            // As root, fetchmail's lock would be the global /var/run/fetchmail.pid.
            .arg("--pidfile")
            .arg(home.join("fetchmail.pid"))
            .arg("--idfile")
            .arg(home.join("fetchids"))
            .args(["-v", "--nodetach", "-f"])
            .arg(&rc),
        b"",
    )
}

#[test]
fn fetchmail_keep_gets_exact_messages_and_leaves_the_maildir() {
    let (env, _d, _) = env_with_two_messages();
    let before = snapshot(&env.maildir("alice"));
    let out = env.subdir("fetched");
    let o = fetchmail(&env, &out, true);
    assert_ok(&o, "fetchmail --keep");
    let mut got: Vec<Vec<u8>> = read_files(&out).into_iter().map(|x| x.1).collect();
    let mut want: Vec<Vec<u8>> = read_new(&env, "alice").into_iter().map(|x| x.1).collect();
    got.sort();
    want.sort();
    assert_eq!(
        got.len(),
        2,
        "fetchmail delivered {} messages\n{}",
        got.len(),
        show(&o)
    );
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "fetched message differs from the Maildir file\n--- fetched ---\n{}\n--- file ---\n{}",
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(w)
        );
    }
    assert_eq!(
        snapshot(&env.maildir("alice")),
        before,
        "keep changed the Maildir"
    );
}

#[test]
fn fetchmail_without_keep_deletes_on_the_server() {
    let (env, _d, _) = env_with_two_messages();
    let want: Vec<Vec<u8>> = read_new(&env, "alice").into_iter().map(|x| x.1).collect();
    let out = env.subdir("fetched");
    let o = fetchmail(&env, &out, false);
    assert_ok(&o, "fetchmail");
    let mut got: Vec<Vec<u8>> = read_files(&out).into_iter().map(|x| x.1).collect();
    got.sort();
    let mut want = want;
    want.sort();
    assert_eq!(got, want, "fetched messages differ\n{}", show(&o));
    assert!(
        by_base_name(&env.maildir("alice")).is_empty(),
        "messages not deleted on the server"
    );
}

#[test]
fn getmail_to_maildir_byte_exact() {
    let (env, _d, _) = env_with_two_messages();
    let getmail = require_tool("getmail", "getmail6");
    let dest = env.subdir("dest");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(dest.join(sub)).expect("mkdir");
    }
    let gmdir = env.subdir("getmail");
    // getmail refuses to deliver into a Maildir as root; it then needs `user =` (a
    // non-root user it switches to), which must reach and own the destination.
    let deliver_as = if nix::unistd::geteuid().is_root() {
        let chown = require_tool("chown", "coreutils");
        chmod(env.path(), 0o711);
        assert_ok(
            &run(Command::new(chown).args(["-R", "nobody"]).arg(&dest), b""),
            "chown nobody dest",
        );
        "user = nobody\n"
    } else {
        ""
    };
    let rc = gmdir.join("getmailrc");
    std::fs::write(
        &rc,
        format!(
            "[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {}\nusername = alice\npassword = {PW}\n\n\
             [destination]\ntype = Maildir\npath = {}/\n{deliver_as}\n\
             [options]\nverbose = 2\nread_all = true\ndelete = false\ndelivered_to = false\nreceived = false\nmessage_log_syslog = false\n",
            env.pop3_port,
            dest.display()
        ),
    )
    .expect("write getmailrc");
    chmod(&rc, 0o600);
    let before = snapshot(&env.maildir("alice"));
    // getmail forks a child per delivery as `user`; give it more than WAIT on a
    // loaded machine (seen once: >20 s with fuzzers running beside the suite).
    let o = run_timeout(
        Command::new(getmail)
            .arg("--rcfile")
            .arg(&rc)
            .arg("--getmaildir")
            .arg(&gmdir),
        b"",
        WAIT * 3,
    );
    assert_ok(&o, "getmail");
    let mut got: Vec<Vec<u8>> = read_files(&dest.join("new"))
        .into_iter()
        .map(|x| x.1)
        .collect();
    let mut want: Vec<Vec<u8>> = read_new(&env, "alice").into_iter().map(|x| x.1).collect();
    got.sort();
    want.sort();
    assert_eq!(
        got.len(),
        2,
        "getmail delivered {} messages\n{}",
        got.len(),
        show(&o)
    );
    for (g, w) in got.iter().zip(&want) {
        assert!(
            g == w,
            "getmail's copy differs\n--- got ---\n{}\n--- file ---\n{}",
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(w)
        );
    }
    assert_eq!(
        snapshot(&env.maildir("alice")),
        before,
        "delete = false changed the Maildir"
    );
}

/// Two daemons (own config, ports, hostname, control socket) over one mail_root:
/// the POP3 lock must be visible across them (maildird(8), POP3).
#[test]
fn two_daemons_sharing_mail_root_share_the_pop3_lock() {
    let (env, _d1, _) = env_with_two_messages();
    let smtp2 = free_port();
    let pop2 = free_port();
    let cfg2 = env.write_config(
        "maildird2.toml",
        &env.config_toml(
            "mx2.test",
            &format!("127.0.0.1:{smtp2}"),
            &format!("127.0.0.1:{pop2}"),
            "control2.sock",
        ),
    );
    let _d2 = Daemon::start_with(&env, &cfg2);
    let out = python_ok(
        r#"
import poplib, sys
port1, port2, pw = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
p1 = poplib.POP3('127.0.0.1', port1, timeout=20)
p1.user('alice'); p1.pass_(pw)
print('ONE', p1.stat())
p2 = poplib.POP3('127.0.0.1', port2, timeout=20)
print('GREETING2', p2.getwelcome().decode())
p2.user('alice')
try:
    p2.pass_(pw)
    print('TWO LOGGED IN')
except poplib.error_proto as e:
    print('TWO', e.args[0].decode())
p2.close()
p1.quit()
# And the other way round.
p2 = poplib.POP3('127.0.0.1', port2, timeout=20)
p2.user('alice'); p2.pass_(pw)
p1 = poplib.POP3('127.0.0.1', port1, timeout=20)
p1.user('alice')
try:
    p1.pass_(pw)
    print('ONE AGAIN LOGGED IN')
except poplib.error_proto as e:
    print('ONE AGAIN', e.args[0].decode())
p1.close()
p2.quit()
"#,
        &[&env.pop3_port.to_string(), &pop2.to_string(), PW],
    );
    assert!(out.contains("TWO -ERR [IN-USE]"), "{out}");
    assert!(out.contains("ONE AGAIN -ERR [IN-USE]"), "{out}");
    // The second daemon delivers into the same store with its own host name.
    let msg = message("via daemon two", "alice@example.org");
    deliver(smtp2, &["alice@example.org"], &msg);
    let files = read_new(&env, "alice");
    assert_eq!(files.len(), 3);
    assert!(
        files.iter().any(
            |(_, b)| String::from_utf8_lossy(b).contains("by mx2.test (maildird)")
                && b.ends_with(&to_lf(&msg))
        ),
        "no message delivered by mx2.test"
    );
}

/// Removes the Unix user on drop.
struct UnixUser(String);

impl Drop for UnixUser {
    fn drop(&mut self) {
        let _ = Command::new(require_tool("userdel", "passwd"))
            .arg(&self.0)
            .status();
    }
}

#[test]
fn mutt_reading_the_maildir_keeps_pop3_uidls_and_sizes() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the mutt test must run as root: it creates a Unix user with useradd and runs mutt \
         as that user under tmux (run the e2e tests as root, e.g. in the CI container)"
    );
    let tmux_bin = require_tool("tmux", "tmux");
    require_tool("mutt", "mutt");
    require_tool("su", "util-linux");
    let useradd = require_tool("useradd", "passwd");
    let env = TestEnv::new();
    let name = format!("mdt{}x{}", std::process::id() % 100_000, unique());
    let home = env.subdir("home");
    let o = run(
        Command::new(useradd)
            .args(["-U", "-M", "-d"])
            .arg(&home)
            .args(["-s", "/bin/sh"])
            .arg(&name),
        b"",
    );
    assert_ok(&o, "useradd");
    let _user = UnixUser(name.clone());
    // mutt asks to create ~/Mail (its default `folder`) when it is missing.
    std::fs::create_dir_all(home.join("Mail")).expect("mkdir ~/Mail");
    let chown = require_tool("chown", "coreutils");
    assert_ok(
        &run(
            Command::new(&chown)
                .arg("-R")
                .arg(format!("{name}:"))
                .arg(&home),
            b"",
        ),
        "chown home",
    );
    // The documented ownership model: the Maildir stays the daemon's, shared with
    // the Unix account's group (useradd -U made a group of the same name).
    add_shared_user(&env, "alice", PW, &name);
    let _d = Daemon::start(&env);
    for subject in ["first message", "second message"] {
        deliver(
            env.smtp_port,
            &["alice@example.org"],
            &message(subject, "alice@example.org"),
        );
    }
    let before = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    assert_eq!(before.stat.0, 2);

    let tmux = Tmux {
        bin: tmux_bin,
        sock: env.path().join("tmux.sock"),
    };
    let maildir = format!("{}/", env.maildir("alice").display());
    let inner = format!("exec mutt -n -F /dev/null -f '{maildir}'");
    tmux.start(&format!(
        "exec su {name} -s /bin/sh -c \"HOME={} TERM=screen {inner}\"",
        home.display()
    ));
    tmux.wait_screen("the message list", |s| {
        s.contains("first message") && s.contains("second message")
    });
    tmux.keys(&["Enter"]);
    tmux.wait_screen("the pager", |s| s.contains("leading dot line"));
    tmux.keys(&["q"]);
    tmux.wait_screen("the index again", |s| {
        s.contains("second message") && !s.contains("leading dot line")
    });
    tmux.keys(&["q"]);
    // Answer any quit-time question with "no" (keep messages where they are), bounded.
    let deadline = Instant::now() + WAIT;
    while tmux.alive() {
        assert!(
            Instant::now() < deadline,
            "mutt did not quit:\n{}",
            tmux.capture().unwrap_or_default()
        );
        if let Some(s) = tmux.capture() {
            if s.contains("yes/no")
                || s.contains("no/yes")
                || s.contains("[no]")
                || s.contains("[yes]")
            {
                tmux.keys(&["n"]);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // mutt moved the message it opened to cur/ with the S flag...
    let cur = read_cur(&env, "alice");
    assert!(
        cur.iter()
            .any(|(n, _)| n.split_once(":2,").is_some_and(|(_, f)| f.contains('S'))),
        "mutt did not mark the opened message seen in cur/: {:?}",
        cur.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    // ...and POP3 still sees the same messages under the same UIDLs and sizes.
    let after = pop3_dump(env.pop3_port, "alice", PW, &["quit"]);
    let key = |d: &Pop3Dump| {
        let mut v: Vec<(String, u64)> = d
            .uidl
            .iter()
            .map(|(i, u)| {
                (
                    u.clone(),
                    d.list
                        .iter()
                        .find(|(n, _)| n == i)
                        .map(|x| x.1)
                        .unwrap_or(0),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        key(&after),
        key(&before),
        "UIDLs/sizes changed after mutt read the Maildir"
    );
    assert_pop3_matches_maildir(&after, &env.maildir("alice"));

    // The daemon still deletes what mutt renamed: DELE both, QUIT, nothing left.
    let gone = pop3_dump(
        env.pop3_port,
        "alice",
        PW,
        &["dele", "1", "dele", "2", "quit"],
    );
    assert_eq!(gone.stat.0, 2);
    assert!(
        read_new(&env, "alice").is_empty() && read_cur(&env, "alice").is_empty(),
        "messages left after DELE+QUIT"
    );
}

/// A stored message of `size` bytes (LF line ends, some lines starting with
/// `.`), different for each `user`.
fn big_message(user: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: sender@example.org\nTo: {user}@example.org\nSubject: big\nMessage-ID: <big.{user}@example.org>\n\n"
    )
    .into_bytes();
    m.reserve(size);
    let mut i = 0u64;
    while m.len() < size {
        let dot = if i % 1000 == 7 { "." } else { "" };
        m.extend_from_slice(
            format!("{dot}{user} line {i:09} {:064x}\n", i * 2654435761).as_bytes(),
        );
        i += 1;
    }
    m
}

/// Five concurrent python3 poplib clients each RETR a 20 MiB message from
/// their own Maildir: RETR streams the file in chunks, so the daemon's peak
/// RSS (VmHWM) grows by less than 64 MiB in all (the bound: about 256 KiB per
/// session plus allocator slack; holding the messages took about 150 MB),
/// and every client gets its message byte for byte.
#[test]
fn five_concurrent_20_mib_retrs_in_bounded_memory() {
    const SIZE: usize = 20 << 20;
    const USERS: [&str; 5] = ["u1", "u2", "u3", "u4", "u5"];
    const BOUND_KIB: u64 = 64 * 1024;
    let env = TestEnv::new();
    let mut want = Vec::new();
    for (n, user) in USERS.iter().enumerate() {
        add_user(&env, user, PW);
        let md = env.maildir(user);
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(md.join(sub)).expect("maildir");
            chmod(&md.join(sub), 0o700);
        }
        chmod(&md, 0o700);
        let m = big_message(user, SIZE);
        // W=: the size on the POP3 wire (every LF becomes CRLF).
        let wire = m.len() + m.iter().filter(|&&b| b == b'\n').count();
        let name = format!("1700000000.M{n}P1Q1R1.mx.test,S={},W={wire}", m.len());
        std::fs::write(md.join("new").join(name), &m).expect("write message");
        give_to_daemon_user(&md);
        want.push(format!("{user} {} {}", m.len(), sha256_hex(&m)));
    }
    let d = Daemon::start(&env);
    let before = proc_status(d.pid(), "VmHWM");
    let out = python_ok(
        r#"
import hashlib, poplib, sys, threading
port, pw, users = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
ready = threading.Barrier(len(users))
got = {}
def fetch(user):
    p = poplib.POP3('127.0.0.1', port, timeout=120)
    p.user(user); p.pass_(pw)
    ready.wait()
    resp, lines, octets = p.retr(1)
    body = b'\n'.join(lines) + b'\n'
    got[user] = '%s %d %s' % (user, len(body), hashlib.sha256(body).hexdigest())
    p.quit()
threads = [threading.Thread(target=fetch, args=(u,)) for u in users]
for t in threads: t.start()
for t in threads: t.join()
for u in users: print(got.get(u, u + ' failed'))
"#,
        &[&[&env.pop3_port.to_string(), PW][..], &USERS[..]].concat(),
    );
    let peak = proc_status(d.pid(), "VmHWM");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want, "what the clients got");
    eprintln!(
        "five concurrent 20 MiB RETRs: daemon VmHWM {before} KiB before, {peak} KiB after (+{} KiB, bound {BOUND_KIB} KiB)",
        peak.saturating_sub(before)
    );
    assert!(
        peak.saturating_sub(before) < BOUND_KIB,
        "daemon peak RSS grew from {before} KiB to {peak} KiB (bound +{BOUND_KIB} KiB)"
    );
}

/// Hex SHA-256, as python's hashlib prints it.
fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}
