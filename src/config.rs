//! The configuration file (TOML) parsed into a typed `Config`, with defaults for
//! every key and validation. Pure: no sockets, no global state. Unknown keys are
//! errors naming the file, line and key (`check-config` exits 2).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

pub const DEFAULT_PATH: &str = "/etc/maildird/maildird.toml";

/// The whole configuration. Field names are the config keys (maildird.toml(5)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Greeting, `Received:` and Maildir unique names. Default: the system host name.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Local domains; RCPT to any other domain is refused (`550 5.7.1`, no relay).
    #[serde(default)]
    pub domains: Vec<String>,
    /// The Maildir of user U is `{mail_root}/{U}/`.
    #[serde(default = "default_mail_root")]
    pub mail_root: PathBuf,
    /// Dovecot passwd-file format.
    #[serde(default = "default_users_file")]
    pub users_file: PathBuf,
    /// Optional `alias: user[, user...]` lines.
    #[serde(default)]
    pub aliases_file: Option<PathBuf>,
    /// `alice+tag@` delivers to `alice`. Empty string: no delimiter.
    #[serde(default = "default_delimiter")]
    pub recipient_delimiter: String,
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Privileges are dropped to this user/group when started as root.
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default = "default_user")]
    pub group: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub keepalive: Keepalive,
    #[serde(default)]
    pub smtp: SmtpOptions,
    #[serde(default)]
    pub pop3: Pop3Options,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The OpenMetrics endpoint; off when absent.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The resolver of the sender checks.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Sender checks (SPF, DKIM, DMARC, iprev) on smtp listeners; off when absent.
    #[serde(default)]
    pub checks: Option<ChecksConfig>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Mailbox quotas and the per-sender rate (`[quota]`).
    #[serde(default)]
    pub quota: QuotaConfig,
    /// Milters by name (`[milter.NAME]`), used by listeners' `message_filters`.
    #[serde(default)]
    pub milter: std::collections::BTreeMap<String, crate::msgfilter::MilterConfig>,
    /// Filter programs by name (`[exec.NAME]`), used by `message_filters`.
    #[serde(default)]
    pub exec: std::collections::BTreeMap<String, crate::msgfilter::ExecConfig>,
    /// Per-filter settings by filter name (`[filter.log]`, `[filter.exec.NAME]`).
    #[serde(default, rename = "filter")]
    pub filters: toml::Table,
    /// The file and text this config was parsed from, so that errors found
    /// later (filter chains) can name the file and line.
    #[serde(skip)]
    pub source: Source,
}

/// Where a config came from: the file name and its text.
#[derive(Debug, Clone, Default)]
pub struct Source {
    origin: String,
    text: std::sync::Arc<str>,
}

impl Source {
    /// `file:line` of the value at `path` (table keys; a number indexes an
    /// array, as in `["listener", "0", "filters"]`), or of the deepest part
    /// of it that exists; None without a source text.
    fn locate(&self, path: &[&str]) -> Option<String> {
        use toml::de::{DeTable, DeValue};
        let root = DeTable::parse(&self.text).ok()?;
        let mut at: Option<usize> = None;
        let mut table = Some(root.get_ref());
        let mut value: Option<&DeValue<'_>> = None;
        for part in path {
            let next = match (table, value) {
                (Some(t), _) => t.iter().find(|(k, _)| k.get_ref() == part).map(|(_, v)| v),
                (None, Some(DeValue::Array(a))) => {
                    part.parse::<usize>().ok().and_then(|i| a.get(i))
                }
                _ => None,
            };
            let Some(next) = next else { break };
            at = Some(next.span().start);
            value = Some(next.get_ref());
            table = next.get_ref().as_table();
        }
        Some(format!("{}:{}", self.origin, line_of(&self.text, at?)))
    }
}

/// `[dns]`: the resolver of the sender checks (maildird.toml(5), DNS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (address and port); empty: those of `/etc/resolv.conf`.
    pub nameservers: Vec<std::net::SocketAddr>,
    /// One query's timeout (each server is tried twice).
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What a failed check does (maildird.toml(5), CHECKS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckPolicy {
    /// Only the `Authentication-Results:` header.
    Record,
    /// Refuse the message (`550`).
    Reject,
    /// Deliver it into the `.Junk` folder.
    Junk,
}

/// What a temporary DNS failure during the checks does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempErrorPolicy {
    /// Deliver with `temperror` recorded.
    Record,
    /// `451 4.4.3`: the client tries again later.
    Defer,
}

