//! Privilege drop (before any thread exists): setgroups -> setresgid -> setresuid
//! to the configured user and group, verified, then NO_NEW_PRIVS. The daemon never
//! serves as root.

use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid, getgid, getresgid, getresuid, getuid};

/// Drop to `user`/`group` when running as root; refuse to continue as root.
pub fn drop_privileges(user: &str, group: &str) -> Result<(), String> {
    if !geteuid().is_root() && !getuid().is_root() {
        return Ok(());
    }
    let u = User::from_name(user)
        .map_err(|e| format!("looking up user {user:?}: {e}"))?
        .ok_or_else(|| format!("user {user:?} does not exist (config key `user`)"))?;
    let g = Group::from_name(group)
        .map_err(|e| format!("looking up group {group:?}: {e}"))?
        .ok_or_else(|| format!("group {group:?} does not exist (config key `group`)"))?;
    if u.uid.is_root() || g.gid == Gid::from_raw(0) {
        return Err(format!(
            "refusing to serve as root: `user`/`group` ({user}/{group}) must not be root"
        ));
    }
    nix::unistd::setgroups(&[g.gid]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(g.gid, g.gid, g.gid).map_err(|e| format!("setresgid: {e}"))?;
    nix::unistd::setresuid(u.uid, u.uid, u.uid).map_err(|e| format!("setresuid: {e}"))?;
    verify_dropped(u.uid, g.gid)?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    tracing::info!(user, group, "dropped privileges");
    Ok(())
}

/// Root must not be regainable: all ids are the target ones and setuid(0) fails.
fn verify_dropped(uid: Uid, gid: Gid) -> Result<(), String> {
    let r = getresuid().map_err(|e| e.to_string())?;
    let g = getresgid().map_err(|e| e.to_string())?;
    if [r.real, r.effective, r.saved] != [uid; 3] || [g.real, g.effective, g.saved] != [gid; 3] {
        return Err("privilege drop did not take effect".into());
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
    {
        return Err("privilege drop failed: root could be regained".into());
    }
    Ok(())
}

/// The last check before serving: never as root.
pub fn refuse_root() -> Result<(), String> {
    if geteuid().is_root()
        || getegid() == Gid::from_raw(0)
        || getuid().is_root()
        || getgid() == Gid::from_raw(0)
    {
        return Err("refusing to serve as root".into());
    }
    Ok(())
}
