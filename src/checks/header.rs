//! The message-side pure helpers of the checks: the wire (CRLF) form the
//! verifiers read, and the header section without any
//! `Authentication-Results:` that claims our authserv-id (RFC 8601 §5: such a
//! header from outside is a forgery and is removed).

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

/// The parts of `message` (LF line ends) to store, in order: every header
/// field except an `Authentication-Results:` whose authserv-id is
/// `authserv_id` (with its folded lines), then the blank line and the body.
pub fn without_our_results<'a>(message: &'a [u8], authserv_id: &str) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = message;
    let mut dropping = false;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        let (line, tail) = rest.split_at(end);
        if line == b"\n" {
            // The header section ends here: keep the rest as it is.
            parts.push(rest);
            return parts;
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            dropping = is_ours(line, authserv_id);
        }
        if !dropping {
            parts.push(line);
        }
        rest = tail;
    }
    parts
}

/// Is `line` the first line of an `Authentication-Results:` field naming
/// `authserv_id` (case-insensitive, RFC 8601 §2.5)?
fn is_ours(line: &[u8], authserv_id: &str) -> bool {
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
    fn forged_results_for_us_are_removed_others_kept() {
        let msg = b"Received: x\n\
            Authentication-Results: MX.test;\n\tspf=pass smtp.mailfrom=a@b\n\
            Authentication-Results: other.example; dkim=pass\n\
            authentication-results :mx.test (forged); dmarc=pass\n\
            Subject: hi\n\
            \n\
            Authentication-Results: mx.test; in the body stays\n";
        let kept: Vec<u8> = without_our_results(msg, "mx.test").concat();
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "Received: x\n\
             Authentication-Results: other.example; dkim=pass\n\
             Subject: hi\n\
             \n\
             Authentication-Results: mx.test; in the body stays\n"
        );
    }

    #[test]
    fn a_prefix_of_our_name_is_not_ours() {
        let msg = b"Authentication-Results: mx.test.evil; x\nA: b\n\nbody";
        assert_eq!(without_our_results(msg, "mx.test").concat(), msg.to_vec());
        // No body, no blank line: all kept.
        assert_eq!(
            without_our_results(b"A: b\n", "mx.test").concat(),
            b"A: b\n"
        );
    }
}
