//! Message body decoders, sans-I/O: `DotDecoder` for DATA (RFC 5321 §4.1.1.4,
//! §4.5.2 dot-unstuffing; only `CRLF.CRLF` ends the message, against SMTP
//! smuggling) and `BdatDecoder` for BDAT chunks (RFC 3030). Both turn CRLF into
//! LF, the line ending of Maildir files, and measure the longest line.
//!
//! A bare CR (one no LF follows) is stored as a line end, LF, like a bare LF:
//! RFC 5322 §2.3 allows CR only in CRLF, and a lone CR kept in the file would
//! be a line break to some POP3 clients and not to others, so a `.` after it
//! could end a RETR early for some of them. It never ends DATA, and a dot
//! after it is text (the client did not stuff it: it was not at a CRLF line
//! start), so the stored line keeps it and POP3 stuffs it on the way out.

use super::reply::Reply;
use crate::config::BareLf;

/// What one `DotDecoder::feed` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feed {
    /// Input bytes used. Bytes after the end-of-data line are not consumed, so
    /// pipelined commands that follow stay buffered.
    pub consumed: usize,
    /// The terminating `CRLF.CRLF` was seen (its final LF is within `consumed`).
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// At the start of a line that followed CRLF (or the start of the body).
    LineStart,
    /// At the start of a line that followed a bare LF or a bare CR: a `.` here
    /// is plain text and never ends the message (SMTP smuggling).
    BareLineStart,
    /// Inside a line.
    Text,
    /// A CR was seen; whether it is a line ending depends on the next byte.
    Cr,
    /// A `.` at a CRLF line start.
    Dot,
    /// `.` then CR at a CRLF line start: one LF away from the end.
    DotCr,
}

/// Line-length and bare-LF bookkeeping shared by both decoders.
#[derive(Debug, Clone)]
struct Lines {
    max_text_line: usize,
    /// Wire octets of the current line so far (terminator included at its end).
    current: usize,
    longest: usize,
    bare_lf: bool,
    bare_cr: bool,
}

impl Lines {
    fn new(max_text_line: usize) -> Self {
        Lines {
            max_text_line,
            current: 0,
            longest: 0,
            bare_lf: false,
            bare_cr: false,
        }
    }

    fn end_line(&mut self) {
        self.longest = self.longest.max(self.current);
        self.current = 0;
    }

    /// The line ended at a bare CR; the byte after it (already counted) starts
    /// the next one.
    fn end_line_before_last(&mut self) {
        self.current = self.current.saturating_sub(1);
        self.end_line();
        self.current = 1;
    }

    /// RFC 5321 §4.5.3.1.6: longer lines are refused, never chopped (chopping
    /// would change the message and can break signatures).
    fn check_length(&self) -> Result<(), Reply> {
        if self.longest.max(self.current) > self.max_text_line {
            return Err(Reply::new(552, "5.6.0", "Message has lines too long"));
        }
        Ok(())
    }
}

/// The DATA decoder: feed it raw bytes after the 354, it writes the body (with
/// dot-stuffing removed and CRLF turned into LF) to `out` until `CRLF.CRLF`.
#[derive(Debug, Clone)]
pub struct DotDecoder {
    state: Pos,
    policy: BareLf,
    lines: Lines,
}

impl DotDecoder {
    pub fn new(bare_lf: BareLf, max_text_line: usize) -> Self {
        DotDecoder {
            // The 354 reply's CRLF precedes the body: the first line may be stuffed
            // or be the terminating dot.
            state: Pos::LineStart,
            policy: bare_lf,
            lines: Lines::new(max_text_line),
        }
    }

