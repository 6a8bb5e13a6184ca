"""A server whose answer to b"slow:<seconds>" comes late, reporting what the late reply met.

Other calls are answered data.upper() + b"|" + what the last late reply met:
b"none" (no late reply yet), b"delivered", or the exception's class name
(PeerClosedError when the caller had already timed out or given up). b"stop" ends it.
"""

from __future__ import annotations

import sys
import time

import kernel


def main() -> int:
    outcome = b"none"
    with kernel.connect(autostart=False) as k:
        ep = k.inherited["ep"]
        while True:
            msg = ep.recv()
            if msg.data == b"stop":
                msg.reply(b"bye")
                return 0
            if msg.data.startswith(b"slow:"):
                time.sleep(float(msg.data[5:]))
                try:
                    msg.reply(b"late " + msg.data)
                    outcome = b"delivered"
                except kernel.IPCError as e:
                    outcome = type(e).__name__.encode()
                continue
            msg.reply(msg.data.upper() + b"|" + outcome)


if __name__ == "__main__":
    sys.exit(main())
