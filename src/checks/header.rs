//! The message-side pure helpers of the checks: the wire (CRLF) form the
//! verifiers read, and which `Authentication-Results:` claims our
//! authserv-id (RFC 8601 §5: such a header from outside is a forgery and is
//! removed).

/// `message` (LF line ends, as stored) with CRLF line ends, as it came over
/// SMTP: what DKIM signed.
pub fn to_crlf(message: &[u8]) -> Vec<u8> {
    let lines = memchr::memchr_iter(b'\n', message).count();
    let mut out = Vec::with_capacity(message.len() + lines);
    for chunk in message.split_inclusive(|&b| b == b'\n') {
        match chunk.strip_suffix(b"\n") {
            Some(line) => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(chunk),
        }
    }
    out
}

/// Is `line` the first line of an `Authentication-Results:` field naming
/// `authserv_id` (case-insensitive, RFC 8601 §2.5)?
pub fn is_ours(line: &[u8], authserv_id: &str) -> bool {
    let name = b"authentication-results";
    let Some(value) = line
        .get(..name.len())
        .filter(|n| n.eq_ignore_ascii_case(name))
        .and_then(|_| line.get(name.len()..))
    else {
        return false;
    };
    let Some(value) = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .and_then(|i| value.get(i..))
        .and_then(|v| v.strip_prefix(b":"))
    else {
        return false;
    };
    // The authserv-id: the first token, up to `;`, blanks or a comment.
    let value = String::from_utf8_lossy(value);
    let id = value
        .trim_start()
        .split([';', ' ', '\t', '\n', '\r', '('])
        .next()
        .unwrap_or_default();
    id.eq_ignore_ascii_case(authserv_id)
}

/// `s` as an RFC 8601 pvalue: as it is when it is a plain token, else
/// quoted (control characters dropped).
pub fn pvalue(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-_+=".contains(&b));
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
    }

    #[test]
    fn crlf_form() {
        assert_eq!(to_crlf(b"a\nb\n\nc"), b"a\r\nb\r\n\r\nc");
        assert_eq!(to_crlf(b""), b"");
    }

    #[test]
    fn our_results_are_recognised_in_any_spelling() {
        for ours in [
            &b"Authentication-Results: mx.test; spf=pass\n"[..],
            b"authentication-results :MX.test (forged); dmarc=pass\n",
            b"Authentication-Results:\tmx.test;\n",
            b"Authentication-Results: mx.test\n",
        ] {
            assert!(
                is_ours(ours, "mx.test"),
                "{}",
                String::from_utf8_lossy(ours)
            );
        }
        for theirs in [
            &b"Authentication-Results: other.example; dkim=pass\n"[..],
            b"Authentication-Results: mx.test.evil; x\n",
            b"X-Authentication-Results: mx.test; x\n",
            b"Authentication-Results-X: mx.test\n",
            b" mx.test; continuation\n",
        ] {
            assert!(
                !is_ours(theirs, "mx.test"),
                "{}",
                String::from_utf8_lossy(theirs)
            );
        }
    }
}
