//! POP3 command parser (RFC 1939 §3, RFC 2449 §4, RFC 5034 §4): one line in, one
//! `Command` out. Pure: no I/O, no state; `state::check` decides what is allowed.

use std::fmt;

/// RFC 2449 §4: a command line is at most 255 octets including CRLF.
pub const MAX_LINE: usize = 255;
/// RFC 2449 §4: each argument is at most 40 characters.
pub const MAX_ARG: usize = 40;

/// Bytes that must never reach a log (PASS argument, SASL responses).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// One parsed POP3 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 1939 §7 USER name.
    User(String),
    /// RFC 1939 §7 PASS string: everything after "PASS " (spaces included).
    Pass(Secret),
    /// RFC 5034 §4 AUTH mechanism [initial-response]; no mechanism: list them.
    Auth {
        mechanism: Option<String>,
        initial: Option<Secret>,
    },
    /// RFC 1939 §7 APOP (recognised, not offered).
    Apop,
    /// RFC 2595 §4 STLS.
    Stls,
    /// RFC 2449 §5 CAPA.
    Capa,
    Quit,
    Stat,
    /// Message numbers are 1-based as on the wire.
    List(Option<usize>),
    Retr(usize),
    Dele(usize),
    Noop,
    Rset,
    Top {
        msg: usize,
        lines: u64,
    },
    Uidl(Option<usize>),
}

impl Command {
    /// The keyword, for logs (never the arguments: PASS and AUTH carry secrets).
    pub fn name(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Auth { .. } => "AUTH",
            Command::Apop => "APOP",
            Command::Stls => "STLS",
            Command::Capa => "CAPA",
            Command::Quit => "QUIT",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top { .. } => "TOP",
            Command::Uidl(_) => "UIDL",
        }
    }
}

/// Why a line is not a command. `Display` is the `-ERR` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line too long")]
    TooLong,
    #[error("Unknown command")]
    Unknown,
    #[error("Syntax error: {0}")]
    Syntax(&'static str),
}

/// Parse one command line (without its CRLF).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.len() + 2 > MAX_LINE {
        return Err(ParseError::TooLong);
    }
    let (kw, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], line.get(i + 1..).unwrap_or_default()),
        None => (line, &b""[..]),
    };
    if kw.is_empty() || kw.len() > 4 {
        return Err(ParseError::Unknown);
    }
    let mut k = [0u8; 4];
    for (d, s) in k.iter_mut().zip(kw) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &k[..kw.len()];

    // RFC 1939 §13: PASS takes the rest of the line, so passwords may contain
    // spaces. Its length is bounded by the line limit only: the 40-character
    // argument limit of RFC 2449 would refuse common passphrases.
    if kw == b"PASS" {
        if rest.is_empty() {
            return Err(ParseError::Syntax("PASS needs a password"));
        }
        return Ok(Command::Pass(Secret(rest.to_vec())));
    }

    let args = split_args(rest)?;
    let cmd = match kw {
        b"USER" => match args.as_slice() {
            [name] => Command::User(text(name, "user name")?),
            _ => return Err(ParseError::Syntax("USER needs one name")),
        },
        // RFC 5034 §4: the initial response is exempt from the 40-character
        // limit (it is base64 of a whole PLAIN message); `=` is an empty one.
        b"AUTH" => {
            let mut it = rest.split(|&b| b == b' ').filter(|a| !a.is_empty());
            let mechanism = match it.next() {
                Some(m) if m.len() > MAX_ARG => {
                    return Err(ParseError::Syntax("argument too long"));
                }
                Some(m) => Some(text(m, "mechanism")?.to_ascii_uppercase()),
                None => None,
            };
            let initial = it.next().map(|r| Secret(r.to_vec()));
            if it.next().is_some() {
                return Err(ParseError::Syntax(
                    "AUTH takes a mechanism and one response",
                ));
            }
            Command::Auth { mechanism, initial }
        }
        b"APOP" => Command::Apop,
        b"STLS" => no_args(&args, Command::Stls)?,
        b"CAPA" => no_args(&args, Command::Capa)?,
        b"QUIT" => no_args(&args, Command::Quit)?,
        b"STAT" => no_args(&args, Command::Stat)?,
        b"NOOP" => no_args(&args, Command::Noop)?,
        b"RSET" => no_args(&args, Command::Rset)?,
        b"LIST" => Command::List(optional_msg(&args)?),
        b"UIDL" => Command::Uidl(optional_msg(&args)?),
        b"RETR" => Command::Retr(one_msg(&args)?),
        b"DELE" => Command::Dele(one_msg(&args)?),
        b"TOP" => match args.as_slice() {
            [n, m] => Command::Top {
                msg: msg_number(n)?,
                lines: number(m)?,
            },
            _ => {
                return Err(ParseError::Syntax(
                    "TOP needs a message number and a line count",
                ));
            }
        },
        _ => return Err(ParseError::Unknown),
    };
    Ok(cmd)
}

