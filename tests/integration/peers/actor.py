"""One small act on inherited capabilities, for tests that need a second process.

usage: actor.py ACT DELAY [ARG]
  (every act first sleeps DELAY seconds after connecting)
  send ARG      send ARG on "ep"
  call ARG      call "ep" with ARG; send the reply's data back on "back"
  creds         send "<pid> <uid> <gid>" of this process on "ep"
  callcreds     call "ep" with "<pid> <uid> <gid>" of this process
  signal ARG    signal the int ARG on "n"
  recv          receive one message on "ep" (answer it if it is a call), send its data
                back on "back"
  wait          wait on "n"; send the bits (decimal) back on "back"
  sendmany ARG  send b"0" .. b"ARG-1" on "ep", each with a 20 s timeout
  session       open a session on "ep", call it once, then exit without closing it
  burst ARG     open a session on "ep", send_many b"0" .. b"ARG-1", then call b"done"
  hang          connect, then sleep for a minute (a child that outlives its wait)
  objects ARG   create ARG endpoints and ARG notifications, signal bit 1 on "n", then
                sleep for a minute (killed by the test, its objects must go with it)
Every wait is bounded (20 s); the exit code is 0 when the act completed.
"""

from __future__ import annotations

import os
import sys
import time

import kernel

LIMIT = 20.0


def creds() -> bytes:
    return f"{os.getpid()} {os.getuid()} {os.getgid()}".encode()


def main() -> int:
    act, delay = sys.argv[1], float(sys.argv[2])
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    with kernel.connect(autostart=False) as k:
        caps = k.inherited
        time.sleep(delay)
        if act == "send":
            caps["ep"].send(arg.encode(), timeout=LIMIT)
        elif act == "call":
            caps["back"].send(caps["ep"].call(arg.encode(), timeout=LIMIT).data, timeout=LIMIT)
        elif act == "creds":
            caps["ep"].send(creds(), timeout=LIMIT)
        elif act == "callcreds":
            caps["ep"].call(creds(), timeout=LIMIT)
        elif act == "signal":
            caps["n"].signal(int(arg))
        elif act == "recv":
            msg = caps["ep"].recv(timeout=LIMIT)
            if msg.is_call:
                msg.reply(msg.data)
            caps["back"].send(msg.data, timeout=LIMIT)
        elif act == "wait":
            caps["back"].send(str(caps["n"].wait(timeout=LIMIT)).encode(), timeout=LIMIT)
        elif act == "sendmany":
            for i in range(int(arg)):
                caps["ep"].send(str(i).encode(), timeout=LIMIT)
        elif act == "session":
            caps["ep"].session(timeout=LIMIT).call(b"bye", timeout=LIMIT)
            os._exit(0)  # no close, no disconnect: the kernel must notice the death
        elif act == "burst":
            with caps["ep"].session(timeout=LIMIT) as s:
                s.send_many([b"%d" % i for i in range(int(arg))], timeout=LIMIT)
                s.call(b"done", timeout=LIMIT)
        elif act == "hang":
            time.sleep(60)
        elif act == "objects":
            held = [(k.endpoint(), k.notification()) for _ in range(int(arg))]
            caps["n"].signal(1)
            time.sleep(60)
            del held
        else:
            raise SystemExit(f"unknown act {act}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
