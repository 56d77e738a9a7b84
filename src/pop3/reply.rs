//! POP3 replies: `+OK` / `-ERR [CODE] text` status lines (RFC 1939 §3, response
//! codes RFC 2449 §8 and RFC 3206), and the multi-line encoder used by RETR, TOP,
//! LIST, UIDL and CAPA (LF -> CRLF, dot-stuffing, `.` terminator). Pure.

/// RFC 2449 §8 / RFC 3206 extended response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespCode {
    /// RFC 2449 §8.1.1: the mailbox is locked by another session.
    InUse,
    /// RFC 3206 §4: a transient system failure.
    SysTemp,
    /// RFC 3206 §4: a permanent system failure.
    SysPerm,
    /// RFC 3206 §5: credentials were refused (or plaintext login is disallowed).
    Auth,
}

impl RespCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RespCode::InUse => "IN-USE",
            RespCode::SysTemp => "SYS/TEMP",
            RespCode::SysPerm => "SYS/PERM",
            RespCode::Auth => "AUTH",
        }
    }
}

/// `+OK text\r\n` (`+OK\r\n` when text is empty).
pub fn ok(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+OK");
    push_text(out, text);
}

/// `-ERR [CODE] text\r\n`.
pub fn err(out: &mut Vec<u8>, code: Option<RespCode>, text: &str) {
    out.extend_from_slice(b"-ERR");
    if let Some(c) = code {
        out.extend_from_slice(b" [");
        out.extend_from_slice(c.as_str().as_bytes());
        out.push(b']');
    }
    push_text(out, text);
}

fn push_text(out: &mut Vec<u8>, text: &str) {
    if !text.is_empty() {
        out.push(b' ');
        // Never let text inject a line break onto the wire.
        out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    }
    out.extend_from_slice(b"\r\n");
}

/// The lines of a stored message as POP3 sends them: each `(line, rest)` is a
/// line without its terminator and what follows it. A line ends at LF, at
/// CRLF, or at a CR that no LF follows: RFC 5322 §2.3 allows CR only in CRLF,
/// and a lone CR is a line break to some clients and not to others, so a
/// `.` after it must be stuffed for all of them alike (a client that splits
/// there must never read `.` CRLF as the end of the response).
fn next_line(rest: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr2(b'\n', b'\r', rest) {
        Some(i) => {
            let end = match rest.get(i..i + 2) {
                Some(b"\r\n") => i + 2,
                _ => i + 1,
            };
            (&rest[..i], &rest[end..])
        }
        None => (rest, &[][..]),
    }
}

/// RFC 1939 §3: encode `body` as the data of a multi-line response: every line
/// ends in CRLF (a bare LF and a lone CR become CRLF, an existing CRLF stays),
/// lines starting with `.` get one more `.`, a last line without a line end is
/// terminated, and the response ends with `.\r\n`.
pub fn multiline(out: &mut Vec<u8>, body: &[u8]) {
    // Line by line with memchr and bulk copies: RETR's hot path.
    out.reserve(body.len() + body.len() / 32 + 5);
    let mut rest = body;
    while !rest.is_empty() {
        let (line, next) = next_line(rest);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        rest = next;
    }
    out.extend_from_slice(b".\r\n");
}

/// RFC 1939 §11: the size LIST/STAT report: exactly the octets `multiline` sends
/// for `body`, without the dot-stuffing and without the final `.\r\n`.
pub use crate::crlf::crlf_size;

