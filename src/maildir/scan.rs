//! Reading a Maildir shared with mutt (maildird(8), MAILDIR and POP3): the POP3 login
//! snapshot of `new/` + `cur/` in delivery order, UIDLs from base names, finding a
//! message by base name wherever mutt moved it, removal and the seen flag.
//! Only regular files are messages; everything goes through the Maildir's
//! directory handles (see `fsat`). Blocking; async callers use `spawn_blocking`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{Maildir, Sub, fsat};

/// One message of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The unique name without the `:info` part: the message's identity.
    pub base: String,
    /// Where the file was at snapshot time: `new/` or `cur/`, and its name there.
    pub sub: Sub,
    pub name: String,
    /// Octets with CRLF line endings, exactly what RETR sends (without stuffing).
    pub size: u64,
}

impl Entry {
    /// Its path at snapshot time, for logs.
    pub fn path(&self, md: &Maildir) -> PathBuf {
        md.path().join(self.sub.name()).join(&self.name)
    }
}

/// Passes over the directories before the last listing is used even if files
/// are still arriving or moving.
const MAX_PASSES: usize = 5;

/// The base name: everything before the first `:` (the Maildir info separator).
pub fn base_of(name: &str) -> &str {
    name.split_once(':').map_or(name, |(b, _)| b)
}

/// One listing: (sub, name) of regular non-dot files in new/ and cur/, sorted.
fn list(md: &Maildir) -> io::Result<Vec<(Sub, String)>> {
    let mut out = Vec::new();
    for sub in [Sub::New, Sub::Cur] {
        let dir = md.dir(sub);
        for (name, t) in fsat::list(dir)? {
            if name.starts_with('.') || !fsat::is_regular(dir, &name, t) {
                continue;
            }
            out.push((sub, name));
        }
    }
    out.sort();
    Ok(out)
}

