//! Start-up jobs around `serve`: descriptors, mail_root before and after the
//! privilege drop, the control socket, the listening sockets (or one inetd
//! session), and the tmp sweep loop.

use super::*;

/// Every connection is a descriptor: raise the soft RLIMIT_NOFILE to the hard
/// limit (the unit sets LimitNOFILE), and say so when `max_connections` cannot
/// fit, rather than failing accepts with EMFILE later.
pub(super) fn raise_nofile(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Listeners, the control socket, Maildir files and logs need some too,
    // and the Maildirs kept open for deliveries (four descriptors each).
    let maildirs = 4 * crate::backend::maildirs::MAX_OPEN as u64;
    if (max_connections as u64).saturating_add(64 + maildirs) > limit {
        tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below max_connections; raise LimitNOFILE"
        );
    }
}

/// As root, create `mail_root` and hand it to the service user, so the daemon can
/// create Maildirs after dropping privileges (what a tmpfiles.d line does for
/// the packaged service).
pub(super) fn prepare_mail_root(config: &Config) -> Result<(), CommandError> {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let root = &config.mail_root;
    if root.exists() {
        return Ok(());
    }
    let err = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        CommandError::Runtime(format!("{what} {}: {e}", p.display()))
    };
    // Parents we create must be traversable by the service user (our umask is 007).
    let missing: Vec<&Path> = root
        .ancestors()
        .skip(1)
        .take_while(|p| !p.exists())
        .collect();
    std::fs::create_dir_all(root).map_err(|e| err("creating mail_root", root, &e))?;
    for p in missing {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| err("chmod", p, &e))?;
    }
    // Search-only for others: Unix accounts sharing their Maildir with mutt reach it,
    // nobody can list the mailboxes.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| err("chmod", root, &e))?;
    let user = nix::unistd::User::from_name(&config.user).ok().flatten();
    let group = nix::unistd::Group::from_name(&config.group).ok().flatten();
    if let (Some(u), Some(g)) = (user, group) {
        nix::unistd::chown(root, Some(u.uid), Some(g.gid))
            .map_err(|e| err("chown mail_root", root, &e))?;
    }
    Ok(())
}

/// After the drop: mail_root must be usable by the user the daemon runs as
/// (it creates Maildirs and delivers under it), or start-up fails naming the
/// path, the user and the reason, rather than refusing every message later.
pub(super) fn check_mail_root(config: &Config) -> Result<(), CommandError> {
    let root = &config.mail_root;
    let usable = std::fs::create_dir_all(root)
        .and_then(|()| std::fs::read_dir(root).map(drop))
        .and_then(|()| {
            // Write and search: create Maildirs, deliver into them. access(2)
            // checks the real ids, which equal the effective ones after the drop.
            rustix::fs::access(
                root,
                rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
            )
            .map_err(std::io::Error::from)
        });
    usable.map_err(|e| {
        CommandError::Runtime(format!(
            "mail_root {} is not usable by {} ({e}); the service user must be able to \
             read, write and search it and its parent directories must be accessible to it",
            root.display(),
            running_user()
        ))
    })
}

/// `name (uid N)` of the effective user, for error messages.
fn running_user() -> String {
    let uid = nix::unistd::geteuid();
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(u)) => format!("user {} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

pub(super) async fn serve_inetd(shared: Arc<Shared>, proto: Protocol) -> Result<(), CommandError> {
    let (stream, peer) = listen::inetd::stdio_stream()
        .map_err(|e| CommandError::Runtime(format!("inetd: cannot use stdin/stdout: {e}")))?;
    let peer = peer.map(listen::canonical);
    // The filters and options of the first listener of this protocol apply.
    let listener = shared
        .live()
        .backend
        .config
        .listeners
        .iter()
        .find(|l| l.protocol == proto)
        .cloned()
        .unwrap_or(ListenerConfig {
            name: "inetd".into(),
            protocol: proto,
            bind: None,
            filters: vec![],
            starttls: false,
            message_filters: vec![],
            keepalive: None,
        });
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    run_session(&shared, &listener, stream, peer, id, None).await;
    Ok(())
}

/// The control socket, bound while still root; `who`/`kick`/`events` use it.
/// Failing to bind it is logged, not fatal: mail service matters more.
pub(super) fn bind_control(
    config: &Config,
) -> Option<(std::os::unix::net::UnixListener, control::server::Access)> {
    use nix::unistd::{Group, User, getegid, geteuid};
    let root = geteuid().is_root();
    let user = if root {
        User::from_name(&config.user).ok().flatten()
    } else {
        None
    };
    let access = control::server::Access {
        daemon_uid: user.as_ref().map(|u| u.uid).unwrap_or_else(geteuid),
        admin_gid: if root {
            Group::from_name(&config.group)
                .ok()
                .flatten()
                .map(|g| g.gid)
                .unwrap_or_else(getegid)
        } else {
            getegid()
        },
    };
    match control::server::bind(&config.control_socket, user.map(|u| u.uid), &access) {
        Ok(l) => Some((l, access)),
        Err(e) => {
            tracing::warn!(path = %config.control_socket.display(), error = %e, "no control socket: who/kick/events unavailable");
            None
        }
    }
}

/// The metrics endpoint's socket (`[metrics] bind`), bound while still root.
/// Asked for but impossible: start-up fails, naming the address.
pub(super) fn bind_metrics(config: &Config) -> Result<Option<std::net::TcpListener>, CommandError> {
    let Some(m) = &config.metrics else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(m.bind)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| CommandError::Runtime(format!("metrics.bind {}: {e}", m.bind)))?;
    Ok(Some(listener))
}

