//! The random-fault run: 300 deliveries (one to three of alice, bob and carol)
//! from python3 smtplib into a mail_root on its own 16 MiB tmpfs, in phases,
//! each with other faults injected into the running daemon by strace
//! `--inject` (EIO/ENOSPC on openat, write, fsync, linkat, unlinkat,
//! newfstatat, fstat) or a real ENOSPC (the tmpfs filled up). A panic aborts
//! the daemon; it is restarted on the listening sockets the test holds, as
//! systemd would. Afterwards an independent reader (python3, reading the
//! files and `mailbox.Maildir`) checks: every 250 is complete in each
//! accepted recipient's Maildir exactly once and nowhere else, nothing
//! refused is anywhere, nothing partial, `tmp/` clean.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::tools::*;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
/// Deliveries per phase and concurrent clients.
const PER_PHASE: usize = 25;
const CLIENTS: usize = 3;
/// Bound of one phase: its clients must be done by then.
const PHASE_LIMIT: Duration = Duration::from_secs(90);
/// Bound of daemon restarts over the whole run.
const MAX_RESTARTS: usize = 25;
/// Free space left by the "disk full" phase: room for a few messages only.
const LEFT_FREE: u64 = 48 * 1024;

/// One phase: the system calls traced and the strace `--inject` specs.
struct Phase {
    name: &'static str,
    trace: &'static str,
    injects: &'static [&'static str],
    /// Fill the tmpfs up to `LEFT_FREE` for this phase (a real ENOSPC).
    fill: bool,
}

/// `when=N+M`: the Nth call (of that system call, per thread) fails and every
/// Mth after it; steps of 2 or more let an immediate retry succeed.
const PHASES: &[Phase] = &[
    Phase {
        name: "openat EIO",
        trace: "openat",
        injects: &["openat:error=EIO:when=6+11"],
        fill: false,
    },
    Phase {
        name: "fsync EIO",
        trace: "fsync",
        injects: &["fsync:error=EIO:when=3+5"],
        fill: false,
    },
    Phase {
        name: "linkat EIO",
        trace: "linkat",
        injects: &["linkat:error=EIO:when=2+3"],
        fill: false,
    },
    Phase {
        name: "unlinkat EIO",
        trace: "unlinkat",
        injects: &["unlinkat:error=EIO:when=2+3"],
        fill: false,
    },
    Phase {
        name: "linkat EIO + unlinkat EIO (rollback)",
        trace: "linkat,unlinkat",
        injects: &["linkat:error=EIO:when=2+3", "unlinkat:error=EIO:when=1+2"],
        fill: false,
    },
    Phase {
        name: "write EIO (message files, log, the runtime's eventfd)",
        trace: "write",
        injects: &["write:error=EIO:when=12+20"],
        fill: false,
    },
    Phase {
        name: "fsync EIO + unlinkat EIO (rollback)",
        trace: "fsync,unlinkat",
        injects: &["fsync:error=EIO:when=3+4", "unlinkat:error=EIO:when=1+2"],
        fill: false,
    },
    Phase {
        name: "newfstatat EIO + fstat EIO",
        trace: "newfstatat,fstat",
        injects: &["newfstatat:error=EIO:when=3+5", "fstat:error=EIO:when=6+11"],
        fill: false,
    },
    Phase {
        name: "disk full (real ENOSPC, tmpfs filled)",
        trace: "",
        injects: &[],
        fill: true,
    },
    Phase {
        name: "openat ENOSPC + linkat ENOSPC",
        trace: "openat,linkat",
        injects: &[
            "openat:error=ENOSPC:when=6+11",
            "linkat:error=ENOSPC:when=3+5",
        ],
        fill: false,
    },
    Phase {
        name: "write ENOSPC",
        trace: "write",
        injects: &["write:error=ENOSPC:when=15+25"],
        fill: false,
    },
    Phase {
        name: "all of openat, fsync, linkat, unlinkat EIO",
        trace: "openat,fsync,linkat,unlinkat",
        injects: &[
            "openat:error=EIO:when=9+17",
            "fsync:error=EIO:when=4+9",
            "linkat:error=EIO:when=4+7",
            "unlinkat:error=EIO:when=3+5",
        ],
        fill: false,
    },
];

