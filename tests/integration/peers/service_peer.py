"""A kernel.Service with handlers the service tests call.

usage: service_peer.py NAME FACE WORKERS [grant] [signals]
  FACE  sync   svc.run(workers=N): threads, plain-function handlers
        async  await svc.serve(workers=N): tasks, coroutine handlers
  grant        clients may send capabilities
  signals      also take signals from a notification registered as NAME.signals
Exits 0 after SIGTERM/SIGINT once it has shut down cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

import msgspec

import kernel


class Echo(msgspec.Struct, tag="echo"):
    text: str


class Who(msgspec.Struct, tag="who"):
    pass


class Fail(msgspec.Struct, tag="fail"):
    kind: str


class Meet(msgspec.Struct, tag="meet"):
    """Return once `n` Meet requests are in their handlers at the same time."""

    n: int


class Overlap(msgspec.Struct, tag="overlap"):
    """Stay in the handler for `seconds`; return the most handlers seen at once."""

    seconds: float


class Exit(msgspec.Struct, tag="exit"):
    """raise SystemExit(code) in the handler."""

    code: int


class Term(msgspec.Struct, tag="term"):
    """SIGTERM this process, then finish the call."""


class Big(msgspec.Struct, tag="big"):
    size: int


class CustomError(Exception):
    pass


ERRORS = {
    "key": lambda: KeyError("missing"),
    "value": lambda: ValueError("bad value", 42),
    "permission": lambda: PermissionError("not yours"),
    "custom": lambda: CustomError("custom failure"),
    "timeout": lambda: TimeoutError("remote timeout"),
    "unencodable": lambda: ValueError(object()),
}

FACE = sys.argv[2] if __name__ == "__main__" else "sync"
WORKERS = int(sys.argv[3]) if __name__ == "__main__" else 1
GRANT = __name__ == "__main__" and "grant" in sys.argv[4:]  # clients may send capabilities
SIGNALS = __name__ == "__main__" and "signals" in sys.argv[4:]  # see take_signals
barrier = threading.Barrier(WORKERS, timeout=20)
meet_count = 0
met = asyncio.Event()
inside = most_inside = 0
inside_lock = threading.Lock()


def who(req: Who, ctx: kernel.RequestContext) -> list[int]:
    return [ctx.badge, *ctx.sender]


def fail(req: Fail) -> None:
    raise ERRORS[req.kind]()


def big(req: Big) -> str:
    return "x" * req.size


def echo(req: Echo) -> str:
    return req.text


def meet(req: Meet) -> int:
    return barrier.wait()  # BrokenBarrierError after 20 s if workers do not overlap


def overlap(req: Overlap) -> int:
    global inside, most_inside
    with inside_lock:
        inside += 1
        most_inside = max(most_inside, inside)
    threading.Event().wait(req.seconds)
    with inside_lock:
        inside -= 1
    return most_inside


def exit_(req: Exit) -> None:
    raise SystemExit(req.code)


def term(req: Term) -> str:
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(0.1)  # still in flight while the shutdown starts
    return "finished"


async def aecho(req: Echo) -> str:
    await asyncio.sleep(0)
    return req.text


async def ameet(req: Meet) -> int:
    global meet_count
    meet_count += 1
    if meet_count == req.n:
        met.set()
    await asyncio.wait_for(met.wait(), 20)
    return meet_count


async def aoverlap(req: Overlap) -> int:
    global inside, most_inside
    inside += 1
    most_inside = max(most_inside, inside)
    await asyncio.sleep(req.seconds)
    inside -= 1
    return most_inside


async def aterm(req: Term) -> str:
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.1)
    return "finished"


def take_signals(name: str) -> kernel.Signals:
    """Publish a notification as `<name>.signals` and take signals from it, all at
    their defaults: TERM becomes this process's SIGTERM, the service's own stop."""
    k = kernel.connect(autostart=False)  # lives as long as the process
    n = k.notification()
    k.names.register(f"{name}.signals", n, mode=0o666)
    return kernel.Signals(n)


def main() -> None:
    if SIGNALS:
        take_signals(sys.argv[1])
    rights = kernel.service.CLIENT_RIGHTS | kernel.Rights.GRANT if GRANT else None
    svc = kernel.Service(sys.argv[1], mode=0o666, rights=rights)
    if FACE == "sync":
        for f in (who, fail, big, echo, meet, overlap, exit_, term):
            svc.handler(f)
        svc.run(workers=WORKERS)
    else:
        for g in (who, fail, big, aecho, ameet, aoverlap, aterm):
            svc.handler(g)
        asyncio.run(svc.serve(workers=WORKERS))
    print("clean exit", file=sys.stderr)


if __name__ == "__main__":
    main()
