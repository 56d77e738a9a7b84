//! A real unbound on 127.0.0.1:PORT serving the test zones from `local-data` only
//! (no upstream, no chroot, no daemonizing), the per-run DKIM keys it publishes,
//! and a bounded readiness probe that speaks DNS over UDP.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// DKIM keys made by `dknewkey` for this run: (private key file, TXT record text).
pub struct DkimKeys {
    pub rsa_key: PathBuf,
    pub rsa_txt: String,
    pub ed_key: PathBuf,
    pub ed_txt: String,
}

impl DkimKeys {
    /// A 2048-bit RSA key (selector `sel`) and an Ed25519 key (selector `ed`,
    /// RFC 8463) in `dir`.
    pub fn generate(dir: &Path) -> DkimKeys {
        let dknewkey = require_tool("dknewkey", "python3-dkim");
        let make = |name: &str, ktype: &str| -> (PathBuf, String) {
            let o = run(
                Command::new(&dknewkey)
                    .current_dir(dir)
                    .args(["--ktype", ktype, name]),
                b"",
            );
            assert_ok(&o, &format!("dknewkey --ktype {ktype} {name}"));
            let txt = std::fs::read_to_string(dir.join(format!("{name}.dns")))
                .expect("dknewkey wrote NAME.dns");
            let txt = txt.trim().to_owned();
            assert!(txt.starts_with("v=DKIM1;"), "{name}.dns: {txt}");
            (dir.join(format!("{name}.key")), txt)
        };
        let (rsa_key, rsa_txt) = make("rsa", "rsa");
        let (ed_key, ed_txt) = make("ed", "ed25519");
        DkimKeys {
            rsa_key,
            rsa_txt,
            ed_key,
            ed_txt,
        }
    }
}

/// `local-data` for a TXT record: unbound takes one quoted string per <=255 bytes
/// (RFC 1035 §3.3.14 character-strings), so long values (a 2048-bit RSA key) are
/// split into several.
pub fn txt(name: &str, value: &str) -> String {
    assert!(
        !value.contains('"') && !value.contains('\''),
        "TXT value with quotes: {value}"
    );
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("  local-data: '{name}. 300 IN TXT {}'\n", strings.join(" "))
}

pub fn a(name: &str, ip: &str) -> String {
    format!("  local-data: \"{name}. 300 IN A {ip}\"\n")
}

pub fn ptr(ip: &str, name: &str) -> String {
    format!("  local-data-ptr: \"{ip} {name}\"\n")
}

/// Number of `include:` hops in `perm.test`: one more than RFC 7208 §4.6.4 allows.
pub const PERM_INCLUDES: usize = 11;

/// The zones every inbound test uses (see the module doc of tests/inbound.rs for
/// what each name is for).
pub fn test_zones(keys: &DkimKeys) -> String {
    let mut z = String::new();
    // Everything under .test and 127.in-addr.arpa is answered from here; the
    // `static` type gives NXDOMAIN for the rest and replaces unbound's built-in
    // 127.in-addr.arpa zone (which only knows 127.0.0.1 -> localhost).
    z += "  local-zone: \"test.\" static\n";
    z += "  local-zone: \"127.in-addr.arpa.\" static\n";
    // pass.test: SPF pass from 127.0.0.2 only, DKIM keys, DMARC p=reject.
    z += &a("pass.test", "127.0.0.2");
    z += &txt("pass.test", "v=spf1 ip4:127.0.0.2 -all");
    z += &txt("sel._domainkey.pass.test", &keys.rsa_txt);
    z += &txt("ed._domainkey.pass.test", &keys.ed_txt);
    z += &txt("_dmarc.pass.test", "v=DMARC1; p=reject");
    // iprev: reverse names of 127/8 never reach a server (RFC 6761 §6.3: the
    // resolver library answers `localhost.`; hickory does), so iprev is tested
    // with TEST-NET-1 clients named by a PROXY header: 192.0.2.2 <->
    // mail.iprev.test (pass); 192.0.2.3 has no PTR (permerror); 192.0.2.4 ->
    // mismatch.test whose A is elsewhere (fail). The 127.0.0.2 PTR is here for
    // resolvers that do ask (dnspython).
    z += "  local-zone: \"2.0.192.in-addr.arpa.\" static\n";
    z += &a("mail.pass.test", "127.0.0.2");
    z += &ptr("127.0.0.2", "mail.pass.test");
    z += &a("mail.iprev.test", "192.0.2.2");
    z += &ptr("192.0.2.2", "mail.iprev.test");
    z += &ptr("192.0.2.4", "mismatch.test");
    z += &a("mismatch.test", "127.0.0.9");
    // SPF qualifiers and the absent record.
    z += &a("soft.test", "127.0.0.9");
    z += &txt("soft.test", "v=spf1 ip4:127.0.0.2 ~all");
    z += &a("neutral.test", "127.0.0.9");
    z += &txt("neutral.test", "v=spf1 ?all");
    z += &a("none.test", "127.0.0.9");
    z += &txt("none.test", "not an spf record");
    // perm.test: include: -> l1 -> ... -> l11: 11 DNS-querying terms (RFC 7208
    // §4.6.4: more than 10 is permerror).
    z += &txt("perm.test", "v=spf1 include:l1.perm.test -all");
    for i in 1..PERM_INCLUDES {
        z += &txt(
            &format!("l{i}.perm.test"),
            &format!("v=spf1 include:l{}.perm.test -all", i + 1),
        );
    }
    z += &txt(
        &format!("l{PERM_INCLUDES}.perm.test"),
        "v=spf1 ip4:127.0.0.0/8 -all",
    );
    // quar.test: a DMARC domain with p=quarantine and a strict SPF record.
    z += &txt("quar.test", "v=spf1 ip4:127.0.0.2 -all");
    z += &txt("_dmarc.quar.test", "v=DMARC1; p=quarantine");
    // temp.test: only looked up after the server is stopped (temperror cases).
    z += &a("temp.test", "127.0.0.2");
    z += &txt("temp.test", "v=spf1 ip4:127.0.0.2 -all");
    // The HELO name the tests use.
    z += &a("client.test", "127.0.0.2");
    z
}

