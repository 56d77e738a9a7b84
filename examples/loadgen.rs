//! A load generator for maildird and its peers (Postfix, Dovecot): SMTP delivery
//! and POP3 retrieval over loopback, verifying every reply. Kept out of the daemon
//! binary: `cargo run --release --example loadgen -- smtp 127.0.0.1:2525 ...`.
//!
//! SMTP: `--count` messages of `--size` body bytes over `--conc` connections,
//! `--per-conn` messages per connection, optionally pipelined (RFC 2920). With
//! `--maildir DIR` it waits (bounded) until every acknowledged message is a file in
//! `DIR/new` or `DIR/cur`: delivered = acknowledged AND present.
//! POP3: `--sessions` logins, `--conc` at a time, each STAT, LIST, then RETR of
//! every message (`--pipeline N` RETRs in flight), checking each RETR's octets
//! against LIST, then QUIT (no DELE, so runs repeat).
//!
//! Idle: `--conns` connections that each read the greeting (and log in with
//! `--login`), then the server process tree's memory (PSS, from /proc; root or
//! the same user) before and after gives KiB per idle connection, and `--probes`
//! fresh sessions measure how responsive the server stays meanwhile.
//!
//! Output: `key value` lines, or one JSON object with `--json`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print one JSON object instead of key value lines.
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, global = true, default_value_t = 300)]
    time_limit: u64,
    /// Client side of a filter chain on every connection (e.g. `zlib`), the
    /// same code `maildird tunnel` uses; the server's listener needs the same.
    #[arg(long, global = true, value_delimiter = ',')]
    filters: Vec<String>,
}

/// The `--filters` chain, set once in main.
static CHAIN: std::sync::OnceLock<maildird::filter::FilterChain> = std::sync::OnceLock::new();

#[derive(Subcommand)]
enum Cmd {
    Smtp(SmtpArgs),
    Pop3(Pop3Args),
    Idle(IdleArgs),
}

#[derive(clap::Args)]
struct SmtpArgs {
    addr: SocketAddr,
    #[arg(long, default_value_t = 10)]
    conc: usize,
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Body bytes per message.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 1)]
    per_conn: usize,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pipelining: bool,
    #[arg(long, default_value = "alice@example.org")]
    rcpt: String,
    /// Count delivered files here (new/ and cur/).
    #[arg(long)]
    maildir: Option<PathBuf>,
    /// Seconds to wait for acknowledged messages to appear in --maildir.
    #[arg(long, default_value_t = 120)]
    drain_timeout: u64,
}

#[derive(clap::Args)]
struct Pop3Args {
    addr: SocketAddr,
    #[arg(long, default_value_t = 1)]
    conc: usize,
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// `{i}` is replaced by the worker slot (one mailbox per concurrent session).
    #[arg(long)]
    user: String,
    #[arg(long)]
    pass: String,
    /// RETRs in flight.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Fail unless every session sees this many messages.
    #[arg(long)]
    expect_msgs: Option<u64>,
}

#[derive(clap::Args)]
struct IdleArgs {
    addr: SocketAddr,
    /// Idle connections to hold open.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    #[arg(long, value_enum, default_value = "smtp")]
    proto: Proto,
    /// POP3: log in as USER:PASS (`{i}` in USER = connection number modulo --users).
    #[arg(long)]
    login: Option<String>,
    #[arg(long, default_value_t = 10)]
    users: usize,
    /// The server's main process; its whole process tree is measured.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Fresh sessions (greeting, QUIT) timed while the idle ones are open.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 100)]
    parallel: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Proto {
    Smtp,
    Pop3,
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

/// A line-oriented client connection.
struct Client {
    r: BufReader<Reader>,
    w: Writer,
    line: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, Error> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w): (Reader, Writer) = match CHAIN.get().filter(|c| !c.is_empty()) {
            None => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Some(chain) => {
                let mut meta = maildird::filter::ConnMeta::default();
                let io = chain.apply(Box::new(s), &mut meta).await?;
                let (r, w) = tokio::io::split(io);
                (Box::new(r), Box::new(w))
            }
        };
        Ok(Client {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
            line: String::new(),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.w.write_all(bytes).await?;
        // A filter such as zlib holds output until flushed.
        self.w.flush().await?;
        Ok(())
    }

    async fn read_line(&mut self) -> Result<&str, Error> {
        self.line.clear();
        if self.r.read_line(&mut self.line).await? == 0 {
            return Err("connection closed".into());
        }
        Ok(self.line.trim_end())
    }

    /// An SMTP reply (multi-line aware); fails unless its code is `want`.
    async fn smtp_reply(&mut self, want: u16) -> Result<(), Error> {
        loop {
            let l = self.read_line().await?;
            let code: u16 = l
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("bad reply {l:?}"))?;
            if l.as_bytes().get(3) != Some(&b'-') {
                if code != want {
                    return Err(format!("expected {want}, got {l:?}").into());
                }
                return Ok(());
            }
        }
    }

    async fn pop_ok(&mut self) -> Result<String, Error> {
        let l = self.read_line().await?;
        if !l.starts_with("+OK") {
            return Err(format!("expected +OK, got {l:?}").into());
        }
        Ok(l.to_string())
    }

    /// A POP3 multi-line body; returns its octets (CRLF included, stuffing removed).
    async fn pop_multiline(&mut self) -> Result<u64, Error> {
        let mut octets = 0u64;
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            if self.r.read_until(b'\n', &mut buf).await? == 0 {
                return Err("connection closed in a multi-line reply".into());
            }
            if buf == b".\r\n" {
                return Ok(octets);
            }
            let stuffed = usize::from(buf.first() == Some(&b'.'));
            octets += (buf.len() - stuffed) as u64;
        }
    }
}

