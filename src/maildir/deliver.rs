//! Durable delivery into Maildir (DESIGN.md §2.1): write `tmp/<unique>` (O_EXCL,
//! 0600), `fsync`, hard-link into each recipient's `new/` without clobbering,
//! `fsync` every `new/`, then unlink the tmp file. Only after `commit` returns Ok
//! may SMTP answer 250; on any failure nothing is left in any `new/`.
//!
//! Blocking std::fs code: async callers use `spawn_blocking`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::Maildir;
use super::name::UniqueName;
use super::scan::CrlfSize;

/// Maildir files are private to the mailbox owner.
const FILE_MODE: u32 = 0o600;
const SHARED_FILE_MODE: u32 = 0o660;
const DIR_MODE: u32 = 0o700;
/// Tries at a fresh unique name when one is taken (only a clock step backwards,
/// pid reuse or a foreign writer can collide).
const NAME_ATTEMPTS: usize = 8;

/// One message being written to `tmp/`. Dropping it uncommitted removes the tmp file.
#[derive(Debug)]
pub struct Delivery {
    /// `None` once committed (or while the file is being torn down).
    file: Option<BufWriter<File>>,
    tmp_path: PathBuf,
    host: String,
    name: UniqueName,
    /// Bytes written (the `S=` field).
    bytes: u64,
    /// The size on the POP3 wire (`W=`).
    wire: CrlfSize,
}

