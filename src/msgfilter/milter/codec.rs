//! The Sendmail milter protocol, version 6 (as Postfix speaks it to rspamd,
//! OpenDKIM, ClamAV...), as a pure codec: commands we send are encoded into
//! bytes, replies are decoded from bytes. No sockets here; the driver in
//! `client.rs` does the I/O. Packets are a 4-byte big-endian length (of the
//! command byte and its data), one command byte, then the data.

use std::fmt;

/// The protocol version we offer (Sendmail 8.14 / Postfix 2.6 and later).
pub const VERSION: u32 = 6;

/// The largest body chunk one `B` packet may carry (libmilter's
/// `MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65_535;

/// The most data a packet may carry for libmilter (its
/// `MILTER_MAX_DATA_SIZE`, without the larger sizes of SMFIP_MDS_*).
pub const MAX_DATA: usize = 65_535;

/// The largest reply packet accepted: a header edit or a reply text is far
/// smaller; anything bigger is a protocol error, not a reason to allocate.
pub const MAX_PACKET: usize = 256 * 1024;

/// Actions a milter may take at end of message (`SMFIF_*`), those we offer:
/// add, insert, change and delete headers, and quarantine.
pub mod action {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const ADDRCPT: u32 = 0x04;
    pub const DELRCPT: u32 = 0x08;
    pub const CHGHDRS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    /// What maildird applies.
    pub const OFFERED: u32 = ADDHDRS | CHGHDRS | QUARANTINE;
}

/// Protocol steps (`SMFIP_*`): `NO*` the milter does not want a step at
/// all, `NR_*` it will not reply to it.
pub mod proto {
    pub const NOCONNECT: u32 = 0x1;
    pub const NOHELO: u32 = 0x2;
    pub const NOMAIL: u32 = 0x4;
    pub const NORCPT: u32 = 0x8;
    pub const NOBODY: u32 = 0x10;
    pub const NOHDRS: u32 = 0x20;
    pub const NOEOH: u32 = 0x40;
    pub const NR_HDR: u32 = 0x80;
    pub const NOUNKNOWN: u32 = 0x100;
    pub const NODATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const RCPT_REJ: u32 = 0x800;
    pub const NR_CONN: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HDR_LEADSPC: u32 = 0x100000;
    /// Every step flag we understand (offered to the milter). `RCPT_REJ`
    /// is left out: rejected recipients never reach the filters here.
    pub const OFFERED: u32 = 0x1F_FFFF & !RCPT_REJ;
}

/// One step of the conversation, as the MTA sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    Eoh,
    Body,
    Eom,
}

impl Stage {
    /// The macro stage letter of `SMFIC_MACRO` (the command it precedes).
    pub fn command(self) -> u8 {
        match self {
            Stage::Connect => b'C',
            Stage::Helo => b'H',
            Stage::Mail => b'M',
            Stage::Rcpt => b'R',
            Stage::Data => b'T',
            Stage::Header => b'L',
            Stage::Eoh => b'N',
            Stage::Body => b'B',
            Stage::Eom => b'E',
        }
    }

    /// The milter asked not to be sent this step at all.
    pub fn skipped(self, protocol: u32) -> bool {
        let flag = match self {
            Stage::Connect => proto::NOCONNECT,
            Stage::Helo => proto::NOHELO,
            Stage::Mail => proto::NOMAIL,
            Stage::Rcpt => proto::NORCPT,
            Stage::Data => proto::NODATA,
            Stage::Header => proto::NOHDRS,
            Stage::Eoh => proto::NOEOH,
            Stage::Body => proto::NOBODY,
            Stage::Eom => 0,
        };
        protocol & flag != 0
    }

    /// The milter answers this step (it said neither "no reply" nor "skip").
    pub fn replies(self, protocol: u32) -> bool {
        let flag = match self {
            Stage::Connect => proto::NR_CONN,
            Stage::Helo => proto::NR_HELO,
            Stage::Mail => proto::NR_MAIL,
            Stage::Rcpt => proto::NR_RCPT,
            Stage::Data => proto::NR_DATA,
            Stage::Header => proto::NR_HDR,
            Stage::Eoh => proto::NR_EOH,
            Stage::Body => proto::NR_BODY,
            Stage::Eom => 0,
        };
        protocol & flag == 0
    }
}

