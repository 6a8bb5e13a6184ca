"""Call the inherited endpoint "ep" N times with unique payloads and check every reply.

usage: caller.py ID N [session]
With "session", the calls go over one direct session (ep.session()). The servers
answer data + b"|" + server_id (echo_server.py tag). Prints a JSON object
{server_id: replies} and exits 0; exits 1 at the first wrong reply.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import kernel


def main() -> int:
    ident, count = sys.argv[1], int(sys.argv[2])
    servers: Counter[str] = Counter()
    with kernel.connect(autostart=False) as k:
        ep = k.inherited["ep"]
        target = ep.session(timeout=30.0) if sys.argv[3:] == ["session"] else ep
        for i in range(count):
            payload = f"client {ident} call {i} {os.urandom(6).hex()}".encode()
            reply = target.call(payload, timeout=30.0).data
            head, sep, server = reply.rpartition(b"|")
            if head != payload or not sep:
                print(f"call {i}: sent {payload!r}, got {reply!r}", file=sys.stderr)
                return 1
            servers[server.decode()] += 1
    print(json.dumps(servers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
