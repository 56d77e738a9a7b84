//! Shared harness of the end-to-end interop tests: a temp dir with its own config and
//! free ports, the real `maildird` binary started (readiness via `NOTIFY_SOCKET`) and
//! stopped (SIGTERM on drop), client tools looked up by Debian package, bounded
//! process runs, and Maildir readers. Every wait is bounded and fails loudly.
#![allow(dead_code)] // each test crate uses a different subset of the harness

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Upper bound of every wait in these tests (daemon readiness, a client run, a poll).
pub const WAIT: Duration = Duration::from_secs(20);

/// Password given to every test user.
pub const PW: &str = "s3cret-Pw!";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A number unique within this test process (socket and file names).
pub fn unique() -> usize {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The binary under test. `MAILDIRD_E2E_BIN` overrides it (e.g. an installed build).
pub fn bin() -> PathBuf {
    std::env::var_os("MAILDIRD_E2E_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_maildird")))
}

/// Directory of the helper scripts (`tests/tools/`).
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools")
}

/// The path of `name` on `$PATH` (and /usr/sbin, /sbin for useradd & co.). A missing
/// tool is a test failure naming the Debian package, never a skip.
pub fn require_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            if m.is_file() && m.mode() & 0o111 != 0 {
                return p;
            }
        }
    }
    panic!(
        "required tool `{name}` not found on PATH: install the Debian package `{package}` \
         (apt-get install {package})"
    );
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range
/// (32768 and up): a port from that range, bound and released, can be taken
/// by any outgoing connection of the tests running alongside before the daemon
/// binds it. Picked at random (test binaries run in parallel) and checked free.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    for _ in 0..1000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let h = RandomState::new().hash_one((std::process::id(), n, Instant::now()));
        let port = 10_000 + (h % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port below 32000 on 127.0.0.1");
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1): nix's `signal` feature is not
/// enabled in Cargo.toml and the tests add no dependency.
pub fn signal(pid: u32, signal: &str) {
    let kill = require_tool("kill", "procps");
    let _ = Command::new(kill)
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// One test's world: a temp dir holding the config, users, aliases and Maildirs.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub hostname: String,
    pub smtp_port: u16,
    pub pop3_port: u16,
}

impl TestEnv {
    /// Temp dir, two free ports, and `maildird.toml` (see `config_toml`) plus an
    /// aliases file mapping postmaster to alice.
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("maildird-e2e.")
            .tempdir()
            .expect("tempdir");
        // As root the daemon drops to nobody:nogroup, which must reach the files.
        std::fs::set_permissions(
            dir.path(),
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
        )
        .expect("chmod tempdir");
        let env = TestEnv {
            dir,
            hostname: "mx.test".into(),
            smtp_port: free_port(),
            pop3_port: free_port(),
        };
        std::fs::write(env.path().join("aliases"), "postmaster: alice\n").expect("aliases");
        let cfg = env.config_toml(
            "mx.test",
            &format!("127.0.0.1:{}", env.smtp_port),
            &format!("127.0.0.1:{}", env.pop3_port),
            "control.sock",
        );
        env.write_config("maildird.toml", &cfg);
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The default config file.
    pub fn config(&self) -> PathBuf {
        self.path().join("maildird.toml")
    }

    pub fn mail_root(&self) -> PathBuf {
        self.path().join("mail")
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.mail_root().join(user)
    }

    pub fn users_file(&self) -> PathBuf {
        self.path().join("users")
    }

    /// The test config with relative paths (resolved against the config's directory).
    /// When the tests run as root the daemon drops privileges to `user`/`group`
    /// (it refuses to serve as root): nobody/nogroup, as an admin would configure
    /// a service user. Otherwise it keeps the current user.
    pub fn config_toml(
        &self,
        hostname: &str,
        smtp_bind: &str,
        pop3_bind: &str,
        control: &str,
    ) -> String {
        let (user, group) = if nix::unistd::geteuid().is_root() {
            ("nobody".to_string(), "nogroup".to_string())
        } else {
            current_user_group()
        };
        format!(
            "hostname = \"{hostname}\"\n\
             domains = [\"example.org\"]\n\
             mail_root = \"mail\"\n\
             users_file = \"users\"\n\
             aliases_file = \"aliases\"\n\
             control_socket = \"{control}\"\n\
             user = \"{user}\"\n\
             group = \"{group}\"\n\
             \n\
             [[listener]]\n\
             name = \"smtp\"\n\
             protocol = \"smtp\"\n\
             bind = \"{smtp_bind}\"\n\
             \n\
             [[listener]]\n\
             name = \"pop3\"\n\
             protocol = \"pop3\"\n\
             bind = \"{pop3_bind}\"\n"
        )
    }

