//! The other side of every verdict: messages signed with dkimsign, sent with swaks
//! from a chosen loopback source address, the independent verdicts of pyspf and
//! dkimpy (tests/tools/authcheck.py) against the same unbound, and the daemon's
//! `Authentication-Results:` read back out of the stored message.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::common::*;

/// The interpreter the Debian modules (python3-dkim, python3-spf,
/// python3-dnspython) are installed for. A `python3` earlier on PATH (pyenv, a
/// venv) does not see /usr/lib/python3/dist-packages, so it is not used here.
pub fn debian_python() -> PathBuf {
    static CHECKED: OnceLock<PathBuf> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let p = PathBuf::from("/usr/bin/python3");
            assert!(
                p.exists(),
                "/usr/bin/python3 not found: install the Debian package `python3`"
            );
            for (module, package) in [
                ("dns.resolver", "python3-dnspython"),
                ("dkim", "python3-dkim"),
                ("spf", "python3-spf"),
                ("nacl", "python3-nacl"),
                ("yaml", "python3-yaml"),
            ] {
                let o = run(
                    Command::new(&p).args(["-c", &format!("import {module}")]),
                    b"",
                );
                assert!(
                    o.status.success(),
                    "python module `{module}` missing: install the Debian package `{package}` \
                     (apt-get install {package})\n{}",
                    show(&o)
                );
            }
            p
        })
        .clone()
}

/// `authcheck.py DNSPORT ARGS...`, which must succeed; its stdout.
pub fn authcheck(dns_port: u16, args: &[&str]) -> String {
    let o = run_timeout(
        Command::new(debian_python())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(tools_dir().join("authcheck.py"))
            .arg(dns_port.to_string())
            .args(args),
        b"",
        Duration::from_secs(60),
    );
    assert_ok(&o, &format!("authcheck.py {args:?}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// What pyspf, dkimpy and the RFC 8601/7489 rules in authcheck.py say about a
/// message sent from `ip` with `mailfrom`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    pub spf: String,
    /// One result per signature, in header order; empty = `dkim=none`.
    pub dkim: Vec<String>,
    pub dmarc: String,
    pub policy: String,
    pub iprev: String,
}

impl Verdicts {
    /// The DKIM verdict as one word: the results joined by `,`, or `none`.
    pub fn dkim_word(&self) -> String {
        if self.dkim.is_empty() {
            "none".into()
        } else {
            self.dkim.join(",")
        }
    }
}

/// The independent verdicts of `msg` (as sent) from `ip`.
pub fn independent(
    dns_port: u16,
    msg_file: &Path,
    ip: &str,
    mailfrom: &str,
    helo: &str,
) -> Verdicts {
    let out = authcheck(
        dns_port,
        &["verdicts", &msg_file.to_string_lossy(), ip, mailfrom, helo],
    );
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("authcheck.py output {out:?}: {e}"));
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {v}"))
            .to_owned()
    };
    Verdicts {
        spf: s("spf"),
        dkim: v["dkim"]
            .as_array()
            .expect("dkim list")
            .iter()
            .map(|d| d["result"].as_str().expect("dkim result").to_owned())
            .collect(),
        dmarc: s("dmarc"),
        policy: s("policy"),
        iprev: s("iprev"),
    }
}

/// How a message is signed by `dkimsign` (python3-dkim).
#[derive(Debug, Clone, Copy)]
pub struct Signing<'a> {
    pub selector: &'a str,
    pub domain: &'a str,
    pub key: &'a Path,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub alg: &'a str,
    /// (header, body): `simple` or `relaxed`.
    pub canon: (&'a str, &'a str),
}

/// `dkimsign SELECTOR DOMAIN KEY ...` over `msg` (CRLF); the signed message.
pub fn dkimsign(msg: &[u8], s: Signing) -> Vec<u8> {
    let bin = require_tool("dkimsign", "python3-dkim");
    let o = run(
        Command::new(bin)
            .arg(s.selector)
            .arg(s.domain)
            .arg(s.key)
            .args([
                "--signalg",
                s.alg,
                "--hcanon",
                s.canon.0,
                "--bcanon",
                s.canon.1,
            ]),
        msg,
    );
    assert_ok(&o, "dkimsign");
    // dkimsign prints the unsigned message (exit 0) when signing fails.
    assert!(
        o.stdout.starts_with(b"DKIM-Signature:") && o.stdout.ends_with(msg),
        "dkimsign did not sign\n{}",
        show(&o)
    );
    let sig = String::from_utf8_lossy(&o.stdout[..o.stdout.len() - msg.len()]).into_owned();
    for tag in [
        format!("a={}", s.alg),
        format!("c={}/{}", s.canon.0, s.canon.1),
        format!("d={}", s.domain),
        format!("s={}", s.selector),
    ] {
        assert!(sig.contains(&tag), "signature lacks {tag}: {sig}");
    }
    o.stdout
}

