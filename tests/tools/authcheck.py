#!/usr/bin/python3
"""Independent sender-authentication verdicts for tests/inbound.rs.

Every lookup goes to the test's unbound on 127.0.0.1:PORT (dnspython), never to
/etc/resolv.conf. The verdicts come from other implementations than the daemon's
(mail-auth): SPF from pyspf (python3-spf, RFC 7208), DKIM from dkimpy
(python3-dkim, RFC 6376/8463); iprev (RFC 8601 §3) and DMARC (RFC 7489 §3.1, §6.6)
are computed here from dnspython answers and those two verdicts (iprev with the
RFC 6761 loopback rule a resolver library applies).

usage:
  authcheck.py PORT query NAME TYPE          answers, one per line (fixture check)
  authcheck.py PORT verdicts MSGFILE IP MAILFROM HELO
                                              one JSON object: spf, dkim (list),
                                              dmarc, policy, from_domain, iprev
  authcheck.py PORT spf IP MAILFROM HELO      the pyspf result alone
"""

import email.parser
import email.utils
import ipaddress
import json
import sys

import dns.exception
import dns.resolver
import dns.reversename

import dkim
import spf

# One-shot resolver; a stopped server (ECONNREFUSED) or silence ends in
# NoNameservers/Timeout within LIFETIME: both mean temperror.
LIFETIME = 5.0
RES = None


def configure(port):
    """Points our lookups, and pyspf's and dkimpy's (they call the module-level
    dns.resolver functions, i.e. the default resolver), at 127.0.0.1:PORT."""
    global RES
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.timeout = LIFETIME
    r.lifetime = LIFETIME
    r.cache = None
    RES = r
    dns.resolver.default_resolver = r


class TempFail(Exception):
    pass


def lookup(name, rdtype):
    """Answers for NAME/RDTYPE; [] for NXDOMAIN or no data; TempFail otherwise."""
    try:
        return list(RES.resolve(name, rdtype, lifetime=LIFETIME, search=False))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
        raise TempFail(str(e))


def spf_verdict(ip, mailfrom, helo):
    # check2 = the RFC 7208 check_host() result of the MAIL FROM identity (or
    # postmaster@HELO when MAIL FROM is empty).
    result, _explanation = spf.check2(i=ip, s=mailfrom, h=helo, timeout=LIFETIME, querytime=0)
    return result


class KeyLookup:
    """dkimpy's dnsfunc (the TXT strings of a key record joined) that remembers
    why a key was not there: dkimpy itself only logs that and returns False."""

    def __init__(self):
        self.problem = None

    def __call__(self, name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        try:
            answers = lookup(name, "TXT")
        except TempFail as e:
            self.problem = "temperror"
            raise dkim.DnsTimeoutError(str(e))
        for a in answers:
            return b"".join(a.strings)
        self.problem = "permerror"  # RFC 6376 §6.1.2: no key for signature
        return None


def dkim_verdicts(msg):
    """One RFC 8601 §2.7.1 result per DKIM-Signature, in header order; [] when
    unsigned. dkimpy says True/False or raises; the reason picks the word:
    a body hash or signature that does not verify is fail (RFC 6376 §6.1.3
    PERMFAIL), a missing key or unusable tags permerror, DNS failure temperror."""
    d = dkim.DKIM(msg)
    sigs = [v for name, v in d.headers if name.lower() == b"dkim-signature"]
    out = []
    for idx, value in enumerate(sigs):
        try:
            tags = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList:
            tags = {}
        domain = tags.get(b"d", b"").decode("ascii", "replace").strip()
        keys = KeyLookup()
        try:
            ok = dkim.DKIM(msg).verify(idx=idx, dnsfunc=keys)
            res = "pass" if ok else (keys.problem or "fail")
        except dkim.ValidationError:
            res = "fail"
        except (dkim.KeyFormatError, dkim.MessageFormatError, dkim.ParameterError,
                dkim.UnknownKeyTypeError):
            res = "permerror"
        out.append({"result": res, "d": domain})
    return out


def org_domain(domain):
    # The reserved test TLD has no public-suffix entry: the organizational domain
    # is the last two labels (RFC 7489 §3.2 with a one-label suffix).
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def aligned(a, b):
    return org_domain(a) == org_domain(b)  # relaxed alignment (adkim/aspf=r)


def dmarc_record(domain):
    """The tags of the DMARC record of DOMAIN, else of its organizational domain
    (RFC 7489 §6.6.3); None when neither has one."""
    names = ["_dmarc." + domain]
    if org_domain(domain) != domain:
        names.append("_dmarc." + org_domain(domain))
    for name in names:
        for a in lookup(name, "TXT"):
            txt = b"".join(a.strings).decode("ascii", "replace")
            if txt.startswith("v=DMARC1"):
                return dict(
                    (k.strip(), v.strip())
                    for k, _, v in (t.partition("=") for t in txt.split(";") if "=" in t)
                )
    return None


def dmarc_verdict(from_domain, mailfrom, spf_res, dkims):
    try:
        rec = dmarc_record(from_domain)
    except TempFail:
        return "temperror", "none"
    if rec is None:
        return "none", "none"
    policy = rec.get("p", "none")
    mf_domain = mailfrom.rpartition("@")[2] if mailfrom else ""
    spf_ok = spf_res == "pass" and mf_domain and aligned(mf_domain, from_domain)
    dkim_ok = any(s["result"] == "pass" and aligned(s["d"], from_domain) for s in dkims)
    return ("pass" if spf_ok or dkim_ok else "fail"), policy


def iprev_verdict(ip):
    """RFC 8601 §3: PTR names whose A/AAAA contain IP -> pass; PTR names but no
    match -> fail; no PTR -> permerror; a DNS failure -> temperror.

    RFC 6761 §6.3: a resolver library answers loopback reverse names with
    `localhost.` and `localhost.` with the loopback address itself, without
    asking any server. dnspython does not; this does, so a 127/8 client is
    judged as a conforming resolver (the daemon's) must see it."""
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback:
        local = ipaddress.ip_address("127.0.0.1" if addr.version == 4 else "::1")
        return "pass" if addr == local else "fail"
    try:
        ptrs = lookup(dns.reversename.from_address(ip), "PTR")
        if not ptrs:
            return "permerror"
        rdtype = "AAAA" if ":" in ip else "A"
        for p in ptrs[:2]:
            if any(a.address == ip for a in lookup(p.target, rdtype)):
                return "pass"
        return "fail"
    except TempFail:
        return "temperror"


def from_domain_of(msg):
    headers = email.parser.BytesParser().parsebytes(msg, headersonly=True)
    _name, addr = email.utils.parseaddr(headers.get("From", ""))
    return addr.rpartition("@")[2].lower()


def main():
    configure(int(sys.argv[1]))
    cmd = sys.argv[2]
    if cmd == "query":
        for a in lookup(sys.argv[3], sys.argv[4]):
            print(a.to_text())
    elif cmd == "spf":
        print(spf_verdict(*sys.argv[3:6]))
    elif cmd == "verdicts":
        path, ip, mailfrom, helo = sys.argv[3:7]
        msg = open(path, "rb").read()
        s = spf_verdict(ip, mailfrom, helo)
        dk = dkim_verdicts(msg)
        fd = from_domain_of(msg)
        dm, policy = dmarc_verdict(fd, mailfrom, s, dk)
        print(json.dumps({
            "spf": s,
            "dkim": dk,
            "dmarc": dm,
            "policy": policy,
            "from_domain": fd,
            "iprev": iprev_verdict(ip),
        }))
    else:
        sys.exit("unknown command %r" % cmd)


if __name__ == "__main__":
    main()