/// A deterministic generator (no flaky seeds): `MAILDIRD_FAULT_SEED` picks
/// another sequence to reproduce or explore.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[derive(Debug, Clone)]
struct Planned {
    id: usize,
    size: usize,
    users: Vec<&'static str>,
    phase: usize,
}

fn plan(seed: u64, phases: usize) -> Vec<Planned> {
    let mut rng = Lcg(seed);
    let mut out = Vec::new();
    for phase in 0..phases {
        for _ in 0..PER_PHASE {
            let n = match rng.next() % 20 {
                0..8 => 1,
                8..15 => 2,
                _ => 3,
            };
            let mut users: Vec<&str> = USERS.to_vec();
            // Fisher-Yates, then the first n.
            for i in (1..users.len()).rev() {
                users.swap(i, (rng.next() % (i as u64 + 1)) as usize);
            }
            users.truncate(n);
            // Mostly small, some up to 24 KiB (several write(2)s).
            let size = match rng.next() % 10 {
                0..6 => 300 + (rng.next() % 2000) as usize,
                6..9 => 2000 + (rng.next() % 8000) as usize,
                _ => 10_000 + (rng.next() % 14_000) as usize,
            };
            out.push(Planned {
                id: out.len(),
                size,
                users,
                phase,
            });
        }
    }
    out
}

/// What the client saw for one delivery.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 250 after DATA: the recipients whose RCPT got 250.
    Acked(BTreeSet<String>),
    /// A 4xx/5xx after DATA, or no recipient accepted, or the session failed
    /// before DATA: the message must be nowhere.
    Refused(String),
    /// The connection broke after DATA was sent (a daemon that aborted): at
    /// most one copy per accepted recipient.
    Unknown(BTreeSet<String>, String),
}

fn outcome(r: &serde_json::Value) -> Outcome {
    let accepted: BTreeSet<String> = r["rcpts"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_str().is_some_and(|s| s.starts_with("250")))
                .map(|(k, _)| k.split('@').next().unwrap_or(k).to_string())
                .collect()
        })
        .unwrap_or_default();
    let data = r["data"].as_str();
    let error = r["error"].as_str().unwrap_or("");
    match data {
        Some(d) if d.starts_with("250") => Outcome::Acked(accepted),
        Some(d) => Outcome::Refused(d.to_string()),
        None if r["stage"] == "data" => Outcome::Unknown(accepted, error.to_string()),
        None => Outcome::Refused(format!(
            "before DATA ({}): {error} {}",
            r["stage"], r["rcpts"]
        )),
    }
}

enum Event {
    Sent(std::io::Result<Output>),
    Exited(u32),
}

/// The daemon under faults, restarted when it aborts as systemd's
/// `Restart=on-failure` would, on the same listening sockets.
struct Supervisor<'a> {
    env: &'a TestEnv,
    sockets: &'a HeldSockets,
    tx: mpsc::Sender<Event>,
    daemon: Instance,
    /// Why each instance aborted (its panic line).
    aborts: Vec<String>,
    /// The logs of the instances that ended.
    logs: Vec<String>,
    /// What strace injected in the current phase.
    injected: Injected,
}

