#!/usr/bin/python3
"""A third-party load client for bench/checks.sh: python3's smtplib, CONC
processes, each sending its share of COUNT messages of SIZE bytes, one per
connection. Prints `msgs_per_s N` and `errors N` (key value lines, like loadgen)."""
import argparse
import multiprocessing
import smtplib
import time


def worker(args):
    host, port, n, size, rcpt = args
    body = ("x" * 76 + "\r\n") * max(1, size // 78)
    errors = 0
    for i in range(n):
        msg = (f"From: load@example.net\r\nTo: {rcpt}\r\nSubject: smtplib {i}\r\n"
               f"Message-ID: <{time.time_ns()}.{i}@example.net>\r\n\r\n{body}")
        try:
            with smtplib.SMTP(host, port, local_hostname="client.example.net", timeout=60) as s:
                refused = s.sendmail("load@example.net", [rcpt], msg)
                errors += len(refused)
        except (smtplib.SMTPException, OSError):
            errors += 1
    return errors


def main():
    p = argparse.ArgumentParser()
    p.add_argument("addr")
    p.add_argument("--conc", type=int, default=10)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rcpt", default="alice@bench.test")
    a = p.parse_args()
    host, port = a.addr.rsplit(":", 1)
    share = [a.count // a.conc + (1 if i < a.count % a.conc else 0) for i in range(a.conc)]
    start = time.monotonic()
    with multiprocessing.Pool(a.conc) as pool:
        errors = sum(pool.map(worker, [(host, int(port), n, a.size, a.rcpt) for n in share]))
    took = time.monotonic() - start
    print(f"msgs_per_s {(a.count - errors) / took:.1f}")
    print(f"errors {errors}")
    print(f"delivered {a.count - errors}")


if __name__ == "__main__":
    main()
