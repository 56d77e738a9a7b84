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

/// Runs loadgen with `args` (space-separated) plus `extra`; its stdout on success.
fn loadgen_ok(args: &str, extra: &[&str]) -> String {
    let o = run(
        Command::new(loadgen())
            .args(args.split_whitespace())
            .args(extra),
        b"",
    );
    assert_ok(&o, &format!("loadgen {args}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn loadgen_smtp_and_pop3_tiny_load() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let _d = Daemon::start(&env);
    let maildir = env.maildir("alice").display().to_string();
    for extra in [&[][..], &["--pipelining", "--per-conn", "5"][..]] {
        let out = loadgen_ok(
            &format!(
                "smtp 127.0.0.1:{} --conc 4 --count 20 --size 2000 --time-limit 60 \
                 --rcpt alice@example.org --maildir {maildir}",
                env.smtp_port
            ),
            extra,
        );
        assert_eq!(field(&out, "acked"), "20");
        assert_eq!(field(&out, "delivered"), "20");
    }
    assert_eq!(read_new(&env, "alice").len(), 40);
    let out = loadgen_ok(
        &format!(
            "pop3 127.0.0.1:{} --user alice --sessions 2 --pipeline 4 --expect-msgs 40 \
             --time-limit 60",
            env.pop3_port
        ),
        &["--pass", PW],
    );
    assert_eq!(field(&out, "msgs"), "80");
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
    let out = loadgen_ok(
        &format!(
            "idle {smtp} --conns 10 --probes 3 --time-limit 60 --server-pid {}",
            d.pid()
        ),
        &[],
    );
    assert_eq!(field(&out, "conns"), "10");
    assert_eq!(field(&out, "errors"), "0");
    assert_eq!(field(&out, "server_processes_after"), "1");
    let pss: f64 = field(&out, "pss_kib_per_conn").parse().expect("a number");
    assert!(pss.is_finite(), "{out}");
    loadgen_ok(
        &format!(
            "smtp {smtp} --conc 2 --count 6 --time-limit 60 --rcpt alice@example.org --maildir {}",
            env.maildir("alice").display()
        ),
        &[],
    );
    let pop3_args = format!("pop3 {pop3} --user alice --pipeline 3 --expect-msgs 6");
    let out = loadgen_ok(
        &pop3_args,
        &["--pass", PW, "--filters", "zlib", "--time-limit", "60"],
    );
    assert_eq!(field(&out, "msgs"), "6");
    // Without the chain the same load fails: the listener really is compressed.
    // (It cannot read a greeting: bounded by a short time limit.)
    let o = run(
        Command::new(loadgen())
            .args(pop3_args.split_whitespace())
            .args(["--pass", PW, "--time-limit", "5"]),
        b"",
    );
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("time limit"),
        "plain POP3 against a zlib listener: {}",
        show(&o)
    );
}