/// `[checks]`: inbound sender authentication (RFC 7208, 6376, 7489, 8601).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChecksConfig {
    pub spf: CheckPolicy,
    pub dkim: CheckPolicy,
    pub dmarc: CheckPolicy,
    pub temperror: TempErrorPolicy,
    /// Messages verified at once; each is held in memory while it is.
    pub max_concurrent: usize,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            spf: CheckPolicy::Record,
            dkim: CheckPolicy::Record,
            dmarc: CheckPolicy::Record,
            temperror: TempErrorPolicy::Record,
            max_concurrent: 4,
        }
    }
}

impl CheckPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckPolicy::Record => "record",
            CheckPolicy::Reject => "reject",
            CheckPolicy::Junk => "junk",
        }
    }
}

/// `[quota]`: the default mailbox quota and the per-sender rate limit
/// (maildird.toml(5), QUOTA).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Dovecot's rule syntax (`*:storage=1G`) for users whose entry has no
    /// `userdb_quota_rule`; None: no quota for them.
    pub rule: Option<String>,
    /// Messages one sender may send one mailbox per `sender_window`; 0: no limit.
    pub sender_rate: u32,
    #[serde(deserialize_with = "de_duration")]
    pub sender_window: Duration,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            rule: None,
            sender_rate: 0,
            sender_window: Duration::from_secs(3600),
        }
    }
}

/// `[metrics]`: where `GET /metrics` is served (maildird(8), "Metrics").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// An address and port, e.g. `127.0.0.1:9465`. It is not authenticated:
    /// keep it on loopback or behind a firewall.
    pub bind: std::net::SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// New connections per IP per minute (Postfix's anvil rate); 0: unlimited.
    pub max_connection_rate_per_ip: u32,
    /// The per-IP limits and the login back-off count IPv4 clients by this many
    /// leading bits (1..=32; 32: each address on its own).
    pub ipv4_prefix: u32,
    /// The same for IPv6 clients (1..=128; 64: one subnet, what a site gets).
    pub ipv6_prefix: u32,
    #[serde(deserialize_with = "de_size")]
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Longest SMTP command line, CRLF included (RFC 5321 §4.5.3.1.4 says at least 512).
    #[serde(deserialize_with = "de_size")]
    pub max_command_line: u64,
    /// Longest line of message text, CRLF included (RFC 5321 §4.5.3.1.6 says 1000).
    /// Longer lines are never chopped: the message is refused.
    #[serde(deserialize_with = "de_size")]
    pub max_text_line: u64,
    /// Protocol errors tolerated per session before `421 4.7.0` / `-ERR` and close.
    pub max_errors: u32,
    /// RFC 5321 §4.5.3.2: waiting for a command.
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// A client that sends nothing at all this long after connecting is dropped
    /// (shorter than command_timeout: silent connections only hold a slot).
    #[serde(deserialize_with = "de_duration")]
    pub greeting_timeout: Duration,
    /// RFC 5321 §4.5.3.2: between reads of DATA/BDAT content.
    #[serde(deserialize_with = "de_duration")]
    pub data_timeout: Duration,
    /// RFC 1939 §3: POP3 autologout timer, at least 10 minutes.
    #[serde(deserialize_with = "de_duration")]
    pub pop3_idle_timeout: Duration,
    /// Failed logins per connection before it is closed.
    pub auth_failures: u32,
    /// Delay before answering a failed login.
    #[serde(deserialize_with = "de_duration")]
    pub auth_failure_delay: Duration,
    /// Password hashes verified at once (argon2id costs 64 MiB each).
    pub hash_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 500,
            max_connections_per_ip: 20,
            max_connection_rate_per_ip: 0,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_command_line: 2048,
            max_text_line: 65536,
            max_errors: 20,
            command_timeout: Duration::from_secs(300),
            greeting_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(180),
            pop3_idle_timeout: Duration::from_secs(600),
            auth_failures: 3,
            auth_failure_delay: Duration::from_secs(2),
            hash_concurrency: 2,
        }
    }
}

