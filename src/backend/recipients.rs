//! Recipient resolution (RFC 5321 §4.1.1.3): local domains, the recipient
//! delimiter, the aliases file and the always-accepted `postmaster`. Pure: the
//! users and aliases are passed in.

use std::collections::BTreeMap;
use std::path::Path;

use crate::auth::{UserDb, validate_name};
use crate::smtp::reply::Reply;

/// `alias: user[, user...]` lines (Postfix/sendmail aliases style, local users only).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Aliases {
    map: BTreeMap<String, Vec<String>>,
}

impl Aliases {
    pub fn load(path: &Path) -> Result<Aliases, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Aliases::parse(&text)
    }

    /// Parse aliases text. `#` starts a comment line; alias names are
    /// lowercased; every name (alias and target) must pass `validate_name`.
    /// Targets are user names, not other aliases (no chains, no loops).
    pub fn parse(text: &str) -> Result<Aliases, String> {
        let mut map = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((alias, targets)) = line.split_once(':') else {
                return Err(format!(
                    "line {line_no}: expected \"alias: user[, user...]\""
                ));
            };
            let alias = alias.trim().to_ascii_lowercase();
            validate_name(&alias).map_err(|e| format!("line {line_no}: alias {alias:?}: {e}"))?;
            let mut users: Vec<String> = Vec::new();
            for t in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                validate_name(t).map_err(|e| format!("line {line_no}: target {t:?}: {e}"))?;
                if !users.iter().any(|u| u == t) {
                    users.push(t.to_string());
                }
            }
            if users.is_empty() {
                return Err(format!("line {line_no}: alias {alias:?} has no target"));
            }
            if map.insert(alias.clone(), users).is_some() {
                return Err(format!("line {line_no}: alias {alias:?} is defined twice"));
            }
        }
        Ok(Aliases { map })
    }

    pub fn get(&self, alias: &str) -> Option<&[String]> {
        self.map.get(alias).map(Vec::as_slice)
    }

    /// Every alias with its targets, by name (`check-config` checks them).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.map.iter().map(|(a, t)| (a.as_str(), t.as_slice()))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Why a recipient is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not one of our domains: we are not a relay.
    Relay,
    /// No such user or alias (or a name that may not become a path).
    Unknown,
    /// Not `local@domain` (and not the bare `postmaster`).
    Syntax,
}

impl Refusal {
    /// The SMTP reply for this refusal (generic text; details go to the log).
    pub fn reply(self) -> Reply {
        match self {
            Refusal::Relay => Reply::new(550, "5.7.1", "Relaying denied"),
            Refusal::Unknown => Reply::new(550, "5.1.1", "User unknown"),
            Refusal::Syntax => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
        }
    }
}

