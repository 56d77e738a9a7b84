//! Maildir storage shared with mutt (maildird(8), MAILDIR): durable delivery, login
//! snapshots, and the per-mailbox POP3 lock. Blocking code; async callers use
//! `spawn_blocking`. Knows nothing of tokio or protocols.
//!
//! The owner's Unix account may plant symlinks, FIFOs and devices anywhere in
//! her Maildir (README, Security). So a `Maildir` is a set of *directory handles*,
//! each opened with `O_DIRECTORY|O_NOFOLLOW` relative to its parent, and every
//! later operation is an `*at` call on one of them (qmail's and Dovecot's habit):
//! a `cur/` replaced by a symlink to another mailbox is refused at open, and a
//! rename of the tree after open cannot redirect us. Paths are kept for logs only.
//! rustix gives these calls over `OwnedFd`/`AsFd` with no `unsafe` here.

pub mod deliver;
pub mod fsat;
mod group_sync;
pub mod lock;
pub mod name;
pub mod quota;
pub mod scan;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Mode of the directories we create: private to the service user.
const DIR_MODE: u32 = 0o700;
/// Directories of a Maildir shared with a Unix group (`user add --unix-group`).
const SHARED_DIR_MODE: u32 = 0o2770;

/// The three directories of a Maildir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sub {
    Tmp,
    New,
    Cur,
}