/// TCP keep-alive and user timeout for accepted connections.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    pub enabled: bool,
    #[serde(deserialize_with = "de_duration")]
    pub idle: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    pub count: u32,
    /// TCP_USER_TIMEOUT: unacknowledged data for this long kills the connection. 0: off.
    #[serde(deserialize_with = "de_duration")]
    pub user_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            enabled: true,
            idle: Duration::from_secs(120),
            interval: Duration::from_secs(30),
            count: 4,
            user_timeout: Duration::from_secs(240),
        }
    }
}

/// What to do with a bare LF inside DATA (a bare LF never ends DATA either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLf {
    /// Treat it as a line ending (Postfix 3.9 `smtpd_forbid_bare_newline = normalize`).
    Normalize,
    /// Refuse the message with `554 5.6.0`.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpOptions {
    pub bare_lf: BareLf,
    /// Add `Delivered-To:` when the message has a single recipient mailbox.
    pub delivered_to: bool,
    /// Offer AUTH (submission listeners) without TLS to non-loopback peers.
    pub allow_plaintext_auth: bool,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        SmtpOptions {
            bare_lf: BareLf::Normalize,
            delivered_to: true,
            allow_plaintext_auth: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Options {
    /// Allow USER/PASS and AUTH PLAIN without TLS from non-loopback peers
    /// (the inverse of Dovecot's `disable_plaintext_auth`).
    pub allow_plaintext_auth: bool,
    /// RETR/TOP of a whole message marks it seen (`:2,S`) for mutt.
    pub retr_marks_seen: bool,
    /// A mailbox lock older than this, whose holder cannot be checked, is broken.
    #[serde(deserialize_with = "de_duration")]
    pub lock_stale_after: Duration,
}

impl Default for Pop3Options {
    fn default() -> Self {
        Pop3Options {
            allow_plaintext_auth: false,
            retr_marks_seen: false,
            lock_stale_after: Duration::from_secs(1800),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// A TLS handshake (implicit TLS or STARTTLS/STLS) must finish within this.
    #[serde(
        default = "default_handshake_timeout",
        deserialize_with = "de_duration"
    )]
    pub handshake_timeout: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Smtp,
    Submission,
    Pop3,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Pop3 => "pop3",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Matches `FileDescriptorName=` of the socket unit.
    pub name: String,
    pub protocol: Protocol,
    /// Bound by the daemon only when systemd passed no socket of this name.
    #[serde(default, deserialize_with = "de_opt_addr")]
    pub bind: Option<SocketAddr>,
    /// Wire -> protocol order.
    #[serde(default)]
    pub filters: Vec<String>,
    #[serde(default)]
    pub starttls: bool,
    /// Message filters after DATA, in order: `milter.NAME`, `exec.NAME`.
    #[serde(default)]
    pub message_filters: Vec<String>,
    /// This listener's TCP keep-alive, replacing `[keepalive]` (e.g. shorter
    /// for POP3 clients behind NAT).
    #[serde(default)]
    pub keepalive: Option<Keepalive>,
}

/// A config error, already formatted with file and line where known.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn settings_exist(filters: &toml::Table, name: &str) -> bool {
    let mut parts = name.split('.');
    let Some(mut v) = parts.next().and_then(|p| filters.get(p)) else {
        return false;
    };
    for p in parts {
        match v.as_table().and_then(|t| t.get(p)) {
            Some(next) => v = next,
            None => return false,
        }
    }
    true
}

/// The 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    1 + text
        .get(..at.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
}

