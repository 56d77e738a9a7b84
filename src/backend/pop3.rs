//! `pop3::Store` over auth + maildir: login checks the password and the `pop3`
//! role, then (off the async threads) creates the Maildir if needed, takes the
//! POP3 lock and snapshots `new/` + `cur/`. Messages are resolved by base name
//! at every access, so mutt may move or flag them meanwhile (maildird(8), MAILDIR and POP3).

use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use super::Backend;
use crate::auth::{Role, validate_name};
use crate::maildir::lock::{LockCheck, LockError, MailboxLock};
use crate::maildir::scan::{self, Entry};
use crate::maildir::{Maildir, Sub, fsat};
use crate::pop3::store::{Mailbox, MessageInfo, Store, StoreError};

/// A locked Maildir with its login snapshot.
#[derive(Debug)]
pub struct MaildirMailbox {
    md: Maildir,
    /// Shared only with the watcher task, which holds a `Weak`.
    lock: Arc<HeldLock>,
    entries: Vec<Entry>,
    messages: Vec<MessageInfo>,
    /// Largest file RETR/TOP will read (see `max_read`).
    max_read: u64,
}

/// The session's lock, and whether the watcher found it lost.
#[derive(Debug)]
struct HeldLock {
    lock: MailboxLock,
    lost: AtomicBool,
}

/// RETR and TOP hold a message in memory while sending it, so a file larger
/// than this is refused (logged): four times `max_message_size`, at least
/// 64 MiB. A Maildir's owner can make a sparse file of a terabyte.
pub fn max_read(max_message_size: u64) -> u64 {
    max_message_size.saturating_mul(4).max(64 << 20)
}

impl Store for Backend {
    type Mailbox = MaildirMailbox;

    async fn login(
        &self,
        user: &str,
        password: &[u8],
        client: Option<IpAddr>,
    ) -> Result<MaildirMailbox, StoreError> {
        // Unknown user, wrong password and missing role share one answer.
        let entry = self
            .authenticate(user, password, client)
            .await
            .ok_or(StoreError::Auth)?;
        if !entry.roles.contains(&Role::Pop3) {
            info!(user = ?entry.name, "pop3 login refused: no pop3 role");
            return Err(StoreError::Auth);
        }
        if let Err(e) = validate_name(&entry.name) {
            warn!(user = ?entry.name, error = %e, "user name cannot be a mailbox");
            return Err(StoreError::Auth);
        }
        MaildirMailbox::open(
            self.config.mail_root.join(&entry.name),
            self.config.pop3.lock_stale_after,
            max_read(self.config.limits.max_message_size),
        )
        .await
    }
}

impl MaildirMailbox {
    /// Create the Maildir at `path` if missing, lock it and take the snapshot;
    /// keep the lock fresh while the mailbox lives.
    pub async fn open(
        path: PathBuf,
        check_every: Duration,
        max_read: u64,
    ) -> Result<MaildirMailbox, StoreError> {
        let (md, lock, entries) = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|_| StoreError::Temporary)??;
        let lock = Arc::new(HeldLock {
            lock,
            lost: AtomicBool::new(false),
        });
        spawn_watcher(Arc::downgrade(&lock), check_every);
        let messages = entries
            .iter()
            .map(|e| MessageInfo {
                uidl: scan::uidl(&e.base),
                size: e.size,
            })
            .collect();
        Ok(MaildirMailbox {
            md,
            lock,
            entries,
            messages,
            max_read,
        })
    }
}

fn open_blocking(path: &std::path::Path) -> Result<(Maildir, MailboxLock, Vec<Entry>), StoreError> {
    // A user without mail yet has no Maildir: create it private (0700).
    let md = Maildir::ensure(path).map_err(|e| {
        if fsat::is_refused(&e) {
            warn!(error = %e, "refusing maildir: not following what its owner planted");
        } else {
            warn!(error = %e, path = %path.display(), "cannot open maildir");
        }
        StoreError::Temporary
    })?;
    let lock = MailboxLock::acquire(&md).map_err(|e| match e {
        LockError::InUse => StoreError::InUse,
        LockError::Refused(e) => {
            warn!(error = %e, path = %md.path().display(), "refusing mailbox lock");
            StoreError::Temporary
        }
        LockError::Io(e) => {
            warn!(error = %e, path = %md.path().display(), "cannot lock maildir");
            StoreError::Temporary
        }
    })?;
    let entries = scan::snapshot(&md).map_err(|e| {
        warn!(error = %e, path = %md.path().display(), "cannot read maildir");
        StoreError::Temporary
    })?;
    Ok((md, lock, entries))
}

