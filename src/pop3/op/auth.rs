//! The AUTHORIZATION commands: USER and PASS (RFC 1939 §7), APOP (refused),
//! AUTH PLAIN (RFC 5034, RFC 4616), and the login and failure paths they share.
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::transaction::totals;
use crate::conn::{ConnError, Line};
use crate::pop3::command::Secret;
use crate::pop3::reply::{self, RespCode};
use crate::pop3::session::{Flow, Session, refused};
use crate::pop3::state::{Marks, State};
use crate::pop3::store::{Mailbox, Store, StoreError};
use crate::sasl::{self, SaslError};

/// RFC 5034 §4: a SASL client response line is not bound by the 255-octet
/// command limit; this bounds it anyway.
const MAX_SASL_LINE: usize = 4096;

const PLAINTEXT_DISALLOWED: &str = "Plaintext authentication disallowed on non-secure connection";

impl<S: AsyncRead + AsyncWrite + Unpin + Send, St: Store> Session<S, St> {
    /// RFC 1939 §7 USER.
    pub(in crate::pop3) fn user(&mut self, name: String) {
        if !self.cfg.plaintext_auth_allowed {
            refused("encryption_required");
            self.err(Some(RespCode::Auth), PLAINTEXT_DISALLOWED);
            return;
        }
        if let State::Authorization { user, .. } = &mut self.state {
            *user = Some(name);
        }
        self.ok("");
    }

    /// RFC 1939 §7 PASS.
    pub(in crate::pop3) async fn pass(&mut self, password: Secret) -> io::Result<Flow> {
        let user = match &mut self.state {
            State::Authorization { user, .. } => user.take(),
            _ => None,
        };
        match user {
            Some(u) => self.login(u, password).await,
            None => Ok(self.protocol_error("USER first")),
        }
    }

    /// RFC 1939 §7 APOP: it needs the plaintext password stored; we keep hashes.
    pub(in crate::pop3) fn apop(&mut self) {
        refused("not_implemented");
        self.err(None, "APOP not supported");
    }

    /// RFC 5034 §4 AUTH; only PLAIN (RFC 4616) is offered.
    pub(in crate::pop3) async fn auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<Secret>,
    ) -> io::Result<Flow> {
        let Some(mechanism) = mechanism else {
            // Pre-RFC 5034 clients send a bare AUTH to list mechanisms.
            let mut out = Vec::new();
            reply::ok(&mut out, "");
            let list: &[u8] = if self.cfg.plaintext_auth_allowed {
                b"PLAIN\n"
            } else {
                b""
            };
            reply::multiline(&mut out, list);
            self.conn.queue(&out);
            return Ok(Flow::Continue);
        };
        if mechanism != "PLAIN" {
            refused("not_implemented");
            self.err(None, "Unsupported authentication mechanism");
            return Ok(Flow::Continue);
        }
        if !self.cfg.plaintext_auth_allowed {
            refused("encryption_required");
            self.err(Some(RespCode::Auth), PLAINTEXT_DISALLOWED);
            return Ok(Flow::Continue);
        }
        let response = match initial {
            Some(r) => r,
            None => {
                // RFC 5034 §4: an empty server challenge.
                self.conn.queue(b"+ \r\n");
                match self
                    .conn
                    .read_line(MAX_SASL_LINE, self.cfg.idle_timeout)
                    .await
                {
                    Ok(Line::Complete(l)) => Secret(l),
                    Ok(Line::TooLong) => return Ok(self.protocol_error("line too long")),
                    Ok(Line::Eof) | Err(ConnError::Timeout) => return Ok(Flow::Close),
                    Err(ConnError::Io(e)) => return Err(e),
                }
            }
        };
        // RFC 5034 §4: `*` cancels the exchange.
        if response.0 == b"*" {
            refused("syntax");
            self.err(None, "Authentication cancelled");
            return Ok(Flow::Continue);
        }
        let decoded = std::str::from_utf8(&response.0)
            .map_err(|_| SaslError::Base64)
            .and_then(sasl::decode_plain);
        let plain = match decoded {
            Ok(p) => p,
            // No proxy logins: an authorization identity must name the same user.
            Err(SaslError::AuthzidMismatch) => return self.login_failed("").await,
            Err(_) => {
                refused("syntax");
                self.err(None, "Invalid SASL PLAIN response");
                return Ok(Flow::Continue);
            }
        };
        self.login(plain.authcid, Secret(plain.password.expose().to_vec()))
            .await
    }

    /// Check credentials and open the mailbox; enter TRANSACTION (RFC 1939 §4).
    async fn login(&mut self, user: String, password: Secret) -> io::Result<Flow> {
        match self.store.login(&user, &password.0, self.cfg.client).await {
            Ok(mailbox) => {
                let (count, size) = totals(mailbox.messages(), None);
                info!(user = ?user, messages = count, "pop3 login");
                self.observer.auth(&user, "", true);
                self.stats.user = Some(user.clone());
                self.state = State::Transaction {
                    deleted: Marks::new(mailbox.messages().len()),
                    mailbox,
                };
                self.ok(&format!("Logged in, {count} messages ({size} octets)"));
                Ok(Flow::Continue)
            }
            Err(StoreError::Auth) => self.login_failed(&user).await,
            Err(StoreError::InUse) => {
                info!(user = ?user, reason = "in_use", "pop3 mailbox in use");
                refused("in_use");
                self.err(
                    Some(RespCode::InUse),
                    "Mailbox is locked by another POP3 session",
                );
                Ok(Flow::Continue)
            }
            Err(StoreError::Temporary | StoreError::Gone) => {
                warn!(user = ?user, reason = "storage", "pop3 mailbox could not be opened");
                refused("storage");
                self.err(
                    Some(RespCode::SysTemp),
                    "Mailbox unavailable, try again later",
                );
                Ok(Flow::Continue)
            }
        }
    }

    /// One path for unknown users, wrong passwords and refused roles: delay, the
    /// same reply, and close after `auth_failures`.
    async fn login_failed(&mut self, user: &str) -> io::Result<Flow> {
        let failures = match &mut self.state {
            State::Authorization { failures, .. } => {
                *failures += 1;
                *failures
            }
            _ => 0,
        };
        // Its one log line is the daemon's fail2ban line (the observer's).
        refused("auth");
        self.observer.auth(user, "", false);
        // Flush what is queued before sleeping so earlier replies are not held.
        self.conn.flush().await?;
        tokio::time::sleep(self.cfg.auth_failure_delay).await;
        self.err(Some(RespCode::Auth), "Authentication failed");
        if failures >= self.cfg.auth_failures {
            Ok(Flow::Close)
        } else {
            Ok(Flow::Continue)
        }
    }
}
