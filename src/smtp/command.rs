//! The SMTP command parser (RFC 5321 §4.1, with the MAIL parameters of SIZE
//! RFC 1870, 8BITMIME RFC 6152 and SMTPUTF8 RFC 6531, and BDAT of RFC 3030). Pure:
//! one line in (without its CRLF), one `Command` or one error `Reply` out.

use std::fmt;

use super::reply::Reply;

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 5321 §4.1.1.1, with the client's domain or address literal.
    Ehlo(String),
    Helo(String),
    /// RFC 5321 §4.1.1.2. `from` is the reverse path without brackets or source
    /// route; empty for the null path `<>`.
    Mail {
        from: String,
        params: MailParams,
    },
    /// RFC 5321 §4.1.1.3. `to` is the forward path without brackets or source
    /// route (`postmaster` may come without a domain, §4.5.1). It may be non-ASCII:
    /// the session checks that against the transaction's SMTPUTF8.
    Rcpt {
        to: String,
    },
    Data,
    /// RFC 3030 §2: a chunk of exactly `size` octets follows the command line.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help,
    StartTls,
    Auth(AuthArgs),
}

/// Parameters of MAIL FROM we offer in EHLO.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailParams {
    /// RFC 1870 `SIZE=n`.
    pub size: Option<u64>,
    /// RFC 6152 `BODY=8BITMIME` (`BODY=7BIT` leaves it false).
    pub body_8bit: bool,
    /// RFC 6531 `SMTPUTF8`.
    pub smtputf8: bool,
}

/// The arguments of AUTH (RFC 4954 §4). The initial response carries a secret,
/// so `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthArgs {
    pub mechanism: String,
    pub initial_response: Option<String>,
}

impl fmt::Debug for AuthArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthArgs")
            .field("mechanism", &self.mechanism)
            .field(
                "initial_response",
                &self.initial_response.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn syntax(text: &str) -> Reply {
    Reply::new(501, "5.5.4", text)
}

fn bad_param(text: &str) -> Reply {
    Reply::new(555, "5.5.4", text)
}

fn need_smtputf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Must declare SMTPUTF8 to send Unicode addresses",
    )
}

/// The verbs we know, as logs name them.
const VERBS: [&str; 14] = [
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP",
    "STARTTLS", "AUTH",
];

/// A command line's verb for the log: one of ours, else `?` (a client's
/// garbage never reaches the log).
pub fn verb(line: &[u8]) -> &'static str {
    let word = line.split(|&b| b == b' ').next().unwrap_or_default();
    VERBS
        .iter()
        .find(|v| v.as_bytes().eq_ignore_ascii_case(word))
        .copied()
        .unwrap_or("?")
}

/// Parse one command line (its CRLF already removed).
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    // Control bytes (NUL, bare CR, ...) are never valid in a command and are a
    // classic vector for confusing downstream parsers.
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Reply::new(
            500,
            "5.5.2",
            "Error: invalid character in command",
        ));
    }
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim_spaces(&line[i..])),
        None => (line, &[][..]),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_slice() {
        b"EHLO" => Ok(Command::Ehlo(domain_arg(rest, "EHLO")?)),
        b"HELO" => Ok(Command::Helo(domain_arg(rest, "HELO")?)),
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(rest, Command::Data, "Syntax: DATA"),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(rest, Command::Rset, "Syntax: RSET"),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(rest, Command::Quit, "Syntax: QUIT"),
        b"VRFY" => Ok(Command::Vrfy(text_arg(rest, "Syntax: VRFY address")?)),
        b"EXPN" => Ok(Command::Expn(text_arg(rest, "Syntax: EXPN list")?)),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_args(rest, Command::StartTls, "Syntax: STARTTLS"),
        b"AUTH" => parse_auth(rest),
        _ => Err(Reply::new(500, "5.5.2", "Error: command not recognized")),
    }
}

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ', tail @ ..] = s {
        s = tail;
    }
    while let [head @ .., b' '] = s {
        s = head;
    }
    s
}

