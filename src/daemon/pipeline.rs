//! The connection pipeline: admission (caps, keep-alive), the filter chain,
//! re-admission behind PROXY, the session registry, and dispatch to the SMTP or
//! POP3 session.

use super::*;

/// One accepted connection: keep-alive, admission against the caps (or a
/// refusal in the protocol's words), then its session on a task of its own.
pub(super) fn admit(
    shared: &Arc<Shared>,
    listener_cfg: &Arc<ListenerConfig>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let live = shared.live();
    if let Err(e) = listen::accept::apply_keepalive(
        &stream,
        listener_cfg
            .keepalive
            .as_ref()
            .unwrap_or(&live.backend.config.keepalive),
    ) {
        tracing::debug!(error = %e, "setting keep-alive failed");
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    // Behind PROXY the per-IP limits wait for the real client's address.
    let proxied = live
        .chains
        .get(&listener_cfg.name)
        .is_some_and(|c| c.starts_with("proxy"));
    let mut admission = match shared.caps.admit((!proxied).then(|| peer.ip())) {
        Ok(a) => a,
        Err(why) => {
            let network = shared.caps.client_net().cidr(peer.ip());
            tracing::warn!(session = id, peer = %peer, network = %network, listener = %listener_cfg.name, reason = ?why, "connection refused by limits");
            tokio::spawn(refuse(
                stream,
                listener_cfg.protocol,
                why,
                live.backend.config.hostname.clone(),
            ));
            return;
        }
    };
    let shared = shared.clone();
    let cfg = listener_cfg.clone();
    shared.active.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        run_session(
            &shared,
            &cfg,
            Box::new(stream),
            Some(peer),
            id,
            Some(&mut admission),
        )
        .await;
        drop(admission);
        if shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            shared.idle.notify_waiters();
        }
    });
}

