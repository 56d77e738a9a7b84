#!/usr/bin/python3
"""The openspf RFC 7208 test suite (python3-spf ships it as
/usr/share/doc/python3-spf/rfc7208-tests.yml.gz) as unbound zones and SMTP
transactions, for tests/inbound.rs.

usage:
  rfc7208.py scenarios SUITE.yml.gz
      JSON list, one object per scenario: description, zone (unbound
      local-zone/local-data lines), tests [{name, host, helo, mailfrom, expect}]
  rfc7208.py run DNSPORT SMTPPORT TESTS.json
      for each test: pyspf's verdict against the unbound on DNSPORT, and the
      SMTP reply of a transaction sent to SMTPPORT behind a PROXY v1 header
      naming the test's client address (the daemon's listener has the proxy
      filter); JSON list [{name, pyspf, reply}]

Zone translation follows the suite's conventions (see its header): an SPF
(type 99) record is also published as TXT unless the name lists TXT data or
`TXT: NONE`; TIMEOUT makes every query for the name go unanswered (unbound
`deny`), which is coarser than the suite means for names that list other data.
"""

import gzip
import json
import socket
import sys

import yaml


def quote_strings(value):
    if isinstance(value, str):
        value = [value]
    out = []
    for s in value:
        b = s.encode("utf-8")
        # One character-string per <=255 bytes; escape what unbound's zone
        # parser would take as syntax.
        for i in range(0, max(len(b), 1), 255):
            chunk = "".join(
                chr(c) if 0x20 <= c < 0x7f and c not in b'"\\\'' else "\\%03d" % c
                for c in b[i:i + 255])
            out.append('"%s"' % chunk)
    return " ".join(out)


NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_*")


def fqdn(name):
    return str(name).rstrip(".") + "."


def rr_lines(name, recs, skipped):
    """unbound lines for NAME's records; names unbound's config cannot spell
    (spaces, %) are left out and listed in SKIPPED."""
    lines = []
    if not set(str(name)) <= NAME_OK:
        skipped.append(str(name))
        return lines
    name = str(name).rstrip(".")
    has_txt = any(isinstance(r, dict) and "TXT" in r for r in recs)
    for r in recs:
        if r == "TIMEOUT":
            lines.append('  local-zone: "%s." deny' % name)
            continue
        (rtype, value), = r.items()
        if value == "NONE":
            continue
        if rtype in ("SPF", "TXT"):
            data = quote_strings(value)
            lines.append("  local-data: '%s. 300 IN %s %s'" % (name, rtype, data))
            if rtype == "SPF" and not has_txt:
                lines.append("  local-data: '%s. 300 IN TXT %s'" % (name, data))
        elif rtype == "MX":
            pref, host = value
            lines.append("  local-data: '%s. 300 IN MX %d %s'" % (name, pref, fqdn(host)))
        elif rtype in ("PTR", "CNAME"):
            lines.append("  local-data: '%s. 300 IN %s %s'" % (name, rtype, fqdn(value)))
        elif rtype in ("A", "AAAA"):
            for v in value if isinstance(value, list) else [value]:
                lines.append("  local-data: '%s. 300 IN %s %s'" % (name, rtype, v))
        else:
            raise SystemExit("unknown record type %r" % rtype)
    return lines


def scenarios(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    out = []
    for d in docs:
        # Everything is local: names not listed are NXDOMAIN.
        zone = ['  local-zone: "." static']
        skipped = []
        for name, recs in d.get("zonedata", {}).items():
            zone += rr_lines(name, recs, skipped)
        tests = []
        for tname, t in d["tests"].items():
            expect = t["result"]
            tests.append({
                "name": tname,
                "host": str(t["host"]),
                "helo": str(t.get("helo", "")),
                "mailfrom": str(t.get("mailfrom", "")),
                "expect": expect if isinstance(expect, list) else [expect],
                "spec": str(t.get("spec", "")),
            })
        out.append({"description": d["description"], "zone": "\n".join(zone) + "\n",
                    "skipped_names": skipped, "tests": tests})
    return out


def smtp_send(port, t, subject):
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")

    def reply():
        while True:
            line = f.readline().decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                return "(connection closed)"
            if line[3:4] != "-":
                return line

    fam = "TCP6" if ":" in t["host"] else "TCP4"
    dst = "::1" if fam == "TCP6" else "127.0.0.1"
    s.sendall(("PROXY %s %s %s 40000 25\r\n" % (fam, t["host"], dst)).encode())
    try:
        r = reply()
        if not r.startswith("220"):
            return r
        for label, cmd, want in (
                ("EHLO", "EHLO " + (t["helo"] or "unknown.test"), "250"),
                ("MAIL FROM", "MAIL FROM:<%s>" % t["mailfrom"], "250"),
                ("RCPT TO", "RCPT TO:<alice@example.org>", "250"),
                ("DATA", "DATA", "354")):
            s.sendall(cmd.encode("utf-8") + b"\r\n")
            r = reply()
            if not r.startswith(want):
                return "%s -> %s" % (label, r)
        s.sendall(("From: <t@suite.test>\r\nSubject: %s\r\n\r\nrfc7208\r\n.\r\n"
                   % subject).encode())
        r = reply()
        s.sendall(b"QUIT\r\n")
        return r
    finally:
        s.close()


def run(dns_port, smtp_port, tests_file):
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    import authcheck
    authcheck.configure(dns_port)
    tests = json.load(open(tests_file))
    out = []
    for t in tests:
        try:
            py = authcheck.spf_verdict(t["host"], t["mailfrom"], t["helo"])
        except Exception as e:  # pyspf raising is its verdict too
            py = "exception: %s" % e
        reply = smtp_send(smtp_port, t, t["subject"]) if smtp_port else ""
        out.append({"name": t["name"], "pyspf": py, "reply": reply})
    print(json.dumps(out))


def main():
    if sys.argv[1] == "scenarios":
        print(json.dumps(scenarios(sys.argv[2])))
    elif sys.argv[1] == "run":
        run(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        raise SystemExit("unknown command %r" % sys.argv[1])


if __name__ == "__main__":
    main()
