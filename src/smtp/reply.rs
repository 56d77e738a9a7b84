//! SMTP replies: a code, an enhanced status code (RFC 3463, on every reply since we
//! advertise ENHANCEDSTATUSCODES, RFC 2034) and text, encoded as one or more lines.

/// One SMTP reply. Multi-line when `lines` has more than one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Why, when the enhanced status code alone does not say it (logs and
    /// metrics; see `reason`).
    pub because: Option<&'static str>,
    pub code: u16,
    /// Enhanced status code such as "2.1.0"; empty for replies that carry none
    /// (the 220 greeting and the EHLO/HELO 250, per RFC 2034 §3).
    pub status: std::borrow::Cow<'static, str>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(
        code: u16,
        status: impl Into<std::borrow::Cow<'static, str>>,
        text: impl Into<String>,
    ) -> Reply {
        Reply {
            because: None,
            code,
            status: status.into(),
            lines: vec![text.into()],
        }
    }

    /// The same reply with its reason named.
    pub fn because(mut self, reason: &'static str) -> Reply {
        self.because = Some(reason);
        self
    }

    /// Why a 4xx/5xx was given, as logs and metrics name it: read from the
    /// enhanced status code (RFC 3463), which says exactly that.
    pub fn reason(&self) -> &'static str {
        if let Some(r) = self.because {
            return r;
        }
        match (self.code, &*self.status) {
            (_, "5.1.1") => "unknown_user",
            (_, "5.7.1") => "relay",
            (_, "5.3.4" | "5.2.3") => "size",
            (554, "5.6.0") => "bare_line_ending",
            (_, "5.6.0") => "line_length",
            (_, "5.4.6") => "hopcount",
            (_, "5.6.7") => "smtputf8_required",
            (_, "4.5.3") => "too_many_recipients",
            (_, "4.3.1") => "no_space",
            (_, "4.3.0") => "storage",
            (_, "4.3.2") => "shutdown",
            (_, "4.4.2") => "timeout",
            (_, "4.7.0") => "limits",
            (_, "5.7.0") => "auth_required",
            (_, "5.7.8") => "auth",
            (_, "5.7.11") => "encryption_required",
            (_, "5.1.3" | "5.1.7") => "bad_address",
            (502, _) => "not_implemented",
            (_, "5.5.1") => "sequence",
            (_, "5.5.2" | "5.5.4" | "5.5.6" | "5.0.0") => "syntax",
            (c, _) if c >= 500 => "other_permanent",
            _ => "other_temporary",
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