/// Over the caps: say so in the protocol's words, then close (RFC 5321 §3.8: 421).
pub(super) async fn refuse<S: tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    proto: Protocol,
    why: Refused,
    hostname: String,
) {
    crate::metrics::get().refused(&proto.to_string(), "limits");
    let text = match why {
        Refused::TooManyConnections => "Too many connections",
        Refused::TooManyFromIp => "Too many connections from your address",
        Refused::RateFromIp => "Too many connections from your address per minute",
    };
    let line = match proto {
        Protocol::Pop3 => format!("-ERR [SYS/TEMP] {text}, try again later\r\n"),
        _ => format!("421 4.7.0 {hostname} {text}, try again later\r\n"),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

pub(super) async fn run_session(
    shared: &Arc<Shared>,
    listener: &ListenerConfig,
    stream: BoxedIo,
    peer: Option<SocketAddr>,
    id: u64,
    admission: Option<&mut crate::listen::accept::Admission>,
) {
    let live = shared.live();
    let config = live.backend.config.clone();
    // Every line of a session names its client. Behind PROXY that is the real
    // client, known once the chain ran; until then lines name the balancer
    // (`via`).
    let proxied = live
        .chains
        .get(&listener.name)
        .is_some_and(|c| c.starts_with("proxy"));
    let span = match listener.protocol {
        Protocol::Pop3 => {
            tracing::info_span!("pop3", session = id, listener = %listener.name, client = Empty, via = Empty)
        }
        _ => {
            tracing::info_span!("smtp", session = id, listener = %listener.name, client = Empty, via = Empty)
        }
    };
    let shown = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |p| p.to_string());
    span.record(
        if proxied { "via" } else { "client" },
        tracing::field::display(shown(peer)),
    );
    let span_in = span.clone();
    async move {
        tracing::info!("connect");
        let guard = Arc::new(shared.sessions.open(
            id,
            &listener.protocol.to_string(),
            &listener.name,
            peer,
        ));
        let _metrics = SessionMetrics::open(guard.clone(), listener.protocol.to_string());
        let mut meta = ConnMeta {
            id,
            listener: listener.name.clone(),
            peer,
            tcp_peer: peer,
            ..ConnMeta::default()
        };
        // Wire-level bytes, and a short deadline for the first byte from the client.
        let stream = crate::stream::counted::Counted::new(stream, guard.counters("wire"));
        let stream = FirstReadDeadline::new(stream, config.limits.greeting_timeout);
        // The swap point for STARTTLS/STLS, only where it can happen.
        let (stream, wire_handle): (BoxedIo, _) = if shared.tls.is_some() && listener.starttls {
            let (wire, handle) = Wire::new(Box::new(stream));
            (Box::new(wire), Some(handle))
        } else {
            (Box::new(stream), None)
        };
        let chain = live.chains.get(&listener.name).filter(|c| !c.is_empty());
        let stream: BoxedIo = match chain {
            // Boxed, like the sessions below: a TLS handshake's state is
            // allocated only while it runs, not kept in every connection's task.
            Some(chain) => {
                match Box::pin(chain.apply_with(stream, &mut meta, |name, io| {
                    Box::new(crate::stream::counted::Counted::new(io, guard.counters(name)))
                }))
                .await
                {
                    Ok(s) => Box::new(crate::stream::counted::Counted::new(
                        s,
                        guard.counters("protocol"),
                    )),
                    Err(e) => {
                        tracing::info!(error = %e, "close: filter chain failed");
                        return;
                    }
                }
            }
            // An empty chain adds no layer at all.
            None => {
                guard.share_counters("protocol", "wire");
                stream
            }
        };
        guard.set_peer(meta.peer);
        if proxied {
            span_in.record("client", tracing::field::display(shown(meta.peer)));
        }
        // Per-IP cap and rate on the real client, now that PROXY has named it.
        let mut stream = stream;
        if let (Some(adm), Some(real)) = (admission, meta.peer) {
            if let Err(why) = shared.caps.admit_ip(adm, real.ip()) {
                let network = shared.caps.client_net().cidr(real.ip());
                tracing::warn!(peer = %real, network = %network, reason = ?why, "connection refused by limits");
                Box::pin(refuse(
                    &mut stream,
                    listener.protocol,
                    why,
                    config.hostname.clone(),
                ))
                .await;
                return;
            }
        }
        let observer: Arc<dyn Observer> = Arc::new(SessionObserver {
            guard: guard.clone(),
            protocol: listener.protocol,
            ip: meta.peer.map(|p| p.ip()),
        });
        let shutdown = shared.stop.subscribe();
        let peer = meta.peer;
        // STARTTLS/STLS: only where configured and not already TLS.
        let upgrade: Option<Arc<dyn Upgrade>> = match (&shared.tls, wire_handle) {
            (Some(t), Some(handle)) if !meta.tls => {
                Some(Arc::new(StartTls::new(t.clone(), handle)))
            }
            _ => None,
        };
        // Plaintext logins are fine over TLS, from loopback and on a local pipe.
        let local = peer.is_none_or(|p| p.ip().is_loopback());
        let result = match listener.protocol {
            Protocol::Smtp | Protocol::Submission => {
                let info = smtp::SessionInfo {
                    id,
                    peer,
                    helo: String::new(),
                    with_protocol: "ESMTP".into(),
                    auth_user: None,
                    listener: listener.name.clone(),
                };
                let cfg = smtp_config(&config, listener.protocol, meta.tls, local);
                let mut session = smtp::Session::new(stream, live.backend.clone(), cfg, info)
                    .with_observer(observer)
                    .with_shutdown(shutdown);
                if let Some(u) = upgrade {
                    session = session.with_starttls(u);
                }
                tokio::select! {
                    r = Box::pin(session.run()) => r,
                    _ = guard.kicked() => Err(std::io::Error::other("kicked by an admin")),
                }
            }
            Protocol::Pop3 => {
                let cfg = pop3_config(&config, meta.tls || local, peer.map(|p| p.ip()));
                let mut session = pop3::Session::new(stream, live.backend.clone(), cfg)
                    .with_observer(observer)
                    .with_shutdown(shutdown);
                if let Some(u) = upgrade {
                    session = session.with_starttls(u);
                }
                tokio::select! {
                    r = Box::pin(session.run()) => r,
                    _ = guard.kicked() => Err(std::io::Error::other("kicked by an admin")),
                }
            }
        };
        match result {
            Ok(()) => tracing::info!("close"),
            Err(e) => tracing::info!(error = %e, "close"),
        }
    }
    .instrument(span)
    .await
}

/// A session as the metrics see it: counted when it opens, and when it ends
/// (however it ends) its bytes per layer are added up.
struct SessionMetrics {
    guard: Arc<control::SessionGuard>,
    protocol: String,
}

impl SessionMetrics {
    fn open(guard: Arc<control::SessionGuard>, protocol: String) -> SessionMetrics {
        crate::metrics::get().session_opened(&protocol);
        SessionMetrics { guard, protocol }
    }
}

impl Drop for SessionMetrics {
    fn drop(&mut self) {
        crate::metrics::get().session_closed(&self.protocol, &self.guard.layer_bytes());
    }
}

/// Reports a session's state, logins and deliveries to the registry (`who`,
/// `events`) and writes the fail2ban line.
pub(super) struct SessionObserver {
    guard: Arc<control::SessionGuard>,
    protocol: Protocol,
    ip: Option<std::net::IpAddr>,
}

impl Observer for SessionObserver {
    fn state(&self, state: &'static str) {
        self.guard.set_state(state);
    }

    fn auth(&self, user: &str, mechanism: &str, ok: bool) {
        if ok {
            self.guard.auth_ok(user, mechanism);
        } else {
            self.guard.auth_fail(user, mechanism);
            crate::metrics::get().auth_failed(&self.protocol.to_string());
            // One stable line per failure for fail2ban: the real client IP (behind
            // PROXY too), the user as given (quoted, so it cannot forge a line).
            let ip = self.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into());
            tracing::warn!(
                "authentication failure: protocol={} ip={ip} user={:?}",
                self.protocol,
                crate::logging::LogName(user)
            );
        }
    }

    fn delivered(
        &self,
        id: &str,
        recipients: usize,
        size: u64,
        auth: Option<&crate::smtp::backend::AuthSummary>,
    ) {
        self.guard.delivery(id, recipients, size, auth);
    }
}

