//! The control socket: a Unix stream socket speaking JSON lines. Only root, the
//! daemon's own uid and members of the daemon's group may use it (checked with
//! SO_PEERCRED); the socket file is 0660, group = the daemon's group.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch};

use super::{KickTarget, Registry, SessionView};

/// One request line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Who,
    Kick {
        target: KickTarget,
    },
    Events,
    /// The metrics, for `maildird status`.
    Status,
}

/// Replies to `who` and `kick` (one line); `events` streams `Event` lines.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Sessions(Vec<SessionView>),
    Kicked(usize),
    /// First line of an `events` stream: the subscription is live.
    Subscribed,
    /// The OpenMetrics text of the daemon's metrics.
    Metrics(String),
    Error(String),
}

/// Who may use the socket.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub daemon_uid: Uid,
    pub admin_gid: Gid,
}

impl Access {
    /// SO_PEERCRED says who connected; supplementary groups come from /proc.
    fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.daemon_uid.as_raw() || gid == self.admin_gid.as_raw() {
            return true;
        }
        let Some(pid) = pid else { return false };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| {
                g.split_whitespace()
                    .any(|x| x.parse() == Ok(self.admin_gid.as_raw()))
            })
    }
}

/// Bind the socket (replacing a stale one) with mode 0660, owned by the service
/// user and the admin group. Called before the privilege drop (as root it can
/// create the directory and hand it over); served later by `serve`.
///
/// A directory created here (no systemd `RuntimeDirectory=`) is given to the
/// service user, mode 0750, so that after the drop the daemon can still remove
/// the socket when it stops. An existing directory is left as it is.
pub fn bind(
    path: &Path,
    owner: Option<Uid>,
    access: &Access,
) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
            // Best effort, as for the socket below.
            let _ = nix::unistd::chown(dir, owner, Some(access.admin_gid));
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    // Best effort: chown needs root (or membership of the group).
    let _ = nix::unistd::chown(path, owner, Some(access.admin_gid));
    Ok(listener)
}

/// Serve the control socket until `stop` turns true; removes the file then
/// (a clean stop leaves no socket behind).
pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    access: Access,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control socket unusable");
            return;
        }
    };
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let registry = registry.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, access, registry, stop).await {
                tracing::debug!(error = %e, "control client");
            }
        });
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "control socket not removed");
        }
        _ => {}
    }
}

async fn handle(
    stream: UnixStream,
    access: Access,
    registry: Arc<Registry>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r);
    // One request per connection, read before anything is answered (so a refused
    // client still gets its reply rather than a reset); bounded in size and time.
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        (&mut reader).take(4096).read_line(&mut line),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
    if !access.allows(cred.uid(), cred.gid(), cred.pid()) {
        tracing::warn!(uid = cred.uid(), "control socket: permission denied");
        return send(
            &mut w,
            &Reply::Error("permission denied: root or the daemon's group only".into()),
        )
        .await;
    }
    if n == 0 {
        return Ok(());
    }
    let request: Request = match serde_json::from_str(line.trim_end()) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &Reply::Error(format!("bad request: {e}"))).await,
    };
    match request {
        Request::Who => send(&mut w, &Reply::Sessions(registry.who())).await,
        Request::Status => send(&mut w, &Reply::Metrics(crate::metrics::get().encode())).await,
        Request::Kick { target } => {
            let n = registry.kick(&target);
            tracing::info!(?target, sessions = n, "kick");
            send(&mut w, &Reply::Kicked(n)).await
        }
        Request::Events => {
            let mut rx = registry.subscribe();
            send(&mut w, &Reply::Subscribed).await?;
            loop {
                tokio::select! {
                    ev = rx.recv() => match ev {
                        Ok(ev) => {
                            let mut s = serde_json::to_string(&ev).map_err(io::Error::other)?;
                            s.push('\n');
                            w.write_all(s.as_bytes()).await?;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(lost = n, "control events reader too slow");
                        }
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> io::Result<()> {
    let mut s = serde_json::to_string(reply).map_err(io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request = serde_json::from_str(r#"{"cmd":"kick","target":{"user":"bob"}}"#).unwrap();
        assert_eq!(
            r,
            Request::Kick {
                target: KickTarget::User("bob".into())
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Who).unwrap(),
            r#"{"cmd":"who"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"shutdown"}"#).is_err());
    }

    #[test]
    fn access_rules() {
        let a = Access {
            daemon_uid: Uid::from_raw(100),
            admin_gid: Gid::from_raw(200),
        };
        assert!(a.allows(0, 5, None));
        assert!(a.allows(100, 5, None));
        assert!(a.allows(7, 200, None));
        assert!(!a.allows(7, 8, None));
    }

    #[tokio::test]
    async fn who_kick_and_events_over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let me = Access {
            daemon_uid: nix::unistd::geteuid(),
            admin_gid: nix::unistd::getegid(),
        };
        let listener = bind(&path, None, &me).unwrap();
        let registry = Arc::new(Registry::new());
        let (_stop_tx, stop) = watch::channel(false);
        tokio::spawn(serve(listener, path.clone(), me, registry.clone(), stop));
        let g = registry.open(5, "smtp", "smtp", Some("127.0.0.1:9".parse().unwrap()));

        let who = super::super::client::request(&path, &Request::Who)
            .await
            .unwrap();
        let Reply::Sessions(s) = who else {
            panic!("{who:?}")
        };
        assert_eq!(s[0].id, 5);

        let mut events = super::super::client::events(&path).await.unwrap();
        let kicked = super::super::client::request(
            &path,
            &Request::Kick {
                target: KickTarget::Id(5),
            },
        )
        .await
        .unwrap();
        assert_eq!(kicked, Reply::Kicked(1));
        g.kicked().await;
        drop(g);
        let ev = events.next().await.unwrap().unwrap();
        assert_eq!(ev.event, super::super::EventKind::Close);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
    }
}
