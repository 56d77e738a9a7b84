#!/usr/bin/python3
"""bench/retr_memory.py: a server's memory while many POP3 clients RETR big messages.

Usage: retr_memory.py HOST:PORT USER_PATTERN PASSWORD SESSIONS SERVER_PID

SESSIONS threads log in as USER_PATTERN with {i} = 0..SESSIONS-1 (one mailbox
each: servers lock a maildrop per session), start RETR 1 together, and read
the whole answer off the socket (counted, not kept). Meanwhile the resident
memory (VmRSS) of the server's whole process tree (SERVER_PID and every
descendant: Dovecot forks a process per session) is sampled every 10 ms.
Prints: base_kib, peak_kib, growth_kib, bytes (all RETR answers), seconds.
"""
import os
import socket
import sys
import threading
import time


def tree_rss_kib(root):
    parent, rss = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
            parent[int(pid)] = int(s[s.rindex(")") + 2:].split()[1])
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[int(pid)] = int(line.split()[1])
        except (OSError, ValueError):
            continue
    total = 0
    for pid, kib in rss.items():
        p, hops = pid, 0
        while p not in (root, 0, 1) and p in parent and hops < 64:
            p, hops = parent[p], hops + 1
        if p == root:
            total += kib
    return total


def session(host, port, user, password, start, done, out, idx):
    s = socket.create_connection((host, port), timeout=120)
    f = s.makefile("rb")

    def cmd(line):
        s.sendall(line.encode() + b"\r\n")
        r = f.readline()
        if not r.startswith(b"+OK"):
            raise SystemExit(f"{user}: {line.split()[0]}: {r!r}")

    f.readline()
    cmd(f"USER {user}")
    cmd(f"PASS {password}")
    start.wait()
    cmd("RETR 1")
    n = 0
    while True:
        line = f.readline()
        if not line:
            raise SystemExit(f"{user}: connection closed during RETR")
        if line == b".\r\n":
            break
        n += len(line)
    s.sendall(b"QUIT\r\n")
    f.readline()
    s.close()
    out[idx] = n
    done.release()


def main():
    addr, pattern, password, sessions, pid = sys.argv[1:6]
    host, port = addr.rsplit(":", 1)
    sessions, pid = int(sessions), int(pid)
    base = tree_rss_kib(pid)
    start = threading.Barrier(sessions + 1)
    done = threading.Semaphore(0)
    out = [0] * sessions
    threads = [
        threading.Thread(
            target=session,
            args=(host, int(port), pattern.replace("{i}", str(i)), password, start, done, out, i),
            daemon=True,
        )
        for i in range(sessions)
    ]
    for t in threads:
        t.start()
    peak = base
    start.wait()
    t0 = time.monotonic()
    finished = 0
    while finished < sessions:
        if done.acquire(timeout=0.01):
            finished += 1
        peak = max(peak, tree_rss_kib(pid))
        if time.monotonic() - t0 > 300:
            raise SystemExit("RETRs did not finish within 300 s")
    took = time.monotonic() - t0
    if min(out) == 0:
        raise SystemExit("a session read nothing")
    print(f"base_kib {base}")
    print(f"peak_kib {peak}")
    print(f"growth_kib {peak - base}")
    print(f"bytes {sum(out)}")
    print(f"seconds {took:.2f}")


if __name__ == "__main__":
    main()
