//! Maildir storage shared with mutt (DESIGN.md §2): durable delivery, login
//! snapshots, and the per-mailbox POP3 lock. Blocking std::fs code; async callers
//! use `spawn_blocking`. Knows nothing of tokio or protocols.

pub mod deliver;
pub mod lock;
pub mod name;
pub mod scan;

use std::io;
use std::path::{Path, PathBuf};

/// One Maildir: a directory with `tmp/`, `new/` and `cur/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maildir {
    path: PathBuf,
}

impl Maildir {
    pub fn new(path: impl Into<PathBuf>) -> Maildir {
        Maildir { path: path.into() }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn tmp(&self) -> PathBuf {
        self.path.join("tmp")
    }
    pub fn new_dir(&self) -> PathBuf {
        self.path.join("new")
    }
    pub fn cur(&self) -> PathBuf {
        self.path.join("cur")
    }
}

/// Is this error "no space" (disk full or quota)? Then SMTP answers `452 4.3.1`.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(c) if c == nix::libc::ENOSPC || c == nix::libc::EDQUOT)
}
