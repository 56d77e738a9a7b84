//! The POP3 command handlers, one file per command group, as methods on
//! `Session`; `session.rs` dispatches to them after the state check.

mod auth;
mod capa;
mod stls;
mod transaction;
