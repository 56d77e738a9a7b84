//! SMTP interop against a standalone daemon: swaks, curl, msmtp and python3 smtplib /
//! raw sockets deliver, and the Maildir files must hold exactly what was sent
//! (maildird(8); RFC 5321, 2920, 3030, 6531).

mod common;

use std::process::{Command, Output};

use common::*;

const SENDER: &str = "sender@client.test";

/// `swaks --server 127.0.0.1 --port P --helo client.test --from SENDER ARGS...`.
fn swaks(env: &TestEnv, args: &[&str]) -> Output {
    let swaks = require_tool("swaks", "swaks");
    run(
        Command::new(swaks)
            .args(["--server", "127.0.0.1", "--port"])
            .arg(env.smtp_port.to_string())
            .args(["--helo", "client.test", "--from", SENDER])
            .args(args),
        b"",
    )
}

/// Does swaks' transcript show a server line (`<-  ` or `<** `) containing `text`?
fn server_said(out: &Output, text: &str) -> bool {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| (l.starts_with("<-") || l.starts_with("<**")) && l.contains(text))
}

#[test]
fn swaks_delivers_byte_exact_with_greeting_capabilities_and_trace() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("swaks byte exact", "alice@example.org");
    let data = swaks_data(&env, &msg);
    let o = swaks(&env, &["--to", "alice@example.org", "--data", &data]);
    assert_ok(&o, "swaks");
    assert!(
        server_said(&o, "220 mx.test ESMTP maildird"),
        "greeting\n{}",
        show(&o)
    );
    for cap in [
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
    ] {
        assert!(
            server_said(&o, &format!("250-{cap}")) || server_said(&o, &format!("250 {cap}")),
            "EHLO does not advertise {cap}\n{}",
            show(&o)
        );
    }
    let (_, bytes) = assert_one_delivered(&env, "alice", SENDER, &msg);
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("Received: from client.test ([127.0.0.1])"),
        "{text}"
    );
    assert!(text.contains("for <alice@example.org>"), "{text}");
}

#[test]
fn curl_smtp_delivers_byte_exact() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("curl smtp", "alice@example.org");
    let file = env.write_file("msg.eml", &msg);
    let curl = require_tool("curl", "curl");
    let o = run(
        Command::new(curl)
            .args(["-sS", "--fail"])
            .arg(format!("smtp://127.0.0.1:{}/client.test", env.smtp_port))
            .args([
                "--mail-from",
                SENDER,
                "--mail-rcpt",
                "alice@example.org",
                "--upload-file",
            ])
            .arg(&file),
        b"",
    );
    assert_ok(&o, "curl smtp");
    assert_one_delivered(&env, "alice", SENDER, &msg);
}

#[test]
fn msmtp_delivers_byte_exact() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("msmtp", "alice@example.org");
    let rc = env.write_file(
        "msmtprc",
        format!(
            "defaults\nauth off\ntls off\nlogfile {}\n\naccount default\nhost 127.0.0.1\nport {}\nfrom {SENDER}\ndomain client.test\n",
            env.path().join("msmtp.log").display(),
            env.smtp_port
        )
        .as_bytes(),
    );
    chmod(&rc, 0o600);
    let msmtp = require_tool("msmtp", "msmtp");
    let o = run(
        Command::new(msmtp)
            .arg(format!("--file={}", rc.display()))
            .arg(format!("--from={SENDER}"))
            .arg("alice@example.org"),
        &msg,
    );
    assert_ok(&o, "msmtp");
    assert_one_delivered(&env, "alice", SENDER, &msg);
}

#[test]
fn smtplib_two_recipients_are_one_hard_linked_file() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    let _d = Daemon::start(&env);
    let msg = message("two recipients", "alice@example.org");
    let file = env.write_file("msg.eml", &msg);
    let out = python_ok(
        r#"
import smtplib, sys
port, path, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    refused = s.sendmail(sender, ['alice@example.org', 'bob@example.org'], data)
    assert refused == {}, refused
print('SENT')
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy(), SENDER],
    );
    assert!(out.contains("SENT"), "{out}");
    let (a, _) = assert_one_delivered(&env, "alice", SENDER, &msg);
    let (b, _) = assert_one_delivered(&env, "bob", SENDER, &msg);
    let ia = inode(&env.maildir("alice").join("new").join(&a));
    let ib = inode(&env.maildir("bob").join("new").join(&b));
    assert_eq!(ia, ib, "the two deliveries are not hard links of one file");
}

