//! The composition root: start-up order (config -> sockets -> users -> privilege
//! drop -> runtime), the accept loops, dispatch to the protocol sessions, reload
//! (SIGHUP) and graceful stop (SIGTERM/SIGINT).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::backend::Backend;
use crate::config::{Config, ListenerConfig, Protocol};
use crate::conn::{Io, Observer};
use crate::filter::tls::{StartTls, TlsServer, Upgrade};
use crate::filter::{ConnMeta, FilterChain, Registry, Wire};
use crate::listen::accept::{Caps, Refused};
use crate::listen::first_read::FirstReadDeadline;
use crate::listen::{self, Bound};
use crate::{control, notify, pop3, privs, smtp};

/// The reloadable part of the daemon. Sessions keep the `Live` they started
/// with; new connections get the current one.
struct Live {
    backend: Arc<Backend>,
    /// Each listener's filter chain, by listener name.
    chains: HashMap<String, FilterChain>,
}

impl Shared {
    fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// SIGHUP: re-read the config file, users, aliases and certificate. A bad
    /// config is reported and the old one kept; listener and limit changes need
    /// a restart (the sockets and caps are set up once).
    fn reload(&self) {
        let old = self.live();
        let config = match Config::load(&self.config_path) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "reload: bad config; keeping the old one");
                return;
            }
        };
        let chains = match build_chains(&config, &registry(self.tls.as_ref())) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "reload: bad filters; keeping the old config");
                return;
            }
        };
        let backend = match old.backend.reloaded(config.clone()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reload: keeping the old config, users and aliases");
                return;
            }
        };
        let before = &old.backend.config;
        if format!("{:?}", before.listeners) != format!("{:?}", config.listeners)
            || format!("{:?}", before.limits) != format!("{:?}", config.limits)
            || before.user != config.user
            || before.control_socket != config.control_socket
        {
            tracing::warn!(
                "reload: listener, limit, user and control socket changes take effect after a restart"
            );
        }
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Live {
            backend: Arc::new(backend),
            chains,
        });
        tracing::info!("reloaded the config, users and aliases");
        // Sessions already encrypted keep their certificate; new handshakes get the new one.
        if let Some(t) = &self.tls {
            match t.reload() {
                Ok(()) => tracing::info!("reloaded the TLS certificate"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; keeping the old certificate")
                }
            }
        }
    }
}

/// A start-up or runtime failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Configuration or usage problem: exit 2 (systemd `RestartPreventExitStatus=2`).
    #[error("{0}")]
    Config(String),
    /// Anything else: exit 1.
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) => 2,
            DaemonError::Runtime(_) => 1,
        }
    }
}

/// How long a stop waits for sessions in flight before exiting anyway.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// What every connection shares.
struct Shared {
    /// What SIGHUP replaces: the config with its users, aliases and filter chains.
    live: std::sync::RwLock<Arc<Live>>,
    config_path: std::path::PathBuf,
    /// The `[tls]` certificate, shared by implicit TLS and STARTTLS/STLS.
    tls: Option<Arc<TlsServer>>,
    caps: Arc<Caps>,
    /// Live sessions for `who`, `kick` and `events`.
    sessions: Arc<control::Registry>,
    /// Turns true on SIGTERM/SIGINT: idle sessions are told and closed.
    stop: watch::Sender<bool>,
    next_id: AtomicU64,
    active: AtomicUsize,
    idle: Notify,
    deliveries: AtomicU64,
}

