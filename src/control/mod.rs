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
    /// Why the daemon ended the session, if it did (reported with `close`).
    close_reason: Option<String>,
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

impl EventKind {
    /// The name in JSON and in the text form of `events`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::AuthOk => "auth_ok",
            EventKind::AuthFail => "auth_fail",
            EventKind::Delivery => "delivery",
            EventKind::Close => "close",
        }
    }
}

/// One event of `events`: what every event has, then the typed fields of its
/// kind (maildird(8), `events`). Absent fields are left out of the JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub time: String,
    pub session: u64,
    pub event: EventKind,
    pub protocol: String,
    pub peer: Option<String>,
    pub user: Option<String>,
    #[serde(flatten)]
    pub fields: EventFields,
}

/// The fields that only some kinds carry: `auth_ok`/`auth_fail`: `mechanism`;
/// `delivery`: `id`, `recipients`, `size`; `close`: `bytes_in`, `bytes_out`
/// (on the wire) and `reason` (why the daemon ended it, e.g. `kicked`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Delivery with sender checks on: the verdicts (`pass`, `fail`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iprev: Option<String>,
}

impl EventFields {
    /// The fields as `key=value` words for the text form of `events`, in the
    /// order above; strings are quoted when they need it.
    pub fn to_words(&self) -> Vec<String> {
        let text = |k: &str, v: &Option<String>| v.as_ref().map(|v| format!("{k}={}", quoted(v)));
        let num = |k: &str, v: Option<u64>| v.map(|v| format!("{k}={v}"));
        [
            text("mechanism", &self.mechanism),
            text("id", &self.id),
            num("recipients", self.recipients),
            num("size", self.size),
            num("bytes_in", self.bytes_in),
            num("bytes_out", self.bytes_out),
            text("reason", &self.reason),
            text("spf", &self.spf),
            text("dkim", &self.dkim),
            text("dmarc", &self.dmarc),
            text("iprev", &self.iprev),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A value as one shell-like word: as is when it is plain, else Rust-quoted
/// (so a user name cannot forge another field or line).
pub fn quoted(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._@+:/".contains(&b));
    if plain {
        v.to_string()
    } else {
        format!("{v:?}")
    }
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
                close_reason: None,
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
        guard.emit(EventKind::Connect, EventFields::default());
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
                e.live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .close_reason = Some("kicked".into());
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
            .layers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    c.bytes_in.load(Ordering::Relaxed),
                    c.bytes_out.load(Ordering::Relaxed),
                )
            })
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
        self.emit(EventKind::AuthOk, mechanism_field(mechanism));
    }

    pub fn auth_fail(&self, user: &str, mechanism: &str) {
        let ev = self.event(
            EventKind::AuthFail,
            mechanism_field(mechanism),
            Some(user.to_string()),
        );
        let _ = self.registry.events.send(ev);
    }

    /// A message was delivered: its id (empty when unknown), how many
    /// recipients got it and its size in bytes.
    pub fn delivery(
        &self,
        id: &str,
        recipients: usize,
        size: u64,
        auth: Option<&crate::smtp::backend::AuthSummary>,
    ) {
        let verdict = |f: fn(&crate::smtp::backend::AuthSummary) -> &'static str| {
            auth.map(|a| f(a).to_string())
        };
        self.emit(
            EventKind::Delivery,
            EventFields {
                id: Some(id.to_string()).filter(|i| !i.is_empty()),
                recipients: Some(recipients as u64),
                size: Some(size),
                spf: verdict(|a| a.spf),
                dkim: verdict(|a| a.dkim),
                dmarc: verdict(|a| a.dmarc),
                iprev: verdict(|a| a.iprev),
                ..EventFields::default()
            },
        );
    }

    /// Why the daemon is ending this session (e.g. `timeout`, `shutdown`),
    /// reported by the `close` event; the first reason given is kept.
    pub fn set_close_reason(&self, reason: &str) {
        self.with_live(|l| {
            l.close_reason.get_or_insert_with(|| reason.to_string());
        });
    }

    /// Resolves when an admin kicks this session.
    pub async fn kicked(&self) {
        self.entry.kick.notified().await;
    }

    fn event(&self, kind: EventKind, fields: EventFields, user: Option<String>) -> Event {
        let live = self.entry.live();
        Event {
            time: now_rfc3339(SystemTime::now()),
            session: self.entry.id,
            event: kind,
            protocol: self.entry.protocol.clone(),
            peer: live.peer.map(|p| p.to_string()),
            user: user.or(live.user),
            fields,
        }
    }

    fn emit(&self, kind: EventKind, fields: EventFields) {
        let ev = self.event(kind, fields, None);
        let _ = self.registry.events.send(ev);
    }
}

fn mechanism_field(mechanism: &str) -> EventFields {
    EventFields {
        mechanism: Some(mechanism.to_string()).filter(|m| !m.is_empty()),
        ..EventFields::default()
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let wire = self.counters("wire");
        let fields = EventFields {
            bytes_in: Some(wire.bytes_in.load(Ordering::Relaxed)),
            bytes_out: Some(wire.bytes_out.load(Ordering::Relaxed)),
            reason: self.entry.live().close_reason,
            ..EventFields::default()
        };
        self.emit(EventKind::Close, fields);
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
    fn events_carry_typed_fields_by_kind() {
        let reg = Arc::new(Registry::new());
        let mut rx = reg.subscribe();
        let g = reg.open(4, "smtp", "smtp", addr("127.0.0.1:4000"));
        g.auth_ok("alice", "PLAIN");
        g.delivery("1700000000.M1P2Q3R4.mx", 2, 406, None);
        g.counters("wire").bytes_in.fetch_add(10, Ordering::Relaxed);
        g.counters("wire")
            .bytes_out
            .fetch_add(20, Ordering::Relaxed);
        assert_eq!(reg.kick(&KickTarget::Id(4)), 1);
        drop(g);
        let json: Vec<serde_json::Value> = (0..4)
            .map(|_| serde_json::to_value(rx.try_recv().unwrap()).unwrap())
            .collect();
        assert_eq!(json[0]["event"], "connect");
        assert!(json[0].get("size").is_none(), "{}", json[0]);
        assert_eq!(json[1]["mechanism"], "PLAIN");
        assert_eq!(json[2]["id"], "1700000000.M1P2Q3R4.mx");
        assert_eq!(json[2]["recipients"], 2);
        assert_eq!(json[2]["size"], 406);
        assert_eq!(json[3]["bytes_in"], 10);
        assert_eq!(json[3]["bytes_out"], 20);
        assert_eq!(json[3]["reason"], "kicked");
        // And back: the client reads what the daemon wrote.
        let back: Event = serde_json::from_value(json[2].clone()).unwrap();
        assert_eq!(back.fields.size, Some(406));
        assert_eq!(
            back.fields.to_words(),
            ["id=1700000000.M1P2Q3R4.mx", "recipients=2", "size=406"]
        );
    }

    #[test]
    fn text_words_quote_what_could_forge_a_field() {
        assert_eq!(quoted("PLAIN"), "PLAIN");
        assert_eq!(quoted("a b=c"), "\"a b=c\"");
        assert_eq!(quoted("x\ny"), "\"x\\ny\"");
        assert_eq!(quoted(""), "\"\"");
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
