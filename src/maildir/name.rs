//! Maildir unique names (maildird(8), MAILDIR): `sec.M<usec>P<pid>Q<n>R<rand>.<host>`,
//! completed with `,S=<size>,W=<crlf size>` once the message size is known, and
//! the pure helpers that read those names back.
//!
//! The base name (everything before `:`) is a message's identity: mutt keeps it
//! when it moves a message `new/` -> `cur/` and changes flags, and POP3 uses it
//! as the UIDL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Process-wide delivery counter: two deliveries in the same microsecond by the
/// same process still get distinct names (the `Q<n>` part).
static DELIVERY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The unique part of a Maildir file name, without sizes or flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueName {
    unique: String,
}

impl UniqueName {
    /// A fresh name for a delivery by this process on `host`.
    pub fn generate(host: &str) -> UniqueName {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let q = DELIVERY_COUNTER.fetch_add(1, Ordering::Relaxed);
        // The random part guards against pid reuse after a restart within the
        // same microsecond and against clocks stepping backwards.
        let r: u32 = rand::random();
        UniqueName::from_parts(now.as_secs(), now.subsec_micros(), pid(), q, r, host)
    }

    /// A name from explicit parts (deterministic; `generate` uses the clock).
    pub fn from_parts(
        secs: u64,
        usec: u32,
        pid: u32,
        counter: u64,
        random: u32,
        host: &str,
    ) -> UniqueName {
        UniqueName {
            unique: format!(
                "{secs}.M{usec}P{pid}Q{counter}R{random:08x}.{}",
                sanitize_host(host)
            ),
        }
    }

    /// The base name: `sec.M..P..Q..R...host`.
    pub fn as_str(&self) -> &str {
        &self.unique
    }

    /// The message's id: the base name without its host part,
    /// `sec.M<usec>P<pid>Q<n>R<rand>`. It is in the 250 reply, in `Received:`
    /// and in every log line about the message, and every file of the message
    /// in `new/` or `cur/` starts with it (maildird(8), "Following a message").
    pub fn id(&self) -> &str {
        message_id_of(&self.unique)
    }

    /// The final file name for `new/`: base name plus `,S=<size>,W=<crlf size>`.
    pub fn with_sizes(&self, size: u64, crlf_size: u64) -> String {
        format!("{},S={size},W={crlf_size}", self.unique)
    }
}

