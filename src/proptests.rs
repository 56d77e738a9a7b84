//! Property tests of the parsers and encoders that face hostile input (issue 8):
//! arbitrary bytes never panic them, chunking never changes a result, and the
//! encoders round-trip. The cargo-fuzz targets in `fuzz/` explore the same code
//! for longer, outside CI.

use proptest::prelude::*;

use crate::config::{BareLf, Config};
use crate::smtp::data::{BdatDecoder, DotDecoder};

/// Dot-stuff LF text into what an SMTP client sends in DATA.
fn smtp_encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' {
            out.extend_from_slice(b"\r\n");
            at_line_start = true;
        } else {
            out.push(b);
            at_line_start = false;
        }
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn decode_in_chunks(wire: &[u8], cuts: &[usize]) -> (Vec<u8>, usize, bool) {
    let mut d = DotDecoder::new(BareLf::Normalize, 1 << 20);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    points.sort_unstable();
    points.push(wire.len());
    for p in points {
        if p < pos {
            continue;
        }
        let mut chunk = &wire[pos..p];
        while !chunk.is_empty() {
            let f = d.feed(chunk, &mut out);
            pos += f.consumed;
            chunk = &chunk[f.consumed..];
            if f.done {
                return (out, pos, true);
            }
        }
    }
    (out, pos, false)
}

/// The data of a multi-line POP3 response (without its `.` CRLF): only CRLF
/// line ends (no lone CR, no bare LF, so clients that split lines differently
/// still agree), and no line that is a lone `.`.
fn retr_lines_are_unambiguous(framed: &[u8]) -> Result<(), TestCaseError> {
    for (i, &b) in framed.iter().enumerate() {
        match b {
            b'\r' => prop_assert_eq!(framed.get(i + 1), Some(&b'\n'), "lone CR at {}", i),
            b'\n' => prop_assert!(i > 0 && framed[i - 1] == b'\r', "bare LF at {}", i),
            _ => {}
        }
    }
    prop_assert!(framed.is_empty() || framed.ends_with(b"\r\n"));
    for line in framed.split_inclusive(|&b| b == b'\n') {
        prop_assert_ne!(line, &b".\r\n"[..]);
    }
    Ok(())
}

/// Text without CR or NUL, as stored in a Maildir (LF line ends).
fn lf_text() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![
            4 => 0x20u8..0x7f,
            1 => Just(b'\n'),
            1 => Just(b'.'),
            1 => 0x80u8..=0xff,
        ],
        0..400,
    )
}

/// Encode `body` with the streaming POP3 encoder, cut at `cuts` (taken modulo
/// the length and sorted; repeats make empty chunks).
fn pop3_stream(
    mut enc: crate::pop3::reply::MultilineEncoder,
    body: &[u8],
    cuts: &[usize],
) -> Vec<u8> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    points.sort_unstable();
    points.push(body.len());
    let mut out = Vec::new();
    let mut pos = 0;
    for p in points {
        enc.feed(&mut out, &body[pos..p]);
        pos = p;
    }
    enc.finish(&mut out);
    out
}

