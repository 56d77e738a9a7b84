//! A panic must not leave a half-alive daemon. A real fault makes tokio
//! panic: strace fails every write(2) to the runtime's eventfd (how a thread
//! wakes the I/O driver) with EIO, and tokio panics "failed to wake I/O
//! driver" in whichever thread wakes it. The daemon must log it and abort
//! (SIGABRT), not linger with a dead thread ignoring SIGTERM; a new process on
//! the same held sockets (systemd's restart) then serves a client that
//! connected while no daemon ran.

use std::path::Path;
use std::process::Command;

use crate::common::*;
use crate::tools::*;

/// One delivery with python3 smtplib: the reply to the end of DATA, or
/// `ERROR ...` when the session broke.
fn try_deliver(port: u16, subject: &str) -> String {
    let py = require_tool("python3", "python3");
    let o = run(
        Command::new(py).arg("-c").arg(
            r#"
import smtplib, sys
port, subject = int(sys.argv[1]), sys.argv[2]
msg = f"Subject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nbody of {subject}\r\n".encode()
try:
    s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.test', timeout=10)
    s.ehlo()
    s.mail('panic@client.test')
    s.rcpt('alice@example.org')
    code, text = s.data(msg)
    print(code, text.decode())
    try:
        s.quit()
    except Exception:
        pass
except Exception as e:
    print('ERROR', repr(e))
"#,
        )
        .arg(port.to_string())
        .arg(subject),
        b"",
    );
    assert_ok(&o, "python3 smtplib");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// How many files in alice's new/ carry `Subject: {subject}`.
fn copies(env: &TestEnv, subject: &str) -> usize {
    let want = format!("Subject: {subject}\n");
    read_new(env, "alice")
        .iter()
        .filter(|(_, b)| String::from_utf8_lossy(b).contains(&want))
        .count()
}

#[test]
fn a_panic_under_an_injected_fault_aborts_the_daemon_and_a_restart_serves_on() {
    let env = TestEnv::new();
    add_user(&env, "alice", PW);
    let sockets = HeldSockets::bind(&env);
    let mut daemon = Instance::start(&env, &sockets, None);
    let strace = Strace::attach(
        daemon.pid(),
        "write",
        &["write:error=EIO"],
        &[Path::new("anon_inode:[eventfd]")],
        &env.path().join("strace-eventfd.txt"),
    );
    // Deliveries hand file work to the blocking pool, whose completion wakes
    // the driver; bounded tries.
    let mut replies = Vec::new();
    let mut status = None;
    for i in 0..10 {
        let subject = format!("panic-{i}");
        let reply = try_deliver(env.smtp_port, &subject);
        replies.push((subject, reply.clone()));
        let panicked = daemon.log().contains("panicked at") || daemon.log().contains("panic:");
        if reply.starts_with("ERROR") || panicked {
            // The client lost its session, or a thread panicked: the process
            // must be gone, not half-alive.
            status = daemon.wait_exit(WAIT);
            assert!(
                status.is_some(),
                "maildird {} is still running {WAIT:?} after a thread panicked or a \
                 session broke (the client got: {reply}): a half-alive daemon\n{}",
                daemon.pid(),
                daemon.log()
            );
            break;
        }
    }
    let injected = strace.detach();
    let log = daemon.log();
    let Some(st) = status else {
        panic!(
            "no panic within 10 deliveries ({} eventfd writes failed): {replies:?}\n{log}",
            injected.total()
        );
    };
    assert!(
        aborted(&st),
        "maildird exited with {st}, not SIGABRT\n{log}"
    );
    assert!(
        log.contains("panic: aborting") && log.contains("failed to wake I/O driver"),
        "the panic is not in the log\n{log}"
    );
    assert!(injected.total() >= 1, "{injected:?}");
    // What each client got is what is on disk: 250 exactly once; a broken
    // session (the abort) at most once.
    for (subject, reply) in &replies {
        let n = copies(&env, subject);
        if reply.starts_with("250") {
            assert_eq!(n, 1, "{subject} got {reply:?}");
        } else {
            assert!(n <= 1, "{subject} got {reply:?} and is there {n} times");
        }
    }
    eprintln!(
        "eventfd writes failed: {}; replies: {replies:?}; exit: {st}",
        injected.total()
    );

    // No daemon runs now, yet the held socket takes the connection (backlog);
    // the next process (systemd's restart) serves it.
    let mut c = Line::connect(env.smtp_port);
    let mut daemon = Instance::start(&env, &sockets, None);
    assert!(c.reply().starts_with("220"), "greeting after the restart");
    assert!(c.cmd("EHLO client.test\r\n").starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<after@client.test>\r\n")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<alice@example.org>\r\n").starts_with("250"));
    assert!(c.cmd("DATA\r\n").starts_with("354"));
    let r = c.cmd("Subject: after-restart\r\n\r\nqueued while no daemon ran\r\n.\r\n");
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(copies(&env, "after-restart"), 1);
    let st = daemon.stop();
    assert!(st.success(), "{st}\n{}", daemon.log());
}
