//! STLS (RFC 2595 §4): the upgrade to TLS in AUTHORIZATION, refused when
//! plaintext is pipelined after it, and the reset that follows.
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use crate::pop3::session::{Flow, Session, refused};
use crate::pop3::state::State;
use crate::pop3::store::Store;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, St: Store> Session<S, St> {
    /// RFC 2595 §4 STLS (AUTHORIZATION only, checked by `state::check`).
    /// Refused when pipelined input follows it (CVE-2011-0411 class): those bytes
    /// came in plaintext and are dropped with the connection, never executed.
    pub(in crate::pop3) async fn stls(&mut self) -> io::Result<Flow> {
        let Some(upgrade) = self.starttls.clone() else {
            refused("not_implemented");
            self.err(None, "STLS not available");
            return Ok(Flow::Continue);
        };
        if self.conn.buffered_input() != 0 {
            info!(
                pipelined = self.conn.buffered_input(),
                "STLS refused: plaintext pipelined after it; closing"
            );
            refused("sequence");
            self.err(None, "STLS refused: commands pipelined after STLS");
            return Ok(Flow::Close);
        }
        self.ok("Begin TLS negotiation");
        self.conn.flush().await?;
        if let Err(e) = upgrade.upgrade().await {
            info!(error = %e, "TLS handshake failed");
            return Err(e);
        }
        debug!("TLS started");
        // RFC 2595 §4: back to AUTHORIZATION with nothing remembered (a USER
        // given before is forgotten); failures still count. Logins in plaintext
        // are now protected by TLS.
        let failures = match &self.state {
            State::Authorization { failures, .. } => *failures,
            _ => 0,
        };
        self.state = State::Authorization {
            user: None,
            failures,
        };
        self.cfg.plaintext_auth_allowed = true;
        self.starttls = None;
        Ok(Flow::Continue)
    }
}
