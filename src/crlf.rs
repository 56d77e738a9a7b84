//! Sizes on the wire: a message as POP3 sends it (RFC 1939 §11: `W=` in
//! Maildir names, LIST, STAT) and a body as SMTP counts it against SIZE
//! (RFC 1870). One counter for delivery, the Maildir scan, the SMTP session and
//! the POP3 encoder, so the four can never disagree. Pure.

/// The size of a message on the POP3 wire (`W=`, LIST, RFC 1939 §11): its
/// bytes, plus one for every LF without a CR before it and every CR without
/// an LF after it (both go out as CRLF), plus a CRLF when the last line is
/// unterminated. Fed in pieces; `crlf_size` of the whole is the same.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrlfSize {
    n: u64,
    prev: u8,
}

impl CrlfSize {
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.n += 1;
            if (b == b'\n' && self.prev != b'\r') || (self.prev == b'\r' && b != b'\n') {
                self.n += 1;
            }
            self.prev = b;
        }
    }

    pub fn total(&self) -> u64 {
        match self.prev {
            _ if self.n == 0 => 0,
            b'\n' => self.n,
            // A final lone CR goes out as CRLF and ends the last line.
            b'\r' => self.n + 1,
            _ => self.n + 2,
        }
    }
}

impl CrlfSize {
    /// Octets counted so far, without the CRLF an unterminated last line
    /// would still get (for a limit checked while the text streams in).
    pub fn so_far(&self) -> u64 {
        self.n
    }
}

/// The size of `text` on the POP3 wire (see `CrlfSize`).
pub fn crlf_size(text: &[u8]) -> u64 {
    let mut c = CrlfSize::default();
    c.feed(text);
    c.total()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_on_the_wire() {
        for (text, want) in [
            (&b""[..], 0),
            (b"a\r\n", 3),
            (b"a\n", 3),
            (b"a\nb\n", 6),
            // No final line end: it gets its CRLF.
            (b"no final crlf", 15),
            (b"a\r\nb", 6),
            // A lone CR is a line end too.
            (b"a\rb\r\n", 6),
            (b"a\r", 3),
            (b".\n..\n", 7),
        ] {
            assert_eq!(crlf_size(text), want, "{:?}", String::from_utf8_lossy(text));
            // Fed byte by byte: the same.
            let mut c = CrlfSize::default();
            for b in text {
                c.feed(std::slice::from_ref(b));
            }
            assert_eq!(c.total(), want);
        }
    }
}