impl Supervisor<'_> {
    /// The daemon died. The only acceptable way: a panic, logged, then
    /// abort(). Starts the next instance.
    fn restart(&mut self) {
        let st = self
            .daemon
            .wait_exit(WAIT)
            .unwrap_or_else(|| panic!("maildird {} did not exit", self.daemon.pid()));
        let log = self.daemon.log();
        assert!(
            aborted(&st) && log.contains("panic: aborting"),
            "maildird {} exited with {st}, not an abort after a panic\n{log}",
            self.daemon.pid()
        );
        let why = log
            .lines()
            .find(|l| l.contains("panic: aborting"))
            .and_then(|l| l.split(" panic=").nth(1))
            .map(|l| l.split(" location=").next().unwrap_or(l).to_string())
            .unwrap_or_default();
        self.aborts.push(why);
        self.logs.push(log);
        assert!(
            self.aborts.len() <= MAX_RESTARTS,
            "more than {MAX_RESTARTS} aborts: {:#?}",
            self.aborts
        );
        self.daemon = Instance::start(self.env, self.sockets, on_exit(&self.tx));
    }

    /// strace with the phase's faults on the current daemon; when the daemon
    /// turns out to be gone (it aborted after the last reply), restart it first.
    fn attach(&mut self, phase: &Phase) -> Strace {
        for _ in 0..=MAX_RESTARTS {
            let out = self.env.path().join(format!("strace-{}.txt", unique()));
            match Strace::try_attach(self.daemon.pid(), phase.trace, phase.injects, &[], &out) {
                Ok(s) => return s,
                Err(e) => {
                    assert!(
                        self.daemon.wait_exit(WAIT).is_some(),
                        "strace cannot attach to a running maildird: {e}"
                    );
                    self.restart();
                }
            }
        }
        panic!("no maildird instance lived long enough to attach strace");
    }
}

fn on_exit(tx: &mpsc::Sender<Event>) -> Option<OnExit> {
    let tx = tx.clone();
    Some(Box::new(move |pid, _| {
        let _ = tx.send(Event::Exited(pid));
    }))
}

/// Fills the tmpfs with a root-owned file outside every Maildir until only
/// `LEFT_FREE` bytes are left. Returns the file.
fn fill(fs: &Tmpfs) -> std::path::PathBuf {
    let path = fs.0.join(".filler");
    let mut f = std::fs::File::create(&path).expect("create filler");
    let chunk = vec![0x55u8; 64 * 1024];
    // Bounded: the tmpfs is 16 MiB.
    for _ in 0..512 {
        let (free, _) = fs.free();
        if free <= LEFT_FREE {
            break;
        }
        let n = ((free - LEFT_FREE) as usize).min(chunk.len());
        f.write_all(&chunk[..n]).expect("write filler");
        f.sync_all().expect("fsync filler");
    }
    path
}