/// `maildird serve [--inetd PROTO]`.
pub fn serve(config_path: &Path, inetd: Option<Protocol>) -> Result<(), DaemonError> {
    // First: a panic anywhere ends the process instead of one thread (see
    // `logging::abort_on_panic`), so no half-alive daemon keeps the sockets.
    crate::logging::abort_on_panic();
    // Nothing we create is for "other"; group bits matter for Maildirs shared with mutt.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    let config =
        Arc::new(Config::load(config_path).map_err(|e| DaemonError::Config(e.to_string()))?);
    // Read the key while still root (it is usually not readable by the service user).
    let tls = load_tls(&config).map_err(DaemonError::Config)?;
    let chains = build_chains(&config, &registry(tls.as_ref())).map_err(DaemonError::Config)?;
    // Sockets first (fds from systemd are only ours before anything else runs),
    // then everything that needs root to read, then drop, then threads.
    let sockets = match inetd {
        Some(_) => Vec::new(),
        None => listen::take_sockets(&config).map_err(DaemonError::Runtime)?,
    };
    let backend = Backend::load(config.clone()).map_err(DaemonError::Config)?;
    prepare_mail_root(&config)?;
    let control = match inetd {
        Some(_) => None,
        None => bind_control(&config),
    };
    privs::drop_privileges(&config.user, &config.group).map_err(DaemonError::Config)?;
    privs::refuse_root().map_err(DaemonError::Config)?;
    check_mail_root(&config)?;
    raise_nofile(config.limits.max_connections);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("maildird")
        // Bounded (tokio's default is 512): file I/O and password hashing;
        // the unit's TasksMax= counts these threads.
        .max_blocking_threads(128)
        .build()
        .map_err(|e| DaemonError::Runtime(format!("cannot start the runtime: {e}")))?;
    let shared = Arc::new(Shared {
        live: std::sync::RwLock::new(Arc::new(Live {
            backend: Arc::new(backend),
            chains,
        })),
        config_path: config_path.to_path_buf(),
        tls,
        caps: Caps::from_limits(&config.limits),
        sessions: Arc::new(control::Registry::new()),
        stop: watch::channel(false).0,
        next_id: AtomicU64::new(1),
        active: AtomicUsize::new(0),
        idle: Notify::new(),
        deliveries: AtomicU64::new(0),
    });
    match inetd {
        Some(proto) => runtime.block_on(serve_inetd(shared, proto)),
        None => runtime.block_on(serve_sockets(shared, sockets, control)),
    }
}

/// Every connection is a descriptor: raise the soft RLIMIT_NOFILE to the hard
/// limit (the unit sets LimitNOFILE), and say so when `max_connections` cannot
/// fit, rather than failing accepts with EMFILE later.
fn raise_nofile(max_connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    // Listeners, the control socket, Maildir files and logs need some too.
    if (max_connections as u64).saturating_add(64) > limit {
        tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below max_connections; raise LimitNOFILE"
        );
    }
}

/// The `[tls]` certificate and key, if configured (errors name the file: exit 2).
pub fn load_tls(config: &Config) -> Result<Option<Arc<TlsServer>>, String> {
    config.tls.as_ref().map(TlsServer::load).transpose()
}

/// The built-in filters, with `tls` sharing the daemon's reloadable certificate.
pub fn registry(tls: Option<&Arc<TlsServer>>) -> Registry {
    let mut registry = Registry::builtin();
    if let Some(t) = tls {
        registry.register("tls", crate::filter::tls::server_factory(t.clone()));
    }
    registry
}

/// Build every listener's filter chain (unknown names, bad settings,
/// impossible orders and STARTTLS over a filter that may hold input back are
/// config errors). `check-config`, start-up and SIGHUP reload all come here.
pub fn build_chains(
    config: &Config,
    registry: &Registry,
) -> Result<HashMap<String, FilterChain>, String> {
    config
        .listeners
        .iter()
        .map(|l| {
            let chain = registry
                .build(config, &l.filters, crate::filter::Side::Server)
                .map_err(|e| format!("listener {:?}: {e}", l.name))?;
            if l.starttls {
                chain.check_starttls(&l.name, &l.filters)?;
            }
            Ok((l.name.clone(), chain))
        })
        .collect()
}