fn no_args(rest: &[u8], cmd: Command, usage: &str) -> Result<Command, Reply> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(syntax(usage))
    }
}

fn text_arg(rest: &[u8], usage: &str) -> Result<String, Reply> {
    if rest.is_empty() {
        return Err(syntax(usage));
    }
    Ok(String::from_utf8_lossy(rest).into_owned())
}

/// The EHLO/HELO argument: one printable ASCII word (a domain or an address
/// literal). It ends up in `Received:`, so nothing else is let through.
fn domain_arg(rest: &[u8], verb: &str) -> Result<String, Reply> {
    let usage = || syntax(&format!("Syntax: {verb} hostname"));
    if rest.is_empty() || rest.iter().any(|&b| b == b' ' || !b.is_ascii()) {
        return Err(usage());
    }
    std::str::from_utf8(rest)
        .map(str::to_owned)
        .map_err(|_| usage())
}

/// Strip a case-insensitive keyword such as `FROM:` and the spaces after it
/// (`MAIL FROM: <a@b>` is tolerated, as Postfix does).
fn keyword<'a>(rest: &'a [u8], kw: &[u8]) -> Option<&'a [u8]> {
    let head = rest.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    Some(trim_spaces(rest.get(kw.len()..)?))
}

/// RFC 5321 §4.1.1.2 `MAIL FROM:<reverse-path> [SP Mail-parameters]`.
fn parse_mail(rest: &[u8]) -> Result<Command, Reply> {
    let usage = || syntax("Syntax: MAIL FROM:<address>");
    let s = keyword(rest, b"FROM:").ok_or_else(usage)?;
    let (path, params) = split_path(s).ok_or_else(usage)?;
    let params = parse_mail_params(params)?;
    let bad = || Reply::new(501, "5.1.7", "Bad sender address syntax");
    let from = match parse_path(path, false) {
        Ok(a) => a,
        Err(PathError::Syntax) => return Err(bad()),
        Err(PathError::Utf8) => return Err(need_smtputf8()),
    };
    if !from.is_ascii() && !params.smtputf8 {
        return Err(need_smtputf8());
    }
    Ok(Command::Mail { from, params })
}

/// RFC 5321 §4.1.1.3 `RCPT TO:<forward-path> [SP Rcpt-parameters]`.
fn parse_rcpt(rest: &[u8]) -> Result<Command, Reply> {
    let usage = || syntax("Syntax: RCPT TO:<address>");
    let s = keyword(rest, b"TO:").ok_or_else(usage)?;
    let (path, params) = split_path(s).ok_or_else(usage)?;
    // We offer no RCPT parameters (no DSN, RFC 3461).
    if !params.is_empty() {
        return Err(bad_param("Unsupported RCPT TO parameter"));
    }
    let bad = || Reply::new(501, "5.1.3", "Bad recipient address syntax");
    match parse_path(path, true) {
        Ok(to) if to.is_empty() => Err(bad()),
        Ok(to) => Ok(Command::Rcpt { to }),
        Err(PathError::Syntax) => Err(bad()),
        Err(PathError::Utf8) => Err(need_smtputf8()),
    }
}

/// RFC 3030 §2 `BDAT chunk-size [SP end-marker]`.
fn parse_bdat(rest: &[u8]) -> Result<Command, Reply> {
    let usage = || syntax("Syntax: BDAT count [LAST]");
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words.next().and_then(parse_number).ok_or_else(usage)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(usage()),
    };
    if words.next().is_some() {
        return Err(usage());
    }
    Ok(Command::Bdat { size, last })
}

