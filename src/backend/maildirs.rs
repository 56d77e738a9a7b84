//! Maildirs known to exist (issue 18): a delivery to a Maildir opened before
//! costs one `lstat` of its path (is it still the same directory?) instead
//! of creating and opening it again (three failing `mkdir`s and six
//! `stat`s). Shared handles also let concurrent deliveries into one `new/`
//! share its fsync (`Maildir::sync_new`). A Maildir whose delivery failed
//! is forgotten, so the next one creates and checks it again.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::maildir::{Maildir, fsat};

/// Most Maildirs kept open (four descriptors each); past it the table
/// starts again.
const MAX_OPEN: usize = 512;

/// An open Maildir and the (device, inode) of its directory when opened.
type Known = (Maildir, (u64, u64));

#[derive(Debug, Default)]
pub struct Maildirs {
    open: Mutex<HashMap<PathBuf, Known>>,
}

impl Maildirs {
    /// The Maildir at `path` if it was opened before and is still the
    /// directory there (one `lstat`, cheap enough for the async threads).
    pub fn known(&self, path: &Path) -> Option<Maildir> {
        let (md, id) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == id => Some(md),
            _ => {
                self.forget(&[path.to_path_buf()]);
                None
            }
        }
    }

    /// The Maildir at `path`, created when missing (blocking).
    pub fn ensure(&self, path: &Path) -> io::Result<Maildir> {
        if let Some(md) = self.known(path) {
            return Ok(md);
        }
        let md = Maildir::ensure(path)?;
        let id = fsat::identity(&md.root())?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= MAX_OPEN {
            open.clear();
        }
        open.insert(path.to_path_buf(), (md.clone(), id));
        Ok(md)
    }

    /// Forget these (a delivery into them failed).
    pub fn forget(&self, paths: &[PathBuf]) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        for p in paths {
            open.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_until_replaced_or_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("alice");
        let m = Maildirs::default();
        assert!(m.known(&path).is_none());
        let md = m.ensure(&path).unwrap();
        assert!(m.known(&path).is_some_and(|k| k == md));
        // Moved away and replaced: not the same directory any more.
        std::fs::rename(&path, t.path().join("old")).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(m.known(&path).is_none());
        // ensure() makes it a Maildir again and remembers the new one.
        let again = m.ensure(&path).unwrap();
        assert!(path.join("new").is_dir());
        assert!(m.known(&path).is_some_and(|k| k == again));
        m.forget(std::slice::from_ref(&path));
        assert!(m.known(&path).is_none());
        // A symlink put in its place is never taken for it.
        m.ensure(&path).unwrap();
        std::fs::rename(&path, t.path().join("old2")).unwrap();
        std::os::unix::fs::symlink(t.path().join("old2"), &path).unwrap();
        assert!(m.known(&path).is_none());
    }
}