/// The dotted key a value error is about (`limits.max_recipients`), which
/// `toml` keeps but shows only in its Display without the input attached.
fn error_key(e: &toml::de::Error) -> Option<String> {
    let mut bare = e.clone();
    bare.set_input(None);
    bare.to_string()
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("in `")?
                .strip_suffix('`')
                .map(str::to_string)
        })
        .filter(|k| !k.is_empty())
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        let mut cfg = Self::parse(&text, &path.display().to_string())?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        cfg.resolve_relative(&dir);
        Ok(cfg)
    }

    /// Parse and validate config text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let msg = e.message().trim_end();
            let msg = match error_key(&e) {
                Some(key) if !msg.contains(&format!("`{key}`")) => format!("{key}: {msg}"),
                _ => msg.to_string(),
            };
            match line {
                Some(l) => ConfigError(format!("{origin}:{l}: {msg}")),
                None => ConfigError(format!("{origin}: {msg}")),
            }
        })?;
        let mut cfg = cfg;
        cfg.validate()
            .map_err(|m| ConfigError(format!("{origin}: {m}")))?;
        cfg.source = Source {
            origin: origin.to_string(),
            text: text.into(),
        };
        Ok(cfg)
    }

    /// `file:line` of listener `index`'s `filters` list (or of the listener).
    pub fn listener_filters_at(&self, index: usize) -> Option<String> {
        self.source
            .locate(&["listener", &index.to_string(), "filters"])
    }

    /// `file:line` of the `[filter.NAME]` table (`exec.rot13`: `[filter.exec.rot13]`),
    /// if the file has one.
    pub fn filter_table_at(&self, name: &str) -> Option<String> {
        let path: Vec<&str> = std::iter::once("filter").chain(name.split('.')).collect();
        // Only the table itself, not the nearest parent that exists.
        settings_exist(&self.filters, name).then(|| self.source.locate(&path))?
    }

    /// Relative paths in the file are relative to the file's directory.
    fn resolve_relative(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.mail_root);
        fix(&mut self.users_file);
        fix(&mut self.control_socket);
        if let Some(a) = self.aliases_file.as_mut() {
            fix(a);
        }
        if let Some(t) = self.tls.as_mut() {
            fix(&mut t.cert);
            fix(&mut t.key);
        }
        // `[filter.tls] ca` (the tunnel's trust anchor) is a path like the others.
        if let Some(toml::Value::String(ca)) = self
            .filters
            .get_mut("tls")
            .and_then(|t| t.as_table_mut())
            .and_then(|t| t.get_mut("ca"))
        {
            let mut p = PathBuf::from(&*ca);
            fix(&mut p);
            *ca = p.to_string_lossy().into_owned();
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.hostname.is_empty()
            || !self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(format!(
                "hostname {:?} is not a valid domain name",
                self.hostname
            ));
        }
        for d in &self.domains {
            if d.is_empty() || d.contains(['@', ' ', '/']) {
                return Err(format!("domains: {d:?} is not a domain name"));
            }
        }
        if self.recipient_delimiter.chars().count() > 1 {
            return Err("recipient_delimiter must be one character or empty".into());
        }
        let l = &self.limits;
        if l.max_command_line < 512 {
            return Err(
                "limits.max_command_line must be at least 512 (RFC 5321 §4.5.3.1.4)".into(),
            );
        }
        if l.max_text_line < 1000 {
            return Err("limits.max_text_line must be at least 1000 (RFC 5321 §4.5.3.1.6)".into());
        }
        if l.max_recipients < 100 {
            return Err("limits.max_recipients must be at least 100 (RFC 5321 §4.5.3.1.8)".into());
        }
        if l.pop3_idle_timeout < Duration::from_secs(600) {
            return Err("limits.pop3_idle_timeout must be at least 10m (RFC 1939 §3)".into());
        }
        if l.max_connections == 0 || l.max_connections_per_ip == 0 || l.hash_concurrency == 0 {
            return Err("limits: connection caps and hash_concurrency must be at least 1".into());
        }
        if self.checks.as_ref().is_some_and(|c| c.max_concurrent == 0) {
            return Err("checks.max_concurrent must be at least 1".into());
        }
        if let Some(r) = &self.quota.rule {
            crate::maildir::quota::parse_rule(r).map_err(|e| format!("quota.rule: {e}"))?;
        }
        if self.quota.sender_window.is_zero() {
            return Err("quota.sender_window must be more than 0".into());
        }
        if self.dns.timeout.is_zero() {
            return Err("dns.timeout must be more than 0".into());
        }
        if !(1..=32).contains(&l.ipv4_prefix) {
            return Err(format!(
                "limits.ipv4_prefix must be 1 to 32, not {}",
                l.ipv4_prefix
            ));
        }
        if !(1..=128).contains(&l.ipv6_prefix) {
            return Err(format!(
                "limits.ipv6_prefix must be 1 to 128, not {}",
                l.ipv6_prefix
            ));
        }
        let mut names = std::collections::HashSet::new();
        for li in &self.listeners {
            if !names.insert(li.name.as_str()) {
                return Err(format!("listener {:?} is defined twice", li.name));
            }
            if li.starttls && self.tls.is_none() {
                return Err(format!(
                    "listener {:?}: starttls needs a [tls] section",
                    li.name
                ));
            }
            for f in &li.message_filters {
                crate::msgfilter::Filter::resolve(f, &self.milter, &self.exec)
                    .map_err(|e| format!("listener {:?}: {e}", li.name))?;
            }
            // Filter names and settings are checked when the chains are built.
            let implicit_tls = li.filters.iter().any(|f| f == "tls");
            if implicit_tls && self.tls.is_none() {
                return Err(format!(
                    "listener {:?}: the tls filter needs a [tls] section",
                    li.name
                ));
            }
            if implicit_tls && li.starttls {
                return Err(format!(
                    "listener {:?}: starttls makes no sense with implicit tls in filters",
                    li.name
                ));
            }
        }
        Ok(())
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    /// The effective configuration as TOML (for `check-config`).
    pub fn to_toml(&self) -> String {
        crate::config::effective::render(self)
    }
}