    /// Writes `text` as `name` in the temp dir and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// The test config plus `extra` (TOML tables), written as `name`.
    pub fn config_with(&self, name: &str, extra: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.config()).expect("config") + extra;
        self.write_config(name, &text)
    }

    /// Writes a file in the temp dir and returns its path.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, bytes).expect("write file");
        p
    }

    /// A fresh empty directory inside the temp dir.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

/// Names of the current user and group (the privilege-drop target in test configs).
pub fn current_user_group() -> (String, String) {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let group = nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string());
    (user, group)
}

/// Runs `cmd` with `stdin` bytes, killing it and failing the test after `WAIT`.
pub fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    run_timeout(cmd, stdin, WAIT)
}

pub fn run_timeout(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let input = stdin.to_vec();
    let mut sin = child.stdin.take().expect("stdin");
    // A writer thread: a child that does not read its stdin must not block us.
    std::thread::spawn(move || {
        let _ = sin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.unwrap_or_else(|e| panic!("wait {what}: {e}")),
        Err(_) => {
            signal(pid, "KILL");
            let out = rx
                .recv_timeout(Duration::from_secs(5))
                .ok()
                .and_then(|r| r.ok());
            panic!(
                "{what} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                out.as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default(),
                out.as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default()
            );
        }
    }
}

/// Output of a finished command, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Panics with the full output unless the command exited 0.
pub fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed\n{}", show(o));
}

/// `maildird ARGS -c CFG` with `stdin`.
pub fn maildird(cfg: &Path, args: &[&str], stdin: &[u8]) -> Output {
    run(Command::new(bin()).args(args).arg("-c").arg(cfg), stdin)
}

/// `maildird user add NAME --password-stdin` against the env's default config.
pub fn add_user(env: &TestEnv, name: &str, pw: &str) {
    let o = maildird(
        &env.config(),
        &["user", "add", name, "--password-stdin"],
        format!("{pw}\n").as_bytes(),
    );
    assert_ok(&o, &format!("maildird user add {name}"));
}

/// `maildird user add NAME --unix-group GROUP`: the Maildir shared with a Unix
/// account that runs mutt (the documented ownership model).
pub fn add_shared_user(env: &TestEnv, name: &str, pw: &str, group: &str) {
    let o = maildird(
        &env.config(),
        &[
            "user",
            "add",
            name,
            "--password-stdin",
            "--unix-group",
            group,
        ],
        format!("{pw}\n").as_bytes(),
    );
    assert_ok(
        &o,
        &format!("maildird user add {name} --unix-group {group}"),
    );
}

/// `python3 -c SCRIPT ARGS...` with `tests/tools` on `PYTHONPATH` (for `smtpraw`);
/// the scripts check protocol replies themselves and exit non-zero with a message.
pub fn python(script: &str, args: &[&str]) -> Output {
    let py = require_tool("python3", "python3");
    run(
        Command::new(py)
            .env("PYTHONPATH", tools_dir())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg("-c")
            .arg(script)
            .args(args),
        b"",
    )
}

/// `python` that must succeed; returns its stdout as text.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let o = python(script, args);
    assert_ok(&o, "python3 script");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Files of a directory, sorted by name (empty if the directory does not exist).
pub fn read_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read mail file"),
            )
        })
        .collect();
    v.sort();
    v
}

/// Messages in `{mail_root}/{user}/new/`, sorted by file name.
pub fn read_new(env: &TestEnv, user: &str) -> Vec<(String, Vec<u8>)> {
    read_files(&env.maildir(user).join("new"))
}

/// Messages in `{mail_root}/{user}/cur/`, sorted by file name.
pub fn read_cur(env: &TestEnv, user: &str) -> Vec<(String, Vec<u8>)> {
    read_files(&env.maildir(user).join("cur"))
}

/// Every file under a Maildir (`new/`, `cur/`, `tmp/`), keyed `sub/name`: used to
/// prove an operation left the mailbox byte-identical.
pub fn snapshot(maildir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    for sub in ["new", "cur", "tmp"] {
        for (n, b) in read_files(&maildir.join(sub)) {
            m.insert(format!("{sub}/{n}"), b);
        }
    }
    m
}

/// The data file for `swaks --data @FILE`: swaks always ends DATA with its own
/// "\r\n.\r\n", so the file must not repeat the message's final CRLF, or swaks would
/// send an extra empty line.
pub fn swaks_data(env: &TestEnv, msg: &[u8]) -> String {
    let body = msg.strip_suffix(b"\r\n").expect("message ends with CRLF");
    format!(
        "@{}",
        env.write_file(&format!("swaks-{}.eml", unique()), body)
            .display()
    )
}

