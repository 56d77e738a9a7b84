//! The operator's view (maildird(8) "Following a message", "Metrics"): one id
//! per message from the SMTP reply to the file, log lines an admin can grep
//! (read back from the daemon's stderr), every refusal logged once with its
//! reason, the POP3 session line, and the metrics endpoint scraped with curl
//! and checked by Debian's `promtool`.

mod common;

use common::*;
use std::process::{Command, Stdio};

/// The value of `key=` in a log line (quotes kept, as logged).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = line.get(at..)?;
    let end = if rest.starts_with('"') {
        // Debug-quoted: up to the closing quote not escaped.
        let mut esc = false;
        rest.char_indices()
            .skip(1)
            .find(|&(_, c)| {
                let end = c == '"' && !esc;
                esc = c == '\\' && !esc;
                end
            })
            .map_or(rest.len(), |(i, _)| i + 1)
    } else {
        rest.find([' ', '}', ':']).unwrap_or(rest.len())
    };
    rest.get(..end)
}

/// SMTP through python3's smtplib: one message to `rcpts`; prints the final
/// reply of DATA.
const SEND: &str = r#"
import smtplib, sys
port, msg = int(sys.argv[1]), open(sys.argv[2], 'rb').read()
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    s.ehlo()
    s.mail('sender@client.test')
    for r in sys.argv[3:]:
        code, _ = s.rcpt(r)
        assert code == 250, (r, code)
    code, text = s.data(msg)
    print(code, text.decode())
"#;

#[test]
fn one_id_from_the_250_reply_to_the_received_header_the_file_and_the_log() {
    let env = TestEnv::new();
    add_user(&env, "alice", "pw-a");
    add_user(&env, "bob", "pw-b");
    let mut d = Daemon::start(&env);
    let msg = b"Message-ID: <trace-1@client.test>\r\nSubject: follow me\r\n\r\nbody\r\n";
    let path = env.write_file("msg", msg);
    let out = python_ok(
        SEND,
        &[
            &env.smtp_port.to_string(),
            &path.to_string_lossy(),
            "alice@example.org",
            "Bob@example.org",
        ],
    );
    let id = out
        .trim()
        .strip_prefix("250 2.0.0 Ok: delivered as ")
        .unwrap_or_else(|| panic!("250 reply without an id: {out:?}"))
        .to_string();
    assert!(!id.is_empty() && !id.contains(' '), "{id:?}");

    // The file of each mailbox starts with the id; its Received: names it.
    let mut files = Vec::new();
    for user in ["alice", "bob"] {
        let new = read_new(&env, user);
        assert_eq!(new.len(), 1, "{user}");
        let (name, body) = &new[0];
        assert!(name.starts_with(&format!("{id}.")), "{name} vs {id}");
        let text = String::from_utf8_lossy(body);
        assert!(
            text.contains(&format!(") with ESMTP id {id};")),
            "Received: without the id:\n{text}"
        );
        files.push(env.maildir(user).join("new").join(name));
    }

    // One line for the message ...
    let line = d.wait_stderr("message accepted");
    assert_eq!(field(&line, "id"), Some(id.as_str()), "{line}");
    assert_eq!(
        field(&line, "message_id"),
        Some("\"<trace-1@client.test>\""),
        "{line}"
    );
    assert_eq!(
        field(&line, "from"),
        Some("\"sender@client.test\""),
        "{line}"
    );
    assert_eq!(field(&line, "helo"), Some("\"client.test\""), "{line}");
    assert_eq!(field(&line, "nrcpt"), Some("2"), "{line}");
    let size: u64 = field(&line, "size").unwrap().parse().unwrap();
    assert_eq!(size, msg.len() as u64, "{line}");
    let delay: f64 = field(&line, "delay").unwrap().parse().unwrap();
    assert!((0.0..20.0).contains(&delay), "{line}");
    assert!(line.contains("client=127.0.0.1:"), "{line}");
    // ... and one per recipient, naming the mailbox and the file.
    for (to, mailbox, file) in [
        ("alice@example.org", "alice", &files[0]),
        ("Bob@example.org", "bob", &files[1]),
    ] {
        let line = d.wait_stderr(&format!("delivered id={id} to=\"{to}\""));
        assert_eq!(field(&line, "mailbox"), Some(mailbox), "{line}");
        assert!(
            line.ends_with(&format!("file={}", file.display())),
            "{line} vs {}",
            file.display()
        );
    }
    // `grep <id>` on the log finds exactly those three lines.
    d.wait_stderr("close");
    let log = d.log();
    assert_eq!(log.lines().filter(|l| l.contains(&id)).count(), 3, "{log}");
    d.stop();
}

