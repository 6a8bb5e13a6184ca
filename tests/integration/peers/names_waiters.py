"""Make N lookups that wait forever (timeout=None) for names nobody registers, print
"waiting" once the name server holds them all, then sleep until killed (at most 60 s).

usage: names_waiters.py N
"""

from __future__ import annotations

import asyncio
import sys

import kernel


async def main(n: int) -> None:
    async with kernel.connect_async(autostart=False) as k:
        tasks = [
            asyncio.ensure_future(k.names.lookup(f"never.{i % 8}", timeout=None)) for i in range(n)
        ]
        await asyncio.sleep(0)  # every lookup is submitted
        await k.names.list()  # and, the name server taking requests in order, waiting
        print("waiting", flush=True)
        await asyncio.sleep(60)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