#[test]
fn smtplib_unknown_user_refused_550_511_others_delivered() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("unknown user", "alice@example.org");
    let file = env.write_file("msg.eml", &msg);
    let out = python_ok(
        r#"
import smtplib, sys
port, path, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    try:
        s.sendmail(sender, ['nobody@example.org'], data)
        raise SystemExit('unknown user accepted')
    except smtplib.SMTPRecipientsRefused as e:
        for rcpt, (code, text) in e.recipients.items():
            print('REFUSED', rcpt, code, text.decode())
    s.rset()
    refused = s.sendmail(sender, ['nobody@example.org', 'alice@example.org'], data)
    for rcpt, (code, text) in refused.items():
        print('PARTIAL', rcpt, code, text.decode())
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy(), SENDER],
    );
    assert!(
        out.contains("REFUSED nobody@example.org 550 5.1.1"),
        "{out}"
    );
    assert!(
        out.contains("PARTIAL nobody@example.org 550 5.1.1"),
        "{out}"
    );
    assert_one_delivered(&env, "alice", SENDER, &msg);
    assert!(
        !env.maildir("nobody").exists(),
        "a Maildir was created for an unknown user"
    );
}

#[test]
fn smtplib_smtputf8_addresses_and_plus_tag() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("smtputf8", "alice@example.org");
    let file = env.write_file("msg.eml", &msg);
    let sender = "j\u{f6}rg@client.test";
    let out = python_ok(
        r#"
import smtplib, sys
port, path, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
data = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    s.ehlo()
    assert s.has_extn('smtputf8'), s.esmtp_features
    refused = s.sendmail(sender, ['alice+\u00e4rger@example.org'], data, mail_options=['SMTPUTF8', 'BODY=8BITMIME'])
    assert refused == {}, refused
print('SENT')
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy(), sender],
    );
    assert!(out.contains("SENT"), "{out}");
    assert_one_delivered(&env, "alice", sender, &msg);
}

#[test]
fn swaks_plus_tag_delivers_to_the_user() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("plus tag", "alice+lists@example.org");
    let data = swaks_data(&env, &msg);
    let o = swaks(&env, &["--to", "alice+lists@example.org", "--data", &data]);
    assert_ok(&o, "swaks");
    assert_one_delivered(&env, "alice", SENDER, &msg);
    assert!(!env.maildir("alice+lists").exists());
}

#[test]
fn postmaster_without_domain_is_accepted_and_aliased() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("to postmaster", "postmaster");
    let file = env.write_file("msg.eml", &msg);
    let out = python_ok(
        r#"
import sys
from smtpraw import Conn, dot_stuff
port, path = int(sys.argv[1]), sys.argv[2]
c = Conn(port)
c.expect(220, 'greeting')
c.send('EHLO client.test\r\n'); c.expect(250, 'EHLO')
c.send('MAIL FROM:<sender@client.test>\r\n'); c.expect(250, 'MAIL')
c.send('RCPT TO:<postmaster>\r\n'); print('RCPT', c.expect(250, 'RCPT postmaster')[-1])
c.send('DATA\r\n'); c.expect(354, 'DATA')
c.send(dot_stuff(open(path, 'rb').read())); print('DOT', c.expect(250, 'end of data')[-1])
c.send('QUIT\r\n'); c.expect(221, 'QUIT')
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy()],
    );
    assert!(out.contains("RCPT 250"), "{out}");
    assert_one_delivered(&env, "alice", SENDER, &msg);
}

#[test]
fn swaks_pipeline_delivers_to_two_users() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    let _d = Daemon::start(&env);
    let msg = message("pipelined", "alice@example.org");
    let data = swaks_data(&env, &msg);
    let o = swaks(
        &env,
        &[
            "--pipeline",
            "--to",
            "alice@example.org,bob@example.org",
            "--data",
            &data,
        ],
    );
    assert_ok(&o, "swaks --pipeline");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("does not support"),
        "{}",
        show(&o)
    );
    assert_one_delivered(&env, "alice", SENDER, &msg);
    assert_one_delivered(&env, "bob", SENDER, &msg);
}