/// RFC 4954 §4 `AUTH mechanism [initial-response]`.
fn parse_auth(rest: &[u8]) -> Result<Command, Reply> {
    let usage = || syntax("Syntax: AUTH mechanism");
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or_else(usage)?;
    let initial = words.next();
    if words.next().is_some() || !mechanism.is_ascii() {
        return Err(usage());
    }
    let text = |w: &[u8]| String::from_utf8_lossy(w).into_owned();
    Ok(Command::Auth(AuthArgs {
        mechanism: text(mechanism).to_ascii_uppercase(),
        initial_response: initial.map(text),
    }))
}

/// 1 to 20 decimal digits that fit in a u64.
fn parse_number(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 20 || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(w).ok()?.parse().ok()
}

/// Split `<path> params` at the closing bracket (quote-aware, since `>` may occur
/// in a quoted local part). Without brackets the path is the first word, as
/// Postfix tolerates. Returns the path with its brackets and the parameter text.
fn split_path(s: &[u8]) -> Option<(&[u8], &[u8])> {
    if s.first() != Some(&b'<') {
        let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        let (path, rest) = s.split_at(end);
        return Some((path, trim_spaces(rest)));
    }
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if in_quote && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            in_quote = !in_quote;
        } else if b == b'>' && !in_quote {
            let (path, rest) = s.split_at(i + 1);
            // Parameters must be separated from the path by a space.
            return match rest {
                [] => Some((path, rest)),
                [b' ', ..] => Some((path, trim_spaces(rest))),
                _ => None,
            };
        }
    }
    None
}

/// RFC 1870 / 6152 / 6531 MAIL parameters: `SIZE=n`, `BODY=7BIT|8BITMIME`,
/// `SMTPUTF8`. Anything else, malformed or repeated: 555 5.5.4 (RFC 5321 §4.1.1.11).
fn parse_mail_params(s: &[u8]) -> Result<MailParams, Reply> {
    let mut p = MailParams::default();
    let (mut seen_size, mut seen_body, mut seen_utf8) = (false, false, false);
    for word in s.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.iter().position(|&b| b == b'=') {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        let key = key.to_ascii_uppercase();
        match (key.as_slice(), value) {
            (b"SIZE", Some(v)) if !seen_size => {
                seen_size = true;
                p.size = Some(parse_number(v).ok_or_else(|| bad_param("Bad SIZE parameter"))?);
            }
            (b"BODY", Some(v)) if !seen_body => {
                seen_body = true;
                if v.eq_ignore_ascii_case(b"8BITMIME") {
                    p.body_8bit = true;
                } else if !v.eq_ignore_ascii_case(b"7BIT") {
                    // BINARYMIME (RFC 3030 §3) is not offered.
                    return Err(bad_param("Unsupported BODY type"));
                }
            }
            (b"SMTPUTF8", None) if !seen_utf8 => {
                seen_utf8 = true;
                p.smtputf8 = true;
            }
            _ => return Err(bad_param("Unsupported or malformed MAIL FROM parameter")),
        }
    }
    Ok(p)
}

#[derive(Debug, PartialEq, Eq)]
enum PathError {
    Syntax,
    /// Non-UTF-8 bytes: only UTF-8 is allowed even with SMTPUTF8 (RFC 6531 §3.3).
    Utf8,
}

/// RFC 5321 §4.1.2 `Path = "<" [ A-d-l ":" ] Mailbox ">"`, returning the mailbox
/// (empty for `<>`). `rcpt` allows a bare `postmaster` (§4.5.1).
fn parse_path(path: &[u8], rcpt: bool) -> Result<String, PathError> {
    let inner = match path {
        [b'<', inner @ .., b'>'] => inner,
        [b'<', ..] => return Err(PathError::Syntax),
        bare => bare,
    };
    if inner.is_empty() {
        return Ok(String::new());
    }
    let inner = strip_source_route(inner)?;
    let text = std::str::from_utf8(inner).map_err(|_| PathError::Utf8)?;
    if rcpt && text.eq_ignore_ascii_case("postmaster") {
        return Ok(text.to_owned());
    }
    parse_mailbox(text)
}

