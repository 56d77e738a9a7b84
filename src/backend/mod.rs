//! The composition of `auth` and `maildir` behind the protocol seams:
//! `smtp::Backend` (in `smtp.rs`) and `pop3::Store` (in `pop3.rs`).

pub mod checked;
pub mod maildirs;
pub mod pop3;
pub mod quota;
pub mod recipients;
pub mod smtp;
pub mod throttle;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::auth::{UserDb, UserEntry};
use crate::config::Config;
use crate::listen::accept::ClientNet;

/// A file-backed table (users, aliases) re-read when the file changes, as
/// Dovecot does with passwd-files: `maildird user add` takes effect at once,
/// without a reload. Each lookup costs one stat(), next to a delivery's fsyncs.
struct Watched<T> {
    path: Option<PathBuf>,
    state: Mutex<WatchState<T>>,
    load: fn(&Path) -> Result<T, String>,
}

struct WatchState<T> {
    value: Arc<T>,
    stamp: Option<(SystemTime, u64, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl<T: Default> Watched<T> {
    fn new(
        path: Option<PathBuf>,
        load: fn(&Path) -> Result<T, String>,
    ) -> Result<Watched<T>, String> {
        let (value, st) = match &path {
            Some(p) if p.exists() => (load(p)?, stamp(p)),
            _ => (T::default(), None),
        };
        Ok(Watched {
            path,
            state: Mutex::new(WatchState {
                value: Arc::new(value),
                stamp: st,
            }),
            load,
        })
    }

    fn get(&self) -> Arc<T> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = &self.path {
            let now = stamp(path);
            if now != st.stamp {
                st.stamp = now;
                match (self.load)(path) {
                    Ok(v) => {
                        st.value = Arc::new(v);
                        tracing::info!(file = %path.display(), "re-read after a change");
                    }
                    // Keep serving with what we had; say why once per change.
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "changed file does not load; keeping the old one")
                    }
                }
            }
        }
        st.value.clone()
    }
}

/// Everything a session needs from the server, swapped as a whole on reload.
pub struct Backend {
    pub config: Arc<Config>,
    users: Watched<UserDb>,
    aliases: Watched<recipients::Aliases>,
    /// Bounds concurrent password hashing (argon2id: 64 MiB each).
    hash_permits: Semaphore,
    /// Back-off per client IP and per user across connections.
    throttle: Arc<throttle::AuthThrottle>,
    /// Sender checks on smtp listeners (`[checks]`); None when off.
    pub checks: Option<Arc<crate::checks::Checks>>,
    /// Each listener's message filters (`message_filters`), when it has any.
    pub message_filters: std::collections::HashMap<String, Arc<[crate::msgfilter::Filter]>>,
    /// Maildirs opened before (deliveries skip creating them again).
    pub maildirs: Arc<maildirs::Maildirs>,
    /// `[quota] rule`: for users without their own.
    quota_default: Option<crate::maildir::quota::QuotaRule>,
    /// `[quota] sender_rate`, when set.
    sender_rate: Option<Arc<quota::SenderRate>>,
}

impl Backend {
    /// Load users and aliases for `config`.
    pub fn load(config: Arc<Config>) -> Result<Backend, String> {
        let users = Watched::new(Some(config.users_file.clone()), |p| {
            let db = UserDb::load(p).map_err(|e| format!("{}: {e}", p.display()))?;
            for (line, warning) in db.warnings() {
                tracing::warn!(file = %p.display(), line, "{warning}");
            }
            Ok(db)
        })?;
        let aliases = Watched::new(config.aliases_file.clone(), |p| {
            recipients::Aliases::load(p).map_err(|e| format!("{}: {e}", p.display()))
        })?;
        let permits = config.limits.hash_concurrency;
        let net = ClientNet::from_limits(&config.limits);
        let checks = crate::checks::Checks::from_config(&config)?;
        let mut message_filters = std::collections::HashMap::new();
        for li in config
            .listeners
            .iter()
            .filter(|l| !l.message_filters.is_empty())
        {
            let chain = li
                .message_filters
                .iter()
                .map(|f| crate::msgfilter::Filter::resolve(f, &config.milter, &config.exec))
                .collect::<Result<Vec<_>, String>>()?;
            // A program that is not there fails at start, not on the first message.
            for f in &chain {
                if let crate::msgfilter::Filter::Exec { name, config } = f {
                    let program = config.command.first().map(String::as_str).unwrap_or("");
                    if !std::path::Path::new(program).is_file() {
                        return Err(format!(
                            "listener {:?}: message filter {name}: {program} is not a file",
                            li.name
                        ));
                    }
                }
            }
            message_filters.insert(li.name.clone(), Arc::from(chain));
        }
        let quota_default = match &config.quota.rule {
            Some(r) => Some(crate::maildir::quota::parse_rule(r)?),
            None => None,
        };
        let sender_rate = (config.quota.sender_rate > 0).then(|| {
            Arc::new(quota::SenderRate::new(
                config.quota.sender_rate,
                config.quota.sender_window,
            ))
        });
        Ok(Backend {
            checks,
            message_filters,
            quota_default,
            sender_rate,
            maildirs: Arc::default(),
            config,
            users,
            aliases,
            hash_permits: Semaphore::new(permits),
            throttle: Arc::new(throttle::AuthThrottle::new(net)),
        })
    }

    /// The quota rule of `mailbox` (its user's, else the default), when it
    /// limits anything.
    pub fn quota_rule(
        &self,
        users: &UserDb,
        mailbox: &str,
    ) -> Option<crate::maildir::quota::QuotaRule> {
        users
            .get(mailbox)
            .and_then(|u| u.quota)
            .or(self.quota_default)
            .filter(|r| r.is_limited())
    }

    pub fn users(&self) -> Arc<UserDb> {
        self.users.get()
    }

    pub fn aliases(&self) -> Arc<recipients::Aliases> {
        self.aliases.get()
    }

    /// A backend for a reloaded config (SIGHUP), keeping the auth back-off state
    /// (and so its client grouping: limit changes take effect after a restart).
    pub fn reloaded(&self, config: Arc<Config>) -> Result<Backend, String> {
        let mut fresh = Backend::load(config)?;
        fresh.throttle = self.throttle.clone();
        // The rate counts survive a reload too (limit changes take effect
        // in the next window).
        if let (Some(old), Some(_)) = (&self.sender_rate, &fresh.sender_rate) {
            let q = &fresh.config.quota;
            fresh.sender_rate = Some(Arc::new(old.reloaded(q.sender_rate, q.sender_window)));
        }
        Ok(fresh)
    }

    /// Verify a password off the async threads, bounded by `hash_concurrency`,
    /// after the back-off this client IP and user have earned. Unknown users cost
    /// the same as wrong passwords (a dummy hash is verified).
    pub async fn authenticate(
        &self,
        user: &str,
        password: &[u8],
        client: Option<IpAddr>,
    ) -> Option<UserEntry> {
        let wait = self.throttle.delay(client, user, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let found = {
            let _permit = self.hash_permits.acquire().await.ok()?;
            let db = self.users();
            let (u, p) = (user.to_string(), password.to_vec());
            tokio::task::spawn_blocking(move || db.authenticate(&u, &p))
                .await
                .ok()
                .flatten()
        };
        match &found {
            Some(_) => self.throttle.succeeded(client, user),
            None => {
                let exists = self.users().get(user).is_some();
                self.throttle
                    .failed(client, user, password, exists, Instant::now())
            }
        }
        found
    }
}
