//! The composition root: `serve` puts the parts together in order (config ->
//! sockets -> users -> privilege drop -> runtime) and runs until SIGTERM/SIGINT
//! (graceful stop). Start-up jobs in `startup`, SIGHUP in `reload`, each
//! connection's way from accept to its session in `pipeline`.

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
use tracing::field::Empty;

use crate::backend::Backend;
use crate::config::{Config, ListenerConfig, Protocol};
use crate::error::CommandError;
use crate::filter::tls::{StartTls, TlsServer, Upgrade};
use crate::filter::{ConnMeta, FilterChain, Wire, chains};
use crate::listen::accept::{Caps, Refused};
use crate::listen::{self, Bound};
use crate::observer::Observer;
use crate::stream::BoxedIo;
use crate::stream::first_read::FirstReadDeadline;
use crate::{control, notify, pop3, privs, smtp};

mod pipeline;
mod reload;
mod startup;

use pipeline::*;
use startup::*;

/// The reloadable part of the daemon. Sessions keep the `Live` they started
/// with; new connections get the current one.
struct Live {
    backend: Arc<Backend>,
    /// Each listener's filter chain, by listener name.
    chains: HashMap<String, FilterChain>,
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
}

/// `maildird serve [--inetd PROTO]`.
pub fn serve(config_path: &Path, inetd: Option<Protocol>) -> Result<(), CommandError> {
    // First: a panic anywhere ends the process instead of one thread (see
    // `logging::abort_on_panic`), so no half-alive daemon keeps the sockets.
    crate::logging::abort_on_panic();
    // The metrics start now (their start time is the daemon's).
    crate::metrics::get();
    // Nothing we create is for "other"; group bits matter for Maildirs shared with mutt.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o007));
    let config =
        Arc::new(Config::load(config_path).map_err(|e| CommandError::Config(e.to_string()))?);
    // Read the key while still root (it is usually not readable by the service user).
    let tls = chains::load_tls(&config).map_err(CommandError::Config)?;
    let chains = chains::build(&config, &chains::registry(tls.as_ref()))
        .map_err(|e| CommandError::Config(e.to_string()))?;
    // Sockets first (fds from systemd are only ours before anything else runs),
    // then everything that needs root to read, then drop, then threads.
    let sockets = match inetd {
        Some(_) => Vec::new(),
        None => listen::take_sockets(&config).map_err(|e| CommandError::Runtime(e.to_string()))?,
    };
    let backend = Backend::load(config.clone()).map_err(CommandError::Config)?;
    prepare_mail_root(&config)?;
    let control = match inetd {
        Some(_) => None,
        None => bind_control(&config),
    };
    let metrics = match inetd {
        Some(_) => None,
        None => bind_metrics(&config)?,
    };
    // A bad `user`/`group` or a failed drop: a configuration problem (exit 2).
    privs::drop_privileges(&config.user, &config.group)
        .map_err(|e| CommandError::Config(e.to_string()))?;
    privs::refuse_root().map_err(|e| CommandError::Config(e.to_string()))?;
    check_mail_root(&config)?;
    raise_nofile(config.limits.max_connections);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("maildird")
        // Bounded (tokio's default is 512): file I/O and password hashing;
        // the unit's TasksMax= counts these threads.
        .max_blocking_threads(128)
        .build()
        .map_err(|e| CommandError::Runtime(format!("cannot start the runtime: {e}")))?;
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
    });
    match inetd {
        Some(proto) => runtime.block_on(serve_inetd(shared, proto)),
        None => runtime.block_on(serve_sockets(shared, sockets, control, metrics)),
    }
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
        crate::metrics::get().deliveries.get()
    )
}
