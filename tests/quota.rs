//! Mailbox quotas end to end (issue 17; maildird-users(5) `userdb_quota_rule`,
//! maildird.toml(5) QUOTA): a 10 MiB quota in Dovecot's form in the users
//! file, mail sent by Python's smtplib, `452 4.2.2` at RCPT when the box is
//! full and `552 5.2.2` when a message would overflow it, and mail accepted
//! again after a POP3 DELE+QUIT (python poplib) and after mutt (under tmux)
//! deletes a message; the `maildirsize` file checked against the Maildir++
//! rules (definition line, sum of the `S=` sizes and count of every message).
//! Also the per-sender-per-mailbox rate limit.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const PW: &str = "pw-alice";
const MIB: usize = 1024 * 1024;

/// Set alice's `userdb_quota_rule` in the users file (re-read on change).
fn set_quota(env: &TestEnv, rule: &str) {
    let text = std::fs::read_to_string(env.users_file()).expect("users");
    let out: String = text
        .lines()
        .map(|l| {
            if !l.starts_with("alice:") {
                return format!("{l}\n");
            }
            let mut f: Vec<String> = l.split(':').map(str::to_string).collect();
            f.truncate(7);
            f.resize(7, String::new());
            format!("{}:userdb_quota_rule={rule}\n", f.join(":"))
        })
        .collect();
    std::fs::write(env.users_file(), out).expect("write users");
}

/// A message of about `size` bytes.
fn sized(subject: &str, size: usize) -> Vec<u8> {
    let mut m =
        format!("From: sender@client.test\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\r\n")
            .into_bytes();
    let line = b"quota filler line quota filler line quota filler line quota filler line\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

/// What `maildirsize` says: (definition line, bytes, count).
fn maildirsize(maildir: &Path) -> (String, i64, i64) {
    let text = std::fs::read_to_string(maildir.join("maildirsize")).expect("maildirsize");
    let mut lines = text.lines();
    let def = lines.next().expect("definition").to_string();
    let (mut b, mut c) = (0i64, 0i64);
    for l in lines {
        let mut it = l.split_whitespace();
        b += it.next().expect("bytes").parse::<i64>().expect("number");
        c += it.next().expect("count").parse::<i64>().expect("number");
    }
    (def, b, c)
}

/// Every message of the Maildir (new/ and cur/ of it and its folders), by
/// the Maildir++ rule: bytes from `S=` in the name, and the count.
fn counted(maildir: &Path) -> (i64, i64) {
    let mut dirs = vec![maildir.to_path_buf()];
    for e in std::fs::read_dir(maildir).expect("maildir").flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') && e.path().is_dir() {
            dirs.push(e.path());
        }
    }
    let (mut b, mut c) = (0, 0);
    for d in dirs {
        for sub in ["new", "cur"] {
            for (name, bytes) in read_files(&d.join(sub)) {
                let (s, _) = parse_maildir_name(&name).expect("S= in name");
                assert_eq!(s, bytes.len() as u64);
                b += s as i64;
                c += 1;
            }
        }
    }
    (b, c)
}

