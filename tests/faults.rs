//! I/O faults against the real daemon (issue 13): what the client got and what
//! is on disk when files cannot be written, linked, removed or locked.

mod common;
#[path = "faults/findings.rs"]
mod findings;
