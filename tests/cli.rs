//! End-to-end tests of the administrative commands of the real binary: `check-config`,
//! `user add/list/passwd/del` and `hash-password` (maildird(8), exit codes 0/1/2).

mod common;

use common::*;

/// Verifies a users-file password field `{SCHEME}hash` (the schemes maildird-users(5) names).
fn verify(password: &str, field: &str) -> bool {
    let Some(rest) = field.strip_prefix('{') else {
        panic!("password field {field:?} has no {{SCHEME}} prefix");
    };
    let (scheme, hash) = rest.split_once('}').expect("closing brace of {SCHEME}");
    match scheme {
        "SHA512-CRYPT" => {
            assert!(hash.starts_with("$6$"), "{field}");
            <sha_crypt::ShaCrypt as sha_crypt::PasswordVerifier<str>>::verify_password(
                &sha_crypt::ShaCrypt::default(),
                password.as_bytes(),
                hash,
            )
            .is_ok()
        }
        "ARGON2ID" => {
            assert!(hash.starts_with("$argon2id$"), "{field}");
            <argon2::Argon2<'_> as argon2::PasswordVerifier<str>>::verify_password(
                &argon2::Argon2::default(),
                password.as_bytes(),
                hash,
            )
            .is_ok()
        }
        other => panic!("unexpected password scheme {other:?} in {field:?}"),
    }
}

/// The users-file line of `name`, if any (Dovecot passwd-file: `name:{SCHEME}hash:...`).
fn user_line(env: &TestEnv, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(env.users_file()).unwrap_or_default();
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .map(str::to_owned)
}

fn password_field(line: &str) -> String {
    line.split(':').nth(1).expect("password field").to_owned()
}

#[test]
fn check_config_prints_effective_config_with_resolved_paths() {
    let env = TestEnv::new();
    let o = maildird(&env.config(), &["check-config"], b"");
    assert_ok(&o, "check-config");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("hostname = \"mx.test\""), "{out}");
    // Relative paths are resolved against the config file's directory.
    let mail = format!("mail_root = \"{}\"", env.mail_root().display());
    assert!(out.contains(&mail), "expected {mail:?} in:\n{out}");
    let users = format!("users_file = \"{}\"", env.users_file().display());
    assert!(out.contains(&users), "expected {users:?} in:\n{out}");
    assert!(
        out.contains(&format!("bind = \"127.0.0.1:{}\"", env.smtp_port))
            && out.contains(&format!("bind = \"127.0.0.1:{}\"", env.pop3_port)),
        "listener binds missing:\n{out}"
    );
    // The printed config is itself a valid config.
    let again = env.write_config("effective.toml", &out);
    assert_ok(
        &maildird(&again, &["check-config"], b""),
        "check-config of its own output",
    );
}

