"""The asyncio face: one server task loop, many calls in flight from one client.

python examples/echo/echo_async.py
"""

import asyncio
import sys

import uvloop

import kernel


async def serve() -> None:
    async with kernel.connect_async() as k:
        ep = k.inherited["echo"]
        msg = await ep.recv()
        while True:
            msg = await ep.reply_recv(msg, msg.data.upper())


async def main() -> None:
    async with kernel.connect_async() as k:
        ep = await k.endpoint()
        server = await k.spawn([sys.executable, __file__, "serve"], caps={"echo": ep})
        async with asyncio.TaskGroup() as tg:
            calls = [tg.create_task(ep.call(b"req %d" % i, timeout=5.0)) for i in range(100)]
        print(f"{len(calls)} replies, first {calls[0].result().data!r}")
        server.kill()
        await server.wait(timeout=5.0)


if __name__ == "__main__":
    uvloop.run(serve() if sys.argv[1:] == ["serve"] else main())
