#!/usr/bin/env python3
"""Fill Maildirs with identical test messages (POP3 fixture for bench/run.sh).

usage: fill_maildirs.py --count N --size BYTES --owner UID:GID MAILDIR...

Every MAILDIR gets tmp/ new/ cur/ (0700) and N messages in new/: a few header
lines and a body of BYTES bytes, LF line endings, named like a real delivery
(`sec.M<n>P<pid>Q<n>.fill.bench.test,S=<bytes>,W=<bytes with CRLF>`), mode 0600,
owned by UID:GID. The same names and bytes go into every MAILDIR, so two servers
read exactly the same mailboxes. No fsync (a fixture; run.sh syncs once).
A MAILDIR that already has messages is refused: move it away first.
"""
import argparse
import os
import sys
import time


def message(size, seq):
    head = (
        "Return-Path: <fill@example.net>\n"
        "From: Fill <fill@example.net>\n"
        "To: user@bench.test\n"
        f"Subject: fixture message {seq}\n"
        f"Message-ID: <fill.{seq}@example.net>\n"
        "\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnop\n"
    body = bytearray()
    while len(body) < size:
        left = size - len(body)
        body += line if left >= len(line) else line[: max(left - 1, 0)] + b"\n"
    return head + bytes(body[:size])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--owner", required=True, help="UID:GID")
    ap.add_argument("maildirs", nargs="+")
    a = ap.parse_args()
    uid, gid = (int(x) for x in a.owner.split(":"))
    now = int(time.time())
    msgs = []
    for i in range(a.count):
        data = message(a.size, i)
        crlf = len(data) + data.count(b"\n")
        name = f"{now}.M{i:06d}P{os.getpid()}Q{i}.fill.bench.test,S={len(data)},W={crlf}"
        msgs.append((name, data))
    for md in a.maildirs:
        for d in (md, f"{md}/tmp", f"{md}/new", f"{md}/cur"):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chown(d, uid, gid)
            os.chmod(d, 0o700)
        if os.listdir(f"{md}/new") or os.listdir(f"{md}/cur"):
            sys.exit(f"fill_maildirs: {md} is not empty")
        for name, data in msgs:
            path = f"{md}/new/{name}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fchown(fd, uid, gid)
            finally:
                os.close(fd)
    print(f"filled {len(a.maildirs)} Maildirs with {a.count} x {a.size} bytes")


if __name__ == "__main__":
    main()