/// RFC 5321 §4.1.2 / Appendix C: source routes `@a,@b:` are accepted and ignored.
fn strip_source_route(inner: &[u8]) -> Result<&[u8], PathError> {
    if inner.first() != Some(&b'@') {
        return Ok(inner);
    }
    let colon = inner
        .iter()
        .position(|&b| b == b':')
        .ok_or(PathError::Syntax)?;
    for hop in inner[..colon].split(|&b| b == b',') {
        match hop {
            [b'@', domain @ ..] if valid_domain(domain) => {}
            _ => return Err(PathError::Syntax),
        }
    }
    Ok(&inner[colon + 1..])
}

/// `Local-part "@" ( Domain / address-literal )`. A quoted local part that needs
/// no quotes is unquoted (RFC 5321 §4.1.2 calls the two forms equivalent), so
/// the backend sees one spelling.
fn parse_mailbox(text: &str) -> Result<String, PathError> {
    let (local, domain) = if text.starts_with('"') {
        let end = quoted_end(text.as_bytes()).ok_or(PathError::Syntax)?;
        let (local, rest) = text.split_at(end);
        let domain = rest.strip_prefix('@').ok_or(PathError::Syntax)?;
        (local, domain)
    } else {
        let at = text.rfind('@').ok_or(PathError::Syntax)?;
        let local = &text[..at];
        if !valid_dot_string(local) {
            return Err(PathError::Syntax);
        }
        (local, &text[at + 1..])
    };
    if !valid_domain(domain.as_bytes()) {
        return Err(PathError::Syntax);
    }
    if let Some(unquoted) = local.strip_prefix('"').and_then(|l| l.strip_suffix('"'))
        && !unquoted.contains('\\')
        && valid_dot_string(unquoted)
    {
        return Ok(format!("{unquoted}@{domain}"));
    }
    Ok(text.to_owned())
}

/// Index just past the closing quote of a quoted string starting at 0
/// (qtextSMTP and quoted-pairSMTP, RFC 5321 §4.1.2), or None.
fn quoted_end(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' => return if i > 1 { Some(i + 1) } else { None },
            b'\\' => {
                let next = *s.get(i + 1)?;
                if !(32..=126).contains(&next) {
                    return None;
                }
                i += 2;
            }
            // Non-ASCII (UTF-8) is allowed by RFC 6531 §3.3; its use is checked
            // against SMTPUTF8 by the caller.
            32..=126 | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// RFC 5322 atext plus UTF-8 (RFC 6531), in dot-separated non-empty atoms.
fn valid_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|atom| {
            !atom.is_empty()
                && atom.chars().all(|c| {
                    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
                })
        })
}

