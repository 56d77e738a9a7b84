//! POP3 session states (RFC 1939 §3) carrying their data, and the pure checks of
//! which command is allowed in which state and which message numbers are valid.

use super::command::Command;

/// The session state; each variant owns what exists only in that state.
#[derive(Debug)]
pub enum State<M> {
    /// RFC 1939 §4: before login. `user` is the name given by USER.
    Authorization { user: Option<String>, failures: u32 },
    /// RFC 1939 §5: logged in, the mailbox locked, deletions only marked.
    Transaction { mailbox: M, deleted: Marks },
    /// RFC 1939 §6: after QUIT from TRANSACTION; the session ends.
    Update,
}

/// The data-free name of a state, for `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Authorization,
    Transaction,
    Update,
}

impl<M> State<M> {
    pub fn phase(&self) -> Phase {
        match self {
            State::Authorization { .. } => Phase::Authorization,
            State::Transaction { .. } => Phase::Transaction,
            State::Update => Phase::Update,
        }
    }
}

/// Is `cmd` allowed in `phase`? `Err` carries the `-ERR` text; the session goes on.
/// `have_user`: USER was accepted, so PASS may follow (RFC 1939 §7).
pub fn check(phase: Phase, have_user: bool, cmd: &Command) -> Result<(), &'static str> {
    use Command::*;
    match (phase, cmd) {
        (_, Capa) => Ok(()),
        (Phase::Update, _) => Err("Session is ending"),
        (_, Quit) => Ok(()),
        (Phase::Authorization, User(_) | Auth { .. } | Apop | Stls) => Ok(()),
        (Phase::Authorization, Pass(_)) if have_user => Ok(()),
        (Phase::Authorization, Pass(_)) => Err("USER first"),
        (Phase::Authorization, _) => Err("Not logged in"),
        (
            Phase::Transaction,
            Stat | List(_) | Retr(_) | Dele(_) | Noop | Rset | Top { .. } | Uidl(_),
        ) => Ok(()),
        (Phase::Transaction, _) => Err("Already logged in"),
    }
}

/// DELE marks of the login snapshot (RFC 1939 §5: nothing is removed before UPDATE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks(Vec<bool>);

impl Marks {
    pub fn new(count: usize) -> Marks {
        Marks(vec![false; count])
    }

    /// Resolve a 1-based message number to a snapshot index that is not deleted.
    pub fn index(&self, msg: usize) -> Result<usize, &'static str> {
        let i = msg.checked_sub(1).ok_or("No such message")?;
        match self.0.get(i) {
            None => Err("No such message"),
            Some(true) => Err("Message already deleted"),
            Some(false) => Ok(i),
        }
    }

    /// RFC 1939 §5 DELE.
    pub fn mark(&mut self, msg: usize) -> Result<(), &'static str> {
        let i = self.index(msg)?;
        if let Some(m) = self.0.get_mut(i) {
            *m = true;
        }
        Ok(())
    }

    /// RFC 1939 §5 RSET.
    pub fn clear(&mut self) {
        self.0.iter_mut().for_each(|m| *m = false);
    }

    pub fn is_deleted(&self, i: usize) -> bool {
        self.0.get(i).copied().unwrap_or(false)
    }

    /// Snapshot indexes marked for deletion, ascending.
    pub fn marked(&self) -> Vec<usize> {
        (0..self.0.len()).filter(|&i| self.is_deleted(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::command::{Command, Secret};

    #[test]
    fn check_table() {
        use Phase::*;
        let all = [
            Command::User("a".into()),
            Command::Pass(Secret(b"p".to_vec())),
            Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial: None,
            },
            Command::Apop,
            Command::Stls,
            Command::Capa,
            Command::Quit,
            Command::Stat,
            Command::List(None),
            Command::Retr(1),
            Command::Dele(1),
            Command::Noop,
            Command::Rset,
            Command::Top { msg: 1, lines: 0 },
            Command::Uidl(None),
        ];
        // Allowed keywords per (phase, have_user).
        let table: &[(Phase, bool, &[&str])] = &[
            (
                Authorization,
                false,
                &["USER", "AUTH", "APOP", "STLS", "CAPA", "QUIT"],
            ),
            (
                Authorization,
                true,
                &["USER", "PASS", "AUTH", "APOP", "STLS", "CAPA", "QUIT"],
            ),
            (
                Transaction,
                false,
                &[
                    "CAPA", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL",
                ],
            ),
            (Update, false, &["CAPA"]),
        ];
        for &(phase, have_user, allowed) in table {
            for cmd in &all {
                assert_eq!(
                    check(phase, have_user, cmd).is_ok(),
                    allowed.contains(&cmd.name()),
                    "{phase:?} {have_user} {}",
                    cmd.name()
                );
            }
        }
        assert_eq!(
            check(Authorization, false, &Command::Pass(Secret(vec![]))),
            Err("USER first")
        );
        assert_eq!(
            check(Authorization, false, &Command::Stat),
            Err("Not logged in")
        );
        assert_eq!(
            check(Transaction, false, &Command::User("a".into())),
            Err("Already logged in")
        );
    }

    #[test]
    fn marks() {
        let mut m = Marks::new(3);
        assert_eq!(m.index(1), Ok(0));
        assert_eq!(m.index(3), Ok(2));
        assert_eq!(m.index(4), Err("No such message"));
        assert_eq!(m.index(0), Err("No such message"));
        assert_eq!(m.mark(2), Ok(()));
        assert_eq!(m.mark(2), Err("Message already deleted"));
        assert_eq!(m.index(2), Err("Message already deleted"));
        assert_eq!(m.mark(3), Ok(()));
        assert_eq!(m.marked(), vec![1, 2]);
        m.clear();
        assert_eq!(m.marked(), Vec::<usize>::new());
        assert_eq!(m.index(2), Ok(1));
    }
}