/// `chmod MODE PATH`.
pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// Inode of a file (hard-link checks).
pub fn inode(p: &Path) -> u64 {
    std::fs::metadata(p).expect("stat").ino()
}

/// A test message with CRLF line ends, exercising what clients must transmit
/// transparently: leading dots, a lone dot with text, 8-bit UTF-8, a tab, a long line.
pub fn message(subject: &str, to: &str) -> Vec<u8> {
    let long: String = "0123456789".repeat(30);
    let lines = [
        "From: Sender <sender@client.test>".to_string(),
        format!("To: <{to}>"),
        format!("Subject: {subject}"),
        "Date: Sat, 21 Nov 2026 10:00:00 +0000".into(),
        format!(
            "Message-ID: <{}.{}@client.test>",
            subject.replace(' ', "-"),
            unique()
        ),
        "MIME-Version: 1.0".into(),
        "Content-Type: text/plain; charset=utf-8".into(),
        "Content-Transfer-Encoding: 8bit".into(),
        String::new(),
        "Hello,".into(),
        ".leading dot line".into(),
        "..two leading dots".into(),
        "Gr\u{fc}\u{df}e aus K\u{f6}ln \u{2014} 8-bit body".into(),
        "tab\there, trailing space ".into(),
        long,
        "Bye.".into(),
    ];
    let mut m = Vec::new();
    for l in lines {
        m.extend_from_slice(l.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// CRLF -> LF (what the daemon stores).
pub fn to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// LF -> CRLF (what POP3 RETR sends for a stored file).
pub fn to_crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + b.len() / 40);
    for &c in b {
        if c == b'\n' {
            out.push(b'\r');
        }
        out.push(c);
    }
    out
}

/// `S` and `W` of a Maildir name `^\d+\.M\d+P\d+Q\d+R[0-9a-f]+\.[^,]+,S=(\d+),W=(\d+)$`.
pub fn parse_maildir_name(name: &str) -> Option<(u64, u64)> {
    fn digits(s: &str) -> Option<(&str, &str)> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (n > 0).then(|| s.split_at(n))
    }
    let (_, r) = digits(name)?;
    let r = r.strip_prefix(".M")?;
    let (_, r) = digits(r)?;
    let r = r.strip_prefix('P')?;
    let (_, r) = digits(r)?;
    let r = r.strip_prefix('Q')?;
    let (_, r) = digits(r)?;
    let r = r.strip_prefix('R')?;
    let hex = r.bytes().take_while(u8::is_ascii_hexdigit).count();
    if hex == 0 || r[..hex].bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let r = r[hex..].strip_prefix('.')?;
    let (host, r) = r.split_once(',')?;
    if host.is_empty() {
        return None;
    }
    let r = r.strip_prefix("S=")?;
    let (s, r) = digits(r)?;
    let r = r.strip_prefix(",W=")?;
    let (w, r) = digits(r)?;
    if !r.is_empty() {
        return None;
    }
    Some((s.parse().ok()?, w.parse().ok()?))
}

/// The delivery contract: the name carries S = length and W = length + LF count; the
/// file starts with `Return-Path: <sender>`, has our `Received:` line, and ends with
/// exactly the LF-normalised bytes the client sent.
pub fn assert_delivered(name: &str, file: &[u8], sender: &str, sent: &[u8]) {
    let text = String::from_utf8_lossy(file);
    let (s, w) = parse_maildir_name(name)
        .unwrap_or_else(|| panic!("maildir file name {name:?} does not match the contract"));
    let lfs = file.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(s, file.len() as u64, "S= of {name} vs file length");
    assert_eq!(w, file.len() as u64 + lfs, "W= of {name} vs CRLF length");
    let rp = format!("Return-Path: <{sender}>\n");
    assert!(
        text.starts_with(&rp),
        "file does not start with {rp:?}:\n{text}"
    );
    assert!(
        text.contains("Received: from ") && text.contains("by mx.test (maildird)"),
        "no Received: header by mx.test (maildird):\n{text}"
    );
    let want = to_lf(sent);
    assert!(
        file.ends_with(&want),
        "file does not end with the message as sent\n--- file ---\n{text}\n--- sent (LF) ---\n{}",
        String::from_utf8_lossy(&want)
    );
    // Trace headers only: nothing but header lines before the message.
    let head = &file[..file.len() - want.len()];
    assert!(
        head.ends_with(b"\n") && !head.windows(2).any(|w| w == b"\n\n"),
        "unexpected bytes between trace headers and message:\n{text}"
    );
}

