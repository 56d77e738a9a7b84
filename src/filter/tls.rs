//! The `tls` transport filter (rustls, ring provider): implicit TLS on listeners
//! that list it (465 submissions, 995 pop3s), the TLS client side for
//! `maildird tunnel`, and `StartTls`, which inserts TLS at the wire end of a
//! running connection for STARTTLS (RFC 3207) and STLS (RFC 2595). The server
//! certificate is shared by all of them and reloadable without dropping sessions.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::{BoxFuture, BoxedIo, ConnMeta, Factory, Filter, FilterContext, Side, WireHandle};
use crate::config::TlsConfig;

/// Used when no `[tls]` section gives a handshake timeout (client side).
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

fn provider() -> Arc<CryptoProvider> {
    // Explicit provider: `ServerConfig::builder()` panics if a dependency ever
    // enables a second one (research/crates.md §6).
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and key into a `CertifiedKey`; errors name the file.
fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tls cert {}: no CERTIFICATE in the PEM file",
            cert.display()
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls key {}: {e}", key.display()))?;
    CertifiedKey::from_der(certs, key_der, &provider())
        .map_err(|e| format!("tls cert {} / key {}: {e}", cert.display(), key.display()))
}

/// The current certificate; `resolve` hands out a clone of the `Arc`, so a
/// reload affects only handshakes that start afterwards.
struct ReloadableCert(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for ReloadableCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReloadableCert")
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// The daemon's TLS server side, built once from `[tls]` and shared by every
/// implicit-TLS listener and every STARTTLS/STLS upgrade.
pub struct TlsServer {
    cert_path: PathBuf,
    key_path: PathBuf,
    resolver: Arc<ReloadableCert>,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServer")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

impl TlsServer {
    /// Load the certificate and key named in `[tls]`. The error names the file
    /// (the daemon maps it to exit 2).
    pub fn load(cfg: &TlsConfig) -> Result<Arc<TlsServer>, String> {
        let ck = load_certified_key(&cfg.cert, &cfg.key)?;
        let resolver = Arc::new(ReloadableCert(RwLock::new(Arc::new(ck))));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(Arc::new(TlsServer {
            cert_path: cfg.cert.clone(),
            key_path: cfg.key.clone(),
            resolver,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: cfg.handshake_timeout,
        }))
    }

    /// Re-read the certificate and key (SIGHUP). New handshakes use the new
    /// certificate; sessions already encrypted keep theirs. On error the old
    /// certificate stays. After the privilege drop the files must be readable
    /// by the service user.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load_certified_key(&self.cert_path, &self.key_path)?;
        *self.resolver.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// Run the server handshake on `io`, bounded by `[tls] handshake_timeout`.
    pub async fn accept(&self, io: BoxedIo) -> io::Result<BoxedIo> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io)).await {
            Ok(Ok(tls)) => Ok(Box::new(tls)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "tls handshake timed out",
            )),
        }
    }
}

/// Implicit TLS on a listener: the handshake happens before the greeting.
struct ServerFilter {
    server: Arc<TlsServer>,
}

impl Filter for ServerFilter {
    fn name(&self) -> &str {
        "tls"
    }

    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        Box::pin(async move {
            let tls = self.server.accept(io).await?;
            meta.tls = true;
            Ok(tls)
        })
    }
}

/// The TLS client (`maildird tunnel`): verifies the server against `ca`.
struct ClientFilter {
    connector: tokio_rustls::TlsConnector,
    /// `[filter.tls] server_name`, or the host the tunnel connects to; else the
    /// peer's IP address at connect time.
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

impl Filter for ClientFilter {
    fn name(&self) -> &str {
        "tls"
    }