/// `tls`: the connection is already encrypted (implicit TLS); `local`: a
/// loopback peer or a local pipe, where AUTH may be offered in plaintext.
pub fn smtp_config(c: &Config, protocol: Protocol, tls: bool, local: bool) -> smtp::SessionConfig {
    smtp::SessionConfig {
        hostname: c.hostname.clone(),
        max_message_size: c.limits.max_message_size,
        max_recipients: c.limits.max_recipients,
        max_command_line: usize::try_from(c.limits.max_command_line).unwrap_or(usize::MAX),
        max_text_line: usize::try_from(c.limits.max_text_line).unwrap_or(usize::MAX),
        max_errors: c.limits.max_errors,
        command_timeout: c.limits.command_timeout,
        data_timeout: c.limits.data_timeout,
        bare_lf: c.smtp.bare_lf,
        tls,
        submission: protocol == Protocol::Submission,
        plaintext_auth_allowed: local || c.smtp.allow_plaintext_auth,
        auth_failures: c.limits.auth_failures,
        auth_failure_delay: c.limits.auth_failure_delay,
    }
}

/// `secure`: the connection counts as secure for plaintext logins (TLS, a
/// loopback peer or a local pipe). STLS makes it secure later on its own.
pub fn pop3_config(
    c: &Config,
    secure: bool,
    client: Option<std::net::IpAddr>,
) -> pop3::SessionConfig {
    pop3::SessionConfig {
        hostname: c.hostname.clone(),
        plaintext_auth_allowed: secure || c.pop3.allow_plaintext_auth,
        idle_timeout: c.limits.pop3_idle_timeout,
        max_errors: c.limits.max_errors,
        auth_failures: c.limits.auth_failures,
        auth_failure_delay: c.limits.auth_failure_delay,
        retr_marks_seen: c.pop3.retr_marks_seen,
        client,
    }
}