impl Delivery {
    /// Create `tmp/<unique>` in `first` (O_CREAT|O_EXCL, mode 0600, or 0660 when
    /// the Maildir is shared with a Unix group: see `shared_file_mode`).
    pub fn begin(first: &Maildir, host: &str) -> io::Result<Delivery> {
        let tmp_dir = first.tmp();
        let mode = file_mode_for(&tmp_dir);
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let name = UniqueName::generate(host);
            let tmp_path = tmp_dir.join(name.as_str());
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp_path)
            {
                Ok(file) => {
                    return Ok(Delivery {
                        file: Some(BufWriter::with_capacity(64 * 1024, file)),
                        tmp_path,
                        host: host.to_string(),
                        name,
                        bytes: 0,
                        wire: CrlfSize::default(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no unique tmp name")))
    }

    /// The tmp file being written.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
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
            .and_then(|()| file.get_ref().sync_all())
            .and_then(|()| self.link_all(targets));
        drop(file);
        // The tmp file goes in every case: on success the links hold the data;
        // on failure `link_all` already removed what it linked. A failed unlink
        // after success only leaves litter for `sweep_tmp`.
        let _ = fs::remove_file(&self.tmp_path);
        result
    }

    fn link_all(&self, targets: &[Maildir]) -> io::Result<Vec<PathBuf>> {
        let final_name = self.name.with_sizes(self.bytes, self.crlf_size());
        let mut linked: Vec<PathBuf> = Vec::with_capacity(targets.len());
        let result = (|| {
            for md in targets {
                let path = self.link_one(md, &final_name)?;
                linked.push(path);
            }
            // RFC 5321 §6.1 ("it MUST NOT lose the message"): the links are
            // durable only once each `new/` directory itself is on disk.
            for md in targets {
                sync_dir(&md.new_dir())?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(linked),
            Err(e) => {
                for p in &linked {
                    let _ = fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    /// Link (never clobbering) the tmp file into `md/new/`; on a name clash pick a
    /// fresh unique name; across filesystems copy and fsync instead.
    fn link_one(&self, md: &Maildir, final_name: &str) -> io::Result<PathBuf> {
        let new_dir = md.new_dir();
        let mut name = final_name.to_string();
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let dest = new_dir.join(&name);
            match fs::hard_link(&self.tmp_path, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                    match copy_exclusive(&self.tmp_path, &dest) {
                        Ok(()) => return Ok(dest),
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

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Uncommitted: discard buffered bytes without writing them.
            let (f, _) = file.into_parts();
            drop(f);
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

/// A Maildir whose directories grant their group read+write (set up by
/// `maildird user add --unix-group`, mode 2770) is shared with a Unix account that
/// runs mutt: its messages are created 0660 so the group can read them.
pub fn file_mode_for(dir: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    match fs::metadata(dir) {
        Ok(m) if m.permissions().mode() & 0o060 == 0o060 => SHARED_FILE_MODE,
        _ => FILE_MODE,
    }
}

/// Copy `src` to a new file `dest` (O_EXCL, 0600) and fsync it (link across
/// filesystems, EXDEV). A partial copy is removed.
fn copy_exclusive(src: &Path, dest: &Path) -> io::Result<()> {
    let mode = dest.parent().map(file_mode_for).unwrap_or(FILE_MODE);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)?;
    let result = File::open(src)
        .and_then(|mut input| io::copy(&mut input, &mut out))
        .and_then(|_| out.sync_all());
    if result.is_err() {
        let _ = fs::remove_file(dest);
    }
    result
}

/// fsync a directory so entries created or removed in it survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create the Maildir and its `tmp/`, `new/`, `cur/` (mode 0700) when missing,
/// and fsync the directories whose entries changed.
pub fn ensure_maildir(md: &Maildir) -> io::Result<()> {
    let root = md.path();
    let mut created_root = false;
    if !root.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(root)?;
        created_root = true;
    }
    let mut created_sub = false;
    for sub in [md.tmp(), md.new_dir(), md.cur()] {
        match DirBuilder::new().mode(DIR_MODE).create(&sub) {
            Ok(()) => created_sub = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && sub.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    if created_sub {
        sync_dir(root)?;
    }
    if created_root {
        if let Some(parent) = root.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Remove regular files in `tmp/` not modified for `max_age` (the Maildir spec
/// says 36 hours): leftovers of crashed deliveries. Returns how many went.
pub fn sweep_tmp(md: &Maildir, max_age: Duration) -> io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(md.tmp())? {
        let entry = entry?;
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > max_age);
        if old && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// After a crash: remove tmp/ files that this host's processes were writing
/// when they died (the pid in the unique name is gone), at once rather than
/// after 36 hours. Files of live processes and of other hosts sharing the store
/// are left alone.
pub fn sweep_orphans(md: &Maildir, host: &str, alive: impl Fn(u32) -> bool) -> io::Result<usize> {
    let host = super::name::sanitize_host(host);
    let me = std::process::id();
    let mut removed = 0;
    for entry in fs::read_dir(md.tmp())? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((pid, h)) = name.to_str().and_then(super::name::writer) else {
            continue;
        };
        if h == host && pid != me && !alive(pid) && fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildir::name::{base_name, parse_sizes};

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
        let md = Maildir::new(root.join(user));
        ensure_maildir(&md).unwrap();
        md
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
        let mut d = Delivery::begin(&md, "h").unwrap();
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
        assert_eq!(file_mode_for(&root.path().join("missing")), FILE_MODE);
    }

    #[test]
    fn ensure_creates_private_dirs_and_is_idempotent() {
        let t = tempfile::tempdir().unwrap();
        let md = Maildir::new(t.path().join("a/b/alice"));
        ensure_maildir(&md).unwrap();
        ensure_maildir(&md).unwrap();
        for d in [md.path().to_path_buf(), md.tmp(), md.new_dir(), md.cur()] {
            let m = fs::metadata(&d).unwrap();
            assert!(m.is_dir(), "{d:?}");
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d:?}");
        }
        // An existing Maildir missing cur/ gets it.
        fs::remove_dir(md.cur()).unwrap();
        ensure_maildir(&md).unwrap();
        assert!(md.cur().is_dir());
        // A regular file where a directory belongs is an error, not a pass.
        fs::remove_dir(md.new_dir()).unwrap();
        fs::write(md.new_dir(), b"").unwrap();
        assert!(ensure_maildir(&md).is_err());
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
            let mut d = Delivery::begin(&md, "h").unwrap();
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
        let mut d = Delivery::begin(&md, "mail.example.org").unwrap();
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
        let mut d = Delivery::begin(&md, "h").unwrap();
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
        let mut d = Delivery::begin(&a, "h").unwrap();
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
        let mut d = Delivery::begin(&a, "h").unwrap();
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
        let mut d = Delivery::begin(&a, "h").unwrap();
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
        let mut d = Delivery::begin(&a, "h").unwrap();
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
        let md = Maildir::new(t.path().join("missing"));
        assert!(Delivery::begin(&md, "h").is_err());
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
        let n = sweep_tmp(&a, Duration::from_secs(36 * 3600)).unwrap();
        assert_eq!(n, 1);
        assert!(!old.exists());
        assert!(fresh.exists());
        assert!(a.tmp().join("subdir").is_dir());
    }

    #[test]
    fn copy_exclusive_copies_and_refuses_existing() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let dest = t.path().join("dest");
        fs::write(&src, b"payload").unwrap();
        copy_exclusive(&src, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"payload");
        let e = copy_exclusive(&src, &dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&dest).unwrap(), b"payload");
    }
}
