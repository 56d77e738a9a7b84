//! The offline admin commands: `check-config`, `user add|passwd|del|list` and
//! `hash-password`. They edit files directly (atomically) and need no daemon.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;

use crate::auth::users::{self, Role, UserDb};
use crate::auth::{validate_name, verify};
use crate::backend::recipients::Aliases;
use crate::cli::UserCommand;
use crate::config::Config;
use crate::error::CommandError;
use crate::maildir::{Maildir, Sub, fsat};
use crate::output;

fn config_err(e: impl std::fmt::Display) -> CommandError {
    CommandError::Config(e.to_string())
}

fn runtime_err(e: impl std::fmt::Display) -> CommandError {
    CommandError::Runtime(e.to_string())
}

/// `check-config`: validate, then print the effective config. Problems that
/// do not stop the daemon (no users, users who can never log in, aliases
/// pointing at nobody) are warnings on stderr; the exit status stays 0.
pub fn check_config(path: &Path) -> Result<(), CommandError> {
    let config = Config::load(path).map_err(config_err)?;
    let tls = crate::filter::chains::load_tls(&config).map_err(config_err)?;
    crate::filter::chains::build(&config, &crate::filter::chains::registry(tls.as_ref()))
        .map_err(config_err)?;
    let users = UserDb::load(&config.users_file)
        .map_err(|e| config_err(format!("{}: {e}", config.users_file.display())))?;
    let mut warnings = user_warnings(&config.users_file, &users);
    if let Some(a) = config.aliases_file.as_ref().filter(|a| a.exists()) {
        let aliases = Aliases::load(a).map_err(|e| config_err(format!("{}: {e}", a.display())))?;
        warnings.extend(alias_warnings(a, &aliases, &users));
    }
    for w in warnings {
        output::note(&format!("warning: {w}"));
    }
    output::print(&config.to_toml())?;
    Ok(())
}

/// An empty users file, ignored lines, and users whose password scheme
/// cannot be verified (they can never log in).
fn user_warnings(file: &Path, users: &UserDb) -> Vec<String> {
    let file = file.display();
    let mut out = Vec::new();
    if users.is_empty() {
        out.push(format!(
            "{file}: no users (add one with `maildird user add`)"
        ));
    }
    for (line, name) in users.skipped() {
        out.push(format!(
            "{file}:{line}: user name {name:?} is not valid here; line ignored"
        ));
    }
    for (line, warning) in users.warnings() {
        out.push(format!("{file}:{line}: {warning}"));
    }
    for u in users.iter().filter(|u| !verify::is_supported(&u.password)) {
        out.push(format!(
            "{file}: user {:?}: password scheme {{{}}} is not supported, so this user \
             cannot log in (set a new password with `maildird user passwd`)",
            u.name,
            verify::scheme(&u.password)
        ));
    }
    out
}

/// Alias targets that are no user (aliases name users only), and aliases left
/// with no target at all, whose mail is refused.
fn alias_warnings(file: &Path, aliases: &Aliases, users: &UserDb) -> Vec<String> {
    let file = file.display();
    let mut out = Vec::new();
    for (alias, targets) in aliases.iter() {
        let missing: Vec<&String> = targets.iter().filter(|t| users.get(t).is_none()).collect();
        if missing.is_empty() {
            continue;
        }
        out.push(if missing.len() == targets.len() {
            format!(
                "{file}: alias {alias:?} points at nobody: {missing:?} {} no user; \
                 mail to it is refused",
                if missing.len() == 1 { "is" } else { "are" }
            )
        } else {
            format!("{file}: alias {alias:?}: {missing:?} is no user; skipped when delivering")
        });
    }
    out
}

/// `hash-password`.
pub fn hash_password(password_stdin: bool) -> Result<(), CommandError> {
    let pw = read_password(password_stdin)?;
    output::print(&format!("{}\n", verify::hash_password(pw.as_bytes())))?;
    Ok(())
}

