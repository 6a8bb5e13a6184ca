"""mkipc's asyncio face: calls with 64 in flight from one client (issue #5's goal).

A timed operation is a burst of 1024 calls made by 64 tasks on a uvloop loop, each
awaiting its calls one after another, so 64 are in flight at any time; the row is
a throughput row (calls per second). The echo server is the blocking face's
reply_recv loop. The asyncio connection finds the endpoint through the name
server, as an application would.
"""

from __future__ import annotations

import asyncio
import sys

import kernel
from kernel.bench.mechanisms import make_payload, register
from kernel.bench.mechanisms.mkipc_call import (
    _START_TIMEOUT_S,
    MkipcCall,
    _echo,
    serve_role,
)

IN_FLIGHT = 64
BURST = 1024
_NAME = "bench.async.echo"


@register
class MkipcAsyncInFlight(MkipcCall):
    name = "mkipc.call.async64"
    batch = BURST  # a throughput row: calls per second

    def setup(self, payload_size: int) -> None:
        super().setup(payload_size)  # the private kernel and the echo server
        assert self._k is not None
        self._k.names.register(_NAME, self._ep, mode=0o600)
        import uvloop

        self._loop = uvloop.new_event_loop()
        self._ak = self._loop.run_until_complete(self._open())
        self._payload = make_payload(payload_size)

    async def _open(self) -> kernel.AsyncKernel:
        assert self._kernel is not None
        ak = kernel.connect_async(self._kernel.path, autostart=False)
        await ak.open()
        self._aep = await ak.names.lookup(_NAME, timeout=_START_TIMEOUT_S)
        return ak

    def roundtrip(self) -> None:
        self._loop.run_until_complete(self._burst())

    async def _burst(self) -> None:
        call, payload = self._aep.call, self._payload

        async def task() -> None:
            for _ in range(BURST // IN_FLIGHT):
                await call(payload)

        await asyncio.gather(*(task() for _ in range(IN_FLIGHT)))

    def teardown(self) -> None:
        loop = self.__dict__.pop("_loop", None)
        if loop is not None:
            self._ak.close()
            loop.close()
        super().teardown()


if __name__ == "__main__":
    serve_role(sys.argv[1:], {"echo": _echo})