#[test]
fn each_refusal_is_logged_once_with_its_code_and_reason() {
    let env = TestEnv::new();
    add_user(&env, "alice", "pw-a");
    let mut d = Daemon::start(&env);
    // One session, four refusals, then a loop (51 Received: lines).
    let script = r#"
import smtplib, sys
port = int(sys.argv[1])
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    s.ehlo()
    print(s.mail('a@client.test', ['SIZE=999999999'])[0])
    print(s.mail('a@client.test')[0])
    print(s.rcpt('nobody@example.org')[0])
    print(s.rcpt('someone@elsewhere.test')[0])
    print(s.rcpt('alice@example.org')[0])
    hops = b'Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n' * 51
    code, text = s.data(hops + b'Message-ID: <loop@client.test>\r\n\r\nbody\r\n')
    print(code, text.decode())
"#;
    let out = python_ok(script, &[&env.smtp_port.to_string()]);
    let codes: Vec<&str> = out.lines().collect();
    assert_eq!(
        codes,
        [
            "552",
            "250",
            "550",
            "550",
            "250",
            "554 5.4.6 Too many hops (51 Received: lines)"
        ],
        "{out}"
    );
    let line = d.wait_stderr("reason=hopcount");
    assert!(field(&line, "id").is_some_and(|v| !v.is_empty()), "{line}");
    assert_eq!(field(&line, "message_id"), Some("\"<loop@client.test>\""));
    d.wait_stderr("close");
    let log = d.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains(" refused")).collect();
    let mut reasons: Vec<(&str, &str, &str)> = refused
        .iter()
        .map(|l| {
            (
                field(l, "code").unwrap_or("?"),
                field(l, "status").unwrap_or("?"),
                field(l, "reason").unwrap_or("?"),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("550", "5.1.1", "unknown_user"),
            ("550", "5.7.1", "relay"),
            ("552", "5.3.4", "size"),
            ("554", "5.4.6", "hopcount"),
        ],
        "{}",
        refused.join("\n")
    );
    // Exactly once: the refused address appears on one line only.
    for addr in ["nobody@example.org", "someone@elsewhere.test"] {
        let n = log.lines().filter(|l| l.contains(addr)).count();
        assert_eq!(n, 1, "{addr} on {n} lines:\n{log}");
    }
    d.stop();
}

#[test]
fn a_pop3_session_ends_with_one_line_and_a_missing_role_looks_like_a_bad_password() {
    let env = TestEnv::new();
    add_user(&env, "alice", "pw-a");
    let o = maildird(
        &env.config(),
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--role",
            "submit",
        ],
        b"pw-c\n",
    );
    assert_ok(&o, "user add carol --role submit");
    let mut d = Daemon::start(&env);
    for i in 0..2 {
        deliver(
            env.smtp_port,
            &["alice@example.org"],
            &message(&format!("pop {i}"), "alice@example.org"),
        );
    }
    let script = r#"
import poplib, sys
port, user, pw = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = poplib.POP3('127.0.0.1', port, timeout=20)
try:
    p.user(user)
    p.pass_(pw)
except poplib.error_proto as e:
    print('REFUSED', e)
    sys.exit(0)
size = int(p.list(1).split()[2])
p.retr(1)
p.dele(2)
p.quit()
print('SIZE', size)
"#;
    let out = python_ok(script, &[&env.pop3_port.to_string(), "alice", "pw-a"]);
    let size = out.trim().strip_prefix("SIZE ").expect(&out);
    let line = d.wait_stderr("pop3 session");
    assert_eq!(field(&line, "user"), Some("\"alice\""), "{line}");
    assert_eq!(field(&line, "retrieved"), Some("1"), "{line}");
    assert_eq!(field(&line, "retrieved_bytes"), Some(size), "{line}");
    assert_eq!(field(&line, "deleted"), Some("1"), "{line}");
    assert!(field(&line, "duration").is_some(), "{line}");
    assert!(line.contains("client=127.0.0.1:"), "{line}");

    // A user without the pop3 role and a wrong password: the same line.
    let lines: Vec<String> = [("carol", "pw-c"), ("alice", "wrong")]
        .iter()
        .map(|(u, pw)| {
            let out = python_ok(script, &[&env.pop3_port.to_string(), u, pw]);
            assert!(out.starts_with("REFUSED"), "{out}");
            let line = d.wait_stderr("authentication failure:");
            line.split_once("authentication failure:")
                .unwrap()
                .1
                .to_string()
        })
        .collect();
    assert_eq!(lines[0], " protocol=pop3 ip=127.0.0.1 user=\"carol\"");
    assert_eq!(lines[1], " protocol=pop3 ip=127.0.0.1 user=\"alice\"");
    d.stop();
}

