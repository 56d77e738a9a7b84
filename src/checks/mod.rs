//! Inbound sender checks (maildird.toml(5), CHECKS): SPF (RFC 7208), DKIM
//! (RFC 6376), DMARC and iprev, done by `mail-auth` (Stalwart's) over a
//! hickory resolver with its cache and timeouts (`[dns]`). The verdicts become
//! one `Authentication-Results:` header (RFC 8601) and, by `[checks]` policy,
//! a refusal or the `.Junk` folder.
//!
//! DMARC's organizational domain: mail-auth 0.13 finds it with the DNS tree
//! walk of DMARCbis (RFC 9989 §4.10), which replaced RFC 7489's Public Suffix
//! List; nothing is downloaded at run time.

pub mod header;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DmarcResult, IprevResult, MessageAuthenticator, SpfResult,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{CheckPolicy, ChecksConfig, Config, TempErrorPolicy};

/// The checks of one configuration (rebuilt on reload).
pub struct Checks {
    auth: MessageAuthenticator,
    cfg: ChecksConfig,
    /// Our authserv-id (RFC 8601 §2.5): the `hostname`.
    hostname: String,
    /// `max_concurrent` messages verified at once.
    slots: Arc<Semaphore>,
    /// How long one check (SPF with iprev, DKIM, DMARC) may take: two
    /// queries' timeouts. One that does not finish is `temperror`.
    check_time: Duration,
}

/// SPF and iprev: what is known of the sender before the message is read.
pub struct SenderResults {
    spf: mail_auth::SpfOutput,
    iprev: &'static str,
}

/// What the checks concluded about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `Authentication-Results: ...` with LF line ends, ending in LF.
    pub header: String,
    pub spf: &'static str,
    /// The best result over all signatures (`none` when unsigned).
    pub dkim: &'static str,
    pub dmarc: &'static str,
    pub iprev: &'static str,
    pub action: Action,
}

/// What happens to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Deliver,
    /// Into the `.Junk` folder, because of this check.
    Junk(&'static str),
    /// `550` with this enhanced code and text.
    Reject {
        status: &'static str,
        text: String,
    },
    /// `451 4.4.3`: a DNS failure, and `temperror = "defer"`.
    Defer,
}

/// The results a policy decision looks at (pure, for `decide`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Results {
    pub spf: &'static str,
    pub dkim: Vec<&'static str>,
    pub dmarc: &'static str,
    pub dmarc_policy: &'static str,
    pub dmarc_domain: String,
    /// From: addresses in more than one domain.
    pub several_from: bool,
}