/// A domain (letters, digits, hyphens, UTF-8 U-labels, in non-empty labels) or an
/// address literal `[...]` (RFC 5321 §4.1.3; its content is not interpreted).
fn valid_domain(d: &[u8]) -> bool {
    if let [b'[', lit @ .., b']'] = d {
        return !lit.is_empty()
            && lit
                .iter()
                .all(|&b| (33..=126).contains(&b) && !matches!(b, b'[' | b']' | b'\\'));
    }
    !d.is_empty()
        && d.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(from: &str, params: MailParams) -> Command {
        Command::Mail {
            from: from.into(),
            params,
        }
    }

    fn rcpt(to: &str) -> Command {
        Command::Rcpt { to: to.into() }
    }

    const NONE: MailParams = MailParams {
        size: None,
        body_8bit: false,
        smtputf8: false,
    };

    #[test]
    fn accepted_commands() {
        let table: Vec<(&[u8], Command)> = vec![
            (
                b"EHLO client.example",
                Command::Ehlo("client.example".into()),
            ),
            (b"ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
            (b"HELO x", Command::Helo("x".into())),
            (b"EhLo   spaced  ", Command::Ehlo("spaced".into())),
            (b"MAIL FROM:<a@b.example>", mail("a@b.example", NONE)),
            (b"mail from:<a@b>", mail("a@b", NONE)),
            (b"MAIL FROM: <a@b>", mail("a@b", NONE)),
            (b"MAIL FROM:a@b", mail("a@b", NONE)),
            (b"MAIL FROM:<>", mail("", NONE)),
            (
                b"MAIL FROM:<@r1.example,@r2.example:u@d>",
                mail("u@d", NONE),
            ),
            (b"MAIL FROM:<\"john doe\"@d>", mail("\"john doe\"@d", NONE)),
            (b"MAIL FROM:<\"a>b\"@d>", mail("\"a>b\"@d", NONE)),
            (b"MAIL FROM:<\"plain\"@d>", mail("plain@d", NONE)),
            (b"MAIL FROM:<\"q\\\"x\"@d>", mail("\"q\\\"x\"@d", NONE)),
            (b"MAIL FROM:<a@[192.0.2.1]>", mail("a@[192.0.2.1]", NONE)),
            (
                b"MAIL FROM:<a@[IPv6:2001:db8::1]>",
                mail("a@[IPv6:2001:db8::1]", NONE),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME",
                mail(
                    "a@b",
                    MailParams {
                        size: Some(1000),
                        body_8bit: true,
                        smtputf8: false,
                    },
                ),
            ),
            (b"MAIL FROM:<a@b> body=7bit", mail("a@b", NONE)),
            (
                "MAIL FROM:<jörg@bücher.example> SMTPUTF8".as_bytes(),
                mail(
                    "jörg@bücher.example",
                    MailParams {
                        size: None,
                        body_8bit: false,
                        smtputf8: true,
                    },
                ),
            ),
            (b"RCPT TO:<u@d>", rcpt("u@d")),
            (b"rcpt to: <u@d>", rcpt("u@d")),
            (b"RCPT TO:<postmaster>", rcpt("postmaster")),
            (b"RCPT TO:<PostMaster>", rcpt("PostMaster")),
            (b"RCPT TO:<@relay.example:u@d>", rcpt("u@d")),
            // Non-ASCII recipients parse; the session checks SMTPUTF8.
            ("RCPT TO:<jörg@d>".as_bytes(), rcpt("jörg@d")),
            (b"DATA", Command::Data),
            (b"data", Command::Data),
            (
                b"BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                b"BDAT 1000",
                Command::Bdat {
                    size: 1000,
                    last: false,
                },
            ),
            (
                b"bdat 5 last",
                Command::Bdat {
                    size: 5,
                    last: true,
                },
            ),
            (b"RSET", Command::Rset),
            (b"NOOP", Command::Noop),
            (b"NOOP anything at all", Command::Noop),
            (b"QUIT", Command::Quit),
            (b"VRFY alice", Command::Vrfy("alice".into())),
            (b"EXPN staff", Command::Expn("staff".into())),
            (b"HELP", Command::Help),
            (b"HELP MAIL", Command::Help),
            (b"STARTTLS", Command::StartTls),
            (
                b"AUTH plain dGVzdA==",
                Command::Auth(AuthArgs {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("dGVzdA==".into()),
                }),
            ),
            (
                b"AUTH LOGIN",
                Command::Auth(AuthArgs {
                    mechanism: "LOGIN".into(),
                    initial_response: None,
                }),
            ),
        ];
        for (line, want) in table {
            assert_eq!(parse(line), Ok(want), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn refused_commands() {
        let table: Vec<(&[u8], u16, &str)> = vec![
            (b"", 500, "5.5.2"),
            (b"FOO", 500, "5.5.2"),
            (b"MAILFROM:<a@b>", 500, "5.5.2"),
            (b"NOOP\0", 500, "5.5.2"),
            (b"MAIL FROM:<a\0@b>", 500, "5.5.2"),
            (b"RCPT TO:<a@b>\rDATA", 500, "5.5.2"),
            (b"HELP\x7f", 500, "5.5.2"),
            (b"EHLO", 501, "5.5.4"),
            (b"HELO a b", 501, "5.5.4"),
            ("EHLO bücher".as_bytes(), 501, "5.5.4"),
            (b"DATA x", 501, "5.5.4"),
            (b"RSET x", 501, "5.5.4"),
            (b"QUIT now", 501, "5.5.4"),
            (b"VRFY", 501, "5.5.4"),
            (b"EXPN", 501, "5.5.4"),
            (b"STARTTLS x", 501, "5.5.4"),
            (b"AUTH", 501, "5.5.4"),
            (b"MAIL", 501, "5.5.4"),
            (b"MAIL TO:<a@b>", 501, "5.5.4"),
            (b"MAIL FROM:", 501, "5.5.4"),
            (b"MAIL FROM:<a@b", 501, "5.5.4"),
            (b"MAIL FROM:<a@b>SIZE=1", 501, "5.5.4"),
            (b"RCPT FROM:<a@b>", 501, "5.5.4"),
            (b"RCPT TO:", 501, "5.5.4"),
            (b"BDAT", 501, "5.5.4"),
            (b"BDAT x", 501, "5.5.4"),
            (b"BDAT -1", 501, "5.5.4"),
            (b"BDAT 10 FIRST", 501, "5.5.4"),
            (b"BDAT 10 LAST x", 501, "5.5.4"),
            (b"BDAT 99999999999999999999999", 501, "5.5.4"),
            (b"MAIL FROM:<nodomain>", 501, "5.1.7"),
            (b"MAIL FROM:<postmaster>", 501, "5.1.7"),
            (b"MAIL FROM:<@a>", 501, "5.1.7"),
            (b"MAIL FROM:<a@>", 501, "5.1.7"),
            (b"MAIL FROM:<.a@b>", 501, "5.1.7"),
            (b"MAIL FROM:<a..b@c>", 501, "5.1.7"),
            (b"MAIL FROM:<a b@c>", 501, "5.1.7"),
            (b"MAIL FROM:<a@b..c>", 501, "5.1.7"),
            (b"MAIL FROM:<a@-b>", 501, "5.1.7"),
            (b"MAIL FROM:<a@b_c>", 501, "5.1.7"),
            (b"MAIL FROM:<a@[]>", 501, "5.1.7"),
            (b"MAIL FROM:<\"\"@b>", 501, "5.1.7"),
            (b"MAIL FROM:<\"open@b>", 501, "5.5.4"),
            (b"MAIL FROM:<@a,b:u@d>", 501, "5.1.7"),
            (b"RCPT TO:<>", 501, "5.1.3"),
            (b"RCPT TO:<alice>", 501, "5.1.3"),
            (b"RCPT TO:<a@b@c>", 501, "5.1.3"),
            (b"RCPT TO:<a@>", 501, "5.1.3"),
            ("MAIL FROM:<jörg@d>".as_bytes(), 553, "5.6.7"),
            ("MAIL FROM:<a@bücher.example>".as_bytes(), 553, "5.6.7"),
            (b"MAIL FROM:<\xff@d> SMTPUTF8", 553, "5.6.7"),
            (b"RCPT TO:<\xc3@d>", 553, "5.6.7"),
            (b"MAIL FROM:<a@b> SIZE=", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> SIZE=x", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> SIZE", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> SIZE=1 SIZE=2", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> BODY=BINARYMIME", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> BODY=9BIT", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> SMTPUTF8=yes", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> AUTH=<>", 555, "5.5.4"),
            (b"MAIL FROM:<a@b> RET=HDRS", 555, "5.5.4"),
            (b"RCPT TO:<a@b> NOTIFY=NEVER", 555, "5.5.4"),
        ];
        for (line, code, status) in table {
            let r = parse(line).expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                (r.code, &*r.status),
                (code, status),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn auth_debug_hides_the_initial_response() {
        let cmd = parse(b"AUTH PLAIN c2VjcmV0").unwrap();
        let shown = format!("{cmd:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("PLAIN"));
    }
}