#[test]
fn check_config_unknown_key_exits_2_naming_file_line_and_key() {
    let env = TestEnv::new();
    let cfg = env.write_config(
        "bad.toml",
        "hostname = \"mx.test\"\ndomains = [\"example.org\"]\nmail_rooot = \"mail\"\n",
    );
    let o = maildird(&cfg, &["check-config"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let at = format!("{}:3", cfg.display());
    assert!(err.contains(&at), "stderr should name {at:?}:\n{err}");
    assert!(
        err.contains("mail_rooot"),
        "stderr should name the key:\n{err}"
    );
}

#[test]
fn check_config_missing_file_is_an_error() {
    let env = TestEnv::new();
    let o = maildird(&env.path().join("nope.toml"), &["check-config"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(!o.stderr.is_empty(), "no error message:\n{}", show(&o));
}

#[test]
fn user_add_list_passwd_del_round_trip() {
    let env = TestEnv::new();
    assert!(!env.users_file().exists());

    add_user(&env, "alice", "first-pass");
    let line = user_line(&env, "alice").expect("alice in users file");
    assert!(
        !line.contains("first-pass"),
        "plaintext password stored: {line}"
    );
    assert!(
        verify("first-pass", &password_field(&line)),
        "hash does not verify: {line}"
    );
    assert!(
        !verify("wrong", &password_field(&line)),
        "wrong password verifies: {line}"
    );
    for sub in ["tmp", "new", "cur"] {
        let d = env.maildir("alice").join(sub);
        assert!(d.is_dir(), "{} not created", d.display());
    }

    add_user(&env, "bob", "bob-pass");
    let bob_line = user_line(&env, "bob").expect("bob in users file");
    assert_eq!(
        user_line(&env, "alice").as_deref(),
        Some(line.as_str()),
        "alice changed by add bob"
    );

    // A duplicate add is refused and changes nothing.
    let before = std::fs::read(env.users_file()).expect("users");
    let o = maildird(
        &env.config(),
        &["user", "add", "alice", "--password-stdin"],
        b"x\n",
    );
    assert!(
        !o.status.success(),
        "duplicate user add accepted\n{}",
        show(&o)
    );
    assert_eq!(std::fs::read(env.users_file()).expect("users"), before);

    let o = maildird(&env.config(), &["user", "list"], b"");
    assert_ok(&o, "user list");
    let list = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "user list:\n{list}"
    );

    let o = maildird(
        &env.config(),
        &["user", "passwd", "alice", "--password-stdin"],
        b"second-pass\n",
    );
    assert_ok(&o, "user passwd");
    let new_line = user_line(&env, "alice").expect("alice still there");
    assert_ne!(new_line, line, "passwd did not change the line");
    assert!(
        verify("second-pass", &password_field(&new_line)),
        "{new_line}"
    );
    assert!(
        !verify("first-pass", &password_field(&new_line)),
        "{new_line}"
    );
    assert_eq!(
        user_line(&env, "bob").as_deref(),
        Some(bob_line.as_str()),
        "bob changed by passwd alice"
    );

    let o = maildird(&env.config(), &["user", "del", "bob"], b"");
    assert_ok(&o, "user del");
    assert_eq!(user_line(&env, "bob"), None, "bob still in users file");
    assert_eq!(user_line(&env, "alice").as_deref(), Some(new_line.as_str()));
    // The Maildir is kept (mail is never deleted by user del).
    assert!(
        env.maildir("bob").join("new").is_dir(),
        "bob's Maildir removed"
    );
    let o = maildird(&env.config(), &["user", "list"], b"");
    assert_ok(&o, "user list");
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some("bob")),
        "{list}"
    );

    // Deleting an unknown user is an error.
    let o = maildird(&env.config(), &["user", "del", "carol"], b"");
    assert!(
        !o.status.success(),
        "del of unknown user succeeded\n{}",
        show(&o)
    );
}

#[test]
fn invalid_user_names_are_refused_with_exit_2_and_create_nothing() {
    for bad in ["../x", "..", "a/b", "/abs", "bad\u{1}ctl", ""] {
        let env = TestEnv::new();
        let o = maildird(
            &env.config(),
            &["user", "add", bad, "--password-stdin"],
            b"pw\n",
        );
        assert_eq!(o.status.code(), Some(2), "user add {bad:?}\n{}", show(&o));
        assert!(
            !env.users_file().exists() || user_line(&env, bad).is_none(),
            "{bad:?} written to users file"
        );
        assert!(!env.path().join("x").exists(), "{bad:?}: ../x created");
        assert!(!env.mail_root().join("a").exists(), "{bad:?}: a/ created");
        let entries: Vec<_> = std::fs::read_dir(env.mail_root())
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            entries.is_empty(),
            "{bad:?}: created {entries:?} under mail_root"
        );
    }
}

#[test]
fn hash_password_prints_a_verifiable_sha512_crypt_hash() {
    let env = TestEnv::new();
    let o = maildird(
        &env.config(),
        &["hash-password", "--password-stdin"],
        b"correct horse\n",
    );
    assert_ok(&o, "hash-password");
    let out = String::from_utf8(o.stdout.clone()).expect("utf-8");
    let hash = out.trim_end_matches('\n');
    assert!(!hash.contains('\n'), "one line expected: {out:?}");
    assert!(hash.starts_with("{SHA512-CRYPT}$6$"), "{hash}");
    assert!(verify("correct horse", hash), "{hash} does not verify");
    assert!(
        !verify("correct horse\n", hash),
        "newline from stdin was hashed"
    );
    assert!(!verify("wrong", hash));
    // A fresh salt each time.
    let o2 = maildird(
        &env.config(),
        &["hash-password", "--password-stdin"],
        b"correct horse\n",
    );
    assert_ok(&o2, "hash-password");
    assert_ne!(o.stdout, o2.stdout, "same salt twice");
}

