"""Raw SMTP helpers for the interop tests (imported by inline `python3 -c` scripts).

The tests put this directory on sys.path. Every socket has a 20 s timeout so a silent
daemon fails the test instead of hanging it.
"""
import socket

TIMEOUT = 20


class Conn:
    """One SMTP or POP3 connection with a line reader."""

    def __init__(self, port, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.f = self.sock.makefile("rb")

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def line(self):
        raw = self.f.readline()
        if not raw:
            raise SystemExit("connection closed by server")
        return raw.decode("utf-8", "replace").rstrip("\r\n")

    def reply(self):
        """An SMTP reply: all lines of a multi-line reply, as a list of strings."""
        lines = []
        while True:
            l = self.line()
            lines.append(l)
            if len(l) < 4 or l[3] != "-":
                return lines

    def expect(self, code, what=""):
        r = self.reply()
        if not r[-1].startswith(str(code)):
            raise SystemExit("%s: expected %s, got %r" % (what, code, r))
        return r

    def close(self):
        try:
            self.f.close()
        finally:
            self.sock.close()


def dot_stuff(data):
    """RFC 5321 §4.5.2: double a leading dot on every line; append the terminator.

    `data` must end with CRLF (the test messages do)."""
    out = b"".join(
        (b"." + l if l.startswith(b".") else l) for l in data.splitlines(keepends=True)
    )
    return out + b".\r\n"
