//! What the fault tests share: a tmpfs of their own, strace attached to the
//! running daemon with `--inject`, and a daemon started on listening sockets
//! the test holds (as systemd does), so that it can be restarted after it
//! aborted without refusing a connection.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::common::*;

/// A tmpfs mounted for one test; unmounted on drop (lazily if still busy).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// `mount -t tmpfs -o OPTIONS tmpfs PATH` (PATH is created).
    pub fn mount(path: &Path, options: &str) -> Tmpfs {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the fault tests mount a tmpfs and attach strace: run them as root"
        );
        std::fs::create_dir_all(path).expect("mkdir mount point");
        let mount = require_tool("mount", "mount");
        let o = run(
            Command::new(mount)
                .args(["-t", "tmpfs", "-o", options, "tmpfs"])
                .arg(path),
            b"",
        );
        assert_ok(&o, "mount tmpfs");
        Tmpfs(path.to_path_buf())
    }

    /// (free bytes, free inodes) for an unprivileged writer.
    pub fn free(&self) -> (u64, u64) {
        let st = nix::sys::statvfs::statvfs(&self.0).expect("statvfs");
        (
            st.blocks_available() as u64 * st.fragment_size() as u64,
            st.files_available() as u64,
        )
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.0)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(&[]) {
            quiet(&["-l"]);
        }
    }
}

/// strace attached to a running process (all its threads, and those it
/// starts), injecting faults. Detached on drop.
pub struct Strace {
    child: Option<Child>,
    out: PathBuf,
    stderr: Arc<Mutex<String>>,
}

/// What one strace run injected: count per system call, and the lines.
#[derive(Debug, Default, Clone)]
pub struct Injected {
    pub by_syscall: BTreeMap<String, usize>,
    pub lines: Vec<String>,
}

impl Injected {
    pub fn total(&self) -> usize {
        self.by_syscall.values().sum()
    }

    pub fn add(&mut self, other: &Injected) {
        for (k, v) in &other.by_syscall {
            *self.by_syscall.entry(k.clone()).or_default() += v;
        }
        self.lines.extend(other.lines.iter().cloned());
    }
}

impl Strace {
    /// `strace -f -p PID -o OUT -e trace=TRACE -e inject=SPEC... [-P PATH...]`:
    /// returns once strace reports every thread of PID attached. `injects`
    /// are strace `--inject` specs, e.g. `unlinkat:error=EIO:when=2+3`; with
    /// `paths`, only calls on those paths (or descriptors of them) are traced
    /// and therefore faulted.
    pub fn attach(pid: u32, trace: &str, injects: &[&str], paths: &[&Path], out: &Path) -> Strace {
        Strace::try_attach(pid, trace, injects, paths, out).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `attach`, or Err when strace exits without attaching (the process is
    /// gone, e.g. it just aborted). No answer within `WAIT` fails the test.
    pub fn try_attach(
        pid: u32,
        trace: &str,
        injects: &[&str],
        paths: &[&Path],
        out: &Path,
    ) -> Result<Strace, String> {
        let strace = require_tool("strace", "strace");
        let mut cmd = Command::new(strace);
        cmd.args(["-f", "-p", &pid.to_string(), "-o"])
            .arg(out)
            .arg("-e")
            .arg(format!("trace={trace}"));
        for i in injects {
            cmd.arg("-e").arg(format!("inject={i}"));
        }
        for p in paths {
            cmd.arg("-P").arg(p);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strace");
        let err = child.stderr.take().expect("strace stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let s2 = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = s2.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
                let _ = tx.send(line);
            }
        });
        // "strace: Process PID attached with N threads" (or "... attached"
        // for a single thread): from then on every call of the set is seen.
        let want = format!("Process {pid} attached");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(&want) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = stderr.lock().map(|s| s.clone()).unwrap_or_default();
                    if e == mpsc::RecvTimeoutError::Disconnected {
                        return Err(format!("strace exited without attaching to {pid}:\n{text}"));
                    }
                    panic!("strace did not attach to {pid} within {WAIT:?}\n{text}");
                }
            }
        }
        Ok(Strace {
            child: Some(child),
            out: out.to_path_buf(),
            stderr,
        })
    }

    /// Detach (SIGINT makes strace let go of every thread) and read what it
    /// injected. Also fine after the traced process died (strace then exited).
    pub fn detach(mut self) -> Injected {
        self.stop();
        parse_injected(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// strace's stderr so far (attach and detach messages).
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        signal(pid, "INT");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut child = child;
            let _ = tx.send(child.wait());
        });
        if rx.recv_timeout(WAIT).is_err() {
            signal(pid, "KILL");
            let _ = rx.recv_timeout(Duration::from_secs(5));
            panic!("strace did not detach within {WAIT:?}\n{}", self.stderr());
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        } else {
            self.stop();
        }
    }
}

/// Lines `TID syscall(...) = -1 EIO (...) (INJECTED)` of an strace output file.
pub fn parse_injected(text: &str) -> Injected {
    let mut inj = Injected::default();
    for line in text.lines().filter(|l| l.contains("(INJECTED)")) {
        // `TID call(args) = -1 E... (INJECTED)`, or for a call another
        // thread's line interrupted `TID <... call resumed>) = -1 ...`.
        let mut words = line.split_whitespace().skip(1);
        let call = match words.next() {
            Some("<...") => words.next().unwrap_or("?"),
            Some(w) => w.split('(').next().unwrap_or("?"),
            None => "?",
        };
        *inj.by_syscall.entry(call.to_string()).or_default() += 1;
        inj.lines.push(line.to_string());
    }
    inj
}