/// The harness itself (no daemon involved): the client tools the interop tests drive
/// are installed and run, named by Debian package when missing.
#[test]
fn interop_tools_are_installed_and_run() {
    for (tool, package, args) in [
        ("swaks", "swaks", &["--version"][..]),
        ("curl", "curl", &["--version"][..]),
        ("msmtp", "msmtp", &["--version"][..]),
        ("fetchmail", "fetchmail", &["--version"][..]),
        ("getmail", "getmail6", &["--version"][..]),
        ("mutt", "mutt", &["-v"][..]),
        ("tmux", "tmux", &["-V"][..]),
        ("openssl", "openssl", &["version"][..]),
        ("python3", "python3", &["--version"][..]),
        ("systemd-socket-activate", "systemd", &["--version"][..]),
    ] {
        let path = require_tool(tool, package);
        let o = run(std::process::Command::new(&path).args(args), b"");
        // fetchmail --version exits 0..1 depending on its (absent) config.
        assert!(
            o.status.code().is_some() && !(o.stdout.is_empty() && o.stderr.is_empty()),
            "{tool} ({package}) does not run\n{}",
            show(&o)
        );
    }
    let o = python_ok("import poplib, smtplib, smtpraw; print('ok')", &[]);
    assert_eq!(o.trim(), "ok");
}

/// The harness's own checks reject what they must (so the interop tests can fail).
#[test]
fn harness_checks_names_hashes_and_line_ends() {
    assert_eq!(
        parse_maildir_name("1700000000.M123456P42Q7R0a1b2c.mx.test,S=120,W=125"),
        Some((120, 125))
    );
    for bad in [
        "1700000000.M123456P42Q7R0a1b2c.mx.test,S=120",
        "1700000000.M123456P42Q7R0A1B2C.mx.test,S=120,W=125",
        "1700000000.M123456P42Q7R0a1b2c.mx.test,S=120,W=125:2,S",
        "1700000000.P42Q7R0a1b2c.mx.test,S=120,W=125",
        "x.M1P1Q1R1.h,S=1,W=1",
    ] {
        assert_eq!(parse_maildir_name(bad), None, "{bad}");
    }
    // dev/users: alice's password is alice-dev.
    let dev = "{SHA512-CRYPT}$6$devsaltdevsalt12$xr2T0iaIjguCiD9OW9TdFHukwDzcdIwvwtpSvAb3ufmBYkyoZ5cSLyzpjmr9xTEH27/6eefcEy2iCGHqLVgjd.";
    assert!(verify("alice-dev", dev));
    assert!(!verify("alice-dev2", dev));
    assert_eq!(to_lf(b"a\r\nb\n\r\r\n"), b"a\nb\n\r\n");
    assert_eq!(to_crlf(b"a\nb\n"), b"a\r\nb\r\n");
    let m = message("s", "a@example.org");
    assert!(m.ends_with(b"Bye.\r\n") && to_crlf(&to_lf(&m)) == m);
}

/// Runs `maildird ARGS` with its standard output a pipe whose reader is
/// already gone, so the first write fails with EPIPE (the binary ignores
/// SIGPIPE, as every Rust program does).
fn spawn_closed_stdout(args: &[&str], cfg: &std::path::Path) -> std::process::Child {
    use std::process::{Command, Stdio};
    let (reader, writer) = nix::unistd::pipe().expect("pipe");
    drop(reader);
    Command::new(bin())
        .args(args)
        .arg("-c")
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn maildird")
}

/// Waits (bounded) for `child`, feeding it `stdin`.
fn finish(mut child: std::process::Child, stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    if let Some(mut sin) = child.stdin.take() {
        let _ = sin.write_all(stdin);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT) {
        Ok(o) => o.expect("wait"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("maildird did not end within {WAIT:?} with its reader gone");
        }
    }
}

fn assert_quiet_end(o: &std::process::Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{what} panicked:\n{}", show(o));
    assert_eq!(o.status.code(), Some(0), "{what}\n{}", show(o));
}

