//! Transport filters (README, "Transport filters"; like DataSnap's TTransportFilter): each filter wraps
//! the connection's byte stream and returns a new one. A listener's chain is
//! built by name from a `Registry`, in wire -> protocol order, and applied to
//! every connection. The wire end is a `Wire`, a slot where STARTTLS/STLS insert
//! TLS at run time below every other filter.

pub mod chains;
pub mod exec;
pub mod log;
pub mod proxy;
pub mod tls;
mod wire;
pub mod zlib;

pub use wire::{Wire, WireHandle};

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Config;
pub use crate::stream::BoxedIo;

/// A boxed future, as filters are trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the chain knows about a connection; filters may refine it (PROXY sets the
/// real peer, TLS sets `tls`).
#[derive(Debug, Clone, Default)]
pub struct ConnMeta {
    pub id: u64,
    pub listener: String,
    /// The client: the TCP peer, or the address a trusted PROXY header named.
    pub peer: Option<SocketAddr>,
    /// The TCP peer as accepted (the proxy itself when PROXY is used).
    pub tcp_peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// The connection is encrypted (implicit TLS, or after STARTTLS/STLS).
    pub tls: bool,
}

/// A transport filter. Implement this and `Registry::register` it to add your own.
pub trait Filter: Send + Sync + 'static {
    /// The name used in `filters = [...]`.
    fn name(&self) -> &str;
    /// Wrap `io` (the stream toward the wire) and return the stream toward the
    /// protocol. May read or write (a handshake, a PROXY header) before returning.
    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>>;
    /// May the stream `wrap` returns hold input back: bytes already read from
    /// the wire side but not yet handed to the protocol (a decompressor's
    /// window, a decrypted record, a pipe to another process)? STARTTLS/STLS
    /// can only check the session's own buffer, so plaintext held in such a
    /// filter would be read after the handshake as if it came over TLS
    /// (CVE-2011-0411 class): a listener with `starttls = true` refuses these
    /// filters. Only a filter that passes every read through as it comes may
    /// answer `false`; the default is the safe side.
    fn may_hold_input(&self) -> bool {
        true
    }
}

/// Which end of the connection a chain is built for: the daemon accepting
/// (`Server`), or `maildird tunnel` connecting (`Client`, e.g. TLS as a client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// What a factory gets to build a filter: the filter's name as listed, its
/// `[filter.NAME]` settings (if any), the side, and the whole config.
pub struct FilterContext<'a> {
    pub name: &'a str,
    pub side: Side,
    pub settings: Option<&'a toml::Value>,
    pub config: &'a Config,
}

/// Builds a filter from its settings; errors are shown as config errors (exit 2).
pub type Factory = Arc<dyn Fn(&FilterContext<'_>) -> Result<Arc<dyn Filter>, String> + Send + Sync>;

/// Filters by name (DataSnap's `TTransportFilterFactory.RegisterFilter`).
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, Factory>,
}

impl Registry {
    /// The built-in filters: `log`, `zlib`, `tls`, `proxy`, `exec.NAME`.
    pub fn builtin() -> Registry {
        let mut r = Registry::new();
        r.register("log", log::factory());
        r.register("zlib", zlib::factory());
        r.register("tls", tls::factory());
        r.register("proxy", proxy::factory());
        r.register("exec", exec::factory());
        r
    }

    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Register (or replace) a filter factory under `name`. Names of the form
    /// `PREFIX.NAME` are looked up by their prefix when not registered whole
    /// (`exec.rot13` -> `exec`).
    pub fn register(&mut self, name: &str, factory: Factory) {
        self.factories.insert(name.to_string(), factory);
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.factories.keys().map(String::as_str)
    }

    fn factory(&self, name: &str) -> Option<&Factory> {
        self.factories.get(name).or_else(|| {
            name.split_once('.')
                .and_then(|(prefix, _)| self.factories.get(prefix))
        })
    }

    /// Build a chain from `names` (wire -> protocol order) with the settings in
    /// `config.filters`.
    pub fn build(
        &self,
        config: &Config,
        names: &[String],
        side: Side,
    ) -> Result<FilterChain, ChainError> {
        check_order(names, side)?;
        check_log_content(&config.filters, names)?;
        let mut filters = Vec::with_capacity(names.len());
        for name in names {
            let factory = self.factory(name).ok_or_else(|| ChainError::Unknown {
                name: name.clone(),
                known: self.names().collect::<Vec<&str>>().join(", "),
            })?;
            let settings = settings_for(&config.filters, name);
            let ctx = FilterContext {
                name,
                side,
                settings,
                config,
            };
            filters.push(factory(&ctx).map_err(|reason| ChainError::Settings {
                name: name.clone(),
                reason,
            })?);
        }
        Ok(FilterChain { filters })
    }
}

