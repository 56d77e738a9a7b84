//! The message-side pure helpers of the checks: the wire (CRLF) form the
//! verifiers read, and which `Authentication-Results:` claims our
//! authserv-id (RFC 8601 §5: such a header from outside is a forgery and is
//! removed).

/// Append `bytes` (LF line ends, as stored) to `out` with CRLF line ends, as
/// they came over SMTP: what DKIM signed. Chunk by chunk: a line end never
/// spans two calls, since it is one byte here.
pub fn extend_crlf(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.split_inclusive(|&b| b == b'\n') {
        match chunk.strip_suffix(b"\n") {
            Some(line) => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(chunk),
        }
    }
}

/// Does the `Authentication-Results:` field `field` (all its lines) name
/// `authserv_id` (RFC 8601 §2.2, §2.5)? Folding, comments before the id, a
/// quoted id and a trailing dot are all seen through, case-insensitively.
pub fn names_us(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let value = field.get(colon + 1..).unwrap_or_default();
    let mut i = 0;
    // CFWS: blanks, line ends and (nested) comments.
    let mut depth = 0usize;
    while let Some(&b) = value.get(i) {
        match b {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    let rest = value.get(i..).unwrap_or_default();
    let id: Vec<u8> = if rest.first() == Some(&b'"') {
        let mut out = Vec::new();
        let mut bytes = rest.iter().skip(1);
        while let Some(&b) = bytes.next() {
            match b {
                b'"' => break,
                b'\\' => out.extend(bytes.next()),
                b'\r' | b'\n' => {}
                _ => out.push(b),
            }
        }
        out
    } else {
        rest.iter()
            .take_while(|&&b| !matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'('))
            .copied()
            .collect()
    };
    let id = String::from_utf8_lossy(&id);
    let id = id.trim().trim_end_matches('.');
    !id.is_empty() && id.eq_ignore_ascii_case(authserv_id.trim_end_matches('.'))
}

/// `s` as an RFC 8601 pvalue: as it is when it is a plain token, else
/// quoted (control characters dropped).
pub fn pvalue(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-_+".contains(&b));
    if plain {
        return s.to_string();
    }
    let inner: String = s
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '"' || c == '\\' { '_' } else { c })
        .collect();
    format!("\"{inner}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvalues() {
        assert_eq!(pvalue("a@b.example"), "a@b.example");
        assert_eq!(pvalue("a b\"\n"), "\"a b_\"");
        // Nothing a client sends can look like a result of ours.
        assert_eq!(
            pvalue("dmarc=pass@evil.example"),
            "\"dmarc=pass@evil.example\""
        );
    }

    #[test]
    fn crlf_form() {
        let crlf = |parts: &[&[u8]]| {
            let mut out = Vec::new();
            for p in parts {
                extend_crlf(&mut out, p);
            }
            out
        };
        assert_eq!(crlf(&[b"a\nb\n\nc"]), b"a\r\nb\r\n\r\nc");
        assert_eq!(crlf(&[b"a\nb", b"\n\nc"]), b"a\r\nb\r\n\r\nc");
        assert_eq!(crlf(&[b""]), b"");
    }

    #[test]
    fn our_results_are_recognised_in_any_spelling() {
        for ours in [
            &b"Authentication-Results: mx.test; spf=pass\n"[..],
            b"authentication-results :MX.test (forged); dmarc=pass\n",
            b"Authentication-Results:\tmx.test;\n",
            b"Authentication-Results: mx.test\n",
            b"Authentication-Results:\n mx.test; dkim=pass\n",
            b"Authentication-Results: (a (nested) comment)\n\t mx.test.; x\n",
            b"Authentication-Results: \"mx.test\"; x\n",
            b"Authentication-Results: \"mx\\.test\"; x\n",
        ] {
            assert!(
                names_us(ours, "mx.test"),
                "{}",
                String::from_utf8_lossy(ours)
            );
        }
        for theirs in [
            &b"Authentication-Results: other.example; dkim=pass\n"[..],
            b"Authentication-Results: mx.test.evil; x\n",
            b"Authentication-Results: (mx.test) other.example; x\n",
            b"Authentication-Results:\n",
        ] {
            assert!(
                !names_us(theirs, "mx.test"),
                "{}",
                String::from_utf8_lossy(theirs)
            );
        }
    }
}