/// Asserts exactly one message in `user`'s `new/` and that it is `sent` from `sender`;
/// returns its (name, bytes).
pub fn assert_one_delivered(
    env: &TestEnv,
    user: &str,
    sender: &str,
    sent: &[u8],
) -> (String, Vec<u8>) {
    let files = read_new(env, user);
    assert_eq!(
        files.len(),
        1,
        "expected one message in {user}/new, found {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let (n, b) = files.into_iter().next().expect("one file");
    assert_delivered(&n, &b, sender, sent);
    (n, b)
}

/// Shared stderr capture of a daemon: the full text plus a line channel for waiters.
struct LogTap {
    text: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

fn tap_stderr(child: &mut Child) -> LogTap {
    let err = child.stderr.take().expect("piped stderr");
    let text = Arc::new(Mutex::new(String::new()));
    let (tx, lines) = mpsc::channel();
    let t2 = Arc::clone(&text);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut t) = t2.lock() {
                t.push_str(&line);
                t.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    LogTap { text, lines }
}

/// A running daemon process (standalone, or `systemd-socket-activate` that will exec
/// it). Dropping it sends SIGTERM and reaps it (SIGKILL after `WAIT`); when the test is
/// panicking its stderr is printed.
pub struct Daemon {
    child: Option<Child>,
    tap: LogTap,
    notify: UnixDatagram,
    notify_path: PathBuf,
    label: String,
    /// Whether SIGTERM must end the process with exit 0 (the daemon's contract); not
    /// for a `systemd-socket-activate --accept` parent, which just dies of the signal.
    clean_exit: bool,
}

impl Daemon {
    /// `maildird serve -c {env.config()}`, waiting for `READY=1`.
    pub fn start(env: &TestEnv) -> Daemon {
        Daemon::start_with(env, &env.config())
    }

    /// `maildird serve -c CFG` without waiting: the caller reads the notify socket.
    pub fn spawn_unready(env: &TestEnv, cfg: &Path) -> Daemon {
        Daemon::spawn_unready_env(env, cfg, &[])
    }

    /// Like `spawn_unready`, with extra environment variables.
    pub fn spawn_unready_env(env: &TestEnv, cfg: &Path, vars: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("-c").arg(cfg);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        Daemon::spawn(env, cmd, "maildird serve", |c, sock| {
            c.env("NOTIFY_SOCKET", sock);
        })
    }

    /// `maildird serve -c CFG`, waiting for `READY=1`.
    pub fn start_with(env: &TestEnv, cfg: &Path) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("-c").arg(cfg);
        Daemon::start_cmd(env, cmd, "maildird serve")
    }

    /// `cmd` (which runs `maildird serve`), given `NOTIFY_SOCKET`; waits for `READY=1`.
    fn start_cmd(env: &TestEnv, cmd: Command, label: &str) -> Daemon {
        let d = Daemon::spawn(env, cmd, label, |c, sock| {
            c.env("NOTIFY_SOCKET", sock);
        });
        d.wait_ready();
        d
    }

    /// `nsenter --net=/run/netns/NETNS maildird serve -c CFG` (the daemon in a
    /// network namespace the test made, as a host of its own), waiting for `READY=1`.
    pub fn start_in_netns(env: &TestEnv, cfg: &Path, netns: &str) -> Daemon {
        let mut cmd = Command::new(require_tool("nsenter", "util-linux"));
        cmd.arg(format!("--net=/run/netns/{netns}"))
            .arg(bin())
            .arg("serve")
            .arg("-c")
            .arg(cfg);
        Daemon::start_cmd(env, cmd, &format!("maildird serve in {netns}"))
    }

    /// `systemd-socket-activate -l A... [--fdname=N:N] -E NOTIFY_SOCKET=.. maildird
    /// serve -c CFG`. Returns once every socket is listening; the daemon itself is
    /// exec()ed on the first connection, so connect, then `wait_ready`.
    pub fn socket_activated(
        env: &TestEnv,
        cfg: &Path,
        listen: &[String],
        fdnames: Option<&str>,
    ) -> Daemon {
        let ssa = require_tool("systemd-socket-activate", "systemd");
        let mut cmd = Command::new(ssa);
        for l in listen {
            cmd.arg("-l").arg(l);
        }
        if let Some(n) = fdnames {
            cmd.arg(format!("--fdname={n}"));
        }
        let mut d = Daemon::spawn(env, cmd, "systemd-socket-activate", |c, sock| {
            // systemd-socket-activate builds the child's environment from -E only.
            let mut e = std::ffi::OsString::from("NOTIFY_SOCKET=");
            e.push(sock);
            c.arg("-E").arg(e);
            if std::env::var_os("RUST_LOG").is_some() {
                c.arg("-E").arg("RUST_LOG");
            }
            c.arg(bin()).arg("serve").arg("-c").arg(cfg);
        });
        // It logs "Listening on ADDR as FD." per socket before it polls them.
        for l in listen {
            d.wait_stderr(&format!("Listening on {l}"));
        }
        d
    }

    /// `systemd-socket-activate -l LISTEN --inetd -a maildird serve --inetd PROTO -c CFG`:
    /// one daemon process per connection, with the socket on stdin/stdout (like an
    /// `Accept=yes` socket unit). Returns once the socket listens.
    pub fn inetd_accept(env: &TestEnv, cfg: &Path, listen: &str, protocol: &str) -> Daemon {
        let ssa = require_tool("systemd-socket-activate", "systemd");
        let mut cmd = Command::new(ssa);
        cmd.arg("-l").arg(listen).args(["--inetd", "-a"]);
        let mut d = Daemon::spawn(env, cmd, "systemd-socket-activate --inetd", |c, _| {
            if std::env::var_os("RUST_LOG").is_some() {
                c.arg("-E").arg("RUST_LOG");
            }
            c.arg(bin())
                .args(["serve", "--inetd", protocol, "-c"])
                .arg(cfg);
        });
        d.clean_exit = false;
        d.wait_stderr(&format!("Listening on {listen}"));
        d
    }

    fn spawn(
        env: &TestEnv,
        mut cmd: Command,
        label: &str,
        add_notify: impl FnOnce(&mut Command, &Path),
    ) -> Daemon {
        let notify_path = env.path().join(format!("notify-{}.sock", unique()));
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        // Like systemd's notify socket, writable by the unprivileged daemon.
        std::fs::set_permissions(
            &notify_path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
        )
        .expect("chmod notify socket");
        add_notify(&mut cmd, &notify_path);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let tap = tap_stderr(&mut child);
        Daemon {
            child: Some(child),
            tap,
            notify,
            notify_path,
            label: label.into(),
            clean_exit: true,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.tap.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Fails the test (with the log) if the process has already exited.
    fn check_alive(&mut self, waiting_for: &str) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.drain_log();
                panic!(
                    "{} exited ({st}) while waiting for {waiting_for}\n--- stderr ---\n{}",
                    self.label,
                    self.log()
                );
            }
        }
    }

    /// Waits (bounded) for the reader thread to finish after the process exited.
    fn drain_log(&self) {
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            match self.tap.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Blocks until a datagram containing `READY=1` arrives on the notify socket.
    pub fn wait_ready(&self) {
        self.wait_notify("READY=1");
    }

    /// Blocks (bounded) until a notify datagram has the line `want`; returns every
    /// line received until then, in order (earlier datagrams included).
    pub fn wait_notify(&self, want: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        let mut seen = Vec::new();
        self.notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        loop {
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    seen.extend(msg.lines().map(str::to_string));
                    if msg.lines().any(|l| l == want) {
                        return seen;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Some(pid) = self.child.as_ref().map(Child::id) {
                if process_exited(pid) && want != "STOPPING=1" {
                    self.drain_log();
                    panic!(
                        "{} exited before {want}\n--- stderr ---\n{}",
                        self.label,
                        self.log()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} sent no {want} on {} within {WAIT:?} (got {seen:?})\n--- stderr ---\n{}",
                    self.label,
                    self.notify_path.display(),
                    self.log()
                );
            }
        }
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns the line.
    pub fn wait_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: no stderr line containing {needle:?} within {WAIT:?}\n--- stderr ---\n{}",
                    self.label,
                    self.log()
                );
            }
            match self
                .tap
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => self.check_alive(needle),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.check_alive(needle);
                    panic!(
                        "{}: stderr closed before {needle:?}\n{}",
                        self.label,
                        self.log()
                    );
                }
            }
        }
    }

    /// SIGTERM, then wait (bounded); returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// Like `stop`, also returning all of stderr (read to its end).
    pub fn stop_with_log(mut self) -> (ExitStatus, String) {
        let st = self.terminate();
        self.drain_log();
        (st, self.log())
    }

    /// After the test sent SIGKILL: reap the process (bounded) so the next daemon
    /// can bind the same ports.
    pub fn wait_killed(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok(st)) => assert!(!st.success(), "{} exited cleanly, not killed", self.label),
            _ => panic!("{} did not die after SIGKILL", self.label),
        }
    }

    /// Reads every datagram waiting on the notify socket without blocking. The
    /// daemon sends STATUS= every 5 s with a blocking sendmsg; a unix datagram
    /// socket queues only net.unix.max_dgram_qlen (10) of them, so a test that
    /// runs one daemon for more than ~50 s must drain them (as systemd does)
    /// or the daemon's main loop, which also takes SIGTERM, stalls in sendmsg.
    pub fn drain_notify(&self) {
        let mut buf = [0u8; 4096];
        let _ = self.notify.set_nonblocking(true);
        while self.notify.recv(&mut buf).is_ok() {}
        let _ = self.notify.set_nonblocking(false);
    }

    fn terminate(&mut self) -> ExitStatus {
        self.drain_notify();
        let Some(child) = self.child.take() else {
            panic!("daemon already stopped");
        };
        let pid = child.id();
        signal(pid, "TERM");
        let (tx, rx) = mpsc::channel();
        let mut child = child;
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(WAIT) {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => panic!("wait for {}: {e}", self.label),
            Err(_) => {
                signal(pid, "KILL");
                let _ = rx.recv_timeout(Duration::from_secs(5));
                panic!(
                    "{} did not exit within {WAIT:?} after SIGTERM\n--- stderr ---\n{}",
                    self.label,
                    self.log()
                );
            }
        }
    }
}