pub(super) async fn serve_sockets(
    shared: Arc<Shared>,
    sockets: Vec<Bound>,
    control: Option<(std::os::unix::net::UnixListener, control::server::Access)>,
    metrics: Option<std::net::TcpListener>,
) -> Result<(), CommandError> {
    let stop_rx = shared.stop.subscribe();
    if let Some(listener) = metrics {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| CommandError::Runtime(format!("metrics listener: {e}")))?;
        tracing::info!(addr = ?listener.local_addr().ok(), "serving metrics");
        tokio::spawn(crate::metrics::http::serve(listener));
    }
    let control = control.map(|(listener, access)| {
        let path = shared.live().backend.config.control_socket.clone();
        tokio::spawn(control::server::serve(
            listener,
            path,
            access,
            shared.sessions.clone(),
            stop_rx.clone(),
        ))
    });
    let mut names = Vec::new();
    let mut accept_loops = Vec::new();
    for b in sockets {
        let listener = tokio::net::TcpListener::from_std(b.socket)
            .map_err(|e| CommandError::Runtime(format!("listener {:?}: {e}", b.config.name)))?;
        let addr = listener.local_addr().ok();
        tracing::info!(listener = %b.config.name, protocol = %b.config.protocol, addr = ?addr, inherited = b.inherited, "listening");
        names.push(b.config.name.clone());
        let (shared, cfg, stop) = (shared.clone(), Arc::new(b.config), stop_rx.clone());
        accept_loops.push(tokio::spawn(async move {
            listen::accept_loop(&cfg.name.clone(), listener, stop, |stream, peer| {
                admit(&shared, &cfg, stream, peer)
            })
            .await
        }));
    }
    let config = shared.live().backend.config.clone();
    tokio::spawn(sweep_loop(
        config.mail_root.clone(),
        config.hostname.clone(),
    ));
    // Handlers before READY=1: a reload or stop right after it must not kill us
    // (SIGHUP's default action is to terminate).
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| CommandError::Runtime(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| CommandError::Runtime(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| CommandError::Runtime(e.to_string()))?;
    notify::ready(&format!(
        "listening on {}; {}",
        names.join(", "),
        status_line(&shared)
    ));
    let mut status_tick = tokio::time::interval(Duration::from_secs(5));
    // systemd's watchdog (WatchdogSec=): ping at half the interval from the
    // runtime itself, so a wedged runtime gets restarted.
    let watchdog = libsystemd::daemon::watchdog_enabled(false);
    let mut watchdog_tick =
        tokio::time::interval(watchdog.map(|d| d / 2).unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = watchdog_tick.tick(), if watchdog.is_some() => notify::watchdog(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notify::reloading();
                shared.reload();
                notify::ready("reloaded");
            }
            _ = status_tick.tick() => notify::status(&status_line(&shared)),
        }
    }
    tracing::info!("stopping: no new connections; waiting for sessions in flight");
    // Close the listeners before saying STOPPING, so nothing is accepted after it.
    shared.stop.send_replace(true);
    for loop_done in accept_loops {
        let _ = loop_done.await;
    }
    notify::stopping();
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        loop {
            let notified = shared.idle.notified();
            if shared.active.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = shared.active.load(Ordering::SeqCst),
            "drain deadline passed; closing remaining sessions"
        );
    }
    // The control socket's server removes its file once `stop` is set.
    if let Some(control) = control {
        let _ = control.await;
    }
    tracing::info!(
        deliveries = crate::metrics::get().deliveries.get(),
        "stopped"
    );
    Ok(())
}

/// tmp/ files older than 36 hours are leftovers of interrupted deliveries
/// (the Maildir convention); sweep them at start-up and every hour (also tmp
/// names of delivered messages older than 15 minutes).
pub(super) async fn sweep_loop(mail_root: std::path::PathBuf, host: String) {
    const MAX_AGE: Duration = Duration::from_secs(36 * 3600);
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    let mut first = true;
    loop {
        tick.tick().await;
        let root = mail_root.clone();
        let host = host.clone();
        let startup = std::mem::take(&mut first);
        let report = tokio::task::spawn_blocking(move || {
            // At start-up also what a crashed instance on this host left
            // half-written.
            crate::maildir::deliver::sweep_mail_root(&root, &host, MAX_AGE, startup, pid_alive)
        })
        .await;
        let swept = match report {
            Ok(Ok(r)) => {
                for e in &r.refused {
                    tracing::warn!(error = %e, "tmp sweep: refusing maildir");
                }
                if startup {
                    tracing::info!(
                        tmp_files = r.removed,
                        lock_files = r.lock_files,
                        "start-up sweep done"
                    );
                }
                r.removed
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, path = %mail_root.display(), "tmp sweep failed");
                0
            }
            Err(_) => 0,
        };
        if swept > 0 {
            tracing::info!(files = swept, "swept stale tmp/ files");
        }
    }
}

/// Is a process with this pid running (on this host)? EPERM means it exists.
pub(super) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}
