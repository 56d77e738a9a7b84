//! MAIL and RCPT: opening the transaction and collecting its recipients
//! (RFC 5321 §4.1.1.2, §4.1.1.3).

use tokio::io::{AsyncRead, AsyncWrite};

use crate::smtp::backend::{Backend, Envelope};
use crate::smtp::command::MailParams;
use crate::smtp::reply::Reply;
use crate::smtp::session::{Flow, Session};
use crate::smtp::state::{State, Transaction};

impl<S: AsyncRead + AsyncWrite + Unpin + Send, B: Backend> Session<S, B> {
    /// RFC 5321 §4.1.1.2, with SIZE (RFC 1870 §6), BODY (RFC 6152), SMTPUTF8.
    pub(in crate::smtp) fn mail(&mut self, from: String, params: MailParams) -> Flow {
        if params.size.is_some_and(|n| n > self.cfg.max_message_size) {
            return self.reply(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        }
        let env = Envelope {
            mail_from: from,
            rcpts: Vec::new(),
            body_8bit: params.body_8bit,
            smtputf8: params.smtputf8,
            declared_size: params.size,
        };
        self.state = State::Mail(Transaction::new(env));
        self.reply(Reply::new(250, "2.1.0", "Ok"))
    }

    /// RFC 5321 §4.1.1.3.
    pub(in crate::smtp) async fn rcpt(&mut self, to: String) -> Flow {
        let State::Mail(tx) = &mut self.state else {
            return self.reply(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        // RFC 6531 §3.4: a Unicode address needs SMTPUTF8 on MAIL.
        let refusal = if !to.is_ascii() && !tx.env.smtputf8 {
            Some(Reply::new(
                553,
                "5.6.7",
                "Must declare SMTPUTF8 to send Unicode addresses",
            ))
        } else if tx.env.rcpts.len() >= self.cfg.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 lets the client send the rest later.
            Some(Reply::new(452, "4.5.3", "Too many recipients"))
        } else {
            match self.backend.resolve_recipient(&to, &tx.env).await {
                Ok(mailboxes) => {
                    let entry = (to.clone(), mailboxes);
                    // The same recipient twice gets one copy.
                    if !tx.env.rcpts.contains(&entry) {
                        tx.env.rcpts.push(entry);
                    }
                    None
                }
                Err(r) => Some(r),
            }
        };
        match refusal {
            Some(r) => {
                tx.refused += 1;
                self.refused(&r, Some(&to));
                self.answer(r)
            }
            None => self.reply(Reply::new(250, "2.1.5", "Ok")),
        }
    }
}