/// True when `pid` (our child) has exited: a zombie or gone. Reading /proc avoids
/// reaping it here, which `Drop` does.
fn process_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
        Err(_) => true,
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let panicking = std::thread::panicking();
        if panicking {
            let st = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.terminate()));
            eprintln!(
                "--- {} (exit {:?}) stderr ---\n{}",
                self.label,
                st.ok(),
                self.log()
            );
        } else if !self.clean_exit {
            let _ = self.terminate();
        } else {
            let st = self.terminate();
            assert!(
                st.success(),
                "{} exited with {st} after SIGTERM\n--- stderr ---\n{}",
                self.label,
                self.log()
            );
        }
    }
}

/// Delivers `msg` from `SMTP_SENDER` to `rcpts` with python3 smtplib (raw bytes, so the
/// message is sent as is) and asserts every recipient was accepted.
pub fn deliver(port: u16, rcpts: &[&str], msg: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("msg.eml");
    std::fs::write(&path, msg).expect("write message");
    let mut args = vec![
        port.to_string(),
        path.to_string_lossy().into_owned(),
        SMTP_SENDER.to_string(),
    ];
    args.extend(rcpts.iter().map(|r| r.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = python_ok(
        r#"
import smtplib, sys
port, path, sender, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
with smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=20) as s:
    refused = s.sendmail(sender, rcpts, open(path, 'rb').read())
    assert refused == {}, refused
print('SENT')
"#,
        &args,
    );
    assert!(out.contains("SENT"), "{out}");
}

/// One message through Python's smtplib: the reply to the end of DATA (or
/// to the first refused command) as "CODE TEXT".
pub fn smtp_send(port: u16, rcpts: &[&str], msg: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("msg.eml");
    std::fs::write(&path, msg).expect("write message");
    let mut args = vec![port.to_string(), path.to_string_lossy().into_owned()];
    args.extend(rcpts.iter().map(|r| r.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python_ok(
        r#"
import smtplib, sys
port, path, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=120)
s.ehlo()
s.mail('sender@client.test')
for r in rcpts:
    code, text = s.rcpt(r)
    if code != 250:
        print(code, text.decode()); sys.exit(0)
code, text = s.data(open(path, 'rb').read())
print(code, text.decode().replace('\n', ' | '))
s.quit()
"#,
        &args,
    )
    .trim()
    .to_string()
}

/// A child process killed and reaped on drop (a peer a test started).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Envelope sender used by `deliver`.
pub const SMTP_SENDER: &str = "sender@client.test";

/// What `tests/tools/pop3dump.py` saw in one POP3 session.
#[derive(Debug, Default)]
pub struct Pop3Dump {
    pub greeting: String,
    pub capa: Vec<String>,
    pub stat: (usize, u64),
    /// (msg number, size) from LIST.
    pub list: Vec<(usize, u64)>,
    /// (msg number, unique id) from UIDL.
    pub uidl: Vec<(usize, String)>,
    /// RETR bytes of messages 1..=n (CRLF, dot-unstuffed).
    pub retr: Vec<Vec<u8>>,
    /// TOP n 0 bytes of messages 1..=n.
    pub top: Vec<Vec<u8>>,
    pub stdout: String,
}

/// Runs `pop3dump.py PORT USER PW OUT EXTRA...` (EXTRA: `dele N`, `quit`, `drop`).
pub fn pop3_dump(port: u16, user: &str, pw: &str, extra: &[&str]) -> Pop3Dump {
    let py = require_tool("python3", "python3");
    let out = tempfile::tempdir().expect("tempdir");
    let o = run(
        Command::new(py)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(tools_dir().join("pop3dump.py"))
            .arg(port.to_string())
            .arg(user)
            .arg(pw)
            .arg(out.path())
            .args(extra),
        b"",
    );
    assert_ok(&o, "pop3dump.py");
    let summary = std::fs::read_to_string(out.path().join("summary.txt")).expect("summary");
    let mut d = Pop3Dump {
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        ..Pop3Dump::default()
    };
    let num = |s: &str| -> u64 {
        s.parse()
            .unwrap_or_else(|_| panic!("number {s:?} in {summary}"))
    };
    for line in summary.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        let mut f = v.split_whitespace();
        match k {
            "GREETING" => d.greeting = v.to_owned(),
            "CAPA" => d.capa.push(v.to_owned()),
            "STAT" => {
                d.stat = (
                    num(f.next().unwrap_or("")) as usize,
                    num(f.next().unwrap_or("")),
                )
            }
            "LIST" => d.list.push((
                num(f.next().unwrap_or("")) as usize,
                num(f.next().unwrap_or("")),
            )),
            "UIDL" => d.uidl.push((
                num(f.next().unwrap_or("")) as usize,
                f.next().unwrap_or("").to_owned(),
            )),
            _ => {}
        }
    }
    for i in 1..=d.stat.0 {
        d.retr
            .push(std::fs::read(out.path().join(format!("retr.{i}"))).expect("retr file"));
        d.top
            .push(std::fs::read(out.path().join(format!("top.{i}"))).expect("top file"));
    }
    d
}

/// Maps UIDL -> (sub/name, bytes) for the messages of a Maildir (UIDL = base name,
/// the part before `:`).
pub fn by_base_name(maildir: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut m = BTreeMap::new();
    for (k, v) in snapshot(maildir) {
        if k.starts_with("tmp/") {
            continue;
        }
        let name = k.split_once('/').map(|x| x.1).unwrap_or(&k);
        let base = name.split(':').next().unwrap_or(name).to_owned();
        m.insert(base, (k.clone(), v));
    }
    m
}

/// Every POP3 message matches its Maildir file: UIDL = base name, RETR = file with
/// LF -> CRLF, LIST size = RETR octets, STAT = count and sum.
pub fn assert_pop3_matches_maildir(d: &Pop3Dump, maildir: &Path) {
    let files = by_base_name(maildir);
    assert_eq!(
        d.stat.0,
        files.len(),
        "STAT count vs files {:?}",
        files.keys()
    );
    assert_eq!(d.uidl.len(), files.len(), "UIDL entries");
    assert_eq!(d.list.len(), files.len(), "LIST entries");
    let mut total = 0;
    for (i, uid) in &d.uidl {
        let (path, bytes) = files.get(uid).unwrap_or_else(|| {
            panic!(
                "UIDL {uid} is not the base name of any file: {:?}",
                files.keys()
            )
        });
        let want = to_crlf(bytes);
        let got = &d.retr[i - 1];
        assert!(
            got == &want,
            "RETR {i} differs from {path} with CRLF\n--- retr ---\n{}\n--- file ---\n{}",
            String::from_utf8_lossy(got),
            String::from_utf8_lossy(&want)
        );
        let size = d.list.iter().find(|(n, _)| n == i).map(|x| x.1);
        assert_eq!(
            size,
            Some(want.len() as u64),
            "LIST {i} size vs RETR octets"
        );
        // TOP n 0 = the header section and the empty line.
        let hdr_end = want
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(want.len());
        assert_eq!(d.top[i - 1], want[..hdr_end], "TOP {i} 0");
        total += want.len() as u64;
    }
    assert_eq!(d.stat.1, total, "STAT size");
}

/// As root the test daemon runs as nobody:nogroup (see `config_toml`): hand it a
/// directory tree the test created, as `maildird user add` does for its Maildirs.
pub fn give_to_daemon_user(path: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("user nobody");
    let group = nix::unistd::Group::from_name("nogroup")
        .ok()
        .flatten()
        .expect("group nogroup");
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        std::os::unix::fs::chown(&p, Some(user.uid.as_raw()), Some(group.gid.as_raw()))
            .expect("chown");
        if p.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
    }
}

