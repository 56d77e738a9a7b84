//! A milter client: one conversation per message, run after the body has
//! arrived (connect, HELO, MAIL, RCPT, headers, body, end of message), on a
//! blocking thread over a TCP or Unix socket with a time limit on every
//! read and write. The protocol itself is the pure codec in `codec.rs`.
//!
//! Why our own: the one client crate (`miltr-client` 0.1) calls itself
//! barebones and is async-only; the protocol is small and stable (Sendmail
//! 8.14's version 6, which Postfix and rspamd speak), and a codec with
//! table tests plus this driver is about as much code as adapting it.

pub mod codec;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use codec::{Command, Response, Stage, action, proto};

use super::message::{Edit, Message};
use super::{Context, Verdict};

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// `"127.0.0.1:11332"`, `"localhost:11332"`, `"[::1]:11332"` or a
    /// Unix socket path (starting with `/`), or Postfix's `inet:host:port`
    /// and `unix:/path` forms.
    pub fn parse(s: &str) -> Result<Address, String> {
        let s = s.trim();
        if let Some(p) = s.strip_prefix("unix:") {
            return Address::parse(p).and_then(|a| match a {
                Address::Unix(_) => Ok(a),
                Address::Tcp(_) => Err(format!("{s:?}: a unix: address needs an absolute path")),
            });
        }
        let s = s.strip_prefix("inet:").unwrap_or(s);
        if s.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "{s:?} is neither host:port nor an absolute Unix socket path"
            )),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A milter's failure to give a verdict: down, slow, or speaking nonsense.
#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// The socket, TCP or Unix.
enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn set_timeouts(&self, t: Duration) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
            Sock::Unix(s) => {
                s.set_read_timeout(Some(t))?;
                s.set_write_timeout(Some(t))
            }
        }
    }

    fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Sock::Tcp(s) => s.write_all(b),
            Sock::Unix(s) => s.write_all(b),
        }
    }

    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

struct Conn {
    s: Sock,
    buf: Vec<u8>,
    out: Vec<u8>,
    timeout: Duration,
    /// The whole conversation's end: ten times `timeout` (Postfix gives the
    /// body 300 s against 30 s per command, the same ratio).
    deadline: Instant,
}

