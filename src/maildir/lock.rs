//! The per-mailbox POP3 lock (RFC 1939 §8: one session per maildrop), shared by
//! every maildird process and host on the store: `{maildir}/maildird-pop3.lock`
//! created with O_EXCL (atomic on local filesystems and NFSv3+), holding
//! `hostname pid timestamp nonce`. No flock: it does not work across NFS clients.
//!
//! The Maildir's owner can replace the lock with anything: it is created,
//! opened and removed through the Maildir's directory handle, opened with
//! `O_NOFOLLOW|O_NONBLOCK` (a FIFO cannot park a thread), must be a regular
//! file, and is read up to `MAX_LOCK_BYTES` (a link to `/dev/zero` cannot make
//! a login read without bound).

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::unistd::Pid;

use super::{Maildir, fsat};

pub const LOCK_NAME: &str = "maildird-pop3.lock";

/// A lock file says `host pid secs nonce`: far less than this.
const MAX_LOCK_BYTES: u64 = 512;

/// Attempts to create the lock after breaking a stale one (others may race us).
const ATTEMPTS: usize = 3;

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

/// A held mailbox lock. Dropping it removes the lock file if it is still ours.
#[derive(Debug)]
pub struct MailboxLock {
    md: Maildir,
    /// What we wrote: identifies the file as ours (a broken-and-retaken lock is not).
    content: String,
}

/// What a lock file says about its holder.
struct Holder {
    host: String,
    pid: i32,
}

fn parse_holder(text: &str) -> Option<Holder> {
    let mut it = text.split_ascii_whitespace();
    let host = it.next()?.to_string();
    let pid = it.next()?.parse().ok()?;
    Some(Holder { host, pid })
}

/// Does a process with this pid exist on this host? `getpgid` fails with ESRCH
/// only for a missing process, and (unlike kill(2)) needs no permission on it.
fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    !matches!(
        nix::unistd::getpgid(Some(Pid::from_raw(pid))),
        Err(Errno::ESRCH)
    )
}