/// A private tmux server (killed on drop) showing one window, `mutt`.
pub struct Tmux {
    pub bin: PathBuf,
    pub sock: PathBuf,
}

impl Tmux {
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-S").arg(&self.sock);
        c
    }

    /// A new 160x40 session `mutt` running the shell command `command`.
    pub fn start(&self, command: &str) {
        let o = run(
            self.cmd()
                .args(["new-session", "-d", "-s", "mutt", "-x", "160", "-y", "40"])
                .arg(command),
            b"",
        );
        assert_ok(&o, "tmux new-session");
    }

    pub fn capture(&self) -> Option<String> {
        let o = run(self.cmd().args(["capture-pane", "-p", "-t", "mutt"]), b"");
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn keys(&self, keys: &[&str]) {
        let o = run(self.cmd().args(["send-keys", "-t", "mutt"]).args(keys), b"");
        assert_ok(&o, "tmux send-keys");
    }

    pub fn alive(&self) -> bool {
        run(self.cmd().args(["has-session", "-t", "mutt"]), b"")
            .status
            .success()
    }

    /// Polls the screen (bounded by `WAIT`) until `pred` holds.
    pub fn wait_screen(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.capture() {
                Some(s) if pred(&s) => return s,
                Some(s) => last = s,
                None => panic!("tmux session ended while waiting for {what}; screen was:\n{last}"),
            }
            // Screen polling interval: tmux offers no event for "mutt drew this".
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mutt screen never showed {what} within {WAIT:?}; screen:\n{last}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
    }
}

