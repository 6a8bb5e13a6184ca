"""Echo through the name server (asyncio face): many calls in flight.

Run `python examples/echo/echo_async.py serve &` (it registers "demo.echo"), then
`python examples/echo/echo_async.py` (100 concurrent calls). Either may start first.
"""

import asyncio
import sys

import uvloop

import kernel


async def serve() -> None:
    async with kernel.connect_async() as k:
        ep = await k.endpoint()
        await k.names.register("demo.echo", ep, mode=0o666)
        msg = await ep.recv()
        while True:
            msg = await ep.reply_recv(msg, msg.data.upper())


async def main() -> None:
    async with kernel.connect_async() as k:
        echo = await k.names.lookup("demo.echo", timeout=10.0)
        async with asyncio.TaskGroup() as tg:
            calls = [tg.create_task(echo.call(b"req %d" % i, timeout=5.0)) for i in range(100)]
        print(f"{len(calls)} replies, first {calls[0].result().data!r}")


if __name__ == "__main__":
    uvloop.run(serve() if sys.argv[1:] == ["serve"] else main())
