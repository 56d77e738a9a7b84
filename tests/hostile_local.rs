//! A hostile local user against the real daemon (issue 12): the Unix account a
//! Maildir is shared with plants links, FIFOs and devices in it and tries to
//! reach other mailboxes; a client on this host tries protocol tricks and
//! floods. Each attack is a black-box test against the built binary, with a
//! real Unix account (created here, used through `su`) as the attacker where
//! the attack needs one.

mod common;
#[path = "hostile_local/limits.rs"]
mod limits;
#[path = "hostile_local/maildir.rs"]
mod maildir;
#[path = "hostile_local/protocol.rs"]
mod protocol;