/// The Subject lines of the inbox's messages.
fn subjects(md: &Path) -> Vec<String> {
    let mut all = read_files(&md.join("new"));
    all.extend(read_files(&md.join("cur")));
    all.iter()
        .filter_map(|(_, b)| {
            String::from_utf8_lossy(b)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect()
}

fn assert_250(r: &str) {
    assert!(r.starts_with("250 2.0.0 Ok: delivered as "), "{r}");
}

#[test]
fn quota_refuses_when_full_and_recovers_after_pop3_and_mutt() {
    let tmux_bin = require_tool("tmux", "tmux");
    require_tool("mutt", "mutt");
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    set_quota(&env, "*:storage=10M");
    let _d = Daemon::start(&env);
    let md = env.maildir("alice");
    let to = ["alice@example.org"];

    for i in 0..3 {
        assert_250(&smtp_send(
            env.smtp_port,
            &to,
            &sized(&format!("big{i}"), 3 * MIB),
        ));
    }
    // 9 MiB stored: another 3 MiB would overflow the 10 MiB.
    assert_eq!(
        smtp_send(env.smtp_port, &to, &sized("overflow", 3 * MIB)),
        "552 5.2.2 Message would exceed the mailbox quota"
    );
    assert_eq!(read_files(&md.join("new")).len(), 3);
    assert!(read_files(&md.join("tmp")).is_empty());
    let (def, b, c) = maildirsize(&md);
    assert_eq!(def, "10485760S");
    assert_eq!((b, c), counted(&md));
    // A smaller one still fits.
    assert_250(&smtp_send(env.smtp_port, &to, &sized("fits", 512 * 1024)));
    assert_eq!((maildirsize(&md).1, maildirsize(&md).2), counted(&md));

    // With SIZE declared (smtplib's sendmail does it), a recipient whose
    // box cannot take the message is refused at RCPT, and the others get it.
    let both = python_ok(
        r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.test', timeout=60)
msg = b'Subject: sized\r\n\r\n' + (b'x' * 98 + b'\r\n') * 10700
try:
    s.sendmail('sender@client.test', ['alice@example.org', 'bob@example.org'], msg)
except smtplib.SMTPRecipientsRefused as e:
    print('all refused', e.recipients)
else:
    print('sent')
s.quit()
"#,
        &[&env.smtp_port.to_string()],
    );
    assert_eq!(both.trim(), "sent");
    assert_eq!(read_files(&env.maildir("bob").join("new")).len(), 1);
    assert!(!subjects(&md).contains(&"sized".to_string()));
    assert!(
        _d.log().contains("refused") && _d.log().contains("code=452 status=4.2.2"),
        "{}",
        _d.log()
    );

    // The admin lowers the quota to 5 MiB: full now, refused at RCPT.
    set_quota(&env, "*:storage=5M");
    assert_eq!(
        smtp_send(env.smtp_port, &to, &sized("small", 1000)),
        "452 4.2.2 Mailbox full"
    );

    // POP3 DELE 1, DELE 2, QUIT: 6 MiB freed, mail accepted again.
    let d = pop3_dump(
        env.pop3_port,
        "alice",
        PW,
        &["dele", "1", "dele", "2", "quit"],
    );
    assert_eq!(d.stat.0, 4, "{}", d.stdout);
    assert_eq!(counted(&md).1, 2);
    assert_250(&smtp_send(env.smtp_port, &to, &sized("after pop3", 1000)));
    let (def, b, c) = maildirsize(&md);
    assert_eq!(def, "5242880S");
    assert_eq!((b, c), counted(&md));

    // 3 MiB quota: full again; mutt deletes the big message; accepted again.
    set_quota(&env, "*:storage=3M");
    assert_eq!(
        smtp_send(env.smtp_port, &to, &sized("small", 1000)),
        "452 4.2.2 Mailbox full"
    );
    let tmux = Tmux {
        bin: tmux_bin,
        sock: env.path().join("tmux.sock"),
    };
    let home = env.subdir("home");
    // mutt asks to create ~/Mail (its default `folder`) when it is missing.
    std::fs::create_dir_all(home.join("Mail")).expect("mkdir ~/Mail");
    let inner = format!("exec mutt -n -F /dev/null -f '{}/'", md.display());
    tmux.start(&format!("HOME={} TERM=screen {inner}", home.display()));
    tmux.wait_screen("the message list", |s| s.contains("big2"));
    // Move to "big2" with mutt's search, delete it, sync, quit.
    tmux.keys(&["/", "big2", "Enter"]);
    tmux.keys(&["d"]);
    tmux.keys(&["$"]);
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while counted(&md).1 != 2 {
        assert!(
            Instant::now() < deadline,
            "mutt did not delete:\n{}",
            tmux.capture().unwrap_or_default()
        );
        if let Some(s) = tmux.capture() {
            if s.contains("yes/no")
                || s.contains("no/yes")
                || s.contains("[yes]")
                || s.contains("[no]")
            {
                tmux.keys(&["y"]);
            }
        }
        // Screen polling interval: mutt offers no event for "synced".
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    tmux.keys(&["q"]);
    assert!(
        !read_files(&md.join("cur"))
            .iter()
            .chain(read_files(&md.join("new")).iter())
            .any(|(_, b)| String::from_utf8_lossy(b).contains("Subject: big2")),
        "mutt deleted another message: {:?}\n{}",
        subjects(&md),
        tmux.capture().unwrap_or_default()
    );
    assert_250(&smtp_send(env.smtp_port, &to, &sized("after mutt", 1000)));
    let (def, b, c) = maildirsize(&md);
    assert_eq!(def, "3145728S");
    assert_eq!((b, c), counted(&md));
}

#[test]
fn default_quota_and_sender_rate_from_the_config() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    let cfg = env.config_with(
        "q.toml",
        "\n[quota]\nrule = \"*:messages=3\"\nsender_rate = 2\nsender_window = \"1h\"\n",
    );
    let d = Daemon::start_with(&env, &cfg);
    let m = sized("rate", 100);
    assert_250(&smtp_send(env.smtp_port, &["alice@example.org"], &m));
    assert_250(&smtp_send(env.smtp_port, &["alice@example.org"], &m));
    // The same sender a third time to alice: deferred; to bob: fine.
    assert_eq!(
        smtp_send(env.smtp_port, &["alice@example.org"], &m),
        "450 Too much mail from this sender for this mailbox, try again later"
            .replace("450 ", "450 4.2.1 ")
    );
    assert_250(&smtp_send(env.smtp_port, &["bob@example.org"], &m));
    // Another sender to alice: its own budget; the third message fills the
    // 3-message default quota, the fourth is refused at RCPT.
    let other = python_ok(
        r#"
import smtplib, sys
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), local_hostname='client.test', timeout=30)
s.ehlo()
out = []
# Asking is not sending: RCPTs without DATA use none of the rate budget.
for i in range(3):
    s.mail('other@client.test')
    assert s.rcpt('alice@example.org')[0] == 250
    s.rset()
for i in range(2):
    s.mail('other@client.test')
    code, text = s.rcpt('alice@example.org')
    out.append('%d %s' % (code, text.decode()))
    if code == 250:
        s.data(b'Subject: other\r\n\r\nx\r\n')
    else:
        s.rset()
print(' | '.join(out))
s.quit()
"#,
        &[&env.smtp_port.to_string()],
    );
    assert_eq!(other.trim(), "250 2.1.5 Ok | 452 4.2.2 Mailbox full");
    assert_eq!(read_files(&env.maildir("alice").join("new")).len(), 3);
    assert!(d.log().contains("reason=sender_rate"), "{}", d.log());
    assert!(d.log().contains("reason=quota"), "{}", d.log());
    let (def, _, c) = maildirsize(&env.maildir("alice"));
    assert_eq!((def.as_str(), c), ("3C", 3));
}

