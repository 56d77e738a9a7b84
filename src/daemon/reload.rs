//! SIGHUP: re-read the config, users, aliases and certificate into a new
//! `Live`; sessions in flight keep the one they started with.

use super::*;

impl Shared {
    pub(super) fn live(&self) -> Arc<Live> {
        self.live
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// SIGHUP: re-read the config file, users, aliases and certificate. A bad
    /// config is reported and the old one kept; listener and limit changes need
    /// a restart (the sockets and caps are set up once).
    pub(super) fn reload(&self) {
        let old = self.live();
        let config = match Config::load(&self.config_path) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "reload: bad config; keeping the old one");
                return;
            }
        };
        let chains = match chains::build(&config, &chains::registry(self.tls.as_ref())) {
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
        if before.listeners != config.listeners
            || before.limits != config.limits
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
