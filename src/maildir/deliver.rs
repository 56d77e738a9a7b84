//! Durable delivery into Maildir (maildird(8), MAILDIR): write `tmp/<unique>` (O_EXCL,
//! 0600), `fsync`, hard-link into each recipient's `new/` without clobbering,
//! `fsync` every `new/`, then unlink the tmp file. Only after `commit` returns Ok
//! may SMTP answer 250; on any failure nothing is left in any `new/`.
//!
//! Every step is an `*at` call on the Maildirs' directory handles, and each link
//! is checked to be the very file we wrote (its device and inode): the first
//! recipient's owner may rename or replace her `tmp/` entries meanwhile.
//!
//! Blocking code: async callers use `spawn_blocking`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::name::UniqueName;
use super::{Maildir, Sub, fsat};
use crate::crlf::CrlfSize;

/// Maildir files are private to the mailbox owner.
const FILE_MODE: u32 = 0o600;
const SHARED_FILE_MODE: u32 = 0o660;
/// A tmp/ name of a delivered message (its data also linked in new/) is
/// removed by the sweep once this old.
const LINKED_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// Tries at removing a link (or fsyncing its directory) when rolling back.
const ROLLBACK_TRIES: usize = 3;

/// A failed delivery whose rollback failed too: these copies may still be in
/// `new/` (the client's retry may then deliver a duplicate, explained by `id`).
#[derive(Debug, thiserror::Error)]
#[error("{error}; rollback failed, copies of {id} may remain: {remaining:?}")]
pub struct RollbackFailed {
    /// The message's id (`UniqueName::id`).
    pub id: String,
    pub remaining: Vec<PathBuf>,
    pub error: io::Error,
}

impl RollbackFailed {
    /// The `RollbackFailed` inside an error from `Delivery::commit`, if any.
    pub fn of(e: &io::Error) -> Option<&RollbackFailed> {
        e.get_ref().and_then(|i| i.downcast_ref::<RollbackFailed>())
    }
}

/// Tries at a fresh unique name when one is taken (only a clock step backwards,
/// pid reuse or a foreign writer can collide).
const NAME_ATTEMPTS: usize = 8;

/// One message being written to `tmp/`. Dropping it uncommitted removes the tmp file.
#[derive(Debug)]
pub struct Delivery {
    /// `None` once committed (or while the file is being torn down).
    file: Option<BufWriter<File>>,
    /// The Maildir whose `tmp/` holds the file.
    first: Maildir,
    host: String,
    name: UniqueName,
    /// Bytes written (the `S=` field).
    bytes: u64,
    /// The size on the POP3 wire (`W=`).
    wire: CrlfSize,
}

impl Delivery {
    /// Create `tmp/<unique>` (O_CREAT|O_EXCL) for a message to `targets`. It is
    /// staged in the first *private* target (mode 0600; no Unix account can
    /// touch it), so the one inode may be linked into every private Maildir.
    /// Only when all targets are shared with a Unix group is it staged in the
    /// first of them (mode 0660, see `file_mode`).
    pub fn begin(targets: &[Maildir], host: &str) -> io::Result<Delivery> {
        Delivery::begin_named(targets, host, None)
    }

    /// `begin` under the unique name `name` (an id announced earlier), or a
    /// fresh one should it be taken.
    pub fn begin_named(
        targets: &[Maildir],
        host: &str,
        name: Option<UniqueName>,
    ) -> io::Result<Delivery> {
        let stage = staging_maildir(targets)?;
        let (file, name) = create_unique_tmp(stage, host, name)?;
        Ok(Delivery {
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            first: stage.clone(),
            host: host.to_string(),
            name,
            bytes: 0,
            wire: CrlfSize::default(),
        })
    }

    /// The message's id (`UniqueName::id`): the start of its file names.
    pub fn id(&self) -> &str {
        self.name.id()
    }

    /// The tmp file being written (for logs and tests).
    pub fn tmp_path(&self) -> PathBuf {
        self.first.tmp().join(self.name.as_str())
    }

    /// Bytes written so far (`S=`).
    pub fn size(&self) -> u64 {
        self.bytes
    }

    /// Size with CRLF line endings, as POP3 will send it (`W=`).
    pub fn crlf_size(&self) -> u64 {
        self.wire.total()
    }