/// The login snapshot: all messages of `new/` and `cur/`, in delivery order.
/// Listed until two consecutive passes agree (mutt may be renaming), at most
/// `MAX_PASSES` times.
pub fn snapshot(md: &Maildir) -> io::Result<Vec<Entry>> {
    let mut last = list(md)?;
    for _ in 1..MAX_PASSES {
        let next = list(md)?;
        let stable = next == last;
        last = next;
        if stable {
            break;
        }
    }
    let mut keyed = Vec::with_capacity(last.len());
    for (sub, name) in last {
        let base = base_of(&name).to_string();
        let size = match size_from_name(&base) {
            Some(s) => s,
            None => match file_crlf_size(md, sub, &name) {
                Ok(s) => s,
                // Removed, moved or swapped for a non-file since the listing:
                // not part of this snapshot.
                Err(e) if e.kind() == io::ErrorKind::NotFound || fsat::is_refused(&e) => {
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let key = match delivery_time(&base) {
            Some(t) => t,
            None => match fsat::stat_at(md.dir(sub), &name) {
                Ok(st) => (
                    u64::try_from(st.st_mtime).unwrap_or(0),
                    st.st_mtime_nsec / 1000,
                ),
                Err(_) => (0, 0),
            },
        };
        keyed.push((
            key,
            name.clone(),
            Entry {
                base,
                sub,
                name,
                size,
            },
        ));
    }
    keyed.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    // A base listed twice (moved new/ -> cur/ during the passes) is one message.
    let mut seen = std::collections::HashSet::new();
    Ok(keyed
        .into_iter()
        .map(|(_, _, e)| e)
        .filter(|e| seen.insert(e.base.clone()))
        .collect())
}

/// (seconds, microseconds) from a name `sec.M<usec>...` (ours, Dovecot's), or
/// (seconds, 0) from any `sec.` name (qmail, mutt).
fn delivery_time(base: &str) -> Option<(u64, u64)> {
    let (sec, rest) = base.split_once('.')?;
    if sec.is_empty() || !sec.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec = sec.parse().ok()?;
    let usec = rest
        .strip_prefix('M')
        .map(|r| {
            let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(0)
        })
        .unwrap_or(0);
    Some((sec, usec))
}

/// The `,W=<n>` field of a unique name (Dovecot and maildird write it): the size
/// with CRLF line endings.
fn size_from_name(base: &str) -> Option<u64> {
    base.split(',')
        .skip(1)
        .filter_map(|f| f.strip_prefix("W="))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|v| v.parse().ok())
        .last()
}

/// Open message `name` in `sub` for reading: a regular file only (see
/// `fsat::open_regular`); the size is the descriptor's, not the name's.
pub fn open_message(md: &Maildir, sub: Sub, name: &str) -> io::Result<(File, u64)> {
    fsat::open_regular(md.dir(sub), name)
}

use crate::crlf::CrlfSize;

/// The CRLF size of a message file, streamed (see `crlf_size_of`).
pub fn file_crlf_size(md: &Maildir, sub: Sub, name: &str) -> io::Result<u64> {
    let (f, len) = open_message(md, sub, name)?;
    crlf_size_of(f.take(len))
}

/// The CRLF size (`CrlfSize`) of a byte stream.
pub fn crlf_size_of(mut r: impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = CrlfSize::default();
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => size.feed(buf.get(..got).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(size.total())
}

/// RFC 1939 §7 unique-id: the base name when it is 1-70 characters in 0x21-0x7E,
/// else a hex SHA-256 of it (64 characters), stable across mutt's renames.
pub fn uidl(base: &str) -> String {
    if (1..=70).contains(&base.len()) && base.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return base.to_string();
    }
    Sha256::digest(base.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the message `base` is now: `new/base`, or any regular file in `new/`
/// or `cur/` whose base name is `base` (mutt moves to `cur/` and appends
/// `:2,FLAGS`).
pub fn find(md: &Maildir, base: &str) -> Option<(Sub, String)> {
    if base.is_empty() || base.contains('/') || base.starts_with('.') {
        return None;
    }
    if fsat::is_regular(md.dir(Sub::New), base, None) {
        return Some((Sub::New, base.to_string()));
    }
    for sub in [Sub::New, Sub::Cur] {
        let dir = md.dir(sub);
        let Ok(names) = fsat::list(dir) else { continue };
        for (name, t) in names {
            if base_of(&name) == base && fsat::is_regular(dir, &name, t) {
                return Some((sub, name));
            }
        }
    }
    None
}

/// All names per base name in `new/` and `cur/` (one directory read each).
fn index(md: &Maildir) -> io::Result<HashMap<String, Vec<(Sub, String)>>> {
    let mut map: HashMap<String, Vec<(Sub, String)>> = HashMap::new();
    for sub in [Sub::New, Sub::Cur] {
        let dir = md.dir(sub);
        for (name, t) in fsat::list(dir)? {
            // Messages are regular files; a directory under a message's name
            // must not make UPDATE stop halfway.
            if !name.starts_with('.') && fsat::is_regular(dir, &name, t) {
                map.entry(base_of(&name).to_string())
                    .or_default()
                    .push((sub, name));
            }
        }
    }
    Ok(map)
}

/// POP3 UPDATE: unlink the messages `msgs` where the session last saw them
/// (by name: a listing of a network filesystem can miss a file for a moment,
/// e.g. GlusterFS while it heals the directory), else wherever their base
/// name is now (mutt moved them), tolerating ones already gone; every message
/// is tried even after a failure, then `new/` and `cur/` are fsynced so the
/// removals that happened are durable. An error says how many messages could
/// not be removed.
/// (An entry the owner swapped for a link is left alone: not a message.)
pub fn remove_messages(md: &Maildir, msgs: &[Entry]) -> io::Result<()> {
    if msgs.is_empty() {
        return Ok(());
    }
    let mut map: Option<HashMap<String, Vec<(Sub, String)>>> = None;
    let mut failed = 0usize;
    let mut first: Option<io::Error> = None;
    for m in msgs {
        let dir = md.dir(m.sub);
        if fsat::is_regular(dir, &m.name, None) {
            match fsat::unlink_at(dir, &m.name) {
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                    continue;
                }
            }
        }
        // Not where the session saw it: list new/ and cur/ once for all
        // such messages.
        let names = match &mut map {
            Some(names) => names,
            None => match index(md) {
                Ok(i) => map.insert(i),
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                    continue;
                }
            },
        };
        let base = &m.base;
        let mut found = names.get(base).cloned().unwrap_or_default();
        // Moved between the directory read and the unlink: look once more.
        let mut retried = false;
        while let Some((sub, name)) = found.pop() {
            match fsat::unlink_at(md.dir(sub), &name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !retried {
                        retried = true;
                        if let Some(q) = find(md, base) {
                            found.push(q);
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    first.get_or_insert(e);
                }
            }
        }
    }
    let mut synced = Ok(());
    for sub in [Sub::New, Sub::Cur] {
        if let Err(e) = md.sync(sub) {
            synced = Err(e);
        }
    }
    match first {
        Some(e) => Err(io::Error::new(
            e.kind(),
            format!("{failed} of {} messages not removed: {e}", msgs.len()),
        )),
        None => synced,
    }
}

/// Mark `base` seen for mutt: move it to `cur/base:2,<flags>` with `S` added
/// (flags kept sorted, unknown ones kept). Returns where it is now, or None when
/// the message is gone or carries info that is not `2,` (left alone).
pub fn mark_seen(md: &Maildir, base: &str) -> io::Result<Option<(Sub, String)>> {
    for _ in 0..2 {
        let Some((sub, name)) = find(md, base) else {
            return Ok(None);
        };
        let flags = match name.split_once(':') {
            None => String::new(),
            Some((_, info)) => match info.strip_prefix("2,") {
                Some(f) => f.to_string(),
                None => return Ok(None),
            },
        };
        let mut chars: Vec<char> = flags.chars().collect();
        if !chars.contains(&'S') {
            chars.push('S');
        }
        chars.sort_unstable();
        chars.dedup();
        let to = format!("{base}:2,{}", chars.iter().collect::<String>());
        if sub == Sub::Cur && to == name {
            return Ok(Some((sub, name)));
        }
        match fsat::rename_at(md.dir(sub), &name, md.dir(Sub::Cur), &to) {
            Ok(()) => return Ok(Some((Sub::Cur, to))),
            // Mutt moved it meanwhile: look again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::time::UNIX_EPOCH;

    fn maildir() -> (tempfile::TempDir, Maildir) {
        let t = tempfile::tempdir().unwrap();
        let md = Maildir::ensure(&t.path().join("md")).unwrap();
        (t, md)
    }

    #[test]
    fn uidl_rules() {
        let short = "1700000000.M1P2Q3R4.host,S=10,W=12";
        assert_eq!(uidl(short), short);
        let long = "x".repeat(71);
        let u = uidl(&long);
        assert_eq!(u.len(), 64);
        assert!(u.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(uidl(&"x".repeat(70)), "x".repeat(70));
        assert_ne!(uidl("a b"), "a b");
        assert_eq!(uidl("a b").len(), 64);
        assert_eq!(uidl("").len(), 64);
        assert_eq!(uidl(&long), u, "stable");
    }

    #[test]
    fn names() {
        assert_eq!(base_of("a.b:2,S"), "a.b");
        assert_eq!(base_of("a.b"), "a.b");
        assert_eq!(
            delivery_time("1700000000.M123P4.h"),
            Some((1700000000, 123))
        );
        assert_eq!(delivery_time("1700000000.4_5.h"), Some((1700000000, 0)));
        assert_eq!(delivery_time("abc.M1"), None);
        assert_eq!(size_from_name("1.M1P1.h,S=10,W=12"), Some(12));
        assert_eq!(size_from_name("1.M1P1.h,S=10"), None);
        assert_eq!(size_from_name("1.M1P1.h,W=x"), None);
    }

    #[test]
    fn file_size_matches_the_pop3_encoder() {
        let (_t, md) = maildir();
        for body in [
            &b""[..],
            b"a\nb\n",
            b"a\r\nb\n",
            b"no newline",
            b".\n..\n",
            b"\r",
            b"x\r\n",
            b"a\r.\nb",
            b"\r.\r\n",
            b"cr\r\r\n",
            b"x\r",
            b"\n\r",
        ] {
            let p = md.new_dir().join("m");
            fs::write(&p, body).unwrap();
            assert_eq!(
                file_crlf_size(&md, Sub::New, "m").unwrap(),
                crate::pop3::reply::crlf_size(body),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn snapshot_orders_sizes_and_skips() {
        let (_t, md) = maildir();
        fs::write(md.cur().join("1700000002.M5P1.h:2,S"), b"c\n").unwrap();
        fs::write(md.new_dir().join("1700000001.M900P1.h,S=2,W=99"), b"b\n").unwrap();
        fs::write(md.new_dir().join("1700000001.M10P1.h"), b"a\nb\n").unwrap();
        fs::write(md.new_dir().join(".hidden"), b"x").unwrap();
        fs::create_dir(md.cur().join("subdir")).unwrap();
        let s = snapshot(&md).unwrap();
        let got: Vec<(&str, u64)> = s.iter().map(|e| (e.base.as_str(), e.size)).collect();
        assert_eq!(
            got,
            vec![
                ("1700000001.M10P1.h", 6),
                ("1700000001.M900P1.h,S=2,W=99", 99),
                ("1700000002.M5P1.h", 3),
            ]
        );
        assert_eq!(
            (s[2].sub, s[2].name.as_str()),
            (Sub::Cur, "1700000002.M5P1.h:2,S")
        );
    }

    #[test]
    fn snapshot_falls_back_to_mtime_then_name() {
        let (_t, md) = maildir();
        let old = md.new_dir().join("zzz-foreign");
        fs::write(&old, b"x\n").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(UNIX_EPOCH + std::time::Duration::from_secs(1000))
            .unwrap();
        fs::write(md.new_dir().join("1700000000.M1P1.h"), b"y\n").unwrap();
        let s = snapshot(&md).unwrap();
        assert_eq!(s[0].base, "zzz-foreign");
        assert_eq!(s[1].base, "1700000000.M1P1.h");
    }

    #[test]
    fn moved_message_is_found_deleted_and_keeps_its_uidl() {
        let (_t, md) = maildir();
        let base = "1700000000.M1P1Q1R1.host,S=2,W=3";
        fs::write(md.new_dir().join(base), b"a\n").unwrap();
        let keep = "1700000001.M1P1Q2R1.host,S=2,W=3";
        fs::write(md.new_dir().join(keep), b"b\n").unwrap();
        let s = snapshot(&md).unwrap();
        let before = uidl(&s[0].base);
        // mutt reads it: new/ -> cur/ with flags.
        fs::rename(
            md.new_dir().join(base),
            md.cur().join(format!("{base}:2,S")),
        )
        .unwrap();
        let again = snapshot(&md).unwrap();
        assert_eq!(uidl(&again[0].base), before);
        assert_eq!(find(&md, base), Some((Sub::Cur, format!("{base}:2,S"))));
        let gone = Entry {
            base: "gone.already".into(),
            sub: Sub::New,
            name: "gone.already".into(),
            size: 1,
        };
        remove_messages(&md, &[s[0].clone(), gone]).unwrap();
        assert_eq!(find(&md, base), None);
        assert!(md.new_dir().join(keep).exists());
        assert_eq!(snapshot(&md).unwrap().len(), 1);
    }

    #[test]
    fn mark_seen_moves_and_keeps_flags() {
        let (_t, md) = maildir();
        fs::write(md.new_dir().join("1.M1P1.h"), b"a\n").unwrap();
        let p = mark_seen(&md, "1.M1P1.h").unwrap();
        assert_eq!(p, Some((Sub::Cur, "1.M1P1.h:2,S".to_string())));
        assert!(md.cur().join("1.M1P1.h:2,S").exists());
        assert!(!md.new_dir().join("1.M1P1.h").exists());
        fs::write(md.cur().join("2.M1P1.h:2,Tax"), b"b\n").unwrap();
        mark_seen(&md, "2.M1P1.h").unwrap();
        assert!(md.cur().join("2.M1P1.h:2,STax").exists());
        // Already seen: unchanged.
        mark_seen(&md, "1.M1P1.h").unwrap();
        assert!(md.cur().join("1.M1P1.h:2,S").exists());
        // Unknown info version: left alone.
        fs::write(md.cur().join("3.M1P1.h:1,x"), b"c\n").unwrap();
        assert_eq!(mark_seen(&md, "3.M1P1.h").unwrap(), None);
        assert!(md.cur().join("3.M1P1.h:1,x").exists());
        assert_eq!(mark_seen(&md, "4.gone").unwrap(), None);
    }

    #[test]
    fn only_regular_files_are_messages() {
        let (t, md) = maildir();
        let victim = t.path().join("victim");
        fs::write(&victim, b"secret\n").unwrap();
        fs::write(md.new_dir().join("1.M1P1.real"), b"mine\n").unwrap();
        std::os::unix::fs::symlink(&victim, md.new_dir().join("2.M1P1.link")).unwrap();
        std::os::unix::fs::symlink(&victim, md.cur().join("3.M1P1.link:2,S")).unwrap();
        nix::unistd::mkfifo(
            &md.cur().join("4.M1P1.fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let s = snapshot(&md).unwrap();
        let bases: Vec<&str> = s.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(bases, ["1.M1P1.real"]);
        assert_eq!(find(&md, "2.M1P1.link"), None);
        assert_eq!(find(&md, "4.M1P1.fifo"), None);
        // Swapped for a link after the snapshot: opening refuses it.
        fs::remove_file(md.new_dir().join("1.M1P1.real")).unwrap();
        std::os::unix::fs::symlink(&victim, md.new_dir().join("1.M1P1.real")).unwrap();
        let e = open_message(&md, Sub::New, "1.M1P1.real").unwrap_err();
        assert!(fsat::is_refused(&e), "{e}");
        // The FIFO is refused without blocking, and removal unlinks links, not targets.
        let e = open_message(&md, Sub::Cur, "4.M1P1.fifo").unwrap_err();
        assert!(fsat::is_refused(&e), "{e}");
        remove_messages(&md, &s).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"secret\n");
        // The link at the message's name is left alone too.
        assert!(fs::symlink_metadata(md.new_dir().join("1.M1P1.real")).is_ok());
    }
}
