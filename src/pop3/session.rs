//! TODO (being written): the POP3 session over a `Conn`.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::store::Store;
use crate::conn::Conn;

/// Per-session settings, taken from the config when the connection is accepted.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    /// USER/PASS and AUTH PLAIN are allowed on this connection (TLS, loopback, or config).
    pub plaintext_auth_allowed: bool,
    pub idle_timeout: Duration,
    pub max_errors: u32,
    pub auth_failures: u32,
    pub auth_failure_delay: Duration,
    pub retr_marks_seen: bool,
}

pub struct Session<S, St: Store> {
    conn: Conn<S>,
    store: Arc<St>,
    cfg: SessionConfig,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, St: Store> Session<S, St> {
    pub fn new(stream: S, store: Arc<St>, cfg: SessionConfig) -> Self {
        Session {
            conn: Conn::new(stream),
            store,
            cfg,
        }
    }

    pub async fn run(self) -> std::io::Result<()> {
        let _ = (&self.conn, &self.store, &self.cfg);
        Ok(())
    }
}