#[test]
fn raw_pipelined_batch_gets_replies_in_order() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let msg = message("raw pipeline", "alice@example.org");
    let file = env.write_file("msg.eml", &msg);
    // RFC 2920 §3.1: MAIL, RCPTs and DATA in one write; replies come in order.
    let out = python_ok(
        r#"
import sys
from smtpraw import Conn, dot_stuff
port, path = int(sys.argv[1]), sys.argv[2]
c = Conn(port)
c.expect(220, 'greeting')
c.send('EHLO client.test\r\n'); caps = c.expect(250, 'EHLO')
assert any(l[4:].upper().startswith('PIPELINING') for l in caps), caps
c.send('MAIL FROM:<sender@client.test>\r\nRCPT TO:<alice@example.org>\r\n'
       'RCPT TO:<nobody@example.org>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n')
for what, code in [('MAIL', 250), ('RCPT alice', 250), ('RCPT nobody', 550), ('RCPT foreign', 550), ('DATA', 354)]:
    print(what, c.expect(code, what)[-1])
c.send(dot_stuff(open(path, 'rb').read()) + b'QUIT\r\n')
print('DOT', c.expect(250, 'end of data')[-1])
print('QUIT', c.expect(221, 'QUIT')[-1])
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy()],
    );
    assert!(out.contains("RCPT nobody 550 5.1.1"), "{out}");
    assert!(out.contains("RCPT foreign 550 5.7.1"), "{out}");
    assert_one_delivered(&env, "alice", SENDER, &msg);
}

#[test]
fn foreign_domain_refused_550_571_no_relay() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let o = swaks(
        &env,
        &["--to", "alice@elsewhere.test", "--quit-after", "RCPT"],
    );
    assert!(
        !o.status.success(),
        "swaks succeeded on a foreign domain\n{}",
        show(&o)
    );
    assert!(server_said(&o, "550 5.7.1"), "no 550 5.7.1\n{}", show(&o));
    assert!(read_new(&env, "alice").is_empty());
}

#[test]
fn hundred_recipients_in_one_transaction_all_delivered() {
    let env = TestEnv::new();
    let users: Vec<String> = (0..100).map(|i| format!("u{i:03}")).collect();
    // One `user add` (hashing is slow in a debug build); the other 99 copy its line
    // with another name, and get the Maildir `user add` would create.
    add_user(&env, &users[0], PW);
    let text = std::fs::read_to_string(env.users_file()).expect("users file");
    let line = text
        .lines()
        .find(|l| l.starts_with("u000:"))
        .expect("u000 line")
        .to_owned();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.users_file())
        .expect("open users file");
    if !text.ends_with('\n') {
        std::io::Write::write_all(&mut f, b"\n").expect("append");
    }
    for u in &users[1..] {
        std::io::Write::write_all(&mut f, format!("{u}{}\n", &line[4..]).as_bytes())
            .expect("append");
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(env.maildir(u).join(sub)).expect("mkdir");
        }
        give_to_daemon_user(&env.maildir(u));
    }
    drop(f);
    let _d = Daemon::start(&env);
    let msg = message("hundred", "list@example.org");
    let file = env.write_file("msg.eml", &msg);
    let out = python_ok(
        r#"
import smtplib, sys
port, path, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rcpts = ['u%03d@example.org' % i for i in range(100)]
data = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    refused = s.sendmail(sender, rcpts, data)
    assert refused == {}, refused
print('SENT')
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy(), SENDER],
    );
    assert!(out.contains("SENT"), "{out}");
    let mut inodes = std::collections::BTreeSet::new();
    for u in &users {
        let (n, _) = assert_one_delivered(&env, u, SENDER, &msg);
        inodes.insert(inode(&env.maildir(u).join("new").join(n)));
    }
    assert_eq!(
        inodes.len(),
        1,
        "100 recipients should share one hard-linked file"
    );
}