fn connect(addr: &Address, timeout: Duration) -> Result<Conn, MilterError> {
    let fail = |e: io::Error| MilterError::Connect(addr.to_string(), e);
    let s = match addr {
        Address::Tcp(a) => {
            let mut last = io::Error::other("no address");
            let mut found = None;
            for sa in std::net::ToSocketAddrs::to_socket_addrs(a.as_str()).map_err(fail)? {
                match TcpStream::connect_timeout(&sa, timeout) {
                    Ok(s) => {
                        found = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let s = found.ok_or_else(|| fail(last))?;
            s.set_nodelay(true).map_err(fail)?;
            Sock::Tcp(s)
        }
        Address::Unix(p) => {
            // A milter whose backlog is full must not hold us in connect().
            let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
                .map_err(fail)?;
            let to = socket2::SockAddr::unix(p).map_err(fail)?;
            sock.connect_timeout(&to, timeout).map_err(fail)?;
            Sock::Unix(sock.into())
        }
    };
    Ok(Conn {
        s,
        buf: Vec::with_capacity(1024),
        out: Vec::with_capacity(2 * codec::BODY_CHUNK + 16),
        timeout,
        deadline: Instant::now() + timeout * 10,
    })
}

impl Conn {
    /// Queue a command: commands are written in batches, when a reply is
    /// awaited or a body chunk's worth has gathered (a milter that answers
    /// few steps, as rspamd does, costs a few writes per message).
    fn send(&mut self, cmd: &Command<'_>) -> io::Result<()> {
        codec::encode(cmd, &mut self.out);
        if self.out.len() >= codec::BODY_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    /// Each read and write waits at most `timeout`, and never past the
    /// conversation's deadline.
    fn arm(&self) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the milter conversation took too long",
            ));
        }
        self.s.set_timeouts(left.min(self.timeout))
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.arm()?;
            self.s.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// The next reply. `Progress` restarts the wait, up to ten times the
    /// timeout in all (Postfix's milter_content_timeout is 10× too).
    fn recv(&mut self) -> Result<Response, MilterError> {
        self.flush()?;
        loop {
            match codec::decode(&self.buf).map_err(|e| MilterError::Protocol(e.to_string()))? {
                // Still working: wait again (within the deadline).
                Some((Response::Progress, used)) => {
                    self.buf.drain(..used);
                }
                Some((r, used)) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                None => {
                    let mut chunk = [0u8; 8192];
                    self.arm()?;
                    let n = self.s.read(&mut chunk)?;
                    if n == 0 {
                        return Err(MilterError::Io(io::ErrorKind::UnexpectedEof.into()));
                    }
                    self.buf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
            }
        }
    }
}

/// The verdict of a step the milter answered early (anything but continue).
fn early(r: Response) -> Result<Option<Verdict>, MilterError> {
    Ok(match r {
        Response::Continue => None,
        Response::Accept => Some(Verdict::Accept),
        Response::Discard => Some(Verdict::Discard),
        Response::Reject => Some(Verdict::Reject(None)),
        Response::Tempfail => Some(Verdict::Tempfail(None)),
        Response::ReplyCode(t) => Some(Verdict::from_reply_text(&t)),
        Response::Skip => None,
        other => {
            return Err(MilterError::Protocol(format!(
                "{other:?} outside the end of the message"
            )));
        }
    })
}

/// What the conversation produced: the verdict and, when it reached the
/// end of the message, the header edits and a quarantine reason.
#[derive(Debug, Default)]
pub struct Outcome {
    pub verdict: Option<Verdict>,
    pub edits: Vec<Edit>,
    pub quarantine: Option<String>,
}

/// Run the whole conversation for `msg` (blocking).
pub fn run(
    addr: &Address,
    timeout: Duration,
    ctx: &Context,
    msg: &Message,
) -> Result<Outcome, MilterError> {
    let mut c = connect(addr, timeout)?;
    c.send(&Command::OptNeg {
        actions: action::OFFERED,
        protocol: proto::OFFERED,
    })?;
    let protocol = match c.recv()? {
        // Only what we offered; before version 6 there are no "no reply"
        // steps (every step is answered), and DATA came with version 4.
        Response::OptNeg {
            version, protocol, ..
        } if (2..=codec::VERSION).contains(&version) => {
            let p = protocol & proto::OFFERED;
            match version {
                6 => p,
                4 | 5 => p & 0x3FF,
                _ => (p & 0x3FF) | proto::NODATA,
            }
        }
        other => {
            return Err(MilterError::Protocol(format!(
                "expected option negotiation, got {other:?}"
            )));
        }
    };
    let outcome = converse(&mut c, protocol, ctx, msg)?;
    // Best effort: the verdict is in hand.
    let _ = c.send(&Command::Quit).and_then(|()| c.flush());
    Ok(outcome)
}

fn converse(
    c: &mut Conn,
    protocol: u32,
    ctx: &Context,
    msg: &Message,
) -> Result<Outcome, MilterError> {
    // Send one step (unless the milter skips it) and read its reply when
    // it gives one: an early verdict ends the conversation.
    macro_rules! step {
        ($stage:expr, $macros:expr, $cmd:expr) => {
            if !$stage.skipped(protocol) {
                let pairs: Vec<(&str, String)> = $macros;
                if !pairs.is_empty() {
                    c.send(&Command::Macros {
                        stage: $stage,
                        pairs: &pairs,
                    })?;
                }
                c.send(&$cmd)?;
                if $stage.replies(protocol) {
                    if let Some(v) = early(c.recv()?)? {
                        let _ = c.send(&Command::Abort).and_then(|()| c.flush());
                        return Ok(Outcome {
                            verdict: Some(v),
                            ..Outcome::default()
                        });
                    }
                }
            }
        };
    }
    let client_addr = ctx
        .client
        .map(|a| a.ip().to_canonical().to_string())
        .unwrap_or_default();
    let client_name = ctx
        .client
        .map(|a| format!("[{}]", a.ip().to_canonical()))
        .unwrap_or_else(|| "localhost".into());
    step!(
        Stage::Connect,
        vec![
            ("j", ctx.hostname.clone()),
            ("{daemon_name}", "maildird".into()),
            ("{client_addr}", client_addr.clone()),
            ("{client_name}", client_name.clone()),
            ("_", format!("{} [{}]", client_name, client_addr)),
        ],
        Command::Connect {
            hostname: &client_name,
            addr: ctx.client
        }
    );
    step!(Stage::Helo, Vec::new(), Command::Helo(&ctx.helo));
    let mut mail_macros = vec![
        ("i", ctx.id.clone()),
        ("{mail_addr}", ctx.mail_from.clone()),
    ];
    if let Some(u) = &ctx.auth_user {
        mail_macros.push(("{auth_authen}", u.clone()));
    }
    step!(
        Stage::Mail,
        mail_macros,
        Command::Mail(&[format!("<{}>", ctx.mail_from)])
    );
    for rcpt in &ctx.rcpts {
        step!(
            Stage::Rcpt,
            vec![("{rcpt_addr}", rcpt.clone())],
            Command::Rcpt(&[format!("<{rcpt}>")])
        );
    }
    step!(Stage::Data, vec![("i", ctx.id.clone())], Command::Data);
    let leading = protocol & proto::HDR_LEADSPC != 0;
    for f in &msg.fields {
        // libmilter drops a packet over 64 KiB (MILTER_MAX_DATA_SIZE): a
        // longer field is sent cut short (as Postfix's header_size_limit
        // cuts it), so no sender can turn a milter off with one long field.
        let mut value = f.milter_value(leading);
        value.truncate(codec::MAX_DATA.saturating_sub(1 + f.key().len() + 2));
        step!(
            Stage::Header,
            Vec::new(),
            Command::Header {
                name: f.key(),
                value: &value
            }
        );
    }
    step!(Stage::Eoh, Vec::new(), Command::Eoh);
    if !Stage::Body.skipped(protocol) {
        // Stored form (LF) read in blocks, sent as CRLF: under 64 KiB a chunk.
        let mut raw = vec![0u8; codec::BODY_CHUNK / 2];
        let mut wire = Vec::with_capacity(codec::BODY_CHUNK);
        let mut off = 0u64;
        loop {
            let n = msg.read_body(off, &mut raw)?;
            if n == 0 {
                break;
            }
            off += n as u64;
            wire.clear();
            crate::checks::header::extend_crlf(&mut wire, raw.get(..n).unwrap_or_default());
            c.send(&Command::Body(&wire))?;
            if Stage::Body.replies(protocol) {
                match c.recv()? {
                    Response::Skip => break,
                    r => {
                        if let Some(v) = early(r)? {
                            let _ = c.send(&Command::Abort).and_then(|()| c.flush());
                            return Ok(Outcome {
                                verdict: Some(v),
                                ..Outcome::default()
                            });
                        }
                    }
                }
            }
        }
    }
    c.send(&Command::Macros {
        stage: Stage::Eom,
        pairs: &[("i", ctx.id.clone())],
    })?;
    c.send(&Command::Eom)?;
    let mut out = Outcome::default();
    // Edits are held until the verdict: bounded like the header itself.
    let mut held = 0usize;
    loop {
        let r = c.recv()?;
        if let Response::AddHeader { name, value }
        | Response::InsertHeader { name, value, .. }
        | Response::ChangeHeader { name, value, .. } = &r
        {
            held += name.len() + value.len() + 4;
            if held > super::message::MAX_HEADER {
                return Err(MilterError::Protocol("header edits over 1 MiB".into()));
            }
        }
        match r {
            Response::AddHeader { name, value } => out.edits.push(Edit::Add { name, value }),
            Response::InsertHeader { index, name, value } => {
                out.edits.push(Edit::Insert { index, name, value })
            }
            Response::ChangeHeader { index, name, value } => {
                out.edits.push(Edit::Change { index, name, value })
            }
            Response::Quarantine(reason) => out.quarantine = Some(reason),
            Response::Unoffered(cmd) => {
                tracing::warn!(
                    command = %char::from(cmd),
                    "milter asked for a change maildird does not make (recipients, sender or body); ignored"
                );
            }
            Response::Continue | Response::Accept | Response::Skip => {
                out.verdict = Some(Verdict::Accept);
                return Ok(out);
            }
            r => {
                out.verdict = early(r)?;
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("127.0.0.1:11332"),
            Ok(Address::Tcp("127.0.0.1:11332".into()))
        );
        assert_eq!(
            Address::parse("inet:localhost:11332"),
            Ok(Address::Tcp("localhost:11332".into()))
        );
        assert_eq!(
            Address::parse("[::1]:11332"),
            Ok(Address::Tcp("[::1]:11332".into()))
        );
        assert_eq!(
            Address::parse("/run/rspamd/milter.sock"),
            Ok(Address::Unix("/run/rspamd/milter.sock".into()))
        );
        assert_eq!(
            Address::parse("unix:/run/m.sock"),
            Ok(Address::Unix("/run/m.sock".into()))
        );
        for bad in [
            "",
            "rspamd",
            "host:",
            ":25",
            "host:99999",
            "unix:rel/path",
            "relative/path",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
