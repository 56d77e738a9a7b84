//! The seam between the SMTP engine and storage (go-smtp's Backend, maddy's
//! Body -> Commit | Abort). The engine never touches files; errors come back as
//! ready-made `Reply` values with generic wire text (logs carry the details).

use std::future::Future;
use std::net::SocketAddr;

use super::reply::Reply;

/// What the backend may know about the session (for `Received:` and logs).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: u64,
    /// The real client address (behind PROXY: the proxied one). None for inetd on a pipe.
    pub peer: Option<SocketAddr>,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, `UTF8SMTP`... (RFC 3848) for `Received: with`.
    pub with_protocol: String,
    /// Authenticated user, when AUTH succeeded.
    pub auth_user: Option<String>,
    /// The listener's name (its message filters apply).
    pub listener: String,
}

/// The envelope of one mail transaction, as accepted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path without angle brackets; empty for the null sender `<>`.
    pub mail_from: String,
    /// Each accepted recipient: (address as given, the local mailboxes it
    /// resolved to: one for a user, several for an alias).
    pub rcpts: Vec<(String, Vec<String>)>,
    pub body_8bit: bool,
    pub smtputf8: bool,
    /// The SIZE= the client declared, if any.
    pub declared_size: Option<u64>,
}

/// A user whose AUTH credentials were accepted (RFC 4954).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The canonical user name (for logs and `Received:`).
    pub user: String,
    /// The user has the `submit` role: may send on a submission listener.
    pub may_submit: bool,
}

/// Storage for SMTP. Implemented by `crate::backend` over auth + maildir.
pub trait Backend: Send + Sync + 'static {
    type Sink: BodySink;

    /// RFC 4954: check AUTH credentials (unknown users and wrong passwords cost
    /// the same and both give None); `client` drives the back-off. The default
    /// knows no users.
    fn login(
        &self,
        user: &str,
        password: &[u8],
        client: Option<std::net::IpAddr>,
    ) -> impl Future<Output = Option<Authenticated>> + Send {
        let _ = (user, password, client);
        std::future::ready(None)
    }

    /// RFC 5321 §4.1.1.3: resolve a recipient address to its local mailboxes
    /// (in order, no duplicates, never empty), or refuse it (`550 5.1.1` unknown
    /// user, `550 5.7.1` foreign domain, `452 4.2.2` mailbox full, ...).
    /// `env`: the transaction so far (its sender and declared SIZE, for
    /// quotas and per-sender limits).
    fn resolve_recipient(
        &self,
        address: &str,
        env: &Envelope,
    ) -> impl Future<Output = Result<Vec<String>, Reply>> + Send;

    /// Start storing a message for `env` (called at DATA or the first BDAT). The
    /// backend writes its trace headers (`Return-Path:`, `Received:`) first.
    fn begin(
        &self,
        info: &SessionInfo,
        env: &Envelope,
    ) -> impl Future<Output = Result<Self::Sink, Reply>> + Send;
}

/// Where a committed message went: each distinct mailbox and its file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The message's id as stored (the sink's, unless its name was taken).
    pub id: String,
    pub files: Vec<(String, std::path::PathBuf)>,
    /// The sender checks' verdicts, when they ran.
    pub auth: Option<AuthSummary>,
    /// The Maildir++ folder it went to instead of the inbox (`.Junk`).
    pub folder: Option<String>,
    /// A message filter discarded it (its name): nothing was stored.
    pub discarded: Option<String>,
}

/// The results of the sender checks, as logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthSummary {
    pub spf: &'static str,
    pub dkim: &'static str,
    pub dmarc: &'static str,
    pub iprev: &'static str,
}

/// A message being stored. Body bytes arrive with LF line endings (CRLF already
/// turned into LF, dot-stuffing removed). Dropping a sink without `commit` must
/// leave nothing in `new/`.
pub trait BodySink: Send + 'static {
    /// The message's id: in the 250 reply, `Received:` and every log line.
    fn id(&self) -> &str;
    fn write(&mut self, bytes: &[u8]) -> impl Future<Output = Result<(), Reply>> + Send;
    /// Make the message durable in every recipient's `new/`; only after this
    /// returns Ok may the session answer 250.
    fn commit(self) -> impl Future<Output = Result<Stored, Reply>> + Send;
    /// Discard the message (oversize, client gone, RSET during BDAT...).
    fn abort(self) -> impl Future<Output = ()> + Send;
}