fn message(size: usize, seq: usize) -> Vec<u8> {
    let mut m =
        format!("From: load@example.net\r\nTo: rcpt@example.org\r\nSubject: load {seq}\r\n\r\n")
            .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopq\r\n";
    let mut left = size;
    while left > 0 {
        let n = left.min(line.len());
        if n < line.len() {
            m.extend_from_slice(&line[..n.saturating_sub(2)]);
            m.extend_from_slice(b"\r\n");
        } else {
            m.extend_from_slice(line);
        }
        left -= n;
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn count_files(md: &std::path::Path) -> u64 {
    ["new", "cur"]
        .iter()
        .filter_map(|d| std::fs::read_dir(md.join(d)).ok())
        .map(|it| {
            it.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))
            })
            .count() as u64
        })
        .sum()
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc/self/stat (clock ticks of 100 Hz).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn report(json: bool, pairs: &[(&str, String)]) {
    if json {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| match v.parse::<f64>() {
                Ok(_) => format!("\"{k}\": {v}"),
                Err(_) => format!("\"{k}\": {v:?}"),
            })
            .collect();
        println!("{{{}}}", body.join(", "));
    } else {
        for (k, v) in pairs {
            println!("{k} {v}");
        }
    }
}

async fn smtp(a: SmtpArgs, json: bool) -> Result<(), Error> {
    let SmtpArgs {
        addr,
        conc,
        count,
        size,
        per_conn,
        pipelining,
        rcpt,
        maildir,
        drain_timeout,
    } = a;
    let per_conn = per_conn.max(1);
    let before = maildir.as_deref().map(count_files).unwrap_or(0);
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let body = Arc::new(message(size, 0));
    let envelope = Arc::new(format!(
        "MAIL FROM:<load@example.net>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
    ));
    let start = Instant::now();
    let cpu0 = cpu_seconds();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, acked, body, envelope) =
            (next.clone(), acked.clone(), body.clone(), envelope.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let first = next.fetch_add(per_conn as u64, Ordering::Relaxed) as usize;
                if first >= count {
                    return Ok::<_, Error>(lat);
                }
                let n = per_conn.min(count - first);
                let mut c = Client::connect(addr).await?;
                c.smtp_reply(220).await?;
                c.send(b"EHLO loadgen.example.net\r\n").await?;
                c.smtp_reply(250).await?;
                for _ in 0..n {
                    let t = Instant::now();
                    if pipelining {
                        c.send(envelope.as_bytes()).await?;
                        c.smtp_reply(250).await?;
                        c.smtp_reply(250).await?;
                        c.smtp_reply(354).await?;
                    } else {
                        let mut parts = envelope.split_inclusive("\r\n");
                        for want in [250, 250, 354] {
                            c.send(parts.next().unwrap_or("").as_bytes()).await?;
                            c.smtp_reply(want).await?;
                        }
                    }
                    c.send(&body).await?;
                    c.smtp_reply(250).await?;
                    acked.fetch_add(1, Ordering::Relaxed);
                    lat.push(t.elapsed());
                }
                c.send(b"QUIT\r\n").await?;
                c.smtp_reply(221).await?;
            }
        }));
    }
    let mut lat = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => lat.extend(l),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let acked_at = start.elapsed();
    let acked = acked.load(Ordering::Relaxed);
    let mut delivered = acked;
    let mut done_at = acked_at;
    if let Some(md) = &maildir {
        let deadline = Instant::now() + Duration::from_secs(drain_timeout);
        loop {
            delivered = count_files(md).saturating_sub(before);
            if delivered >= acked || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done_at = start.elapsed();
    }
    let client_cpu = cpu_seconds() - cpu0;
    report(
        json,
        &[
            ("proto", "smtp".into()),
            ("conc", conc.to_string()),
            ("size", size.to_string()),
            ("pipelining", pipelining.to_string()),
            ("acked", acked.to_string()),
            ("delivered", delivered.to_string()),
            ("errors", errors.len().to_string()),
            (
                "accepted_per_s",
                format!("{:.1}", acked as f64 / acked_at.as_secs_f64()),
            ),
            (
                "e2e_per_s",
                format!("{:.1}", delivered as f64 / done_at.as_secs_f64()),
            ),
            ("p50_ms", format!("{:.2}", percentile(&mut lat, 0.5))),
            ("p99_ms", format!("{:.2}", percentile(&mut lat, 0.99))),
            ("client_cpu_s", format!("{client_cpu:.2}")),
        ],
    );
    if let Some(e) = errors.first() {
        return Err(format!("{} connections failed; first: {e}", errors.len()).into());
    }
    if acked != count as u64 || delivered != acked {
        return Err(format!("acknowledged {acked} of {count}, delivered {delivered}").into());
    }
    Ok(())
}