/// Waits (bounded) until `port` on 127.0.0.1 accepts a connection.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} is not listening on {port}"
        );
        // Readiness poll: haproxy offers no notification when it listens.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A real haproxy on 127.0.0.1:`front`, round-robin over `backends` with
/// `send_proxy` (`send-proxy` or `send-proxy-v2`); killed on drop.
pub struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn haproxy(env: &TestEnv, front: u16, backends: &[u16], send_proxy: &str) -> Haproxy {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, port)| format!("  server mx{i} 127.0.0.1:{port} {send_proxy}\n"))
        .collect();
    haproxy_backend(env, front, &servers)
}

/// A real haproxy on 127.0.0.1:`front` whose backend has the lines `backend`
/// (servers and options) after `balance roundrobin`; killed on drop.
pub fn haproxy_backend(env: &TestEnv, front: u16, backend: &str) -> Haproxy {
    let bin = require_tool("haproxy", "haproxy");
    let cfg = env.write_config(
        &format!("haproxy-{front}.cfg"),
        &format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend fe\n  bind 127.0.0.1:{front}\n  default_backend be\n\
             backend be\n  balance roundrobin\n{backend}"
        ),
    );
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn haproxy");
    let h = Haproxy(child);
    wait_listening(front, "haproxy");
    h
}