/// Orders that cannot work: a filter listed twice; `proxy` anywhere but first on
/// the wire (the header precedes every other byte), or on the client side.
fn check_order(names: &[String], side: Side) -> Result<(), ChainError> {
    for (i, name) in names.iter().enumerate() {
        if names.get(..i).is_some_and(|before| before.contains(name)) {
            return Err(ChainError::Twice(name.clone()));
        }
        if name == "proxy" {
            if side == Side::Client {
                return Err(ChainError::ProxyInTunnel);
            }
            if i != 0 {
                return Err(ChainError::ProxyNotFirst);
            }
        }
    }
    Ok(())
}

/// Filters below which the bytes are not the protocol's text.
const OPAQUE: [&str; 2] = ["tls", "zlib"];

/// `log` with `content = true` must sit above `tls` and `zlib` (later in the
/// list): below them it would log ciphertext or DEFLATE data as "lines". Byte
/// counts alone may be taken anywhere (below `zlib` they count the wire).
fn check_log_content(filters: &toml::Table, names: &[String]) -> Result<(), ChainError> {
    let content = settings_for(filters, "log")
        .and_then(|v| v.get("content"))
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    let Some(log) = names.iter().position(|n| n == "log") else {
        return Ok(());
    };
    match names[log..].iter().find(|n| OPAQUE.contains(&n.as_str())) {
        Some(under) if content => Err(ChainError::LogContentBelow(under.clone())),
        _ => Ok(()),
    }
}

/// Why a filter chain cannot be built: a configuration error (exit 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("unknown filter {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    /// The filter's own settings were refused.
    #[error("filter {name:?}: {reason}")]
    Settings { name: String, reason: String },
    #[error("filter {0:?} is listed twice")]
    Twice(String),
    #[error("filter \"proxy\" only works on listeners, not in a tunnel")]
    ProxyInTunnel,
    #[error(
        "filter \"proxy\" must be first in the list (the PROXY header is the first thing on the wire)"
    )]
    ProxyNotFirst,
    /// `log` with `content = true` listed before `tls` or `zlib`.
    #[error(
        "filter \"log\" with [filter.log] content = true is listed before {0:?}, so it \
         would log encrypted or compressed bytes: list it after {0:?}"
    )]
    LogContentBelow(String),
    /// STARTTLS over a filter that may hold input back; `implicit` is the
    /// list to use instead (implicit TLS).
    #[error(
        "listener {listener:?}: starttls = true cannot be used with filter {holder:?}: \
         it may hold back input that STARTTLS/STLS cannot see, so plaintext sent after \
         the command could be read as if it came over TLS; use implicit TLS instead \
         (filters = {implicit:?} without starttls, on its own port)"
    )]
    StartTlsOverBuffering {
        listener: String,
        holder: String,
        implicit: Vec<String>,
    },
    /// An error in one listener's chain.
    #[error("listener {listener:?}: {error}")]
    Listener {
        listener: String,
        error: Box<ChainError>,
    },
    /// An error with the `file:line` of the config it comes from.
    #[error("{at}: {error}")]
    Located { at: String, error: Box<ChainError> },
}

impl ChainError {
    /// With `at` (`file:line`) in front, when known.
    pub fn at(self, at: Option<String>) -> ChainError {
        match at {
            Some(at) => ChainError::Located {
                at,
                error: Box::new(self),
            },
            None => self,
        }
    }
}

/// `[filter.log]` for `log`, `[filter.exec.rot13]` for `exec.rot13`.
fn settings_for<'a>(table: &'a toml::Table, name: &str) -> Option<&'a toml::Value> {
    let mut parts = name.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// A listener's filters in wire -> protocol order.
#[derive(Clone, Default)]
pub struct FilterChain {
    filters: Vec<Arc<dyn Filter>>,
}

