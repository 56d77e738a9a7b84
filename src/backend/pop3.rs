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

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Backend;
use crate::auth::{Role, validate_name};
use crate::maildir::lock::{LockCheck, LockError, MailboxLock};
use crate::maildir::scan::{self, Entry};
use crate::maildir::{Maildir, Sub, fsat};
use crate::pop3::store::{Mailbox, MessageInfo, MessageReader, Store, StoreError};

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

/// The largest message file read: four times `max_message_size`, at least
/// 64 MiB; a larger one is refused (logged). A Maildir's owner can make a
/// sparse file of a terabyte. Filters hold the message in memory (see
/// `checked`); RETR and TOP stream it in bounded memory, but keep the same
/// limit: no real message is that large, and a terabyte of zeros would tie a
/// session and the disk for hours.
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

/// Stored bytes per chunk given to the session: a session holds at most two
/// (the one it encodes, the one read ahead), whatever the message's size.
const READ_CHUNK: usize = 64 * 1024;

/// How long the read-ahead task waits for the session to take its chunk
/// before it gives its blocking thread back: long enough for a session that
/// keeps up with the disk (one task streams the whole message), short
/// enough that a client slower than that (a phone on a slow link, or one
/// that stopped reading) holds a blocking thread only a little of the time:
/// 128 of them must not hold the whole blocking pool, which deliveries use.
/// The session starts a new task when it wants the next chunk.
const READER_PARK: Duration = Duration::from_millis(20);

/// A chunk read ahead, or why reading failed.
type Chunk = Result<Vec<u8>, StoreError>;

/// A message opened for RETR/TOP: exactly the `len` bytes `fstat` reported at
/// open are read (a file the owner keeps appending to cannot make us read
/// without end; one that shrank ends early), `READ_CHUNK` at a time.
#[derive(Debug)]
pub struct MaildirMessage {
    source: Source,
    /// The chunk last returned by `next_chunk`.
    chunk: Vec<u8>,
}

#[derive(Debug)]
enum Source {
    /// Up to `INLINE_READ`: read on the session's thread.
    Inline { file: File, left: u64 },
    /// Larger: read ahead by a task in the blocking pool.
    Pool(ReadAhead),
}

/// One blocking task per RETR reads the file chunk by chunk into a channel of
/// one slot: it reads a chunk only once the slot is free, so the session's
/// pace (a slow client's) holds it back, and no more than the chunk being
/// encoded and the one read ahead exist. Not one blocking hop per chunk:
/// the task goes on until the end, unless the session does not take a chunk
/// within `READER_PARK`; then it hands the file back and ends.
#[derive(Debug)]
struct ReadAhead {
    rx: mpsc::Receiver<Chunk>,
    /// Kept to start another task after one handed the file back.
    tx: mpsc::Sender<Chunk>,
    /// The task reading now: it returns the file and the bytes left when it
    /// stopped early, `None` when it is done.
    task: Option<JoinHandle<Option<(File, u64)>>>,
    /// The file and the bytes left to read while no task reads it.
    parked: Option<(File, u64)>,
}

impl ReadAhead {
    /// Start reading `len` bytes of `file` at once, while the session queues
    /// its `+OK`.
    fn start(file: File, len: u64) -> ReadAhead {
        let (tx, rx) = mpsc::channel(1);
        let mut r = ReadAhead {
            rx,
            tx,
            task: None,
            parked: Some((file, len)),
        };
        r.resume();
        r
    }

    /// Start a task for the parked file, if any.
    fn resume(&mut self) {
        if self.task.is_none()
            && let Some((file, left)) = self.parked.take()
        {
            let (tx, rt) = (self.tx.clone(), tokio::runtime::Handle::current());
            self.task = Some(tokio::task::spawn_blocking(move || {
                read_ahead(file, left, &tx, &rt)
            }));
        }
    }

