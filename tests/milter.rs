//! Message filters end to end (issue 17; maildird.toml(5) MESSAGE FILTERS):
//! the real daemon with `message_filters`, driven by Python's smtplib, against
//! (1) a scripted milter on Debian's python3-milter (libmilter itself, so the
//! negotiation is the real one) that takes every action by Subject, (2) real
//! programs as `exec` filters (sed, sh), (3) Debian's rspamd with its proxy
//! worker in milter mode, and (4) a 100 MB message whose body streams to the
//! milter while the daemon's peak RSS stays bounded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PW: &str = "pw-alice";

/// tests/tools/testmilter.py on 127.0.0.1:`port`, recording to `record`.
fn test_milter(port: u16, record: &Path) -> KillOnDrop {
    require_tool("python3", "python3");
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import Milter"])
        .status()
        .expect("python3");
    assert!(ok.success(), "python3-milter is not installed");
    let child = Command::new("/usr/bin/python3")
        .arg(tools_dir().join("testmilter.py"))
        .arg(port.to_string())
        .arg(record)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn testmilter.py");
    wait_listening(port, "testmilter.py");
    KillOnDrop(child)
}

/// The env's config with `filters` on the smtp listener, plus `extra` tables.
fn config(env: &TestEnv, name: &str, filters: &[&str], extra: &str) -> PathBuf {
    let list: Vec<String> = filters.iter().map(|f| format!("{f:?}")).collect();
    let text = std::fs::read_to_string(env.config())
        .expect("config")
        .replace(
            "protocol = \"smtp\"\n",
            &format!(
                "protocol = \"smtp\"\nmessage_filters = [{}]\n",
                list.join(", ")
            ),
        );
    env.write_config(name, &(text + extra))
}

fn msg(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@client.test>\r\nTo: alice@example.org\r\nSubject: {subject}\r\n\
         X-Remove-Me: bye\r\nMessage-ID: <{subject}@client.test>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// The id in "250 2.0.0 Ok: delivered as ID".
fn id_of(reply: &str) -> &str {
    reply
        .strip_prefix("250 2.0.0 Ok: delivered as ")
        .unwrap_or_else(|| panic!("not a 250 delivery: {reply}"))
}

/// The JSON lines testmilter.py recorded, parsed by python into `key=value`.
fn recorded(record: &Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(record).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("record line");
            match &v[key] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    let out = python_ok(
        "import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        &[&{
            let f = tempfile::NamedTempFile::new().expect("tmp");
            std::fs::write(f.path(), b).expect("write");
            let (_, p) = f.keep().expect("keep");
            p.to_string_lossy().into_owned()
        }],
    );
    out.trim().to_string()
}

