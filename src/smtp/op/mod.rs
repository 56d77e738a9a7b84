//! The SMTP command handlers, one file per command group, each an `impl`
//! block on `Session` that `session.rs` dispatches to after the sequence
//! check: greeting and session commands, envelope, body, AUTH, STARTTLS.

mod auth;
pub(super) mod body;
mod envelope;
mod hello;
mod starttls;