impl FilterChain {
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Is `name` the first filter on the wire side (e.g. `proxy`)?
    pub fn starts_with(&self, name: &str) -> bool {
        self.filters.first().is_some_and(|f| f.name() == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.filters.iter().map(|f| f.name()).collect()
    }

    /// The first filter that may hold input back (`Filter::may_hold_input`).
    pub fn holding_input(&self) -> Option<&str> {
        self.filters
            .iter()
            .find(|f| f.may_hold_input())
            .map(|f| f.name())
    }

    /// A listener offering STARTTLS/STLS may only carry filters that never hold
    /// input back: the upgrade inserts TLS below them and refuses plaintext
    /// pipelined after the command only if it can see it. `listener` and
    /// `names` (the configured list) make the error say what to write instead.
    pub fn check_starttls(&self, listener: &str, names: &[String]) -> Result<(), ChainError> {
        let Some(holder) = self.holding_input() else {
            return Ok(());
        };
        // Implicit TLS: `tls` first on the wire, after a PROXY header if any.
        let mut implicit: Vec<String> = names.to_vec();
        let at = usize::from(implicit.first().map(String::as_str) == Some("proxy"));
        implicit.insert(at, "tls".to_string());
        Err(ChainError::StartTlsOverBuffering {
            listener: listener.to_string(),
            holder: holder.to_string(),
            implicit,
        })
    }

    /// Wrap a connection's stream in every filter, wire end first.
    pub async fn apply(&self, io: BoxedIo, meta: &mut ConnMeta) -> io::Result<BoxedIo> {
        self.apply_with(io, meta, |_, io| io).await
    }

    /// Like `apply`, passing each filter's output through `layer(name, io)`
    /// (the daemon counts bytes per layer for `who`).
    pub async fn apply_with(
        &self,
        mut io: BoxedIo,
        meta: &mut ConnMeta,
        layer: impl Fn(&str, BoxedIo) -> BoxedIo,
    ) -> io::Result<BoxedIo> {
        for f in &self.filters {
            io = layer(f.name(), f.wrap(io, meta).await?);
        }
        Ok(io)
    }
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A test filter that upper-cases what the protocol writes.
    struct Upper;
    struct UpperIo(BoxedIo);

    impl tokio::io::AsyncRead for UpperIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }
    impl tokio::io::AsyncWrite for UpperIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let up = buf.to_ascii_uppercase();
            Pin::new(&mut self.0).poll_write(cx, &up)
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }
    impl Filter for Upper {
        fn name(&self) -> &str {
            "upper"
        }
        fn wrap<'a>(
            &'a self,
            io: BoxedIo,
            meta: &'a mut ConnMeta,
        ) -> BoxFuture<'a, io::Result<BoxedIo>> {
            Box::pin(async move {
                meta.listener.push_str("+upper");
                Ok(Box::new(UpperIo(io)) as BoxedIo)
            })
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register(
            "upper",
            Arc::new(|_ctx: &FilterContext<'_>| Ok(Arc::new(Upper) as Arc<dyn Filter>)),
        );
        r.register(
            "upper2",
            Arc::new(|_ctx: &FilterContext<'_>| Ok(Arc::new(Upper) as Arc<dyn Filter>)),
        );
        r.register(
            "exec",
            Arc::new(|ctx: &FilterContext<'_>| {
                let s = ctx.settings.ok_or("needs settings")?;
                s.get("command").ok_or("needs command")?;
                Ok(Arc::new(Upper) as Arc<dyn Filter>)
            }),
        );
        r
    }

    #[test]
    fn unknown_names_and_settings_are_errors() {
        let cfg = Config::parse("[filter.exec.rot]\ncommand = \"x\"\n", "t").unwrap();
        let r = registry();
        assert!(
            r.build(&cfg, &["nope".into()], Side::Server)
                .unwrap_err()
                .to_string()
                .contains("unknown filter \"nope\"")
        );
        assert_eq!(
            r.build(&cfg, &["exec.rot".into(), "upper".into()], Side::Server)
                .unwrap()
                .names(),
            ["upper", "upper"]
        );
        assert!(
            r.build(&cfg, &["exec.other".into()], Side::Server)
                .unwrap_err()
                .to_string()
                .contains("needs settings")
        );
    }

    #[test]
    fn impossible_orders_are_errors() {
        let cfg = Config::parse("", "t").unwrap();
        let r = Registry::builtin();
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], Side, Option<&str>); 7] = [
            (&["proxy", "log", "zlib"], Side::Server, None),
            (&["log", "zlib"], Side::Client, None),
            (&["log", "proxy"], Side::Server, Some("must be first")),
            (&["proxy"], Side::Client, Some("not in a tunnel")),
            (&["log", "log"], Side::Server, Some("listed twice")),
            (&["zlib", "log", "zlib"], Side::Client, Some("listed twice")),
            (&["lz4"], Side::Server, Some("unknown filter")),
        ];
        for (names, side, want) in cases {
            let got = r.build(&cfg, &v(names), side);
            match want {
                None => assert_eq!(got.unwrap().names(), names),
                Some(w) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(w), "{names:?}: {e}");
                }
            }
        }
    }

    /// `[filter.log] content = true` below `tls` or `zlib` would log ciphertext
    /// or DEFLATE data: refused on both sides. Byte counts alone may go anywhere.
    #[test]
    fn log_content_must_be_above_tls_and_zlib() {
        let counting = Config::parse("", "t").unwrap();
        let content = Config::parse("[filter.log]\ncontent = true\n", "t").unwrap();
        let mut r = Registry::builtin();
        // A stand-in: the real `tls` needs a certificate; only its name matters here.
        r.register(
            "tls",
            Arc::new(|_ctx: &FilterContext<'_>| Ok(Arc::new(Upper) as Arc<dyn Filter>)),
        );
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: [(&[&str], Option<&str>); 7] = [
            (&["log"], None),
            (&["zlib", "log"], None),
            (&["proxy", "tls", "zlib", "log"], None),
            (&["log", "zlib"], Some("zlib")),
            (&["proxy", "log", "tls"], Some("tls")),
            (&["tls", "log", "zlib"], Some("zlib")),
            (&["log", "tls", "zlib"], Some("tls")),
        ];
        for (names, refused) in cases {
            for side in [Side::Server, Side::Client] {
                if side == Side::Client && names.contains(&"proxy") {
                    continue;
                }
                assert!(r.build(&counting, &v(names), side).is_ok(), "{names:?}");
                let got = r.build(&content, &v(names), side);
                match refused {
                    None => assert!(got.is_ok(), "{names:?} {side:?}"),
                    Some(under) => assert_eq!(
                        got.err(),
                        Some(ChainError::LogContentBelow(under.into())),
                        "{names:?} {side:?}"
                    ),
                }
            }
        }
    }

    /// Which filters may sit under STARTTLS: only those that never hold input
    /// back. Custom filters are assumed to hold it (they do not say otherwise).
    #[test]
    fn starttls_refuses_filters_that_may_hold_input() {
        let cfg = Config::parse("[filter.exec.rot]\ncommand = [\"cat\"]\n", "t").unwrap();
        let mut r = Registry::builtin();
        r.register(
            "upper",
            Arc::new(|_ctx: &FilterContext<'_>| Ok(Arc::new(Upper) as Arc<dyn Filter>)),
        );
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (filters, the one refused, the implicit-TLS list suggested)
        let cases: [(&[&str], Option<&str>, &str); 8] = [
            (&[], None, ""),
            (&["log"], None, ""),
            (&["proxy"], None, ""),
            (&["proxy", "log"], None, ""),
            (&["zlib"], Some("zlib"), r#"["tls", "zlib"]"#),
            (&["log", "zlib"], Some("zlib"), r#"["tls", "log", "zlib"]"#),
            (
                &["proxy", "log", "exec.rot"],
                Some("exec.rot"),
                r#"["proxy", "tls", "log", "exec.rot"]"#,
            ),
            (
                &["upper", "log"],
                Some("upper"),
                r#"["tls", "upper", "log"]"#,
            ),
        ];
        for (names, refused, suggestion) in cases {
            let chain = r.build(&cfg, &v(names), Side::Server).unwrap();
            assert_eq!(chain.holding_input(), refused, "{names:?}");
            match refused {
                None => assert_eq!(chain.check_starttls("smtp", &v(names)), Ok(())),
                Some(f) => {
                    let e = chain
                        .check_starttls("smtp", &v(names))
                        .unwrap_err()
                        .to_string();
                    assert!(
                        e.starts_with(&format!(
                            "listener \"smtp\": starttls = true cannot be used with filter \"{f}\""
                        )),
                        "{e}"
                    );
                    assert!(
                        e.contains(&format!("filters = {suggestion} without starttls")),
                        "{e}"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn chain_applies_in_order() {
        let cfg = Config::parse("", "t").unwrap();
        let chain = registry()
            .build(&cfg, &["upper".into(), "upper2".into()], Side::Server)
            .unwrap();
        let (client, server) = tokio::io::duplex(64);
        let mut meta = ConnMeta::default();
        let mut io = chain.apply(Box::new(server), &mut meta).await.unwrap();
        assert_eq!(meta.listener, "+upper+upper");
        io.write_all(b"hi").await.unwrap();
        let mut client = client;
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HI");
    }
}