#[test]
fn scripted_milter_every_action() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    add_user(&env, "blocked", PW);
    // A quota for alice: what goes to .Junk counts against her whole Maildir.
    let users = std::fs::read_to_string(env.users_file()).expect("users");
    let users: String = users
        .lines()
        .map(|l| match l.starts_with("alice:") {
            true => format!("{l} userdb_quota_rule=*:storage=10M\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(env.users_file(), users).expect("users");
    let port = free_port();
    let record = env.path().join("record.jsonl");
    let _milter = test_milter(port, &record);
    let cfg = config(
        &env,
        "m.toml",
        &["milter.test"],
        &format!("\n[milter.test]\naddress = \"127.0.0.1:{port}\"\ntimeout = \"20s\"\n"),
    );
    let d = Daemon::start_with(&env, &cfg);
    let new = env.maildir("alice").join("new");
    let junk = env.maildir("alice").join(".Junk");

    // reject with the milter's own reply; without one, ours.
    assert_eq!(
        smtp_send(env.smtp_port, &["alice@example.org"], &msg("reject", "x")),
        "550 5.7.1 Rejected by test milter"
    );
    assert_eq!(
        smtp_send(
            env.smtp_port,
            &["alice@example.org"],
            &msg("reject-plain", "x")
        ),
        "550 5.7.1 Message content rejected"
    );
    assert_eq!(
        smtp_send(env.smtp_port, &["alice@example.org"], &msg("tempfail", "x")),
        "451 4.7.1 Test milter says later"
    );
    // A recipient the milter refuses at RCPT: the message is refused (one
    // reply after DATA for all recipients).
    assert_eq!(
        smtp_send(
            env.smtp_port,
            &["alice@example.org", "blocked@example.org"],
            &msg("two", "x")
        ),
        "550 5.7.1 Recipient blocked by test milter"
    );
    assert!(read_files(&new).is_empty(), "refused mail was stored");

    // discard: 250, nothing stored, one log line.
    let r = smtp_send(env.smtp_port, &["alice@example.org"], &msg("discard", "x"));
    let discarded = id_of(&r).to_string();
    assert!(read_files(&new).is_empty());
    assert!(
        d.log().lines().any(|l| l.contains("message discarded")
            && l.contains(&discarded)
            && l.contains("filter=milter.test")),
        "{}",
        d.log()
    );

    // quarantine: into .Junk/new, which mutt sees as a folder.
    let r = smtp_send(
        env.smtp_port,
        &["alice@example.org"],
        &msg("quarantine", "q"),
    );
    let q = id_of(&r).to_string();
    let files = read_files(&junk.join("new"));
    assert_eq!(files.len(), 1);
    assert!(files[0].0.starts_with(&q));
    assert!(junk.join("maildirfolder").is_file());
    let size =
        std::fs::read_to_string(env.maildir("alice").join("maildirsize")).expect("maildirsize");
    assert_eq!(size, format!("10485760S\n0 0\n{} 1\n", files[0].1.len()));
    assert!(read_files(&new).is_empty());

    // header edits: exact result.
    let r = smtp_send(
        env.smtp_port,
        &["alice@example.org"],
        &msg("headers", "body one\r\nbody two"),
    );
    let id = id_of(&r).to_string();
    let files = read_files(&new);
    assert_eq!(files.len(), 1);
    let text = String::from_utf8(files[0].1.clone()).unwrap();
    let (_, header_on) = text
        .split_once(&format!("id {id}\n\tfor <alice@example.org>;\n\t"))
        .expect("Received");
    let (_date, rest) = header_on.split_once('\n').unwrap();
    assert_eq!(
        rest,
        format!(
            "X-Inserted: top\nFrom: Sender <sender@client.test>\nTo: alice@example.org\n\
             Subject: changed by milter\nMessage-ID: <headers@client.test>\nX-Added: yes\n\n\
             body one\nbody two\n"
        )
    );
    // What the milter saw: our macros, the envelope, the body as CRLF.
    let ids = recorded(&record, "i");
    assert!(ids.contains(&id), "{ids:?}");
    let last = ids.len() - 1;
    assert_eq!(recorded(&record, "j")[last], "mx.test");
    assert_eq!(recorded(&record, "client_addr")[last], "127.0.0.1");
    assert_eq!(recorded(&record, "from")[last], "<sender@client.test>");
    assert_eq!(recorded(&record, "helo")[last], "client.test");
    assert_eq!(
        recorded(&record, "body_sha256")[last],
        sha256_hex(b"body one\r\nbody two\r\n")
    );
    assert_eq!(recorded(&record, "body_size")[last], "20");
    // The header fields as the milter got them: values without the blank
    // after the colon, in order.
    assert_eq!(
        recorded(&record, "headers")[last],
        r#"[["From","Sender <sender@client.test>"],["To","alice@example.org"],["Subject","headers"],["X-Remove-Me","bye"],["Message-ID","<headers@client.test>"]]"#
    );
}

#[test]
fn exec_filters_rewrite_or_judge_with_real_programs() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let sed = require_tool("sed", "sed");
    let cfg = config(
        &env,
        "e.toml",
        &["exec.tag", "exec.virus"],
        &format!(
            "\n[exec.tag]\ncommand = [\"{}\", \"1i X-Tagged: by sed\"]\nresult = \"message\"\n\
             \n[exec.virus]\ncommand = [\"/bin/sh\", \"-c\", \"m=$(cat); case $m in *EICAR*) exit 1;; \
             *LATER*) exit 75;; esac; exit 0\"]\nresult = \"exit_code\"\ntimeout = \"10s\"\n",
            sed.display()
        ),
    );
    let _d = Daemon::start_with(&env, &cfg);
    let new = env.maildir("alice").join("new");
    assert_eq!(
        smtp_send(
            env.smtp_port,
            &["alice@example.org"],
            &msg("v", "EICAR here")
        ),
        "550 5.7.1 Message content rejected"
    );
    assert_eq!(
        smtp_send(env.smtp_port, &["alice@example.org"], &msg("l", "LATER")),
        "451 4.7.1 Message deferred by a content filter, try again later"
    );
    assert!(read_files(&new).is_empty());
    let r = smtp_send(env.smtp_port, &["alice@example.org"], &msg("clean", "fine"));
    id_of(&r);
    let files = read_files(&new);
    assert_eq!(files.len(), 1);
    let text = String::from_utf8(files[0].1.clone()).unwrap();
    let (_, after) = text.split_once("+0000\n").expect("Received date");
    assert!(
        after.starts_with("X-Tagged: by sed\nFrom: Sender"),
        "{text}"
    );
    assert!(text.ends_with("\n\nfine\n"), "{text}");
    // The stored sizes in the name match the rewritten file.
    let (s, _) = parse_maildir_name(&files[0].0).expect("sizes");
    assert_eq!(s, files[0].1.len() as u64);
    drop(_d);

    // A program that hangs past its time: killed, and on_error decides.
    let cfg = config(
        &env,
        "h.toml",
        &["exec.hang"],
        "\n[exec.hang]\ncommand = [\"/bin/sleep\", \"60\"]\nresult = \"message\"\ntimeout = \"1s\"\non_error = \"accept\"\n",
    );
    let _d = Daemon::start_with(&env, &cfg);
    let started = Instant::now();
    id_of(&smtp_send(
        env.smtp_port,
        &["alice@example.org"],
        &msg("slowexec", "x"),
    ));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(read_files(&new).len(), 2);
}

#[test]
fn on_error_decides_when_the_milter_is_down_or_slow() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let port = free_port();
    let record = env.path().join("record.jsonl");
    let milter = test_milter(port, &record);
    let tables = |on_error: &str| {
        format!(
            "\n[milter.test]\naddress = \"127.0.0.1:{port}\"\ntimeout = \"2s\"\non_error = \"{on_error}\"\n"
        )
    };
    let new = env.maildir("alice").join("new");
    {
        let cfg = config(&env, "t.toml", &["milter.test"], &tables("tempfail"));
        let _d = Daemon::start_with(&env, &cfg);
        let started = Instant::now();
        assert_eq!(
            smtp_send(env.smtp_port, &["alice@example.org"], &msg("slow", "x")),
            "451 4.7.1 Content filter unavailable, try again later"
        );
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "{:?}",
            started.elapsed()
        );
        assert!(read_files(&new).is_empty());
    }
    {
        let cfg = config(&env, "a.toml", &["milter.test"], &tables("accept"));
        let _d = Daemon::start_with(&env, &cfg);
        id_of(&smtp_send(
            env.smtp_port,
            &["alice@example.org"],
            &msg("slow", "x"),
        ));
        assert_eq!(read_files(&new).len(), 1);
        drop(milter);
        // Down: connection refused.
        id_of(&smtp_send(
            env.smtp_port,
            &["alice@example.org"],
            &msg("down", "x"),
        ));
        assert_eq!(read_files(&new).len(), 2);
    }
    let cfg = config(&env, "t2.toml", &["milter.test"], &tables("tempfail"));
    let d = Daemon::start_with(&env, &cfg);
    assert_eq!(
        smtp_send(env.smtp_port, &["alice@example.org"], &msg("down", "x")),
        "451 4.7.1 Content filter unavailable, try again later"
    );
    assert_eq!(read_files(&new).len(), 2);
    assert!(
        d.log()
            .contains("message filter failed; deferring the message"),
        "{}",
        d.log()
    );
}

