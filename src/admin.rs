//! The offline admin commands: `check-config`, `user add|passwd|del|list` and
//! `hash-password`. They edit files directly (atomically) and need no daemon.

use std::io::{BufRead, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;

use crate::auth::users::{self, Role, UserDb};
use crate::auth::{validate_name, verify};
use crate::cli::UserCommand;
use crate::config::Config;
use crate::error::CommandError;
use crate::maildir::{Maildir, Sub, fsat};

fn config_err(e: impl std::fmt::Display) -> CommandError {
    CommandError::Config(e.to_string())
}

fn runtime_err(e: impl std::fmt::Display) -> CommandError {
    CommandError::Runtime(e.to_string())
}

/// `check-config`: validate, then print the effective config.
pub fn check_config(path: &Path) -> Result<(), CommandError> {
    let config = Config::load(path).map_err(config_err)?;
    let tls = crate::filter::chains::load_tls(&config).map_err(config_err)?;
    crate::filter::chains::build(&config, &crate::filter::chains::registry(tls.as_ref()))
        .map_err(config_err)?;
    let users = UserDb::load(&config.users_file)
        .map_err(|e| config_err(format!("{}: {e}", config.users_file.display())))?;
    if users.is_empty() {
        eprintln!(
            "warning: {}: no users (add one with `maildird user add`)",
            config.users_file.display()
        );
    }
    for (line, name) in users.skipped() {
        eprintln!(
            "warning: {}:{line}: user name {name:?} is not valid here; line ignored",
            config.users_file.display()
        );
    }
    for (line, warning) in users.warnings() {
        eprintln!("warning: {}:{line}: {warning}", config.users_file.display());
    }
    if let Some(a) = config.aliases_file.as_ref().filter(|a| a.exists()) {
        crate::backend::recipients::Aliases::load(a)
            .map_err(|e| config_err(format!("{}: {e}", a.display())))?;
    }
    print!("{}", config.to_toml());
    Ok(())
}

/// `hash-password`.
pub fn hash_password(password_stdin: bool) -> Result<(), CommandError> {
    let pw = read_password(password_stdin)?;
    println!("{}", verify::hash_password(pw.as_bytes()));
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
            println!("added {name}; Maildir {}", md.path().display());
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
            println!("password changed for {name}");
        }
        UserCommand::Del { name } => {
            validate_name(&name)
                .map_err(|e| config_err(format!("invalid user name {name:?}: {e}")))?;
            users::delete_user(file, &name).map_err(config_err)?;
            println!("removed {name} (Maildir kept)");
        }
        UserCommand::List => {
            let db =
                UserDb::load(file).map_err(|e| config_err(format!("{}: {e}", file.display())))?;
            for u in db.iter() {
                let roles: Vec<&str> = u.roles.iter().map(|r| r.as_str()).collect();
                println!("{}\t{}", u.name, roles.join(","));
            }
        }
    }
    Ok(())
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
            eprintln!("warning: chgrp {}: {e}", file.display());
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
        eprintln!(
            "warning: service user {}:{} not found; {} stays owned by root",
            config.user,
            config.group,
            md.path().display()
        );
        return;
    };
    // mail_root is the admin's own directory (created by us or by the package).
    if let Err(e) = nix::unistd::chown(&config.mail_root, Some(u.uid), Some(g.gid)) {
        eprintln!("warning: chown {}: {e}", config.mail_root.display());
    }
    for (fd, p) in maildir_handles(md) {
        if let Err(e) = fsat::chown_chmod(fd, Some(u.uid.as_raw()), Some(g.gid.as_raw()), None) {
            eprintln!("warning: chown {}: {e}", p.display());
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
                eprintln!("warning: chown {}: {e}", lock.display());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => eprintln!("warning: {}: {e}", lock.display()),
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
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
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
        eprintln!();
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
    if json {
        for s in &sessions {
            println!("{}", serde_json::to_string(s).map_err(runtime_err)?);
        }
        return Ok(());
    }
    println!(
        "{:<6} {:<10} {:<10} {:<22} {:<16} {:<14} {:<13} {:<25} BYTES(in/out per layer)",
        "ID", "PROTOCOL", "LISTENER", "PEER", "REAL IP", "USER", "STATE", "SINCE"
    );
    for s in &sessions {
        let bytes: Vec<String> = s
            .bytes
            .iter()
            .map(|b| format!("{}:{}/{}", b.layer, b.bytes_in, b.bytes_out))
            .collect();
        println!(
            "{:<6} {:<10} {:<10} {:<22} {:<16} {:<14} {:<13} {:<25} {}",
            s.id,
            s.protocol,
            s.listener,
            s.peer.as_deref().unwrap_or("-"),
            s.real_ip.as_deref().unwrap_or("-"),
            s.user.as_deref().unwrap_or("-"),
            s.state,
            s.since,
            bytes.join(" ")
        );
    }
    Ok(())
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
            println!("kicked {n} session{}", if n == 1 { "" } else { "s" });
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
        eprintln!(
            "maildird: following session events on {} (interrupt to stop)",
            sock.display()
        );
        let mut out = std::io::stdout();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(runtime_err)?;
            let line = if json {
                serde_json::to_string(&ev).map_err(runtime_err)?
            } else {
                format!(
                    "{} session={} {:?} protocol={} peer={} user={}{}",
                    ev.time,
                    ev.session,
                    ev.event,
                    ev.protocol,
                    ev.peer.as_deref().unwrap_or("-"),
                    ev.user
                        .as_deref()
                        .map(|u| format!("{u:?}"))
                        .unwrap_or_else(|| "-".into()),
                    ev.detail
                        .as_deref()
                        .map(|d| format!(" {d}"))
                        .unwrap_or_default()
                )
            };
            // Flushed per event so `maildird events | grep` follows live.
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return Ok(());
            }
        }
        Ok(())
    })
}
