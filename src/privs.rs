//! Privilege drop (before any thread exists): setgroups -> setresgid -> setresuid
//! to the configured user and group, verified, then NO_NEW_PRIVS. The daemon never
//! serves as root.

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid, getgid, getresgid, getresuid, getuid};

/// Why the daemon may not serve: a bad `user`/`group` or a failed drop. All of
/// them are configuration or set-up problems (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum PrivsError {
    #[error("looking up user {user:?}: {source}")]
    LookupUser { user: String, source: Errno },
    #[error("user {0:?} does not exist (config key `user`)")]
    NoSuchUser(String),
    #[error("looking up group {group:?}: {source}")]
    LookupGroup { group: String, source: Errno },
    #[error("group {0:?} does not exist (config key `group`)")]
    NoSuchGroup(String),
    #[error("refusing to serve as root: `user`/`group` ({user}/{group}) must not be root")]
    RootTarget { user: String, group: String },
    /// A system call of the drop failed (`setgroups`, `setresgid`, ...).
    #[error("{call}: {source}")]
    Call { call: &'static str, source: Errno },
    /// Reading back the ids failed.
    #[error("{0}")]
    ReadIds(Errno),
    #[error("privilege drop did not take effect")]
    NotDropped,
    #[error("privilege drop failed: root could be regained")]
    Regainable,
    #[error("refusing to serve as root")]
    Root,
}

fn call(call: &'static str) -> impl FnOnce(Errno) -> PrivsError {
    move |source| PrivsError::Call { call, source }
}

/// Drop to `user`/`group` when running as root; refuse to continue as root.
pub fn drop_privileges(user: &str, group: &str) -> Result<(), PrivsError> {
    if !geteuid().is_root() && !getuid().is_root() {
        return Ok(());
    }
    let u = User::from_name(user)
        .map_err(|source| PrivsError::LookupUser {
            user: user.to_string(),
            source,
        })?
        .ok_or_else(|| PrivsError::NoSuchUser(user.to_string()))?;
    let g = Group::from_name(group)
        .map_err(|source| PrivsError::LookupGroup {
            group: group.to_string(),
            source,
        })?
        .ok_or_else(|| PrivsError::NoSuchGroup(group.to_string()))?;
    if u.uid.is_root() || g.gid == Gid::from_raw(0) {
        return Err(PrivsError::RootTarget {
            user: user.to_string(),
            group: group.to_string(),
        });
    }
    nix::unistd::setgroups(&[g.gid]).map_err(call("setgroups"))?;
    nix::unistd::setresgid(g.gid, g.gid, g.gid).map_err(call("setresgid"))?;
    nix::unistd::setresuid(u.uid, u.uid, u.uid).map_err(call("setresuid"))?;
    verify_dropped(u.uid, g.gid)?;
    nix::sys::prctl::set_no_new_privs().map_err(call("PR_SET_NO_NEW_PRIVS"))?;
    tracing::info!(user, group, "dropped privileges");
    Ok(())
}

/// Root must not be regainable: all ids are the target ones and setuid(0) fails.
fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), PrivsError> {
    let r = getresuid().map_err(PrivsError::ReadIds)?;
    let g = getresgid().map_err(PrivsError::ReadIds)?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err(PrivsError::NotDropped);
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
    {
        return Err(PrivsError::Regainable);
    }
    Ok(())
}

/// The last check before serving: never as root.
pub fn refuse_root() -> Result<(), PrivsError> {
    if geteuid().is_root()
        || getegid() == Gid::from_raw(0)
        || getuid().is_root()
        || getgid() == Gid::from_raw(0)
    {
        return Err(PrivsError::Root);
    }
    Ok(())
}