    /// Append message bytes (buffered).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("delivery already finished"))?;
        file.write_all(bytes)?;
        self.wire.feed(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Make the message durable in every target's `new/` and return the paths.
    /// On error nothing is left in any `new/` and the tmp file is gone.
    pub fn commit(mut self, targets: &[Maildir]) -> io::Result<Vec<PathBuf>> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("delivery already finished"))?;
        let result = file
            .flush()
            .and_then(|()| fsync_timed(|| file.get_ref().sync_all()))
            .and_then(|()| self.link_all(file.get_ref(), targets));
        drop(file);
        // The tmp file goes in every case: on success the links hold the data;
        // on failure `link_all` already removed what it linked. Retried; what
        // still stays is litter for `sweep_tmp` (and said in the log).
        let tmp = self.first.dir(Sub::Tmp);
        let removed = (0..ROLLBACK_TRIES).any(|_| match fsat::unlink_at(tmp, self.name.as_str()) {
            Ok(()) => true,
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        });
        if !removed {
            tracing::warn!(path = %self.tmp_path().display(), "cannot remove a delivery's tmp file; the tmp sweep will");
        }
        result
    }

    fn link_all(&self, file: &File, targets: &[Maildir]) -> io::Result<Vec<PathBuf>> {
        let final_name = self.name.with_sizes(self.bytes, self.crlf_size());
        let ours = fsat::identity(file)?;
        let staged_private = !self.first.is_shared();
        let mut linked: Vec<(&Maildir, String)> = Vec::with_capacity(targets.len());
        let result = (|| {
            for md in targets {
                // One inode may be shared only where no Unix account can write
                // it: among private Maildirs, or the staging Maildir itself. A
                // Maildir shared with a group gets its own copy (its group, its
                // mode), so its owner can never write another recipient's mail.
                let link = *md == self.first || (staged_private && !md.is_shared());
                let name = self.place_one(file, ours, md, &final_name, link)?;
                linked.push((md, name));
            }
            // RFC 5321 §6.1 ("it MUST NOT lose the message"): the links are
            // durable only once each `new/` directory itself is on disk.
            // Shared with concurrent deliveries into the same `new/`
            // (group commit): one fsync that began after our link.
            for md in targets {
                md.sync_new(|| fsync_timed(|| md.sync(Sub::New)))?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(linked.iter().map(|(md, n)| md.new_dir().join(n)).collect()),
            Err(e) => {
                // Roll back: each link removed (retried), each `new/` fsynced
                // so the removal survives a crash (or the client's retry after
                // the 451 would find a duplicate). What could not be rolled
                // back is named in the error, for the log and the reply.
                let mut remaining = Vec::new();
                for (md, n) in &linked {
                    let gone = (0..ROLLBACK_TRIES).any(|_| {
                        matches!(fsat::unlink_at(md.dir(Sub::New), n), Ok(()))
                            || fsat::stat_at(md.dir(Sub::New), n)
                                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
                    });
                    let synced = (0..ROLLBACK_TRIES).any(|_| md.sync(Sub::New).is_ok());
                    if !gone || !synced {
                        remaining.push(md.new_dir().join(n));
                    }
                }
                if remaining.is_empty() {
                    Err(e)
                } else {
                    Err(io::Error::new(
                        e.kind(),
                        RollbackFailed {
                            id: super::name::message_id_of(&final_name).to_string(),
                            remaining,
                            error: e,
                        },
                    ))
                }
            }
        }
    }

    /// Put the message into `md/new/` under a name never clobbering another:
    /// a hard link of the staged file (`link`), else (or across filesystems)
    /// a copy read back from our own descriptor. On a name clash pick a fresh
    /// unique name. Returns the name in `new/`.
    fn place_one(
        &self,
        file: &File,
        ours: (u64, u64),
        md: &Maildir,
        final_name: &str,
        link: bool,
    ) -> io::Result<String> {
        let new = md.dir(Sub::New);
        let mut name = final_name.to_string();
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let linked_now = if link {
                fsat::link_at(self.first.dir(Sub::Tmp), self.name.as_str(), new, &name)
            } else {
                Err(io::Error::from(io::ErrorKind::CrossesDevices))
            };
            match linked_now {
                Ok(()) => {
                    // What the name in tmp/ pointed at when linked must be the
                    // file we wrote, not one the owner swapped in.
                    match fsat::identity_at(new, &name) {
                        Ok(id) if id == ours => return Ok(name),
                        Ok(_) => {
                            let _ = fsat::unlink_at(new, &name);
                            return Err(io::Error::other(format!(
                                "{}: tmp file was replaced during delivery",
                                self.tmp_path().display()
                            )));
                        }
                        Err(e) => {
                            let _ = fsat::unlink_at(new, &name);
                            return Err(e);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    match copy_exclusive(file, md, &name, &self.host) {
                        Ok(()) => return Ok(name),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            name = UniqueName::generate(&self.host).with_sizes(self.bytes, self.crlf_size());
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no unique name in new/")))
    }
}

/// An fsync on the delivery path, timed for the metrics.
fn fsync_timed(f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    crate::metrics::get().fsync(f)
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Uncommitted: discard buffered bytes without writing them.
            let (f, _) = file.into_parts();
            drop(f);
            match fsat::unlink_at(self.first.dir(Sub::Tmp), self.name.as_str()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(path = %self.tmp_path().display(), error = %e, "cannot remove a delivery's tmp file; the tmp sweep will");
                }
                _ => {}
            }
        }
    }
}

/// Messages are private to the service user, except in a Maildir shared with
/// a Unix account that runs mutt (`Maildir::is_shared`): 0660 there, so the
/// group can read them.
pub fn file_mode(md: &Maildir) -> u32 {
    if md.is_shared() {
        SHARED_FILE_MODE
    } else {
        FILE_MODE
    }
}

/// Where a message to `targets` is staged: the first private Maildir, else
/// the first (see `Delivery::begin`).
pub fn staging_maildir(targets: &[Maildir]) -> io::Result<&Maildir> {
    targets
        .iter()
        .find(|md| !md.is_shared())
        .or(targets.first())
        .ok_or_else(|| io::Error::other("no target maildir"))
}

/// A private scratch file in `md/tmp/`, unlinked at once: it lives as long as
/// its descriptor, and a crash leaves nothing behind.
/// Mode 0600 even in a shared Maildir: no Unix account ever opens it. An
/// unnamed `O_TMPFILE` where the filesystem has it (no directory entry to
/// make and remove), else a named file unlinked at once.
pub fn scratch_file(md: &Maildir, host: &str) -> io::Result<File> {
    match fsat::create_unnamed(md.dir(Sub::Tmp), FILE_MODE) {
        Ok(file) => return Ok(file),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
        Err(e) => return Err(e),
    }
    let mut last_err = None;
    for _ in 0..NAME_ATTEMPTS {
        let name = UniqueName::generate(host);
        match fsat::create_excl(md.dir(Sub::Tmp), name.as_str(), FILE_MODE) {
            Ok(file) => {
                fsat::unlink_at(md.dir(Sub::Tmp), name.as_str())?;
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no unique tmp name")))
}

/// Create a new file under a fresh unique name (`first`, when given, is
/// tried first) in `md/tmp/` (O_EXCL, mode `file_mode`), trying another name
/// when one is taken.
fn create_unique_tmp(
    md: &Maildir,
    host: &str,
    first: Option<UniqueName>,
) -> io::Result<(File, UniqueName)> {
    let mode = file_mode(md);
    let mut last_err = None;
    let mut first = first;
    for _ in 0..NAME_ATTEMPTS {
        let name = first.take().unwrap_or_else(|| UniqueName::generate(host));
        match fsat::create_excl(md.dir(Sub::Tmp), name.as_str(), mode) {
            Ok(file) => return Ok((file, name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no unique tmp name")))
}

/// Copy our own tmp file (read back through its descriptor) into `md` the
/// Maildir way: a new file in `md/tmp/` (O_EXCL), written and fsynced, then
/// hard-linked into `md/new/` as `name` (never clobbering: EEXIST is the
/// caller's cue to pick another name) and its tmp name removed. So `new/`
/// never shows a partial copy (a shared Maildir's copy, or a Maildir on
/// another filesystem, EXDEV).
fn copy_exclusive(src: &File, md: &Maildir, name: &str, host: &str) -> io::Result<()> {
    let tmp = md.dir(Sub::Tmp);
    let (out, tmp_name) = create_unique_tmp(md, host, None)?;
    let result = (|| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        loop {
            let n = src.read_at(&mut buf, off)?;
            if n == 0 {
                break;
            }
            (&out).write_all(buf.get(..n).unwrap_or_default())?;
            off += n as u64;
        }
        fsync_timed(|| out.sync_all())?;
        fsat::link_at(tmp, tmp_name.as_str(), md.dir(Sub::New), name)?;
        if fsat::identity_at(md.dir(Sub::New), name)? != fsat::identity(&out)? {
            let _ = fsat::unlink_at(md.dir(Sub::New), name);
            return Err(io::Error::other(format!(
                "{}: tmp file was replaced during delivery",
                md.tmp().join(tmp_name.as_str()).display()
            )));
        }
        Ok(())
    })();
    let _ = fsat::unlink_at(tmp, tmp_name.as_str());
    result
}

/// Remove regular files in `tmp/` not modified for `max_age` (the Maildir spec
/// says 36 hours): leftovers of crashed deliveries; and, after 15 minutes,
/// tmp names of messages already linked into new/. Returns how many went.
/// `tmp/` is the handle opened without following links, so a `tmp` symlinked
/// into another mailbox was refused before we got here.
pub fn sweep_tmp(md: &Maildir, max_age: Duration) -> io::Result<usize> {
    let now = SystemTime::now();
    let tmp = md.dir(Sub::Tmp);
    let mut removed = 0;
    for (name, _) in fsat::list(tmp)? {
        let Ok(st) = fsat::stat_at(tmp, &name) else {
            continue;
        };
        if fsat::file_type(&st) != rustix::fs::FileType::RegularFile {
            continue;
        }
        let mtime =
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(st.st_mtime).unwrap_or(0));
        // A tmp file with other links is a delivered message whose tmp name
        // could not be removed after the commit: only a name, gone after a
        // while (a commit holds such a name for milliseconds).
        let limit = if st.st_nlink > 1 {
            LINKED_MAX_AGE.min(max_age)
        } else {
            max_age
        };
        let old = now.duration_since(mtime).is_ok_and(|age| age > limit);
        if old && fsat::unlink_at(tmp, &name).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// After a crash: remove regular tmp/ files that this host's processes were
/// writing when they died (the pid in the unique name is gone), at once rather
/// than after 36 hours. Files of live processes and of other hosts sharing the
/// store are left alone.
pub fn sweep_orphans(md: &Maildir, host: &str, alive: impl Fn(u32) -> bool) -> io::Result<usize> {
    let host = super::name::sanitize_host(host);
    let me = std::process::id();
    let tmp = md.dir(Sub::Tmp);
    let mut removed = 0;
    for (name, t) in fsat::list(tmp)? {
        let Some((pid, h)) = super::name::writer(&name) else {
            continue;
        };
        if h == host
            && pid != me
            && !alive(pid)
            && fsat::is_regular(tmp, &name, t)
            && fsat::unlink_at(tmp, &name).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// What one sweep of `mail_root` did.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub removed: usize,
    /// POP3 lock files created (Maildirs of earlier versions).
    pub lock_files: usize,
    /// Maildirs not swept because a link or special file sits where one of
    /// their directories belongs.
    pub refused: Vec<io::Error>,
}

/// Sweep every Maildir under `mail_root`: tmp/ files older than `max_age`, and
/// with `orphans` (at start-up) also those of this host's dead writers, and
/// create missing POP3 lock files. Each Maildir is
/// opened by handle without following links; one whose `tmp/` is not a real
/// directory is refused (reported), never swept through.
pub fn sweep_mail_root(
    mail_root: &std::path::Path,
    host: &str,
    max_age: Duration,
    orphans: bool,
    alive: impl Fn(u32) -> bool,
) -> io::Result<SweepReport> {
    let root = fsat::open_dir_path(mail_root)?;
    let mut report = SweepReport::default();
    for (name, t) in fsat::list(std::os::fd::AsFd::as_fd(&root))? {
        if name.starts_with('.') || t.is_some_and(|t| t != rustix::fs::FileType::Directory) {
            continue;
        }
        let md = match Maildir::open_in(
            std::os::fd::AsFd::as_fd(&root),
            &mail_root.join(&name),
            &name,
        ) {
            Ok(md) => md,
            Err(e) if fsat::is_refused(&e) => {
                report.refused.push(e);
                continue;
            }
            Err(_) => continue, // not a Maildir (yet)
        };
        report.removed += sweep_tmp(&md, max_age).unwrap_or(0);
        if orphans {
            report.removed += sweep_orphans(&md, host, &alive).unwrap_or(0);
            // Maildirs made by earlier versions get their POP3 lock file now,
            // while there is disk space, so a login never needs any.
            if super::lock::create_lock_file(&md).unwrap_or(false) {
                report.lock_files += 1;
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::name::{base_name, parse_sizes};
    use std::fs;
    use std::path::Path;

    #[test]
    fn orphans_of_dead_local_writers_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let md = maildir(root.path(), "alice");
        let mk = |pid: u32, host: &str| {
            let n = UniqueName::from_parts(1, 2, pid, 3, 4, host);
            fs::write(md.tmp().join(n.as_str()), b"partial").unwrap();
            n.as_str().to_string()
        };
        let dead = mk(999_999, "mx");
        let live = mk(1, "mx");
        let other_host = mk(999_999, "mx2");
        fs::write(md.tmp().join("not-ours"), b"x").unwrap();
        let n = sweep_orphans(&md, "mx", |pid| pid == 1).unwrap();
        assert_eq!(n, 1);
        assert!(!md.tmp().join(dead).exists());
        assert!(md.tmp().join(live).exists() && md.tmp().join(other_host).exists());
        assert!(md.tmp().join("not-ours").exists());
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn maildir(root: &Path, user: &str) -> Maildir {
        Maildir::ensure(&root.join(user)).unwrap()
    }

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn shared_maildir_gets_group_readable_messages() {
        let root = tempfile::tempdir().unwrap();
        let md = maildir(root.path(), "alice");
        for d in [md.tmp(), md.new_dir()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o2770)).unwrap();
        }
        // Sharing is read when a Maildir is opened (once per delivery).
        let md = Maildir::open(md.path()).unwrap();
        let mut d = Delivery::begin(std::slice::from_ref(&md), "h").unwrap();
        d.write(b"Subject: x\n\nbody\n").unwrap();
        let paths = d.commit(std::slice::from_ref(&md)).unwrap();
        // 0660 less the process umask (the daemon sets 007; tests may run with 022).
        let mode = fs::metadata(&paths[0]).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o700, 0o600);
        assert_eq!(
            mode & 0o040,
            0o040,
            "group must read a shared Maildir's mail: {mode:o}"
        );
    }

    #[test]
    fn ensure_creates_private_dirs_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let md = Maildir::ensure(&t.path().join("a/b/alice")).unwrap();
        let md = Maildir::ensure(md.path()).unwrap();
        for d in [md.path().to_path_buf(), md.tmp(), md.new_dir(), md.cur()] {
            let m = fs::metadata(&d).unwrap();
            assert!(m.is_dir(), "{d:?}");
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d:?}");
        }
        // An existing Maildir missing cur/ gets it.
        fs::remove_dir(md.cur()).unwrap();
        Maildir::ensure(md.path()).unwrap();
        assert!(md.cur().is_dir());
        // A regular file where a directory belongs is an error, not a pass;
        // a symlink there is refused and not followed.
        fs::remove_dir(md.new_dir()).unwrap();
        fs::write(md.new_dir(), b"").unwrap();
        assert!(Maildir::ensure(md.path()).is_err());
        fs::remove_file(md.new_dir()).unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, md.new_dir()).unwrap();
        let e = Maildir::ensure(md.path()).unwrap_err();
        assert!(fsat::is_refused(&e), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    /// `W=` is what LIST reports and RETR sends, however the text is written
    /// in pieces: an unterminated last line gets its CRLF, a lone CR is a
    /// line end.
    #[test]
    fn crlf_size_in_name_matches_the_pop3_encoder() {
        let t = tempfile::tempdir().unwrap();
        let md = maildir(t.path(), "alice");
        for pieces in [
            &[&b"no newline"[..]][..],
            &[b"a\r", b".\nb"],
            &[b"x\r", b"\n.\r"],
            &[b"\r", b"\r", b"\n"],
            &[b""],
        ] {
            let mut d = Delivery::begin(std::slice::from_ref(&md), "h").unwrap();
            for p in pieces {
                d.write(p).unwrap();
            }
            let whole = pieces.concat();
            assert_eq!(
                d.crlf_size(),
                crate::pop3::reply::crlf_size(&whole),
                "{pieces:?}"
            );
            let paths = d.commit(std::slice::from_ref(&md)).unwrap();
            let name = paths[0].file_name().unwrap().to_str().unwrap();
            let (_, w) = parse_sizes(name);
            assert_eq!(w, Some(crate::pop3::reply::crlf_size(&whole)), "{name}");
        }
    }

    #[test]
    fn delivers_exact_bytes_with_sizes_in_name() {
        let t = tempfile::tempdir().unwrap();
        let md = maildir(t.path(), "alice");
        let mut d = Delivery::begin(std::slice::from_ref(&md), "mail.example.org").unwrap();
        let tmp = d.tmp_path().to_path_buf();
        assert_eq!(
            fs::metadata(&tmp).unwrap().permissions().mode() & 0o777,
            0o600
        );
        d.write(b"Subject: hi\n\nline one\r\n").unwrap();
        d.write(b"line two\n").unwrap();
        d.write(b"").unwrap();
        let paths = d.commit(std::slice::from_ref(&md)).unwrap();
        assert_eq!(paths.len(), 1);
        let body = fs::read(&paths[0]).unwrap();
        assert_eq!(body, b"Subject: hi\n\nline one\r\nline two\n");
        let name = paths[0].file_name().unwrap().to_str().unwrap();
        // 3 bare LFs become CRLF; the existing CRLF stays as is.
        assert_eq!(parse_sizes(name), (Some(32), Some(35)));
        assert!(name.contains(".mail.example.org,S=32,W=35"), "{name}");
        assert_eq!(base_name(name), name);
        assert_eq!(paths[0].parent().unwrap(), md.new_dir());
        assert!(!tmp.exists());
        assert!(entries(&md.tmp()).is_empty());
        assert_eq!(
            fs::metadata(&paths[0]).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn independent_reader_sees_the_message() {
        let t = tempfile::tempdir().unwrap();
        let md = maildir(t.path(), "bob");
        let mut d = Delivery::begin(std::slice::from_ref(&md), "h").unwrap();
        d.write(b"From: a@example.org\nSubject: Test 1\n\nHello\n")
            .unwrap();
        let paths = d.commit(std::slice::from_ref(&md)).unwrap();
        let reader = maildir::Maildir::from(md.path().to_path_buf());
        assert_eq!(reader.count_new(), 1);
        let mut entry = reader.list_new().next().unwrap().unwrap();
        assert_eq!(entry.path(), &paths[0]);
        let parsed = entry.parsed().unwrap();
        assert_eq!(parsed.headers.len(), 2);
        assert_eq!(
            parsed
                .headers
                .iter()
                .find(|h| h.get_key() == "Subject")
                .unwrap()
                .get_value(),
            "Test 1"
        );
        assert_eq!(parsed.get_body().unwrap(), "Hello\n");
    }

    #[test]
    fn multi_recipient_is_one_inode() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            maildir(t.path(), "a"),
            maildir(t.path(), "b"),
            maildir(t.path(), "c"),
        );
        let mut d = Delivery::begin(std::slice::from_ref(&a), "h").unwrap();
        d.write(b"x\n").unwrap();
        let paths = d.commit(&[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(paths.len(), 3);
        let ino = fs::metadata(&paths[0]).unwrap().ino();
        for (p, md) in paths.iter().zip([&a, &b, &c]) {
            assert_eq!(p.parent().unwrap(), md.new_dir());
            let m = fs::metadata(p).unwrap();
            assert_eq!(m.ino(), ino);
            // 3 links: the tmp file is gone.
            assert_eq!(m.nlink(), 3);
            assert_eq!(fs::read(p).unwrap(), b"x\n");
        }
        // Same base name everywhere when nothing clashed.
        let names: Vec<_> = paths.iter().map(|p| p.file_name().unwrap()).collect();
        assert!(names.iter().all(|n| *n == names[0]));
        assert!(entries(&a.tmp()).is_empty());
    }

    #[test]
    fn name_clash_picks_another_name_and_never_clobbers() {
        let t = tempfile::tempdir().unwrap();
        let a = maildir(t.path(), "a");
        let mut d = Delivery::begin(std::slice::from_ref(&a), "h").unwrap();
        d.write(b"new\n").unwrap();
        // Plant a file under exactly the name the commit would use.
        let planned = d.name.with_sizes(4, 5);
        let planted = a.new_dir().join(&planned);
        fs::write(&planted, b"old\n").unwrap();
        let paths = d.commit(std::slice::from_ref(&a)).unwrap();
        assert_ne!(paths[0], planted);
        assert_eq!(fs::read(&planted).unwrap(), b"old\n");
        assert_eq!(fs::read(&paths[0]).unwrap(), b"new\n");
        assert_eq!(entries(&a.new_dir()).len(), 2);
    }

    #[test]
    fn failure_leaves_nothing_in_new_and_no_tmp() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (maildir(t.path(), "a"), maildir(t.path(), "b"));
        // Force the second link to fail even as root: `new` is a regular file.
        fs::remove_dir(b.new_dir()).unwrap();
        fs::write(b.new_dir(), b"").unwrap();
        let mut d = Delivery::begin(std::slice::from_ref(&a), "h").unwrap();
        d.write(b"data\n").unwrap();
        let tmp = d.tmp_path().to_path_buf();
        assert!(d.commit(&[a.clone(), b.clone()]).is_err());
        assert!(entries(&a.new_dir()).is_empty());
        assert!(!tmp.exists());
        assert!(entries(&a.tmp()).is_empty());
    }

    #[test]
    fn drop_without_commit_removes_tmp() {
        let t = tempfile::tempdir().unwrap();
        let a = maildir(t.path(), "a");
        let mut d = Delivery::begin(std::slice::from_ref(&a), "h").unwrap();
        d.write(b"partial").unwrap();
        let tmp = d.tmp_path().to_path_buf();
        assert!(tmp.exists());
        drop(d);
        assert!(!tmp.exists());
        assert!(entries(&a.tmp()).is_empty());
        assert!(entries(&a.new_dir()).is_empty());
    }

    #[test]
    fn begin_fails_without_tmp_dir() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("half/new")).unwrap();
        fs::create_dir_all(t.path().join("half/cur")).unwrap();
        assert!(Maildir::open(&t.path().join("half")).is_err());
        assert!(Maildir::open(&t.path().join("missing")).is_err());
    }

    #[test]
    fn sweep_removes_only_old_files() {
        let t = tempfile::tempdir().unwrap();
        let a = maildir(t.path(), "a");
        let old = a.tmp().join("old");
        let fresh = a.tmp().join("fresh");
        fs::write(&old, b"x").unwrap();
        fs::write(&fresh, b"y").unwrap();
        fs::create_dir(a.tmp().join("subdir")).unwrap();
        let past = SystemTime::now() - Duration::from_secs(37 * 3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        // A tmp name of a delivered message (also linked in new/), 20 min old.
        let linked = a.tmp().join("linked");
        fs::write(&linked, b"z").unwrap();
        fs::hard_link(&linked, a.new_dir().join("linked")).unwrap();
        let twenty_min = SystemTime::now() - Duration::from_secs(20 * 60);
        File::options()
            .write(true)
            .open(&linked)
            .unwrap()
            .set_modified(twenty_min)
            .unwrap();
        let n = sweep_tmp(&a, Duration::from_secs(36 * 3600)).unwrap();
        assert_eq!(n, 2);
        assert!(!old.exists() && !linked.exists());
        assert_eq!(fs::read(a.new_dir().join("linked")).unwrap(), b"z");
        assert!(fresh.exists());
        assert!(a.tmp().join("subdir").is_dir());
    }

    #[test]
    fn copy_exclusive_copies_and_refuses_existing() {
        let t = tempfile::tempdir().unwrap();
        let md = maildir(t.path(), "a");
        let src = fsat::create_excl(md.dir(Sub::Tmp), "src", 0o600).unwrap();
        (&src).write_all(b"payload").unwrap();
        copy_exclusive(&src, &md, "dest", "h").unwrap();
        assert_eq!(fs::read(md.new_dir().join("dest")).unwrap(), b"payload");
        // Only the source is left in tmp/: the copy's tmp name is gone.
        assert_eq!(entries(&md.tmp()).len(), 1);
        let e = copy_exclusive(&src, &md, "dest", "h").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(md.new_dir().join("dest")).unwrap(), b"payload");
    }

    #[test]
    fn sweeps_touch_regular_files_only() {
        let t = tempfile::tempdir().unwrap();
        let a = maildir(t.path(), "a");
        let victim = maildir(t.path(), "victim");
        fs::write(victim.cur().join("mail"), b"x").unwrap();
        let past = SystemTime::now() - Duration::from_secs(37 * 3600);
        File::options()
            .write(true)
            .open(victim.cur().join("mail"))
            .unwrap()
            .set_modified(past)
            .unwrap();
        // A symlink in tmp/ to an old file elsewhere, and a FIFO named like a
        // dead writer's file: neither is removed, nor what the link points at.
        std::os::unix::fs::symlink(victim.cur().join("mail"), a.tmp().join("link")).unwrap();
        let n = UniqueName::from_parts(1, 2, 999_999, 3, 4, "mx");
        nix::unistd::mkfifo(
            &a.tmp().join(n.as_str()),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert_eq!(sweep_tmp(&a, Duration::from_secs(36 * 3600)).unwrap(), 0);
        assert_eq!(sweep_orphans(&a, "mx", |_| false).unwrap(), 0);
        assert!(victim.cur().join("mail").exists());
        assert!(a.tmp().join("link").symlink_metadata().is_ok());
        // A tmp/ replaced by a symlink to another mailbox: the Maildir is refused.
        fs::remove_dir_all(a.tmp()).unwrap();
        std::os::unix::fs::symlink(victim.cur(), a.tmp()).unwrap();
        let e = Maildir::open(a.path()).unwrap_err();
        assert!(fsat::is_refused(&e), "{e}");
        assert!(victim.cur().join("mail").exists());
    }

    #[test]
    fn a_swapped_tmp_file_is_not_delivered() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (maildir(t.path(), "a"), maildir(t.path(), "b"));
        let mut d = Delivery::begin(std::slice::from_ref(&a), "h").unwrap();
        d.write(b"real\n").unwrap();
        // The owner of a/ replaces the tmp file with her own before the link.
        let tmp = d.tmp_path();
        fs::remove_file(&tmp).unwrap();
        fs::write(&tmp, b"forged\n").unwrap();
        assert!(d.commit(&[a.clone(), b.clone()]).is_err());
        assert!(entries(&a.new_dir()).is_empty());
        assert!(entries(&b.new_dir()).is_empty());
    }

    #[test]
    fn a_shared_maildir_gets_its_own_copy_never_the_private_inode() {
        let t = tempfile::tempdir().unwrap();
        let (shared, private, other) = (
            maildir(t.path(), "shared"),
            maildir(t.path(), "private"),
            maildir(t.path(), "other"),
        );
        for d in [shared.tmp(), shared.new_dir(), shared.cur()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o2770)).unwrap();
        }
        // Sharing is read when a Maildir is opened (once per delivery).
        let shared = Maildir::open(shared.path()).unwrap();
        assert!(shared.is_shared() && !private.is_shared());
        // The shared Maildir first: staging still goes to a private one.
        let targets = [shared.clone(), private.clone(), other.clone()];
        let mut d = Delivery::begin(&targets, "h").unwrap();
        assert!(d.tmp_path().starts_with(private.path()));
        d.write(b"Subject: x\n\nbody\n").unwrap();
        let paths = d.commit(&targets).unwrap();
        let meta: Vec<fs::Metadata> = paths.iter().map(|p| fs::metadata(p).unwrap()).collect();
        // The private ones share an inode (two links); the shared one is apart.
        assert_eq!(meta[1].ino(), meta[2].ino());
        assert_eq!(meta[1].nlink(), 2);
        assert_ne!(meta[0].ino(), meta[1].ino());
        assert_eq!(meta[0].nlink(), 1);
        assert_eq!(
            meta[1].permissions().mode() & 0o077,
            0,
            "private copy stays 0600"
        );
        assert_eq!(
            meta[0].permissions().mode() & 0o040,
            0o040,
            "group reads its copy"
        );
        for p in &paths {
            assert_eq!(fs::read(p).unwrap(), b"Subject: x\n\nbody\n");
        }
        assert!(entries(&private.tmp()).is_empty() && entries(&shared.tmp()).is_empty());
        // Two shared Maildirs only: staged in the first, a copy for the second.
        let shared2 = maildir(t.path(), "shared2");
        for d in [shared2.tmp(), shared2.new_dir(), shared2.cur()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o2770)).unwrap();
        }
        let shared2 = Maildir::open(shared2.path()).unwrap();
        let targets = [shared.clone(), shared2.clone()];
        let mut d = Delivery::begin(&targets, "h").unwrap();
        d.write(b"y\n").unwrap();
        let paths = d.commit(&targets).unwrap();
        assert_ne!(
            fs::metadata(&paths[0]).unwrap().ino(),
            fs::metadata(&paths[1]).unwrap().ino()
        );
    }
}
