//! Byte-stream types every layer shares, and nothing else: the `Io` trait a
//! session runs over, its boxed form, and small pass-through adapters
//! (`counted` for byte counts, `first_read` for the greeting deadline), in the
//! style of linkerd's `io` crate. A leaf: it imports nothing of the crate.

pub mod counted;
pub mod first_read;

use tokio::io::{AsyncRead, AsyncWrite};

/// Any bidirectional byte stream a session can run over: a TCP stream, stdin/stdout
/// (inetd), or a filtered stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A byte stream whose type is erased (what a filter chain hands on).
pub type BoxedIo = Box<dyn Io>;
