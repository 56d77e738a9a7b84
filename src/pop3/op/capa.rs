//! CAPA (RFC 2449 §5), valid in both states: the capability list offered on
//! this connection now.
use tokio::io::{AsyncRead, AsyncWrite};

use crate::pop3::reply;
use crate::pop3::session::Session;
use crate::pop3::state::State;
use crate::pop3::store::Store;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, St: Store> Session<S, St> {
    /// RFC 2449 §5 CAPA (both states).
    pub(in crate::pop3) fn capa(&mut self) {
        let mut body = String::from("TOP\nUIDL\n");
        // RFC 2595 §4: STLS only where it can be used now (AUTHORIZATION, not yet TLS).
        if self.starttls.is_some() && matches!(self.state, State::Authorization { .. }) {
            body.push_str("STLS\n");
        }
        if self.cfg.plaintext_auth_allowed {
            body.push_str("USER\n");
        }
        body.push_str("RESP-CODES\nAUTH-RESP-CODE\nPIPELINING\n");
        if self.cfg.plaintext_auth_allowed {
            body.push_str("SASL PLAIN\n");
        }
        body.push_str("EXPIRE NEVER\nIMPLEMENTATION maildird\n");
        let mut out = Vec::new();
        reply::ok(&mut out, "Capability list follows");
        reply::multiline(&mut out, body.as_bytes());
        self.conn.queue(&out);
    }
}