#[test]
fn random_faults_lose_nothing_acknowledged_and_leave_nothing_refused() {
    let started = Instant::now();
    let seed: u64 = std::env::var("MAILDIRD_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(13);
    let python = require_tool("python3", "python3");
    let env = TestEnv::new();
    let fs = Tmpfs::mount(&env.mail_root(), "size=16m,mode=0755");
    for u in USERS {
        add_user(&env, u, PW);
    }
    let sockets = HeldSockets::bind(&env);
    let (tx, events) = mpsc::channel::<Event>();
    let mut sup = Supervisor {
        env: &env,
        daemon: Instance::start(&env, &sockets, on_exit(&tx)),
        sockets: &sockets,
        tx: tx.clone(),
        aborts: Vec::new(),
        logs: Vec::new(),
        injected: Injected::default(),
    };

    // The phases, then a last one without faults: the daemon must be healthy.
    let plan = plan(seed, PHASES.len() + 1);
    let results_path = env.path().join("results.jsonl");
    let mut injected_by_phase: Vec<Injected> = Vec::new();
    for (p, phase) in PHASES.iter().map(Some).chain([None]).enumerate() {
        let filler = phase.filter(|ph| ph.fill).map(|_| fill(&fs));
        let phase = phase.filter(|ph| !ph.fill);
        let mut strace = phase.map(|ph| sup.attach(ph));
        let plan_path = env.path().join(format!("plan-{p}.jsonl"));
        let mut text = String::new();
        for m in plan.iter().filter(|m| m.phase == p) {
            let rcpts: Vec<String> = m.users.iter().map(|u| format!("{u}@example.org")).collect();
            let _ = writeln!(
                text,
                "{}",
                serde_json::json!({"id": m.id, "size": m.size, "rcpts": rcpts})
            );
        }
        std::fs::write(&plan_path, text).expect("write plan");
        let client = Command::new(&python)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(tools_dir().join("faultmail.py"))
            .arg("send")
            .arg(env.smtp_port.to_string())
            .arg(&plan_path)
            .arg(&results_path)
            .arg(CLIENTS.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn faultmail.py send");
        let client_pid = client.id();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            let _ = tx2.send(Event::Sent(client.wait_with_output()));
        });
        let deadline = Instant::now() + PHASE_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Event::Sent(o)) => {
                    let o = o.expect("wait for faultmail.py");
                    assert_ok(&o, "faultmail.py send");
                    break;
                }
                Ok(Event::Exited(pid)) if pid == sup.daemon.pid() => {
                    if let Some(s) = strace.take() {
                        sup.injected.add(&s.detach());
                    }
                    sup.restart();
                    strace = phase.map(|ph| sup.attach(ph));
                }
                // An instance already replaced.
                Ok(Event::Exited(..)) => {}
                Err(_) => {
                    signal(client_pid, "KILL");
                    panic!(
                        "phase {p} ({}): the clients did not finish within {PHASE_LIMIT:?}: \
                         a daemon that stopped answering without exiting?\n{}",
                        PHASES.get(p).map(|ph| ph.name).unwrap_or("no faults"),
                        sup.daemon.log()
                    );
                }
            }
        }
        if let Some(s) = strace.take() {
            sup.injected.add(&s.detach());
        }
        let injected = std::mem::take(&mut sup.injected);
        if let Some(f) = filler {
            std::fs::remove_file(f).expect("remove filler");
        }
        if let Some(ph) = phase {
            assert!(
                injected.total() > 0,
                "phase {p} ({}): strace injected nothing",
                ph.name
            );
        }
        injected_by_phase.push(injected);
    }

    // tmp/ files of the live daemon stay until a restart or 36 h: that is
    // litter to report, not something a restart may hide.
    let Supervisor {
        mut daemon,
        mut logs,
        aborts,
        ..
    } = sup;
    let live = daemon.pid();
    let tmp_of = |u: &str| -> Vec<String> {
        std::fs::read_dir(env.maildir(u).join("tmp"))
            .expect("read tmp")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let live_litter: Vec<String> = USERS
        .iter()
        .flat_map(|u| {
            tmp_of(u)
                .into_iter()
                .filter(|n| writer_pid(n) == Some(live))
                .map(move |n| format!("{u}/tmp/{n}"))
        })
        .collect();
    // Files of aborted instances: the next start-up sweeps them, but that
    // sweep ran under faults too. A clean restart must remove them.
    let dead_litter: usize = USERS
        .iter()
        .map(|u| {
            tmp_of(u)
                .iter()
                .filter(|n| writer_pid(n) != Some(live))
                .count()
        })
        .sum();
    if dead_litter > 0 {
        let st = daemon.stop();
        assert!(st.success(), "SIGTERM: {st}\n{}", daemon.log());
        logs.push(daemon.log());
        daemon = Instance::start(&env, &sockets, None);
        let deadline = Instant::now() + WAIT;
        while USERS.iter().any(|u| {
            tmp_of(u).iter().any(|n| {
                writer_pid(n) != Some(daemon.pid())
                    && !live_litter.iter().any(|l| l.ends_with(n.as_str()))
            })
        }) {
            assert!(
                Instant::now() < deadline,
                "tmp/ files of dead instances were not swept at start-up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // The independent reader.
    let users: Vec<&str> = USERS.to_vec();
    let mut args = vec!["check".to_string(), env.mail_root().display().to_string()];
    args.extend(users.iter().map(|u| u.to_string()));
    let o = run(
        Command::new(&python)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .arg(tools_dir().join("faultmail.py"))
            .args(&args),
        b"",
    );
    assert_ok(&o, "faultmail.py check");
    let report: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("faultmail.py check: JSON");
    let st = daemon.stop();
    assert!(
        st.success(),
        "SIGTERM after the run: {st}\n{}",
        daemon.log()
    );
    logs.push(daemon.log());
    let all_logs = logs.join("\n");

    // Results: one line per delivery.
    let results: BTreeMap<usize, serde_json::Value> = std::fs::read_to_string(&results_path)
        .expect("results")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("result JSON");
            (v["id"].as_u64().expect("id") as usize, v)
        })
        .collect();
    assert_eq!(results.len(), plan.len(), "a delivery has no result");

    // found[id][user] = complete copies; partial or foreign files.
    let mut found: BTreeMap<usize, BTreeMap<String, usize>> = BTreeMap::new();
    let mut where_: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut per_user: BTreeMap<String, usize> = BTreeMap::new();
    for f in report["files"].as_array().expect("files") {
        let user = f["user"].as_str().unwrap_or("?").to_string();
        *per_user.entry(user.clone()).or_default() += 1;
        let path = format!(
            "{user}/{}/{}",
            f["sub"].as_str().unwrap_or("?"),
            f["name"].as_str().unwrap_or("?")
        );
        match (f["id"].as_u64(), f["complete"].as_bool()) {
            (Some(id), Some(true)) => {
                *found
                    .entry(id as usize)
                    .or_default()
                    .entry(user)
                    .or_default() += 1;
                where_.entry(id as usize).or_default().push(path);
            }
            _ => bad.push(format!("{path}: {}", f["reason"])),
        }
    }
    for u in USERS {
        assert_eq!(
            report["mailbox_counts"][u].as_u64(),
            Some(per_user.get(u).copied().unwrap_or(0) as u64),
            "mailbox.Maildir and the directory listing disagree for {u}"
        );
    }

    #[derive(Default)]
    struct Row {
        deliveries: usize,
        acked: usize,
        refused: usize,
        unknown: usize,
        unknown_present: usize,
        found: usize,
        lost: usize,
        duplicated: usize,
        refused_present: usize,
    }
    let mut rows: Vec<Row> = (0..=PHASES.len()).map(|_| Row::default()).collect();
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut refused_present = Vec::new();
    let mut wrong_mailbox = Vec::new();
    for m in &plan {
        let r = &results[&m.id];
        let row = &mut rows[m.phase];
        row.deliveries += 1;
        let here = found.get(&m.id).cloned().unwrap_or_default();
        let copies: usize = here.values().sum();
        let paths = where_.get(&m.id).cloned().unwrap_or_default();
        match outcome(r) {
            Outcome::Acked(acc) => {
                row.acked += 1;
                row.found += usize::from(acc.iter().all(|u| here.get(u) == Some(&1)));
                for u in &acc {
                    match here.get(u).copied().unwrap_or(0) {
                        0 => {
                            row.lost += 1;
                            lost.push(format!(
                                "id {} for {u}: 250 but not in {u}'s Maildir ({r})",
                                m.id
                            ));
                        }
                        1 => {}
                        n => {
                            row.duplicated += 1;
                            duplicated.push(format!("id {} for {u}: {n} copies {paths:?}", m.id));
                        }
                    }
                }
                for (u, n) in &here {
                    if !acc.contains(u) {
                        wrong_mailbox.push(format!(
                            "id {} in {u}'s Maildir ({n}) but not accepted for {u}: {r}",
                            m.id
                        ));
                    }
                }
            }
            Outcome::Refused(reply) => {
                row.refused += 1;
                if copies > 0 {
                    row.refused_present += 1;
                    let named = paths.iter().any(|p| {
                        let name = p.rsplit('/').next().unwrap_or(p);
                        let base = name.split([',', ':']).next().unwrap_or(name);
                        all_logs.contains(base) || reply.contains(base)
                    });
                    refused_present.push(format!(
                        "id {} got {reply:?} but is in {paths:?} (reply or log names the copy: {})",
                        m.id,
                        if named { "yes" } else { "no" }
                    ));
                }
            }
            Outcome::Unknown(acc, err) => {
                row.unknown += 1;
                row.unknown_present += usize::from(copies > 0);
                for (u, n) in &here {
                    if *n > 1 || !acc.contains(u) {
                        duplicated.push(format!(
                            "id {} (no reply: {err}) has {n} copies for {u} {paths:?}",
                            m.id
                        ));
                    }
                }
            }
        }
    }

    // The table for the README (printed with --nocapture, and on failure).
    let mut table = String::from(
        "| fault | injected | deliveries | acknowledged (250) | found | refused (4xx/5xx) | refused but present | no reply (abort): delivered | lost | duplicated |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut total_injected = Injected::default();
    for (p, row) in rows.iter().enumerate() {
        let name = PHASES
            .get(p)
            .map(|ph| ph.name)
            .unwrap_or("none (after the faults)");
        let inj = injected_by_phase.get(p).cloned().unwrap_or_default();
        total_injected.add(&inj);
        let inj_text = if PHASES.get(p).is_some_and(|ph| ph.fill) {
            "tmpfs full".to_string()
        } else if inj.total() == 0 {
            "0".to_string()
        } else {
            inj.by_syscall
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            table,
            "| {name} | {inj_text} | {} | {} | {} | {} | {} | {}: {} | {} | {} |",
            row.deliveries,
            row.acked,
            row.found,
            row.refused,
            row.refused_present,
            row.unknown,
            row.unknown_present,
            row.lost,
            row.duplicated
        );
    }
    let sum = |f: fn(&Row) -> usize| rows.iter().map(f).sum::<usize>();
    let _ = writeln!(
        table,
        "| **total** | {} | {} | {} | {} | {} | {} | {}: {} | {} | {} |",
        total_injected.total(),
        sum(|r| r.deliveries),
        sum(|r| r.acked),
        sum(|r| r.found),
        sum(|r| r.refused),
        sum(|r| r.refused_present),
        sum(|r| r.unknown),
        sum(|r| r.unknown_present),
        sum(|r| r.lost),
        sum(|r| r.duplicated)
    );
    let tmp_left: Vec<String> = USERS
        .iter()
        .flat_map(|u| {
            report["tmp"][u]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |n| format!("{u}/tmp/{}", n.as_str().unwrap_or("?")))
        })
        .collect();
    eprintln!(
        "seed {seed}, {} deliveries, {} aborts {aborts:?}, {:.1} s\n{table}",
        plan.len(),
        aborts.len(),
        started.elapsed().as_secs_f64()
    );
    let findings = [
        ("partial or foreign files in new/ or cur/", &bad),
        ("acknowledged but missing (lost)", &lost),
        ("duplicated", &duplicated),
        (
            "in a Maildir that was not an accepted recipient",
            &wrong_mailbox,
        ),
        ("refused (4xx/5xx) but present", &refused_present),
        (
            "tmp/ files of the live daemon left after their delivery ended",
            &live_litter,
        ),
        ("tmp/ not clean at the end", &tmp_left),
    ];
    let mut msg = String::new();
    for (what, list) in findings {
        if !list.is_empty() {
            let _ = writeln!(msg, "FINDING: {} {what}:", list.len());
            for l in list.iter() {
                let _ = writeln!(msg, "  {l}");
            }
        }
    }
    assert!(msg.is_empty(), "{msg}\n{table}");
    // The run meant something: faults hit, some deliveries failed, most got through.
    let last = &rows[PHASES.len()];
    assert_eq!(
        last.acked, last.deliveries,
        "deliveries after the faults must all get 250"
    );
    assert!(
        sum(|r| r.refused) >= 10,
        "the faults refused almost nothing:\n{table}"
    );
    assert!(
        sum(|r| r.acked) >= plan.len() / 2,
        "too few deliveries acknowledged:\n{table}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the run took {:?}",
        started.elapsed()
    );
}
