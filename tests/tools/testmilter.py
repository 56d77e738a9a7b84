#!/usr/bin/python3
"""A scripted milter for tests/milter.rs, on Debian's python3-milter (libmilter).

Usage: testmilter.py PORT RECORD_FILE

What it does depends on the message's Subject (one action each):
  reject        setreply 550 5.7.1 and REJECT at end of message
  reject-plain  REJECT without a reply text
  tempfail      setreply 451 4.7.1 and TEMPFAIL
  discard       DISCARD
  quarantine    quarantine("test quarantine"), then ACCEPT
  headers       add, insert at the top, change and delete header fields
  slow          sleep 30 s at end of message (past the daemon's timeout)
and a recipient starting with "blocked" is rejected at RCPT.
For every message it appends one JSON line to RECORD_FILE: what the milter
saw (macros, envelope, headers, body size and SHA-256 of the body as sent).
"""
import hashlib
import json
import sys
import time

import Milter


class TestMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()

    def connect(self, hostname, family, hostaddr):
        self.seen = {
            "client_name": hostname,
            "client_addr": self.getsymval("{client_addr}"),
            "j": self.getsymval("j"),
            "rcpts": [],
            "headers": [],
        }
        return Milter.CONTINUE

    def hello(self, helo):
        self.seen["helo"] = helo
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        self.seen["from"] = mailfrom
        self.seen["i"] = self.getsymval("i")
        self.hash = hashlib.sha256()
        self.size = 0
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        self.seen["rcpts"].append(to)
        if to.strip("<>").startswith("blocked"):
            self.setreply("550", "5.7.1", "Recipient blocked by test milter")
            return Milter.REJECT
        return Milter.CONTINUE

    def header(self, name, value):
        self.seen["headers"].append([name, value])
        if name.lower() == "subject":
            self.subject = value.strip()
        return Milter.CONTINUE

    def body(self, chunk):
        self.hash.update(chunk)
        self.size += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        self.seen["body_size"] = self.size
        self.seen["body_sha256"] = self.hash.hexdigest()
        with open(RECORD, "a") as f:
            f.write(json.dumps(self.seen) + "\n")
        s = getattr(self, "subject", "")
        if s == "reject":
            self.setreply("550", "5.7.1", "Rejected by test milter")
            return Milter.REJECT
        if s == "reject-plain":
            return Milter.REJECT
        if s == "tempfail":
            self.setreply("451", "4.7.1", "Test milter says later")
            return Milter.TEMPFAIL
        if s == "discard":
            return Milter.DISCARD
        if s == "quarantine":
            self.quarantine("test quarantine")
            return Milter.ACCEPT
        if s == "headers":
            self.addheader("X-Added", "yes")
            self.addheader("X-Inserted", "top", 0)
            self.chgheader("Subject", 1, "changed by milter")
            self.chgheader("X-Remove-Me", 1, "")
            return Milter.ACCEPT
        if s == "slow":
            time.sleep(30)
        return Milter.CONTINUE


if __name__ == "__main__":
    port, RECORD = sys.argv[1], sys.argv[2]
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Milter.runmilter("testmilter", "inet:%s@127.0.0.1" % port, 60)
