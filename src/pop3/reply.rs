//! POP3 replies: `+OK` / `-ERR [CODE] text` status lines (RFC 1939 §3, response
//! codes RFC 2449 §8 and RFC 3206), and the multi-line encoders (LF -> CRLF,
//! dot-stuffing, `.` terminator): `multiline` for a reply built whole (LIST,
//! UIDL, CAPA), `MultilineEncoder` for a message streamed in chunks (RETR,
//! TOP). Pure.

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

/// RFC 1939 §3 and §7: `multiline` (RETR) and `multiline(top(..))` (TOP) for
/// a message that arrives in chunks of any size, so that RETR never holds a
/// whole message: the wire bytes are exactly those of the whole-buffer
/// functions (property tests in `crate::proptests`). What a line is carries
/// across chunk edges: whether the next byte starts a line (dot-stuffing), and
/// a CR that ended one chunk (an LF starting the next belongs to it).
#[derive(Debug, Clone)]
pub struct MultilineEncoder {
    /// Nothing of the current line has been written yet.
    line_start: bool,
    /// The last byte fed was a CR, already written as a line end: an LF
    /// that follows it is part of that CRLF.
    after_cr: bool,
    /// TOP: where the message is cut (`None` for RETR).
    top: Option<TopCut>,
}

/// How far a TOP has come (see `top`).
#[derive(Debug, Clone, Copy)]
struct TopCut {
    in_header: bool,
    /// Body lines still to send.
    left: u64,
}

impl Default for MultilineEncoder {
    fn default() -> Self {
        MultilineEncoder::retr()
    }
}

impl MultilineEncoder {
    /// The whole message (RETR).
    pub fn retr() -> Self {
        MultilineEncoder {
            line_start: true,
            after_cr: false,
            top: None,
        }
    }

    /// The header, the blank line and the first `lines` body lines (TOP).
    pub fn top(lines: u64) -> Self {
        MultilineEncoder {
            top: Some(TopCut {
                in_header: true,
                left: lines,
            }),
            ..MultilineEncoder::retr()
        }
    }

    /// Whether everything to send has been encoded (TOP only): the caller
    /// stops reading the message.
    pub fn is_done(&self) -> bool {
        matches!(
            self.top,
            Some(TopCut {
                in_header: false,
                left: 0
            })
        )
    }

    /// Append the wire form of the next `chunk` of the stored message to
    /// `out`. Returns whether more input is wanted (false once a TOP is
    /// complete; input fed after that is ignored).
    pub fn feed(&mut self, out: &mut Vec<u8>, chunk: &[u8]) -> bool {
        let mut rest = chunk;
        // An empty chunk must not forget the CR it would pair with.
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            rest = rest.strip_prefix(b"\n").unwrap_or(rest);
        }
        while !rest.is_empty() && !self.is_done() {
            if self.line_start && rest.first() == Some(&b'.') {
                out.push(b'.');
            }
            let Some((line, end)) =
                memchr::memchr2(b'\n', b'\r', rest).and_then(|i| rest.split_at_checked(i))
            else {
                // The line goes on in the next chunk.
                out.extend_from_slice(rest);
                self.line_start = false;
                break;
            };
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
            let empty = self.line_start && line.is_empty();
            self.line_start = true;
            rest = match end {
                [b'\r', b'\n', tail @ ..] => tail,
                [b'\r'] => {
                    self.after_cr = true;
                    &[]
                }
                [_, tail @ ..] => tail,
                [] => &[],
            };
            self.line_ended(empty);
        }
        !self.is_done()
    }

    /// TOP's count of a line just ended (`empty`: without content).
    fn line_ended(&mut self, empty: bool) {
        if let Some(t) = &mut self.top {
            if t.in_header {
                t.in_header = !empty;
            } else {
                t.left = t.left.saturating_sub(1);
            }
        }
    }

    /// End the response: terminate a last line that has no line end, then `.\r\n`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
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

    /// Encode `body` with `enc`, cut at `cuts` (sorted, may repeat: empty chunks).
    fn encode_cut(mut enc: MultilineEncoder, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        for &c in cuts.iter().chain([&body.len()]) {
            enc.feed(&mut out, &body[pos..c]);
            pos = c;
        }
        enc.finish(&mut out);
        out
    }

    /// Every edge a chunk can have: each case cut at every single place, at
    /// every pair of places, and byte by byte, encodes as the whole buffer.
    #[test]
    fn streaming_encoder_table_at_every_cut() {
        let cases: &[&[u8]] = &[
            b"",
            b"a\r\nb\r\n",
            b"no newline",
            b".",
            b".\n..\n",
            b"x\n.\n..\nx.y\n",
            b"bare\rcr\n",
            b"last\r",
            b"cr\r\r\n",
            b"\r\r",
            b"a\r.\r\nb\n",
            b"a\r..\r\r\n",
            b"\r.\r\n.\n",
            b"\n.\r.\n",
            b"H: v\n\nb1\r\nb2\r.\r\n.b3\nb4",
            b"H: v\r\rb1\rb2\n",
        ];
        for &body in cases {
            let mut want = Vec::new();
            multiline(&mut want, body);
            let n = body.len();
            let show = String::from_utf8_lossy(body);
            for a in 0..=n {
                for b in a..=n {
                    let got = encode_cut(MultilineEncoder::retr(), body, &[a, b]);
                    assert_eq!(got, want, "{show:?} cut at {a} {b}");
                }
            }
            let bytes: Vec<usize> = (0..=n).collect();
            assert_eq!(encode_cut(MultilineEncoder::default(), body, &bytes), want);
            for lines in 0..4 {
                let mut want = Vec::new();
                multiline(&mut want, top(body, lines));
                for a in 0..=n {
                    let got = encode_cut(MultilineEncoder::top(lines), body, &[a, a]);
                    assert_eq!(got, want, "{show:?} TOP {lines} cut at {a}");
                }
                assert_eq!(encode_cut(MultilineEncoder::top(lines), body, &bytes), want);
            }
        }
    }

    /// TOP says when it needs no more input, and ignores what comes after.
    #[test]
    fn top_encoder_stops_wanting_input() {
        let mut e = MultilineEncoder::top(1);
        let mut out = Vec::new();
        assert!(e.feed(&mut out, b"H: v\n"));
        assert!(e.feed(&mut out, b"\nb1"));
        assert!(!e.is_done());
        assert!(!e.feed(&mut out, b"\r"));
        assert!(e.is_done());
        assert!(!e.feed(&mut out, b"\nb2\n"));
        e.finish(&mut out);
        assert_eq!(out, b"H: v\r\n\r\nb1\r\n.\r\n");
        // A message without a blank line is all header: never done.
        let mut e = MultilineEncoder::top(0);
        assert!(e.feed(&mut out, b"H: v\nno blank line\n"));
    }
}
