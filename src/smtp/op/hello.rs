//! The session-level commands: EHLO/HELO (RFC 5321 §4.1.1.1, with the
//! extensions this connection offers), RSET, NOOP, QUIT, VRFY, EXPN and HELP.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::smtp::backend::Backend;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Flow, Session};
use crate::smtp::state::State;

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// RFC 5321 §4.1.1.1: EHLO/HELO (also mid-session) resets the transaction.
    pub(in crate::smtp) async fn ehlo(&mut self, domain: String, esmtp: bool) -> Flow {
        self.reset_transaction().await;
        self.state = State::Idle;
        self.esmtp = esmtp;
        self.info.helo = domain;
        let host = self.cfg.hostname.clone();
        // RFC 2034 §3: no enhanced status code on the EHLO/HELO reply.
        let reply = if esmtp {
            let mut lines = vec![
                host,
                "PIPELINING".into(),
                format!("SIZE {}", self.cfg.max_message_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                "SMTPUTF8".into(),
                "CHUNKING".into(),
            ];
            // What this connection can do now: STARTTLS until it is TLS, AUTH
            // once it may be used without exposing the password.
            if self.starttls.is_some() && !self.tls {
                lines.push("STARTTLS".into());
            }
            if self.auth_offered() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
            Reply {
                because: None,
                code: 250,
                status: "".into(),
                lines,
            }
        } else {
            Reply::new(250, "", host)
        };
        self.reply(reply)
    }

    /// RFC 5321 §4.1.1.5
    pub(in crate::smtp) async fn rset(&mut self) -> Flow {
        self.reset_transaction().await;
        self.reply(Reply::new(250, "2.0.0", "Ok"))
    }

    /// RFC 5321 §4.1.1.9
    pub(in crate::smtp) fn noop(&mut self) -> Flow {
        self.reply(Reply::new(250, "2.0.0", "Ok"))
    }

    /// RFC 5321 §4.1.1.10
    pub(in crate::smtp) fn quit(&mut self) -> Flow {
        self.queue(&Reply::new(221, "2.0.0", "Bye"));
        Flow::Close
    }

    /// RFC 5321 §3.5.3: 252 when we will not say, but will accept.
    pub(in crate::smtp) fn vrfy(&mut self) -> Flow {
        self.reply(Reply::new(
            252,
            "2.5.0",
            "Cannot VRFY user, but will accept message",
        ))
    }

    /// RFC 5321 §3.5.2: EXPN may be refused; lists are nobody's business.
    pub(in crate::smtp) fn expn(&mut self) -> Flow {
        self.reply(Reply::new(502, "5.5.1", "EXPN not available"))
    }

    /// RFC 5321 §4.1.1.8
    pub(in crate::smtp) fn help(&mut self) -> Flow {
        self.reply(Reply::new(
            214,
            "2.0.0",
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
        ))
    }
}
