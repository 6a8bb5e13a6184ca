"""Serve the inherited endpoint "ep" until killed or called with b"stop".

usage: echo_server.py MODE [ID]
  upper       answer data.upper()
  tag         answer data + b"|" + ID (tells callers which server answered)
  reply_recv  answer data.upper() through the reply_recv fast path
  creds       answer "<pid> <uid> <gid>" of this process (what the kernel should report)
  hold        take calls and never answer them; signal bit i on the inherited
              "ready" notification after taking the i-th call (from 0); runs until killed
  once        answer one call with data + b"|" + ID, then exit
"""

from __future__ import annotations

import os
import sys

import kernel


def main() -> int:
    mode = sys.argv[1]
    ident = sys.argv[2].encode() if len(sys.argv) > 2 else b"0"
    with kernel.connect(autostart=False) as k:
        ep = k.inherited["ep"]
        if mode == "hold":
            held = []
            while True:
                held.append(ep.recv())
                k.inherited["ready"].signal(1 << min(len(held) - 1, 63))
        if mode == "reply_recv":
            msg = ep.recv()
            while msg.data != b"stop":
                msg = ep.reply_recv(msg, msg.data.upper())
            msg.reply(b"bye")
            return 0
        while True:
            msg = ep.recv()
            if msg.data == b"stop":
                msg.reply(b"bye")
                return 0
            if mode == "upper":
                msg.reply(msg.data.upper())
            elif mode in ("tag", "once"):
                msg.reply(msg.data + b"|" + ident)
                if mode == "once":
                    return 0
            elif mode == "creds":
                msg.reply(f"{os.getpid()} {os.getuid()} {os.getgid()}".encode())
            else:
                raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main())
