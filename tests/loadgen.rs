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

/// `loadgen idle` holds its sessions and reads the daemon's memory from /proc;
/// `--filters zlib` speaks the listener's chain (the code of `maildird tunnel`).
#[test]
fn loadgen_idle_and_zlib_chain_tiny_load() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let smtp = format!("127.0.0.1:{}", env.smtp_port);
    let pop3 = format!("127.0.0.1:{}", env.pop3_port);
    let cfg =
        env.config_toml("mx.example.org", &smtp, &pop3, "control.sock") + "filters = [\"zlib\"]\n";
    let d = Daemon::start_with(&env, &env.write_config("zlib.toml", &cfg));
    // The POP3 listener (last in the file) speaks zlib; SMTP is plain.
    let o = run(
        Command::new(loadgen())
            .args([
                "idle",
                &smtp,
                "--conns",
                "10",
                "--probes",
                "3",
                "--time-limit",
                "60",
            ])
            .args(["--server-pid", &d.pid().to_string()]),
        b"",
    );
    assert_ok(&o, "loadgen idle");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(field(&out, "conns"), "10");
    assert_eq!(field(&out, "errors"), "0");
    assert_eq!(field(&out, "server_processes_after"), "1");
    let pss: f64 = field(&out, "pss_kib_per_conn").parse().expect("a number");
    assert!(pss.is_finite(), "{out}");
    let o = run(
        Command::new(loadgen())
            .args([
                "smtp",
                &smtp,
                "--conc",
                "2",
                "--count",
                "6",
                "--time-limit",
                "60",
            ])
            .args(["--rcpt", "alice@example.org", "--maildir"])
            .arg(env.maildir("alice")),
        b"",
    );
    assert_ok(&o, "loadgen smtp");
    let pop3_args = [
        "pop3",
        &pop3,
        "--user",
        "alice",
        "--pass",
        PW,
        "--pipeline",
        "3",
        "--expect-msgs",
        "6",
    ];
    let o = run(
        Command::new(loadgen())
            .args(pop3_args)
            .args(["--filters", "zlib", "--time-limit", "60"]),
        b"",
    );
    assert_ok(&o, "loadgen pop3 through zlib");
    assert_eq!(field(&String::from_utf8_lossy(&o.stdout), "msgs"), "6");
    // Without the chain the same load fails: the listener really is compressed.
    // (It cannot read a greeting: bounded by a short time limit.)
    let o = run(
        Command::new(loadgen())
            .args(pop3_args)
            .args(["--time-limit", "5"]),
        b"",
    );
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("time limit"),
        "plain POP3 against a zlib listener: {}",
        show(&o)
    );
}
