//! Sockets inherited by systemd socket activation (sd_listen_fds(3)). They are
//! matched to `[[listener]]`s by `FileDescriptorName=`; when names are missing
//! (LISTEN_FDNAMES unset, e.g. `systemd-socket-activate` without `--fdname`, where
//! libsystemd returns no names) by the socket's local address.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use super::{Bound, ListenError};
use crate::config::ListenerConfig;

/// One inherited socket.
#[derive(Debug)]
pub struct Inherited {
    pub name: Option<String>,
    pub local: Option<SocketAddr>,
    pub socket: TcpListener,
}

/// Take the sockets systemd passed (and unset LISTEN_* so children don't see them).
/// Empty when not socket-activated.
pub fn receive() -> Result<Vec<Inherited>, ListenError> {
    let with_names = std::env::var_os("LISTEN_FDNAMES").is_some();
    let fds: Vec<(i32, Option<String>)> = if with_names {
        libsystemd::activation::receive_descriptors_with_names(true)
            .map_err(ListenError::Activation)?
            .into_iter()
            .map(|(fd, name)| {
                (
                    fd.into_raw_fd(),
                    Some(name).filter(|n| !n.is_empty() && n != "unknown"),
                )
            })
            .collect()
    } else {
        libsystemd::activation::receive_descriptors(true)
            .map_err(ListenError::Activation)?
            .into_iter()
            .map(|fd| (fd.into_raw_fd(), None))
            .collect()
    };
    let mut out = Vec::new();
    for (raw, name) in fds {
        // SAFETY: libsystemd validated that `raw` is one of the LISTEN_FDS passed to
        // this process (LISTEN_PID matched) and hands its ownership to us; nothing
        // else in the process refers to it.
        #[allow(unsafe_code)]
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = TcpListener::from(owned);
        // systemd passes blocking sockets unless NonBlocking=yes; tokio needs non-blocking.
        socket
            .set_nonblocking(true)
            .map_err(|source| ListenError::NonBlocking { fd: raw, source })?;
        let local = socket.local_addr().ok();
        out.push(Inherited {
            name,
            local,
            socket,
        });
    }
    Ok(out)
}

/// Pair inherited sockets with listeners: by name when the socket has one, else by
/// exact local address, else by port when the listener binds the unspecified address.
/// Returns the bound listeners and the sockets nobody claimed.
pub fn match_listeners(
    listeners: &[ListenerConfig],
    inherited: Vec<Inherited>,
) -> (Vec<Bound>, Vec<Inherited>) {
    let mut bound: Vec<Bound> = Vec::new();
    let mut rest = Vec::new();
    for inh in inherited {
        let taken = |l: &ListenerConfig| bound.iter().any(|b| b.config.name == l.name);
        let found = match &inh.name {
            Some(name) => listeners.iter().find(|l| &l.name == name && !taken(l)),
            None => listeners
                .iter()
                .find(|l| !taken(l) && l.bind.is_some() && l.bind == inh.local)
                .or_else(|| {
                    listeners.iter().find(|l| {
                        !taken(l)
                            && matches!((l.bind, inh.local), (Some(b), Some(a)) if b.port() == a.port() && (b.ip().is_unspecified() || a.ip().is_unspecified()))
                    })
                }),
        };
        match found {
            Some(l) => bound.push(Bound {
                config: l.clone(),
                socket: inh.socket,
                inherited: true,
            }),
            None => rest.push(inh),
        }
    }
    (bound, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Protocol;

    fn listener(name: &str, bind: Option<&str>) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            protocol: Protocol::Smtp,
            bind: bind.map(|b| b.parse().unwrap()),
            filters: vec![],
            starttls: false,
            message_filters: vec![],
            keepalive: None,
        }
    }

    fn sock() -> (TcpListener, SocketAddr) {
        let s = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    #[test]
    fn by_name_wins_over_address() {
        let (s1, a1) = sock();
        let ls = [
            listener("smtp", Some("127.0.0.1:1")),
            listener("pop3", Some(&a1.to_string())),
        ];
        let (b, rest) = match_listeners(
            &ls,
            vec![Inherited {
                name: Some("smtp".into()),
                local: Some(a1),
                socket: s1,
            }],
        );
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].config.name, "smtp");
        assert!(rest.is_empty());
    }

    #[test]
    fn by_address_when_names_are_missing() {
        let (s1, a1) = sock();
        let (s2, a2) = sock();
        let ls = [
            listener("smtp", Some(&a1.to_string())),
            listener("pop3", Some(&format!("[::]:{}", a2.port()))),
        ];
        let inh = vec![
            Inherited {
                name: None,
                local: Some(a2),
                socket: s2,
            },
            Inherited {
                name: None,
                local: Some(a1),
                socket: s1,
            },
        ];
        let (b, rest) = match_listeners(&ls, inh);
        assert!(rest.is_empty());
        let names: Vec<_> = b.iter().map(|b| b.config.name.as_str()).collect();
        assert_eq!(names, ["pop3", "smtp"]);
    }

    #[test]
    fn unknown_name_is_left_over() {
        let (s1, a1) = sock();
        let ls = [listener("smtp", None)];
        let (b, rest) = match_listeners(
            &ls,
            vec![Inherited {
                name: Some("imap".into()),
                local: Some(a1),
                socket: s1,
            }],
        );
        assert!(b.is_empty());
        assert_eq!(rest.len(), 1);
    }
}