    /// Decode as much of `input` as belongs to the body, appending to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Feed {
        for (i, &b) in input.iter().enumerate() {
            self.lines.current += 1;
            if self.step(b, out) {
                return Feed {
                    consumed: i + 1,
                    done: true,
                };
            }
        }
        Feed {
            consumed: input.len(),
            done: false,
        }
    }

    /// One byte; true when it completed the terminator.
    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        match (self.state, b) {
            (Pos::LineStart, b'.') => self.state = Pos::Dot,
            (Pos::Dot, b'\r') => self.state = Pos::DotCr,
            (Pos::DotCr, b'\n') => {
                self.lines.end_line();
                return true;
            }
            // `.` then a bare LF: a lone dot on a line that did not end with CRLF.
            // It ends nothing; keep it as text.
            (Pos::Dot, b'\n') => {
                out.push(b'.');
                self.bare_lf(out);
            }
            // RFC 5321 §4.5.2: a leading dot followed by more text is deleted.
            (Pos::Dot, _) => {
                self.state = Pos::Text;
                self.text(b, out);
            }
            // `.` CR then not LF: the dot is deleted (it was a stuffed line
            // start), the CR is a bare CR.
            (Pos::DotCr, _) => {
                self.state = Pos::Cr;
                return self.step(b, out);
            }
            (Pos::Cr, b'\n') => {
                out.push(b'\n');
                self.lines.end_line();
                self.state = Pos::LineStart;
            }
            // A bare CR: stored as a line end; `b` starts the next line.
            (Pos::Cr, _) => {
                self.lines.bare_cr = true;
                out.push(b'\n');
                self.lines.end_line_before_last();
                self.state = Pos::BareLineStart;
                return self.step(b, out);
            }
            (Pos::LineStart | Pos::BareLineStart | Pos::Text, _) => {
                self.state = Pos::Text;
                self.text(b, out);
            }
        }
        false
    }

    /// An ordinary byte in state Text (CR and LF decide the next state).
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = Pos::Cr,
            b'\n' => self.bare_lf(out),
            _ => out.push(b),
        }
    }

    fn bare_lf(&mut self, out: &mut Vec<u8>) {
        self.lines.bare_lf = true;
        out.push(b'\n');
        self.lines.end_line();
        self.state = Pos::BareLineStart;
    }

    /// After `done`: was the message acceptable? A bare LF or bare CR under
    /// `BareLf::Reject` gives `554 5.6.0`, an over-long line `552 5.6.0`.
    pub fn finish(&self) -> Result<(), Reply> {
        if self.policy == BareLf::Reject {
            if self.lines.bare_lf {
                return Err(Reply::new(
                    554,
                    "5.6.0",
                    "Message contains bare LF line endings",
                ));
            }
            if self.lines.bare_cr {
                return Err(Reply::new(
                    554,
                    "5.6.0",
                    "Message contains bare CR characters",
                ));
            }
        }
        self.lines.check_length()
    }

    /// The longest line seen so far, in wire octets with its terminator.
    pub fn longest_line(&self) -> usize {
        self.lines.longest.max(self.lines.current)
    }
}

/// The BDAT decoder: chunk contents are taken verbatim (RFC 3030 §2: no
/// dot-stuffing, no terminator) except that CRLF becomes LF, also when a chunk
/// ends between the CR and the LF, and a bare CR becomes LF too (see the
/// module doc).
#[derive(Debug, Clone)]
pub struct BdatDecoder {
    pending_cr: bool,
    lines: Lines,
}

impl BdatDecoder {
    pub fn new(max_text_line: usize) -> Self {
        BdatDecoder {
            pending_cr: false,
            lines: Lines::new(max_text_line),
        }
    }

