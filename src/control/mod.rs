//! The live session registry (`maildird who`, `kick` and `events` in
//! maildird(8)) and the admin control socket that serves `who`, `kick` and `events`
//! as JSON lines to root and members of the daemon's group.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

/// Live sessions and the event channel.
pub struct Registry {
    sessions: Mutex<BTreeMap<u64, Arc<Entry>>>,
    events: broadcast::Sender<Event>,
}

pub use crate::stream::counted::Counters;

/// One live session.
pub struct Entry {
    pub id: u64,
    pub protocol: String,
    pub listener: String,
    /// The TCP peer (the proxy, when PROXY is used).
    pub tcp_peer: Option<SocketAddr>,
    pub since: SystemTime,
    live: Mutex<Live>,
    /// Byte counts per layer, wire first: "wire", each filter by name, "protocol".
    layers: Mutex<Vec<(String, Arc<Counters>)>>,
    kick: Notify,
}

#[derive(Default, Clone)]
struct Live {
    /// The real client (behind PROXY), once the filter chain ran.
    peer: Option<SocketAddr>,
    user: Option<String>,
    state: String,
}

/// `who`: one session as the admin sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    pub id: u64,
    pub protocol: String,
    pub listener: String,
    pub peer: Option<String>,
    /// The real client IP when it differs from the TCP peer (PROXY).
    pub real_ip: Option<String>,
    pub user: Option<String>,
    pub state: String,
    /// RFC 3339, UTC.
    pub since: String,
    pub bytes: Vec<LayerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerView {
    pub layer: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What happened to a session (`events`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Connect,
    AuthOk,
    AuthFail,
    Delivery,
    Close,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub time: String,
    pub session: u64,
    pub event: EventKind,
    pub protocol: String,
    pub peer: Option<String>,
    pub user: Option<String>,
    /// Delivery: recipients and size; close: bytes in/out; auth: mechanism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn now_rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    pub fn new() -> Registry {
        // Slow `events` readers lose old events (they are told), never block sessions.
        let (events, _) = broadcast::channel(1024);
        Registry {
            sessions: Mutex::new(BTreeMap::new()),
            events,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Entry>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a new session; the guard removes it (and reports `close`) on drop.
    pub fn open(
        self: &Arc<Self>,
        id: u64,
        protocol: &str,
        listener: &str,
        tcp_peer: Option<SocketAddr>,
    ) -> SessionGuard {
        let entry = Arc::new(Entry {
            id,
            protocol: protocol.to_string(),
            listener: listener.to_string(),
            tcp_peer,
            since: SystemTime::now(),
            live: Mutex::new(Live {
                peer: tcp_peer,
                user: None,
                state: "connected".into(),
            }),
            layers: Mutex::new(vec![
                ("wire".into(), Arc::default()),
                ("protocol".into(), Arc::default()),
            ]),
            kick: Notify::new(),
        });
        self.map().insert(id, entry.clone());
        let guard = SessionGuard {
            registry: self.clone(),
            entry,
        };
        guard.emit(EventKind::Connect, None);
        guard
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions per protocol, for the sd_notify STATUS line.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.map().values() {
            *m.entry(e.protocol.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn who(&self) -> Vec<SessionView> {
        self.map().values().map(|e| e.view()).collect()
    }

    /// End sessions matching `target`; returns how many were told to stop.
    pub fn kick(&self, target: &KickTarget) -> usize {
        let map = self.map();
        let mut n = 0;
        for e in map.values() {
            let live = e.live();
            let hit = match target {
                KickTarget::Id(id) => e.id == *id,
                KickTarget::User(u) => live.user.as_deref() == Some(u.as_str()),
                KickTarget::Ip(ip) => {
                    live.peer.map(|p| p.ip()) == Some(*ip)
                        || e.tcp_peer.map(|p| p.ip()) == Some(*ip)
                }
            };
            if hit {
                // notify_one stores a permit, so a kick before the session waits still counts.
                e.kick.notify_one();
                n += 1;
            }
        }
        n
    }
}

/// What `kick` selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickTarget {
    Id(u64),
    User(String),
    Ip(IpAddr),
}

impl Entry {
    fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn view(&self) -> SessionView {
        let live = self.live();
        let peer = live.peer.map(|p| p.to_string());
        let real_ip = match (live.peer, self.tcp_peer) {
            (Some(p), Some(t)) if p != t => Some(p.ip().to_string()),
            _ => None,
        };
        SessionView {
            id: self.id,
            protocol: self.protocol.clone(),
            listener: self.listener.clone(),
            peer: self.tcp_peer.map(|p| p.to_string()).or(peer),
            real_ip,
            user: live.user,
            state: live.state,
            since: now_rfc3339(self.since),
            bytes: self
                .layers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(name, c)| LayerView {
                    layer: name.clone(),
                    bytes_in: c.bytes_in.load(Ordering::Relaxed),
                    bytes_out: c.bytes_out.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// A session's handle on its registry entry. Dropping it reports `close`.
pub struct SessionGuard {
    registry: Arc<Registry>,
    entry: Arc<Entry>,
}

impl SessionGuard {
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// Counters of a layer ("wire" or "protocol").
    pub fn counters(&self, layer: &str) -> Arc<Counters> {
        let mut layers = self.entry.layers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = layers.iter().find(|(n, _)| n == layer) {
            return c.clone();
        }
        // A filter layer: listed between the wire and the protocol.
        let c: Arc<Counters> = Arc::default();
        let at = layers.len().saturating_sub(1);
        layers.insert(at, (layer.to_string(), c.clone()));
        c
    }

    /// Bytes in and out of each layer so far, wire first (for the metrics).
    pub fn layer_bytes(&self) -> Vec<(String, u64, u64)> {
        self.entry
            .view()
            .bytes
            .into_iter()
            .map(|l| (l.layer, l.bytes_in, l.bytes_out))
            .collect()
    }

    /// Make `layer` report the counters of `like` (with no filters, the
    /// protocol sees exactly the wire's bytes: counted once, shown twice).
    pub fn share_counters(&self, layer: &str, like: &str) {
        let mut layers = self.entry.layers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = layers
            .iter()
            .find(|(n, _)| n == like)
            .map(|(_, c)| c.clone())
        else {
            return;
        };
        if let Some((_, slot)) = layers.iter_mut().find(|(n, _)| n == layer) {
            *slot = c;
        }
    }

    fn with_live(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.entry.live.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The real client address, once known (PROXY).
    pub fn set_peer(&self, peer: Option<SocketAddr>) {
        self.with_live(|l| l.peer = peer);
    }

    pub fn set_state(&self, state: &str) {
        self.with_live(|l| l.state = state.to_string());
    }

    pub fn auth_ok(&self, user: &str, mechanism: &str) {
        self.with_live(|l| l.user = Some(user.to_string()));
        self.emit(
            EventKind::AuthOk,
            Some(mechanism.to_string()).filter(|m| !m.is_empty()),
        );
    }

    pub fn auth_fail(&self, user: &str, mechanism: &str) {
        let mechanism = Some(mechanism.to_string()).filter(|m| !m.is_empty());
        let ev = self.event(EventKind::AuthFail, mechanism, Some(user.to_string()));
        let _ = self.registry.events.send(ev);
    }

    pub fn delivery(&self, detail: String) {
        self.emit(EventKind::Delivery, Some(detail));
    }

    /// Resolves when an admin kicks this session.
    pub async fn kicked(&self) {
        self.entry.kick.notified().await;
    }

    fn event(&self, kind: EventKind, detail: Option<String>, user: Option<String>) -> Event {
        let live = self.entry.live();
        Event {
            time: now_rfc3339(SystemTime::now()),
            session: self.entry.id,
            event: kind,
            protocol: self.entry.protocol.clone(),
            peer: live.peer.map(|p| p.to_string()),
            user: user.or(live.user),
            detail,
        }
    }

    fn emit(&self, kind: EventKind, detail: Option<String>) {
        let ev = self.event(kind, detail, None);
        let _ = self.registry.events.send(ev);
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let wire = self.counters("wire");
        let detail = format!(
            "bytes_in={} bytes_out={}",
            wire.bytes_in.load(Ordering::Relaxed),
            wire.bytes_out.load(Ordering::Relaxed)
        );
        self.emit(EventKind::Close, Some(detail));
        self.registry.map().remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn sessions_come_and_go_with_events() {
        let reg = Arc::new(Registry::new());
        let mut rx = reg.subscribe();
        let g = reg.open(7, "pop3", "pop3", addr("127.0.0.1:4000"));
        g.set_peer(addr("192.0.2.9:5000"));
        g.auth_ok("alice", "USER");
        g.counters("wire").bytes_in.fetch_add(10, Ordering::Relaxed);
        let who = reg.who();
        assert_eq!(who.len(), 1);
        assert_eq!(who[0].user.as_deref(), Some("alice"));
        assert_eq!(who[0].peer.as_deref(), Some("127.0.0.1:4000"));
        assert_eq!(who[0].real_ip.as_deref(), Some("192.0.2.9"));
        assert_eq!(
            who[0].bytes[0],
            LayerView {
                layer: "wire".into(),
                bytes_in: 10,
                bytes_out: 0
            }
        );
        assert_eq!(reg.counts().get("pop3"), Some(&1));
        drop(g);
        assert!(reg.is_empty());
        let kinds: Vec<EventKind> = (0..3).map(|_| rx.try_recv().unwrap().event).collect();
        assert_eq!(
            kinds,
            [EventKind::Connect, EventKind::AuthOk, EventKind::Close]
        );
    }

    #[test]
    fn filter_layers_sit_between_wire_and_protocol() {
        let reg = Arc::new(Registry::new());
        let g = reg.open(1, "pop3", "pop3s", None);
        g.counters("tls").bytes_in.fetch_add(3, Ordering::Relaxed);
        g.counters("zlib");
        let layers: Vec<String> = reg.who()[0].bytes.iter().map(|l| l.layer.clone()).collect();
        assert_eq!(layers, ["wire", "tls", "zlib", "protocol"]);
        assert_eq!(reg.who()[0].bytes[1].bytes_in, 3);
    }

    #[tokio::test]
    async fn kick_by_id_user_and_ip() {
        let reg = Arc::new(Registry::new());
        let a = reg.open(1, "smtp", "smtp", addr("127.0.0.1:1"));
        let b = reg.open(2, "pop3", "pop3", addr("127.0.0.2:1"));
        b.auth_ok("bob", "PLAIN");
        assert_eq!(reg.kick(&KickTarget::Id(3)), 0);
        assert_eq!(reg.kick(&KickTarget::User("bob".into())), 1);
        b.kicked().await; // the stored permit resolves at once
        assert_eq!(reg.kick(&KickTarget::Ip("127.0.0.1".parse().unwrap())), 1);
        a.kicked().await;
        assert_eq!(reg.kick(&KickTarget::Id(2)), 1);
    }
}
