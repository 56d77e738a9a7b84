//! The SMTP session state and the pure sequence check (RFC 5321 §4.1.4, §3.3;
//! RFC 3030 §2 for BDAT): is a command allowed now? Else 503 5.5.1 (or 554 5.5.1
//! for DATA when every recipient was refused, as Postfix answers).

use super::backend::Envelope;
use super::command::Command;
use super::data::BdatDecoder;
use super::reply::Reply;

/// Where the session is. `K` is the backend's body sink, held while BDAT chunks
/// arrive (generic so the check can be tested without a backend).
#[derive(Debug)]
pub enum State<K> {
    /// Before EHLO/HELO.
    Connected,
    /// Greeted, no mail transaction.
    Idle,
    /// MAIL FROM was accepted; recipients and perhaps BDAT chunks follow.
    Mail(Transaction<K>),
}

/// One mail transaction: RSET, EHLO/HELO and (later) STARTTLS drop it whole.
#[derive(Debug)]
pub struct Transaction<K> {
    pub env: Envelope,
    /// RCPTs refused so far: DATA with no accepted recipient then says why.
    pub refused: u32,
    /// Set by the first BDAT (RFC 3030): the body being stored.
    pub chunks: Option<Box<Chunks<K>>>,
}

impl<K> Transaction<K> {
    pub fn new(env: Envelope) -> Self {
        Transaction {
            env,
            refused: 0,
            chunks: None,
        }
    }
}

/// A body arriving in BDAT chunks.
#[derive(Debug)]
pub struct Chunks<K> {
    pub sink: K,
    pub decoder: BdatDecoder,
    /// Octets received so far (chunk sizes, CRLF counted as two).
    pub size: u64,
    /// The header section, read as the chunks arrive.
    pub header: crate::smtp::header::HeaderScan,
    /// When the first chunk came (for the delivery's delay).
    pub started: std::time::Instant,
}

fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", text)
}

/// May `cmd` be run in `state`? Pure; the session calls it before acting.
pub fn check<K>(state: &State<K>, cmd: &Command) -> Result<(), Reply> {
    match (state, cmd) {
        // RFC 5321 §4.1.4: a transaction needs a greeting first.
        (State::Connected, Command::Mail { .. } | Command::Rcpt { .. })
        | (State::Connected, Command::Data | Command::Bdat { .. }) => {
            Err(bad_sequence("Error: send HELO/EHLO first"))
        }
        // RFC 4954 §4: AUTH is an extension, so it needs EHLO, and it is not
        // permitted during a mail transaction.
        (State::Connected, Command::Auth(_)) => Err(bad_sequence("Error: send EHLO first")),
        (State::Mail(_), Command::Auth(_)) => {
            Err(bad_sequence("Error: MAIL transaction in progress"))
        }
        // RFC 3207 §4.2 resets everything; refusing mid-transaction (as Postfix
        // does) keeps an envelope from straddling the upgrade.
        (State::Mail(_), Command::StartTls) => {
            Err(bad_sequence("Error: MAIL transaction in progress"))
        }
        (State::Mail(_), Command::Mail { .. }) => Err(bad_sequence("Error: nested MAIL command")),
        (State::Idle, Command::Rcpt { .. } | Command::Data | Command::Bdat { .. }) => {
            Err(bad_sequence("Error: need MAIL command"))
        }
        // RFC 3030 §2: recipients come before the first chunk, and BDAT and DATA
        // do not mix in one transaction.
        (State::Mail(tx), Command::Rcpt { .. }) if tx.chunks.is_some() => {
            Err(bad_sequence("Error: RCPT after BDAT"))
        }
        (State::Mail(tx), Command::Data) if tx.chunks.is_some() => {
            Err(bad_sequence("Error: DATA after BDAT"))
        }
        (State::Mail(tx), Command::Data | Command::Bdat { .. }) if tx.env.rcpts.is_empty() => {
            if tx.refused > 0 {
                Err(Reply::new(554, "5.5.1", "Error: no valid recipients"))
            } else {
                Err(bad_sequence("Error: need RCPT command"))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::command::{AuthArgs, MailParams};

    fn tx(rcpts: usize, refused: u32, bdat: bool) -> State<()> {
        let mut env = Envelope::default();
        for i in 0..rcpts {
            env.rcpts.push((format!("u{i}@d"), vec![format!("u{i}")]));
        }
        State::Mail(Transaction {
            env,
            refused,
            chunks: bdat.then(|| {
                Box::new(Chunks {
                    sink: (),
                    decoder: BdatDecoder::new(1000),
                    size: 0,
                    header: Default::default(),
                    started: std::time::Instant::now(),
                })
            }),
        })
    }

    fn commands() -> Vec<Command> {
        vec![
            Command::Ehlo("c".into()),
            Command::Helo("c".into()),
            Command::Mail {
                from: "a@b".into(),
                params: MailParams::default(),
            },
            Command::Rcpt { to: "u@d".into() },
            Command::Data,
            Command::Bdat {
                size: 1,
                last: false,
            },
            Command::Rset,
            Command::Noop,
            Command::Quit,
            Command::Vrfy("x".into()),
            Command::Expn("x".into()),
            Command::Help,
            Command::StartTls,
            Command::Auth(AuthArgs {
                mechanism: "PLAIN".into(),
                initial_response: None,
            }),
        ]
    }

    #[test]
    fn every_state_and_command() {
        // Expected code per command, in the order of `commands()`:
        // EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH
        // (0 = allowed).
        let table: Vec<(&str, State<()>, [u16; 14])> = vec![
            (
                "connected",
                State::Connected,
                [0, 0, 503, 503, 503, 503, 0, 0, 0, 0, 0, 0, 0, 503],
            ),
            (
                "idle",
                State::Idle,
                [0, 0, 0, 503, 503, 503, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
            (
                "mail, no rcpt yet",
                tx(0, 0, false),
                [0, 0, 503, 0, 503, 503, 0, 0, 0, 0, 0, 0, 503, 503],
            ),
            (
                "mail, all rcpts refused",
                tx(0, 2, false),
                [0, 0, 503, 0, 554, 554, 0, 0, 0, 0, 0, 0, 503, 503],
            ),
            (
                "mail with rcpts",
                tx(2, 1, false),
                [0, 0, 503, 0, 0, 0, 0, 0, 0, 0, 0, 0, 503, 503],
            ),
            (
                "bdat in progress",
                tx(1, 0, true),
                [0, 0, 503, 503, 503, 0, 0, 0, 0, 0, 0, 0, 503, 503],
            ),
        ];
        for (name, state, want) in table {
            for (cmd, &code) in commands().iter().zip(want.iter()) {
                let got = match check(&state, cmd) {
                    Ok(()) => 0,
                    Err(r) => {
                        assert_eq!(r.status, "5.5.1", "{name} {cmd:?}");
                        r.code
                    }
                };
                assert_eq!(got, code, "{name} {cmd:?}");
            }
        }
    }
}