/// `user ...`.
pub fn user(path: &Path, cmd: UserCommand) -> Result<(), CommandError> {
    let config = Config::load(path).map_err(config_err)?;
    let file = &config.users_file;
    match cmd {
        UserCommand::Add {
            name,
            password_stdin,
            roles,
            unix_group,
        } => {
            validate_name(&name)
                .map_err(|e| config_err(format!("invalid user name {name:?}: {e}")))?;
            let roles = parse_roles(&roles)?;
            let pw = read_password(password_stdin)?;
            let hash = verify::hash_password(pw.as_bytes());
            let existed = file.exists();
            users::add_user(file, &name, &hash, &roles).map_err(config_err)?;
            if !existed {
                readable_by_service_group(&config, file);
            }
            // A Maildir kept from a former user may hold links its owner
            // planted: opened by handle, refused (with what was found) rather
            // than followed, so root never chowns or chmods a link's target.
            let path = config.mail_root.join(&name);
            let md = Maildir::ensure(&path).map_err(|e| {
                if fsat::is_refused(&e) {
                    runtime_err(format!(
                        "{e}; inspect the Maildir and remove it or repair it by hand"
                    ))
                } else {
                    runtime_err(format!("creating {}: {e}", path.display()))
                }
            })?;
            check_owners(&config, &md)?;
            hand_to_service_user(&config, &md);
            if let Some(group) = unix_group {
                share_with_group(&config.mail_root, &md, &group)?;
            }
            output::print(&format!("added {name}; Maildir {}\n", md.path().display()))?;
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            validate_name(&name)
                .map_err(|e| config_err(format!("invalid user name {name:?}: {e}")))?;
            let pw = read_password(password_stdin)?;
            users::set_password(file, &name, &verify::hash_password(pw.as_bytes()))
                .map_err(config_err)?;
            output::print(&format!("password changed for {name}\n"))?;
        }
        UserCommand::Del { name } => {
            validate_name(&name)
                .map_err(|e| config_err(format!("invalid user name {name:?}: {e}")))?;
            users::delete_user(file, &name).map_err(config_err)?;
            output::print(&format!("removed {name} (Maildir kept)\n"))?;
        }
        UserCommand::List { json } => {
            let db =
                UserDb::load(file).map_err(|e| config_err(format!("{}: {e}", file.display())))?;
            output::print(&user_list(&db, json)?)?;
        }
    }
    Ok(())
}

/// One user of `user list --json`.
#[derive(Debug, serde::Serialize)]
struct UserView<'a> {
    name: &'a str,
    roles: Vec<&'static str>,
}

/// `user list`: `name<TAB>role,role` lines, or one JSON array.
fn user_list(db: &UserDb, json: bool) -> Result<String, CommandError> {
    let users: Vec<UserView<'_>> = db
        .iter()
        .map(|u| UserView {
            name: &u.name,
            roles: u.roles.iter().map(|r| r.as_str()).collect(),
        })
        .collect();
    if json {
        return Ok(serde_json::to_string(&users).map_err(runtime_err)? + "\n");
    }
    Ok(users
        .iter()
        .map(|u| format!("{}\t{}\n", u.name, u.roles.join(",")))
        .collect())
}

fn parse_roles(names: &[String]) -> Result<Vec<Role>, CommandError> {
    if names.is_empty() {
        return Ok(vec![Role::Pop3, Role::Submit]);
    }
    names
        .iter()
        .flat_map(|n| n.split(','))
        .map(|n| {
            if n.trim().eq_ignore_ascii_case(users::REMOVED_ADMIN_ROLE) {
                return Err(config_err(
                    "there is no role \"admin\": who, kick and events are for root and \
                     members of the daemon's group (the control socket's permissions)",
                ));
            }
            Role::parse(n.trim())
                .ok_or_else(|| config_err(format!("unknown role {n:?} (pop3, submit)")))
        })
        .collect()
}

/// A users file created by root is 0640 root:GROUP so the daemon, after dropping
/// privileges, can re-read it on SIGHUP (as Dovecot's passwd-file is).
fn readable_by_service_group(config: &Config, file: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Ok(Some(g)) = nix::unistd::Group::from_name(&config.group) {
        if let Err(e) = nix::unistd::chown(file, None, Some(g.gid)) {
            output::note(&format!("warning: chgrp {}: {e}", file.display()));
        }
    }
}