/// RFC 1939 §7 TOP: the header, the blank line after it, and the first `lines`
/// lines of the body (lines as `multiline` sends them). A message without a
/// blank line is all header.
pub fn top(body: &[u8], lines: u64) -> &[u8] {
    let mut rest = body;
    let mut in_header = true;
    let mut left = lines;
    while !rest.is_empty() {
        if !in_header && left == 0 {
            break;
        }
        let (line, next) = next_line(rest);
        if in_header {
            in_header = !line.is_empty();
        } else {
            left -= 1;
        }
        rest = next;
    }
    body.get(..body.len() - rest.len()).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let cases: Vec<(Vec<u8>, &[u8])> = vec![
            (
                {
                    let mut o = Vec::new();
                    ok(&mut o, "2 320");
                    o
                },
                b"+OK 2 320\r\n",
            ),
            (
                {
                    let mut o = Vec::new();
                    ok(&mut o, "");
                    o
                },
                b"+OK\r\n",
            ),
            (
                {
                    let mut o = Vec::new();
                    err(&mut o, Some(RespCode::InUse), "locked");
                    o
                },
                b"-ERR [IN-USE] locked\r\n",
            ),
            (
                {
                    let mut o = Vec::new();
                    err(&mut o, Some(RespCode::SysTemp), "x");
                    o
                },
                b"-ERR [SYS/TEMP] x\r\n",
            ),
            (
                {
                    let mut o = Vec::new();
                    err(&mut o, None, "a\r\nb");
                    o
                },
                b"-ERR a  b\r\n",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want, "{}", String::from_utf8_lossy(want));
        }
    }

    #[test]
    fn multiline_table_and_size() {
        // (stored bytes, wire bytes, stuffed dots)
        let cases: &[(&[u8], &[u8], u64)] = &[
            (b"", b".\r\n", 0),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n", 0),
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n", 0),
            (b"a\r\nb\n", b"a\r\nb\r\n.\r\n", 0),
            (b"no newline", b"no newline\r\n.\r\n", 0),
            (b".\n", b"..\r\n.\r\n", 1),
            (b"..\n", b"...\r\n.\r\n", 1),
            (b"x\n.\n..\nx.y\n", b"x\r\n..\r\n...\r\nx.y\r\n.\r\n", 2),
            (b".", b"..\r\n.\r\n", 1),
            (b"\n", b"\r\n.\r\n", 0),
            (b"\n\n", b"\r\n\r\n.\r\n", 0),
            (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n", 1),
            // A lone CR is a line end (RFC 5322 §2.3 allows CR only in CRLF):
            // a dot after it is stuffed, so no client, however it splits
            // lines, reads `.` CRLF before the end.
            (b"bare\rcr\n", b"bare\r\ncr\r\n.\r\n", 0),
            (b"last\r", b"last\r\n.\r\n", 0),
            (b"cr\r\r\n", b"cr\r\n\r\n.\r\n", 0),
            (b"\r", b"\r\n.\r\n", 0),
            (b"\r\r", b"\r\n\r\n.\r\n", 0),
            (b"a\r.\nb\n", b"a\r\n..\r\nb\r\n.\r\n", 1),
            (b"a\r.\r\nb\n", b"a\r\n..\r\nb\r\n.\r\n", 1),
            (b"a\r.", b"a\r\n..\r\n.\r\n", 1),
            (b"a\r..\r\r\n", b"a\r\n...\r\n\r\n.\r\n", 1),
            (b"\r.\r\n.\n", b"\r\n..\r\n..\r\n.\r\n", 2),
            (b"\n.\r.\n", b"\r\n..\r\n..\r\n.\r\n", 2),
        ];
        for &(body, wire, stuffed) in cases {
            let mut out = Vec::new();
            multiline(&mut out, body);
            assert_eq!(out, wire, "{:?}", String::from_utf8_lossy(body));
            assert_eq!(
                crlf_size(body),
                wire.len() as u64 - 3 - stuffed,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn top_table() {
        let msg: &[u8] = b"From: a\nSubject: s\n\nl1\nl2\nl3\n";
        let cases: &[(&[u8], u64, &[u8])] = &[
            (msg, 0, b"From: a\nSubject: s\n\n"),
            (msg, 1, b"From: a\nSubject: s\n\nl1\n"),
            (msg, 3, msg),
            (msg, 99, msg),
            (b"H: v\r\n\r\nb1\r\nb2\r\n", 1, b"H: v\r\n\r\nb1\r\n"),
            (b"H: v\nno blank line\n", 0, b"H: v\nno blank line\n"),
            (b"\nbody\n", 0, b"\n"),
            (b"H: v\n\nlast", 5, b"H: v\n\nlast"),
            (b"", 3, b""),
            // Lines end where `multiline` ends them: at a lone CR too.
            (b"H: v\r\rb1\rb2\n", 1, b"H: v\r\rb1\r"),
            (b"H: v\n\r.\rx\n", 1, b"H: v\n\r.\r"),
        ];
        for &(body, n, want) in cases {
            assert_eq!(
                top(body, n),
                want,
                "{:?} {n}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
