//! sd_notify(3): READY / STATUS / RELOADING / STOPPING. A no-op without
//! `$NOTIFY_SOCKET`; failures are logged, never fatal.

use libsystemd::daemon::{NotifyState, notify};

fn send(states: &[NotifyState]) {
    if let Err(e) = notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status.to_string())]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status.to_string())]);
}

pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
