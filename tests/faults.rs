//! Fault injection on the running daemon (issue 13): strace `--inject` from
//! Debian attached to `maildird serve` makes system calls fail (EIO, ENOSPC),
//! and a tmpfs of the test's own fills up for real. Each test says what the
//! client got and checks what is on disk with a reader that is not ours.
//!
//! libfiu's `fiu-run` was tried and is not used: its LD_PRELOAD wrappers see
//! only calls through libc (std's write/fsync, mio's eventfd), not the raw
//! `openat`/`linkat`/`unlinkat`/`renameat` system calls rustix makes on the
//! Maildir handles, and `fiu-ctrl` cannot reach a daemon that dropped
//! privileges (its control FIFOs are root's, mode 0600).
//!
//! The tests run as root (mount, ptrace of a daemon that switched user).

mod common;
#[path = "faults/findings.rs"]
mod findings;
#[path = "faults/panic.rs"]
mod panic;
#[path = "faults/pop3.rs"]
mod pop3;
#[path = "faults/random.rs"]
mod random;
#[path = "faults/tools.rs"]
mod tools;