    /// The next chunk read ahead, `None` after the last one.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        loop {
            if let Ok(chunk) = self.rx.try_recv() {
                // Read the next one while this one is encoded, also when the
                // task has just handed the file back.
                if self.task.as_ref().is_some_and(JoinHandle::is_finished) {
                    reap(&mut self.task, &mut self.parked).await?;
                }
                self.resume();
                return chunk.map(Some);
            }
            if self.task.is_none() {
                if self.parked.is_none() {
                    return Ok(None);
                }
                self.resume();
                continue;
            }
            // A chunk, or the task's end (done, or the file handed back).
            tokio::select! {
                chunk = self.rx.recv() => return match chunk {
                    Some(chunk) => chunk.map(Some),
                    // Never: `self.tx` is a sender.
                    None => Ok(None),
                },
                ended = reap(&mut self.task, &mut self.parked) => ended?,
            }
        }
    }
}

/// Wait for the read-ahead `task` to end; park the file it hands back.
/// Cancel-safe: nothing changes until it has ended.
async fn reap(
    task: &mut Option<JoinHandle<Option<(File, u64)>>>,
    parked: &mut Option<(File, u64)>,
) -> Result<(), StoreError> {
    if let Some(t) = task.as_mut() {
        let ended = t.await;
        *task = None;
        *parked = ended.map_err(|e| {
            warn!(error = %e, "message read task failed");
            StoreError::Temporary
        })?;
    }
    Ok(())
}

/// Blocking: send `left` bytes of `file` through `tx` chunk by chunk, each read
/// only when the channel has room for it. Returns the file and what is left
/// when the session took no chunk for `READER_PARK`; `None` when done (or
/// failed, or the session is gone).
fn read_ahead(
    mut file: File,
    mut left: u64,
    tx: &mpsc::Sender<Chunk>,
    rt: &tokio::runtime::Handle,
) -> Option<(File, u64)> {
    while left > 0 {
        let permit = match tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Closed(())) => return None,
            Err(mpsc::error::TrySendError::Full(())) => {
                match rt.block_on(tokio::time::timeout(READER_PARK, tx.reserve())) {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((file, left)),
                }
            }
        };
        let mut buf = Vec::new();
        match read_chunk(&mut file, &mut left, &mut buf) {
            Ok(()) if buf.is_empty() => return None,
            Ok(()) => permit.send(Ok(buf)),
            Err(e) => {
                permit.send(Err(e));
                return None;
            }
        }
    }
    None
}

/// Read the next chunk of at most `READ_CHUNK` of the `left` bytes into `buf`
/// (replacing its contents); empty at the end; an error when the file became
/// shorter than it was at open.
fn read_chunk(file: &mut File, left: &mut u64, buf: &mut Vec<u8>) -> Result<(), StoreError> {
    buf.clear();
    let want = (*left).min(READ_CHUNK as u64);
    buf.reserve_exact(usize::try_from(want).unwrap_or(READ_CHUNK));
    file.take(want).read_to_end(buf).map_err(|e| {
        warn!(error = %e, "cannot read message");
        StoreError::Temporary
    })?;
    if buf.is_empty() && *left > 0 {
        // Shorter than at open (the owner of a shared Maildir truncated
        // it): never sent as complete, the connection closes instead.
        warn!(missing = *left, "message file shrank while it was read");
        return Err(StoreError::Temporary);
    }
    *left = left.saturating_sub(buf.len() as u64);
    Ok(())
}

impl MessageReader for MaildirMessage {
    async fn next_chunk(&mut self) -> Result<Option<&[u8]>, StoreError> {
        match &mut self.source {
            Source::Inline { file, left } => read_chunk(file, left, &mut self.chunk)?,
            Source::Pool(r) => self.chunk = r.next().await?.unwrap_or_default(),
        }
        Ok((!self.chunk.is_empty()).then_some(self.chunk.as_slice()))
    }
}

impl Mailbox for MaildirMailbox {
    fn messages(&self) -> &[MessageInfo] {
        &self.messages
    }

    type Message = MaildirMessage;