/// `curl` the endpoint; returns (content type, body).
fn scrape(port: u16, accept: Option<&str>) -> (String, String) {
    let mut cmd = Command::new(require_tool("curl", "curl"));
    cmd.args([
        "-sS",
        "-f",
        "--max-time",
        "20",
        "-o",
        "-",
        "-w",
        "\n%{content_type}",
    ]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    cmd.arg(format!("http://127.0.0.1:{port}/metrics"));
    let o = run(&mut cmd, b"");
    assert_ok(&o, "curl /metrics");
    let text = String::from_utf8(o.stdout).expect("utf-8");
    let (body, ctype) = text.rsplit_once('\n').expect("content type line");
    (
        ctype.to_string(),
        format!("{body}\n").replacen("\n\n", "\n", 0),
    )
}

/// A sample's value: `name{labels} value`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_are_served_and_pass_promtool() {
    let env = TestEnv::new();
    add_user(&env, "alice", "pw-a");
    let port = free_port();
    let cfg = env.config_with(
        "metrics.toml",
        &format!("\n[metrics]\nbind = \"127.0.0.1:{port}\"\n"),
    );
    let mut d = Daemon::start_with(&env, &cfg);
    d.wait_stderr("serving metrics");
    deliver(
        env.smtp_port,
        &["alice@example.org"],
        &message("counted", "alice@example.org"),
    );
    let o = run(
        Command::new(require_tool("swaks", "swaks")).args([
            "--server",
            &format!("127.0.0.1:{}", env.smtp_port),
            "--to",
            "nobody@example.org",
            "--from",
            "a@client.test",
            "--quit-after",
            "RCPT",
        ]),
        b"",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("550 5.1.1"),
        "{}",
        show(&o)
    );
    let bad = python_ok(
        "import poplib, sys\n\
         p = poplib.POP3('127.0.0.1', int(sys.argv[1]), timeout=20)\n\
         p.user('alice')\n\
         try:\n    p.pass_('wrong')\nexcept poplib.error_proto as e:\n    print('REFUSED', e)\n",
        &[&env.pop3_port.to_string()],
    );
    assert!(bad.starts_with("REFUSED"), "{bad}");

    let (ctype, text) = scrape(port, None);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let mut promtool = Command::new(require_tool("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool check metrics: {}\n{text}",
        show(&checked)
    );
    for (series, want) in [
        ("maildird_deliveries_total", 1.0),
        ("maildird_delivered_copies_total", 1.0),
        (
            "maildird_refusals_total{protocol=\"smtp\",reason=\"unknown_user\"}",
            1.0,
        ),
        (
            "maildird_refusals_total{protocol=\"pop3\",reason=\"auth\"}",
            1.0,
        ),
        ("maildird_auth_failures_total{protocol=\"pop3\"}", 1.0),
        ("maildird_delivery_duration_seconds_count", 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
    assert!(sample(&text, "maildird_sessions_total{protocol=\"smtp\"}") >= Some(2.0));
    assert!(sample(&text, "maildird_fsync_duration_seconds_count") >= Some(2.0));
    let last = sample(&text, "maildird_last_delivery_timestamp_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 600.0, "{last} vs {now}");

    // `maildird status` says the same, over the control socket.
    let o = maildird(&cfg, &["status"], b"");
    assert_ok(&o, "maildird status");
    let summary = String::from_utf8_lossy(&o.stdout).to_string();
    for want in [
        "deliveries:     1 messages, 1 files,",
        "smtp unknown_user 1",
        "pop3 auth 1",
        "auth failures:  pop3 1",
    ] {
        assert!(summary.contains(want), "{want:?} not in\n{summary}");
    }
    let o = maildird(&cfg, &["status", "--json"], b"");
    assert_ok(&o, "maildird status --json");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(json["maildird_deliveries_total"], 1.0, "{json}");
    assert_eq!(
        json["maildird_refusals_total{protocol=\"smtp\",reason=\"unknown_user\"}"], 1.0,
        "{json}"
    );

    // What Prometheus asks for: OpenMetrics.
    let (ctype, om) = scrape(port, Some("application/openmetrics-text; version=1.0.0"));
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE maildird_deliveries counter\n"), "{om}");
    d.stop();
}

/// The example alert rules shipped in contrib/ are valid for Prometheus and
/// use only metrics the daemon serves.
#[test]
fn example_alert_rules_pass_promtool_and_name_real_metrics() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/prometheus/maildird-alerts.yml");
    let o = run(
        Command::new(require_tool("promtool", "prometheus"))
            .args(["check", "rules"])
            .arg(&rules),
        b"",
    );
    assert_ok(&o, "promtool check rules");
    let text = std::fs::read_to_string(&rules).expect("rules");
    // Families with labels are served once they have a series.
    let m = maildird::metrics::get();
    m.session_opened("smtp");
    m.session_closed("smtp", &[("wire".into(), 1, 1)]);
    m.refused("smtp", "storage");
    m.auth_failed("pop3");
    let served = m.encode();
    for name in text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("maildird_"))
    {
        let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
        assert!(
            served.contains(&format!("# TYPE {family} ")),
            "{name} in the rules is not a metric we serve"
        );
    }
}
