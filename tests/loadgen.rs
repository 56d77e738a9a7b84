//! The benchmark's load generator (examples/loadgen.rs) runs a tiny load
//! correctly against the real daemon: every message acknowledged is delivered,
//! and POP3 retrieval checks every RETR against LIST. (Never a timed test.)

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn loadgen() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_maildird"));
    let p = bin
        .parent()
        .expect("target dir")
        .join("examples")
        .join("loadgen");
    assert!(
        p.exists(),
        "{} missing: cargo test builds examples",
        p.display()
    );
    p
}

fn field(out: &str, key: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key} in loadgen output:\n{out}"))
        .to_string()
}

#[test]
fn loadgen_smtp_and_pop3_tiny_load() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let smtp = format!("127.0.0.1:{}", env.smtp_port);
    for extra in [&[][..], &["--pipelining", "--per-conn", "5"][..]] {
        let o = run(
            Command::new(loadgen())
                .args([
                    "smtp",
                    &smtp,
                    "--conc",
                    "4",
                    "--count",
                    "20",
                    "--size",
                    "2000",
                    "--time-limit",
                    "60",
                ])
                .args(["--rcpt", "alice@example.org", "--maildir"])
                .arg(env.maildir("alice"))
                .args(extra),
            b"",
        );
        assert_ok(&o, "loadgen smtp");
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(field(&out, "acked"), "20");
        assert_eq!(field(&out, "delivered"), "20");
    }
    assert_eq!(read_new(&env, "alice").len(), 40);
    let o = run(
        Command::new(loadgen()).args([
            "pop3",
            &format!("127.0.0.1:{}", env.pop3_port),
            "--user",
            "alice",
            "--pass",
            PW,
            "--sessions",
            "2",
            "--pipeline",
            "4",
            "--expect-msgs",
            "40",
            "--time-limit",
            "60",
        ]),
        b"",
    );
    assert_ok(&o, "loadgen pop3");
    assert_eq!(field(&String::from_utf8_lossy(&o.stdout), "msgs"), "80");
}