/// As root, create `mail_root` and hand it to the service user, so the daemon can
/// create Maildirs after dropping privileges (what a tmpfiles.d line does for
/// the packaged service).
fn prepare_mail_root(config: &Config) -> Result<(), DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let root = &config.mail_root;
    if root.exists() {
        return Ok(());
    }
    let err = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        DaemonError::Runtime(format!("{what} {}: {e}", p.display()))
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

/// After the drop: mail_root must be usable, or say clearly why not.
fn check_mail_root(config: &Config) -> Result<(), DaemonError> {
    let root = &config.mail_root;
    if let Err(e) = std::fs::create_dir_all(root).and_then(|_| std::fs::read_dir(root).map(|_| ()))
    {
        return Err(DaemonError::Runtime(format!(
            "mail_root {} is not usable by uid {} ({e}); it and its parent directories must be accessible to the service user",
            root.display(),
            nix::unistd::geteuid()
        )));
    }
    Ok(())
}

async fn serve_inetd(shared: Arc<Shared>, proto: Protocol) -> Result<(), DaemonError> {
    let (stream, peer) = listen::inetd::stdio_stream()
        .map_err(|e| DaemonError::Runtime(format!("inetd: cannot use stdin/stdout: {e}")))?;
    let peer = peer.map(canonical);
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
            keepalive: None,
        });
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    run_session(&shared, &listener, stream, peer, id, None).await;
    Ok(())
}