/// Dovecot's quota code (dovecot-core's `quota = maildir` backend, run by
/// `doveadm` against a private dovecot over the same users file and Maildir)
/// reads the `maildirsize` maildird keeps without counting again, and when
/// told to count again writes the same numbers.
#[test]
fn dovecot_reads_our_maildirsize_and_counts_the_same() {
    let doveadm = require_tool("doveadm", "dovecot-core");
    let dovecot = require_tool("dovecot", "dovecot-core");
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts dovecot, which needs root to switch to the mail user"
    );
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    set_quota(&env, "*:storage=10M");
    let d = Daemon::start(&env);
    let md = env.maildir("alice");
    let to = ["alice@example.org"];
    for (i, size) in [70_000, 5_000, 300_000].into_iter().enumerate() {
        assert_250(&smtp_send(
            env.smtp_port,
            &to,
            &sized(&format!("m{i}"), size),
        ));
    }
    // A POP3 deletion, then one more delivery (the file is counted again).
    pop3_dump(env.pop3_port, "alice", PW, &["dele", "2", "quit"]);
    assert_250(&smtp_send(env.smtp_port, &to, &sized("m3", 12_345)));
    let (def, bytes, count) = maildirsize(&md);
    assert_eq!((bytes, count), counted(&md));
    assert_eq!(def, "10485760S");
    let ours = std::fs::read_to_string(md.join("maildirsize")).expect("maildirsize");

    let dir = env.subdir("dovecot");
    let (user, group) = ("nobody", "nogroup");
    for sub in ["run", "state", "index"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    give_to_daemon_user(&dir.join("index"));
    let conf = dir.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "base_dir = {run}\nstate_dir = {state}\nlog_path = /dev/stderr\nprotocols =\nssl = no\n\
             mail_location = maildir:{root}/%u:INDEX={index}/%u\nmail_uid = {user}\nmail_gid = {group}\n\
             default_internal_user = {user}\ndefault_internal_group = {group}\ndefault_login_user = {user}\n\
             mail_plugins = quota\npassdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             plugin {{\n  quota = maildir:User quota\n}}\n",
            run = dir.join("run").display(),
            state = dir.join("state").display(),
            root = env.mail_root().display(),
            index = dir.join("index").display(),
            users = env.users_file().display(),
        ),
    )
    .expect("dovecot.conf");
    let _dovecot = KillOnDrop(
        Command::new(&dovecot)
            .args(["-F", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dovecot"),
    );
    let sock = dir.join("run/auth-userdb");
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "dovecot's auth-userdb socket never came up"
        );
        // Readiness poll: dovecot -F has no readiness notification.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let adm = |args: &[&str]| {
        let o = run(Command::new(&doveadm).arg("-c").arg(&conf).args(args), b"");
        assert_ok(&o, &format!("doveadm {args:?}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // `quota get`: Dovecot's usage is ours (STORAGE in KiB, rounded up).
    let got = adm(&["quota", "get", "-u", "alice"]);
    let value = |kind: &str| -> i64 {
        got.lines()
            .find(|l| l.split_whitespace().nth(2) == Some(kind))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {kind} in:\n{got}"))
    };
    assert_eq!(value("STORAGE"), (bytes + 1023) / 1024, "{got}");
    assert_eq!(value("MESSAGE"), count, "{got}");
    assert_eq!(
        std::fs::read_to_string(md.join("maildirsize")).expect("maildirsize"),
        ours,
        "Dovecot counted again instead of reading our file"
    );
    // `quota recalc`: Dovecot counts the Maildir and writes what we had.
    adm(&["quota", "recalc", "-u", "alice"]);
    assert_eq!(
        std::fs::read_to_string(md.join("maildirsize")).expect("maildirsize"),
        format!("10485760S\n{bytes} {count}\n")
    );
    // And maildird goes on from Dovecot's file.
    assert_250(&smtp_send(env.smtp_port, &to, &sized("m4", 2_000)));
    let (_, b, c) = maildirsize(&md);
    assert_eq!((b, c), counted(&md));
    assert_eq!(c, count + 1);
    drop(d);
}