/// A minimal line client for exact protocol steps (real clients cover the rest).
pub struct Line {
    pub r: BufReader<std::net::TcpStream>,
    pub w: std::net::TcpStream,
}

impl Line {
    pub fn connect(port: u16) -> Line {
        Line::connect_from(None, port)
    }

    /// From a chosen loopback source address (per-IP limits, PROXY tests).
    pub fn connect_from(src: Option<&str>, port: u16) -> Line {
        let s = match src {
            None => std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"),
            Some(ip) => {
                let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .expect("socket");
                let from: std::net::SocketAddr = format!("{ip}:0").parse().expect("addr");
                sock.bind(&from.into()).expect("bind source");
                let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
                sock.connect(&to.into()).expect("connect");
                sock.into()
            }
        };
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Line {
            r: BufReader::new(s.try_clone().expect("clone")),
            w: s,
        }
    }

    /// Connected, greeted and past EHLO.
    pub fn smtp_ready(port: u16) -> Line {
        let mut c = Line::connect(port);
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("EHLO client.test\r\n").starts_with("250"));
        c
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).expect("read");
        l
    }

    /// Read an SMTP reply (multi-line aware) and return its last line.
    pub fn reply(&mut self) -> String {
        loop {
            let l = self.line();
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return l;
            }
        }
    }

    pub fn send(&mut self, b: impl AsRef<[u8]>) {
        self.w.write_all(b.as_ref()).expect("write");
    }

    /// An SMTP command and its reply.
    pub fn cmd(&mut self, b: impl AsRef<[u8]>) -> String {
        self.send(b);
        self.reply()
    }

    /// A POP3 command and its one-line reply.
    pub fn cmd_pop(&mut self, b: impl AsRef<[u8]>) -> String {
        self.send(b);
        self.line()
    }
}

/// A number field of `/proc/PID/status` (`VmRSS` in KiB, `Threads`, ...).
pub fn proc_status(pid: u32, key: &str) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    st.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"))
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status(pid, "VmRSS")
}