    async fn open(&mut self, index: usize) -> Result<MaildirMessage, StoreError> {
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
        let source = if len <= INLINE_READ {
            Source::Inline { file, left: len }
        } else {
            Source::Pool(ReadAhead::start(file, len))
        };
        Ok(MaildirMessage {
            source,
            chunk: Vec::new(),
        })
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
        let marked: Vec<scan::Entry> = indexes
            .iter()
            .filter_map(|&i| entries.get(i).cloned())
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
            let r = scan::remove_messages(&md, &marked);
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

    /// RETR's view: open message `i` and read every chunk (none empty, none
    /// over `READ_CHUNK`).
    async fn read(mb: &mut MaildirMailbox, i: usize) -> Result<Vec<u8>, StoreError> {
        let mut msg = mb.open(i).await?;
        let mut all = Vec::new();
        while let Some(chunk) = msg.next_chunk().await? {
            assert!(!chunk.is_empty() && chunk.len() <= READ_CHUNK);
            all.extend_from_slice(chunk);
        }
        Ok(all)
    }

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
        assert_eq!(read(&mut mb, 0).await.unwrap(), b"x\n.y\n");
        // mutt deletes `b`: that message is gone, the session goes on.
        fs::remove_file(md.new_dir().join(b)).unwrap();
        assert_eq!(read(&mut mb, 1).await, Err(StoreError::Gone));
        assert_eq!(read(&mut mb, 9).await, Err(StoreError::Gone));
        mb.mark_seen(2).await;
        assert_eq!(read(&mut mb, 2).await.unwrap(), b"c");
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
        assert_eq!(read(&mut mb, 0).await.unwrap(), b"small\n");
        fs::rename(md.new_dir().join(l), md.cur().join(format!("{l}:2,S"))).unwrap();
        assert_eq!(read(&mut mb, 1).await.unwrap(), big);
        assert_eq!(read(&mut mb, 1).await.unwrap(), big);
    }

    #[test]
    fn a_file_that_shrank_is_an_error_not_a_short_message() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, b"only ten b").unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).unwrap();
        // fstat said 20 at open; the file holds 10.
        let mut left = 20u64;
        let mut buf = Vec::new();
        read_chunk(&mut f, &mut left, &mut buf).unwrap();
        assert_eq!((buf.as_slice(), left), (&b"only ten b"[..], 10));
        assert!(read_chunk(&mut f, &mut left, &mut buf).is_err());
        // A file read to its fstat length ends cleanly.
        let mut left = 0u64;
        read_chunk(&mut f, &mut left, &mut buf).unwrap();
        assert!(buf.is_empty());
    }

    /// A large message read by a session that stalls between chunks (its
    /// client stopped reading): the read-ahead task hands the file back and a
    /// new one goes on where it stopped, byte for byte; dropping a message
    /// half read ends its task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_reader_resumes_exactly() {
        let (_t, md) = maildir();
        let big: Vec<u8> = (0..READ_CHUNK * 5 + 123).map(|i| (i % 251) as u8).collect();
        fs::write(md.new_dir().join("1700000000.M1P1Q1R1.h"), &big).unwrap();
        let mut mb = MaildirMailbox::open(md.path().to_path_buf(), STALE, max_read(0))
            .await
            .unwrap();
        let mut msg = mb.open(0).await.unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = msg.next_chunk().await.unwrap() {
            got.extend_from_slice(chunk);
            if got.len() <= 2 * READ_CHUNK {
                tokio::time::sleep(READER_PARK * 3).await;
            }
        }
        assert_eq!(got.len(), big.len());
        assert!(got == big);
        assert_eq!(msg.next_chunk().await.unwrap(), None);
        let mut half = mb.open(0).await.unwrap();
        assert_eq!(
            half.next_chunk().await.unwrap().map(<[u8]>::len),
            Some(READ_CHUNK)
        );
        drop(half);
        assert!(read(&mut mb, 0).await.unwrap() == big);
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