/// Check the lock every third of `pop3.lock_stale_after` (see
/// `MailboxLock::verify`). An I/O error is retried at the next tick; a lost
/// lock is final: the session may not commit its deletions. Ends when the
/// mailbox is dropped.
fn spawn_watcher(lock: Weak<HeldLock>, stale_after: Duration) {
    let every = (stale_after / 3).max(Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(held) = lock.upgrade() else { return };
            let path = held.lock.path();
            let r = tokio::task::spawn_blocking(move || {
                let r = held.lock.verify();
                if matches!(r, Err(LockCheck::Lost(_))) {
                    held.lost.store(true, Ordering::SeqCst);
                }
                r
            })
            .await;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(LockCheck::Lost(why))) => {
                    warn!(path = %path.display(), why, "mailbox lock lost: this session will not delete anything");
                    return;
                }
                Ok(Err(LockCheck::Io(e))) => {
                    warn!(error = %e, path = %path.display(), "cannot check the mailbox lock; trying again");
                }
                Err(e) => warn!(error = %e, "mailbox lock check failed; trying again"),
            }
        }
    });
}

/// Messages up to this size are read on the session's own thread: a read of a
/// few pages from the page cache costs microseconds, less than handing the
/// work to the blocking pool and back (measured at 10 KiB, 10 sessions, 16
/// RETRs in flight: 22,400 -> 32,000-34,700 msgs/s). Larger
/// ones go to the blocking pool so a slow disk cannot stall other sessions long.
/// The size is the open file's (`fstat`), never the `W=` of a name the
/// mailbox owner controls.
const INLINE_READ: u64 = 128 * 1024;

/// An opened message: the file, its size, and its new place when it moved.
type Opened = (File, u64, Option<(Sub, String)>);

/// Open a message at its snapshot place, else wherever its base name is now.
fn open_message(md: &Maildir, entry: &Entry) -> Result<Opened, StoreError> {
    let mut at = (entry.sub, entry.name.clone());
    let mut moved = false;
    for _ in 0..3 {
        match scan::open_message(md, at.0, &at.1) {
            Ok((f, len)) => return Ok((f, len, moved.then_some(at))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => match scan::find(md, &entry.base) {
                Some(p) => {
                    at = p;
                    moved = true;
                }
                None => return Err(StoreError::Gone),
            },
            Err(e) if fsat::is_refused(&e) => {
                warn!(error = %e, path = %md.path().display(), "refusing to serve a message that is not a regular file");
                return Err(StoreError::Gone);
            }
            Err(e) => {
                warn!(error = %e, path = %entry.path(md).display(), "cannot open message");
                return Err(StoreError::Temporary);
            }
        }
    }
    Err(StoreError::Gone)
}

/// Read an opened message: exactly the `len` bytes `fstat` reported at open
/// (a file the owner keeps appending to cannot make us read without end).
fn read_opened(f: File, len: u64) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    if buf
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .is_err()
    {
        warn!(size = len, "no memory to read a message");
        return Err(StoreError::Temporary);
    }
    f.take(len).read_to_end(&mut buf).map_err(|e| {
        warn!(error = %e, "cannot read message");
        StoreError::Temporary
    })?;
    Ok(buf)
}

impl Mailbox for MaildirMailbox {
    fn messages(&self) -> &[MessageInfo] {
        &self.messages
    }

