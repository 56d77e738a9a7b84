//! The SMTP engine (RFC 5321 with PIPELINING, 8BITMIME, SIZE, ENHANCEDSTATUSCODES,
//! SMTPUTF8, CHUNKING): pure parsers and state checks, and a session that drives
//! them over a `Conn`. It never touches storage: it calls a `Backend`.

pub mod backend;
pub mod command;
pub mod data;
pub mod header;
mod op;
pub mod reply;
pub mod session;
pub mod state;

pub use backend::{Authenticated, Backend, BodySink, Envelope, SessionInfo, Stored};
pub use reply::Reply;
pub use session::{Session, SessionConfig};
