//! Hostile clients from this host's own addresses (loopback and the rest of
//! 127.0.0.0/8) against the real daemon: floods of failed logins with unique,
//! long user names must leave its memory bounded, and the per-IP caps count a
//! whole client network, not each address of it.

mod common;
#[path = "hostile_local/limits.rs"]
mod limits;