/// The Maildir's directory and its `tmp/ new/ cur/`, as handles with names.
fn maildir_handles(md: &Maildir) -> [(std::os::fd::BorrowedFd<'_>, std::path::PathBuf); 4] {
    [
        (md.root(), md.path().to_path_buf()),
        (md.dir(Sub::Tmp), md.tmp()),
        (md.dir(Sub::New), md.new_dir()),
        (md.dir(Sub::Cur), md.cur()),
    ]
}

/// Before root changes anything: each directory of the Maildir must belong to
/// root (just created) or to the service user. A former owner could have
/// moved a directory of someone else's into her Maildir; that is refused.
fn check_owners(config: &Config, md: &Maildir) -> Result<(), CommandError> {
    let me = nix::unistd::geteuid().as_raw();
    let service = nix::unistd::User::from_name(&config.user)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw());
    for (fd, p) in maildir_handles(md) {
        let uid = rustix::fs::fstat(fd)
            .map_err(|e| runtime_err(format!("{}: {e}", p.display())))?
            .st_uid;
        if uid != me && uid != 0 && Some(uid) != service {
            return Err(runtime_err(format!(
                "{} belongs to uid {uid}, not to {} or {}; refusing to change it \
                 (inspect the Maildir and repair it by hand)",
                p.display(),
                config.user,
                if me == 0 {
                    "root".to_string()
                } else {
                    format!("uid {me}")
                }
            )));
        }
    }
    Ok(())
}

/// Run as root, `user add` makes the new Maildir (and mail_root) belong to the
/// service user, which delivers into it after dropping privileges. The Maildir
/// is changed through its handles (`fchown`), never through a path.
fn hand_to_service_user(config: &Config, md: &Maildir) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let (Ok(Some(u)), Ok(Some(g))) = (
        nix::unistd::User::from_name(&config.user),
        nix::unistd::Group::from_name(&config.group),
    ) else {
        output::note(&format!(
            "warning: service user {}:{} not found; {} stays owned by root",
            config.user,
            config.group,
            md.path().display()
        ));
        return;
    };
    // mail_root is the admin's own directory (created by us or by the package).
    if let Err(e) = nix::unistd::chown(&config.mail_root, Some(u.uid), Some(g.gid)) {
        output::note(&format!(
            "warning: chown {}: {e}",
            config.mail_root.display()
        ));
    }
    for (fd, p) in maildir_handles(md) {
        if let Err(e) = fsat::chown_chmod(fd, Some(u.uid.as_raw()), Some(g.gid.as_raw()), None) {
            output::note(&format!("warning: chown {}: {e}", p.display()));
        }
    }
    // The POP3 lock file made with the Maildir: the daemon opens it to lock.
    let lock = md.path().join(crate::maildir::lock::LOCK_NAME);
    match fsat::open_regular_rw(md.root(), crate::maildir::lock::LOCK_NAME) {
        Ok(f) => {
            use std::os::fd::AsFd;
            if let Err(e) =
                fsat::chown_chmod(f.as_fd(), Some(u.uid.as_raw()), Some(g.gid.as_raw()), None)
            {
                output::note(&format!("warning: chown {}: {e}", lock.display()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => output::note(&format!("warning: {}: {e}", lock.display())),
    }
}

/// The ownership model for sharing with mutt: the Maildir stays owned by the
/// service user, its group becomes `group` and its directories 2770 (setgid, so
/// files mutt creates keep the group); deliveries into it are then 0660.
fn share_with_group(mail_root: &Path, md: &Maildir, group: &str) -> Result<(), CommandError> {
    use std::os::unix::fs::PermissionsExt;
    let g = nix::unistd::Group::from_name(group)
        .map_err(runtime_err)?
        .ok_or_else(|| config_err(format!("unknown Unix group {group:?}")))?;
    // The group's members must be able to traverse mail_root to reach the Maildir
    // (search permission only: they still cannot list the other mailboxes).
    let meta = std::fs::metadata(mail_root)
        .map_err(|e| runtime_err(format!("{}: {e}", mail_root.display())))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o001 == 0 {
        std::fs::set_permissions(mail_root, std::fs::Permissions::from_mode(mode | 0o001))
            .map_err(|e| runtime_err(format!("chmod {}: {e}", mail_root.display())))?;
    }
    for (fd, p) in maildir_handles(md) {
        fsat::chown_chmod(fd, None, Some(g.gid.as_raw()), Some(0o2770))
            .map_err(|e| runtime_err(format!("chgrp/chmod {}: {e}", p.display())))?;
    }
    Ok(())
}

/// A password from stdin (`--password-stdin`: the first line) or typed at the
/// terminal without echo.
fn read_password(from_stdin: bool) -> Result<String, CommandError> {
    let stdin = std::io::stdin();
    let tty = !from_stdin && stdin.is_terminal();
    if !from_stdin && !tty {
        return Err(config_err(
            "no terminal to ask for the password: use --password-stdin",
        ));
    }
    let saved = if tty {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "Password: ").and_then(|()| err.flush());
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let old = tcgetattr(stdin.as_fd()).map_err(runtime_err)?;
        let mut quiet = old.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &quiet).map_err(runtime_err)?;
        Some(old)
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(old) = saved {
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &old);
        output::note("");
    }
    read.map_err(runtime_err)?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(config_err("empty password"));
    }
    Ok(pw)
}

