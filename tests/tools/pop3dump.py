"""Log in over POP3 with poplib and dump what the mailbox shows, for the Rust tests.

usage: pop3dump.py PORT USER PASSWORD OUTDIR [dele N]... [quit|drop]

Writes OUTDIR/summary.txt (GREETING/CAPA/STAT/LIST/UIDL/TOP lines) and OUTDIR/retr.N
(the exact message bytes RETR returned, CRLF line ends, dot-unstuffed). Then DELEs
the given messages and ends with QUIT (default) or by dropping the connection.
A login answered `-ERR [IN-USE]` is retried for up to 20 s: a previous session of the
same test may still be tearing down.
"""
import os
import poplib
import sys
import time

port, user, password, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rest = sys.argv[5:]
os.makedirs(out, exist_ok=True)
summary = []

deadline = time.monotonic() + 20
while True:
    p = poplib.POP3("127.0.0.1", port, timeout=20)
    greeting = p.getwelcome().decode("utf-8", "replace")
    try:
        p.user(user)
        p.pass_(password)
        break
    except poplib.error_proto as e:
        msg = e.args[0] if isinstance(e.args[0], bytes) else str(e.args[0]).encode()
        p.close()
        if b"[IN-USE]" in msg and time.monotonic() < deadline:
            time.sleep(0.05)  # bounded retry of a lock held by a closing session
            continue
        raise SystemExit("login failed: %r" % msg)

summary.append("GREETING " + greeting)
try:
    resp, caps, _ = p._longcmd("CAPA")
    for c in caps:
        summary.append("CAPA " + c.decode("utf-8", "replace"))
except poplib.error_proto as e:
    raise SystemExit("CAPA failed: %r" % (e,))
n, size = p.stat()
summary.append("STAT %d %d" % (n, size))
for l in p.list()[1]:
    summary.append("LIST " + l.decode())
for l in p.uidl()[1]:
    summary.append("UIDL " + l.decode())
for i in range(1, n + 1):
    resp, lines, octets = p.retr(i)
    data = b"".join(l + b"\r\n" for l in lines)
    with open(os.path.join(out, "retr.%d" % i), "wb") as f:
        f.write(data)
    resp, lines, octets = p.top(i, 0)
    with open(os.path.join(out, "top.%d" % i), "wb") as f:
        f.write(b"".join(l + b"\r\n" for l in lines))

end = "quit"
it = iter(rest)
for a in it:
    if a == "dele":
        summary.append("DELE " + p.dele(int(next(it))).decode())
    elif a in ("quit", "drop"):
        end = a
with open(os.path.join(out, "summary.txt"), "w") as f:
    f.write("\n".join(summary) + "\n")
if end == "quit":
    print("QUIT " + p.quit().decode())
else:
    # A dropped connection: no QUIT, so RFC 1939 §6 UPDATE must not happen.
    p.sock.shutdown(2)
    p.close()
    print("DROPPED")