/// A command from the MTA to the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    OptNeg {
        actions: u32,
        protocol: u32,
    },
    /// Macros (`name`, `value`) for the step `stage` that follows.
    Macros {
        stage: Stage,
        pairs: &'a [(&'a str, String)],
    },
    Connect {
        hostname: &'a str,
        addr: Option<std::net::SocketAddr>,
    },
    Helo(&'a str),
    /// The reverse path in angle brackets, then ESMTP parameters.
    Mail(&'a [String]),
    Rcpt(&'a [String]),
    Data,
    Header {
        name: &'a str,
        value: &'a [u8],
    },
    Eoh,
    Body(&'a [u8]),
    Eom,
    Abort,
    Quit,
}

fn push_str0(out: &mut Vec<u8>, s: &[u8]) {
    // A NUL inside would end the string early: the milter would read a
    // different value than ours (never sent; replaced by a space).
    out.extend(s.iter().map(|&b| if b == 0 { b' ' } else { b }));
    out.push(0);
}

/// Append `cmd` as one packet to `out`.
pub fn encode(cmd: &Command<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match cmd {
        Command::OptNeg { actions, protocol } => {
            out.push(b'O');
            out.extend_from_slice(&VERSION.to_be_bytes());
            out.extend_from_slice(&actions.to_be_bytes());
            out.extend_from_slice(&protocol.to_be_bytes());
        }
        Command::Macros { stage, pairs } => {
            out.push(b'D');
            out.push(stage.command());
            for (k, v) in pairs.iter() {
                push_str0(out, k.as_bytes());
                push_str0(out, v.as_bytes());
            }
        }
        Command::Connect { hostname, addr } => {
            out.push(b'C');
            push_str0(out, hostname.as_bytes());
            match addr {
                Some(a) => {
                    let ip = a.ip().to_canonical();
                    out.push(if ip.is_ipv4() { b'4' } else { b'6' });
                    out.extend_from_slice(&a.port().to_be_bytes());
                    push_str0(out, ip.to_string().as_bytes());
                }
                // SMFIA_UNKNOWN: no port nor address follows.
                None => out.push(b'U'),
            }
        }
        Command::Helo(h) => {
            out.push(b'H');
            push_str0(out, h.as_bytes());
        }
        Command::Mail(args) | Command::Rcpt(args) => {
            out.push(if matches!(cmd, Command::Mail(_)) {
                b'M'
            } else {
                b'R'
            });
            for a in args.iter() {
                push_str0(out, a.as_bytes());
            }
        }
        Command::Data => out.push(b'T'),
        Command::Header { name, value } => {
            out.push(b'L');
            push_str0(out, name.as_bytes());
            push_str0(out, value);
        }
        Command::Eoh => out.push(b'N'),
        Command::Body(chunk) => {
            out.push(b'B');
            out.extend_from_slice(chunk);
        }
        Command::Eom => out.push(b'E'),
        Command::Abort => out.push(b'A'),
        Command::Quit => out.push(b'Q'),
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    if let Some(head) = out.get_mut(start..start + 4) {
        head.copy_from_slice(&len.to_be_bytes());
    }
}

/// A reply from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Accept,
    Continue,
    Discard,
    Reject,
    Tempfail,
    /// `SMFIR_REPLYCODE`: a reject or tempfail with this SMTP reply text.
    ReplyCode(String),
    AddHeader {
        name: String,
        value: Vec<u8>,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// An empty value deletes the `index`th (from 1) field of that name.
    ChangeHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    Quarantine(String),
    /// "Still working": the wait starts again.
    Progress,
    /// Stop sending body chunks (protocol `SKIP`).
    Skip,
    /// A modification we did not offer (recipients, sender, body): the
    /// command byte, to be logged and ignored.
    Unoffered(u8),
}

impl Response {
    /// Does this reply end the current step?
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            Response::AddHeader { .. }
                | Response::InsertHeader { .. }
                | Response::ChangeHeader { .. }
                | Response::Quarantine(_)
                | Response::Progress
                | Response::Unoffered(_)
        )
    }
}

/// A reply the codec cannot accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    TooBig(usize),
    Empty,
    Malformed(u8),
    Unknown(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooBig(n) => write!(f, "reply packet of {n} bytes is too big"),
            DecodeError::Empty => write!(f, "empty reply packet"),
            DecodeError::Malformed(c) => write!(f, "malformed '{}' reply", char::from(*c)),
            DecodeError::Unknown(c) => write!(f, "unknown reply command 0x{c:02x}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decode one reply from the front of `buf`: `Ok(Some((reply, used)))`
/// when a whole packet is there, `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Response, usize)>, DecodeError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len > MAX_PACKET {
        return Err(DecodeError::TooBig(len));
    }
    if len == 0 {
        return Err(DecodeError::Empty);
    }
    let Some(packet) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let (cmd, data) = (packet[0], &packet[1..]);
    let bad = || DecodeError::Malformed(cmd);
    let r = match cmd {
        b'O' => {
            let n = |i: usize| -> Result<u32, DecodeError> {
                let b = data.get(i * 4..i * 4 + 4).ok_or_else(bad)?;
                Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            // Macro requests may follow the three numbers (v6): ignored,
            // we send the same macros to every milter.
            Response::OptNeg {
                version: n(0)?,
                actions: n(1)?,
                protocol: n(2)?,
            }
        }
        b'a' => Response::Accept,
        b'c' => Response::Continue,
        b'd' => Response::Discard,
        b'r' => Response::Reject,
        b't' => Response::Tempfail,
        b'p' => Response::Progress,
        b's' => Response::Skip,
        b'y' => Response::ReplyCode(text(data)),
        b'q' => Response::Quarantine(text(data)),
        b'h' => {
            let (name, value) = name_value(data).ok_or_else(bad)?;
            Response::AddHeader { name, value }
        }
        b'i' | b'm' => {
            let idx = data.get(..4).ok_or_else(bad)?;
            let index = u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]);
            let (name, value) = name_value(&data[4..]).ok_or_else(bad)?;
            if cmd == b'i' {
                Response::InsertHeader { index, name, value }
            } else {
                Response::ChangeHeader { index, name, value }
            }
        }
        // Add/delete recipient (with parameters), replace body, change
        // sender, connection failure, macro list: not offered.
        b'+' | b'-' | b'2' | b'b' | b'e' | b'l' => Response::Unoffered(cmd),
        // "Fail the connection", "shutting down": a temporary failure.
        b'f' | b'4' => Response::Tempfail,
        other => return Err(DecodeError::Unknown(other)),
    };
    Ok(Some((r, 4 + len)))
}

/// A NUL-terminated string (or the whole slice when unterminated).
fn text(data: &[u8]) -> String {
    let end = memchr::memchr(0, data).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// `name\0value\0`: the name must be a valid field name (RFC 5322 §3.6.8).
fn name_value(data: &[u8]) -> Option<(String, Vec<u8>)> {
    let nul = memchr::memchr(0, data)?;
    let (name, rest) = (&data[..nul], &data[nul + 1..]);
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b) && b != b':') {
        return None;
    }
    let end = memchr::memchr(0, rest).unwrap_or(rest.len());
    Some((
        String::from_utf8_lossy(name).into_owned(),
        rest[..end].to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(cmd: Command<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&cmd, &mut v);
        v
    }

    fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
        let mut v = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(cmd);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn commands_encode_as_libmilter_reads_them() {
        let mail: [String; 2] = ["<a@b>".into(), "SIZE=10".into()];
        let rcpt: [String; 1] = ["<c@d>".into()];
        let macros: [(&str, String); 2] = [("i", "ID1".into()), ("{mail_addr}", "a@b".into())];
        let table: Vec<(Command<'_>, Vec<u8>)> = vec![
            (
                Command::OptNeg {
                    actions: 0x31,
                    protocol: 0x1FF7FF,
                },
                packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 0x31, 0, 0x1F, 0xF7, 0xFF]),
            ),
            (
                Command::Connect {
                    hostname: "mx.example",
                    addr: Some("192.0.2.1:2525".parse().unwrap()),
                },
                packet(b'C', b"mx.example\x004\x09\xdd192.0.2.1\0"),
            ),
            (
                Command::Connect {
                    hostname: "h",
                    addr: Some("[2001:db8::1]:25".parse().unwrap()),
                },
                packet(b'C', b"h\x006\x00\x192001:db8::1\0"),
            ),
            (
                Command::Connect {
                    hostname: "localhost",
                    addr: None,
                },
                packet(b'C', b"localhost\0U"),
            ),
            (Command::Helo("client"), packet(b'H', b"client\0")),
            (Command::Mail(&mail), packet(b'M', b"<a@b>\0SIZE=10\0")),
            (Command::Rcpt(&rcpt), packet(b'R', b"<c@d>\0")),
            (Command::Data, packet(b'T', b"")),
            (
                Command::Header {
                    name: "Subject",
                    value: b"hi\0there",
                },
                packet(b'L', b"Subject\0hi there\0"),
            ),
            (Command::Eoh, packet(b'N', b"")),
            (Command::Body(b"x\r\n"), packet(b'B', b"x\r\n")),
            (Command::Eom, packet(b'E', b"")),
            (Command::Abort, packet(b'A', b"")),
            (Command::Quit, packet(b'Q', b"")),
            (
                Command::Macros {
                    stage: Stage::Mail,
                    pairs: &macros,
                },
                packet(b'D', b"Mi\0ID1\0{mail_addr}\0a@b\0"),
            ),
        ];
        for (cmd, want) in table {
            assert_eq!(enc(cmd.clone()), want, "{cmd:?}");
        }
    }

    #[test]
    fn replies_decode() {
        let table: Vec<(Vec<u8>, Response)> = vec![
            (
                packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 0x3f, 0, 0x0f, 0, 0]),
                Response::OptNeg {
                    version: 6,
                    actions: 0x3f,
                    protocol: 0x0f_0000,
                },
            ),
            (packet(b'a', b""), Response::Accept),
            (packet(b'c', b""), Response::Continue),
            (packet(b'd', b""), Response::Discard),
            (packet(b'r', b""), Response::Reject),
            (packet(b't', b""), Response::Tempfail),
            (packet(b'p', b""), Response::Progress),
            (packet(b's', b""), Response::Skip),
            (
                packet(b'y', b"554 5.7.1 Gtube pattern\0"),
                Response::ReplyCode("554 5.7.1 Gtube pattern".into()),
            ),
            (
                packet(b'q', b"virus\0"),
                Response::Quarantine("virus".into()),
            ),
            (
                packet(b'h', b"X-Spam\0yes\0"),
                Response::AddHeader {
                    name: "X-Spam".into(),
                    value: b"yes".to_vec(),
                },
            ),
            (
                packet(b'i', b"\0\0\0\x01X-A\0v\0"),
                Response::InsertHeader {
                    index: 1,
                    name: "X-A".into(),
                    value: b"v".to_vec(),
                },
            ),
            (
                packet(b'm', b"\0\0\0\x02Subject\0\0"),
                Response::ChangeHeader {
                    index: 2,
                    name: "Subject".into(),
                    value: Vec::new(),
                },
            ),
            (packet(b'+', b"<x@y>\0"), Response::Unoffered(b'+')),
            (packet(b'b', b"new body"), Response::Unoffered(b'b')),
        ];
        for (bytes, want) in table {
            let mut two = bytes.clone();
            two.extend_from_slice(&packet(b'c', b""));
            assert_eq!(
                decode(&two).unwrap(),
                Some((want.clone(), bytes.len())),
                "{want:?}"
            );
            // Any prefix: more bytes needed, never an error.
            for cut in 0..bytes.len() {
                assert_eq!(
                    decode(&bytes[..cut]).unwrap(),
                    None,
                    "{want:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn bad_replies_are_errors() {
        assert_eq!(decode(&packet(b'Z', b"")), Err(DecodeError::Unknown(b'Z')));
        assert_eq!(decode(&[0, 0, 0, 0]), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[0, 0x10, 0, 0, b'h']),
            Err(DecodeError::TooBig(0x10_0000))
        );
        assert_eq!(
            decode(&packet(b'O', &[0, 0, 0, 6])),
            Err(DecodeError::Malformed(b'O'))
        );
        // A header name with a colon or a space, or no NUL at all.
        assert_eq!(
            decode(&packet(b'h', b"X:Y\0v\0")),
            Err(DecodeError::Malformed(b'h'))
        );
        assert_eq!(
            decode(&packet(b'h', b"X Y\0v\0")),
            Err(DecodeError::Malformed(b'h'))
        );
        assert_eq!(
            decode(&packet(b'h', b"XY")),
            Err(DecodeError::Malformed(b'h'))
        );
        assert_eq!(
            decode(&packet(b'm', b"\0\0")),
            Err(DecodeError::Malformed(b'm'))
        );
    }

    #[test]
    fn stage_flags() {
        let p = proto::NOHELO | proto::NR_HDR | proto::NR_BODY;
        assert!(Stage::Helo.skipped(p));
        assert!(!Stage::Mail.skipped(p));
        assert!(!Stage::Header.replies(p));
        assert!(!Stage::Body.replies(p));
        assert!(Stage::Eom.replies(u32::MAX));
        assert!(!Stage::Eom.skipped(u32::MAX));
    }
}
