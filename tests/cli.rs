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
