//! The composition of `auth` and `maildir` behind the protocol seams:
//! `smtp::Backend` (in `smtp.rs`) and `pop3::Store` (in `pop3.rs`).

pub mod pop3;
pub mod recipients;
pub mod smtp;
pub mod throttle;

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::auth::{UserDb, UserEntry};
use crate::config::Config;

/// Everything a session needs from the server, swapped as a whole on reload.
pub struct Backend {
    pub config: Arc<Config>,
    users: RwLock<Arc<UserDb>>,
    aliases: RwLock<Arc<recipients::Aliases>>,
    /// Bounds concurrent password hashing (argon2id: 64 MiB each).
    hash_permits: Semaphore,
    /// Back-off per client IP and per user across connections.
    throttle: Arc<throttle::AuthThrottle>,
}

impl Backend {
    /// Load users and aliases for `config`.
    pub fn load(config: Arc<Config>) -> Result<Backend, String> {
        let users = UserDb::load(&config.users_file)
            .map_err(|e| format!("{}: {e}", config.users_file.display()))?;
        let aliases = match &config.aliases_file {
            Some(p) if p.exists() => {
                recipients::Aliases::load(p).map_err(|e| format!("{}: {e}", p.display()))?
            }
            _ => recipients::Aliases::default(),
        };
        let permits = config.limits.hash_concurrency;
        Ok(Backend {
            config,
            users: RwLock::new(Arc::new(users)),
            aliases: RwLock::new(Arc::new(aliases)),
            hash_permits: Semaphore::new(permits),
            throttle: Arc::default(),
        })
    }

    pub fn users(&self) -> Arc<UserDb> {
        self.users
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn aliases(&self) -> Arc<recipients::Aliases> {
        self.aliases
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// A backend for a reloaded config (SIGHUP), keeping the auth back-off state.
    pub fn reloaded(&self, config: Arc<Config>) -> Result<Backend, String> {
        let mut fresh = Backend::load(config)?;
        fresh.throttle = self.throttle.clone();
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
            None => self.throttle.failed(client, user, password, Instant::now()),
        }
        found
    }
}
