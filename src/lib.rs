//! maildird: an SMTP receiver for final delivery and a POP3 server over Maildir,
//! started by systemd socket activation, standalone or inetd-style.
//!
//! Data flows top to bottom (README, Code map): `daemon` composes `listen`,
//! the protocol engines (`smtp`, `pop3`) and `backend`, which joins `auth` and
//! `maildir`. Parsers and state checks are pure and tested without sockets.
#![deny(unsafe_code)] // the one exception adopts fds from systemd (listen::activation)

pub mod admin;
pub mod auth;
pub mod backend;
pub mod bounded;
pub mod checks;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod crlf;
pub mod daemon;
pub mod error;
pub mod filter;
pub mod listen;
pub mod logging;
pub mod maildir;
pub mod metrics;
pub mod msgfilter;
pub mod notify;
pub mod observer;
pub mod output;
pub mod pop3;
pub mod privs;
pub mod sasl;
pub mod smtp;
pub mod status;
pub mod stream;
pub mod tunnel;

#[cfg(test)]
mod proptests;