    fn wrap<'a>(
        &'a self,
        io: BoxedIo,
        meta: &'a mut ConnMeta,
    ) -> BoxFuture<'a, io::Result<BoxedIo>> {
        Box::pin(async move {
            let name = match (&self.server_name, meta.peer) {
                (Some(n), _) => n.clone(),
                (None, Some(peer)) => ServerName::IpAddress(peer.ip().into()),
                (None, None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "tls: no server_name and no peer address to verify",
                    ));
                }
            };
            let connect = self.connector.connect(name, io);
            match tokio::time::timeout(self.handshake_timeout, connect).await {
                Ok(Ok(tls)) => {
                    meta.tls = true;
                    Ok(Box::new(tls) as BoxedIo)
                }
                Ok(Err(e)) => Err(io::Error::new(
                    e.kind(),
                    format!("tls handshake failed: {e}"),
                )),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tls handshake timed out",
                )),
            }
        })
    }
}

/// `[filter.tls]` holds only the client's settings; like every filter table,
/// unknown keys are errors (maildird.toml(5), FILTER SETTINGS).
fn check_keys(ctx: &FilterContext<'_>) -> Result<(), String> {
    let Some(settings) = ctx.settings else {
        return Ok(());
    };
    let table = settings
        .as_table()
        .ok_or_else(|| format!("[filter.{}] must be a table", ctx.name))?;
    match table
        .keys()
        .find(|k| !matches!(k.as_str(), "ca" | "server_name"))
    {
        Some(other) => Err(format!("unknown setting {other:?} (ca, server_name)")),
        None => Ok(()),
    }
}

/// A string setting of `[filter.tls]`.
fn setting<'a>(ctx: &'a FilterContext<'_>, key: &str) -> Result<Option<&'a str>, String> {
    match ctx.settings.and_then(|s| s.get(key)) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("[filter.{}] {key} must be a string", ctx.name)),
    }
}

/// Build the client side from `[filter.tls] ca` and `server_name`
/// (`default_host`: the host `maildird tunnel` connects to).
fn client_filter(
    ctx: &FilterContext<'_>,
    default_host: Option<&str>,
) -> Result<Arc<dyn Filter>, String> {
    check_keys(ctx)?;
    let ca = setting(ctx, "ca")?.ok_or_else(|| {
        format!(
            "the tls client needs [filter.{}] ca = \"FILE\": the PEM certificate(s) of the \
             CA that signed the server's certificate (there is no system trust store)",
            ctx.name
        )
    })?;
    let ca_path = PathBuf::from(ca);
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&ca_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls ca {}: {e}", ca_path.display()))?;
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "tls ca {}: no usable CA certificate",
            ca_path.display()
        ));
    }
    let server_name = match setting(ctx, "server_name")?.or(default_host) {
        Some(n) => Some(
            ServerName::try_from(n.to_string())
                .map_err(|e| format!("tls server_name {n:?}: {e}"))?,
        ),
        None => None,
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let handshake_timeout = ctx
        .config
        .tls
        .as_ref()
        .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout);
    Ok(Arc::new(ClientFilter {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
        handshake_timeout,
    }))
}

/// The factory registered under `tls` by `Registry::builtin()`: the server side
/// loads its own certificate from `[tls]` (the daemon replaces this with
/// `server_factory` so all listeners share one reloadable certificate).
pub fn factory() -> Factory {
    Arc::new(|ctx: &FilterContext<'_>| match ctx.side {
        Side::Server => {
            check_keys(ctx)?;
            let cfg = ctx
                .config
                .tls
                .as_ref()
                .ok_or("implicit tls needs a [tls] section with cert and key")?;
            let server = TlsServer::load(cfg)?;
            Ok(Arc::new(ServerFilter { server }) as Arc<dyn Filter>)
        }
        Side::Client => client_filter(ctx, None),
    })
}

/// The `tls` factory the daemon registers: the server side uses `server`.
pub fn server_factory(server: Arc<TlsServer>) -> Factory {
    Arc::new(move |ctx: &FilterContext<'_>| match ctx.side {
        Side::Server => check_keys(ctx).map(|()| {
            Arc::new(ServerFilter {
                server: server.clone(),
            }) as Arc<dyn Filter>
        }),
        Side::Client => client_filter(ctx, None),
    })
}

