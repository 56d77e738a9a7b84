//! The per-mailbox POP3 lock (RFC 1939 §8: one session per maildrop), shared by
//! every maildird process and host on the store: an open-file-description
//! lock (`fcntl(F_OFD_SETLK)`, a whole-file write lock) on
//! `{maildir}/maildird-pop3.lock`. The kernel knows who holds it: a session's
//! lock dies with its descriptor (a crash included), so there is no stale
//! holder to judge, and NFS (v4, or v3 with lockd) and FUSE filesystems such
//! as GlusterFS carry these locks between hosts.
//!
//! The file is created once, with the Maildir or at the first login, and is
//! never removed: taking and releasing the lock needs no disk space, so a
//! user can still log in to a full disk and delete mail.
//!
//! The Maildir's owner can replace the file with anything: it is opened
//! through the Maildir's directory handle with `O_NOFOLLOW|O_NONBLOCK` (a FIFO
//! cannot park a thread) and must be a regular file.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

use super::{Maildir, fsat};

pub const LOCK_NAME: &str = "maildird-pop3.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live session holds the mailbox.
    #[error("mailbox is locked by another POP3 session")]
    InUse,
    /// Something other than a lock file sits at the lock's name.
    #[error(transparent)]
    Refused(io::Error),
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> LockError {
        if fsat::is_refused(&e) {
            LockError::Refused(e)
        } else {
            LockError::Io(e)
        }
    }
}

/// A held mailbox lock. Dropping it closes the descriptor, which releases it.
#[derive(Debug)]
pub struct MailboxLock {
    md: Maildir,
    file: File,
}

