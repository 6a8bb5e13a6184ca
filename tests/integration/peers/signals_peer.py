"""A process that takes signals through kernel.Signals (tests/integration/test_signals.py).

    signals_peer.py catch         USR1 and USR2 caught (each reported on `out` by
                                  name), HUP ignored; runs until killed
    signals_peer.py default       every signal at its default; reports "ready", then
                                  sleeps in the main thread, reporting "interrupted"
                                  if a KeyboardInterrupt arrives there
    signals_peer.py chld N        spawns N children that exit at once and catches
                                  CHLD, reaping with wait() in the handler; reports
                                  "reaped N" once all are

It inherits `n` (a notification: WAIT, COPY) and `out` (a queue: SEND).
"""

from __future__ import annotations

import sys
import threading
import time

import kernel
from kernel import Sig


def catch(k: kernel.Kernel, sigs: kernel.Signals, out: kernel.QueueCap) -> None:
    sigs.catch(Sig.USR1 | Sig.USR2, lambda s: out.send(s.name.encode(), timeout=5))
    sigs.ignore(Sig.HUP)
    out.send(b"ready", timeout=5)  # the test signals only after this
    time.sleep(60)


def default(k: kernel.Kernel, sigs: kernel.Signals, out: kernel.QueueCap) -> None:
    try:  # the interrupt may come before send returns: the message is out by then
        out.send(b"ready", timeout=5)
        time.sleep(60)
    except KeyboardInterrupt:
        out.send(b"interrupted", timeout=5)


def chld(k: kernel.Kernel, sigs: kernel.Signals, out: kernel.QueueCap, count: int) -> None:
    n = k.inherited["n"]
    children = [k.spawn([sys.executable, "-c", "pass"]) for _ in range(count)]
    reaped: list[int] = []
    done = threading.Event()

    def on_chld(_: Sig) -> None:  # as a SIGCHLD handler does: reap whoever ended
        for child in children:
            if child.pid not in reaped and child.popen.poll() is not None:
                child.wait(timeout=5)
                reaped.append(child.pid)
        if len(reaped) == count:
            done.set()

    sigs.catch(Sig.CHLD, on_chld)
    for child in children:
        child.monitor(n)
    done.wait(30)
    out.send(f"reaped {len(reaped)}".encode(), timeout=5)


def main() -> None:
    with kernel.connect() as k:
        n, out = k.inherited["n"], k.inherited["out"]
        with kernel.Signals(n) as sigs:
            mode = sys.argv[1]
            if mode == "chld":
                chld(k, sigs, out, int(sys.argv[2]))
            else:
                {"catch": catch, "default": default}[mode](k, sigs, out)


if __name__ == "__main__":
    main()