/// Stored bytes with many line ends, lone CRs and dots (the hard cases).
fn pop3_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()],
        0..400,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn smtp_command_parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = crate::smtp::command::parse(&line);
    }

    #[test]
    fn pop3_command_parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = crate::pop3::command::parse(&line);
    }

    #[test]
    fn sasl_decoders_never_panic(s in ".{0,200}") {
        let _ = crate::sasl::decode_plain(&s);
        let _ = crate::sasl::decode_login_step(&s);
    }

    #[test]
    fn users_file_parser_never_panics(s in "(?s).{0,400}") {
        let _ = crate::auth::UserDb::parse(&s);
    }

    #[test]
    fn config_parser_never_panics(s in "(?s).{0,300}") {
        let _ = Config::parse(&s, "fuzz");
    }

    #[test]
    fn dot_decoder_round_trips_in_any_chunking(body in lf_text(), cuts in proptest::collection::vec(any::<usize>(), 0..8), tail in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut wire = smtp_encode(&body);
        let end = wire.len();
        wire.extend_from_slice(&tail);
        let (out, consumed, done) = decode_in_chunks(&wire, &cuts);
        prop_assert!(done);
        // Exactly up to the terminator: pipelined bytes after it stay unread.
        prop_assert_eq!(consumed, end);
        let mut want = body.clone();
        if !want.is_empty() && want.last() != Some(&b'\n') {
            want.push(b'\n');
        }
        prop_assert_eq!(out, want);
    }

    #[test]
    fn dot_decoder_never_panics_and_only_crlf_dot_crlf_ends(wire in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..300), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let (_, consumed, done) = decode_in_chunks(&wire, &cuts);
        if done {
            // RFC 5321 §4.1.1.4: the end is CRLF "." CRLF (or "." CRLF at the start).
            let seen = &wire[..consumed];
            prop_assert!(seen.ends_with(b"\r\n.\r\n") || seen == b".\r\n");
        }
    }

    #[test]
    fn bdat_decoder_is_chunking_independent(data in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..300), cut in any::<usize>()) {
        let whole = {
            let mut d = BdatDecoder::new(1 << 20);
            let mut out = Vec::new();
            d.feed(&data, &mut out);
            let _ = d.finish(&mut out);
            out
        };
        let split = {
            let c = cut % (data.len() + 1);
            let mut d = BdatDecoder::new(1 << 20);
            let mut out = Vec::new();
            d.feed(&data[..c], &mut out);
            d.feed(&data[c..], &mut out);
            let _ = d.finish(&mut out);
            out
        };
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn pop3_size_is_what_retr_sends(body in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400), cut in any::<usize>()) {
        let mut out = Vec::new();
        crate::pop3::reply::multiline(&mut out, &body);
        // Undo the framing: drop the terminator, unstuff, count.
        prop_assert!(out.ends_with(b".\r\n"));
        let framed = &out[..out.len() - 3];
        retr_lines_are_unambiguous(framed)?;
        let mut octets = 0u64;
        for line in framed.split_inclusive(|&b| b == b'\n') {
            octets += line.len() as u64 - u64::from(line.first() == Some(&b'.'));
        }
        prop_assert_eq!(octets, crate::pop3::reply::crlf_size(&body));
        // `W=` and a file's size, counted in pieces, agree.
        let c = cut % (body.len() + 1);
        let mut w = crate::crlf::CrlfSize::default();
        w.feed(&body[..c]);
        w.feed(&body[c..]);
        prop_assert_eq!(w.total(), octets);
    }

    /// What DATA stores, RETR sends so that every client reads the same lines:
    /// a body line `\r.` (or any CR/dot mix) never ends the response early.
    #[test]
    fn data_then_retr_never_ends_early(wire in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a')], 0..200), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let mut wire = wire;
        wire.extend_from_slice(b"\r\n.\r\n");
        let (stored, _, done) = decode_in_chunks(&wire, &cuts);
        prop_assert!(done);
        prop_assert!(!stored.contains(&b'\r'), "{:?}", stored);
        let mut out = Vec::new();
        crate::pop3::reply::multiline(&mut out, &stored);
        retr_lines_are_unambiguous(&out[..out.len() - 3])?;
        // A strict client gets the stored lines back, with CRLF.
        let unstuffed: Vec<u8> = out[..out.len() - 3]
            .split_inclusive(|&b| b == b'\n')
            .flat_map(|l| {
                let l = l.strip_prefix(b".").unwrap_or(l);
                l[..l.len() - 2].iter().copied().chain(*b"\n")
            })
            .collect();
        prop_assert_eq!(unstuffed, stored);
    }

    /// RETR in chunks sends exactly what `multiline` sends for the whole message.
    #[test]
    fn pop3_streaming_retr_equals_multiline(body in pop3_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        let mut want = Vec::new();
        crate::pop3::reply::multiline(&mut want, &body);
        let got = pop3_stream(crate::pop3::reply::MultilineEncoder::retr(), &body, &cuts);
        prop_assert_eq!(got, want);
    }

    /// TOP in chunks sends exactly `multiline(top(..))` of the whole message.
    #[test]
    fn pop3_streaming_top_equals_top(body in pop3_bytes(), lines in 0u64..6, cuts in proptest::collection::vec(any::<usize>(), 0..12)) {
        let mut want = Vec::new();
        crate::pop3::reply::multiline(&mut want, crate::pop3::reply::top(&body, lines));
        let got = pop3_stream(crate::pop3::reply::MultilineEncoder::top(lines), &body, &cuts);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn uidl_is_always_valid(base in "(?s).{0,120}") {
        let u = crate::maildir::scan::uidl(&base);
        prop_assert!(!u.is_empty() && u.len() <= 70);
        prop_assert!(u.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
}