#[test]
fn a_closed_stdout_is_a_quiet_normal_end_for_every_printing_command() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let cfg = env.config();
    for (args, stdin) in [
        (&["check-config"][..], &b""[..]),
        (&["hash-password", "--password-stdin"][..], &b"pw\n"[..]),
        (&["user", "list"][..], &b""[..]),
        (&["user", "list", "--json"][..], &b""[..]),
        (&["--help"][..], &b""[..]),
        (&["user", "--help"][..], &b""[..]),
        (&["completions", "bash"][..], &b""[..]),
    ] {
        let o = finish(spawn_closed_stdout(args, &cfg), stdin);
        assert_quiet_end(&o, &format!("{args:?}"));
    }
    // The control socket clients, against the real daemon.
    let mut d = Daemon::start(&env);
    let _pop = Line::connect(env.pop3_port);
    for args in [
        &["who"][..],
        &["who", "--json"][..],
        &["status"][..],
        &["status", "--json"][..],
    ] {
        let o = finish(spawn_closed_stdout(args, &cfg), b"");
        assert_quiet_end(&o, &format!("{args:?}"));
    }
    // `events` writes only when an event comes: wait until it follows, then
    // make one (a connection).
    let mut ev = spawn_closed_stdout(&["events", "--json"], &cfg);
    let mut err = std::io::BufReader::new(ev.stderr.take().expect("stderr"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).expect("read stderr");
    assert!(line.contains("following session events"), "{line}");
    let _smtp = Line::smtp_ready(env.smtp_port);
    let o = finish(ev, b"");
    assert_quiet_end(&o, "events --json");
    let _ = d.wait_stderr("connect");
}

#[test]
fn user_list_json_is_one_array_of_names_and_roles() {
    let env = TestEnv::new();
    std::fs::write(env.users_file(), "").expect("users");
    let o = maildird(&env.config(), &["user", "list", "--json"], b"");
    assert_ok(&o, "user list --json");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "[]\n");
    add_user(&env, "alice", PW);
    let o = maildird(
        &env.config(),
        &["user", "add", "bob", "--password-stdin", "--role", "submit"],
        b"pw\n",
    );
    assert_ok(&o, "user add bob");
    let o = maildird(&env.config(), &["user", "list", "--json"], b"");
    assert_ok(&o, "user list --json");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        v,
        serde_json::json!([
            {"name": "alice", "roles": ["pop3", "submit"]},
            {"name": "bob", "roles": ["submit"]},
        ])
    );
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    let env = TestEnv::new();
    for (shell, marker) in [
        ("bash", "complete -F _maildird"),
        ("zsh", "#compdef maildird"),
        ("fish", "complete -c maildird"),
    ] {
        let o = maildird(&env.config(), &["completions", shell], b"");
        assert_ok(&o, &format!("completions {shell}"));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(marker), "{shell}: no {marker:?} in:\n{out}");
        // The subcommands and their flags are in the script.
        for word in ["check-config", "password-stdin", "unix-group"] {
            assert!(out.contains(word), "{shell}: no {word:?}");
        }
    }
    let o = maildird(&env.config(), &["completions", "tcsh"], b"");
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

/// Every subcommand and every long option that clap knows is in maildird(8)
/// (`Cm user add`, `Fl \-password-stdin`): the man page cannot fall behind.
#[test]
fn man_page_names_every_subcommand_and_long_flag() {
    use clap::CommandFactory;
    let man_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man/maildird.8");
    let man = std::fs::read_to_string(&man_path).expect("man/maildird.8");
    let mut missing = Vec::new();
    let mut stack = vec![(Vec::<String>::new(), maildird::cli::Cli::command())];
    while let Some((path, cmd)) = stack.pop() {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                let want = format!("Fl \\-{long}");
                if !man.contains(&want) {
                    missing.push(format!("{want} (of {:?})", path.join(" ")));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            let mut p = path.clone();
            p.push(sub.get_name().to_string());
            let want = format!("Cm {}", p.join(" "));
            if !man.contains(&want) {
                missing.push(want);
            }
            stack.push((p, sub.clone()));
        }
    }
    assert!(missing.is_empty(), "missing from maildird(8): {missing:#?}");
}

#[test]
fn serve_refuses_a_mail_root_the_service_user_cannot_write() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    // Read-only for everyone, its owner (the service user) included.
    chmod(&env.mail_root(), 0o555);
    let o = run(
        std::process::Command::new(bin())
            .args(["serve", "-c"])
            .arg(env.config()),
        b"",
    );
    chmod(&env.mail_root(), 0o755);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let root = env.mail_root().display().to_string();
    assert!(
        err.contains(&format!("mail_root {root} is not usable")),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
}