/// Arguments separated by spaces. RFC 1939 says a single space; clients that send
/// two (or a trailing one) are tolerated, as popa3d and Dovecot do.
fn split_args(rest: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    let args: Vec<&[u8]> = rest
        .split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .collect();
    if args.iter().any(|a| a.len() > MAX_ARG) {
        return Err(ParseError::Syntax("argument too long"));
    }
    Ok(args)
}

fn no_args(args: &[&[u8]], cmd: Command) -> Result<Command, ParseError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax("no arguments expected"))
    }
}

/// Printable ASCII only: names become log fields and (after validation) paths.
fn text(arg: &[u8], what: &'static str) -> Result<String, ParseError> {
    if arg.iter().all(|b| (0x21..=0x7e).contains(b)) {
        Ok(String::from_utf8_lossy(arg).into_owned())
    } else {
        Err(ParseError::Syntax(what))
    }
}

/// Strictly decimal digits: no sign, no spaces, no hex.
fn number(arg: &[u8]) -> Result<u64, ParseError> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::Syntax("not a number"));
    }
    arg.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(ParseError::Syntax("number too large"))
    })
}

/// RFC 1939 §3: message numbers start at 1.
fn msg_number(arg: &[u8]) -> Result<usize, ParseError> {
    match number(arg)? {
        0 => Err(ParseError::Syntax("message numbers start at 1")),
        n => usize::try_from(n).map_err(|_| ParseError::Syntax("number too large")),
    }
}

fn one_msg(args: &[&[u8]]) -> Result<usize, ParseError> {
    match args {
        [n] => msg_number(n),
        _ => Err(ParseError::Syntax("one message number expected")),
    }
}

