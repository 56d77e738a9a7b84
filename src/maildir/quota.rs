//! Mailbox quotas the Maildir++ way, compatible with Dovecot (`quota = maildir`)
//! and Courier (maildrop, deliverquota): limits come from a Dovecot quota
//! rule (`userdb_quota_rule=*:storage=1G` in the users file), and the usage is
//! kept in `{maildir}/maildirsize`, which all of them read and append to.
//!
//! `maildirsize` (Courier's README.maildirquota; Dovecot's quota-maildir.c):
//! the first line is the definition (`10485760S,1000C`: bytes and messages,
//! `0S` when neither is limited), each further line is `<bytes> <count>` (a
//! delta, possibly negative), and the usage is their sum. Deliveries and
//! removals append one line with a single `O_APPEND` write; when the file is
//! missing, broken, too long, written for another rule or older than a
//! client's change to the mailbox, the usage is counted again from the
//! directories and the file replaced atomically.
//!
//! Only a cache: everything here errs on the side of counting again.
//! Blocking code (async callers use `spawn_blocking`); every file and
//! directory is reached through the Maildir's handles without following
//! symlinks (see `fsat`).
//!
//! What mtimes cannot see: a client's change in the same clock tick as our
//! last write to `maildirsize` (the kernel's coarse clock, a few ms), one made
//! between `usage` and the `add` after a delivery (the append makes the file
//! newer again), and a folder removed whole (its parent is not compared).
//! The Maildir++ over-quota rule (`OVER_QUOTA_TRUST`) bounds the harm: a sum
//! that says "full" is recounted before mail is refused for it.
//!
//! The API: `parse_rule` / `parse_size` (configuration), `usage`,
//! `would_exceed` and `add` (the delivery and POP3 paths), `recalculate`,
//! and the pure `over`, `format_definition`, `parse_definition`, `parse`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::FileType;

use super::name::{UniqueName, parse_sizes};
use super::{Maildir, Sub, deliver, fsat};

/// The quota file in the Maildir's top directory.
pub const FILE_NAME: &str = "maildirsize";

/// A `maildirsize` this long or longer is counted again (Courier reads 5120
/// bytes at most and recalculates when they are all used; Dovecot too).
pub const MAX_FILE_SIZE: usize = 5120;

/// Over quota, a file with more than one delta line or older than this is
/// not trusted and counted again (Maildir++: Courier's `docheckquota`,
/// Dovecot's `MAILDIRSIZE_STALE_SECS`), so a sum gone wrong cannot refuse
/// mail for long.
pub const OVER_QUOTA_TRUST: Duration = Duration::from_secs(15 * 60);

/// The largest limit: `maildirsize` sums are signed 64-bit numbers.
const MAX_LIMIT: u64 = i64::MAX as u64;

/// Limits of a mailbox (the whole Maildir with its folders). `None` is no
/// limit; a limit of 0 in a rule or a file means none too (Dovecot and
/// Courier), so it is stored as `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaRule {
    /// Bytes of mail (the `S=` sizes).
    pub storage: Option<u64>,
    /// Number of messages.
    pub messages: Option<u64>,
}

impl QuotaRule {
    /// Is any limit set?
    pub fn is_limited(&self) -> bool {
        self.storage.is_some() || self.messages.is_some()
    }

    /// The same rule with zero limits spelled as `None`.
    fn normalized(self) -> QuotaRule {
        QuotaRule {
            storage: self.storage.filter(|&n| n != 0),
            messages: self.messages.filter(|&n| n != 0),
        }
    }
}

/// What a mailbox holds: bytes and messages. Reported values are never
/// negative (a sum of deltas gone below zero reads as 0 and is recounted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: i64,
    pub count: i64,
}

impl Usage {
    fn clamped(self) -> Usage {
        Usage {
            bytes: self.bytes.max(0),
            count: self.count.max(0),
        }
    }
}

// ---------------------------------------------------------------------------
// Rules and sizes (pure).
//
// Dovecot's rule syntax and units, as its quota plugin parses them
// (dovecot/core src/plugins/quota/quota-util.c, `quota_rule_parse_limits` and
// `quota_limit_parse`): `storage=N` is in kilobytes (multiplier 1024),
// `bytes=N` in bytes, `messages=N` a count; a unit letter after the number
// (case-insensitive) replaces the multiplier: `b` 1, `k` 1024, `M` 1024²,
// `G` 1024³, `T` 1024⁴ — for `messages` too. `%` is only for rules relative
// to the default rule, and `+`/`-` only for non-default mailbox rules. A
// default rule with a negative limit is refused. `*` is the default rule,
// enforced; `?` is the default used only when no `maildirsize` gives limits.
// Dovecot reads only the first character of the unit (so `10MB` is `10M`);
// here a unit may be followed by `B` (`10MB`), and anything else is refused.

