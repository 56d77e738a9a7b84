//! AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN: when it is offered, the
//! SASL exchange, the password check, and the failure delay and cap.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use crate::conn::Line;
use crate::sasl::{self, SaslError};
use crate::smtp::backend::Backend;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Flow, Session, Stop};

/// RFC 4954 §4: a client response line may be up to 12288 octets.
const MAX_AUTH_LINE: usize = 12288;

/// How an AUTH exchange ended before the password check.
enum Exchange {
    Credentials(String, sasl::Password),
    /// A reply has been decided (cancel, bad base64...).
    Refused(Reply),
    /// The connection ended or timed out during the exchange.
    Stopped(Stop),
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// AUTH is offered on submission listeners over TLS, or in plaintext where
    /// the config allows it (loopback, `[smtp] allow_plaintext_auth`).
    pub(in crate::smtp) fn auth_offered(&self) -> bool {
        self.cfg.submission && (self.tls || self.cfg.plaintext_auth_allowed)
    }

    /// RFC 4954 §4: AUTH PLAIN (RFC 4616) and LOGIN. Credentials are never logged.
    pub(in crate::smtp) async fn auth(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> io::Result<Flow> {
        if !self.cfg.submission {
            return Ok(self.reply(Reply::new(502, "5.5.1", "Error: command not implemented")));
        }
        if !self.auth_offered() {
            // RFC 4954 §6.
            return Ok(self.reply(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            )));
        }
        if self.auth_user.is_some() {
            return Ok(self.reply(Reply::new(503, "5.5.1", "Error: already authenticated")));
        }
        let exchange = match mechanism.as_str() {
            "PLAIN" => self.auth_plain(initial).await,
            "LOGIN" => self.auth_login(initial).await,
            _ => Exchange::Refused(Reply::new(504, "5.5.4", "Unrecognized authentication type")),
        };
        let (user, password) = match exchange {
            Exchange::Credentials(u, p) => (u, p),
            Exchange::Refused(r) => return Ok(self.reply(r)),
            Exchange::Stopped(stop) => return self.stopped(stop),
        };
        let outcome = self
            .backend
            .login(&user, password.expose(), self.info.peer.map(|p| p.ip()))
            .await;
        drop(password);
        match outcome {
            Some(a) if a.may_submit || !self.cfg.submission => {
                info!(user = ?a.user, mechanism = %mechanism, "smtp login");
                self.observer.auth(&a.user, &mechanism, true);
                self.auth_user = Some(a.user);
                Ok(self.reply(Reply::new(235, "2.7.0", "Authentication successful")))
            }
            Some(a) => {
                info!(user = ?a.user, "smtp login refused: no submit role");
                self.auth_failed(&user).await
            }
            None => self.auth_failed(&user).await,
        }
    }

    /// Every failure looks the same on the wire: a delay, `535 5.7.8`, and the
    /// connection closed after `auth_failures`.
    async fn auth_failed(&mut self, user: &str) -> io::Result<Flow> {
        self.auth_failures += 1;
        // Its one log line is the daemon's fail2ban line (the observer's).
        self.observer.auth(user, "", false);
        crate::metrics::get().refused(self.protocol_name(), "auth");
        self.conn.flush().await?;
        tokio::time::sleep(self.cfg.auth_failure_delay).await;
        let flow = self.answer(Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid",
        ));
        if flow == Flow::Continue && self.auth_failures >= self.cfg.auth_failures {
            let text = format!("{} Too many authentication failures", self.cfg.hostname);
            self.close_with(Reply::new(421, "4.7.0", text));
            return Ok(Flow::Close);
        }
        Ok(flow)
    }

    /// RFC 4616 via RFC 4954 §4: the initial response, or an empty `334` challenge.
    async fn auth_plain(&mut self, initial: Option<String>) -> Exchange {
        let response = match initial {
            Some(r) => r,
            None => match self.challenge("").await {
                Ok(r) => r,
                Err(e) => return e,
            },
        };
        match sasl::decode_plain(&response) {
            Ok(p) => Exchange::Credentials(p.authcid.clone(), p.password.clone()),
            // No proxy logins: treated as a failed login, like a wrong password.
            Err(SaslError::AuthzidMismatch) => {
                Exchange::Credentials(String::new(), sasl::Password::new(Vec::new()))
            }
            Err(e) => Exchange::Refused(sasl_refusal(e)),
        }
    }

    /// The LOGIN mechanism: `334 Username:` and `334 Password:` (base64), the
    /// user name possibly given as the initial response.
    async fn auth_login(&mut self, initial: Option<String>) -> Exchange {
        let user_b64 = match initial {
            Some(r) => r,
            None => match self.challenge("VXNlcm5hbWU6").await {
                Ok(r) => r,
                Err(e) => return e,
            },
        };
        let user = match sasl::decode_login_step(&user_b64) {
            Ok(u) => u,
            Err(e) => return Exchange::Refused(sasl_refusal(e)),
        };
        let pass_b64 = match self.challenge("UGFzc3dvcmQ6").await {
            Ok(r) => r,
            Err(e) => return e,
        };
        match sasl::decode_login_password(&pass_b64) {
            Ok(p) => Exchange::Credentials(user, p),
            Err(e) => Exchange::Refused(sasl_refusal(e)),
        }
    }

    /// Send a `334` challenge and read the client's response line.
    async fn challenge(&mut self, b64: &str) -> Result<String, Exchange> {
        self.conn.queue(format!("334 {b64}\r\n").as_bytes());
        match self
            .conn
            .read_line(MAX_AUTH_LINE, self.cfg.command_timeout)
            .await
        {
            Ok(Line::Complete(l)) => match String::from_utf8(l) {
                Ok(s) => Ok(s),
                Err(_) => Err(Exchange::Refused(sasl_refusal(SaslError::Base64))),
            },
            Ok(Line::TooLong) => Err(Exchange::Refused(Reply::new(
                500,
                "5.5.6",
                "Authentication Exchange line is too long",
            ))),
            Ok(Line::Eof) => Err(Exchange::Stopped(Stop::Eof)),
            Err(e) => Err(Exchange::Stopped(e.into())),
        }
    }
}

/// RFC 4954 §4: `*` cancels (501 5.0.0); undecodable responses get 501 5.5.2.
fn sasl_refusal(e: SaslError) -> Reply {
    match e {
        SaslError::Cancelled => Reply::new(501, "5.0.0", "Authentication cancelled"),
        _ => Reply::new(501, "5.5.2", "Cannot decode response"),
    }
}