impl MailboxLock {
    /// Take the lock of `md` for this process on `host`. A lock left by a dead
    /// process of this host is broken; a lock of another host is broken only once
    /// it has not been refreshed for `stale_after`.
    pub fn acquire(
        md: &Maildir,
        host: &str,
        stale_after: Duration,
    ) -> Result<MailboxLock, LockError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let content = format!(
            "{host} {} {now} {:016x}\n",
            std::process::id(),
            rand::random::<u64>()
        );
        for _ in 0..ATTEMPTS {
            match fsat::create_excl(md.root(), LOCK_NAME, 0o600) {
                Ok(mut f) => {
                    if let Err(e) = f.write_all(content.as_bytes()).and_then(|()| f.sync_all()) {
                        // Half-written: ours to remove.
                        let _ = fsat::unlink_at(md.root(), LOCK_NAME);
                        return Err(e.into());
                    }
                    return Ok(MailboxLock {
                        md: md.clone(),
                        content,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            let (text, age) = match read_with_age(md, LOCK_NAME) {
                Ok(v) => v,
                // Released between our create and read: try again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let stale = match parse_holder(&text) {
                Some(h) if h.host == host => !process_exists(h.pid),
                // Another host, or a file its creator is still writing.
                _ => age > stale_after,
            };
            if !stale {
                return Err(LockError::InUse);
            }
            break_lock(md, &text)?;
        }
        Err(LockError::InUse)
    }

    /// Touch the lock so other hosts do not consider it stale during a long
    /// session. Fails if the lock is no longer ours.
    pub fn refresh(&self) -> io::Result<()> {
        let mut f = fsat::open_regular_rw(self.md.root(), LOCK_NAME)?;
        let text = fsat::read_bounded(&mut f, MAX_LOCK_BYTES)?;
        if text != self.content.as_bytes() {
            return Err(io::Error::other("mailbox lock was taken over"));
        }
        f.set_modified(SystemTime::now())
    }

    /// Where the lock is, for logs and tests.
    pub fn path(&self) -> PathBuf {
        self.md.path().join(LOCK_NAME)
    }
}

impl Drop for MailboxLock {
    fn drop(&mut self) {
        let ours = fsat::open_regular(self.md.root(), LOCK_NAME)
            .and_then(|(mut f, _)| fsat::read_bounded(&mut f, MAX_LOCK_BYTES))
            .is_ok_and(|t| t == self.content.as_bytes());
        if ours {
            let _ = fsat::unlink_at(self.md.root(), LOCK_NAME);
        }
    }
}

/// The text (at most `MAX_LOCK_BYTES`) and age of the regular file `name` in
/// the Maildir directory.
fn read_with_age(md: &Maildir, name: &str) -> io::Result<(String, Duration)> {
    let (mut f, _) = fsat::open_regular(md.root(), name)?;
    let mtime = f.metadata()?.modified()?;
    // A garbled (non-UTF-8) file is judged by its age like a foreign one.
    let raw = fsat::read_bounded(&mut f, MAX_LOCK_BYTES)?;
    let age = SystemTime::now().duration_since(mtime).unwrap_or_default();
    Ok((String::from_utf8_lossy(&raw).into_owned(), age))
}

/// Remove a stale lock without removing a fresh one another breaker made in the
/// meantime: move it aside under a unique name, and check that what was moved
/// is the file judged stale; if not, put it back.
fn break_lock(md: &Maildir, stale: &str) -> io::Result<()> {
    let aside = format!(
        "{LOCK_NAME}.stale.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    match fsat::rename_at(md.root(), LOCK_NAME, md.root(), &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    let moved = read_with_age(md, &aside).map(|(t, _)| t);
    if moved.as_deref().is_ok_and(|m| m != stale) {
        // We took someone's fresh lock: restore it unless a newer one exists.
        let _ = fsat::link_at(md.root(), &aside, md.root(), LOCK_NAME);
    }
    let _ = fsat::unlink_at(md.root(), &aside);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(1800);

    use std::fs;

    fn md() -> (tempfile::TempDir, Maildir) {
        let t = tempfile::tempdir().unwrap();
        let m = Maildir::ensure(&t.path().join("md")).unwrap();
        (t, m)
    }

    fn dead_pid() -> i32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        pid
    }

    #[test]
    fn second_acquire_is_in_use_and_drop_releases() {
        let (_t, md) = md();
        let a = MailboxLock::acquire(&md, "h1", STALE).unwrap();
        let text = fs::read_to_string(a.path()).unwrap();
        let f: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(f[0], "h1");
        assert_eq!(f[1], std::process::id().to_string());
        assert!(f[2].parse::<u64>().unwrap() > 1_600_000_000);
        assert!(matches!(
            MailboxLock::acquire(&md, "h1", STALE),
            Err(LockError::InUse)
        ));
        // Another host sees a fresh lock: in use too.
        assert!(matches!(
            MailboxLock::acquire(&md, "h2", STALE),
            Err(LockError::InUse)
        ));
        let path = a.path();
        drop(a);
        assert!(!path.exists());
        let _b = MailboxLock::acquire(&md, "h1", STALE).unwrap();
    }

    #[test]
    fn lock_of_a_dead_process_on_this_host_is_broken() {
        let (_t, md) = md();
        let path = md.path().join(LOCK_NAME);
        fs::write(&path, format!("h1 {} 1 0\n", dead_pid())).unwrap();
        let l = MailboxLock::acquire(&md, "h1", STALE).unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .starts_with(&format!("h1 {} ", std::process::id()))
        );
        drop(l);
        // A live pid (our parent) on this host is respected whatever its age.
        fs::write(
            &path,
            format!("h1 {} 1 0\n", std::os::unix::process::parent_id()),
        )
        .unwrap();
        assert!(matches!(
            MailboxLock::acquire(&md, "h1", Duration::ZERO),
            Err(LockError::InUse)
        ));
    }

    #[test]
    fn foreign_lock_is_broken_only_when_stale() {
        let (_t, md) = md();
        let path = md.path().join(LOCK_NAME);
        fs::write(&path, "other 1 1 0\n").unwrap();
        assert!(matches!(
            MailboxLock::acquire(&md, "h1", STALE),
            Err(LockError::InUse)
        ));
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let l = MailboxLock::acquire(&md, "h1", STALE).unwrap();
        // No leftovers from breaking it (tmp, new, cur and the lock).
        let names: Vec<_> = fs::read_dir(md.path()).unwrap().collect();
        assert_eq!(names.len(), 4);
        drop(l);
    }

    #[test]
    fn refresh_touches_and_drop_spares_a_lock_that_is_not_ours() {
        let (_t, md) = md();
        let l = MailboxLock::acquire(&md, "h1", STALE).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(l.path())
            .unwrap()
            .set_modified(old)
            .unwrap();
        l.refresh().unwrap();
        let m = fs::metadata(l.path()).unwrap().modified().unwrap();
        assert!(m > old + Duration::from_secs(3000));
        // Broken and retaken by another host: refresh fails, drop leaves it.
        fs::write(l.path(), "other 1 1 0\n").unwrap();
        assert!(l.refresh().is_err());
        let path = l.path();
        drop(l);
        assert_eq!(fs::read_to_string(&path).unwrap(), "other 1 1 0\n");
    }

    #[test]
    fn a_lock_that_is_not_a_regular_file_is_refused_without_blocking() {
        let (t, md) = md();
        let path = md.path().join(LOCK_NAME);
        // A FIFO: opening it for reading must not wait for a writer.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = MailboxLock::acquire(&md, "h1", STALE).unwrap_err();
        assert!(matches!(e, LockError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("FIFO"), "{e}");
        fs::remove_file(&path).unwrap();
        // A symlink to /dev/zero, and one to another mailbox's lock.
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let e = MailboxLock::acquire(&md, "h1", STALE).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        fs::remove_file(&path).unwrap();
        let other = t.path().join("other.lock");
        fs::write(&other, "h1 1 1 0\n").unwrap();
        std::os::unix::fs::symlink(&other, &path).unwrap();
        assert!(matches!(
            MailboxLock::acquire(&md, "h1", Duration::ZERO),
            Err(LockError::Refused(_))
        ));
        assert_eq!(fs::read_to_string(&other).unwrap(), "h1 1 1 0\n");
        fs::remove_file(&path).unwrap();
        // A huge regular file is read only up to the bound (and is stale garbage).
        fs::write(&path, vec![b'x'; 1 << 20]).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        let l = MailboxLock::acquire(&md, "h1", STALE).unwrap();
        assert!(fs::metadata(&path).unwrap().len() < 100);
        drop(l);
    }
}
