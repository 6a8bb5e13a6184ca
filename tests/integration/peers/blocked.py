"""Block in recv (or, with `call`, in a call nobody answers) until the kernel goes away.

usage: blocked.py sync|async recv|call
Prints "ready" once the operation is about to block, then one line
"<exception class> <seconds blocked>" and exits 0 if it was a PeerClosedError.
"""

from __future__ import annotations

import asyncio
import sys
import time

import kernel


def report(e: BaseException, t0: float) -> int:
    print(type(e).__name__, f"{time.monotonic() - t0:.3f}", flush=True)
    return 0 if isinstance(e, kernel.PeerClosedError) else 1


def run_sync(op: str) -> int:
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            ep.recv(timeout=30) if op == "recv" else ep.call(b"x", timeout=30)
        except Exception as e:
            return report(e, t0)
    return 2


async def run_async(op: str) -> int:
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            await (ep.recv(timeout=30) if op == "recv" else ep.call(b"x", timeout=30))
        except Exception as e:
            return report(e, t0)
    return 2


if __name__ == "__main__":
    face, op = sys.argv[1], sys.argv[2]
    sys.exit(run_sync(op) if face == "sync" else asyncio.run(run_async(op)))