/// A plain CRLF message `From: user@from_domain` to alice.
pub fn plain_message(case: &str, from: &str) -> Vec<u8> {
    let lines = [
        format!("From: Test Sender <{from}>"),
        "To: Alice <alice@example.org>".into(),
        format!("Subject: inbound case {case}"),
        "Date: Sat, 21 Nov 2026 10:00:00 +0000".into(),
        format!("Message-ID: <{case}.{}@client.test>", unique()),
        "MIME-Version: 1.0".into(),
        "Content-Type: text/plain; charset=us-ascii".into(),
        String::new(),
        format!("Body of case {case}."),
        "A second line  with  double spaces and a trailing space ".into(),
        String::new(),
    ];
    let mut m = Vec::new();
    for l in lines {
        m.extend_from_slice(l.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// The end of one swaks run: the server's reply to the end of DATA (or to the
/// command it refused first) and the whole transcript.
#[derive(Debug)]
pub struct Outcome {
    pub reply: String,
    pub transcript: String,
}

impl Outcome {
    pub fn accepted(&self) -> bool {
        self.reply.starts_with("250")
    }
}

/// `swaks` from `src` (bound with `--local-interface`) to 127.0.0.1:`port`, with
/// the message data from a file (`--data @FILE`).
pub fn swaks_send(
    env: &TestEnv,
    port: u16,
    src: &str,
    helo: &str,
    mailfrom: &str,
    msg: &[u8],
    limit: Duration,
) -> Outcome {
    swaks_run(
        env,
        port,
        &["--local-interface", src],
        helo,
        mailfrom,
        msg,
        limit,
    )
}

/// `swaks` from 127.0.0.1 with a PROXY v1 header (`--proxy`) naming `client`
/// as the connection's source, for a listener with the `proxy` filter.
pub fn swaks_send_proxied(
    env: &TestEnv,
    port: u16,
    client: &str,
    helo: &str,
    mailfrom: &str,
    msg: &[u8],
    limit: Duration,
) -> Outcome {
    let header = format!("TCP4 {client} 127.0.0.1 40000 {port}");
    swaks_run(env, port, &["--proxy", &header], helo, mailfrom, msg, limit)
}

fn swaks_run(
    env: &TestEnv,
    port: u16,
    conn: &[&str],
    helo: &str,
    mailfrom: &str,
    msg: &[u8],
    limit: Duration,
) -> Outcome {
    let swaks = require_tool("swaks", "swaks");
    let data = swaks_data(env, msg);
    let o = run_timeout(
        Command::new(swaks)
            .args(["--server", "127.0.0.1", "--port", &port.to_string()])
            .args(conn)
            .args(["--helo", helo, "--from", mailfrom])
            .args(["--to", "alice@example.org"])
            .args(["--timeout", "60"])
            .args(["--data", &data]),
        b"",
        limit,
    );
    let transcript =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    // The reply after the data ("-> ." ends it), else the first refusal ("<**").
    let lines: Vec<&str> = transcript.lines().collect();
    let after_dot = lines
        .iter()
        .position(|l| l.trim_start() == "-> .")
        .and_then(|i| {
            lines[i + 1..]
                .iter()
                .find(|l| l.starts_with("<-  ") || l.starts_with("<** "))
        });
    let refusal = lines.iter().find(|l| l.starts_with("<** "));
    let reply = after_dot
        .or(refusal)
        .map(|l| l[4..].trim().to_owned())
        .unwrap_or_else(|| panic!("no SMTP reply found in the swaks transcript:\n{transcript}"));
    Outcome { reply, transcript }
}

/// The `Authentication-Results:` fields of a stored message's header section,
/// unfolded, as (authserv-id, rest after the `;`), in order.
pub fn auth_results(stored: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(stored);
    let head = text.split("\n\n").next().unwrap_or("");
    let mut fields: Vec<String> = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    fields
        .into_iter()
        .filter_map(|f| {
            let (name, value) = f.split_once(':')?;
            if !name.eq_ignore_ascii_case("Authentication-Results") {
                return None;
            }
            let (id, rest) = value.split_once(';').unwrap_or((value, ""));
            Some((id.trim().to_owned(), rest.trim().to_owned()))
        })
        .collect()
}

/// The results of our header (`mx.test`): every `method=result` (RFC 8601 §2.2),
/// comments dropped.
#[derive(Debug, Clone, Default)]
pub struct Ours {
    pub spf: Vec<String>,
    pub dkim: Vec<String>,
    pub dmarc: Vec<String>,
    pub iprev: Vec<String>,
    pub dmarc_policy: Option<String>,
    pub raw: String,
}

impl Ours {
    pub fn parse(rest: &str) -> Ours {
        let mut o = Ours {
            raw: rest.to_owned(),
            ..Ours::default()
        };
        // Drop (comments), which may contain "x=y" text.
        let mut plain = String::new();
        let mut depth = 0;
        for c in rest.chars() {
            match c {
                '(' => depth += 1,
                ')' if depth > 0 => depth -= 1,
                _ if depth == 0 => plain.push(c),
                _ => {}
            }
        }
        for clause in plain.split(';') {
            let clause = clause.trim();
            let Some((method, after)) = clause.split_once('=') else {
                continue;
            };
            let result: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            match method.trim() {
                "spf" => o.spf.push(result),
                "dkim" => o.dkim.push(result),
                "dmarc" => {
                    o.dmarc.push(result);
                    o.dmarc_policy = clause
                        .split_whitespace()
                        .find_map(|p| p.strip_prefix("policy.dmarc="))
                        .map(str::to_owned);
                }
                "iprev" => o.iprev.push(result),
                _ => {}
            }
        }
        o
    }

    pub fn one(v: &[String]) -> String {
        match v {
            [one] => one.clone(),
            [] => "(absent)".into(),
            many => format!("(several: {})", many.join(",")),
        }
    }
}

/// Our header in `stored`: exactly one A-R with authserv-id `host`, at the top
/// of the header section (before the message's own fields).
pub fn our_results(stored: &[u8], host: &str) -> Ours {
    let ars = auth_results(stored);
    let ours: Vec<&(String, String)> = ars.iter().filter(|(id, _)| id == host).collect();
    assert_eq!(
        ours.len(),
        1,
        "expected exactly one Authentication-Results: {host}; got {ars:?}\n{}",
        String::from_utf8_lossy(stored)
    );
    Ours::parse(&ours[0].1)
}

/// One row of the printed verdict table.
#[derive(Debug, Clone)]
pub struct Row {
    pub case: String,
    pub method: &'static str,
    pub ours: String,
    pub theirs: String,
    pub by: &'static str,
}

/// Rows of one test; printed in one piece so parallel tests do not interleave.
#[derive(Default)]
pub struct Table {
    rows: Mutex<Vec<Row>>,
}

impl Table {
    pub fn add(
        &self,
        case: &str,
        method: &'static str,
        ours: &str,
        theirs: &str,
        by: &'static str,
    ) {
        self.rows.lock().expect("table").push(Row {
            case: case.into(),
            method,
            ours: ours.into(),
            theirs: theirs.into(),
            by,
        });
    }

    /// Adds the four verdicts of a stored message and their independent ones.
    pub fn compare(&self, case: &str, ours: &Ours, theirs: &Verdicts) {
        self.add(case, "spf", &Ours::one(&ours.spf), &theirs.spf, "pyspf");
        let our_dkim = if ours.dkim.is_empty() {
            "(absent)".into()
        } else {
            ours.dkim.join(",")
        };
        self.add(case, "dkim", &our_dkim, &theirs.dkim_word(), "dkimpy");
        // The policy is only known (and only matters) when a record was read.
        let with_policy = |result: &str, policy: &str| match result {
            "pass" | "fail" => format!("{result} p={policy}"),
            other => other.to_owned(),
        };
        let our_dmarc = Ours::one(&ours.dmarc);
        self.add(
            case,
            "dmarc",
            &with_policy(&our_dmarc, ours.dmarc_policy.as_deref().unwrap_or("?")),
            &with_policy(&theirs.dmarc, &theirs.policy),
            "authcheck",
        );
        self.add(
            case,
            "iprev",
            &Ours::one(&ours.iprev),
            &theirs.iprev,
            "authcheck",
        );
    }

    /// Prints the table (visible with `--nocapture`) and fails on any mismatch.
    pub fn print_and_assert(&self, title: &str) {
        self.print_and_assert_as(title, "maildird")
    }

    /// Like `print_and_assert`, naming the left column `left`.
    pub fn print_and_assert_as(&self, title: &str, left: &str) {
        let rows = self.rows.lock().expect("table").clone();
        let mut s = format!(
            "\n== {title}\n{:<32} {:<6} {:<22} {:<22} {}\n",
            "case", "method", left, "independent", "by"
        );
        for r in &rows {
            s += &format!(
                "{:<32} {:<6} {:<22} {:<22} {}{}\n",
                r.case,
                r.method,
                r.ours,
                r.theirs,
                r.by,
                if r.ours == r.theirs {
                    ""
                } else {
                    "   <-- MISMATCH"
                }
            );
        }
        println!("{s}");
        let bad: Vec<String> = rows
            .iter()
            .filter(|r| r.ours != r.theirs)
            .map(|r| {
                format!(
                    "{} {}: {left} {} vs {} {}",
                    r.case, r.method, r.ours, r.by, r.theirs
                )
            })
            .collect();
        assert!(bad.is_empty(), "verdicts differ:\n{}\n{s}", bad.join("\n"));
    }
}