/// A running unbound; stopped (SIGTERM, reaped) by `stop` or on drop.
pub struct Unbound {
    child: Option<Child>,
    pub port: u16,
    pub conf: PathBuf,
    log: PathBuf,
}

impl Unbound {
    /// Writes `unbound-PORT.conf` in `dir` with `zones` (local-zone/local-data
    /// lines), starts `unbound -d -c FILE`, and returns once it answers a query.
    pub fn start(dir: &Path, zones: &str) -> Unbound {
        let bin = require_tool("unbound", "unbound");
        let port = free_port();
        let conf = dir.join(format!("unbound-{port}.conf"));
        let log = dir.join(format!("unbound-{port}.log"));
        std::fs::write(
            &conf,
            format!(
                "server:\n\
                 \x20 interface: 127.0.0.1@{port}\n\
                 \x20 port: {port}\n\
                 \x20 do-daemonize: no\n\
                 \x20 username: \"\"\n\
                 \x20 chroot: \"\"\n\
                 \x20 directory: \"{dir}\"\n\
                 \x20 pidfile: \"\"\n\
                 \x20 use-syslog: no\n\
                 \x20 logfile: \"\"\n\
                 \x20 verbosity: 1\n\
                 \x20 log-queries: yes\n\
                 \x20 log-replies: yes\n\
                 \x20 do-ip6: no\n\
                 \x20 access-control: 127.0.0.0/8 allow\n\
                 \x20 # Offline: no validator (no trust anchor), no recursion target.\n\
                 \x20 module-config: \"iterator\"\n\
                 \x20 # The tests change nothing while it runs; no cache to reason about\n\
                 \x20 # beyond local data anyway.\n\
                 {zones}\
                 remote-control:\n\
                 \x20 control-enable: no\n",
                dir = dir.display()
            ),
        )
        .expect("write unbound.conf");
        let err = std::fs::File::create(&log).expect("unbound log");
        let child = Command::new(bin)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn unbound");
        let mut u = Unbound {
            child: Some(child),
            port,
            conf,
            log,
        };
        u.wait_answering();
        u
    }

    /// `127.0.0.1:PORT`, as the daemon's `[dns] nameservers` takes it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls (bounded by `WAIT`) with a `pass.test TXT` query until a response
    /// with our id comes back.
    fn wait_answering(&mut self) {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let deadline = Instant::now() + WAIT;
        let mut id: u16 = 0x4d44;
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "unbound exited ({st}) before answering\n{}\n--- conf ---\n{}",
                    self.log(),
                    std::fs::read_to_string(&self.conf).unwrap_or_default()
                );
            }
            id = id.wrapping_add(1);
            let _ = sock.send_to(&dns_query(id, "pass.test", 16), ("127.0.0.1", self.port));
            let mut buf = [0u8; 1500];
            // The read timeout above is the retry interval: unbound gives no other
            // readiness signal in foreground mode.
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                // Any answer (the suite's zones need not have pass.test): the
                // zone data itself is checked by the tests.
                if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "unbound did not answer on 127.0.0.1:{} within {WAIT:?}\n{}",
                self.port,
                self.log()
            );
        }
    }

    /// SIGTERM and reap (bounded): from now on every query is refused (ICMP port
    /// unreachable), the "DNS server down" of the temperror cases.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    // Exit poll: a child's exit has no other event we can wait on
                    // with a deadline from std.
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("unbound did not exit within {WAIT:?} after SIGTERM");
                }
            }
        }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal RFC 1035 query (RD set) for NAME/QTYPE.
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}
