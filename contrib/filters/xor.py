#!/usr/bin/env python3
"""maildird exec filter example: XOR every byte with a key (default 0x5a).

Usage in maildird.toml (and the same on the client side, `maildird tunnel`):

    [filter.exec.xor]
    command = ["/usr/share/doc/maildird/contrib/filters/xor.py", "0x5a"]

maildird starts two processes per connection, `xor.py [KEY] decode` and
`xor.py [KEY] encode` (see maildird(8), EXEC FILTER PROTOCOL). XOR is its own
inverse, so both modes do the same. Output is written as soon as input
arrives (os.read/os.write, no stdio buffering): a filter that buffers would
hold back the protocol's replies. This obfuscates; it does not encrypt.
"""
import os
import sys


def main():
    args = sys.argv[1:]
    if not args or args[-1] not in ("decode", "encode"):
        sys.stderr.write("usage: xor.py [KEY] decode|encode\n")
        return 2
    key = int(args[0], 0) & 0xFF if len(args) > 1 else 0x5A
    table = bytes((b ^ key) for b in range(256))
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            return 0
        data = chunk.translate(table)
        while data:
            n = os.write(1, data)
            data = data[n:]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, KeyboardInterrupt):
        sys.exit(0)