/// `tunnel` reports on stderr, with exit 1, what keeps the session from
/// working: nobody listening, a TLS handshake the server does not answer,
/// and a filter the server's listener does not use.
#[test]
fn tunnel_reports_refused_connections_failed_handshakes_and_chain_mismatches() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let openssl = require_tool("openssl", "openssl");
    let o = run(
        std::process::Command::new(openssl)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"])
            .args(["-subj", "/CN=maildird test CA"])
            .current_dir(env.path()),
        b"",
    );
    assert_ok(&o, "openssl req");
    let cfg = env.config_with("tunnel.toml", "\n[filter.tls]\nca = \"ca.pem\"\n");
    let _d = Daemon::start(&env);
    let tunnel = |filters: &str, port: u16| {
        let target = format!("127.0.0.1:{port}");
        let mut args = vec!["tunnel"];
        if !filters.is_empty() {
            args.extend(["--filters", filters]);
        }
        args.push(&target);
        (maildird(&cfg, &args, b"QUIT\r\n"), target)
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    for (filters, port, want) in [
        ("zlib", closed_port, "Connection refused"),
        ("tls", env.smtp_port, "tls handshake failed"),
        (
            "zlib",
            env.smtp_port,
            "does its listener use the same filters?",
        ),
    ] {
        let (o, target) = tunnel(filters, port);
        let what = format!("tunnel --filters {filters} {target}");
        assert_eq!(o.status.code(), Some(1), "{what}\n{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&target) && err.contains(want), "{what}: {err}");
        assert!(
            o.stdout.is_empty(),
            "{what}: garbage passed on\n{}",
            show(&o)
        );
    }
    // The plain chain still works against the plain listener.
    let (o, _) = tunnel("", env.smtp_port);
    assert_ok(&o, "tunnel without filters");
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("220 "),
        "{}",
        show(&o)
    );
}

#[test]
fn check_config_warns_on_unusable_hashes_and_aliases_pointing_at_nobody() {
    let env = TestEnv::new();
    std::fs::write(
        env.users_file(),
        "alice:{PLAIN}x\nold:{MD5-CRYPT}$1$salt$hash\n",
    )
    .expect("users");
    std::fs::write(
        env.path().join("aliases"),
        "postmaster: alice\nghost: carol\nsales: alice, dave\n",
    )
    .expect("aliases");
    let o = maildird(&env.config(), &["check-config"], b"");
    assert_ok(&o, "check-config with warnings");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning:") && err.contains("user \"old\": password scheme {MD5-CRYPT}"),
        "{err}"
    );
    assert!(err.contains("alias \"ghost\" points at nobody"), "{err}");
    assert!(
        err.contains("alias \"sales\"") && err.contains("dave"),
        "{err}"
    );
    assert!(!err.contains("postmaster"), "{err}");
}

#[test]
fn config_type_errors_and_filter_errors_name_file_line_and_key() {
    let env = TestEnv::new();
    let base = std::fs::read_to_string(env.config()).expect("config");
    let base_lines = base.lines().count();
    let cases = [
        (
            "\n[limits]\nmax_recipients = \"many\"\n".to_string(),
            base_lines + 3,
            "limits.max_recipients: invalid type: string \"many\"",
        ),
        (
            "\n[[listener]]\nname = \"x\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:0\"\nfilters = [\"nosuch\"]\n"
                .to_string(),
            base_lines + 6,
            "listener \"x\": unknown filter \"nosuch\"",
        ),
        (
            "\n[[listener]]\nname = \"x\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:0\"\nfilters = [\"zlib\"]\n\n[filter.zlib]\nlevel = 12\n"
                .to_string(),
            base_lines + 8,
            "filter \"zlib\": level must be 0-9",
        ),
    ];
    for (i, (extra, line, want)) in cases.iter().enumerate() {
        let cfg = env.config_with(&format!("bad{i}.toml"), extra);
        let o = maildird(&cfg, &["check-config"], b"");
        assert_eq!(o.status.code(), Some(2), "{extra}\n{}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        let at = format!("{}:{line}: ", cfg.display());
        assert!(
            err.contains(&at) && err.contains(want),
            "want {at:?} and {want:?}: {err}"
        );
    }
}

/// `--help` explains every option and positional argument of every command.
#[test]
fn every_flag_and_positional_has_help_text() {
    use clap::CommandFactory;
    let mut missing = Vec::new();
    let mut stack = vec![(String::from("maildird"), maildird::cli::Cli::command())];
    while let Some((path, mut cmd)) = stack.pop() {
        cmd.build();
        if cmd.get_about().is_none() {
            missing.push(path.clone());
        }
        for arg in cmd.get_arguments() {
            if arg.get_help().is_none() && !arg.is_hide_set() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            stack.push((format!("{path} {}", sub.get_name()), sub.clone()));
        }
    }
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}
