//! STARTTLS (RFC 3207): the upgrade, refused when plaintext was pipelined
//! after it, and the session starting over afterwards.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use crate::smtp::backend::Backend;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Flow, Session};
use crate::smtp::state::State;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// RFC 3207 §4: STARTTLS. Refused when pipelined input follows the command
    /// (CVE-2011-0411: those bytes were sent in plaintext and must never run as
    /// if they came over TLS); after the handshake the session starts over.
    pub(in crate::smtp) async fn starttls(&mut self) -> io::Result<Flow> {
        let Some(upgrade) = self.starttls.clone().filter(|_| !self.tls) else {
            return Ok(if self.tls {
                self.reply(Reply::new(503, "5.5.1", "Error: TLS already active"))
            } else {
                self.reply(Reply::new(502, "5.5.1", "Error: command not implemented"))
            });
        };
        if self.conn.buffered_input() != 0 {
            info!(
                pipelined = self.conn.buffered_input(),
                "STARTTLS refused: plaintext pipelined after it; closing"
            );
            // The pipelined bytes are dropped with the connection, never executed.
            self.close_with(Reply::new(
                454,
                "4.7.0",
                "TLS not available: commands pipelined after STARTTLS",
            ));
            return Ok(Flow::Close);
        }
        self.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.conn.flush().await?;
        if let Err(e) = upgrade.upgrade().await {
            // Nothing can be said: the client expects TLS and there is none.
            info!(session = self.info.id, error = %e, "TLS handshake failed");
            return Err(e);
        }
        debug!(session = self.info.id, "TLS started");
        // RFC 3207 §4.2: discard all knowledge obtained from the client; it must
        // send EHLO again. AUTH goes too.
        self.reset_transaction().await;
        self.state = State::Connected;
        self.esmtp = false;
        self.info.helo.clear();
        self.auth_user = None;
        self.tls = true;
        self.starttls = None;
        Ok(Flow::Continue)
    }
}