impl Checks {
    /// The checks of `config`; None when `[checks]` is absent.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Checks>>, String> {
        let Some(cfg) = config.checks.clone() else {
            return Ok(None);
        };
        let mut opts = ResolverOpts::default();
        opts.timeout = config.dns.timeout;
        opts.attempts = 2;
        let auth = if config.dns.nameservers.is_empty() {
            let (rc, system) = mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("dns: /etc/resolv.conf: {e}"))?;
            opts.ndots = system.ndots;
            MessageAuthenticator::new(rc, opts)
        } else {
            let servers = config
                .dns
                .nameservers
                .iter()
                .map(|a| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = a.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = a.port();
                    NameServerConfig::new(a.ip(), true, vec![udp, tcp])
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), opts)
        }
        .map_err(|e| format!("dns: cannot set up the resolver: {e}"))?;
        Ok(Some(Arc::new(Checks {
            auth,
            slots: Arc::new(Semaphore::new(cfg.max_concurrent)),
            cfg,
            hostname: config.hostname.clone(),
            check_time: config.dns.timeout.saturating_mul(2),
        })))
    }

    /// Wait for one of the `max_concurrent` verification slots (None only
    /// if the semaphore were closed, which it never is).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// The checks of the client and its envelope, which need no message:
    /// SPF and iprev (run before a verification slot is taken), each bounded
    /// by `check_time`; one that does not finish is `temperror`.
    pub async fn check_sender(&self, ip: IpAddr, helo: &str, mail_from: &str) -> SenderResults {
        let deadline = self.check_time;
        let host = self.hostname.as_str();
        let spf_params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, host)
        } else {
            SpfParameters::verify_mail_from(ip, helo, host, mail_from)
        };
        let (spf, iprev) = tokio::join!(
            tokio::time::timeout(deadline, self.auth.verify_spf(spf_params)),
            tokio::time::timeout(deadline, self.auth.verify_iprev(ip)),
        );
        let domain = match mail_from.rsplit_once('@') {
            Some((_, d)) => d,
            None => helo,
        };
        SenderResults {
            spf: spf.unwrap_or_else(|_| {
                mail_auth::SpfOutput::new(domain.to_string()).with_result(SpfResult::TempError)
            }),
            iprev: iprev.map_or("temperror", |i| iprev_str(i.result())),
        }
    }

    /// The checks of `message` (CRLF line ends, as received): DKIM and
    /// DMARC, each bounded by `check_time`, and the verdict with `sender`'s results,
    /// from `ip`, which said `helo` and `MAIL FROM:<mail_from>`.
    pub async fn evaluate(
        &self,
        sender: &SenderResults,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Verdict {
        let deadline = self.check_time;
        let spf = &sender.spf;
        let parsed = AuthenticatedMessage::parse(message);
        // Unsigned: `none` without a lookup. Signatures whose key lookups
        // do not finish in time: `temperror`.
        let mut timed_out = false;
        // Bounded work for any message: too many signatures, or a signature
        // over too many header fields, is not verified at all (permerror).
        let too_costly = parsed.as_ref().is_some_and(|m| {
            m.dkim_headers.len() > MAX_SIGNATURES
                || m.dkim_headers
                    .iter()
                    .any(|h| h.header.h.len() > MAX_SIGNED_FIELDS)
        });
        let outputs = match &parsed {
            Some(m) if !m.dkim_headers.is_empty() && !too_costly => {
                match tokio::time::timeout(deadline, self.auth.verify_dkim(m)).await {
                    Ok(outputs) => outputs,
                    Err(_) => {
                        timed_out = true;
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        };
        let dkim: Vec<DkimEntry> = match &parsed {
            Some(m) if timed_out || too_costly => m
                .dkim_headers
                .iter()
                .take(MAX_SIGNATURES)
                .map(|h| DkimEntry {
                    result: if timed_out { "temperror" } else { "permerror" },
                    domain: h.header.d.clone(),
                    selector: h.header.s.clone(),
                })
                .collect(),
            _ => outputs.iter().map(DkimEntry::of).collect(),
        };
        let mail_from_domain = match mail_from.rsplit_once('@') {
            Some((_, d)) => d,
            None => helo,
        };
        let from_domains = parsed.as_ref().map_or(0, distinct_from_domains);
        let dmarc = match &parsed {
            // DKIM did not finish: DMARC cannot be judged without it.
            Some(m) if timed_out => DmarcEntry {
                result: "temperror",
                policy: "none",
                domain: from_domain(m),
            },
            // Several From: domains: mail-auth exempts the message; we do not
            // (RFC 9989 §4.10: such a message should be refused).
            Some(m) if from_domains > 1 => DmarcEntry {
                result: "permerror",
                policy: "none",
                domain: from_domain(m),
            },
            Some(m) if !m.from.is_empty() => {
                let params = DmarcParameters::new(m, &outputs, mail_from_domain, spf);
                match tokio::time::timeout(deadline, self.auth.verify_dmarc(params)).await {
                    Ok(d) if d.domain().is_empty() => DmarcEntry::none(),
                    Ok(d) => DmarcEntry {
                        result: dmarc_str(&d.result()),
                        policy: policy_str(d.policy()),
                        domain: d.domain().to_string(),
                    },
                    Err(_) => DmarcEntry {
                        result: "temperror",
                        policy: "none",
                        domain: from_domain(m),
                    },
                }
            }
            _ => DmarcEntry::none(),
        };
        let results = Results {
            spf: spf_str(spf.result()),
            dkim: dkim.iter().map(|d| d.result).collect(),
            dmarc: dmarc.result,
            dmarc_policy: dmarc.policy,
            dmarc_domain: dmarc.domain.clone(),
            several_from: from_domains > 1,
        };
        let header = render(&Rendered {
            host: &self.hostname,
            spf: results.spf,
            mail_from,
            helo,
            dkim: &dkim,
            dmarc: &dmarc,
            iprev: sender.iprev,
            ip,
        });
        Verdict {
            header,
            spf: results.spf,
            dkim: best_dkim(&results.dkim),
            dmarc: results.dmarc,
            iprev: sender.iprev,
            action: decide(&self.cfg, &results),
        }
    }
}

/// Signatures verified per message at most.
const MAX_SIGNATURES: usize = 8;
/// Header fields one signature may cover (its `h=`) at most.
const MAX_SIGNED_FIELDS: usize = 64;

/// How many domains the From: addresses of a message have.
fn distinct_from_domains(m: &AuthenticatedMessage<'_>) -> usize {
    let mut domains: Vec<String> = m
        .from
        .iter()
        .filter_map(|f| f.rsplit_once('@').map(|(_, d)| d.to_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    domains.len()
}

/// The RFC5322.From domain of a parsed message.
fn from_domain(m: &AuthenticatedMessage<'_>) -> String {
    m.from
        .first()
        .and_then(|f| f.rsplit_once('@'))
        .map(|(_, d)| d.to_lowercase())
        .unwrap_or_default()
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimEntry {
    pub result: &'static str,
    pub domain: String,
    pub selector: String,
}

impl DkimEntry {
    fn of(o: &mail_auth::DkimOutput<'_>) -> DkimEntry {
        let (domain, selector) = o
            .signature()
            .map(|s| (s.d.clone(), s.s.clone()))
            .unwrap_or_default();
        DkimEntry {
            result: dkim_str(o.result()),
            domain,
            selector,
        }
    }
}

/// The DMARC result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcEntry {
    pub result: &'static str,
    pub policy: &'static str,
    pub domain: String,
}

impl DmarcEntry {
    fn none() -> DmarcEntry {
        DmarcEntry {
            result: "none",
            policy: "none",
            domain: String::new(),
        }
    }
}

/// What the header says.
pub struct Rendered<'a> {
    pub host: &'a str,
    pub spf: &'static str,
    pub mail_from: &'a str,
    pub helo: &'a str,
    pub dkim: &'a [DkimEntry],
    pub dmarc: &'a DmarcEntry,
    pub iprev: &'static str,
    pub ip: IpAddr,
}

/// The `Authentication-Results:` header (RFC 8601 §2.2), LF line ends:
/// `spf`, one `dkim` per signature (`dkim=none` when unsigned), `dmarc`
/// (when the From: has a domain), `iprev`. Pure.
pub fn render(r: &Rendered<'_>) -> String {
    use header::pvalue;
    let mail_from = if r.mail_from.is_empty() {
        format!("postmaster@{}", r.helo)
    } else {
        r.mail_from.to_string()
    };
    let mut h = format!(
        "Authentication-Results: {};\n\tspf={} smtp.mailfrom={}",
        r.host,
        r.spf,
        pvalue(&mail_from)
    );
    if r.dkim.is_empty() {
        h.push_str(";\n\tdkim=none");
    }
    for d in r.dkim {
        h.push_str(&format!(
            ";\n\tdkim={} header.d={} header.s={}",
            d.result,
            pvalue(&d.domain),
            pvalue(&d.selector)
        ));
    }
    if !r.dmarc.domain.is_empty() {
        h.push_str(&format!(
            ";\n\tdmarc={} header.from={} policy.dmarc={}",
            r.dmarc.result,
            pvalue(&r.dmarc.domain),
            r.dmarc.policy
        ));
    }
    h.push_str(&format!(";\n\tiprev={} policy.iprev={}\n", r.iprev, r.ip));
    h
}

/// The policy of `[checks]` applied to the results (pure).
///
/// - A temporary DNS failure in SPF, DKIM or DMARC: `Defer` under
///   `temperror = "defer"`, else the message is delivered (never refused or
///   junked on a result that might change).
/// - SPF `fail`: `reject` gives `550 5.7.23` (RFC 7372), `junk` the folder.
/// - DMARC `fail` where the domain says `p=reject`, or From: addresses in
///   several domains: `reject` gives `550 5.7.1`, `junk` the folder; a
///   `fail` where it says `p=quarantine`: the folder under both.
/// - DKIM: signatures present and none passing, at least one failing:
///   `reject` gives `550 5.7.20` (RFC 7372), `junk` the folder.
pub fn decide(cfg: &ChecksConfig, r: &Results) -> Action {
    let temp = r.spf == "temperror" || r.dmarc == "temperror" || r.dkim.contains(&"temperror");
    if temp {
        return match cfg.temperror {
            TempErrorPolicy::Defer => Action::Defer,
            TempErrorPolicy::Record => Action::Deliver,
        };
    }
    let dkim_failed = !r.dkim.is_empty() && !r.dkim.contains(&"pass") && r.dkim.contains(&"fail");
    let dmarc_reject = (r.dmarc == "fail" && r.dmarc_policy == "reject") || r.several_from;
    let rejects = [
        (
            cfg.spf == CheckPolicy::Reject && r.spf == "fail",
            "5.7.23",
            "SPF validation failed".to_string(),
        ),
        (
            cfg.dmarc == CheckPolicy::Reject && dmarc_reject,
            "5.7.1",
            if r.several_from {
                "From: addresses in more than one domain".to_string()
            } else {
                format!("Rejected by the DMARC policy of {}", r.dmarc_domain)
            },
        ),
        (
            cfg.dkim == CheckPolicy::Reject && dkim_failed,
            "5.7.20",
            "No passing DKIM signature found".to_string(),
        ),
    ];
    if let Some((_, status, text)) = rejects.into_iter().find(|(hit, _, _)| *hit) {
        return Action::Reject { status, text };
    }
    if cfg.spf == CheckPolicy::Junk && r.spf == "fail" {
        return Action::Junk("spf");
    }
    if (cfg.dmarc == CheckPolicy::Junk && dmarc_reject)
        || (cfg.dmarc != CheckPolicy::Record && r.dmarc == "fail" && r.dmarc_policy == "quarantine")
    {
        return Action::Junk("dmarc");
    }
    if cfg.dkim == CheckPolicy::Junk && dkim_failed {
        return Action::Junk("dkim");
    }
    Action::Deliver
}

fn best_dkim(results: &[&'static str]) -> &'static str {
    ["pass", "fail", "temperror", "permerror", "neutral"]
        .into_iter()
        .find(|r| results.contains(r))
        .unwrap_or("none")
}

fn spf_str(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_str(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        // RFC 6376 §6.1.3: a body hash that does not verify is a failed
        // signature (mail-auth 0.13 reports it as neutral).
        DkimResult::Neutral(mail_auth::Error::Dkim(
            mail_auth::dkim::DkimError::FailedBodyHashMatch,
        )) => "fail",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_str(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn iprev_str(r: &IprevResult) -> &'static str {
    match r {
        IprevResult::Pass => "pass",
        IprevResult::Fail(_) => "fail",
        IprevResult::TempError(_) => "temperror",
        IprevResult::PermError(_) => "permerror",
        IprevResult::None => "none",
    }
}

fn policy_str(p: Policy) -> &'static str {
    match p {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(
        spf: &'static str,
        dkim: &[&'static str],
        dmarc: &'static str,
        p: &'static str,
    ) -> Results {
        Results {
            spf,
            dkim: dkim.to_vec(),
            dmarc,
            dmarc_policy: p,
            dmarc_domain: "pass.test".into(),
            several_from: false,
        }
    }

    fn cfg(spf: CheckPolicy, dkim: CheckPolicy, dmarc: CheckPolicy) -> ChecksConfig {
        ChecksConfig {
            spf,
            dkim,
            dmarc,
            ..ChecksConfig::default()
        }
    }

    #[test]
    fn record_only_delivers_everything() {
        let c = ChecksConfig::default();
        for r in [
            results("fail", &["fail"], "fail", "reject"),
            results("temperror", &[], "temperror", "none"),
        ] {
            assert_eq!(decide(&c, &r), Action::Deliver);
        }
    }

    #[test]
    fn reject_policies_and_their_codes() {
        use CheckPolicy::*;
        let c = cfg(Reject, Reject, Reject);
        let code = |r: &Results| match decide(&c, r) {
            Action::Reject { status, .. } => status,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(&results("fail", &[], "none", "none")), "5.7.23");
        assert_eq!(code(&results("pass", &["pass"], "fail", "reject")), "5.7.1");
        assert_eq!(code(&results("pass", &["fail"], "pass", "none")), "5.7.20");
        // A failing signature beside a passing one is no failure.
        assert_eq!(
            decide(&c, &results("pass", &["fail", "pass"], "pass", "none")),
            Action::Deliver
        );
        // p=none or p=quarantine is never a 550.
        assert_eq!(
            decide(&c, &results("softfail", &[], "fail", "none")),
            Action::Deliver
        );
        assert_eq!(
            decide(&c, &results("softfail", &[], "fail", "quarantine")),
            Action::Junk("dmarc")
        );
    }

    #[test]
    fn junk_and_temperror() {
        use CheckPolicy::*;
        let c = cfg(Record, Record, Junk);
        assert_eq!(
            decide(&c, &results("fail", &[], "fail", "reject")),
            Action::Junk("dmarc")
        );
        let c = cfg(Junk, Record, Record);
        assert_eq!(
            decide(&c, &results("fail", &[], "none", "none")),
            Action::Junk("spf")
        );
        let c = ChecksConfig {
            temperror: TempErrorPolicy::Defer,
            ..ChecksConfig::default()
        };
        assert_eq!(
            decide(&c, &results("temperror", &[], "none", "none")),
            Action::Defer
        );
        assert_eq!(
            decide(&c, &results("pass", &["temperror"], "pass", "none")),
            Action::Defer
        );
        // Under "record", a result that might change never refuses.
        let c = cfg(
            CheckPolicy::Reject,
            CheckPolicy::Reject,
            CheckPolicy::Reject,
        );
        assert_eq!(
            decide(
                &c,
                &results("fail", &["temperror", "fail"], "fail", "reject")
            ),
            Action::Deliver
        );
        // Several From: domains under dmarc = "reject".
        let mut r = results("pass", &[], "permerror", "none");
        r.several_from = true;
        assert!(matches!(
            decide(&c, &r),
            Action::Reject {
                status: "5.7.1",
                ..
            }
        ));
    }

    #[test]
    fn the_header_names_every_check() {
        let dkim = [DkimEntry {
            result: "pass",
            domain: "pass.test".into(),
            selector: "sel".into(),
        }];
        let dmarc = DmarcEntry {
            result: "pass",
            policy: "reject",
            domain: "pass.test".into(),
        };
        let r = Rendered {
            host: "mx.test",
            spf: "pass",
            mail_from: "a@pass.test",
            helo: "client.test",
            dkim: &dkim,
            dmarc: &dmarc,
            iprev: "fail",
            ip: "192.0.2.7".parse().unwrap(),
        };
        assert_eq!(
            render(&r),
            "Authentication-Results: mx.test;\n\
             \tspf=pass smtp.mailfrom=a@pass.test;\n\
             \tdkim=pass header.d=pass.test header.s=sel;\n\
             \tdmarc=pass header.from=pass.test policy.dmarc=reject;\n\
             \tiprev=fail policy.iprev=192.0.2.7\n"
        );
        // Null sender, unsigned, no From: domain.
        let none = DmarcEntry::none();
        let r = Rendered {
            mail_from: "",
            dkim: &[],
            dmarc: &none,
            ..r
        };
        assert_eq!(
            render(&r),
            "Authentication-Results: mx.test;\n\
             \tspf=pass smtp.mailfrom=postmaster@client.test;\n\
             \tdkim=none;\n\
             \tiprev=fail policy.iprev=192.0.2.7\n"
        );
    }

    #[test]
    fn best_of_several_signatures() {
        assert_eq!(best_dkim(&["fail", "pass"]), "pass");
        assert_eq!(best_dkim(&[]), "none");
        assert_eq!(best_dkim(&["permerror", "fail"]), "fail");
    }
}