    async fn read(&mut self, index: usize) -> Result<Vec<u8>, StoreError> {
        let entry = self.entries.get(index).ok_or(StoreError::Gone)?;
        let (file, len, moved) = match scan::open_message(&self.md, entry.sub, &entry.name) {
            Ok((f, len)) => (f, len, None),
            // Moved by mutt (or worse): finding it reads directories, which is
            // work for the blocking pool, not the session's thread.
            Err(_) => {
                let (md, entry) = (self.md.clone(), entry.clone());
                tokio::task::spawn_blocking(move || open_message(&md, &entry))
                    .await
                    .map_err(|_| StoreError::Temporary)??
            }
        };
        if let (Some((sub, name)), Some(e)) = (moved, self.entries.get_mut(index)) {
            e.sub = sub;
            e.name = name;
        }
        if len > self.max_read {
            warn!(
                size = len,
                limit = self.max_read,
                path = %self.md.path().display(),
                "refusing to read a message larger than the limit"
            );
            return Err(StoreError::Temporary);
        }
        if len <= INLINE_READ {
            read_opened(file, len)
        } else {
            tokio::task::spawn_blocking(move || read_opened(file, len))
                .await
                .map_err(|_| StoreError::Temporary)?
        }
    }

    async fn mark_seen(&mut self, index: usize) {
        let Some(base) = self.entries.get(index).map(|e| e.base.clone()) else {
            return;
        };
        let md = self.md.clone();
        match tokio::task::spawn_blocking(move || scan::mark_seen(&md, &base)).await {
            Ok(Ok(Some((sub, name)))) => {
                if let Some(e) = self.entries.get_mut(index) {
                    e.sub = sub;
                    e.name = name;
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot mark message seen"),
            Err(e) => warn!(error = %e, "mark seen task failed"),
        }
    }

    async fn commit_deletes(self, indexes: Vec<usize>) -> Result<(), StoreError> {
        let MaildirMailbox {
            md, lock, entries, ..
        } = self;
        let bases: Vec<String> = indexes
            .iter()
            .filter_map(|&i| entries.get(i).map(|e| e.base.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            // RFC 1939 §8: only the holder of the maildrop may change it. A lost
            // (or uncheckable) lock deletes nothing.
            if lock.lost.load(Ordering::SeqCst) {
                warn!(path = %md.path().display(), "pop3 update refused: the mailbox lock was lost");
                return Err(StoreError::Temporary);
            }
            if let Err(e) = lock.lock.verify() {
                warn!(path = %md.path().display(), error = ?e, "pop3 update refused: the mailbox lock is not ours");
                return Err(StoreError::Temporary);
            }
            let r = scan::remove_messages(&md, &bases);
            // Release only after the removal is durable.
            drop(lock);
            r.map_err(|e| {
                warn!(error = %e, path = %md.path().display(), "pop3 update failed");
                StoreError::Temporary
            })
        })
        .await
        .map_err(|_| StoreError::Temporary)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const STALE: Duration = Duration::from_secs(1800);

    fn maildir() -> (tempfile::TempDir, Maildir) {
        let t = tempfile::tempdir().unwrap();
        let md = Maildir::ensure(&t.path().join("alice")).unwrap();
        (t, md)
    }

    #[tokio::test]
    async fn open_read_follow_moves_and_commit() {
        let (_t, md) = maildir();
        let a = "1700000000.M1P1Q1R1.h,S=6,W=8";
        let b = "1700000001.M1P1Q2R1.h";
        let c = "1700000002.M1P1Q3R1.h";
        fs::write(md.new_dir().join(a), b"x\n.y\n").unwrap();
        fs::write(md.new_dir().join(b), b"b\n").unwrap();
        fs::write(md.cur().join(format!("{c}:2,S")), b"c").unwrap();
        let mut mb = MaildirMailbox::open(md.path().to_path_buf(), STALE, max_read(0))
            .await
            .unwrap();
        assert_eq!(
            mb.messages(),
            &[
                MessageInfo {
                    uidl: a.into(),
                    size: 8
                },
                MessageInfo {
                    uidl: b.into(),
                    size: 3
                },
                MessageInfo {
                    uidl: c.into(),
                    size: 3
                },
            ]
        );
        // mutt reads `a`: new/ -> cur/ with a flag; we still find it.
        fs::rename(md.new_dir().join(a), md.cur().join(format!("{a}:2,S"))).unwrap();
        assert_eq!(mb.read(0).await.unwrap(), b"x\n.y\n");
        // mutt deletes `b`: that message is gone, the session goes on.
        fs::remove_file(md.new_dir().join(b)).unwrap();
        assert_eq!(mb.read(1).await, Err(StoreError::Gone));
        assert_eq!(mb.read(9).await, Err(StoreError::Gone));
        mb.mark_seen(2).await;
        assert_eq!(mb.read(2).await.unwrap(), b"c");
        mb.commit_deletes(vec![0, 1]).await.unwrap();
        assert_eq!(scan::find(&md, a), None);
        assert!(md.cur().join(format!("{c}:2,S")).exists());
        // Released (the file itself stays, for the next login on a full disk).
        assert!(md.path().join(crate::maildir::lock::LOCK_NAME).is_file());
        drop(crate::maildir::lock::MailboxLock::acquire(&md).unwrap());
    }

    /// Both read paths: small messages on the session's thread, large ones in
    /// the blocking pool (also after mutt moved them), byte for byte.
    #[tokio::test]
    async fn small_and_large_messages_read_exactly() {
        let (_t, md) = maildir();
        let big: Vec<u8> = (0..INLINE_READ as usize + 4096)
            .map(|i| {
                if i % 77 == 76 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .collect();
        let (s, l) = ("1700000000.M1P1Q1R1.h", "1700000001.M1P1Q2R1.h");
        fs::write(md.new_dir().join(s), b"small\n").unwrap();
        fs::write(md.new_dir().join(l), &big).unwrap();
        let mut mb = MaildirMailbox::open(md.path().to_path_buf(), STALE, max_read(0))
            .await
            .unwrap();
        assert!(mb.messages()[1].size > INLINE_READ);
        assert_eq!(mb.read(0).await.unwrap(), b"small\n");
        fs::rename(md.new_dir().join(l), md.cur().join(format!("{l}:2,S"))).unwrap();
        assert_eq!(mb.read(1).await.unwrap(), big);
        assert_eq!(mb.read(1).await.unwrap(), big);
    }

    #[tokio::test]
    async fn one_session_per_mailbox_and_drop_changes_nothing() {
        let (_t, md) = maildir();
        fs::write(md.new_dir().join("1.M1P1.h"), b"a\n").unwrap();
        let mb = MaildirMailbox::open(md.path().to_path_buf(), STALE, max_read(0))
            .await
            .unwrap();
        assert_eq!(
            MaildirMailbox::open(md.path().to_path_buf(), STALE, max_read(0))
                .await
                .unwrap_err(),
            StoreError::InUse
        );
        drop(mb);
        assert!(md.new_dir().join("1.M1P1.h").exists());
        let again = MaildirMailbox::open(md.path().to_path_buf(), STALE, max_read(0))
            .await
            .unwrap();
        assert_eq!(again.messages().len(), 1);
    }

    #[tokio::test]
    async fn missing_maildir_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("bob");
        let mb = MaildirMailbox::open(md.clone(), STALE, max_read(0))
            .await
            .unwrap();
        assert!(mb.messages().is_empty());
        for d in [md.clone(), md.join("tmp"), md.join("new"), md.join("cur")] {
            let mode = fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }

    #[tokio::test]
    async fn login_refuses_unknown_user() {
        let t = tempfile::tempdir().unwrap();
        let users = t.path().join("users");
        fs::write(&users, "").unwrap();
        let toml = format!(
            "mail_root = {:?}\nusers_file = {:?}\n",
            t.path().join("mail").display().to_string(),
            users.display().to_string()
        );
        let cfg = crate::config::Config::parse(&toml, "t").unwrap();
        let be = Backend::load(Arc::new(cfg)).unwrap();
        assert_eq!(
            be.login("nobody", b"pw", None).await.unwrap_err(),
            StoreError::Auth
        );
        assert!(!t.path().join("mail").join("nobody").exists());
    }
}