mod effective {
    //! Renders the effective config for `check-config`.
    use super::*;
    use std::fmt::Write;

    fn dur(d: Duration) -> String {
        format!("\"{}s\"", d.as_secs())
    }

    pub fn render(c: &Config) -> String {
        let mut s = String::new();
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let _ = writeln!(s, "hostname = {:?}", c.hostname);
        let _ = writeln!(s, "domains = {:?}", c.domains);
        let _ = writeln!(s, "mail_root = {}", q(&c.mail_root));
        let _ = writeln!(s, "users_file = {}", q(&c.users_file));
        if let Some(a) = &c.aliases_file {
            let _ = writeln!(s, "aliases_file = {}", q(a));
        }
        let _ = writeln!(s, "recipient_delimiter = {:?}", c.recipient_delimiter);
        let _ = writeln!(s, "control_socket = {}", q(&c.control_socket));
        let _ = writeln!(s, "user = {:?}\ngroup = {:?}", c.user, c.group);
        let l = &c.limits;
        let _ = writeln!(
            s,
            "\n[limits]\nmax_connections = {}\nmax_connections_per_ip = {}\nmax_connection_rate_per_ip = {}\nipv4_prefix = {}\nipv6_prefix = {}\nmax_message_size = {}\nmax_recipients = {}\nmax_command_line = {}\nmax_text_line = {}\nmax_errors = {}\ncommand_timeout = {}\ngreeting_timeout = {}\ndata_timeout = {}\npop3_idle_timeout = {}\nauth_failures = {}\nauth_failure_delay = {}\nhash_concurrency = {}",
            l.max_connections,
            l.max_connections_per_ip,
            l.max_connection_rate_per_ip,
            l.ipv4_prefix,
            l.ipv6_prefix,
            l.max_message_size,
            l.max_recipients,
            l.max_command_line,
            l.max_text_line,
            l.max_errors,
            dur(l.command_timeout),
            dur(l.greeting_timeout),
            dur(l.data_timeout),
            dur(l.pop3_idle_timeout),
            l.auth_failures,
            dur(l.auth_failure_delay),
            l.hash_concurrency
        );
        let k = &c.keepalive;
        let _ = writeln!(
            s,
            "\n[keepalive]\nenabled = {}\nidle = {}\ninterval = {}\ncount = {}\nuser_timeout = {}",
            k.enabled,
            dur(k.idle),
            dur(k.interval),
            k.count,
            dur(k.user_timeout)
        );
        let _ = writeln!(
            s,
            "\n[smtp]\nbare_lf = {:?}\ndelivered_to = {}\nallow_plaintext_auth = {}",
            if c.smtp.bare_lf == BareLf::Normalize {
                "normalize"
            } else {
                "reject"
            },
            c.smtp.delivered_to,
            c.smtp.allow_plaintext_auth
        );
        let p = &c.pop3;
        let _ = writeln!(
            s,
            "\n[pop3]\nallow_plaintext_auth = {}\nretr_marks_seen = {}\nlock_stale_after = {}",
            p.allow_plaintext_auth,
            p.retr_marks_seen,
            dur(p.lock_stale_after)
        );
        if let Some(t) = &c.tls {
            let _ = writeln!(
                s,
                "\n[tls]\ncert = {}\nkey = {}\nhandshake_timeout = {}",
                q(&t.cert),
                q(&t.key),
                dur(t.handshake_timeout)
            );
        }
        if let Some(m) = &c.metrics {
            let _ = writeln!(s, "\n[metrics]\nbind = \"{}\"", m.bind);
        }
        let servers: Vec<String> = c.dns.nameservers.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "\n[dns]\nnameservers = {servers:?}\ntimeout = {}",
            dur(c.dns.timeout)
        );
        if let Some(k) = &c.checks {
            let _ = writeln!(
                s,
                "\n[checks]\nspf = \"{}\"\ndkim = \"{}\"\ndmarc = \"{}\"\ntemperror = \"{}\"\nmax_concurrent = {}",
                k.spf.as_str(),
                k.dkim.as_str(),
                k.dmarc.as_str(),
                if k.temperror == TempErrorPolicy::Defer {
                    "defer"
                } else {
                    "record"
                },
                k.max_concurrent
            );
        }
        let _ = writeln!(
            s,
            "\n[quota]\n{}sender_rate = {}\nsender_window = {}",
            c.quota
                .rule
                .as_ref()
                .map(|r| format!("rule = {r:?}\n"))
                .unwrap_or_default(),
            c.quota.sender_rate,
            dur(c.quota.sender_window)
        );
        for (n, m) in &c.milter {
            let _ = writeln!(
                s,
                "\n[milter.{n}]\naddress = {:?}\ntimeout = {}\non_error = \"{}\"",
                m.address,
                dur(m.timeout),
                m.on_error.as_str()
            );
        }
        for (n, e) in &c.exec {
            let _ = writeln!(
                s,
                "\n[exec.{n}]\ncommand = {:?}\nresult = \"{}\"\ntimeout = {}\non_error = \"{}\"",
                e.command,
                if e.result == crate::msgfilter::ExecResult::Message {
                    "message"
                } else {
                    "exit_code"
                },
                dur(e.timeout),
                e.on_error.as_str()
            );
        }
        for li in &c.listeners {
            let _ = writeln!(
                s,
                "\n[[listener]]\nname = {:?}\nprotocol = \"{}\"",
                li.name, li.protocol
            );
            if let Some(b) = li.bind {
                let _ = writeln!(s, "bind = \"{b}\"");
            }
            let _ = writeln!(s, "filters = {:?}\nstarttls = {}", li.filters, li.starttls);
            if !li.message_filters.is_empty() {
                let _ = writeln!(s, "message_filters = {:?}", li.message_filters);
            }
            if let Some(k) = &li.keepalive {
                let _ = writeln!(
                    s,
                    "keepalive = {{ enabled = {}, idle = {}, interval = {}, count = {}, user_timeout = {} }}",
                    k.enabled,
                    dur(k.idle),
                    dur(k.interval),
                    k.count,
                    dur(k.user_timeout)
                );
            }
        }
        s
    }
}