/// A whole-file write lock request for `F_OFD_SETLK`.
fn write_lock() -> nix::libc::flock {
    nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Create the lock file if it is missing (a new Maildir gets it at once, so
/// later logins need no disk space). Returns whether it was created.
pub fn create_lock_file(md: &Maildir) -> io::Result<bool> {
    match fsat::create_excl(md.root(), LOCK_NAME, 0o600) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

impl MailboxLock {
    /// Take the lock of `md` without waiting: `InUse` while another session,
    /// of this process or any other on any host, holds it.
    pub fn acquire(md: &Maildir) -> Result<MailboxLock, LockError> {
        let file = match fsat::open_regular_rw(md.root(), LOCK_NAME) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_lock_file(md)?;
                fsat::open_regular_rw(md.root(), LOCK_NAME)?
            }
            Err(e) => return Err(e.into()),
        };
        match fcntl(&file, FcntlArg::F_OFD_SETLK(&write_lock())) {
            Ok(_) => Ok(MailboxLock {
                md: md.clone(),
                file,
            }),
            Err(Errno::EAGAIN | Errno::EACCES) => Err(LockError::InUse),
            Err(e) => Err(LockError::Io(e.into())),
        }
    }

    /// Check that the lock is still ours: the name still leads to the file we
    /// lock (nobody replaced or removed it) and the lock is still granted
    /// (re-asserting a held OFD lock is a no-op; on a network filesystem a
    /// lock lost with a server's lease fails here). `Lost` is final.
    pub fn verify(&self) -> Result<(), LockCheck> {
        let at = fsat::identity_at(self.md.root(), LOCK_NAME);
        let ours = fsat::identity(&self.file).map_err(LockCheck::Io)?;
        match at {
            Ok(id) if id == ours => {}
            Ok(_) => return Err(LockCheck::Lost("the lock file was replaced")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(LockCheck::Lost("the lock file was removed"));
            }
            Err(e) => return Err(LockCheck::Io(e)),
        }
        match fcntl(&self.file, FcntlArg::F_OFD_SETLK(&write_lock())) {
            Ok(_) => Ok(()),
            Err(Errno::EAGAIN | Errno::EACCES) => {
                Err(LockCheck::Lost("another session holds the lock"))
            }
            Err(e) => Err(LockCheck::Io(e.into())),
        }
    }

    /// Where the lock is, for logs and tests.
    pub fn path(&self) -> PathBuf {
        self.md.path().join(LOCK_NAME)
    }
}

/// Why `verify` failed.
#[derive(Debug)]
pub enum LockCheck {
    /// The lock is no longer ours: the session must not commit.
    Lost(&'static str),
    /// Could not tell (an I/O error): try again later.
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn md() -> (tempfile::TempDir, Maildir) {
        let t = tempfile::tempdir().unwrap();
        let m = Maildir::ensure(&t.path().join("md")).unwrap();
        (t, m)
    }

    #[test]
    fn second_acquire_is_in_use_and_drop_releases() {
        let (_t, md) = md();
        let a = MailboxLock::acquire(&md).unwrap();
        // Another open file description, in this very process: in use.
        assert!(matches!(MailboxLock::acquire(&md), Err(LockError::InUse)));
        a.verify().unwrap();
        let path = a.path();
        drop(a);
        // The file stays (no disk space needed next time); the lock is free.
        assert!(path.is_file());
        let b = MailboxLock::acquire(&md).unwrap();
        assert!(matches!(MailboxLock::acquire(&md), Err(LockError::InUse)));
        drop(b);
    }

    #[test]
    fn another_process_holding_the_lock_is_in_use_until_it_dies() {
        let (_t, md) = md();
        let path = md.path().join(LOCK_NAME);
        create_lock_file(&md).unwrap();
        // flock(1) takes a lock of its own kind; use python's fcntl OFD lock
        // equivalent: F_SETLK from another process conflicts with OFD locks.
        let mut child = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import fcntl,sys\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f,fcntl.LOCK_EX)\nprint('locked',flush=True)\nsys.stdin.read()",
            )
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "locked\n");
        assert!(matches!(MailboxLock::acquire(&md), Err(LockError::InUse)));
        drop(child.stdin.take());
        child.wait().unwrap();
        // Its holder is gone: the kernel released the lock.
        let l = MailboxLock::acquire(&md).unwrap();
        drop(l);
    }

    #[test]
    fn old_style_lock_files_do_not_block() {
        let (_t, md) = md();
        // A lock file left by an older maildird (or a crash) names a holder.
        fs::write(md.path().join(LOCK_NAME), "h1 1 1 0\n").unwrap();
        let l = MailboxLock::acquire(&md).unwrap();
        l.verify().unwrap();
    }

    #[test]
    fn a_replaced_or_removed_lock_file_is_a_lost_lock() {
        let (_t, md) = md();
        let l = MailboxLock::acquire(&md).unwrap();
        fs::remove_file(l.path()).unwrap();
        assert!(matches!(l.verify(), Err(LockCheck::Lost(_))));
        fs::write(l.path(), b"").unwrap();
        assert!(matches!(l.verify(), Err(LockCheck::Lost(_))));
    }

    #[test]
    fn a_lock_that_is_not_a_regular_file_is_refused_without_blocking() {
        let (t, md) = md();
        let path = md.path().join(LOCK_NAME);
        // A new Maildir comes with its lock file; its owner replaces it.
        assert!(path.is_file());
        fs::remove_file(&path).unwrap();
        // A FIFO: opening it must not wait for a peer.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = MailboxLock::acquire(&md).unwrap_err();
        assert!(matches!(e, LockError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("FIFO"), "{e}");
        fs::remove_file(&path).unwrap();
        // A symlink to /dev/zero, and one to another file.
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let e = MailboxLock::acquire(&md).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        fs::remove_file(&path).unwrap();
        let other = t.path().join("other.lock");
        fs::write(&other, "x\n").unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        assert!(matches!(
            MailboxLock::acquire(&md),
            Err(LockError::Refused(_))
        ));
        assert_eq!(fs::read_to_string(&other).unwrap(), "x\n");
    }
}
