//! Hostile clients and configs from this host against the real daemon.

mod common;
#[path = "hostile_local/protocol.rs"]
mod protocol;
