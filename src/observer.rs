//! The seam through which a protocol session reports to the daemon (the
//! session list of `maildird who`, `maildird events`, the fail2ban line)
//! without knowing it.

/// What a session tells the daemon about itself: its state (for `who`), logins
/// and deliveries (for `events` and the fail2ban line). The default does nothing,
/// so sessions run without a daemon in tests.
pub trait Observer: Send + Sync {
    fn state(&self, _state: &'static str) {}
    /// A login attempt; `user` as the client gave it.
    fn auth(&self, _user: &str, _mechanism: &str, _ok: bool) {}
    /// A message accepted (250): its id, recipients and size, and the sender
    /// checks' verdicts when they ran.
    fn delivered(
        &self,
        _id: &str,
        _recipients: usize,
        _size: u64,
        _auth: Option<&crate::smtp::backend::AuthSummary>,
    ) {
    }
}

/// An `Observer` that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {}