#[test]
fn bdat_chunking_delivers_exact_bytes() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    // RFC 3030: BDAT content is not dot-stuffed, so a lone "." line is message text.
    let mut msg = message("bdat", "alice@example.org");
    msg.extend_from_slice(b".\r\nafter the lone dot\r\n");
    let file = env.write_file("msg.eml", &msg);
    let out = python_ok(
        r#"
import sys
from smtpraw import Conn, dot_stuff
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, 'rb').read()
# Split inside a CRLF so the chunk boundary falls between CR and LF.
cut = data.index(b'\r\n', len(data) // 2) + 1
c = Conn(port)
c.expect(220, 'greeting')
c.send('EHLO client.test\r\n'); caps = c.expect(250, 'EHLO')
assert any(l[4:].upper().startswith('CHUNKING') for l in caps), caps
c.send('MAIL FROM:<sender@client.test>\r\n'); c.expect(250, 'MAIL')
c.send('RCPT TO:<alice@example.org>\r\n'); c.expect(250, 'RCPT')
c.send(b'BDAT %d\r\n' % cut + data[:cut]); print('CHUNK1', c.expect(250, 'BDAT 1')[-1])
rest = data[cut:]
c.send(b'BDAT %d LAST\r\n' % len(rest) + rest); print('LAST', c.expect(250, 'BDAT LAST')[-1])
c.send('QUIT\r\n'); c.expect(221, 'QUIT')
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy()],
    );
    assert!(out.contains("LAST 250"), "{out}");
    let (_, bytes) = assert_one_delivered(&env, "alice", SENDER, &msg);
    assert!(bytes.ends_with(b"\n.\nafter the lone dot\n"));
}

#[test]
fn delivery_failure_is_4xx_leaves_nothing_and_daemon_recovers() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "bob", PW);
    // A regular file where new/ should be: rename into new/ fails even for root.
    let new = env.maildir("alice").join("new");
    std::fs::remove_dir(&new).expect("rmdir new");
    std::fs::write(&new, b"not a directory\n").expect("write");
    let _d = Daemon::start(&env);
    let msg = message("failing delivery", "alice@example.org");
    let file = env.write_file("msg.eml", &msg);
    let data = swaks_data(&env, &msg);

    let o = swaks(&env, &["--to", "alice@example.org", "--data", &data]);
    assert!(!o.status.success(), "swaks reported success\n{}", show(&o));
    let transcript = String::from_utf8_lossy(&o.stdout);
    assert!(
        transcript.lines().any(|l| l.starts_with("<** 4")),
        "expected a 4xx reply\n{}",
        show(&o)
    );
    assert!(
        !transcript.lines().any(|l| l.starts_with("<** 5")),
        "permanent failure\n{}",
        show(&o)
    );

    let out = python(
        r#"
import smtplib, sys
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    try:
        s.sendmail('sender@client.test', ['alice@example.org'], data)
        print('ACCEPTED')
    except smtplib.SMTPRecipientsRefused as e:
        print('CODE', e.recipients['alice@example.org'][0])
    except smtplib.SMTPDataError as e:
        print('CODE', e.smtp_code)
"#,
        &[&env.smtp_port.to_string(), &file.to_string_lossy()],
    );
    assert_ok(&out, "smtplib");
    let text = String::from_utf8_lossy(&out.stdout);
    let code: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("CODE "))
        .unwrap_or_else(|| panic!("smtplib: {text}"))
        .trim()
        .parse()
        .expect("code");
    assert!((400..500).contains(&code), "smtplib got {code}");

    // Nothing left behind: new is still the same regular file, tmp/ is empty.
    assert_eq!(std::fs::read(&new).expect("new file"), b"not a directory\n");
    assert!(
        read_files(&env.maildir("alice").join("tmp")).is_empty(),
        "tmp/ not cleaned"
    );
    assert!(read_cur(&env, "alice").is_empty());

    // The daemon still works for other mailboxes.
    let o = swaks(&env, &["--to", "bob@example.org", "--data", &data]);
    assert_ok(&o, "swaks to bob");
    assert_one_delivered(&env, "bob", SENDER, &msg);
}
