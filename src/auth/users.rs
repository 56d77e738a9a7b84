//! The users database: a Dovecot-compatible passwd-file
//! (`name:{SCHEME}hash:uid:gid:gecos:home:shell:extra`), its lookups, password
//! checks that cost the same for unknown users, and atomic edits for
//! `maildird user add|passwd|del`. Blocking and pure; no tokio, no protocols.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::verify::verify;
use crate::maildir::quota::{self, QuotaRule};

/// What a user may do. Given in the extra field `roles=pop3,submit`;
/// without it a user has `pop3` and `submit`.
///
/// There is no `admin` role: the control socket (`who`, `kick`, `events`) is
/// authorised by its Unix permissions (root and the daemon's group), as
/// Dovecot's doveadm socket is. A file that still says `roles=admin` loads, with
/// a warning (`UserDb::warnings`), and the word grants nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Log in to POP3.
    Pop3,
    /// Authenticate on a submission listener and send mail there.
    Submit,
}

/// The role name of former releases, accepted in the users file and ignored.
pub const REMOVED_ADMIN_ROLE: &str = "admin";

impl Role {
    pub const DEFAULT: [Role; 2] = [Role::Pop3, Role::Submit];

    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "pop3" => Some(Role::Pop3),
            "submit" => Some(Role::Submit),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pop3 => "pop3",
            Role::Submit => "submit",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the users file.
#[derive(Clone, PartialEq, Eq)]
pub struct UserEntry {
    pub name: String,
    /// `{SCHEME}hash` as in the file.
    pub password: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub home: String,
    pub roles: Vec<Role>,
    /// The mailbox quota, from the extra field `userdb_quota_rule=*:storage=1G`
    /// (Dovecot's per-user `quota_rule`; see `quota::parse_rule`). None: no
    /// quota. `*:storage=0` gives a rule without limits (counted, never full).
    pub quota: Option<QuotaRule>,
}

impl UserEntry {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

// Hand-written so the password hash never reaches a log (README, Security: secrets never reach a log).
impl fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserEntry")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("home", &self.home)
            .field("roles", &self.roles)
            .field("quota", &self.quota)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NotFound(String),
}

/// The parsed users file.
#[derive(Debug, Default)]
pub struct UserDb {
    entries: Vec<UserEntry>,
    skipped: Vec<(usize, String)>,
    warnings: Vec<(usize, String)>,
}

/// Verified for unknown names when the database is empty (a hash of random
/// text nobody knows; only its cost matters).
const DUMMY_HASH: &str = "{SHA512-CRYPT}$6$Qm9xZ2hhc3Rsb2$I0fNlmZsrLmN3C4H5FaFgNowtK5iTxyScn2.IXwtNgQeHaNI4gii6thHuis6fIeJ7Fo6CJMYTnq57UIEYU/9d.";

impl UserDb {
    /// A missing file is an empty database (a fresh install before the first
    /// `maildird user add`); any other read error is an error.
    pub fn load(path: &Path) -> Result<UserDb, UsersError> {
        match fs::read_to_string(path) {
            Ok(text) => UserDb::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UserDb::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// Parse passwd-file text. Blank lines and `#` comments are skipped; unknown
    /// extra fields (`userdb_mail=...`) are ignored; a malformed line, an unknown
    /// role or a duplicate name is an error. Names `validate_name` refuses (e.g.
    /// `Alice` or `bob@example.org` from a Dovecot file) cannot become Maildir
    /// paths: those lines are skipped and listed by `skipped()`.
    pub fn parse(text: &str) -> Result<UserDb, UsersError> {
        let mut db = UserDb::default();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let Some(line) = content_line(raw) else {
                continue;
            };
            let err = |msg: String| UsersError::Parse { line: line_no, msg };
            let mut fields = line.splitn(8, ':');
            let name = fields.next().unwrap_or("");
            let Some(password) = fields.next() else {
                return Err(err("expected name:{SCHEME}hash:...".into()));
            };
            if name.is_empty() {
                return Err(err("empty user name".into()));
            }
            if let Err(e) = validate_name(name) {
                db.skipped
                    .push((line_no, format!("user {name:?} skipped: {e}")));
                continue;
            }
            // Dovecot allows numeric ids or system names; only numbers are kept
            // (maildird does not switch uid per user).
            let uid = fields.next().and_then(|s| s.trim().parse().ok());
            let gid = fields.next().and_then(|s| s.trim().parse().ok());
            let _gecos = fields.next();
            let home = fields.next().unwrap_or("").to_string();
            let _shell = fields.next();
            let extra = fields.next().unwrap_or("");
            let (roles, had_admin) = parse_roles(extra).map_err(err)?;
            let quota = parse_quota(extra).map_err(err)?;
            if had_admin {
                db.warnings.push((
                    line_no,
                    format!(
                        "user {name:?}: role \"admin\" has no effect and is ignored \
                         (the control socket is authorised by its Unix permissions; \
                         send postmaster mail to a user with the aliases file)"
                    ),
                ));
            }
            if db.get(name).is_some() {
                return Err(err(format!("user {name:?} is defined twice")));
            }
            db.entries.push(UserEntry {
                name: name.to_string(),
                password: password.to_string(),
                uid,
                gid,
                home,
                roles,
                quota,
            });
        }
        Ok(db)
    }

    pub fn get(&self, name: &str) -> Option<&UserEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Users in file order.
    pub fn iter(&self) -> impl Iterator<Item = &UserEntry> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lines skipped because their names may not become paths: (line, reason).
    pub fn skipped(&self) -> &[(usize, String)] {
        &self.skipped
    }

    /// Lines loaded with something ignored (the removed `admin` role): (line,
    /// message naming the user).
    pub fn warnings(&self) -> &[(usize, String)] {
        &self.warnings
    }

    /// Verify a password; unknown users cost the same as wrong passwords.
    ///
    /// The login name is lowercased first (Dovecot's default
    /// `auth_username_format = %Lu`). For an unknown name the password is
    /// verified against the first user's own hash and the result thrown away, so
    /// the time spent matches the scheme and cost parameters the file really uses.
    pub fn authenticate(&self, name: &str, password: &[u8]) -> Option<UserEntry> {
        let name = name.to_ascii_lowercase();
        match self.get(&name) {
            Some(e) => verify(&e.password, password).then(|| e.clone()),
            None => {
                let dummy = self
                    .entries
                    .first()
                    .map_or(DUMMY_HASH, |e| e.password.as_str());
                let _ = std::hint::black_box(verify(dummy, password));
                None
            }
        }
    }
}

/// The line without its CR, or None for blank lines and comments.
fn content_line(raw: &str) -> Option<&str> {
    let line = raw.strip_suffix('\r').unwrap_or(raw);
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') {
        None
    } else {
        Some(line)
    }
}

/// The user name of a content line (before the first `:`).
fn line_name(raw: &str) -> Option<&str> {
    content_line(raw).map(|l| l.split(':').next().unwrap_or(""))
}

/// Roles from the space-separated extra fields; `roles=` empty means none.
/// The second value says whether the removed `admin` role was listed (it is
/// skipped, so existing files keep loading).
fn parse_roles(extra: &str) -> Result<(Vec<Role>, bool), String> {
    let Some(value) = extra
        .split_whitespace()
        .find_map(|f| f.strip_prefix("roles="))
    else {
        return Ok((Role::DEFAULT.to_vec(), false));
    };
    let mut roles = Vec::new();
    let mut had_admin = false;
    for r in value.split(',').filter(|r| !r.is_empty()) {
        if r.eq_ignore_ascii_case(REMOVED_ADMIN_ROLE) {
            had_admin = true;
            continue;
        }
        let role = Role::parse(r).ok_or_else(|| format!("unknown role {r:?}"))?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    Ok((roles, had_admin))
}

/// The quota rule of the extra field `userdb_quota_rule=` (the first one),
/// if any. Dovecot's further rules (`userdb_quota_rule2=...`, per mailbox)
/// are not read: like other unknown fields, they are ignored.
fn parse_quota(extra: &str) -> Result<Option<QuotaRule>, String> {
    extra
        .split_whitespace()
        .find_map(|f| f.strip_prefix("userdb_quota_rule="))
        .map(quota::parse_rule)
        .transpose()
}

/// A user name that may become a path component and a mailbox.
///
/// 1-64 characters of lowercase ASCII letters, digits, `.`, `_`, `-`; not
/// starting with `.` or `-`; no `..`. Uppercase is refused rather than folded:
/// recipients and logins are lowercased before lookup, so `Alice` and `alice`
/// would otherwise be two Maildirs for one person.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a user name has 1 to 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(*c)))
    {
        return Err(if c.is_ascii_uppercase() {
            "a user name is lowercase".into()
        } else {
            format!("character {c:?} is not allowed in a user name")
        });
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err("a user name may not start with '.' or '-'".into());
    }
    if name.contains("..") {
        return Err("a user name may not contain '..'".into());
    }
    Ok(())
}

/// A hash that fits in the passwd-file's second field.
fn validate_hash(hash: &str) -> Result<(), UsersError> {
    if hash.is_empty() || hash.contains([':', '\n', '\r']) || hash.contains(char::is_whitespace) {
        return Err(UsersError::Invalid(
            "a password hash may not be empty or contain ':' or spaces".into(),
        ));
    }
    Ok(())
}

/// Add a user line (`name:hash::::::roles=...`). Creates the file if missing.
/// With no `roles` given the extra field is left empty: the default roles apply.
pub fn add_user(
    path: &Path,
    name: &str,
    password_hash: &str,
    roles: &[Role],
) -> Result<(), UsersError> {
    validate_name(name).map_err(UsersError::Invalid)?;
    validate_hash(password_hash)?;
    let (mut text, meta) = read_for_edit(path)?;
    UserDb::parse(&text)?;
    if text.lines().any(|l| line_name(l) == Some(name)) {
        return Err(UsersError::Exists(name.to_string()));
    }
    let mut extra = String::new();
    if !roles.is_empty() {
        let mut names: Vec<&str> = Vec::new();
        for r in roles {
            if !names.contains(&r.as_str()) {
                names.push(r.as_str());
            }
        }
        extra = format!("roles={}", names.join(","));
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{name}:{password_hash}::::::{extra}\n"));
    write_atomically(path, &text, meta.as_ref())
}

/// Replace a user's hash, keeping the rest of the line and the file byte-identical.
pub fn set_password(path: &Path, name: &str, password_hash: &str) -> Result<(), UsersError> {
    validate_name(name).map_err(UsersError::Invalid)?;
    validate_hash(password_hash)?;
    let (text, meta) = read_for_edit(path)?;
    UserDb::parse(&text)?;
    let mut found = false;
    let mut out = String::with_capacity(text.len() + password_hash.len());
    for line in text.split_inclusive('\n') {
        if !found && line_name(line) == Some(name) {
            found = true;
            let (body, ending) = split_ending(line);
            let rest = body.get(name.len() + 1..).unwrap_or("");
            out.push_str(name);
            out.push(':');
            out.push_str(password_hash);
            if let Some((_, tail)) = rest.split_once(':') {
                out.push(':');
                out.push_str(tail);
            }
            out.push_str(ending);
        } else {
            out.push_str(line);
        }
    }
    if !found {
        return Err(UsersError::NotFound(name.to_string()));
    }
    write_atomically(path, &out, meta.as_ref())
}

/// Remove a user's line; every other line stays byte-identical.
pub fn delete_user(path: &Path, name: &str) -> Result<(), UsersError> {
    validate_name(name).map_err(UsersError::Invalid)?;
    let (text, meta) = read_for_edit(path)?;
    UserDb::parse(&text)?;
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !found && line_name(line) == Some(name) {
            found = true;
        } else {
            out.push_str(line);
        }
    }
    if !found {
        return Err(UsersError::NotFound(name.to_string()));
    }
    write_atomically(path, &out, meta.as_ref())
}

fn split_ending(line: &str) -> (&str, &str) {
    if let Some(b) = line.strip_suffix("\r\n") {
        (b, "\r\n")
    } else if let Some(b) = line.strip_suffix('\n') {
        (b, "\n")
    } else {
        (line, "")
    }
}

/// The current text and metadata, or empty text when the file does not exist.
fn read_for_edit(path: &Path) -> Result<(String, Option<fs::Metadata>), UsersError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok((text, Some(fs::metadata(path)?))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((String::new(), None)),
        Err(e) => Err(e.into()),
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replace `path` with `text` atomically: write `path.tmp` (same directory, the
/// old file's mode and owner, else 0640), fsync, rename, fsync the directory.
/// The tmp file is created O_EXCL, so it doubles as a lock against a concurrent
/// edit (a stale one left by a crash must be removed by hand: the error says so).
fn write_atomically(path: &Path, text: &str, old: Option<&fs::Metadata>) -> Result<(), UsersError> {
    let tmp = tmp_path(path);
    let mode = old.map_or(0o640, |m| m.permissions().mode() & 0o7777);
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(UsersError::Invalid(format!(
                "{} exists: another edit is in progress, or remove it if stale",
                tmp.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let result = (|| -> io::Result<()> {
        // The umask may have narrowed `mode`: set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(m) = old {
            let mine = file.metadata()?;
            // Keep the daemon's group able to read the file after root edits it.
            if mine.uid() != m.uid() || mine.gid() != m.gid() {
                std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
            }
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA512: &str = "{SHA512-CRYPT}$6$abcdefgh$yVfUwsw5T.JApa8POvClA1pQ5peiq97DUNyXCZN5IrF.BMSkiaLQ5kvpuEm/VQ1Tvh/KV2TcaWh8qinoW5dhA1";

    #[test]
    fn parses_dovecot_files() {
        let text = format!(
            "# users\n\n\
             alice:{SHA512}:1000:1000::/home/alice::userdb_mail=maildir:~/Mail allow_nets=10.0.0.0/8\n\
             bob:{{PLAIN}}pw\n\
             carol:{{PLAIN}}x:::::: roles=admin,pop3\r\n\
             dave:{{PLAIN}}y::::::roles=\n  # indented comment\n\
             eve:{{PLAIN}}z:mail:mail:Eve Example:/var/mail/eve:/bin/false:roles=submit,SUBMIT\n"
        );
        let db = UserDb::parse(&text).unwrap();
        let names: Vec<&str> = db.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol", "dave", "eve"]);
        let a = db.get("alice").unwrap();
        assert_eq!(a.password, SHA512);
        assert_eq!((a.uid, a.gid), (Some(1000), Some(1000)));
        assert_eq!(a.home, "/home/alice");
        assert_eq!(a.roles, Role::DEFAULT);
        let b = db.get("bob").unwrap();
        assert_eq!((b.uid, b.gid, b.home.as_str()), (None, None, ""));
        assert_eq!(b.roles, [Role::Pop3, Role::Submit]);
        // The removed admin role: the line loads, the role is dropped, a warning
        // names the user.
        assert_eq!(db.get("carol").unwrap().roles, [Role::Pop3]);
        assert_eq!(db.get("carol").unwrap().password, "{PLAIN}x");
        assert!(db.get("dave").unwrap().roles.is_empty());
        let e = db.get("eve").unwrap();
        assert_eq!(
            (e.uid, e.roles.as_slice()),
            (None, [Role::Submit].as_slice())
        );
        assert_eq!(e.home, "/var/mail/eve");
        assert!(db.skipped().is_empty());
        assert_eq!(db.warnings().len(), 1, "{:?}", db.warnings());
        let (line, w) = &db.warnings()[0];
        assert_eq!(*line, 5);
        assert!(
            w.contains("\"carol\"") && w.contains("\"admin\" has no effect"),
            "{w}"
        );
        assert_eq!(db.len(), 5);
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, line, needle) in [
            ("alice\n", 1, "expected"),
            ("# c\n:{PLAIN}x\n", 2, "empty"),
            ("a:{PLAIN}x\na:{PLAIN}y\n", 2, "twice"),
            ("a:{PLAIN}x::::::roles=pop3,root\n", 1, "unknown role"),
        ] {
            match UserDb::parse(text) {
                Err(UsersError::Parse { line: l, msg }) => {
                    assert_eq!(l, line, "{text:?}");
                    assert!(msg.contains(needle), "{text:?}: {msg}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn quota_rules_from_the_extra_field() {
        let text = "a:{PLAIN}x::::::userdb_quota_rule=*:storage=1G\n\
                    b:{PLAIN}x::::::roles=pop3 userdb_quota_rule=*:storage=10M:messages=100 userdb_quota_rule2=Trash:storage=+100M\n\
                    c:{PLAIN}x\n\
                    d:{PLAIN}x:1:1::/h::userdb_mail=maildir:~/Mail userdb_quota_rule=*:bytes=0\n";
        let db = UserDb::parse(text).unwrap();
        let q = |n: &str| db.get(n).unwrap().quota;
        assert_eq!(
            q("a"),
            Some(QuotaRule {
                storage: Some(1 << 30),
                messages: None
            })
        );
        assert_eq!(
            q("b"),
            Some(QuotaRule {
                storage: Some(10 << 20),
                messages: Some(100)
            })
        );
        assert_eq!(db.get("b").unwrap().roles, [Role::Pop3]);
        assert_eq!(q("c"), None);
        assert_eq!(q("d"), Some(QuotaRule::default()));
        assert!(format!("{:?}", db.get("a").unwrap()).contains("quota: Some("));
        for (text, needle) in [
            (
                "a:{PLAIN}x::::::userdb_quota_rule=*:storage=1Q\n",
                "unknown unit",
            ),
            (
                "# c\na:{PLAIN}x\nb:{PLAIN}x::::::userdb_quota_rule=Trash:storage=1M\n",
                "only the",
            ),
            ("a:{PLAIN}x::::::userdb_quota_rule=\n", "expected"),
        ] {
            match UserDb::parse(text) {
                Err(UsersError::Parse { line, msg }) => {
                    assert_eq!(line, text.lines().count(), "{text:?}");
                    assert!(msg.contains(needle), "{text:?}: {msg}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn invalid_names_are_skipped_not_loaded() {
        let db =
            UserDb::parse("Alice:{PLAIN}x\nbob@example.org:{PLAIN}y\n../x:{PLAIN}z\nok:{PLAIN}w\n")
                .unwrap();
        assert_eq!(
            db.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["ok"]
        );
        let lines: Vec<usize> = db.skipped().iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1, 2, 3]);
    }

    #[test]
    fn names_table() {
        for (name, ok) in [
            ("alice", true),
            ("a", true),
            ("alice.smith", true),
            ("a_b-c.d9", true),
            ("0day", true),
            (&"a".repeat(64), true),
            (&"a".repeat(65), false),
            ("", false),
            ("Alice", false),
            (".hidden", false),
            ("-opt", false),
            ("a..b", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
            ("a\nb", false),
            ("a\0b", false),
            ("a:b", false),
            ("a+b", false),
            ("a@b", false),
            ("\u{e9}", false),
        ] {
            assert_eq!(validate_name(name).is_ok(), ok, "{name:?}");
        }
    }

    /// Files written for former releases keep loading: `roles=admin` alone
    /// leaves no role (as before: admin granted neither POP3 nor submission).
    #[test]
    fn the_removed_admin_role_is_ignored_with_a_warning() {
        let db = UserDb::parse("root:{PLAIN}r::::::roles=Admin\nbob:{PLAIN}b\n").unwrap();
        assert!(db.get("root").unwrap().roles.is_empty());
        assert_eq!(db.get("bob").unwrap().roles, Role::DEFAULT);
        let lines: Vec<usize> = db.warnings().iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [1]);
        assert!(db.warnings()[0].1.contains("user \"root\""));
    }

    #[test]
    fn roles_parse_and_print() {
        for r in [Role::Pop3, Role::Submit] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("SUBMIT"), Some(Role::Submit));
        assert_eq!(Role::parse("imap"), None);
        // Removed: not a role any more (the file parser skips it with a warning).
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn authenticate_known_unknown_and_case() {
        let db = UserDb::parse(&format!("alice:{SHA512}\nbob:{{PLAIN}}secret\n")).unwrap();
        assert_eq!(db.authenticate("alice", b"password").unwrap().name, "alice");
        assert_eq!(db.authenticate("ALICE", b"password").unwrap().name, "alice");
        assert!(db.authenticate("alice", b"wrong").is_none());
        assert!(db.authenticate("bob", b"secret").is_some());
        assert!(db.authenticate("bob", b"password").is_none());
        // Unknown users are refused even with the password of the dummy (alice's).
        assert!(db.authenticate("mallory", b"password").is_none());
        assert!(db.authenticate("../etc", b"password").is_none());
        assert!(UserDb::default().authenticate("x", b"y").is_none());
    }

    #[test]
    fn debug_redacts_the_hash() {
        let db = UserDb::parse("bob:{PLAIN}hunter2\n").unwrap();
        let s = format!("{:?} {:?}", db.get("bob").unwrap(), db);
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn edits_are_atomic_and_keep_other_lines() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("users");
        // Missing file: created with 0640.
        add_user(&path, "alice", "{PLAIN}a", &[]).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "alice:{PLAIN}a::::::\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );

        let original =
            "# comment  kept\r\nalice:{PLAIN}a:1:2::/h::userdb_x=1 roles=pop3\nzed:{PLAIN}z";
        fs::write(&path, original).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        add_user(
            &path,
            "bob",
            "{PLAIN}b",
            &[Role::Submit, Role::Pop3, Role::Submit],
        )
        .unwrap();
        let after_add = fs::read_to_string(&path).unwrap();
        assert_eq!(
            after_add,
            format!("{original}\nbob:{{PLAIN}}b::::::roles=submit,pop3\n")
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let db = UserDb::load(&path).unwrap();
        assert_eq!(db.get("bob").unwrap().roles, [Role::Submit, Role::Pop3]);

        assert!(matches!(
            add_user(&path, "bob", "{PLAIN}c", &[]),
            Err(UsersError::Exists(_))
        ));
        assert!(matches!(
            add_user(&path, "Bob", "{PLAIN}c", &[]),
            Err(UsersError::Invalid(_))
        ));
        assert!(add_user(&path, "carl", "{PLAIN}a:b", &[]).is_err());
        assert!(add_user(&path, "carl", "", &[]).is_err());

        set_password(&path, "alice", "{PLAIN}new").unwrap();
        let after_pw = fs::read_to_string(&path).unwrap();
        assert_eq!(
            after_pw,
            after_add.replace("alice:{PLAIN}a:1:2", "alice:{PLAIN}new:1:2")
        );
        set_password(&path, "zed", "{PLAIN}zz").unwrap();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .contains("\nzed:{PLAIN}zz\n")
        );
        assert!(matches!(
            set_password(&path, "nobody", "{PLAIN}x"),
            Err(UsersError::NotFound(_))
        ));

        delete_user(&path, "alice").unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# comment  kept\r\nzed:{PLAIN}zz\nbob:{PLAIN}b::::::roles=submit,pop3\n"
        );
        assert!(matches!(
            delete_user(&path, "alice"),
            Err(UsersError::NotFound(_))
        ));
        // No tmp file left behind.
        assert!(!tmp_path(&path).exists());
        let db = UserDb::load(&path).unwrap();
        assert!(db.authenticate("zed", b"zz").is_some());
        assert!(db.get("alice").is_none());
    }

    #[test]
    fn edits_refuse_broken_files_and_concurrent_edits() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("users");
        fs::write(&path, "a:{PLAIN}x::::::roles=wizard\n").unwrap();
        assert!(matches!(
            add_user(&path, "b", "{PLAIN}y", &[]),
            Err(UsersError::Parse { line: 1, .. })
        ));
        fs::write(&path, "a:{PLAIN}x\n").unwrap();
        fs::write(tmp_path(&path), "stale").unwrap();
        let e = add_user(&path, "b", "{PLAIN}y", &[]).unwrap_err();
        assert!(e.to_string().contains("users.tmp exists"), "{e}");
        // The stale file is not ours to remove, and the users file is untouched.
        assert_eq!(fs::read_to_string(tmp_path(&path)).unwrap(), "stale");
        assert_eq!(fs::read_to_string(&path).unwrap(), "a:{PLAIN}x\n");
    }
}
