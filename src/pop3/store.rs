//! The seam between the POP3 engine and storage.

use std::future::Future;

/// One message of the login snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// RFC 1939 §7 unique-id: 1-70 chars in 0x21-0x7E, stable across mutt's renames.
    pub uidl: String,
    /// Octets RETR sends (CRLF line endings, dot-stuffing not counted, RFC 1939 §11).
    pub size: u64,
}

/// Why a login or mailbox open failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Wrong user or password, or the user may not use POP3: `-ERR [AUTH]`.
    Auth,
    /// Another session holds the mailbox: `-ERR [IN-USE]`.
    InUse,
    /// Temporary failure (I/O, lock): `-ERR [SYS/TEMP]`.
    Temporary,
    /// The message was removed by someone else (e.g. mutt) since login: `-ERR`
    /// for that message only.
    Gone,
}

/// Storage for POP3. Implemented by `crate::backend`.
pub trait Store: Send + Sync + 'static {
    type Mailbox: Mailbox;

    /// Check credentials (in a blocking pool, same path for unknown users; `client`
    /// drives the back-off), take the mailbox lock and snapshot `new/` + `cur/`.
    fn login(
        &self,
        user: &str,
        password: &[u8],
        client: Option<std::net::IpAddr>,
    ) -> impl Future<Output = Result<Self::Mailbox, StoreError>> + Send;
}

/// A locked mailbox with its login snapshot. Dropping it releases the lock and
/// changes nothing.
pub trait Mailbox: Send + 'static {
    /// An opened message, read in chunks.
    type Message: MessageReader;

    fn messages(&self) -> &[MessageInfo];
    /// Open a message for RETR/TOP. Found by base name at open time, so a file
    /// mutt moved is still read. Errors here come before any reply is sent.
    fn open(
        &mut self,
        index: usize,
    ) -> impl Future<Output = Result<Self::Message, StoreError>> + Send;
    /// Mark a message seen after a full RETR (when configured).
    fn mark_seen(&mut self, index: usize) -> impl Future<Output = ()> + Send;
    /// UPDATE state: remove these messages (by snapshot index), tolerating ones
    /// already moved or removed by others. Consumes the mailbox (lock released).
    fn commit_deletes(
        self,
        indexes: Vec<usize>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// An opened message: its bytes as stored (LF line endings), in chunks of at
/// most 64 KiB, so that a session holds a bounded part of a message however
/// large it is; the session encodes each chunk as it comes. Dropping it stops
/// the reading (TOP needs only the start).
pub trait MessageReader: Send + 'static {
    /// The next chunk (never empty), or `None` after the last one. An error
    /// ends the message: the session cannot send the rest.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<&[u8]>, StoreError>> + Send;
}
