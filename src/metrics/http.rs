//! The metrics endpoint: a deliberately tiny HTTP/1.1 responder for
//! `GET /metrics` (what Prometheus, curl and promtool send). One request per
//! connection, a bounded request head, a deadline and a cap on concurrent
//! scrapers: an HTTP framework would be far larger than this need.
//!
//! Like the official client libraries it negotiates the format: OpenMetrics
//! when the `Accept` header asks for it (Prometheus does), else the classic
//! Prometheus text format 0.0.4 (curl, `promtool check metrics`).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The largest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// A scraper gets this long to send its request ...
const HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// ... and this long to read the answer.
const DEADLINE: Duration = Duration::from_secs(10);
/// Scrapes served at once; a connection beyond them is closed.
const CONCURRENT: usize = 8;

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics { head_only: bool, openmetrics: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Route a complete request head (pure: tested without sockets).
pub fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with(b"HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    if path == b"/metrics" {
        Route::Metrics {
            head_only,
            openmetrics: accepts_openmetrics(head),
        }
    } else {
        Route::NotFound
    }
}

/// Does an `Accept:` header of the request name OpenMetrics?
fn accepts_openmetrics(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > 7
            && line
                .get(..7)
                .is_some_and(|n| n.eq_ignore_ascii_case(b"accept:"))
            && memchr::memmem::find(line, b"application/openmetrics-text").is_some()
    })
}

/// OpenMetrics text as the Prometheus text format 0.0.4: a counter's family
/// is named with its `_total` suffix there, and there are no `# UNIT` or
/// `# EOF` lines. (Our families are counters, gauges and histograms only.)
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some(name) = rest.strip_suffix(" counter")
        {
            counters.insert(name);
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                out.push_str(&format!("{p}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The whole response for a route.
pub fn respond(route: &Route, body: impl FnOnce() -> String) -> Vec<u8> {
    let (status, content_type, body, head_only) = match route {
        Route::Metrics {
            head_only,
            openmetrics: true,
        } => ("200 OK", OPENMETRICS, body(), *head_only),
        Route::Metrics {
            head_only,
            openmetrics: false,
        } => (
            "200 OK",
            PROMETHEUS_TEXT,
            to_prometheus_text(&body()),
            *head_only,
        ),
        Route::NotFound => (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".into(),
            false,
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".into(),
            false,
        ),
        Route::BadRequest => ("400 Bad Request", "text/plain", String::new(), false),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Serve `/metrics` on `listener` until the task is dropped. A connection
/// beyond `CONCURRENT` is closed at once, and a request must arrive within
/// `HEAD_DEADLINE`: idle connections cannot hold the slots Prometheus needs.
pub async fn serve(listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        tokio::spawn(async move {
            let head = tokio::time::timeout(HEAD_DEADLINE, read_head(&mut stream))
                .await
                .ok()
                .flatten();
            let route = head.as_deref().map_or(Route::BadRequest, route);
            let out = respond(&route, || super::get().encode());
            let _ = tokio::time::timeout(DEADLINE, async {
                let _ = stream.write_all(&out).await;
                let _ = stream.shutdown().await;
            })
            .await;
            drop(permit);
        });
    }
}

/// Read up to the blank line that ends a request head; None when it is too
/// long or the client goes away first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
        if memchr::memmem::find(&buf, b"\r\n\r\n").is_some()
            || memchr::memmem::find(&buf, b"\n\n").is_some()
        {
            return Some(buf);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics {
                head_only: false,
                openmetrics: false
            }
        );
        assert_eq!(
            route(b"HEAD /metrics?x=1 HTTP/1.0\r\nACCEPT: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"),
            Route::Metrics {
                head_only: true,
                openmetrics: true
            }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"garbage"), Route::BadRequest);
    }

    #[test]
    fn responses_carry_length_and_type() {
        let om = |head_only| Route::Metrics {
            head_only,
            openmetrics: true,
        };
        let text = String::from_utf8(respond(&om(false), || "a 1\n".into())).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 4\r\n"));
        assert!(text.contains(OPENMETRICS));
        assert!(text.ends_with("\r\n\r\na 1\n"));
        let head = respond(&om(true), || "a 1\n".into());
        assert!(String::from_utf8(head).unwrap().ends_with("\r\n\r\n"));
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\n\
                  x_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\n\
             x_bytes_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