/// The control socket, bound while still root; `who`/`kick`/`events` use it.
/// Failing to bind it is logged, not fatal: mail service matters more.
fn bind_control(
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

async fn serve_sockets(
    shared: Arc<Shared>,
    sockets: Vec<Bound>,
    control: Option<(std::os::unix::net::UnixListener, control::server::Access)>,
) -> Result<(), DaemonError> {
    let stop_rx = shared.stop.subscribe();
    if let Some((listener, access)) = control {
        let path = shared.live().backend.config.control_socket.clone();
        tokio::spawn(control::server::serve(
            listener,
            path,
            access,
            shared.sessions.clone(),
            stop_rx.clone(),
        ));
    }
    let mut names = Vec::new();
    let mut accept_loops = Vec::new();
    for b in sockets {
        let listener = tokio::net::TcpListener::from_std(b.socket)
            .map_err(|e| DaemonError::Runtime(format!("listener {:?}: {e}", b.config.name)))?;
        let addr = listener.local_addr().ok();
        tracing::info!(listener = %b.config.name, protocol = %b.config.protocol, addr = ?addr, inherited = b.inherited, "listening");
        names.push(b.config.name.clone());
        accept_loops.push(tokio::spawn(accept_loop(
            shared.clone(),
            b.config,
            listener,
            stop_rx.clone(),
        )));
    }
    let config = shared.live().backend.config.clone();
    tokio::spawn(sweep_loop(
        config.mail_root.clone(),
        config.hostname.clone(),
    ));
    // Handlers before READY=1: a reload or stop right after it must not kill us
    // (SIGHUP's default action is to terminate).
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
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
    Ok(())
}

/// sd_notify STATUS: live sessions per protocol and deliveries so far.
fn status_line(shared: &Shared) -> String {
    let counts = shared.sessions.counts();
    let per: Vec<String> = counts.iter().map(|(p, n)| format!("{p} {n}")).collect();
    format!(
        "{} sessions{}, {} deliveries",
        shared.sessions.len(),
        if per.is_empty() {
            String::new()
        } else {
            format!(" ({})", per.join(", "))
        },
        shared.deliveries.load(Ordering::Relaxed)
    )
}

/// tmp/ files older than 36 hours are leftovers of interrupted deliveries
/// (the Maildir convention); sweep them at start-up and every hour (also tmp
/// names of delivered messages older than 15 minutes).
async fn sweep_loop(mail_root: std::path::PathBuf, host: String) {
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
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener_cfg: ListenerConfig,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let listener_cfg = Arc::new(listener_cfg);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %listener_cfg.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // On a dual-stack socket (systemd's BindIPv6Only=both) IPv4 clients arrive
        // as ::ffff:a.b.c.d; they are IPv4 clients for limits, logs and loopback.
        let peer = canonical(peer);
        let live = shared.live();
        if let Err(e) = listen::accept::apply_keepalive(
            &stream,
            listener_cfg
                .keepalive
                .as_ref()
                .unwrap_or(&live.backend.config.keepalive),
        ) {
            tracing::debug!(error = %e, "setting keep-alive failed");
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Behind PROXY the per-IP limits wait for the real client's address.
        let proxied = live
            .chains
            .get(&listener_cfg.name)
            .is_some_and(|c| c.starts_with("proxy"));
        let mut admission = match shared.caps.admit((!proxied).then(|| peer.ip())) {
            Ok(a) => a,
            Err(why) => {
                let network = shared.caps.client_net().cidr(peer.ip());
                tracing::warn!(session = id, peer = %peer, network = %network, listener = %listener_cfg.name, reason = ?why, "connection refused by limits");
                tokio::spawn(refuse(
                    stream,
                    listener_cfg.protocol,
                    why,
                    live.backend.config.hostname.clone(),
                ));
                continue;
            }
        };
        let shared = shared.clone();
        let cfg = listener_cfg.clone();
        shared.active.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            run_session(
                &shared,
                &cfg,
                Box::new(stream),
                Some(peer),
                id,
                Some(&mut admission),
            )
            .await;
            drop(admission);
            if shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.idle.notify_waiters();
            }
        });
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Over the caps: say so in the protocol's words, then close (RFC 5321 §3.8: 421).
async fn refuse<S: tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    proto: Protocol,
    why: Refused,
    hostname: String,
) {
    let text = match why {
        Refused::TooManyConnections => "Too many connections",
        Refused::TooManyFromIp => "Too many connections from your address",
        Refused::RateFromIp => "Too many connections from your address per minute",
    };
    let line = match proto {
        Protocol::Pop3 => format!("-ERR [SYS/TEMP] {text}, try again later\r\n"),
        _ => format!("421 4.7.0 {hostname} {text}, try again later\r\n"),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

async fn run_session(
    shared: &Arc<Shared>,
    listener: &ListenerConfig,
    stream: Box<dyn Io>,
    peer: Option<SocketAddr>,
    id: u64,
    admission: Option<&mut crate::listen::accept::Admission>,
) {
    let live = shared.live();
    let config = live.backend.config.clone();
    let peer_s = peer.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let span = tracing::info_span!("session", id, peer = %peer_s, protocol = %listener.protocol, listener = %listener.name);
    async move {
        tracing::info!("connect");
        let guard = Arc::new(shared.sessions.open(
            id,
            &listener.protocol.to_string(),
            &listener.name,
            peer,
        ));
        let mut meta = ConnMeta {
            id,
            listener: listener.name.clone(),
            peer,
            tcp_peer: peer,
            ..ConnMeta::default()
        };
        // Wire-level bytes, and a short deadline for the first byte from the client.
        let stream = control::counted::Counted::new(stream, guard.counters("wire"));
        let stream = FirstReadDeadline::new(stream, config.limits.greeting_timeout);
        // The swap point for STARTTLS/STLS, only where it can happen.
        let (stream, wire_handle): (Box<dyn Io>, _) = if shared.tls.is_some() && listener.starttls {
            let (wire, handle) = Wire::new(Box::new(stream));
            (Box::new(wire), Some(handle))
        } else {
            (Box::new(stream), None)
        };
        let chain = live.chains.get(&listener.name).filter(|c| !c.is_empty());
        let stream: Box<dyn Io> = match chain {
            // Boxed, like the sessions below: a TLS handshake's state is
            // allocated only while it runs, not kept in every connection's task.
            Some(chain) => {
                match Box::pin(chain.apply_with(stream, &mut meta, |name, io| {
                    Box::new(control::counted::Counted::new(io, guard.counters(name)))
                }))
                .await
                {
                    Ok(s) => Box::new(control::counted::Counted::new(
                        s,
                        guard.counters("protocol"),
                    )),
                    Err(e) => {
                        tracing::info!(error = %e, "close: filter chain failed");
                        return;
                    }
                }
            }
            // An empty chain adds no layer at all.
            None => {
                guard.share_counters("protocol", "wire");
                stream
            }
        };
        guard.set_peer(meta.peer);
        // Per-IP cap and rate on the real client, now that PROXY has named it.
        let mut stream = stream;
        if let (Some(adm), Some(real)) = (admission, meta.peer) {
            if let Err(why) = shared.caps.admit_ip(adm, real.ip()) {
                let network = shared.caps.client_net().cidr(real.ip());
                tracing::warn!(real_peer = %real, network = %network, reason = ?why, "connection refused by limits");
                Box::pin(refuse(
                    &mut stream,
                    listener.protocol,
                    why,
                    config.hostname.clone(),
                ))
                .await;
                return;
            }
        }
        let observer: Arc<dyn Observer> = Arc::new(SessionObserver {
            guard: guard.clone(),
            shared: shared.clone(),
            protocol: listener.protocol,
            ip: meta.peer.map(|p| p.ip()),
        });
        let shutdown = shared.stop.subscribe();
        let peer = meta.peer;
        // STARTTLS/STLS: only where configured and not already TLS.
        let upgrade: Option<Arc<dyn Upgrade>> = match (&shared.tls, wire_handle) {
            (Some(t), Some(handle)) if !meta.tls => {
                Some(Arc::new(StartTls::new(t.clone(), handle)))
            }
            _ => None,
        };
        // Plaintext logins are fine over TLS, from loopback and on a local pipe.
        let local = peer.is_none_or(|p| p.ip().is_loopback());
        let result = match listener.protocol {
            Protocol::Smtp | Protocol::Submission => {
                let info = smtp::SessionInfo {
                    id,
                    peer,
                    helo: String::new(),
                    with_protocol: "ESMTP".into(),
                    auth_user: None,
                };
                let cfg = smtp_config(&config, listener.protocol, meta.tls, local);
                let mut session = smtp::Session::new(stream, live.backend.clone(), cfg, info)
                    .with_observer(observer)
                    .with_shutdown(shutdown);
                if let Some(u) = upgrade {
                    session = session.with_starttls(u);
                }
                tokio::select! {
                    r = Box::pin(session.run()) => r,
                    _ = guard.kicked() => Err(std::io::Error::other("kicked by an admin")),
                }
            }
            Protocol::Pop3 => {
                let cfg = pop3_config(&config, meta.tls || local, peer.map(|p| p.ip()));
                let mut session = pop3::Session::new(stream, live.backend.clone(), cfg)
                    .with_observer(observer)
                    .with_shutdown(shutdown);
                if let Some(u) = upgrade {
                    session = session.with_starttls(u);
                }
                tokio::select! {
                    r = Box::pin(session.run()) => r,
                    _ = guard.kicked() => Err(std::io::Error::other("kicked by an admin")),
                }
            }
        };
        match result {
            Ok(()) => tracing::info!("close"),
            Err(e) => tracing::info!(error = %e, "close"),
        }
    }
    .instrument(span)
    .await
}

/// Reports a session's state, logins and deliveries to the registry (`who`,
/// `events`) and writes the fail2ban line.
struct SessionObserver {
    guard: Arc<control::SessionGuard>,
    shared: Arc<Shared>,
    protocol: Protocol,
    ip: Option<std::net::IpAddr>,
}

impl Observer for SessionObserver {
    fn state(&self, state: &'static str) {
        self.guard.set_state(state);
    }

    fn auth(&self, user: &str, mechanism: &str, ok: bool) {
        if ok {
            self.guard.auth_ok(user, mechanism);
        } else {
            self.guard.auth_fail(user, mechanism);
            // One stable line per failure for fail2ban: the real client IP (behind
            // PROXY too), the user as given (quoted, so it cannot forge a line).
            let ip = self.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            tracing::warn!(
                "authentication failure: protocol={} ip={ip} user={:?}",
                self.protocol,
                crate::logging::LogName(user)
            );
        }
    }

    fn delivered(&self, recipients: usize, size: u64) {
        self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
        self.guard
            .delivery(format!("recipients={recipients} size={size}"));
    }
}

/// `tls`: the connection is already encrypted (implicit TLS); `local`: a
/// loopback peer or a local pipe, where AUTH may be offered in plaintext.
pub fn smtp_config(c: &Config, protocol: Protocol, tls: bool, local: bool) -> smtp::SessionConfig {
    smtp::SessionConfig {
        hostname: c.hostname.clone(),
        max_message_size: c.limits.max_message_size,
        max_recipients: c.limits.max_recipients,
        max_command_line: usize::try_from(c.limits.max_command_line).unwrap_or(usize::MAX),
        max_text_line: usize::try_from(c.limits.max_text_line).unwrap_or(usize::MAX),
        max_errors: c.limits.max_errors,
        command_timeout: c.limits.command_timeout,
        data_timeout: c.limits.data_timeout,
        bare_lf: c.smtp.bare_lf,
        tls,
        submission: protocol == Protocol::Submission,
        plaintext_auth_allowed: local || c.smtp.allow_plaintext_auth,
        auth_failures: c.limits.auth_failures,
        auth_failure_delay: c.limits.auth_failure_delay,
    }
}

/// `secure`: the connection counts as secure for plaintext logins (TLS, a
/// loopback peer or a local pipe). STLS makes it secure later on its own.
pub fn pop3_config(
    c: &Config,
    secure: bool,
    client: Option<std::net::IpAddr>,
) -> pop3::SessionConfig {
    pop3::SessionConfig {
        hostname: c.hostname.clone(),
        plaintext_auth_allowed: secure || c.pop3.allow_plaintext_auth,
        idle_timeout: c.limits.pop3_idle_timeout,
        max_errors: c.limits.max_errors,
        auth_failures: c.limits.auth_failures,
        auth_failure_delay: c.limits.auth_failure_delay,
        retr_marks_seen: c.pop3.retr_marks_seen,
        client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: &str =
        "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[filter.exec.rot]\ncommand = [\"cat\"]\n";

    fn chains(listeners: &str) -> Result<HashMap<String, FilterChain>, String> {
        let cfg = Config::parse(&format!("{TLS}{listeners}"), "t").map_err(|e| e.to_string())?;
        build_chains(&cfg, &registry(None))
    }

    /// `check-config`, start-up and reload share this check: STARTTLS/STLS over
    /// a filter that may hold input back is a config error naming both.
    #[test]
    fn starttls_over_a_buffering_filter_is_a_config_error() {
        for (proto, filters, bad) in [
            ("smtp", "[\"zlib\"]", Some("zlib")),
            ("pop3", "[\"log\", \"exec.rot\"]", Some("exec.rot")),
            ("submission", "[\"proxy\", \"zlib\"]", Some("zlib")),
            ("smtp", "[\"proxy\", \"log\"]", None),
            ("pop3", "[]", None),
        ] {
            let l = format!(
                "[[listener]]\nname = \"l\"\nprotocol = \"{proto}\"\nfilters = {filters}\nstarttls = true\n"
            );
            match bad {
                None => assert!(chains(&l).is_ok(), "{l}"),
                Some(f) => {
                    let e = chains(&l).err().unwrap_or_default();
                    assert!(
                        e.starts_with(&format!(
                            "listener \"l\": starttls = true cannot be used with filter \"{f}\""
                        )),
                        "{e}"
                    );
                    assert!(e.contains("implicit TLS"), "{e}");
                }
            }
            // The same filters without STARTTLS are fine.
            let plain = l.replace("starttls = true\n", "");
            assert!(chains(&plain).is_ok(), "{plain}");
        }
    }
}