/// rspamd 3.4 from Debian, its proxy worker in milter mode with self-scan,
/// every network lookup pointed at a closed port.
struct Rspamd {
    child: Option<KillOnDrop>,
}

impl Rspamd {
    fn start(dir: &Path, port: u16) -> Rspamd {
        let bin = require_tool("rspamd", "rspamd");
        for d in ["local.d", "db", "run", "log"] {
            std::fs::create_dir_all(dir.join(d)).expect("mkdir");
        }
        let files = [
            ("worker-proxy.inc", format!("bind_socket = \"127.0.0.1:{port}\";\nmilter = yes;\ntimeout = 120s;\ncount = 1;\nupstream \"local\" {{ default = yes; self_scan = yes; }}\n")),
            ("worker-normal.inc", "enabled = false;\n".into()),
            ("worker-controller.inc", "enabled = false;\n".into()),
            ("worker-fuzzy.inc", "enabled = false;\n".into()),
            ("options.inc", "dns { nameserver = [\"127.0.0.1:1\"]; timeout = 0.2s; retransmits = 1; }\n".into()),
            ("milter_headers.conf", "use = [\"x-spamd-result\", \"x-spam-status\"];\nskip_local = false;\nskip_authenticated = false;\n".into()),
            ("logging.inc", "type = \"console\";\nlevel = \"error\";\n".into()),
            ("redis.conf", "enabled = false;\n".into()),
        ];
        for (name, text) in files {
            std::fs::write(dir.join("local.d").join(name), text).expect("write rspamd config");
        }
        // As root rspamd runs as _rspamd, which must write its db and run dirs.
        chmod(dir, 0o777);
        for d in ["db", "run", "log"] {
            chmod(&dir.join(d), 0o777);
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-f").args(["-c", "/etc/rspamd/rspamd.conf"]);
        if nix::unistd::geteuid().is_root() {
            cmd.args(["-u", "_rspamd", "-g", "_rspamd"]);
        }
        for (k, v) in [
            ("LOCAL_CONFDIR", "."),
            ("DBDIR", "db"),
            ("RUNDIR", "run"),
            ("LOGDIR", "log"),
        ] {
            let p = if v == "." {
                dir.to_path_buf()
            } else {
                dir.join(v)
            };
            cmd.arg("--var").arg(format!("{k}={}", p.display()));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rspamd");
        let r = Rspamd {
            child: Some(KillOnDrop(child)),
        };
        // rspamd loads its rules for several seconds before it listens.
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "rspamd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
        r
    }

    /// SIGTERM, as systemd stops it: the main process takes its workers
    /// down, and the port is closed once it has exited.
    fn stop(&mut self, port: u16) {
        if let Some(mut p) = self.child.take() {
            signal(p.0.id(), "TERM");
            let _ = p.0.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "rspamd workers still listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn rspamd_rejects_gtube_and_marks_clean_mail() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let port = free_port();
    let mut rspamd = Rspamd::start(&env.subdir("rspamd"), port);
    let tables = |on_error: &str| {
        format!(
            "\n[milter.rspamd]\naddress = \"127.0.0.1:{port}\"\ntimeout = \"30s\"\non_error = \"{on_error}\"\n"
        )
    };
    let new = env.maildir("alice").join("new");
    {
        let cfg = config(&env, "r.toml", &["milter.rspamd"], &tables("tempfail"));
        let _d = Daemon::start_with(&env, &cfg);
        let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
        let r = smtp_send(env.smtp_port, &["alice@example.org"], &msg("gtube", gtube));
        assert!(r.starts_with("554 5.7.1 "), "{r}");
        assert!(read_files(&new).is_empty());
        let r = smtp_send(
            env.smtp_port,
            &["alice@example.org"],
            &msg("hello", "A clean message."),
        );
        id_of(&r);
        let files = read_files(&new);
        assert_eq!(files.len(), 1);
        let text = String::from_utf8(files[0].1.clone()).unwrap();
        assert!(
            text.contains("\nX-Spamd-Result: default: False ["),
            "{text}"
        );
        assert!(text.contains("\nX-Spam-Status: No, score="), "{text}");
        // Stopped: on_error decides.
        rspamd.stop(port);
        assert_eq!(
            smtp_send(env.smtp_port, &["alice@example.org"], &msg("later", "x")),
            "451 4.7.1 Content filter unavailable, try again later"
        );
    }
    let cfg = config(&env, "a.toml", &["milter.rspamd"], &tables("accept"));
    let _d = Daemon::start_with(&env, &cfg);
    id_of(&smtp_send(
        env.smtp_port,
        &["alice@example.org"],
        &msg("unfiltered", "x"),
    ));
    assert_eq!(read_files(&new).len(), 2);
}

/// A 100 MB message through a milter: the body streams from the staged
/// file in chunks, so the daemon's peak RSS stays under 64 MiB, and the
/// milter saw every byte.
#[test]
fn hundred_megabytes_through_a_milter_in_bounded_memory() {
    const BOUND_KIB: u64 = 64 * 1024;
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let port = free_port();
    let record = env.path().join("record.jsonl");
    let _milter = test_milter(port, &record);
    let cfg = config(
        &env,
        "big.toml",
        &["milter.test"],
        &format!(
            "\n[milter.test]\naddress = \"127.0.0.1:{port}\"\ntimeout = \"60s\"\n\n[limits]\nmax_message_size = 120000000\n"
        ),
    );
    let d = Daemon::start_with(&env, &cfg);
    let line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let lines = 100_000_000 / line.len();
    let mut m = msg("headers", "");
    m.truncate(m.len() - 2);
    m.reserve(lines * line.len());
    for _ in 0..lines {
        m.extend_from_slice(line.as_bytes());
    }
    let r = smtp_send(env.smtp_port, &["alice@example.org"], &m);
    let id = id_of(&r).to_string();
    let peak = proc_status(d.pid(), "VmHWM");
    let ids = recorded(&record, "i");
    assert_eq!(ids.last(), Some(&id));
    assert_eq!(
        recorded(&record, "body_size").last().map(String::as_str),
        Some((lines * line.len()).to_string().as_str())
    );
    let files = read_files(&env.maildir("alice").join("new"));
    assert_eq!(files.len(), 1);
    let head = String::from_utf8_lossy(&files[0].1[..4096]).into_owned();
    assert!(head.contains("\nX-Added: yes\n\n0123456789"), "{head}");
    assert_eq!(
        files[0].1.len() as u64,
        parse_maildir_name(&files[0].0).expect("sizes").0
    );
    assert!(
        peak < BOUND_KIB,
        "daemon peak RSS {peak} KiB for a 100 MB message (bound {BOUND_KIB} KiB)"
    );
    eprintln!("100 MB message through a milter: daemon peak RSS {peak} KiB");
}

/// A filter program that is not there stops the daemon at start, naming it,
/// rather than deferring every message.
#[test]
fn a_missing_exec_program_fails_at_start() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = config(
        &env,
        "missing.toml",
        &["exec.gone"],
        "\n[exec.gone]\ncommand = [\"/nonexistent/spamc\"]\nresult = \"message\"\n",
    );
    let o = run(Command::new(bin()).args(["serve", "-c"]).arg(&cfg), b"");
    // Exit 2: a configuration error (maildird(8), EXIT STATUS).
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("message filter exec.gone: /nonexistent/spamc is not a file"),
        "{err}"
    );
}
