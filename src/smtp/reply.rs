//! SMTP replies: a code, an enhanced status code (RFC 3463, on every reply since we
//! advertise ENHANCEDSTATUSCODES, RFC 2034) and text, encoded as one or more lines.

/// One SMTP reply. Multi-line when `lines` has more than one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as "2.1.0"; empty for replies that carry none
    /// (the 220 greeting and the EHLO/HELO 250, per RFC 2034 §3).
    pub status: &'static str,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// Is this a positive completion (2xx/3xx)?
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Wire form: `250-2.1.0 text\r\n ... 250 2.1.0 last\r\n`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            // Never let text inject a line break onto the wire.
            out.extend(
                text.bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }
}
