#!/usr/bin/env python3
"""Client and independent reader for the fault-injection run (tests/faults/).

  faultmail.py send PORT PLAN RESULTS THREADS
      Delivers every message of PLAN (JSON lines: id, size, rcpts) with
      smtplib, one connection each, THREADS at a time, and appends one JSON
      line per delivery to RESULTS: the reply to every RCPT, the reply to the
      end of DATA, and the stage an exception hit (then the reply is unknown).

  faultmail.py check MAILROOT USER...
      Reads every USER's Maildir without maildird's code: the files of new/,
      cur/ and tmp/ directly, and mailbox.Maildir as a second opinion on the
      count. Prints one JSON object: each message file with the id its
      Subject names and whether it is that message complete (the bytes sent,
      LF line ends, after nothing but trace header lines), and tmp/'s files.
"""
import json
import mailbox
import os
import re
import smtplib
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

SENDER = "faults@client.test"


def message(ident, size):
    """The message for (ident, size): CRLF lines, at least `size` bytes, a
    unique Subject naming both, lines with leading dots (dot-stuffing)."""
    tag = f"fault-run {ident:05d} size {size}"
    head = (
        f"From: Fault Run <{SENDER}>\r\n"
        f"To: undisclosed-recipients:;\r\n"
        f"Subject: {tag}\r\n"
        f"Message-ID: <fault-run-{ident:05d}@client.test>\r\n"
        f"\r\n"
    ).encode()
    body = bytearray()
    n = 0
    while len(head) + len(body) < size:
        lead = "." if n % 7 == 3 else ""
        body += f"{lead}{ident:05d} line {n:05d} the quick brown fox jumps over the lazy dog\r\n".encode()
        n += 1
    body += f"END {ident:05d}\r\n".encode()
    return head + bytes(body)


def lf(b):
    return b.replace(b"\r\n", b"\n")


def deliver(port, entry, timeout):
    r = {"id": entry["id"], "rcpts": {}, "data": None, "stage": "connect", "error": None}
    s = None
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=timeout)
        r["stage"] = "ehlo"
        s.ehlo()
        r["stage"] = "mail"
        code, msg = s.mail(SENDER)
        if code != 250:
            r["error"] = f"MAIL {code} {msg.decode(errors='replace')}"
            return r
        r["stage"] = "rcpt"
        for rcpt in entry["rcpts"]:
            code, msg = s.rcpt(rcpt)
            r["rcpts"][rcpt] = f"{code} {msg.decode(errors='replace')}"
        if not any(v.startswith("250") for v in r["rcpts"].values()):
            r["stage"] = "done"
            return r
        # From here on the server may have the whole message: an exception
        # leaves the outcome unknown.
        r["stage"] = "data"
        code, msg = s.data(message(entry["id"], entry["size"]))
        r["data"] = f"{code} {msg.decode(errors='replace')}"
        r["stage"] = "done"
    except Exception as e:  # noqa: BLE001 - every failure is recorded
        r["error"] = repr(e)
    finally:
        if s is not None:
            try:
                s.quit()
            except Exception:  # noqa: BLE001 - the reply already counts
                pass
    return r


def send(port, plan_path, results_path, threads):
    plan = [json.loads(line) for line in open(plan_path) if line.strip()]
    lock = threading.Lock()
    with open(results_path, "a") as out:
        def one(entry):
            r = deliver(port, entry, 15)
            with lock:
                out.write(json.dumps(r) + "\n")
                out.flush()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(one, plan))


SUBJECT = re.compile(rb"^Subject: fault-run (\d{5}) size (\d+)$", re.M)
SIZE = re.compile(r",S=(\d+)")


def check(root, users):
    files, tmp, counts = [], {}, {}
    for user in users:
        md = os.path.join(root, user)
        for sub in ("new", "cur"):
            for name in sorted(os.listdir(os.path.join(md, sub))):
                path = os.path.join(md, sub, name)
                with open(path, "rb") as f:
                    data = f.read()
                entry = {"user": user, "sub": sub, "name": name, "size": len(data),
                         "id": None, "complete": False, "reason": ""}
                m = SUBJECT.search(data)
                if not m:
                    entry["reason"] = "no fault-run Subject (partial or foreign)"
                    files.append(entry)
                    continue
                ident, size = int(m.group(1)), int(m.group(2))
                entry["id"] = ident
                want = lf(message(ident, size))
                s = SIZE.search(name)
                if not data.endswith(want):
                    entry["reason"] = f"does not end with the message sent ({len(data)} bytes, want >= {len(want)})"
                elif not (data[: len(data) - len(want)].endswith(b"\n") and b"\n\n" not in data[: len(data) - len(want)]):
                    entry["reason"] = "bytes other than trace headers before the message"
                elif s and int(s.group(1)) != len(data):
                    entry["reason"] = f"S={s.group(1)} but {len(data)} bytes"
                else:
                    entry["complete"] = True
                files.append(entry)
        tmp[user] = sorted(os.listdir(os.path.join(md, "tmp")))
        counts[user] = len(mailbox.Maildir(md, factory=None, create=False))
    print(json.dumps({"files": files, "tmp": tmp, "mailbox_counts": counts}))


def main():
    if sys.argv[1] == "send":
        send(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
