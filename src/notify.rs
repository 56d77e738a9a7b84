//! sd_notify(3): READY / STATUS / RELOADING / STOPPING / WATCHDOG. A no-op
//! without `$NOTIFY_SOCKET`; failures are logged, never fatal.
//!
//! Sent without blocking: a datagram socket nobody reads holds only a few
//! messages (`net.unix.max_dgram_qlen`), and a blocking send to it stalled the
//! loop that also waits for SIGTERM. A STATUS nobody reads is dropped; the
//! state changes (READY, RELOADING, STOPPING, WATCHDOG) are tried again for
//! up to a second.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The socket systemd named: a path, or `@name` for the abstract namespace.
fn address(name: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match name.as_bytes().strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(name),
    }
}

/// Tries for a state change when the queue is full, 50 ms apart.
const STATE_TRIES: usize = 20;

fn send_with(lines: &str, tries: usize) {
    let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = address(&name).and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        let mut left = tries;
        loop {
            match sock.send_to_addr(lines.as_bytes(), &addr) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && left > 1 => {
                    left -= 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    });
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// A state change: retried while the queue is full.
fn send(lines: &str) {
    send_with(lines, STATE_TRIES);
}

/// A STATUS= value on one line (a newline would start another assignment).
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
}

pub fn status(status: &str) {
    send_with(&format!("STATUS={}\n", one_line(status)), 1);
}

pub fn reloading() {
    send("RELOADING=1\n");
}

pub fn stopping() {
    send("STOPPING=1\n");
}

pub fn watchdog() {
    send("WATCHDOG=1\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }

    #[test]
    fn a_socket_nobody_reads_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _server = UnixDatagram::bind(&path).unwrap();
        let addr = address(path.as_os_str()).unwrap();
        let sock = UnixDatagram::unbound().unwrap();
        sock.set_nonblocking(true).unwrap();
        // Far more than the queue holds: each send returns at once.
        let mut refused = 0;
        for _ in 0..200 {
            if sock.send_to_addr(b"STATUS=x\n", &addr).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 0, "the queue never filled");
    }
}