/// Parse the value of `userdb_quota_rule` (Dovecot's `quota_rule`), such as
/// `*:storage=1G`, `*:storage=10M:messages=1000`, `*:bytes=5000` or
/// `*:storage=0` (no limit, still counted).
///
/// Only the `*` mailbox pattern is supported: one limit for the whole Maildir
/// with its folders. Per-mailbox rules (`Trash:storage=+100M`), `?`,
/// `ignore`, percentages, relative values and `backend=` are refused with an
/// error saying so, rather than silently enforcing something else.
pub fn parse_rule(s: &str) -> Result<QuotaRule, String> {
    let s = s.trim();
    let (mask, limits) = s.split_once(':').ok_or_else(|| {
        format!("quota rule {s:?}: expected <mailbox>:<limits>, such as *:storage=1G")
    })?;
    if mask != "*" {
        return Err(format!(
            "quota rule {s:?}: only the \"*\" mailbox pattern (the whole mailbox) \
             is supported, not {mask:?}"
        ));
    }
    if limits == "ignore" || limits.starts_with("backend=") {
        return Err(format!(
            "quota rule {s:?}: {limits:?} is not supported (for no limit write *:storage=0)"
        ));
    }
    let mut rule = QuotaRule::default();
    for item in limits.split(':') {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        let (multiplier, slot) = match key {
            "storage" => (1024, &mut rule.storage),
            "bytes" => (1, &mut rule.storage),
            "messages" => (1, &mut rule.messages),
            _ => {
                return Err(format!(
                    "quota rule {s:?}: unknown limit {key:?} (storage, bytes or messages)"
                ));
            }
        };
        let n = parse_amount(value, multiplier)
            .map_err(|e| format!("quota rule {s:?}: {key}={value}: {e}"))?;
        *slot = (n != 0).then_some(n);
    }
    Ok(rule)
}

/// A size for the configuration: `100` (bytes), `512k`, `10M`, `1G`, `2T`
/// (powers of 1024, case-insensitive, an optional `B` after the unit).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    parse_amount(s, 1).map_err(|e| format!("size {s:?}: {e}"))
}

/// A non-negative number with an optional unit; `multiplier` applies when
/// there is none.
fn parse_amount(value: &str, multiplier: u64) -> Result<u64, String> {
    if value.starts_with(['+', '-']) {
        return Err("relative or negative values are not supported".into());
    }
    let end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, unit) = value.split_at(end);
    if digits.is_empty() {
        return Err("a number is required".into());
    }
    let n: u64 = digits.parse().map_err(|_| "number too large".to_string())?;
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" => multiplier,
        "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        "%" => return Err("percentages are not supported".into()),
        _ => return Err(format!("unknown unit {unit:?} (b, k, M, G or T)")),
    };
    n.checked_mul(multiplier)
        .filter(|&v| v <= MAX_LIMIT)
        .ok_or_else(|| "number too large".to_string())
}

/// Would `u` plus `extra_bytes` and `extra_count` go over a limit of `rule`?
/// Reaching a limit exactly is allowed (Courier and Dovecot alike).
pub fn over(rule: &QuotaRule, u: &Usage, extra_bytes: u64, extra_count: u64) -> bool {
    exceeds(rule.storage, u.bytes, extra_bytes) || exceeds(rule.messages, u.count, extra_count)
}