/// The listening sockets of `env` (its SMTP and POP3 ports), held by the test
/// like systemd holds them: each daemon started on them inherits them through
/// `LISTEN_FDS`, and connections made while no daemon runs wait in the backlog.
pub struct HeldSockets {
    smtp: TcpListener,
    pop3: TcpListener,
}

impl HeldSockets {
    pub fn bind(env: &TestEnv) -> HeldSockets {
        HeldSockets {
            smtp: TcpListener::bind(("127.0.0.1", env.smtp_port)).expect("bind smtp"),
            pop3: TcpListener::bind(("127.0.0.1", env.pop3_port)).expect("bind pop3"),
        }
    }
}

/// Called with (pid, exit status) when an `Instance` exits.
pub type OnExit = Box<dyn FnOnce(u32, ExitStatus) + Send>;

/// One `maildird serve` on held sockets. Its exit is reported on its own
/// channel and, when given, to `on_exit`.
pub struct Instance {
    pid: u32,
    exited: mpsc::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    log: Arc<Mutex<String>>,
    notify: UnixDatagram,
    _notify_path: PathBuf,
}

impl Instance {
    /// Starts `maildird serve -c CFG` with the held sockets as fds 3 and 4
    /// (`LISTEN_FDNAMES=smtp:pop3`) and waits for `READY=1`.
    pub fn start(env: &TestEnv, sockets: &HeldSockets, on_exit: Option<OnExit>) -> Instance {
        let sh = require_tool("sh", "dash");
        let notify_path = env.path().join(format!("notify-{}.sock", unique()));
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        // Writable by the unprivileged daemon, like systemd's notify socket.
        chmod(&notify_path, 0o777);
        let fd = |l: &TcpListener| Stdio::from(OwnedFd::from(l.try_clone().expect("dup socket")));
        // The shell moves stdin/stdout (the sockets) to fds 3 and 4, then execs
        // the daemon in its own pid, which LISTEN_PID must name.
        let mut child = Command::new(sh)
            .arg("-c")
            .arg(
                "exec 3<&0 4<&1 0</dev/null 1>/dev/null; \
                 LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"",
            )
            .arg("sh")
            .arg(bin())
            .args(["serve", "-c"])
            .arg(env.config())
            .env("LISTEN_FDS", "2")
            .env("LISTEN_FDNAMES", "smtp:pop3")
            .env("NOTIFY_SOCKET", &notify_path)
            // The panic hook symbolizes a backtrace only when asked to; that
            // takes long enough in a debug build to blur which fault caused it.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .current_dir(env.path())
            .stdin(fd(&sockets.smtp))
            .stdout(fd(&sockets.pop3))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn maildird serve");
        let pid = child.id();
        let err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let l2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = l2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let st = child.wait().expect("wait for maildird");
            // Everything it wrote is in the log before anyone hears of the exit.
            let _ = reader.join();
            let _ = tx.send(st);
            if let Some(f) = on_exit {
                f(pid, st);
            }
        });
        let mut inst = Instance {
            pid,
            exited,
            status: None,
            log,
            notify,
            _notify_path: notify_path,
        };
        inst.wait_ready();
        inst
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        self.notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        loop {
            if let Ok(n) = self.notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    return;
                }
            }
            if let Some(st) = self.wait_exit(Duration::ZERO) {
                panic!("maildird exited ({st}) before READY=1\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "maildird sent no READY=1 within {WAIT:?}\n{}",
                self.log()
            );
        }
    }

    /// The exit status, waiting at most `limit` for it.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.exited.recv_timeout(limit).ok();
        }
        self.status
    }

    /// SIGTERM and wait (bounded; SIGKILL and fail after `WAIT`).
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(st) = self.wait_exit(Duration::ZERO) {
            return st;
        }
        signal(self.pid, "TERM");
        if let Some(st) = self.wait_exit(WAIT) {
            return st;
        }
        signal(self.pid, "KILL");
        let _ = self.wait_exit(Duration::from_secs(5));
        panic!(
            "maildird {} did not exit within {WAIT:?} after SIGTERM\n{}",
            self.pid,
            self.log()
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.wait_exit(Duration::ZERO).is_some() {
            return;
        }
        if std::thread::panicking() {
            signal(self.pid, "KILL");
            let _ = self.wait_exit(Duration::from_secs(5));
            eprintln!("--- maildird {} stderr ---\n{}", self.pid, self.log());
        } else {
            let _ = self.stop();
        }
    }
}

/// True when `st` is death by SIGABRT (what `abort()` after a panic gives).
pub fn aborted(st: &ExitStatus) -> bool {
    st.signal() == Some(nix::sys::signal::Signal::SIGABRT as i32)
}

/// The writer pid in a Maildir unique name `SECS.M..P<pid>Q..R...host`.
pub fn writer_pid(name: &str) -> Option<u32> {
    let p = name.split_once('P')?.1;
    p.split_once('Q')?.0.parse().ok()
}