async fn pop3(a: Pop3Args, json: bool) -> Result<(), Error> {
    let Pop3Args {
        addr,
        conc,
        sessions,
        user,
        pass,
        pipeline,
        expect_msgs: expect,
    } = a;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for slot in 0..conc {
        let next = next.clone();
        let user = user.replace("{i}", &slot.to_string());
        let pass = pass.clone();
        tasks.push(tokio::spawn(async move {
            let (mut msgs, mut octets, mut lat) = (0u64, 0u64, Vec::new());
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < sessions {
                let t = Instant::now();
                let mut c = Client::connect(addr).await?;
                c.pop_ok().await?;
                c.send(format!("USER {user}\r\nPASS {pass}\r\n").as_bytes())
                    .await?;
                c.pop_ok().await?;
                c.pop_ok().await?;
                c.send(b"LIST\r\n").await?;
                c.pop_ok().await?;
                let mut sizes = Vec::new();
                loop {
                    let l = c.read_line().await?;
                    if l == "." {
                        break;
                    }
                    let size: u64 = l
                        .split(' ')
                        .nth(1)
                        .and_then(|s| s.parse().ok())
                        .ok_or("bad LIST line")?;
                    sizes.push(size);
                }
                if let Some(n) = expect
                    && sizes.len() as u64 != n
                {
                    return Err(format!("{user}: {} messages, expected {n}", sizes.len()).into());
                }
                let window = pipeline.max(1);
                let mut sent = 0;
                for (i, want) in sizes.iter().enumerate() {
                    while sent < sizes.len() && sent < i + window {
                        c.send(format!("RETR {}\r\n", sent + 1).as_bytes()).await?;
                        sent += 1;
                    }
                    c.pop_ok().await?;
                    let got = c.pop_multiline().await?;
                    if got != *want {
                        return Err(
                            format!("RETR {}: {got} octets, LIST said {want}", i + 1).into()
                        );
                    }
                    msgs += 1;
                    octets += got;
                }
                c.send(b"QUIT\r\n").await?;
                c.pop_ok().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, Error>((msgs, octets, lat))
        }));
    }
    let (mut msgs, mut octets, mut lat, mut errors) = (0, 0, Vec::new(), Vec::new());
    for t in tasks {
        match t.await {
            Ok(Ok((m, o, l))) => {
                msgs += m;
                octets += o;
                lat.extend(l);
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report(
        json,
        &[
            ("proto", "pop3".into()),
            ("conc", conc.to_string()),
            ("sessions", sessions.to_string()),
            ("msgs", msgs.to_string()),
            ("errors", errors.len().to_string()),
            ("msgs_per_s", format!("{:.1}", msgs as f64 / secs)),
            ("mb_per_s", format!("{:.1}", octets as f64 / secs / 1e6)),
            (
                "session_p50_ms",
                format!("{:.2}", percentile(&mut lat, 0.5)),
            ),
            (
                "session_p99_ms",
                format!("{:.2}", percentile(&mut lat, 0.99)),
            ),
        ],
    );
    match errors.first() {
        Some(e) => Err(format!("{} sessions failed; first: {e}", errors.len()).into()),
        None => Ok(()),
    }
}

/// Memory of a process and all its descendants, from /proc: (processes,
/// sum of RSS KiB, sum of PSS KiB).
fn tree_memory(root: u32) -> (usize, u64, u64) {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent.insert(pid, pp);
        }
    }
    let in_tree = |mut p: u32| loop {
        if p == root {
            return true;
        }
        match parent.get(&p) {
            Some(&pp) if pp != 0 && pp != p => p = pp,
            _ => return false,
        }
    };
    let (mut n, mut rss, mut pss) = (0, 0, 0);
    for &pid in parent.keys().filter(|&&p| in_tree(p)) {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
            continue;
        };
        n += 1;
        for l in s.lines() {
            let mut f = l.split_whitespace();
            let (k, v) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok()));
            match (k, v) {
                (Some("Rss:"), Some(v)) => rss += v,
                (Some("Pss:"), Some(v)) => pss += v,
                _ => {}
            }
        }
    }
    (n, rss, pss)
}