/// Resolve an RCPT address to local mailboxes (user names), in order, without
/// duplicates.
///
/// - A bare local part is accepted only for `postmaster` (RFC 5321 §4.5.1,
///   case-insensitive); anything else without `@` is `Syntax`.
/// - The domain is compared case-insensitively with `domains` (a trailing dot
///   is ignored); others are `Relay`.
/// - The local part is lowercased. The whole local part is tried first (aliases,
///   then users), then the part before `delimiter` — like Postfix, so
///   `mary-jane` still works with a `-` delimiter.
/// - Alias targets that are not users are skipped; an alias with none left is
///   `Unknown`.
/// - RFC 5321 §4.5.1: `postmaster` is always accepted: its alias, else a user
///   named `postmaster`, else the first user in the file. Only with no user at
///   all is it refused (`Unknown`): there is no Maildir to deliver to.
pub fn resolve(
    address: &str,
    domains: &[String],
    delimiter: &str,
    users: &UserDb,
    aliases: &Aliases,
) -> Result<Vec<String>, Refusal> {
    let local = match address.rsplit_once('@') {
        Some((local, domain)) => {
            let domain = domain.strip_suffix('.').unwrap_or(domain);
            if local.is_empty() || domain.is_empty() {
                return Err(Refusal::Syntax);
            }
            if !domains.iter().any(|d| {
                d.strip_suffix('.')
                    .unwrap_or(d)
                    .eq_ignore_ascii_case(domain)
            }) {
                return Err(Refusal::Relay);
            }
            local
        }
        None if address.eq_ignore_ascii_case("postmaster") => address,
        None => return Err(Refusal::Syntax),
    };
    let local = local.to_ascii_lowercase();
    let base = if delimiter.is_empty() {
        None
    } else {
        local
            .split_once(delimiter)
            .map(|(b, _)| b)
            .filter(|b| !b.is_empty())
    };
    for candidate in [Some(local.as_str()), base].into_iter().flatten() {
        match lookup(candidate, users, aliases) {
            Some(found) if !found.is_empty() => return Ok(found),
            // An alias whose targets are all gone: refuse rather than guess,
            // except for postmaster, which falls through to its fallbacks.
            Some(_) if candidate != "postmaster" => return Err(Refusal::Unknown),
            _ => {}
        }
    }
    if base.unwrap_or(&local) == "postmaster" {
        return users
            .iter()
            .next()
            .map(|u| vec![u.name.clone()])
            .ok_or(Refusal::Unknown);
    }
    Err(Refusal::Unknown)
}

