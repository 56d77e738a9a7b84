//! The daemon's metrics (OpenMetrics, `prometheus-client`): one process-wide
//! set, updated where things happen (sessions, deliveries, refusals, fsyncs)
//! and served on `[metrics] bind` (`serve`) and to `maildird status` over the
//! control socket. maildird(8), "Metrics", lists them.

pub mod http;

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub protocol: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LayerLabels {
    /// "wire", a filter's name, or "protocol" (as `maildird who` shows them).
    pub layer: String,
    /// "in" (from the client) or "out".
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Sessions accepted (past the caps), by protocol.
    pub sessions: Family<ProtocolLabel, Counter>,
    /// Sessions alive now.
    pub live_sessions: Family<ProtocolLabel, Gauge>,
    /// Messages answered with 250 (each stored in every recipient's `new/`).
    pub deliveries: Counter,
    /// Copies stored (one per distinct mailbox of a message).
    pub delivered_copies: Counter,
    pub delivered_bytes: Counter,
    /// Unix time of the last delivery (alert when mail stops arriving).
    pub last_delivery: Gauge,
    /// Every 4xx/5xx (SMTP) and -ERR refusal, by reason.
    pub refusals: Family<RefusalLabels, Counter>,
    pub auth_failures: Family<ProtocolLabel, Counter>,
    /// Bytes through each layer of the filter chains, counted as sessions end.
    pub layer_bytes: Family<LayerLabels, Counter>,
    /// From the start of DATA (or the first BDAT) to the 250.
    pub delivery_seconds: Histogram,
    /// Each fsync of a message file or a `new/` directory.
    pub fsync_seconds: Histogram,
    pub pop3_retrieved: Counter,
    pub pop3_retrieved_bytes: Counter,
    pub pop3_deleted: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn unix_now() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("maildird");
        let m = Metrics {
            sessions: Family::default(),
            live_sessions: Family::default(),
            deliveries: Counter::default(),
            delivered_copies: Counter::default(),
            delivered_bytes: Counter::default(),
            last_delivery: Gauge::default(),
            refusals: Family::default(),
            auth_failures: Family::default(),
            layer_bytes: Family::default(),
            // 1 ms .. ~16 s
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 50 µs .. ~0.8 s
            fsync_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 15)),
            pop3_retrieved: Counter::default(),
            pop3_retrieved_bytes: Counter::default(),
            pop3_deleted: Counter::default(),
            registry: Registry::default(),
        };
        let start: Gauge = Gauge::default();
        start.set(unix_now());
        registry.register_with_unit(
            "start_time",
            "Unix time the daemon started",
            Unit::Seconds,
            start,
        );
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "maildird's version", build);
        registry.register(
            "sessions",
            "Sessions accepted, by protocol",
            m.sessions.clone(),
        );
        registry.register(
            "live_sessions",
            "Sessions open now, by protocol",
            m.live_sessions.clone(),
        );
        registry.register(
            "deliveries",
            "Messages accepted with 250 (durable in every recipient's new/)",
            m.deliveries.clone(),
        );
        registry.register(
            "delivered_copies",
            "Message copies stored, one per distinct mailbox",
            m.delivered_copies.clone(),
        );
        registry.register_with_unit(
            "delivered",
            "Bytes of messages accepted",
            Unit::Bytes,
            m.delivered_bytes.clone(),
        );
        registry.register_with_unit(
            "last_delivery_timestamp",
            "Unix time of the last accepted message",
            Unit::Seconds,
            m.last_delivery.clone(),
        );
        registry.register(
            "refusals",
            "Refusals (each SMTP 4xx/5xx, each POP3 -ERR, connections over the caps), by protocol and reason",
            m.refusals.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed logins, by protocol",
            m.auth_failures.clone(),
        );
        registry.register_with_unit(
            "layer",
            "Bytes through each layer of the filter chains (wire, each filter, protocol), counted when a session ends",
            Unit::Bytes,
            m.layer_bytes.clone(),
        );
        registry.register_with_unit(
            "delivery_duration",
            "From DATA (or the first BDAT) to the 250",
            Unit::Seconds,
            m.delivery_seconds.clone(),
        );
        registry.register_with_unit(
            "fsync_duration",
            "Each fsync of a message file or a new/ directory",
            Unit::Seconds,
            m.fsync_seconds.clone(),
        );
        registry.register(
            "pop3_retrieved",
            "Messages sent by POP3 RETR",
            m.pop3_retrieved.clone(),
        );
        registry.register_with_unit(
            "pop3_retrieved",
            "Bytes of messages sent by POP3 RETR",
            Unit::Bytes,
            m.pop3_retrieved_bytes.clone(),
        );
        registry.register(
            "pop3_deleted",
            "Messages deleted by POP3 (at QUIT)",
            m.pop3_deleted.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn session_opened(&self, protocol: &str) {
        let label = ProtocolLabel {
            protocol: protocol.to_string(),
        };
        self.sessions.get_or_create(&label).inc();
        self.live_sessions.get_or_create(&label).inc();
    }

    pub fn session_closed(&self, protocol: &str, layers: &[(String, u64, u64)]) {
        let label = ProtocolLabel {
            protocol: protocol.to_string(),
        };
        self.live_sessions.get_or_create(&label).dec();
        for (layer, bytes_in, bytes_out) in layers {
            for (direction, n) in [("in", *bytes_in), ("out", *bytes_out)] {
                self.layer_bytes
                    .get_or_create(&LayerLabels {
                        layer: layer.clone(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
    }

    pub fn refused(&self, protocol: &str, reason: &'static str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                protocol: protocol.to_string(),
                reason,
            })
            .inc();
    }

    pub fn auth_failed(&self, protocol: &str) {
        self.auth_failures
            .get_or_create(&ProtocolLabel {
                protocol: protocol.to_string(),
            })
            .inc();
    }

    /// A message accepted: `copies` files stored, `size` bytes, after `took`.
    pub fn delivered(&self, copies: usize, size: u64, took: Duration) {
        self.deliveries.inc();
        self.delivered_copies.inc_by(copies as u64);
        self.delivered_bytes.inc_by(size);
        self.delivery_seconds.observe(took.as_secs_f64());
        self.last_delivery.set(unix_now());
    }

    /// Time one fsync.
    pub fn fsync<T>(&self, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let r = f();
        self.fsync_seconds.observe(start.elapsed().as_secs_f64());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_openmetrics_with_every_family() {
        let m = Metrics::new();
        m.session_opened("smtp");
        m.refused("smtp", "unknown_user");
        m.delivered(2, 100, Duration::from_millis(3));
        m.session_closed("smtp", &[("wire".into(), 10, 20)]);
        let text = m.encode();
        for want in [
            "maildird_sessions_total{protocol=\"smtp\"} 1",
            "maildird_live_sessions{protocol=\"smtp\"} 0",
            "maildird_refusals_total{protocol=\"smtp\",reason=\"unknown_user\"} 1",
            "maildird_deliveries_total 1",
            "maildird_delivered_copies_total 2",
            "maildird_delivered_bytes_total 100",
            "maildird_delivery_duration_seconds_count 1",
            "maildird_layer_bytes_total{layer=\"wire\",direction=\"out\"} 20",
            "maildird_build_info{version=",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