impl Sub {
    pub fn name(self) -> &'static str {
        match self {
            Sub::Tmp => "tmp",
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One opened Maildir: handles on its directory and its `tmp/ new/ cur/`.
/// Cheap to clone (the handles are shared).
#[derive(Debug, Clone)]
pub struct Maildir {
    inner: Arc<Handles>,
}

#[derive(Debug)]
struct Handles {
    path: PathBuf,
    root: OwnedFd,
    tmp: OwnedFd,
    new: OwnedFd,
    cur: OwnedFd,
    /// `new/` grants its group read+write (`user add --unix-group`): shared
    /// with a Unix account that runs mutt. Read from the `fstat` made at open.
    shared: bool,
    /// Concurrent deliveries into `new/` share its fsyncs (`sync_new`).
    new_sync: group_sync::GroupSync,
}

impl PartialEq for Maildir {
    fn eq(&self, other: &Maildir) -> bool {
        self.inner.path == other.inner.path
    }
}

impl Maildir {
    /// Open the existing Maildir at `path`. The parent (the admin's `mail_root`)
    /// is opened normally; the Maildir and its subdirectories never through a
    /// symlink.
    pub fn open(path: &Path) -> io::Result<Maildir> {
        let (parent, name) = split(path)?;
        let parent_fd = fsat::open_dir_path(parent)?;
        Maildir::open_in(parent_fd.as_fd(), path, name)
    }

    /// Open the Maildir `name` inside the already-open directory `parent`.
    pub fn open_in(parent: BorrowedFd<'_>, path: &Path, name: &str) -> io::Result<Maildir> {
        let root = fsat::open_dir_at(parent, name, path)?;
        let sub = |s: Sub| fsat::open_dir_at(root.as_fd(), s.name(), &path.join(s.name()));
        let (tmp, new, cur) = (sub(Sub::Tmp)?, sub(Sub::New)?, sub(Sub::Cur)?);
        // A subdirectory on another filesystem is a mount its owner made there
        // (FUSE with user_allow_other): it could stall every call; refused.
        let dev = rustix::fs::fstat(&root)?.st_dev;
        let mut shared = false;
        for (fd, s) in [(&tmp, Sub::Tmp), (&new, Sub::New), (&cur, Sub::Cur)] {
            let st = rustix::fs::fstat(fd)?;
            if st.st_dev != dev {
                return Err(fsat::refused(
                    path.join(s.name()).display(),
                    "a mount point (another filesystem)",
                ));
            }
            if s == Sub::New {
                shared = st.st_mode & 0o060 == 0o060;
            }
        }
        Ok(Maildir {
            inner: Arc::new(Handles {
                path: path.to_path_buf(),
                root,
                tmp,
                new,
                cur,
                shared,
                new_sync: group_sync::GroupSync::default(),
            }),
        })
    }

    /// Open the Maildir at `path`, first creating it and any missing `tmp/`,
    /// `new/`, `cur/` (mode 0700), with the directories whose entries changed
    /// fsynced. The parent is created when missing (it is the admin's tree).
    /// A symlink or other non-directory where a directory belongs is an error
    /// that names it; nothing is created or followed through it.
    pub fn ensure(path: &Path) -> io::Result<Maildir> {
        match Maildir::open(path) {
            Ok(md) => return Ok(md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (parent, name) = split(path)?;
        if !parent.is_dir() {
            std::fs::DirBuilder::new().recursive(true).create(parent)?;
        }
        let parent_fd = fsat::open_dir_path(parent)?;
        let created_root = fsat::mkdir_at(parent_fd.as_fd(), name, DIR_MODE)?;
        if created_root {
            rustix::fs::fsync(&parent_fd)?;
        }
        let root = fsat::open_dir_at(parent_fd.as_fd(), name, path)?;
        let mut created = false;
        for s in [Sub::Tmp, Sub::New, Sub::Cur] {
            created |= fsat::mkdir_at(root.as_fd(), s.name(), DIR_MODE)?;
        }
        if created {
            rustix::fs::fsync(&root)?;
        }
        drop(root);
        let md = Maildir::open_in(parent_fd.as_fd(), path, name)?;
        if created_root {
            // The POP3 lock file, once, while there is space for it.
            lock::create_lock_file(&md)?;
        }
        Ok(md)
    }

    /// The Maildir++ folder `name` (such as `.Junk`) inside this Maildir,
    /// created when missing, with its `maildirfolder` marker (mutt shows it
    /// as a folder; POP3, which serves the Maildir itself, never sees it).
    /// Reached through this Maildir's handle, never by path: a symlink there
    /// is refused, and so is a folder on another filesystem or not ours (a
    /// shared Maildir's owner may have put it there). In a Maildir shared
    /// with a Unix group the folder is shared too (directories 2770).
    pub fn ensure_folder(&self, name: &str) -> io::Result<Maildir> {
        let path = self.path().join(name);
        let mode = if self.is_shared() {
            SHARED_DIR_MODE
        } else {
            DIR_MODE
        };
        let mut created = fsat::mkdir_at(self.root(), name, mode)?;
        let root = fsat::open_dir_at(self.root(), name, &path)?;
        let st = rustix::fs::fstat(&root)?;
        if st.st_dev != rustix::fs::fstat(self.root())?.st_dev {
            return Err(fsat::refused(
                path.display(),
                "a mount point (another filesystem)",
            ));
        }
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            return Err(fsat::refused(
                path.display(),
                "not owned by the service user",
            ));
        }
        for s in [Sub::Tmp, Sub::New, Sub::Cur] {
            created |= fsat::mkdir_at(root.as_fd(), s.name(), mode)?;
        }
        if self.is_shared() {
            // mkdir's mode passes through the umask: the group bits set here.
            fsat::chown_chmod(root.as_fd(), None, None, Some(SHARED_DIR_MODE))?;
            for s in [Sub::Tmp, Sub::New, Sub::Cur] {
                let d = fsat::open_dir_at(root.as_fd(), s.name(), &path.join(s.name()))?;
                fsat::chown_chmod(d.as_fd(), None, None, Some(SHARED_DIR_MODE))?;
            }
        }
        match fsat::create_excl(root.as_fd(), "maildirfolder", deliver::file_mode(self)) {
            Ok(_) => created = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        if created {
            rustix::fs::fsync(&root)?;
            rustix::fs::fsync(self.root())?;
        }
        Maildir::open_in(self.root(), &path, name)
    }

    /// Where the Maildir is, for logs and messages (never used to reach files).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
    pub fn tmp(&self) -> PathBuf {
        self.inner.path.join("tmp")
    }
    pub fn new_dir(&self) -> PathBuf {
        self.inner.path.join("new")
    }
    pub fn cur(&self) -> PathBuf {
        self.inner.path.join("cur")
    }

    /// The handle of the Maildir directory itself (the POP3 lock lives there).
    pub fn root(&self) -> BorrowedFd<'_> {
        self.inner.root.as_fd()
    }

    /// The handle of `tmp/`, `new/` or `cur/`.
    pub fn dir(&self, sub: Sub) -> BorrowedFd<'_> {
        match sub {
            Sub::Tmp => self.inner.tmp.as_fd(),
            Sub::New => self.inner.new.as_fd(),
            Sub::Cur => self.inner.cur.as_fd(),
        }
    }

    /// Is this Maildir shared with a Unix group (its `new/` grants the group
    /// read+write, as `maildird user add --unix-group` sets up), as it was
    /// when opened?
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// fsync one of the subdirectories (its entries survive a crash).
    pub fn sync(&self, sub: Sub) -> io::Result<()> {
        rustix::fs::fsync(self.dir(sub)).map_err(io::Error::from)
    }

    /// fsync `new/` after a link into it, sharing the fsync with concurrent
    /// deliveries into the same `new/` (group commit): returns once an fsync
    /// that began after the call has completed, so it covers the caller's
    /// link. Blocking. `fsync` does the fsync itself (timed by the caller's
    /// metrics).
    pub fn sync_new(&self, fsync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        self.inner.new_sync.sync(fsync)
    }
}

/// `path` as (parent, last component); the last component must be a plain name.
fn split(path: &Path) -> io::Result<(&Path, &str)> {
    let name = path.file_name().and_then(|n| n.to_str());
    match (path.parent(), name) {
        (Some(p), Some(n)) => Ok((
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        )),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a Maildir path", path.display()),
        )),
    }
}

/// Is this error "no space" (disk full or quota)? Then SMTP answers `452 4.3.1`.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == nix::libc::ENOSPC || c == nix::libc::EDQUOT)
}

/// A handle that no longer reaches its file or directory (NFS `ESTALE`), or a
/// network filesystem that lost its servers for a moment (FUSE `ENOTCONN`):
/// the same operation through handles opened again may work.
pub fn is_stale_handle(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == nix::libc::ESTALE || c == nix::libc::ENOTCONN)
}
