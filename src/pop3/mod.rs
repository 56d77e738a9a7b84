//! The POP3 engine (RFC 1939, CAPA RFC 2449, SASL RFC 5034, RESP-CODES RFC 3206):
//! pure parser, multi-line encoder and state checks, and a session over `Conn`
//! (loop and dispatch in `session`, command handlers in `op/`).
//! It never touches storage: it calls a `Store`.

pub mod command;
mod op;
pub mod reply;
pub mod session;
pub mod state;
pub mod store;

pub use session::{Session, SessionConfig};
pub use store::{Mailbox, MessageInfo, MessageReader, Store, StoreError};
