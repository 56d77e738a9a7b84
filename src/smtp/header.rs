//! What the session reads of a message's header section while the message
//! streams to the store: its Message-ID (for the log) and how many `Received:`
//! lines it has (loop protection: more than `MAX_HOPS` gets `554 5.4.6`, like
//! Postfix's `hopcount_limit`, RFC 5321 §6.3). Only the header section is
//! kept, and at most `MAX_HEADER` bytes of it.

/// More `Received:` lines than this and the message is refused as a loop.
pub const MAX_HOPS: usize = 50;
/// The most of a header section kept for parsing.
pub const MAX_HEADER: usize = 64 * 1024;
/// A Message-ID longer than this is cut in the log.
const MAX_MESSAGE_ID: usize = 256;

/// Collects the header section from body bytes with LF line endings.
#[derive(Debug, Default)]
pub struct HeaderScan {
    buf: Vec<u8>,
    done: bool,
}

/// What the header section said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderInfo {
    pub message_id: Option<String>,
    pub received: usize,
}

impl HeaderScan {
    /// Body bytes in order, as they are stored (LF line endings).
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.done || bytes.is_empty() {
            return;
        }
        // A blank line may straddle two feeds: look from the last byte kept.
        let from = self.buf.len().saturating_sub(1);
        let room = MAX_HEADER.saturating_sub(self.buf.len());
        self.buf
            .extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
        if self.buf.first() == Some(&b'\n') {
            // No header section at all.
            self.buf.clear();
            self.done = true;
        } else if let Some(at) =
            memchr::memmem::find(self.buf.get(from..).unwrap_or_default(), b"\n\n")
        {
            self.buf.truncate(from + at + 1);
            self.done = true;
        } else if self.buf.len() >= MAX_HEADER {
            // Too long: keep the complete lines.
            let end = memchr::memrchr(b'\n', &self.buf).map_or(0, |i| i + 1);
            self.buf.truncate(end);
            self.done = true;
        }
    }

    /// What was kept: `Received:` lines counted at line starts (so a header
    /// mailparse cannot parse is still checked for loops), the Message-ID
    /// read with mailparse (unfolding and decoding included).
    pub fn finish(&self) -> HeaderInfo {
        let received = self
            .buf
            .split(|&b| b == b'\n')
            .filter(|line| is_received(line))
            .count();
        let message_id = mailparse::parse_headers(&self.buf)
            .ok()
            .and_then(|(headers, _)| {
                headers
                    .iter()
                    .find(|h| h.get_key_ref().eq_ignore_ascii_case("Message-ID"))
                    .map(|h| cut(h.get_value().trim()))
            });
        HeaderInfo {
            message_id,
            received,
        }
    }
}

/// `Received:` (any case; RFC 5322 §4.5.3 allows blanks before the colon).
fn is_received(line: &[u8]) -> bool {
    let name = b"received";
    line.len() > name.len()
        && line
            .get(..name.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
        && line
            .get(name.len()..)
            .and_then(|rest| rest.iter().find(|&&b| b != b' ' && b != b'\t'))
            == Some(&b':')
}

/// At most `MAX_MESSAGE_ID` characters.
fn cut(value: &str) -> String {
    let end = value
        .char_indices()
        .nth(MAX_MESSAGE_ID)
        .map_or(value.len(), |(i, _)| i);
    value.get(..end).unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(parts: &[&[u8]]) -> HeaderInfo {
        let mut s = HeaderScan::default();
        for p in parts {
            s.feed(p);
        }
        s.finish()
    }

    #[test]
    fn reads_message_id_and_counts_received() {
        let info = scan(&[
            b"Received: from a\n\tby b; Mon, 1 Jan 2024 00:00:00 +0000\nReceived: from c\nMessage-I",
            b"D:\n <x@example.org>\nSubject: hi\n",
            b"\nReceived: in the body\nMessage-ID: <body@x>\n",
        ]);
        assert_eq!(info.message_id.as_deref(), Some("<x@example.org>"));
        assert_eq!(info.received, 2);
    }

    #[test]
    fn a_blank_line_split_across_feeds_ends_the_header() {
        let info = scan(&[b"Subject: x\n", b"\nReceived: body\n"]);
        assert_eq!(info.received, 0);
    }

    #[test]
    fn no_header_section() {
        assert_eq!(scan(&[b"\nReceived: x\n"]), HeaderInfo::default());
        assert_eq!(scan(&[]), HeaderInfo::default());
    }

    #[test]
    fn header_kept_is_bounded() {
        let line = b"Received: from x by y\n";
        let mut s = HeaderScan::default();
        for _ in 0..10_000 {
            s.feed(line);
        }
        assert!(s.buf.len() <= MAX_HEADER);
        assert_eq!(s.finish().received, MAX_HEADER / line.len());
        assert!(s.finish().received > MAX_HOPS);
    }

    #[test]
    fn loops_are_counted_even_when_mailparse_gives_up() {
        // A first line that is a continuation: no parse, still counted.
        let text = format!(" folded\n{}", "RECEIVED : x\n".repeat(51));
        let info = scan(&[text.as_bytes(), b"\nbody\n"]);
        assert_eq!(info.received, 51);
        assert!(!is_received(b"Received-SPF: pass"));
        assert!(!is_received(b"X-Received: x"));
        assert!(is_received(b"received:x"));
    }

    #[test]
    fn long_message_ids_are_cut() {
        let long = format!("Message-ID: <{}@x>\n\n", "a".repeat(5000));
        let id = scan(&[long.as_bytes()]).message_id.unwrap();
        assert_eq!(id.chars().count(), MAX_MESSAGE_ID);
    }
}