fn optional_msg(args: &[&[u8]]) -> Result<Option<usize>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => msg_number(n).map(Some),
        _ => Err(ParseError::Syntax("at most one message number expected")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &str) -> Secret {
        Secret(b.as_bytes().to_vec())
    }

    #[test]
    fn table() {
        use Command::*;
        let long_arg = format!("USER {}", "a".repeat(41));
        let max_arg = format!("USER {}", "a".repeat(40));
        let long_pass = format!("PASS {}", "p".repeat(200));
        let too_long = format!("PASS {}", "p".repeat(249));
        let cases: Vec<(&[u8], Result<Command, ParseError>)> = vec![
            (b"USER alice", Ok(User("alice".into()))),
            (b"user alice", Ok(User("alice".into()))),
            (
                b"UsEr alice@example.org",
                Ok(User("alice@example.org".into())),
            ),
            (b"USER", Err(ParseError::Syntax("USER needs one name"))),
            (b"USER a b", Err(ParseError::Syntax("USER needs one name"))),
            (b"USER al\x01ce", Err(ParseError::Syntax("user name"))),
            (
                long_arg.as_bytes(),
                Err(ParseError::Syntax("argument too long")),
            ),
            (max_arg.as_bytes(), Ok(User("a".repeat(40)))),
            (b"PASS secret", Ok(Pass(s("secret")))),
            (b"pass two words ", Ok(Pass(s("two words ")))),
            (b"PASS  lead", Ok(Pass(s(" lead")))),
            (b"PASS", Err(ParseError::Syntax("PASS needs a password"))),
            (b"PASS ", Err(ParseError::Syntax("PASS needs a password"))),
            (long_pass.as_bytes(), Ok(Pass(s(&"p".repeat(200))))),
            (too_long.as_bytes(), Err(ParseError::TooLong)),
            (
                b"AUTH",
                Ok(Auth {
                    mechanism: None,
                    initial: None,
                }),
            ),
            (
                b"auth plain",
                Ok(Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: None,
                }),
            ),
            (
                b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
                Ok(Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: Some(s("AGFsaWNlAHNlY3JldA==")),
                }),
            ),
            (
                b"AUTH PLAIN =",
                Ok(Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: Some(s("=")),
                }),
            ),
            (
                b"AUTH PLAIN a b",
                Err(ParseError::Syntax(
                    "AUTH takes a mechanism and one response",
                )),
            ),
            (b"APOP alice 0123456789abcdef", Ok(Apop)),
            (b"STLS", Ok(Stls)),
            (b"capa", Ok(Capa)),
            (b"CAPA x", Err(ParseError::Syntax("no arguments expected"))),
            (b"QUIT", Ok(Quit)),
            (b"quit ", Ok(Quit)),
            (b"STAT", Ok(Stat)),
            (b"NOOP", Ok(Noop)),
            (b"RSET", Ok(Rset)),
            (b"LIST", Ok(List(None))),
            (b"LIST 3", Ok(List(Some(3)))),
            (
                b"LIST 0",
                Err(ParseError::Syntax("message numbers start at 1")),
            ),
            (b"LIST -1", Err(ParseError::Syntax("not a number"))),
            (b"LIST +1", Err(ParseError::Syntax("not a number"))),
            (b"LIST 0x10", Err(ParseError::Syntax("not a number"))),
            (
                b"LIST 1 2",
                Err(ParseError::Syntax("at most one message number expected")),
            ),
            (
                b"LIST 99999999999999999999999",
                Err(ParseError::Syntax("number too large")),
            ),
            (b"RETR 1", Ok(Retr(1))),
            (b"retr 007", Ok(Retr(7))),
            (
                b"RETR",
                Err(ParseError::Syntax("one message number expected")),
            ),
            (b"RETR a", Err(ParseError::Syntax("not a number"))),
            (b"DELE 2", Ok(Dele(2))),
            (
                b"DELE 0",
                Err(ParseError::Syntax("message numbers start at 1")),
            ),
            (b"TOP 1 0", Ok(Top { msg: 1, lines: 0 })),
            (b"top 2 10", Ok(Top { msg: 2, lines: 10 })),
            (
                b"TOP 1",
                Err(ParseError::Syntax(
                    "TOP needs a message number and a line count",
                )),
            ),
            (
                b"TOP 0 1",
                Err(ParseError::Syntax("message numbers start at 1")),
            ),
            (b"TOP 1 -1", Err(ParseError::Syntax("not a number"))),
            (b"UIDL", Ok(Uidl(None))),
            (b"UIDL 4", Ok(Uidl(Some(4)))),
            (b"", Err(ParseError::Unknown)),
            (b" STAT", Err(ParseError::Unknown)),
            (b"STATS", Err(ParseError::Unknown)),
            (b"XYZ", Err(ParseError::Unknown)),
            (b"\xff\xfe", Err(ParseError::Unknown)),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), want, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = parse(b"PASS hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = parse(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==").unwrap();
        assert!(!format!("{c:?}").contains("AGFsaWNl"));
        assert_eq!(c.name(), "AUTH");
    }
}