    /// Decode all of `input` into `out`. A trailing CR is held back until the next
    /// call shows whether an LF follows.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.lines.current += 1;
            if self.pending_cr {
                self.pending_cr = false;
                out.push(b'\n');
                if b == b'\n' {
                    self.lines.end_line();
                    continue;
                }
                self.lines.end_line_before_last();
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.push(b'\n');
                    self.lines.end_line();
                }
                _ => out.push(b),
            }
        }
    }

    /// At the LAST chunk: a held CR is a bare CR (a line end); check line
    /// lengths.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Reply> {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\n');
            self.lines.end_line();
        }
        self.lines.check_length()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode in pieces of the given sizes (the rest in one piece).
    fn decode_split(input: &[u8], splits: &[usize], policy: BareLf, max: usize) -> Outcome {
        let mut d = DotDecoder::new(policy, max);
        let mut out = Vec::new();
        let mut pos: usize = 0;
        let mut pieces: Vec<usize> = splits.to_vec();
        pieces.push(usize::MAX);
        for n in pieces {
            let end = pos.saturating_add(n).min(input.len());
            let f = d.feed(&input[pos..end], &mut out);
            pos += f.consumed;
            if f.done {
                return Outcome {
                    body: out,
                    consumed: Some(pos),
                    result: d.finish().map_err(|r| r.code),
                };
            }
            if pos >= input.len() {
                break;
            }
        }
        Outcome {
            body: out,
            consumed: None,
            result: d.finish().map_err(|r| r.code),
        }
    }

    #[derive(Debug, PartialEq)]
    struct Outcome {
        body: Vec<u8>,
        /// Bytes consumed up to the end of data; None if the end was not seen.
        consumed: Option<usize>,
        result: Result<(), u16>,
    }

    fn decode(input: &[u8]) -> Outcome {
        decode_split(input, &[], BareLf::Normalize, 1000)
    }

    fn byte_at_a_time(input: &[u8], policy: BareLf, max: usize) -> Outcome {
        decode_split(input, &vec![1; input.len()], policy, max)
    }

    /// (input, body, bytes consumed when the end was seen)
    const CASES: &[(&[u8], &[u8], Option<usize>)] = &[
        (b"a\r\nb\r\n.\r\n", b"a\nb\n", Some(9)),
        // The body may be empty: the first line can be the terminator.
        (b".\r\n", b"", Some(3)),
        (b".\r\nQUIT\r\n", b"", Some(3)),
        // Dot-unstuffing, also on the very first line.
        (b"..x\r\n.\r\n", b".x\n", Some(8)),
        (b"a\r\n..\r\n.\r\n", b"a\n.\n", Some(10)),
        (b"a\r\n.x\r\n.\r\n", b"a\nx\n", Some(10)),
        (b"a\r\n...\r\n.\r\n", b"a\n..\n", Some(11)),
        // Pipelined bytes after the end stay unconsumed.
        (b"a\r\n.\r\nMAIL FROM:<>\r\n", b"a\n", Some(6)),
        // Smuggling: none of these end the message.
        (b"a\n.\r\nb\r\n.\r\n", b"a\n.\nb\n", Some(11)),
        (b"a\r.\r\nb\r\n.\r\n", b"a\n.\nb\n", Some(11)),
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\n", Some(10)),
        (b"a\r\n.\nb\r\n.\r\n", b"a\n.\nb\n", Some(11)),
        (b"a\r\n.\r\r\n.\r\n", b"a\n\n\n", Some(10)),
        (b"a\r\n.\rb\r\n.\r\n", b"a\n\nb\n", Some(11)),
        // The classic smuggling payload: one message, with the second "message"
        // as body text.
        (
            b"x\r\n\n.\r\nMAIL FROM:<e@v>\r\nRCPT TO:<u@d>\r\nDATA\r\ny\r\n.\r\n",
            b"x\n\n.\nMAIL FROM:<e@v>\nRCPT TO:<u@d>\nDATA\ny\n",
            Some(51),
        ),
        // A bare CR is stored as a line end (LF); CR CR LF is two line ends.
        (b"a\rb\r\r\n.\r\n", b"a\nb\n\n", Some(9)),
        // A line `\r.` (CR, dot): the dot after the bare CR is text, never
        // unstuffed (the client did not stuff it) and never an end.
        (b"x\r\n\r.\r\n.\r\n", b"x\n\n.\n", Some(10)),
        (b"\r.\r\n.\r\n", b"\n.\n", Some(7)),
        (b"a\r..\r\n.\r\n", b"a\n..\n", Some(9)),
        (b"a\r\r.\r\n.\r\n", b"a\n\n.\n", Some(9)),
        (b"a\r.\rb\r\n.\r\n", b"a\n.\nb\n", Some(10)),
        (b"a\r\n\r\r\n.\r\n", b"a\n\n\n", Some(9)),
        // Not finished.
        (b"a\r\n.", b"a\n", None),
        (b"a\r\n.\r", b"a\n", None),
        (b"a\r", b"a", None),
    ];

    #[test]
    fn table() {
        for &(input, body, consumed) in CASES {
            let got = decode(input);
            assert_eq!(
                (got.body.as_slice(), got.consumed),
                (body, consumed),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole_input() {
        for &(input, _, _) in CASES {
            for policy in [BareLf::Normalize, BareLf::Reject] {
                assert_eq!(
                    byte_at_a_time(input, policy, 1000),
                    decode_split(input, &[], policy, 1000),
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn every_two_way_and_three_way_split_matches() {
        let input: &[u8] =
            b"..a\r\nb\rc\n.\r\n\r\n..\r\n.x\r\nlong line here\n.\n\r\n.\r\nNOOP\r\n";
        let whole = decode(input);
        assert_eq!(whole.consumed, Some(input.len() - 6));
        for i in 0..=input.len() {
            assert_eq!(
                decode_split(input, &[i], BareLf::Normalize, 1000),
                whole,
                "split {i}"
            );
            for j in 0..=input.len() - i {
                assert_eq!(
                    decode_split(input, &[i, j], BareLf::Normalize, 1000),
                    whole,
                    "split {i},{j}"
                );
            }
        }
    }

    #[test]
    fn pseudo_random_chunkings_match() {
        // A deterministic LCG instead of a proptest dependency.
        let mut seed: u64 = 0x5eed;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        let alphabet: &[u8] = b"\r\n.ab";
        for _ in 0..300 {
            let len = next(40) as usize;
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[next(alphabet.len() as u64) as usize])
                .collect();
            input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
            let whole = decode_split(&input, &[], BareLf::Reject, 8);
            let splits: Vec<usize> = (0..10).map(|_| next(6) as usize).collect();
            assert_eq!(
                decode_split(&input, &splits, BareLf::Reject, 8),
                whole,
                "{:?} {splits:?}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(byte_at_a_time(&input, BareLf::Reject, 8), whole);
        }
    }

    #[test]
    fn bare_lf_policy() {
        let input = b"a\nb\r\n.\r\n";
        let n = decode_split(input, &[], BareLf::Normalize, 1000);
        assert_eq!((n.body.as_slice(), n.result), (&b"a\nb\n"[..], Ok(())));
        let r = decode_split(input, &[], BareLf::Reject, 1000);
        assert_eq!(r.consumed, Some(input.len()));
        assert_eq!(r.result, Err(554));
        let clean = decode_split(b"a\r\n.\r\n", &[], BareLf::Reject, 1000);
        assert_eq!(clean.result, Ok(()));
        // A bare CR follows the same policy.
        let input = b"a\r.\r\n.\r\n";
        let n = decode_split(input, &[], BareLf::Normalize, 1000);
        assert_eq!((n.body.as_slice(), n.result), (&b"a\n.\n"[..], Ok(())));
        let mut d = DotDecoder::new(BareLf::Reject, 1000);
        assert!(d.feed(input, &mut Vec::new()).done);
        let r = d.finish().unwrap_err();
        assert_eq!((r.code, &*r.status), (554, "5.6.0"));
    }

    /// No stored body from DATA holds a CR (CRLF and bare CR both became LF),
    /// whatever the chunking: POP3 then sends every line as its own CRLF line.
    #[test]
    fn stored_bodies_hold_no_cr() {
        for &(input, _, _) in CASES {
            let got = byte_at_a_time(input, BareLf::Normalize, 1000);
            if got.consumed.is_some() {
                assert!(
                    !got.body.contains(&b'\r'),
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    /// Bare CR line lengths: the line ends at the CR, the next byte starts the
    /// next line.
    #[test]
    fn bare_cr_ends_a_line_for_the_length_limit() {
        // "abcd\r" is 5 octets, then "efgh\r\n" 6: both fit in 6.
        let ok = decode_split(b"abcd\refgh\r\n.\r\n", &[], BareLf::Normalize, 6);
        assert_eq!(
            (ok.body.as_slice(), ok.result),
            (&b"abcd\nefgh\n"[..], Ok(()))
        );
        let long = decode_split(b"abcd\refghi\r\n.\r\n", &[], BareLf::Normalize, 6);
        assert_eq!(long.result, Err(552));
        assert_eq!(
            bdat(&[b"abcd\r", b"efgh\r\n"], 6),
            (b"abcd\nefgh\n".to_vec(), Ok(()))
        );
        assert_eq!(bdat(&[b"abcd\refghi\r\n"], 6).1, Err(552));
    }

    #[test]
    fn long_lines_are_refused_not_chopped() {
        // "abcd\r\n" is 6 octets with its CRLF.
        let ok = decode_split(b"abcd\r\n.\r\n", &[], BareLf::Normalize, 6);
        assert_eq!(ok.result, Ok(()));
        let long = decode_split(b"abcde\r\nx\r\n.\r\n", &[], BareLf::Normalize, 6);
        assert_eq!(long.result, Err(552));
        assert_eq!(long.body, b"abcde\nx\n");
        // Stuffed dots count: they are on the wire.
        let stuffed = decode_split(b"..abc\r\n.\r\n", &[], BareLf::Normalize, 6);
        assert_eq!(stuffed.result, Err(552));
        let mut d = DotDecoder::new(BareLf::Normalize, 8);
        d.feed(b"abc\r\nabcdefg\r\nx\r\n.\r\n", &mut Vec::new());
        assert_eq!(d.longest_line(), 9);
        assert_eq!(d.finish().unwrap_err().status, "5.6.0");
    }

    fn bdat(chunks: &[&[u8]], max: usize) -> (Vec<u8>, Result<(), u16>) {
        let mut d = BdatDecoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut out);
        }
        let r = d.finish(&mut out).map_err(|r| r.code);
        (out, r)
    }

    #[test]
    fn bdat_crlf_across_chunks() {
        let table: &[(&[&[u8]], &[u8])] = &[
            (&[b"a\r\nb\r\n"], b"a\nb\n"),
            (&[b"a\r", b"\nb"], b"a\nb"),
            (&[b"a\r", b"", b"\nb"], b"a\nb"),
            // A bare CR is a line end, also across chunks and at the end.
            (&[b"a\r", b"b"], b"a\nb"),
            (&[b"a\r", b"\r\n"], b"a\n\n"),
            (&[b"a\r"], b"a\n"),
            (&[b"a\r.\r\n"], b"a\n.\n"),
            (&[b"\r", b".", b"\r", b"\n"], b"\n.\n"),
            // No dot-stuffing and no terminator in BDAT.
            (&[b".\r\n..x\r\n"], b".\n..x\n"),
            (&[b"a\nb"], b"a\nb"),
        ];
        for &(chunks, want) in table {
            assert_eq!(bdat(chunks, 1000), (want.to_vec(), Ok(())), "{chunks:?}");
        }
        // Every split of one input gives the same result.
        let input: &[u8] = b"x\r\ny\r\r\n\rz\n\r\n";
        let whole = bdat(&[input], 1000);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(bdat(&[a, b], 1000), whole, "split {i}");
        }
    }

    #[test]
    fn bdat_long_lines() {
        assert_eq!(bdat(&[b"abcd\r", b"\n"], 6).1, Ok(()));
        assert_eq!(bdat(&[b"abcde\r", b"\n"], 6).1, Err(552));
        assert_eq!(bdat(&[b"abcdefg"], 6).1, Err(552));
    }
}
