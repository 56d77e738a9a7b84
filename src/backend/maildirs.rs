//! Maildirs known to exist (issue 18): a delivery to a Maildir opened before
//! costs one `lstat` of its path (is it still the same directory?) instead
//! of creating and opening it again (three failing `mkdir`s and six
//! `stat`s). Shared handles also let concurrent deliveries into one `new/`
//! share its fsync (`Maildir::sync_new`). A Maildir whose delivery failed
//! is forgotten, so the next one creates and checks it again.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::bounded::LruMap;
use crate::maildir::{Maildir, Sub, fsat};

/// Most Maildirs kept open (four descriptors each); past it the least
/// recently delivered to is closed.
pub const MAX_OPEN: usize = 512;

/// An open Maildir and the (device, inode) of its directory, its `tmp/` and
/// its `new/` when opened.
type Known = (Maildir, [(u64, u64); 3]);

#[derive(Debug)]
pub struct Maildirs {
    open: Mutex<LruMap<PathBuf, Known>>,
}

impl Default for Maildirs {
    fn default() -> Self {
        Maildirs {
            open: Mutex::new(LruMap::new(MAX_OPEN)),
        }
    }
}

impl Maildirs {
    /// The Maildir at `path` if it was opened before and is still the same:
    /// the directory at `path` (an `lstat`), and its `tmp/` and `new/`
    /// (two `fstatat`s on its handle, not following links) the ones we hold,
    /// with `new/` shared with a group or not as it was. Cheap enough for the
    /// async threads; anything else is forgotten and opened again.
    pub fn known(&self, path: &Path) -> Option<Maildir> {
        let (md, ids) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .touch(&path.to_path_buf())
            .map(|k| k.clone())?;
        if still(&md, path, &ids) {
            return Some(md);
        }
        self.forget(&[path.to_path_buf()]);
        None
    }

    /// The Maildir at `path`, created when missing (blocking).
    pub fn ensure(&self, path: &Path) -> io::Result<Maildir> {
        if let Some(md) = self.known(path) {
            return Ok(md);
        }
        let md = Maildir::ensure(path)?;
        let ids = [
            fsat::identity(&md.root())?,
            fsat::identity(&md.dir(Sub::Tmp))?,
            fsat::identity(&md.dir(Sub::New))?,
        ];
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *open.touch_or_insert_with(path.to_path_buf(), || (md.clone(), ids)) = (md.clone(), ids);
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

/// Is `md` still what is at `path`? See `Maildirs::known`.
fn still(md: &Maildir, path: &Path, ids: &[(u64, u64); 3]) -> bool {
    let root = match std::fs::symlink_metadata(path) {
        Ok(m) => (m.dev(), m.ino()),
        Err(_) => return false,
    };
    if root != ids[0] {
        return false;
    }
    let sub = |s: Sub| fsat::stat_at(md.root(), s.name()).ok();
    match (sub(Sub::Tmp), sub(Sub::New)) {
        (Some(t), Some(n)) => {
            (t.st_dev, t.st_ino) == ids[1]
                && (n.st_dev, n.st_ino) == ids[2]
                && (n.st_mode & 0o060 == 0o060) == md.is_shared()
        }
        _ => false,
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
        // new/ moved aside and made again: forgotten (the cached handle
        // would deliver where nobody looks).
        m.ensure(&path).unwrap();
        std::fs::rename(path.join("new"), path.join("new.x")).unwrap();
        std::fs::create_dir(path.join("new")).unwrap();
        assert!(m.known(&path).is_none());
        // Shared with a group since it was opened: forgotten too.
        m.ensure(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path.join("new"), std::fs::Permissions::from_mode(0o2770))
            .unwrap();
        assert!(m.known(&path).is_none());
        std::fs::set_permissions(path.join("new"), std::fs::Permissions::from_mode(0o700)).unwrap();
        // A symlink put in its place is never taken for it.
        m.ensure(&path).unwrap();
        std::fs::rename(&path, t.path().join("old2")).unwrap();
        std::os::unix::fs::symlink(t.path().join("old2"), &path).unwrap();
        assert!(m.known(&path).is_none());
    }
}