/// The control socket of the config's daemon; the config file may be absent
/// (then the default path is used), so `who` works without reading secrets.
fn control_path(path: &Path) -> Result<std::path::PathBuf, CommandError> {
    if path.exists() {
        Ok(Config::load(path).map_err(config_err)?.control_socket)
    } else {
        Ok(Config::parse("", "defaults")
            .map_err(config_err)?
            .control_socket)
    }
}

fn client_runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(runtime_err)
}

fn reply_error(e: String) -> CommandError {
    runtime_err(format!("the daemon said: {e}"))
}

/// `who [--json]`.
/// `status`: the daemon's metrics, summed up (or all of them with `--json`).
pub fn status(path: &Path, json: bool) -> Result<(), CommandError> {
    use crate::control::server::{Reply, Request};
    let sock = control_path(path)?;
    let reply = client_runtime()?
        .block_on(crate::control::client::request(&sock, &Request::Status))
        .map_err(runtime_err)?;
    let text = match reply {
        Reply::Metrics(t) => t,
        Reply::Error(e) => return Err(reply_error(e)),
        other => return Err(runtime_err(format!("unexpected reply {other:?}"))),
    };
    let samples = crate::status::parse(&text);
    output::print(&if json {
        crate::status::to_json(&samples).to_string() + "\n"
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        crate::status::summary(&samples, now)
    })?;
    Ok(())
}

pub fn who(path: &Path, json: bool) -> Result<(), CommandError> {
    use crate::control::server::{Reply, Request};
    let sock = control_path(path)?;
    let reply = client_runtime()?
        .block_on(crate::control::client::request(&sock, &Request::Who))
        .map_err(runtime_err)?;
    let sessions = match reply {
        Reply::Sessions(s) => s,
        Reply::Error(e) => return Err(reply_error(e)),
        other => return Err(runtime_err(format!("unexpected reply {other:?}"))),
    };
    output::print(&if json {
        serde_json::to_string(&sessions).map_err(runtime_err)? + "\n"
    } else {
        who_table(&sessions)
    })?;
    Ok(())
}

/// `who` without `--json`: a header and one line per session.
fn who_table(sessions: &[crate::control::SessionView]) -> String {
    let mut out = format!(
        "{:<6} {:<10} {:<10} {:<22} {:<16} {:<14} {:<13} {:<25} BYTES(in/out per layer)\n",
        "ID", "PROTOCOL", "LISTENER", "PEER", "REAL IP", "USER", "STATE", "SINCE"
    );
    for s in sessions {
        let bytes: Vec<String> = s
            .bytes
            .iter()
            .map(|b| format!("{}:{}/{}", b.layer, b.bytes_in, b.bytes_out))
            .collect();
        out.push_str(&format!(
            "{:<6} {:<10} {:<10} {:<22} {:<16} {:<14} {:<13} {:<25} {}\n",
            s.id,
            s.protocol,
            s.listener,
            s.peer.as_deref().unwrap_or("-"),
            s.real_ip.as_deref().unwrap_or("-"),
            s.user.as_deref().unwrap_or("-"),
            s.state,
            s.since,
            bytes.join(" ")
        ));
    }
    out
}

