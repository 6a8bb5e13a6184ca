"""The other process of the message queue tests.

usage: queue_peer.py ACT [ARG]
  send ARG     send messages b"0" .. b"ARG-1" on "q", of types 1, 2, 1, 2, ... (each
               waits up to 20 s for room), then send b"sent" on "back"
  sendexit ARG send ARG messages of type 7 on "q" and exit at once
  recv         receive one message on "q" (waiting forever); send its data on "back",
               or the error's class name
  creds        send b"hello" of type 9 on "q"
  gift         send b"gift" of type 3 on "q", moving the inherited "n" into it, and exit
Every other wait is bounded (20 s); the exit code is 0 when the act completed.
"""

from __future__ import annotations

import sys

import kernel

LIMIT = 20.0


def main() -> int:
    act = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else ""
    with kernel.connect(autostart=False) as k:
        caps = k.inherited
        if act == "send":
            for i in range(int(arg)):
                caps["q"].send(str(i).encode(), mtype=1 + i % 2, timeout=LIMIT)
            caps["back"].send(b"sent", timeout=LIMIT)
        elif act == "sendexit":
            for i in range(int(arg)):
                caps["q"].send(str(i).encode(), mtype=7, timeout=LIMIT)
        elif act == "recv":
            try:
                caps["back"].send(caps["q"].recv().data, timeout=LIMIT)
            except kernel.IPCError as e:
                caps["back"].send(type(e).__name__.encode(), timeout=LIMIT)
        elif act == "creds":
            caps["q"].send(b"hello", mtype=9, timeout=LIMIT)
        elif act == "gift":
            caps["q"].send(b"gift", mtype=3, caps=[caps["n"]], timeout=LIMIT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
