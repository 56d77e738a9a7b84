//! TODO (being written): the SMTP session over a `Conn`.
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use super::backend::{Backend, SessionInfo};
use crate::config::BareLf;
use crate::conn::Conn;

/// Per-session settings, taken from the config when the connection is accepted.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_command_line: usize,
    pub max_text_line: usize,
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub bare_lf: BareLf,
}

pub struct Session<S, B: Backend> {
    conn: Conn<S>,
    backend: Arc<B>,
    cfg: SessionConfig,
    info: SessionInfo,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    pub fn new(stream: S, backend: Arc<B>, cfg: SessionConfig, info: SessionInfo) -> Self {
        Session {
            conn: Conn::new(stream),
            backend,
            cfg,
            info,
        }
    }

    /// Run the session to its end (QUIT, EOF, timeout, error cap).
    pub async fn run(self) -> std::io::Result<()> {
        let _ = (&self.conn, &self.backend, &self.cfg, &self.info);
        Ok(())
    }
}
