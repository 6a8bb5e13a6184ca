"""The contract on the asyncio face: many calls in flight from one TaskGroup.

usage: contract_async.py [asyncio|uvloop]   (the server role is `echo_server.py upper`)
"""

from __future__ import annotations

import asyncio
import os
import sys

import kernel

ECHO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo_server.py")
CALLS = 100


async def main() -> None:
    async with kernel.connect_async() as k:
        ep = await k.endpoint()
        server = await k.spawn([sys.executable, ECHO, "upper"], caps={"ep": ep})
        try:
            async with asyncio.TaskGroup() as tg:
                calls = [tg.create_task(ep.call(b"req %d" % i, timeout=10.0)) for i in range(CALLS)]
            for i, task in enumerate(calls):
                assert task.result().data == b"REQ %d" % i, (i, task.result().data)
            n = await k.notification()
            await n.signal(0b101)
            assert await n.wait(timeout=1.0) == 0b101
        finally:
            server.kill()
            await server.wait(timeout=5.0)
        try:
            await ep.call(b"x", timeout=0.2)
            raise SystemExit("call without a receiver returned")
        except TimeoutError:
            pass


if __name__ == "__main__":
    if sys.argv[1:] == ["uvloop"]:
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
