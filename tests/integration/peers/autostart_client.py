"""Connect with autostart on (MKIPC_SOCKET names a path where no kernel runs yet).

usage: autostart_client.py sync|async [GO_FILE] | hold
With GO_FILE: print "ready" after the imports, wait until GO_FILE exists, then
connect (so that several of these connect at the same moment), and stay connected
0.3 s. Uses the connection (endpoint, notification), prints the pid the kernel
reports for us, and exits 0. `hold` prints "connected" and stays connected for up
to 30 s (until a signal ends it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import kernel


def wait_for_go() -> None:
    if len(sys.argv) > 2:
        print("ready", flush=True)
        deadline = time.monotonic() + 20
        while not os.path.exists(sys.argv[2]):
            if time.monotonic() > deadline:
                raise SystemExit("no go")
            time.sleep(0.001)


def run_sync() -> None:
    wait_for_go()
    with kernel.connect() as k:
        k.endpoint()
        n = k.notification()
        n.signal(0b11)
        assert n.wait(timeout=5) == 0b11
        assert k.pid == os.getpid()
        time.sleep(0.3 if len(sys.argv) > 2 else 0)
        print(k.pid, flush=True)


async def run_async() -> None:
    wait_for_go()
    async with kernel.connect_async() as k:
        await k.endpoint()
        n = await k.notification()
        await n.signal(0b11)
        assert await n.wait(timeout=5) == 0b11
        assert k.pid == os.getpid()
        await asyncio.sleep(0.3 if len(sys.argv) > 2 else 0)
        print(k.pid, flush=True)


def hold() -> None:
    with kernel.connect() as k:
        k.notification()
        print("connected", flush=True)
        time.sleep(30)


if __name__ == "__main__":
    {"sync": run_sync, "async": lambda: asyncio.run(run_async()), "hold": hold}[sys.argv[1]]()