/// Aliases then users for one candidate name: None when neither knows it;
/// an alias yields its targets that are users (possibly none).
fn lookup(name: &str, users: &UserDb, aliases: &Aliases) -> Option<Vec<String>> {
    validate_name(name).ok()?;
    if let Some(targets) = aliases.get(name) {
        return Some(
            targets
                .iter()
                .filter(|t| users.get(t).is_some())
                .cloned()
                .collect(),
        );
    }
    users.get(name).map(|u| vec![u.name.clone()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> UserDb {
        UserDb::parse(text).unwrap()
    }

    #[test]
    fn aliases_parse() {
        let a = Aliases::parse(
            "# comment\n\nPostmaster: alice\nteam: alice, bob,alice , carol\n  abuse :bob\n",
        )
        .unwrap();
        assert_eq!(a.get("postmaster"), Some(&["alice".to_string()][..]));
        assert_eq!(
            a.get("team").unwrap(),
            ["alice".to_string(), "bob".into(), "carol".into()]
        );
        assert_eq!(a.get("abuse").unwrap(), ["bob".to_string()]);
        assert_eq!(a.len(), 3);
        for (text, needle) in [
            ("postmaster alice\n", "line 1: expected"),
            ("a: b\n#\nA: c\n", "line 3: alias \"a\" is defined twice"),
            ("a:\n", "no target"),
            ("a: ../etc\n", "target \"../etc\""),
            ("a: Bob\n", "target \"Bob\""),
            ("a: b c\n", "target \"b c\""),
            ("a/b: c\n", "alias \"a/b\""),
        ] {
            let e = Aliases::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn resolve_table() {
        let db = users(
            "alice:{PLAIN}a\nbob:{PLAIN}b\nmary-jane:{PLAIN}m\nroot:{PLAIN}r::::::roles=admin\n",
        );
        let al = Aliases::parse("info: alice, bob\nsales: bob, ghost\nghosts: ghost\nmary: bob\n")
            .unwrap();
        let domains = vec!["example.org".to_string(), "Example.NET.".to_string()];
        let ok = |v: &[&str]| Ok(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        for (addr, delim, want) in [
            ("alice@example.org", "+", ok(&["alice"])),
            ("Alice@EXAMPLE.ORG", "+", ok(&["alice"])),
            ("alice@example.net", "+", ok(&["alice"])),
            ("alice@example.org.", "+", ok(&["alice"])),
            ("alice+tag@example.org", "+", ok(&["alice"])),
            ("alice+tag+more@example.org", "+", ok(&["alice"])),
            ("alice+tag@example.org", "", Err(Refusal::Unknown)),
            ("info@example.org", "+", ok(&["alice", "bob"])),
            ("INFO+x@example.org", "+", ok(&["alice", "bob"])),
            ("sales@example.org", "+", ok(&["bob"])),
            ("ghosts@example.org", "+", Err(Refusal::Unknown)),
            // Whole local part first: the `-` delimiter does not break mary-jane.
            ("mary-jane@example.org", "-", ok(&["mary-jane"])),
            ("mary-x@example.org", "-", ok(&["bob"])),
            ("alice@example.com", "+", Err(Refusal::Relay)),
            ("alice@sub.example.org", "+", Err(Refusal::Relay)),
            ("alice@[192.0.2.1]", "+", Err(Refusal::Relay)),
            ("nobody@example.org", "+", Err(Refusal::Unknown)),
            ("../etc@example.org", "+", Err(Refusal::Unknown)),
            ("a/b@example.org", "+", Err(Refusal::Unknown)),
            (".alice@example.org", "+", Err(Refusal::Unknown)),
            ("+alice@example.org", "+", Err(Refusal::Unknown)),
            ("\"alice\"@example.org", "+", Err(Refusal::Unknown)),
            ("@example.org", "+", Err(Refusal::Syntax)),
            ("alice@", "+", Err(Refusal::Syntax)),
            ("alice", "+", Err(Refusal::Syntax)),
            ("", "+", Err(Refusal::Syntax)),
            // postmaster: no alias, no such user -> the first user (the
            // removed admin role of a former release does not count).
            ("postmaster", "+", ok(&["alice"])),
            ("PostMaster", "+", ok(&["alice"])),
            ("postmaster@example.org", "+", ok(&["alice"])),
            ("postmaster+x@example.org", "+", ok(&["alice"])),
            ("postmaster@example.com", "+", Err(Refusal::Relay)),
        ] {
            assert_eq!(
                resolve(addr, &domains, delim, &db, &al),
                want,
                "{addr:?} {delim:?}"
            );
        }
    }

    #[test]
    fn postmaster_fallbacks() {
        let d = vec!["example.org".to_string()];
        let none = Aliases::default();
        let pm = "postmaster@example.org";
        // Alias wins over a user of that name.
        let db = users("alice:{PLAIN}a\npostmaster:{PLAIN}p\n");
        let al = Aliases::parse("postmaster: alice\n").unwrap();
        assert_eq!(resolve(pm, &d, "+", &db, &al), Ok(vec!["alice".into()]));
        // Then a user named postmaster, before the first user.
        assert_eq!(
            resolve(pm, &d, "+", &db, &none),
            Ok(vec!["postmaster".into()])
        );
        // Else the first user.
        let db = users("zoe:{PLAIN}z\nalice:{PLAIN}a\n");
        assert_eq!(resolve(pm, &d, "+", &db, &none), Ok(vec!["zoe".into()]));
        // A postmaster alias whose target is gone still reaches someone.
        let stale = Aliases::parse("postmaster: ghost\n").unwrap();
        assert_eq!(resolve(pm, &d, "+", &db, &stale), Ok(vec!["zoe".into()]));
        // No user at all: nowhere to deliver.
        assert_eq!(
            resolve(pm, &d, "+", &UserDb::default(), &none),
            Err(Refusal::Unknown)
        );
    }

    #[test]
    fn refusal_replies() {
        let enc = |r: Refusal| {
            let mut v = Vec::new();
            r.reply().encode(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(enc(Refusal::Relay), "550 5.7.1 Relaying denied\r\n");
        assert_eq!(enc(Refusal::Unknown), "550 5.1.1 User unknown\r\n");
        assert_eq!(
            enc(Refusal::Syntax),
            "501 5.1.3 Bad recipient address syntax\r\n"
        );
    }
}