/// The `tls` factory for `maildird tunnel HOST:PORT`: the client verifies the
/// certificate against `host` unless `[filter.tls] server_name` says otherwise.
pub fn client_factory(host: String) -> Factory {
    Arc::new(move |ctx: &FilterContext<'_>| client_filter(ctx, Some(&host)))
}

/// Switching a running connection to TLS, for STARTTLS and STLS. Sessions hold
/// an `Arc<dyn Upgrade>`, so their tests can pass a fake.
pub trait Upgrade: Send + Sync + 'static {
    /// Run the server handshake at the wire end of the connection. The session
    /// must have flushed its reply and checked that no input is buffered. On
    /// error the connection is unusable and the session must end.
    fn upgrade(&self) -> BoxFuture<'_, io::Result<()>>;
}

/// The real upgrade: take the raw stream out of the `Wire`, handshake, put the
/// TLS stream back; filters above the wire (e.g. `log`) keep their place.
pub struct StartTls {
    server: Arc<TlsServer>,
    wire: WireHandle,
}

impl StartTls {
    pub fn new(server: Arc<TlsServer>, wire: WireHandle) -> StartTls {
        StartTls { server, wire }
    }
}

impl Upgrade for StartTls {
    fn upgrade(&self) -> BoxFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let raw = self.wire.take().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "the wire is already taken")
            })?;
            // On failure nothing is put back: the Wire then fails every read and
            // write, which ends the session.
            let tls = self.server.accept(raw).await?;
            self.wire.put(tls);
            Ok(())
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Config;
    use crate::filter::{Registry, Wire};
    use std::process::Command;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and a `localhost` / 127.0.0.1 server certificate made by openssl.
    pub(crate) struct TestPki {
        pub dir: tempfile::TempDir,
    }

    impl TestPki {
        pub(crate) fn new(cn: &str) -> TestPki {
            let dir = tempfile::tempdir().unwrap();
            let sh = format!(
                "set -e
                openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                  -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca 2>/dev/null
                openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                  -keyout key.pem -out srv.csr -subj /CN={cn} 2>/dev/null
                printf 'basicConstraints=critical,CA:FALSE\\nsubjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext
                openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                  -days 2 -extfile ext -out cert.pem 2>/dev/null"
            );
            let ok = Command::new("sh")
                .arg("-c")
                .arg(sh)
                .current_dir(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "openssl failed");
            TestPki { dir }
        }

        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        pub(crate) fn tls_config(&self) -> TlsConfig {
            TlsConfig {
                cert: self.path("cert.pem"),
                key: self.path("key.pem"),
                handshake_timeout: Duration::from_secs(10),
            }
        }

        pub(crate) fn server(&self) -> Arc<TlsServer> {
            TlsServer::load(&self.tls_config()).unwrap()
        }

        /// A client trusting this CA.
        pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let cfg = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(Arc::new(cfg))
        }
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    /// The leaf certificate the server presented, as lossy text: the CN is a
    /// printable string inside the DER, so a substring test finds it without an
    /// X.509 parser.
    fn peer_cn<S>(tls: &tokio_rustls::client::TlsStream<S>) -> String {
        let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        String::from_utf8_lossy(&der).into_owned()
    }

    #[test]
    fn load_errors_name_the_file() {
        let pki = TestPki::new("one");
        let mut cfg = pki.tls_config();
        cfg.cert = pki.path("missing.pem");
        let e = TlsServer::load(&cfg).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let mut cfg = pki.tls_config();
        cfg.key = pki.path("cert.pem"); // no key in there
        let e = TlsServer::load(&cfg).unwrap_err();
        assert!(e.contains("tls key") && e.contains("cert.pem"), "{e}");
        let mut cfg = pki.tls_config();
        cfg.key = pki.path("ca.key"); // a key that does not match the certificate
        let e = TlsServer::load(&cfg).unwrap_err();
        assert!(e.contains("ca.key"), "{e}");
    }

    #[tokio::test]
    async fn implicit_tls_filter_and_reload() {
        let pki = TestPki::new("first-cert");
        let server = pki.server();
        let cfg = Config::parse(
            &format!(
                "[tls]\ncert = {:?}\nkey = {:?}\n",
                pki.path("cert.pem"),
                pki.path("key.pem")
            ),
            "t",
        )
        .unwrap();
        let mut reg = Registry::builtin();
        reg.register("tls", server_factory(server.clone()));
        let chain = reg.build(&cfg, &["tls".into()], Side::Server).unwrap();
        let mut trusted = pki.connector();
        let mut keep = Vec::new();
        for expect in ["first-cert", "second-cert"] {
            let (client, srv) = tokio::io::duplex(4096);
            let chain2 = chain.clone();
            let task = tokio::spawn(async move {
                let mut meta = ConnMeta::default();
                let mut io = chain2.apply(Box::new(srv), &mut meta).await.unwrap();
                assert!(meta.tls);
                io.write_all(b"hello\r\n").await.unwrap();
                io.flush().await.unwrap();
                let mut buf = [0u8; 4];
                io.read_exact(&mut buf).await.unwrap();
                buf
            });
            let mut tls = trusted.connect(localhost(), client).await.unwrap();
            assert!(peer_cn(&tls).contains(expect));
            let mut buf = [0u8; 7];
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello\r\n");
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            assert_eq!(&task.await.unwrap(), b"ping");
            // Replace the files and reload: the next handshake sees the new cert.
            let next = TestPki::new("second-cert");
            for f in ["cert.pem", "key.pem"] {
                std::fs::copy(next.path(f), pki.path(f)).unwrap();
            }
            server.reload().unwrap();
            trusted = next.connector();
            keep.push(next);
        }
        // A failed reload keeps the old certificate.
        std::fs::write(pki.path("cert.pem"), "garbage").unwrap();
        assert!(server.reload().is_err());
    }

    #[tokio::test]
    async fn starttls_swaps_the_wire_under_the_chain() {
        let pki = TestPki::new("starttls");
        let (mut client, srv) = tokio::io::duplex(4096);
        let (mut wire, handle) = Wire::new(Box::new(srv));
        let up = StartTls::new(pki.server(), handle);
        let server = tokio::spawn(async move {
            wire.write_all(b"220 go\r\n").await.unwrap();
            wire.flush().await.unwrap();
            up.upgrade().await.unwrap();
            wire.write_all(b"secret\r\n").await.unwrap();
            wire.flush().await.unwrap();
        });
        let mut buf = [0u8; 8];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"220 go\r\n");
        let mut tls = pki.connector().connect(localhost(), client).await.unwrap();
        tls.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"secret\r\n");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn failed_handshake_leaves_the_wire_empty() {
        let pki = TestPki::new("x");
        let (mut client, srv) = tokio::io::duplex(4096);
        let (mut wire, handle) = Wire::new(Box::new(srv));
        let up = StartTls::new(pki.server(), handle);
        client
            .write_all(b"RSET\r\nnot a client hello\r\n")
            .await
            .unwrap();
        assert!(up.upgrade().await.is_err());
        assert!(wire.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn client_side_verifies_against_ca() {
        let pki = TestPki::new("tunnel");
        let server = pki.server();
        let cfg = Config::parse(
            &format!("[filter.tls]\nca = {:?}\n", pki.path("ca.pem")),
            "t",
        )
        .unwrap();
        // Without `ca` the client side refuses to start, and says why.
        let bare = Config::parse("", "t").unwrap();
        let e = Registry::builtin()
            .build(&bare, &["tls".into()], Side::Client)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca = "), "{e}");
        for (host, ok) in [("localhost", true), ("wrong.example", false)] {
            let mut reg = Registry::builtin();
            reg.register("tls", client_factory(host.into()));
            let chain = reg.build(&cfg, &["tls".into()], Side::Client).unwrap();
            let (c, s) = tokio::io::duplex(4096);
            let srv = server.clone();
            let accept = tokio::spawn(async move { srv.accept(Box::new(s)).await.is_ok() });
            let mut meta = ConnMeta::default();
            let r = chain.apply(Box::new(c), &mut meta).await;
            assert_eq!(r.is_ok(), ok, "{host}");
            assert_eq!(meta.tls, ok);
            if ok {
                assert!(accept.await.unwrap());
            }
        }
    }
}