fn default_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
fn default_mail_root() -> PathBuf {
    "/var/lib/maildird/mail".into()
}
fn default_users_file() -> PathBuf {
    "/etc/maildird/users".into()
}
fn default_delimiter() -> String {
    "+".into()
}
fn default_control_socket() -> PathBuf {
    "/run/maildird/control.sock".into()
}
fn default_user() -> String {
    "maildird".into()
}

/// `2097152`, `"25M"`, `"64K"`, `"1G"` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1024),
        b'M' | b'm' => (&s[..s.len() - 1], 1024 * 1024),
        b'G' | b'g' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// `300`, `"300s"`, `"5m"`, `"2h"`, `"1d"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b's' => (&s[..s.len() - 1], 1),
        b'm' => (&s[..s.len() - 1], 60),
        b'h' => (&s[..s.len() - 1], 3600),
        b'd' => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    Some(Duration::from_secs(
        num.trim().parse::<u64>().ok()?.checked_mul(mult)?,
    ))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_size(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("invalid size {s:?} (use bytes or a K/M/G suffix)"))
        }),
    }
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(Duration::from_secs(n)),
        NumOrStr::Str(s) => parse_duration(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} (use seconds or a s/m/h/d suffix)"
            ))
        }),
    }
}

fn de_opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid bind address {s:?} (use IP:PORT or [IPv6]:PORT)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_file() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.mail_root, PathBuf::from("/var/lib/maildird/mail"));
        assert_eq!(c.limits.max_recipients, 1000);
        assert_eq!(c.recipient_delimiter, "+");
        assert!(c.listeners.is_empty());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = Config::parse(
            "hostname = \"a.example\"\n\n[limits]\nmax_conections = 3\n",
            "/etc/x.toml",
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.starts_with("/etc/x.toml:4:"), "{m}");
        assert!(m.contains("max_conections"), "{m}");
    }

    #[test]
    fn type_errors_name_file_line_and_dotted_key() {
        let m = |text: &str| Config::parse(text, "f.toml").unwrap_err().to_string();
        assert_eq!(
            m("hostname = \"a\"\n[limits]\nmax_recipients = \"x\"\n"),
            "f.toml:3: limits.max_recipients: invalid type: string \"x\", expected usize"
        );
        assert_eq!(
            m("hostname = 5\n"),
            "f.toml:1: hostname: invalid type: integer `5`, expected a string"
        );
        let e = m("limits = { max_message_size = \"lots\" }\n");
        assert!(
            e.starts_with("f.toml:1: limits.max_message_size: invalid size"),
            "{e}"
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let m = Config::parse("a = 1\nbogus = 2\n", "f")
            .unwrap_err()
            .to_string();
        assert!(m.starts_with("f:1:") && m.contains("`a`"), "{m}");
    }

    #[test]
    fn sizes_and_durations() {
        let c = Config::parse(
            "[limits]\nmax_message_size = \"10M\"\ncommand_timeout = \"2m\"\ndata_timeout = 90\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.limits.max_message_size, 10 * 1024 * 1024);
        assert_eq!(c.limits.command_timeout, Duration::from_secs(120));
        assert_eq!(c.limits.data_timeout, Duration::from_secs(90));
        for (s, v) in [
            ("25M", Some(25 << 20)),
            ("64k", Some(64 << 10)),
            ("100", Some(100)),
            ("x", None),
            ("", None),
            ("-1", None),
        ] {
            assert_eq!(parse_size(s), v, "{s}");
        }
        for (s, v) in [
            ("5m", Some(300)),
            ("10", Some(10)),
            ("1d", Some(86400)),
            ("m", None),
            ("3w", None),
        ] {
            assert_eq!(parse_duration(s).map(|d| d.as_secs()), v, "{s}");
        }
        assert!(
            Config::parse("[limits]\nmax_message_size = \"lots\"\n", "t")
                .unwrap_err()
                .to_string()
                .starts_with("t:2:")
        );
    }

    #[test]
    fn listeners_parse_and_validate() {
        let c = Config::parse("[[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\nbind = \"127.0.0.1:2525\"\n\n[[listener]]\nname = \"pop3\"\nprotocol = \"pop3\"\nbind = \"[::1]:1110\"\n", "t").unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listener("pop3").unwrap().protocol, Protocol::Pop3);
        assert!(Config::parse("[[listener]]\nname = \"a\"\nprotocol = \"imap\"\n", "t").is_err());
        assert!(
            Config::parse(
                "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\nbind = \"nowhere\"\n",
                "t"
            )
            .is_err()
        );
        let dup = "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\n[[listener]]\nname = \"a\"\nprotocol = \"pop3\"\n";
        assert!(
            Config::parse(dup, "t")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            Config::parse(
                "[[listener]]\nname = \"a\"\nprotocol = \"smtp\"\nstarttls = true\n",
                "t"
            )
            .is_err()
        );
        let c = Config::parse(
            "[[listener]]\nname = \"p\"\nprotocol = \"pop3\"\nkeepalive = { idle = \"20s\" }\n",
            "t",
        )
        .unwrap();
        let k = c.listener("p").unwrap().keepalive.as_ref().unwrap();
        assert_eq!(
            (k.idle, k.interval),
            (Duration::from_secs(20), Keepalive::default().interval)
        );
        let again = Config::parse(&c.to_toml(), "t").unwrap();
        let k2 = again.listener("p").unwrap().keepalive.as_ref().unwrap();
        assert_eq!(k2.idle, Duration::from_secs(20));
    }

    #[test]
    fn rfc_minimums_are_enforced() {
        assert!(Config::parse("[limits]\nmax_recipients = 50\n", "t").is_err());
        assert!(Config::parse("[limits]\npop3_idle_timeout = \"5m\"\n", "t").is_err());
        assert!(Config::parse("[limits]\nmax_command_line = 100\n", "t").is_err());
        assert!(Config::parse("hostname = \"bad host\"\n", "t").is_err());
    }

    #[test]
    fn client_network_prefixes() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!((c.limits.ipv4_prefix, c.limits.ipv6_prefix), (32, 64));
        let c = Config::parse("[limits]\nipv4_prefix = 24\nipv6_prefix = 48\n", "t").unwrap();
        assert_eq!((c.limits.ipv4_prefix, c.limits.ipv6_prefix), (24, 48));
        for ok in [
            "ipv4_prefix = 1",
            "ipv4_prefix = 32",
            "ipv6_prefix = 1",
            "ipv6_prefix = 128",
        ] {
            assert!(
                Config::parse(&format!("[limits]\n{ok}\n"), "t").is_ok(),
                "{ok}"
            );
        }
        for (bad, says) in [
            ("ipv4_prefix = 0", "limits.ipv4_prefix must be 1 to 32"),
            ("ipv4_prefix = 33", "limits.ipv4_prefix must be 1 to 32"),
            ("ipv6_prefix = 0", "limits.ipv6_prefix must be 1 to 128"),
            ("ipv6_prefix = 129", "limits.ipv6_prefix must be 1 to 128"),
            // Type errors name the line.
            ("ipv6_prefix = -1", "t:2"),
            ("ipv4_prefix = \"24\"", "t:2"),
        ] {
            let e = Config::parse(&format!("[limits]\n{bad}\n"), "t")
                .err()
                .unwrap_or_else(|| panic!("{bad} was accepted"))
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // check-config shows them.
        let shown = Config::parse("[limits]\nipv6_prefix = 56\n", "t")
            .unwrap()
            .to_toml();
        assert!(
            shown.contains("ipv4_prefix = 32\nipv6_prefix = 56\n"),
            "{shown}"
        );
    }

    #[test]
    fn tls_sections_and_listener_rules() {
        let c = Config::parse("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n", "t").unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!(t.handshake_timeout, Duration::from_secs(30));
        assert!(!c.smtp.allow_plaintext_auth);
        let implicit =
            "[[listener]]\nname = \"smtps\"\nprotocol = \"submission\"\nfilters = [\"tls\"]\n";
        let e = Config::parse(implicit, "t").unwrap_err().to_string();
        assert!(e.contains("needs a [tls] section"), "{e}");
        let with_tls = format!("[tls]\ncert = \"c\"\nkey = \"k\"\n{implicit}");
        assert!(Config::parse(&with_tls, "t").is_ok());
        let both = format!("{with_tls}starttls = true\n");
        let e = Config::parse(&both, "t").unwrap_err().to_string();
        assert!(e.contains("starttls makes no sense"), "{e}");
    }

    #[test]
    fn relative_tls_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[tls]\ncert = \"c.pem\"\nkey = \"/abs/k.pem\"\nhandshake_timeout = \"1m\"\n[filter.tls]\nca = \"ca.pem\"\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let t = c.tls.as_ref().unwrap();
        assert_eq!(t.cert, base.join("c.pem"));
        assert_eq!(t.key, PathBuf::from("/abs/k.pem"));
        assert_eq!(t.handshake_timeout, Duration::from_secs(60));
        let ca = c.filters["tls"]["ca"].as_str().unwrap();
        assert_eq!(PathBuf::from(ca), base.join("ca.pem"));
    }
}
