//! `maildird status`: the daemon's metrics (asked for over the control
//! socket, so it works without `[metrics] bind`) read back from their
//! OpenMetrics text and summed up for a person. Pure: tested without a daemon.

use std::collections::BTreeMap;

/// One sample: `name{k="v",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an OpenMetrics or Prometheus text (comments skipped; lines
/// that do not parse are ignored).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` (values have no escaped quotes here: ours never do).
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        out.insert(
            k.to_string(),
            v.strip_prefix('"')?.strip_suffix('"')?.to_string(),
        );
    }
    Some(out)
}

/// The samples as `series value` pairs, for `status --json`.
pub fn to_json(samples: &[Sample]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = samples
        .iter()
        .map(|s| {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            let series = if labels.is_empty() {
                s.name.clone()
            } else {
                format!("{}{{{}}}", s.name, labels.join(","))
            };
            (series, serde_json::json!(s.value))
        })
        .collect();
    serde_json::Value::Object(map)
}

struct View<'a>(&'a [Sample]);

impl View<'_> {
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .fold(0.0, |a, s| a + s.value)
    }

    /// `label value -> total` of a family.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            let key = s.labels.get(label).cloned().unwrap_or_default();
            *out.entry(key).or_insert(0.0) += s.value;
        }
        out
    }

    fn label(&self, name: &str, label: &str) -> Option<String> {
        self.0
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.labels.get(label).cloned())
    }
}

/// The summary `maildird status` prints; `now`: Unix time.
pub fn summary(samples: &[Sample], now: f64) -> String {
    let v = View(samples);
    let mut out = String::new();
    let version = v
        .label("maildird_build_info", "version")
        .unwrap_or_default();
    let started = v.sum("maildird_start_time_seconds");
    out.push_str(&format!(
        "maildird {version}, up {}\n",
        duration((now - started).max(0.0))
    ));
    let total = v.by("maildird_sessions_total", "protocol");
    let live = v.by("maildird_live_sessions", "protocol");
    let mut protocols: Vec<&String> = total.keys().collect();
    protocols.dedup();
    let sessions: Vec<String> = protocols
        .iter()
        .map(|p| {
            format!(
                "{p} {} open, {} since start",
                live.get(*p).copied().unwrap_or(0.0),
                total.get(*p).copied().unwrap_or(0.0)
            )
        })
        .collect();
    out.push_str(&format!(
        "sessions:       {}\n",
        if sessions.is_empty() {
            "none since start".to_string()
        } else {
            sessions.join("; ")
        }
    ));
    let deliveries = v.sum("maildird_deliveries_total");
    let last = v.sum("maildird_last_delivery_timestamp_seconds");
    out.push_str(&format!(
        "deliveries:     {deliveries} messages, {} files, {}; last {}\n",
        v.sum("maildird_delivered_copies_total"),
        bytes(v.sum("maildird_delivered_bytes_total")),
        if last > 0.0 {
            format!("{} ago", duration((now - last).max(0.0)))
        } else {
            "never".into()
        }
    ));
    out.push_str(&format!(
        "delivery time:  {}\n",
        mean(&v, "maildird_delivery_duration_seconds")
    ));
    out.push_str(&format!(
        "fsync:          {}\n",
        mean(&v, "maildird_fsync_duration_seconds")
    ));
    let refusals: Vec<String> = samples
        .iter()
        .filter(|s| s.name == "maildird_refusals_total" && s.value > 0.0)
        .map(|s| {
            format!(
                "{} {} {}",
                s.labels.get("protocol").map_or("?", String::as_str),
                s.labels.get("reason").map_or("?", String::as_str),
                s.value
            )
        })
        .collect();
    out.push_str(&format!(
        "refusals:       {}\n",
        if refusals.is_empty() {
            "none".to_string()
        } else {
            refusals.join(", ")
        }
    ));
    let auth: Vec<String> = v
        .by("maildird_auth_failures_total", "protocol")
        .iter()
        .map(|(p, n)| format!("{p} {n}"))
        .collect();
    out.push_str(&format!(
        "auth failures:  {}\n",
        if auth.is_empty() {
            "none".to_string()
        } else {
            auth.join(", ")
        }
    ));
    out.push_str(&format!(
        "pop3:           {} retrieved ({}), {} deleted\n",
        v.sum("maildird_pop3_retrieved_total"),
        bytes(v.sum("maildird_pop3_retrieved_bytes_total")),
        v.sum("maildird_pop3_deleted_total")
    ));
    out
}

/// `N, mean X ms` of a histogram.
fn mean(v: &View<'_>, histogram: &str) -> String {
    let count = v.sum(&format!("{histogram}_count"));
    let sum = v.sum(&format!("{histogram}_sum"));
    if count == 0.0 {
        return "none yet".into();
    }
    format!("{count} measured, mean {:.2} ms", sum / count * 1000.0)
}

fn bytes(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} bytes"),
    }
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP maildird_build_info v.\n# TYPE maildird_build_info gauge\n\
        maildird_build_info{version=\"0.1.0\"} 1\n\
        maildird_start_time_seconds 1000\n\
        maildird_sessions_total{protocol=\"smtp\"} 5\n\
        maildird_sessions_total{protocol=\"pop3\"} 2\n\
        maildird_live_sessions{protocol=\"smtp\"} 1\n\
        maildird_live_sessions{protocol=\"pop3\"} 0\n\
        maildird_deliveries_total 3\n\
        maildird_delivered_copies_total 4\n\
        maildird_delivered_bytes_total 2500\n\
        maildird_last_delivery_timestamp_seconds 4590\n\
        maildird_delivery_duration_seconds_sum 0.006\n\
        maildird_delivery_duration_seconds_count 3\n\
        maildird_delivery_duration_seconds_bucket{le=\"0.001\"} 0\n\
        maildird_refusals_total{protocol=\"smtp\",reason=\"unknown_user\"} 2\n\
        maildird_auth_failures_total{protocol=\"pop3\"} 1\n\
        maildird_pop3_retrieved_total 7\n# EOF\n";

    #[test]
    fn samples_parse() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 16);
        assert_eq!(s[3].name, "maildird_sessions_total");
        assert_eq!(s[3].labels["protocol"], "pop3");
        assert_eq!(s[3].value, 2.0);
        assert_eq!(
            to_json(&s)["maildird_refusals_total{protocol=\"smtp\",reason=\"unknown_user\"}"],
            2.0
        );
    }

    #[test]
    fn summary_sums_up() {
        let text = summary(&parse(TEXT), 4600.0);
        let want = "maildird 0.1.0, up 1h 0m\n\
            sessions:       pop3 0 open, 2 since start; smtp 1 open, 5 since start\n\
            deliveries:     3 messages, 4 files, 2.5 kB; last 10s ago\n\
            delivery time:  3 measured, mean 2.00 ms\n\
            fsync:          none yet\n\
            refusals:       smtp unknown_user 2\n\
            auth failures:  pop3 1\n\
            pop3:           7 retrieved (0 bytes), 0 deleted\n";
        assert_eq!(text, want);
    }
}