fn exceeds(limit: Option<u64>, used: i64, extra: u64) -> bool {
    match limit {
        Some(limit) if limit > 0 => i128::from(used.max(0)) + i128::from(extra) > i128::from(limit),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The maildirsize text (pure).

/// The definition line for `rule` (no newline), as Dovecot writes it
/// (`maildirsize_write`): `<bytes>S` when bytes are limited or nothing is
/// (`0S`: never an empty line), then `<count>C`, comma-separated.
pub fn format_definition(rule: &QuotaRule) -> String {
    let rule = rule.normalized();
    let mut parts = Vec::with_capacity(2);
    if rule.storage.is_some() || rule.messages.is_none() {
        parts.push(format!("{}S", rule.storage.unwrap_or(0)));
    }
    if let Some(c) = rule.messages {
        parts.push(format!("{c}C"));
    }
    parts.join(",")
}

/// The limits of a definition line (`10485760S,1000C`, `1000C`, `0S`, in any
/// order; an empty line is no limit). None when it is not one.
pub fn parse_definition(line: &str) -> Option<QuotaRule> {
    let mut rule = QuotaRule::default();
    if line.is_empty() {
        return Some(rule);
    }
    for item in line.split(',') {
        let (digits, slot) = if let Some(d) = item.strip_suffix('S') {
            (d, &mut rule.storage)
        } else if let Some(d) = item.strip_suffix('C') {
            (d, &mut rule.messages)
        } else {
            return None;
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        *slot = (n != 0).then_some(n);
    }
    Some(rule)
}

/// A parsed `maildirsize`, with what `usage` needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    definition: String,
    /// The raw sum of the delta lines (may be negative: then recounted).
    sum: Usage,
    /// How many delta lines there are.
    lines: usize,
}

/// Parse `maildirsize` contents: the definition line and the sum of the
/// delta lines, clamped at zero. A last line without its newline is being
/// written by someone and is left out (as Dovecot does). None when the text
/// is not a `maildirsize` (no complete first line, a NUL byte, a delta line
/// that is not two integers, a sum out of range).
pub fn parse(text: &[u8]) -> Option<(String, Usage)> {
    parse_file(text).map(|p| (p.definition, p.sum.clamped()))
}

fn parse_file(text: &[u8]) -> Option<Parsed> {
    if text.contains(&0) {
        return None;
    }
    // Up to and including the last newline.
    let end = text.iter().rposition(|&b| b == b'\n')?;
    let complete = std::str::from_utf8(text.get(..end)?).ok()?;
    let mut lines = complete.split('\n');
    let definition = lines.next()?.trim_end_matches('\r').to_string();
    let mut sum = Usage::default();
    let mut count = 0;
    for line in lines {
        let (bytes, messages) = parse_delta(line)?;
        sum.bytes = sum.bytes.checked_add(bytes)?;
        sum.count = sum.count.checked_add(messages)?;
        count += 1;
    }
    Some(Parsed {
        definition,
        sum,
        lines: count,
    })
}

/// `<bytes> <count>`, with any spaces around (Courier pads both to 12).
fn parse_delta(line: &str) -> Option<(i64, i64)> {
    let mut fields = line.split_whitespace();
    let bytes = fields.next()?.parse().ok()?;
    let count = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some((bytes, count))
}

// ---------------------------------------------------------------------------
// Counting the mailbox.

/// A modification time in nanoseconds since the epoch: full precision, so a
/// change in the same second as our last write is still seen.
type Stamp = i128;

fn mtime_of(st: &rustix::fs::Stat) -> Stamp {
    i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec)
}

fn mtime(fd: impl AsFd) -> io::Result<Stamp> {
    Ok(mtime_of(&rustix::fs::fstat(fd)?))
}

/// The `new/` and `cur/` directories whose messages count: the Maildir's own
/// and those of each Maildir++ folder (a directory whose name starts with
/// `.`, such as `.Junk` or `.Trash`: Dovecot counts every mailbox, Trash
/// included, unless a rule says `ignore`; Courier leaves out `.Trash` unless
/// built with TRASHQUOTA; we count it, as Dovecot does).
///
/// A folder that is a symlink or not a directory is skipped (Courier skips
/// symlinked folders too), and so is one on another filesystem (a mount the
/// owner made there could stall every call; `Maildir::open_in` refuses the
/// same). `tmp/` never counts.
fn counted_dirs(md: &Maildir) -> io::Result<Vec<OwnedFd>> {
    let mut dirs = vec![
        md.dir(Sub::New).try_clone_to_owned()?,
        md.dir(Sub::Cur).try_clone_to_owned()?,
    ];
    let dev = rustix::fs::fstat(md.root())?.st_dev;
    for (name, t) in fsat::list(md.root())? {
        if !name.starts_with('.') || t.is_some_and(|t| t != FileType::Directory) {
            continue;
        }
        let shown = md.path().join(&name);
        let Some(folder) = open_counted(md.root(), &name, &shown, dev)? else {
            continue;
        };
        for sub in [Sub::New, Sub::Cur] {
            let shown = shown.join(sub.name());
            if let Some(d) = open_counted(folder.as_fd(), sub.name(), &shown, dev)? {
                dirs.push(d);
            }
        }
    }
    Ok(dirs)
}

/// Open directory `name` in `parent` to be counted: None when it is gone,
/// not a directory, a symlink or on another filesystem than `dev`.
fn open_counted(
    parent: BorrowedFd<'_>,
    name: &str,
    shown: &std::path::Path,
    dev: u64,
) -> io::Result<Option<OwnedFd>> {
    match fsat::open_dir_at(parent, name, shown) {
        Ok(fd) if rustix::fs::fstat(&fd)?.st_dev == dev => Ok(Some(fd)),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound || fsat::is_refused(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The messages of one `new/` or `cur/`: regular files not starting with `.`
/// (as the POP3 snapshot sees them), each of the size its name's `S=` gives,
/// else its own (`lstat`). Symlinks, FIFOs, devices and subdirectories the
/// owner planted are not messages and do not count.
fn sum_dir(dir: BorrowedFd<'_>) -> io::Result<Usage> {
    let mut u = Usage::default();
    for (name, t) in fsat::list(dir)? {
        if name.starts_with('.') || t.is_some_and(|t| t != FileType::RegularFile) {
            continue;
        }
        let named = parse_sizes(&name).0;
        let size = match (t, named) {
            (Some(_), Some(s)) => s,
            _ => match fsat::stat_at(dir, &name) {
                Ok(st) if fsat::file_type(&st) == FileType::RegularFile => {
                    named.unwrap_or_else(|| u64::try_from(st.st_size).unwrap_or(0))
                }
                Ok(_) => continue,
                // Moved or removed since the listing: not here any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            },
        };
        u.bytes = u
            .bytes
            .saturating_add(i64::try_from(size).unwrap_or(i64::MAX));
        u.count = u.count.saturating_add(1);
    }
    Ok(u)
}

/// One count of the mailbox: the usage, each counted directory with its
/// mtime taken just before it was listed.
struct Count {
    usage: Usage,
    dirs: Vec<(OwnedFd, Stamp)>,
}

fn count(md: &Maildir) -> io::Result<Count> {
    let mut usage = Usage::default();
    let mut dirs = Vec::new();
    for fd in counted_dirs(md)? {
        let before = mtime(&fd)?;
        let u = sum_dir(fd.as_fd())?;
        usage.bytes = usage.bytes.saturating_add(u.bytes);
        usage.count = usage.count.saturating_add(u.count);
        dirs.push((fd, before));
    }
    Ok(Count { usage, dirs })
}

/// Count every message of the Maildir and its folders (see `counted_dirs`
/// and `sum_dir`), without reading or writing `maildirsize`.
pub fn recalculate(md: &Maildir) -> io::Result<Usage> {
    count(md).map(|c| c.usage)
}

// ---------------------------------------------------------------------------
// Reading, rewriting and appending to maildirsize.

/// A `maildirsize` found trustworthy for `rule` (see `read_valid`).
struct Current {
    usage: Usage,
    lines: usize,
    mtime: Stamp,
}

impl Current {
    /// Over quota a sum is trusted only when it is one recount line younger
    /// than `OVER_QUOTA_TRUST` (Maildir++).
    fn trusted_over_quota(&self) -> bool {
        let trust = i128::try_from(OVER_QUOTA_TRUST.as_nanos()).unwrap_or(i128::MAX);
        self.lines <= 1 && now() - self.mtime < trust
    }
}

fn now() -> Stamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Why `maildirsize` is counted again (for the debug log).
type Reason = &'static str;

/// The usage `maildirsize` gives, or why it must be counted again: missing,
/// not a regular file, `MAX_FILE_SIZE` or longer, unparsable, without a
/// delta line, summing below zero, written for another rule, or stale.
fn read_valid(md: &Maildir, rule: &QuotaRule) -> io::Result<Result<Current, Reason>> {
    let file = match fsat::open_regular(md.root(), FILE_NAME) {
        Ok((file, _)) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err("missing")),
        Err(e) if fsat::is_refused(&e) => return Ok(Err("not a regular file")),
        Err(e) => return Err(e),
    };
    let mut text = Vec::with_capacity(512);
    (&file).take(MAX_FILE_SIZE as u64).read_to_end(&mut text)?;
    if text.len() >= MAX_FILE_SIZE {
        return Ok(Err("too long"));
    }
    let Some(parsed) = parse_file(&text) else {
        return Ok(Err("unparsable"));
    };
    if parsed.lines == 0 {
        return Ok(Err("no usage line"));
    }
    if parsed.sum.bytes < 0 || parsed.sum.count < 0 {
        return Ok(Err("negative sum"));
    }
    if parse_definition(&parsed.definition) != Some(rule.normalized()) {
        return Ok(Err("definition differs from the rule"));
    }
    let written = mtime(&file)?;
    if changed_since(md, written)? {
        return Ok(Err("mailbox changed since"));
    }
    Ok(Ok(Current {
        usage: parsed.sum,
        lines: parsed.lines,
        mtime: written,
    }))
}

/// Has any counted directory changed after `stamp` (a mail client deleted or
/// moved mail, or a folder appeared)? Strictly after: our own delivery links
/// into `new/` first and appends to `maildirsize` second, so the file is
/// never older than the change we accounted for.
fn changed_since(md: &Maildir, stamp: Stamp) -> io::Result<bool> {
    for fd in counted_dirs(md)? {
        if mtime(&fd)? > stamp {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The usage of `md` (the user's top Maildir, with its folders) under
/// `rule`, from `maildirsize` when it can be trusted, else counted again and
/// `maildirsize` rewritten (see `read_valid`). A rule without limits is
/// counted all the same (Dovecot's `*:storage=0`).
pub fn usage(md: &Maildir, rule: &QuotaRule) -> io::Result<Usage> {
    measure(md, rule, 0, 0)
}

/// Would a delivery of `extra_bytes` in `extra_count` messages take `md` over
/// `rule`? Before saying yes from `maildirsize` the mailbox is counted again,
/// unless the file is a fresh recount (Maildir++: `OVER_QUOTA_TRUST`), so a
/// stale sum does not refuse mail.
pub fn would_exceed(
    md: &Maildir,
    rule: &QuotaRule,
    extra_bytes: u64,
    extra_count: u64,
) -> io::Result<bool> {
    let u = measure(md, rule, extra_bytes, extra_count)?;
    Ok(over(rule, &u, extra_bytes, extra_count))
}

fn measure(
    md: &Maildir,
    rule: &QuotaRule,
    extra_bytes: u64,
    extra_count: u64,
) -> io::Result<Usage> {
    let reason = match read_valid(md, rule)? {
        Ok(cur) if !over(rule, &cur.usage, extra_bytes, extra_count) => return Ok(cur.usage),
        Ok(cur) if cur.trusted_over_quota() => return Ok(cur.usage),
        Ok(_) => "over quota by a sum not trusted",
        Err(reason) => reason,
    };
    tracing::debug!(maildir = %md.path().display(), reason, "counting the mailbox for maildirsize");
    rewrite(md, rule)
}

/// Count the mailbox and replace `maildirsize` with the definition of `rule`
/// and the one sum line: written to a new file in `tmp/` (O_EXCL, mode as the
/// Maildir's messages), fsynced, renamed over `maildirsize` (replacing
/// whatever is there, a planted symlink included, never following it).
///
/// Should a counted directory change while it is being counted (a delivery,
/// a client), the count may be off: the new file is then dated 1970 so the
/// next `usage` counts again.
fn rewrite(md: &Maildir, rule: &QuotaRule) -> io::Result<Usage> {
    let counted = count(md)?;
    let u = counted.usage;
    let text = format!("{}\n{} {}\n", format_definition(rule), u.bytes, u.count);
    let file = replace_file(md, text.as_bytes())?;
    let mut changed = false;
    for (fd, before) in &counted.dirs {
        changed |= mtime(fd)? != *before;
    }
    if changed {
        mark_stale(&file)?;
    }
    Ok(u)
}

/// Write `text` to a new file in `tmp/` and rename it onto `maildirsize`;
/// returns the file (now `maildirsize`, unless replaced meanwhile).
fn replace_file(md: &Maildir, text: &[u8]) -> io::Result<File> {
    let tmp = md.dir(Sub::Tmp);
    // A unique name like a delivery's, so the tmp sweeps know whose it is.
    let name = UniqueName::generate(&hostname());
    let mut file = fsat::create_excl(tmp, name.as_str(), deliver::file_mode(md))?;
    let result = file
        .write_all(text)
        .and_then(|()| file.sync_all())
        .and_then(|()| fsat::rename_at(tmp, name.as_str(), md.root(), FILE_NAME));
    if let Err(e) = result {
        if let Err(u) = fsat::unlink_at(tmp, name.as_str()) {
            tracing::warn!(path = %md.tmp().join(name.as_str()).display(), error = %u, "cannot remove a quota file's tmp file; the tmp sweep will");
        }
        return Err(e);
    }
    Ok(file)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Date `file` at the epoch: older than any directory, so the next `usage`
/// counts again.
fn mark_stale(file: &File) -> io::Result<()> {
    let epoch = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let omit = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_OMIT,
    };
    rustix::fs::futimens(
        file,
        &rustix::fs::Timestamps {
            last_access: omit,
            last_modification: epoch,
        },
    )?;
    Ok(())
}

/// Record a change of the mailbox in `maildirsize`: after a delivery
/// (`+size`, `+1`) or a removal (negative), made *after* the change itself so
/// the file stays newer than the directory. One line `"{bytes} {count}\n"`
/// appended with a single `write(2)` on a descriptor opened `O_APPEND`
/// without following a symlink, so concurrent writers (Dovecot, maildrop,
/// another maildird) never interleave.
///
/// Nothing is written when `maildirsize` is missing (the next `usage` counts),
/// when it is `MAX_FILE_SIZE` long or longer, or when its definition is not
/// `rule`'s (the next `usage` rewrites both anyway). Something other than a
/// regular file there is refused (an error naming it; nothing is opened
/// through it). A write that fails halfway dates the file at the epoch so
/// the next `usage` counts again. Errors are for the log: the file is a cache.
pub fn add(md: &Maildir, rule: &QuotaRule, bytes: i64, count: i64) -> io::Result<()> {
    if bytes == 0 && count == 0 {
        return Ok(());
    }
    let file = match fsat::open_regular_append(md.root(), FILE_NAME) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let size = rustix::fs::fstat(&file)?.st_size;
    if usize::try_from(size).map_or(true, |s| s >= MAX_FILE_SIZE) || !defines(&file, rule)? {
        return Ok(());
    }
    let line = format!("{bytes} {count}\n");
    match append_once(&file, line.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = mark_stale(&file);
            Err(e)
        }
    }
}

/// Does the first line of `file` define `rule`'s limits?
fn defines(file: &File, rule: &QuotaRule) -> io::Result<bool> {
    let mut head = [0u8; 128];
    let n = file.read_at(&mut head, 0)?;
    let head = head.get(..n).unwrap_or_default();
    let line = head
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|end| std::str::from_utf8(head.get(..end)?).ok());
    Ok(line.and_then(|l| parse_definition(l.trim_end_matches('\r'))) == Some(rule.normalized()))
}

/// One `write(2)` of all of `line` (retried only when interrupted before
/// writing anything); a short write is an error.
fn append_once(file: &File, line: &[u8]) -> io::Result<()> {
    loop {
        match rustix::io::write(file, line) {
            Ok(n) if n == line.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("{FILE_NAME}: short write ({n} of {} bytes)", line.len()),
                ));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    fn maildir() -> (tempfile::TempDir, Maildir) {
        let t = tempfile::tempdir().unwrap();
        let md = Maildir::ensure(&t.path().join("md")).unwrap();
        (t, md)
    }

    const MB: u64 = 1024 * 1024;

    fn rule(storage: Option<u64>, messages: Option<u64>) -> QuotaRule {
        QuotaRule { storage, messages }
    }

    fn file_text(md: &Maildir) -> String {
        fs::read_to_string(md.path().join(FILE_NAME)).unwrap()
    }

    /// Date the file or directory `path` `secs` seconds in the past (older
    /// than a change made now, whatever the clock's granularity).
    fn age(path: &Path, secs: u64) {
        let then = now() - i128::from(secs) * 1_000_000_000;
        let at = |ns: i128| rustix::fs::Timespec {
            tv_sec: i64::try_from(ns / 1_000_000_000).unwrap(),
            tv_nsec: i64::try_from(ns % 1_000_000_000).unwrap(),
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &rustix::fs::Timestamps {
                last_access: at(then),
                last_modification: at(then),
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    #[test]
    fn rules_table() {
        for (text, want) in [
            ("*:storage=10M", rule(Some(10 * MB), None)),
            ("*:storage=1G", rule(Some(1024 * MB), None)),
            ("*:storage=1g", rule(Some(1024 * MB), None)),
            ("*:storage=1GB", rule(Some(1024 * MB), None)),
            // Plain storage is kilobytes, as in Dovecot.
            ("*:storage=1048576", rule(Some(1024 * MB), None)),
            ("*:storage=100b", rule(Some(100), None)),
            ("*:storage=512k", rule(Some(512 * 1024), None)),
            ("*:storage=2T", rule(Some(2 << 40), None)),
            ("*:bytes=5000", rule(Some(5000), None)),
            ("*:bytes=5k", rule(Some(5120), None)),
            ("*:messages=1000", rule(None, Some(1000))),
            ("*:messages=10k", rule(None, Some(10240))),
            ("*:storage=10M:messages=100", rule(Some(10 * MB), Some(100))),
            ("*:messages=100:bytes=1", rule(Some(1), Some(100))),
            // Zero is no limit; the later of two byte limits wins.
            ("*:storage=0", rule(None, None)),
            ("*:storage=0:messages=0", rule(None, None)),
            ("*:storage=1M:bytes=0", rule(None, None)),
            (" *:storage=1M\n", rule(Some(MB), None)),
        ] {
            assert_eq!(parse_rule(text), Ok(want), "{text:?}");
        }
        for (text, needle) in [
            ("storage=1G", "expected"),
            ("", "expected"),
            ("Trash:storage=+100M", "only the \"*\""),
            ("?:storage=1G", "only the \"*\""),
            ("INBOX:messages=10", "only the \"*\""),
            ("*:ignore", "not supported"),
            ("*:backend=10S", "not supported"),
            ("*:storage=+10M", "relative"),
            ("*:storage=-1", "relative or negative"),
            ("*:storage=10%", "percentages"),
            ("*:storage=", "number is required"),
            ("*:storage", "number is required"),
            ("*:storage=M", "number is required"),
            ("*:storage=10X", "unknown unit"),
            ("*:storage=10MiB", "unknown unit"),
            ("*:storage=1 G", "unknown unit"),
            ("*:storage=99999999999999999999", "too large"),
            ("*:storage=9007199254740992", "too large"),
            ("*:storage=8T:bytes=9223372036854775808", "too large"),
            ("*:size=1G", "unknown limit"),
            ("*:", "unknown limit"),
            ("*:storage=1G:", "unknown limit"),
        ] {
            let e = parse_rule(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        assert!(rule(Some(1), None).is_limited());
        assert!(!rule(None, None).is_limited());
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("100", 100),
            ("0", 0),
            ("512k", 512 * 1024),
            ("512K", 512 * 1024),
            ("10M", 10 * MB),
            ("10MB", 10 * MB),
            ("1G", 1024 * MB),
            ("1t", 1 << 40),
            ("7b", 7),
            (" 3k ", 3072),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text:?}");
        }
        for text in ["", "k", "-1", "+1", "1.5G", "1 G", "1x", "1e3", "20000000T"] {
            assert!(parse_size(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn over_limits() {
        let u = Usage {
            bytes: 90,
            count: 9,
        };
        let r = rule(Some(100), Some(10));
        assert!(!over(&r, &u, 0, 0));
        assert!(!over(&r, &u, 10, 1), "reaching a limit is allowed");
        assert!(over(&r, &u, 11, 1));
        assert!(over(&r, &u, 1, 2));
        assert!(!over(&rule(None, None), &u, u64::MAX, u64::MAX));
        assert!(!over(&rule(Some(0), Some(0)), &u, 1, 1), "zero is no limit");
        assert!(over(
            &rule(Some(100), None),
            &Usage {
                bytes: 101,
                count: 0
            },
            0,
            0
        ));
        // Negative usage counts as zero; no overflow near the top.
        assert!(!over(
            &r,
            &Usage {
                bytes: -50,
                count: -5
            },
            100,
            10
        ));
        assert!(over(
            &rule(Some(MAX_LIMIT), None),
            &Usage {
                bytes: i64::MAX,
                count: 0
            },
            u64::MAX,
            0
        ));
    }

    #[test]
    fn definitions() {
        for (r, text) in [
            (rule(Some(10 * MB), None), "10485760S"),
            (rule(Some(10 * MB), Some(1000)), "10485760S,1000C"),
            (rule(None, Some(1000)), "1000C"),
            (rule(None, None), "0S"),
            (rule(Some(0), Some(0)), "0S"),
        ] {
            assert_eq!(format_definition(&r), text);
            assert_eq!(parse_definition(text), Some(r.normalized()), "{text}");
        }
        assert_eq!(
            parse_definition("1000C,10485760S"),
            Some(rule(Some(10 * MB), Some(1000)))
        );
        assert_eq!(parse_definition("0S,0C"), Some(rule(None, None)));
        assert_eq!(parse_definition(""), Some(rule(None, None)));
        for bad in [
            "10485760", "S", "10M", "10s", "-1S", "1S,", "1S 2C", " 1S", "1S,x",
        ] {
            assert_eq!(parse_definition(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parse_files() {
        let (d, u) = parse(b"10485760S,1000C\n100 2\n-40 -1\n5 1\n").unwrap();
        assert_eq!(d, "10485760S,1000C");
        assert_eq!(
            u,
            Usage {
                bytes: 65,
                count: 2
            }
        );
        // Courier pads with spaces; a partial last line is being written.
        let text = b"1000S\n        1234            3\n  10 1\n77 ";
        assert_eq!(
            parse(text),
            Some((
                "1000S".to_string(),
                Usage {
                    bytes: 1244,
                    count: 4
                }
            ))
        );
        // Clamped at zero when reported; the raw sum tells `usage` to recount.
        let text = b"0S\n10 1\n-20 -2\n";
        assert_eq!(parse(text).unwrap().1, Usage::default());
        assert_eq!(
            parse_file(text).unwrap().sum,
            Usage {
                bytes: -10,
                count: -1
            }
        );
        assert_eq!(parse_file(b"0S\n").unwrap().lines, 0);
        assert_eq!(parse_file(b"0S\n1 1\n2 2\n").unwrap().lines, 2);
        for bad in [
            &b""[..],
            b"0S",
            b"0S\n1\n",
            b"0S\n1 2 3\n",
            b"0S\nx 1\n",
            b"0S\n\n",
            b"0S\n1 1\0\n",
            b"0S\n1.5 1\n",
            b"0S\n9223372036854775807 1\n1 1\n",
            b"\xff\n1 1\n",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    /// Plant an inbox and a folder with messages named with and without `S=`,
    /// plus things that are not messages.
    fn populate(t: &tempfile::TempDir, md: &Maildir) {
        fs::write(md.new_dir().join("1.M1P1.h,S=100,W=104"), b"x").unwrap();
        fs::write(md.cur().join("2.M1P1.h:2,S"), b"12345").unwrap();
        fs::write(md.tmp().join("3.M1P1.h,S=1000"), b"tmp is not counted").unwrap();
        fs::write(md.cur().join(".hidden"), b"not a message").unwrap();
        fs::create_dir(md.cur().join("subdir")).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, vec![b'v'; 4000]).unwrap();
        std::os::unix::fs::symlink(&victim, md.new_dir().join("4.M1P1.link")).unwrap();
        std::os::unix::fs::symlink(&victim, md.cur().join("5.M1P1.link,S=7")).unwrap();
        nix::unistd::mkfifo(
            &md.cur().join("6.M1P1.fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let junk = md.ensure_folder(".Junk").unwrap();
        fs::write(junk.cur().join("7.M1P1.h,S=20:2,S"), b"y").unwrap();
        let trash = md.ensure_folder(".Trash").unwrap();
        fs::write(trash.new_dir().join("8.M1P1.h"), b"abc").unwrap();
        // A folder that is a symlink to another Maildir, and a plain file
        // with a folder's name: neither counts.
        let other = Maildir::ensure(&t.path().join("other")).unwrap();
        fs::write(other.new_dir().join("9.M1P1.h,S=5000"), b"z").unwrap();
        std::os::unix::fs::symlink(other.path(), md.path().join(".Linked")).unwrap();
        fs::write(md.path().join(".NotAFolder"), b"").unwrap();
    }

    /// What `populate` counts: 100 + 5 + 20 + 3 bytes in four messages.
    const POPULATED: Usage = Usage {
        bytes: 128,
        count: 4,
    };

    #[test]
    fn recalculate_counts_inbox_and_folders_only_regular_files() {
        let (t, md) = maildir();
        assert_eq!(recalculate(&md).unwrap(), Usage::default());
        populate(&t, &md);
        assert_eq!(recalculate(&md).unwrap(), POPULATED);
    }

    #[test]
    fn usage_writes_the_file_then_trusts_it() {
        let (t, md) = maildir();
        populate(&t, &md);
        let r = rule(Some(10 * MB), Some(1000));
        assert_eq!(usage(&md, &r).unwrap(), POPULATED);
        assert_eq!(file_text(&md), "10485760S,1000C\n128 4\n");
        let mode = fs::metadata(md.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private like the messages: {mode:o}");
        // No litter in tmp/ besides the planted file.
        let tmp: Vec<_> = fs::read_dir(md.tmp()).unwrap().collect();
        assert_eq!(tmp.len(), 1);
        // Trusted as it is: an extra line counts without a recount.
        fs::write(
            md.path().join(FILE_NAME),
            "10485760S,1000C\n128 4\n1000 1\n",
        )
        .unwrap();
        assert_eq!(
            usage(&md, &r).unwrap(),
            Usage {
                bytes: 1128,
                count: 5
            }
        );
    }

    #[test]
    fn usage_recounts_when_missing_too_long_or_redefined() {
        let (t, md) = maildir();
        populate(&t, &md);
        let path = md.path().join(FILE_NAME);
        let r = rule(Some(10 * MB), None);
        // Missing.
        assert_eq!(usage(&md, &r).unwrap(), POPULATED);
        assert_eq!(file_text(&md), "10485760S\n128 4\n");
        // Too long (5120 bytes or more), though it parses.
        let mut long = String::from("10485760S\n");
        while long.len() < MAX_FILE_SIZE {
            long.push_str("1 0\n");
        }
        fs::write(&path, &long).unwrap();
        assert_eq!(usage(&md, &r).unwrap(), POPULATED);
        assert_eq!(file_text(&md), "10485760S\n128 4\n");
        // Just under the limit: trusted.
        long.truncate(MAX_FILE_SIZE - 4);
        fs::write(&path, &long).unwrap();
        assert!(usage(&md, &r).unwrap().bytes > POPULATED.bytes);
        // The rule changed: rewritten with the new definition.
        let r2 = rule(Some(20 * MB), Some(50));
        assert_eq!(usage(&md, &r2).unwrap(), POPULATED);
        assert_eq!(file_text(&md), "20971520S,50C\n128 4\n");
        // Broken, definition only, negative: recounted.
        for text in [
            "garbage",
            "20971520S,50C\n",
            "20971520S,50C\nx y\n",
            "20971520S,50C\n-500 -5\n",
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(usage(&md, &r2).unwrap(), POPULATED, "{text:?}");
            assert_eq!(file_text(&md), "20971520S,50C\n128 4\n", "{text:?}");
        }
        // A symlink planted as maildirsize is replaced, its target untouched.
        let victim = t.path().join("victim");
        let before = fs::read(&victim).unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        assert_eq!(usage(&md, &r2).unwrap(), POPULATED);
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(fs::read(&victim).unwrap(), before);
    }

    #[test]
    fn a_change_behind_our_back_is_seen() {
        let (_t, md) = maildir();
        fs::write(md.cur().join("1.M1P1.h,S=100:2,S"), b"a").unwrap();
        fs::write(md.cur().join("2.M1P1.h,S=50:2,S"), b"b").unwrap();
        let r = rule(Some(MB), None);
        assert_eq!(
            usage(&md, &r).unwrap(),
            Usage {
                bytes: 150,
                count: 2
            }
        );
        // mutt deletes a message later on.
        age(&md.path().join(FILE_NAME), 5);
        fs::remove_file(md.cur().join("2.M1P1.h,S=50:2,S")).unwrap();
        assert_eq!(
            usage(&md, &r).unwrap(),
            Usage {
                bytes: 100,
                count: 1
            }
        );
        assert_eq!(file_text(&md), "1048576S\n100 1\n");
        // A folder's directory counts too.
        let junk = md.ensure_folder(".Junk").unwrap();
        fs::write(junk.new_dir().join("3.M1P1.h,S=7"), b"c").unwrap();
        age(&md.path().join(FILE_NAME), 5);
        assert_eq!(
            usage(&md, &r).unwrap(),
            Usage {
                bytes: 107,
                count: 2
            }
        );
    }

    #[test]
    fn our_own_add_does_not_make_the_file_stale() {
        let (_t, md) = maildir();
        let r = rule(Some(MB), Some(100));
        assert_eq!(usage(&md, &r).unwrap(), Usage::default());
        // A delivery: linked into new/ (new/ changes), then accounted.
        fs::write(md.new_dir().join("1.M1P1.h,S=10,W=11"), b"0123456789").unwrap();
        add(&md, &r, 10, 1).unwrap();
        // A wrong sum, appended by us: honoured, so nothing was recounted.
        add(&md, &r, 5000, 3).unwrap();
        assert_eq!(file_text(&md), "1048576S,100C\n0 0\n10 1\n5000 3\n");
        assert_eq!(
            usage(&md, &r).unwrap(),
            Usage {
                bytes: 5010,
                count: 4
            }
        );
        // A POP3 removal: unlinked, then accounted with negative numbers.
        fs::remove_file(md.new_dir().join("1.M1P1.h,S=10,W=11")).unwrap();
        add(&md, &r, -10, -1).unwrap();
        add(&md, &r, 0, 0).unwrap();
        assert_eq!(
            usage(&md, &r).unwrap(),
            Usage {
                bytes: 5000,
                count: 3
            }
        );
    }

    #[test]
    fn add_appends_only_to_our_regular_file() {
        let (t, md) = maildir();
        let r = rule(Some(MB), None);
        let path = md.path().join(FILE_NAME);
        // Missing: nothing is created.
        add(&md, &r, 10, 1).unwrap();
        assert!(!path.exists());
        // Another rule's file: left for `usage` to rewrite.
        fs::write(&path, "5S\n0 0\n").unwrap();
        add(&md, &r, 10, 1).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "5S\n0 0\n");
        // A symlink: refused, its target untouched.
        let victim = t.path().join("victim");
        fs::write(&victim, "1048576S\n0 0\n").unwrap();
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = add(&md, &r, 10, 1).unwrap_err();
        assert!(fsat::is_refused(&e), "{e}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "1048576S\n0 0\n");
        // A FIFO: refused without blocking.
        fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = add(&md, &r, 10, 1).unwrap_err();
        assert!(fsat::is_refused(&e), "{e}");
        // Too long already: not grown further.
        fs::remove_file(&path).unwrap();
        let long = format!("1048576S\n{}", "1 0\n".repeat(MAX_FILE_SIZE / 4));
        fs::write(&path, &long).unwrap();
        add(&md, &r, 10, 1).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), long);
    }

    #[test]
    fn over_quota_sums_are_checked_before_refusing() {
        let (_t, md) = maildir();
        fs::write(md.cur().join("1.M1P1.h,S=60:2,S"), b"a").unwrap();
        let r = rule(Some(100), None);
        assert_eq!(usage(&md, &r).unwrap().bytes, 60);
        assert!(!would_exceed(&md, &r, 40, 1).unwrap());
        assert!(would_exceed(&md, &r, 41, 1).unwrap());
        // A wrong delta says "full": with more than one line it is not
        // trusted over quota, so the mailbox is counted again.
        add(&md, &r, 1000, 1).unwrap();
        assert!(!would_exceed(&md, &r, 40, 1).unwrap());
        assert_eq!(file_text(&md), "100S\n60 1\n");
        // A fresh recount is trusted, even over quota...
        fs::write(md.path().join(FILE_NAME), "100S\n1000 1\n").unwrap();
        assert!(would_exceed(&md, &r, 1, 0).unwrap());
        // ...for 15 minutes (the mailbox unchanged for longer still).
        for dir in [md.new_dir(), md.cur()] {
            age(&dir, 2 * OVER_QUOTA_TRUST.as_secs());
        }
        age(&md.path().join(FILE_NAME), OVER_QUOTA_TRUST.as_secs() - 60);
        assert!(would_exceed(&md, &r, 1, 0).unwrap());
        age(&md.path().join(FILE_NAME), OVER_QUOTA_TRUST.as_secs() + 60);
        assert!(!would_exceed(&md, &r, 1, 0).unwrap());
        assert_eq!(file_text(&md), "100S\n60 1\n");
    }

    #[test]
    fn a_count_raced_by_a_change_is_marked_stale() {
        let (_t, md) = maildir();
        let r = rule(None, None);
        assert_eq!(usage(&md, &r).unwrap(), Usage::default());
        let file = fsat::open_regular_append(md.root(), FILE_NAME).unwrap();
        mark_stale(&file).unwrap();
        let st = rustix::fs::fstat(&file).unwrap();
        assert_eq!(mtime_of(&st), 0);
        fs::write(md.new_dir().join("1.M1P1.h,S=3"), b"abc").unwrap();
        assert_eq!(usage(&md, &r).unwrap(), Usage { bytes: 3, count: 1 });
        assert_eq!(file_text(&md), "0S\n3 1\n");
    }
}