/// `kick ID | --user NAME | --ip ADDR`.
pub fn kick(
    path: &Path,
    id: Option<u64>,
    user: Option<String>,
    ip: Option<std::net::IpAddr>,
) -> Result<(), CommandError> {
    use crate::control::KickTarget;
    use crate::control::server::{Reply, Request};
    let target = match (id, user, ip) {
        (Some(id), _, _) => KickTarget::Id(id),
        (_, Some(u), _) => KickTarget::User(u),
        (_, _, Some(ip)) => KickTarget::Ip(ip),
        _ => return Err(config_err("kick needs an ID, --user or --ip")),
    };
    let sock = control_path(path)?;
    let reply = client_runtime()?
        .block_on(crate::control::client::request(
            &sock,
            &Request::Kick { target },
        ))
        .map_err(runtime_err)?;
    match reply {
        Reply::Kicked(0) => Err(runtime_err("no session matched")),
        Reply::Kicked(n) => {
            output::print(&format!(
                "kicked {n} session{}\n",
                if n == 1 { "" } else { "s" }
            ))?;
            Ok(())
        }
        Reply::Error(e) => Err(reply_error(e)),
        other => Err(runtime_err(format!("unexpected reply {other:?}"))),
    }
}

/// `events [--json]`: print events as they happen until the daemon closes the
/// stream or the user interrupts.
pub fn events(path: &Path, json: bool) -> Result<(), CommandError> {
    let sock = control_path(path)?;
    client_runtime()?.block_on(async {
        let mut events = crate::control::client::events(&sock)
            .await
            .map_err(runtime_err)?;
        output::note(&format!(
            "maildird: following session events on {} (interrupt to stop)",
            sock.display()
        ));
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(runtime_err)?;
            let line = if json {
                serde_json::to_string(&ev).map_err(runtime_err)?
            } else {
                event_text(&ev)
            };
            // Written and flushed per event so `maildird events | grep` follows
            // live; a reader that went away ends the command normally.
            if output::print(&(line + "\n"))? == output::Reader::Gone {
                return Ok(());
            }
        }
        Ok(())
    })
}

/// The text form of one event: its time, then `key=value` words.
fn event_text(ev: &crate::control::Event) -> String {
    use crate::control::quoted;
    let mut words = vec![
        ev.time.clone(),
        format!("session={}", ev.session),
        format!("event={}", ev.event.as_str()),
        format!("protocol={}", ev.protocol),
        format!("peer={}", ev.peer.as_deref().unwrap_or("-")),
        format!(
            "user={}",
            ev.user.as_deref().map(quoted).unwrap_or_else(|| "-".into())
        ),
    ];
    words.extend(ev.fields.to_words());
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Event, EventFields, EventKind};

    #[test]
    fn event_text_is_key_value_words() {
        let ev = Event {
            time: "2026-01-01T00:00:00Z".into(),
            session: 3,
            event: EventKind::Delivery,
            protocol: "smtp".into(),
            peer: Some("127.0.0.1:5000".into()),
            user: None,
            fields: EventFields {
                recipients: Some(1),
                size: Some(406),
                ..EventFields::default()
            },
        };
        assert_eq!(
            event_text(&ev),
            "2026-01-01T00:00:00Z session=3 event=delivery protocol=smtp \
             peer=127.0.0.1:5000 user=- recipients=1 size=406"
        );
    }

    #[test]
    fn user_list_text_and_json() {
        let db = UserDb::parse("alice:{PLAIN}x::::::roles=pop3\nbob:{PLAIN}y\n").unwrap();
        let text = user_list(&db, false).unwrap();
        assert!(text.starts_with("alice\tpop3\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&user_list(&db, true).unwrap()).unwrap();
        assert_eq!(json[0]["name"], "alice");
        assert_eq!(json[0]["roles"], serde_json::json!(["pop3"]));
        assert_eq!(json.as_array().unwrap().len(), 2);
        let empty = UserDb::parse("").unwrap();
        assert_eq!(user_list(&empty, true).unwrap(), "[]\n");
    }

    #[test]
    fn warnings_name_unsupported_schemes_and_dangling_aliases() {
        let users = UserDb::parse("alice:{PLAIN}x\nold:{MD5-CRYPT}$1$a$b\n").unwrap();
        let w = user_warnings(Path::new("users"), &users);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("\"old\"") && w[0].contains("{MD5-CRYPT}"),
            "{w:?}"
        );
        let aliases =
            Aliases::parse("postmaster: alice\nsales: alice, carol\nghost: dave\n").unwrap();
        let w = alias_warnings(Path::new("aliases"), &aliases, &users);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("\"ghost\" points at nobody"), "{w:?}");
        assert!(
            w[1].contains("\"sales\"") && w[1].contains("carol"),
            "{w:?}"
        );
    }
}