/// The host part per the Maildir spec: `/` -> `\057`, `:` -> `\072`. We also
/// escape `,` (`\054`) because Maildir++ uses it to separate the `S=`/`W=` fields,
/// and drop anything outside printable ASCII 0x21-0x7E.
pub fn sanitize_host(host: &str) -> String {
    let mut out = String::with_capacity(host.len());
    for c in host.chars() {
        match c {
            '/' => out.push_str("\\057"),
            ':' => out.push_str("\\072"),
            ',' => out.push_str("\\054"),
            '\x21'..='\x7e' => out.push(c),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push_str("localhost");
    }
    out
}

/// The writer of a unique name: (pid, sanitized host) from
/// `sec.M<usec>P<pid>Q<n>R<rand>.<host>[,S=..]`. None for other names.
pub fn writer(file_name: &str) -> Option<(u32, &str)> {
    let (_, rest) = file_name.split_once('.')?;
    let (id, host) = rest.split_once('.')?;
    let pid = id
        .split_once('P')?
        .1
        .split(['Q', 'R'])
        .next()?
        .parse()
        .ok()?;
    let host = host.split(',').next()?;
    Some((pid, host))
}

/// A message's identity: the file name before the `:2,FLAGS` info part.
pub fn base_name(file_name: &str) -> &str {
    match file_name.split_once(':') {
        Some((base, _)) => base,
        None => file_name,
    }
}

/// The id part of a unique name (up to the `.` before the host); the whole
/// name when it is not one of ours.
pub fn message_id_of(file_name: &str) -> &str {
    let end = file_name
        .match_indices('.')
        .nth(1)
        .map_or(file_name.len(), |(i, _)| i);
    file_name.get(..end).unwrap_or(file_name)
}

/// The `S=` (bytes on disk) and `W=` (bytes with CRLF line endings) fields of a
/// Maildir++ name, when present and numeric. Flags after `:` are ignored.
pub fn parse_sizes(name: &str) -> (Option<u64>, Option<u64>) {
    let mut s = None;
    let mut w = None;
    // The first comma-separated field is the unique part itself.
    for field in base_name(name).split(',').skip(1) {
        if let Some(v) = field.strip_prefix("S=") {
            s = parse_number(v).or(s);
        } else if let Some(v) = field.strip_prefix("W=") {
            w = parse_number(v).or(w);
        }
    }
    (s, w)
}

fn parse_number(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// This process's id, asked of the kernel once (getpid is a system call per
/// delivery otherwise; the daemon never forks without exec).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_of_a_name() {
        let n = UniqueName::from_parts(1700000000, 42, 4242, 7, 0xbeef, "mx.example");
        assert_eq!(writer(n.as_str()), Some((4242, "mx.example")));
        assert_eq!(writer(&n.with_sizes(10, 12)), Some((4242, "mx.example")));
        assert_eq!(writer("1700000000.12345.host"), None);
        assert_eq!(writer("garbage"), None);
    }

    #[test]
    fn from_parts_layout() {
        let n = UniqueName::from_parts(1795315389, 42, 1234, 7, 0xbeef, "mail.example.org");
        assert_eq!(
            n.as_str(),
            "1795315389.M42P1234Q7R0000beef.mail.example.org"
        );
        assert_eq!(
            n.with_sizes(100, 104),
            "1795315389.M42P1234Q7R0000beef.mail.example.org,S=100,W=104"
        );
        assert_eq!(n.id(), "1795315389.M42P1234Q7R0000beef");
        assert_eq!(
            message_id_of(&format!("{},S=1,W=2:2,S", n.as_str())),
            n.id()
        );
        assert_eq!(message_id_of("foreign"), "foreign");
    }

    #[test]
    fn host_sanitizing() {
        for (host, want) in [
            ("mail.example.org", "mail.example.org"),
            ("a/b", "a\\057b"),
            ("a:b", "a\\072b"),
            ("a,b", "a\\054b"),
            ("a b\tc\u{e9}\x7f", "abc"),
            ("", "localhost"),
            (" \n", "localhost"),
        ] {
            assert_eq!(sanitize_host(host), want, "{host:?}");
        }
    }

    #[test]
    fn generated_names_differ_and_are_well_formed() {
        let a = UniqueName::generate("h/x");
        let b = UniqueName::generate("h/x");
        assert_ne!(a, b);
        for n in [&a, &b] {
            let s = n.as_str();
            assert!(s.ends_with(".h\\057x"), "{s}");
            assert!(
                !s.contains(':') && !s.contains('/') && !s.contains(','),
                "{s}"
            );
            let (secs, rest) = s.split_once('.').unwrap();
            assert!(secs.parse::<u64>().unwrap() > 1_600_000_000);
            assert!(rest.starts_with('M'), "{s}");
            assert!(rest.contains(&format!("P{}Q", std::process::id())), "{s}");
        }
    }

    #[test]
    fn base_names() {
        for (name, want) in [
            ("123.M1P2Q3R4.h,S=10,W=12:2,S", "123.M1P2Q3R4.h,S=10,W=12"),
            ("123.M1P2Q3R4.h,S=10,W=12", "123.M1P2Q3R4.h,S=10,W=12"),
            ("123.abc:2,", "123.abc"),
            ("x:y:z", "x"),
            ("", ""),
            (":2,S", ""),
        ] {
            assert_eq!(base_name(name), want, "{name:?}");
        }
    }

    #[test]
    fn sizes() {
        for (name, s, w) in [
            ("1.M1P1Q1R1.h,S=10,W=12", Some(10), Some(12)),
            ("1.M1P1Q1R1.h,S=10,W=12:2,S", Some(10), Some(12)),
            ("1.M1P1Q1R1.h,W=12,S=10:2,", Some(10), Some(12)),
            ("1.M1P1Q1R1.h,S=10", Some(10), None),
            ("1.M1P1Q1R1.h,W=7", None, Some(7)),
            ("1.M1P1Q1R1.h", None, None),
            ("1.M1P1Q1R1.h:2,S=5", None, None),
            ("1.M1P1Q1R1.h,S=x1,W=", None, None),
            ("1.M1P1Q1R1.h,S=+1,W=-2", None, None),
            ("1.M1P1Q1R1.h,S=99999999999999999999999", None, None),
            ("S=5.h", None, None),
        ] {
            assert_eq!(parse_sizes(name), (s, w), "{name:?}");
        }
    }

    #[test]
    fn generated_name_parses_back() {
        let n = UniqueName::generate("mail.example.org");
        let full = n.with_sizes(1234, 1290);
        assert_eq!(parse_sizes(&full), (Some(1234), Some(1290)));
        assert_eq!(
            parse_sizes(&format!("{full}:2,RS")),
            (Some(1234), Some(1290))
        );
        assert_eq!(base_name(&format!("{full}:2,S")), full);
    }
}