/// Opens one idle session: greeting, then EHLO (SMTP) or a login (POP3).
async fn idle_one(
    addr: SocketAddr,
    proto: Proto,
    login: Option<(String, String)>,
) -> Result<Client, Error> {
    let mut c = Client::connect(addr).await?;
    match proto {
        Proto::Smtp => {
            c.smtp_reply(220).await?;
            c.send(b"EHLO idle.example.net\r\n").await?;
            c.smtp_reply(250).await?;
        }
        Proto::Pop3 => {
            c.pop_ok().await?;
            if let Some((u, p)) = login {
                c.send(format!("USER {u}\r\n").as_bytes()).await?;
                c.pop_ok().await?;
                c.send(format!("PASS {p}\r\n").as_bytes()).await?;
                c.pop_ok().await?;
            }
        }
    }
    // Drop the client's own large buffer; only the socket stays.
    c.r = BufReader::with_capacity(64, c.r.into_inner());
    Ok(c)
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn idle(a: IdleArgs, json: bool) -> Result<(), Error> {
    let IdleArgs {
        addr,
        conns,
        proto,
        login,
        users,
        server_pid,
        probes,
        parallel,
    } = a;
    raise_nofile();
    let login = match login {
        Some(l) => {
            let (u, p) = l.split_once(':').ok_or("--login wants USER:PASS")?;
            Some((u.to_string(), p.to_string()))
        }
        None => None,
    };
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let before = server_pid.map(tree_memory);
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let sem = sem.clone();
        let login = login
            .as_ref()
            .map(|(u, p)| (u.replace("{i}", &(i % users.max(1)).to_string()), p.clone()));
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            idle_one(addr, proto, login).await
        }));
    }
    let mut held = Vec::with_capacity(conns);
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    settle().await;
    let after = server_pid.map(tree_memory);
    // Responsiveness: fresh sessions, one after another, while all are held.
    let mut lat = Vec::new();
    for _ in 0..probes {
        let t = Instant::now();
        let mut c = idle_one(addr, proto, None).await?;
        c.send(b"QUIT\r\n").await?;
        match proto {
            Proto::Smtp => c.smtp_reply(221).await?,
            Proto::Pop3 => drop(c.pop_ok().await?),
        }
        lat.push(t.elapsed());
    }
    let n = held.len().max(1) as f64;
    let mut pairs = vec![
        (
            "proto",
            if proto == Proto::Smtp { "smtp" } else { "pop3" }.to_string(),
        ),
        ("logged_in", login.is_some().to_string()),
        ("conns", held.len().to_string()),
        ("errors", errors.len().to_string()),
        ("open_s", format!("{open_s:.2}")),
        ("probe_p50_ms", format!("{:.2}", percentile(&mut lat, 0.5))),
        ("probe_max_ms", format!("{:.2}", percentile(&mut lat, 1.0))),
    ];
    if let (Some((p0, r0, s0)), Some((p1, r1, s1))) = (before, after) {
        pairs.extend([
            ("server_processes_before", p0.to_string()),
            ("server_processes_after", p1.to_string()),
            ("server_pss_kib_before", s0.to_string()),
            ("server_pss_kib_after", s1.to_string()),
            (
                "rss_kib_per_conn",
                format!("{:.2}", (r1 as f64 - r0 as f64) / n),
            ),
            (
                "pss_kib_per_conn",
                format!("{:.2}", (s1 as f64 - s0 as f64) / n),
            ),
        ]);
    }
    report(json, &pairs);
    drop(held);
    if let Some(e) = errors.first() {
        return Err(format!("{} connections failed; first: {e}", errors.len()).into());
    }
    if before.is_some_and(|b| b.0 == 0) {
        return Err("the server's process tree could not be read (run as root?)".into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let chain = maildird::config::Config::parse("", "defaults")
        .map_err(|e| e.to_string())
        .and_then(|c| {
            maildird::filter::Registry::builtin()
                .build(&c, &args.filters, maildird::filter::Side::Client)
                .map_err(|e| e.to_string())
        });
    match chain {
        Ok(c) => {
            let _ = CHAIN.set(c);
        }
        Err(e) => {
            eprintln!("loadgen: --filters: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let limit = Duration::from_secs(args.time_limit);
    let result = rt.block_on(async {
        let work = async {
            match args.cmd {
                Cmd::Smtp(a) => smtp(a, args.json).await,
                Cmd::Pop3(a) => pop3(a, args.json).await,
                Cmd::Idle(a) => idle(a, args.json).await,
            }
        };
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r,
            Err(_) => Err(format!("time limit of {}s reached", limit.as_secs()).into()),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
