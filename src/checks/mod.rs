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
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, IprevResult,
    MessageAuthenticator, SpfResult,
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
        })))
    }

    /// Wait for one of the `max_concurrent` verification slots (None only
    /// if the semaphore were closed, which it never is).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// Run every check on `message` (CRLF line ends, as received) from
    /// `ip`, which said `helo` and `MAIL FROM:<mail_from>`.
    pub async fn evaluate(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Verdict {
        let host = self.hostname.as_str();
        let spf_params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, host)
        } else {
            SpfParameters::verify_mail_from(ip, helo, host, mail_from)
        };
        let parsed = AuthenticatedMessage::parse(message);
        let (spf, iprev, dkim) = tokio::join!(
            self.auth.verify_spf(spf_params),
            self.auth.verify_iprev(ip),
            async {
                match &parsed {
                    Some(m) => self.auth.verify_dkim(m).await,
                    None => Vec::new(),
                }
            }
        );
        let mail_from_domain = match mail_from.rsplit_once('@') {
            Some((_, d)) => d,
            None => helo,
        };
        let dmarc = match &parsed {
            Some(m) => Some(
                self.auth
                    .verify_dmarc(DmarcParameters::new(m, &dkim, mail_from_domain, &spf))
                    .await,
            ),
            None => None,
        };
        let header_from = parsed
            .as_ref()
            .and_then(|m| m.from.first())
            .map(String::as_str)
            .unwrap_or_default();
        // spf; dkim (`none` when unsigned, RFC 8601 §2.7.1); dmarc; iprev.
        let mut text = AuthenticationResults::new(host)
            .with_spf_mailfrom_result(&spf, ip, mail_from, helo)
            .with_dkim_results(&dkim, header_from)
            .to_string();
        if dkim.is_empty() {
            text.push_str(";\r\n\tdkim=none");
        }
        let mut rest = AuthenticationResults::new("");
        if let Some(d) = &dmarc {
            rest = rest.with_dmarc_result(d);
        }
        text.push_str(&rest.with_iprev_result(&iprev, ip).to_string());
        let results = Results {
            spf: spf_str(spf.result()),
            dkim: dkim.iter().map(|d| dkim_str(d.result())).collect(),
            dmarc: dmarc.as_ref().map_or("none", |d| dmarc_str(&d.result())),
            dmarc_policy: dmarc.as_ref().map_or("none", |d| policy_str(d.policy())),
            dmarc_domain: dmarc
                .as_ref()
                .map(|d| d.domain().to_string())
                .unwrap_or_default(),
        };
        Verdict {
            header: format!("Authentication-Results: {}\n", text.replace("\r\n", "\n")),
            spf: results.spf,
            dkim: best_dkim(&results.dkim),
            dmarc: results.dmarc,
            iprev: iprev_str(iprev.result()),
            action: decide(&self.cfg, &results),
        }
    }
}

impl Checks {
    /// The verdict when the checks did not finish in time: every DNS-based
    /// result is `temperror`, and the policy for that applies.
    pub fn timed_out(&self, mail_from: &str, helo: &str, ip: IpAddr) -> Verdict {
        let from = if mail_from.is_empty() {
            format!("postmaster@{helo}")
        } else {
            mail_from.to_string()
        };
        let results = Results {
            spf: "temperror",
            dkim: vec!["temperror"],
            dmarc: "temperror",
            dmarc_policy: "none",
            dmarc_domain: String::new(),
        };
        Verdict {
            header: format!(
                "Authentication-Results: {};\n\tspf=temperror smtp.mailfrom={};\n\tdkim=temperror;\n\tdmarc=temperror;\n\tiprev=temperror policy.iprev={ip}\n",
                self.hostname,
                header::pvalue(&from)
            ),
            spf: "temperror",
            dkim: "temperror",
            dmarc: "temperror",
            iprev: "temperror",
            action: decide(&self.cfg, &results),
        }
    }
}

/// The policy of `[checks]` applied to the results (pure).
///
/// - A temporary DNS failure in SPF, DKIM or DMARC: `Defer` under
///   `temperror = "defer"`.
/// - SPF `fail`: `reject` gives `550 5.7.23` (RFC 7372), `junk` the folder.
/// - DMARC `fail` where the domain says `p=reject`: `reject` gives
///   `550 5.7.1`, `junk` the folder; where it says `p=quarantine`, both
///   give the folder.
/// - DKIM: signatures present and none passing, at least one failing:
///   `reject` gives `550 5.7.20` (RFC 7372), `junk` the folder.
pub fn decide(cfg: &ChecksConfig, r: &Results) -> Action {
    let temp = r.spf == "temperror" || r.dmarc == "temperror" || r.dkim.contains(&"temperror");
    if temp && cfg.temperror == TempErrorPolicy::Defer {
        return Action::Defer;
    }
    let dkim_failed = !r.dkim.is_empty() && !r.dkim.contains(&"pass") && r.dkim.contains(&"fail");
    let dmarc_failed = r.dmarc == "fail";
    let rejects = [
        (
            cfg.spf == CheckPolicy::Reject && r.spf == "fail",
            "5.7.23",
            "SPF validation failed".to_string(),
        ),
        (
            cfg.dmarc == CheckPolicy::Reject && dmarc_failed && r.dmarc_policy == "reject",
            "5.7.1",
            format!("Rejected by the DMARC policy of {}", r.dmarc_domain),
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
    if dmarc_failed
        && ((cfg.dmarc == CheckPolicy::Junk && r.dmarc_policy == "reject")
            || (cfg.dmarc != CheckPolicy::Record && r.dmarc_policy == "quarantine"))
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

/// How long one message's checks may take at most, DNS included: a few
/// rounds of queries at the configured timeout.
pub fn deadline(config: &Config) -> Duration {
    config.dns.timeout.saturating_mul(6)
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
    }

    #[test]
    fn best_of_several_signatures() {
        assert_eq!(best_dkim(&["fail", "pass"]), "pass");
        assert_eq!(best_dkim(&[]), "none");
        assert_eq!(best_dkim(&["permerror", "fail"]), "fail");
    }
}
