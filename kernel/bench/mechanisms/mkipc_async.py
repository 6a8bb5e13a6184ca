"""mkipc's asyncio face: one call at a time (latency), and 64 in flight (throughput).

- ``mkipc.call.async``: each call is awaited alone and timed inside the uvloop loop
  (``time_roundtrips``), so the figure is the call, not a loop start per call.
- ``mkipc.call.async64``: a timed operation is a burst of 1024 calls made by 64 tasks,
  each awaiting its calls one after another, so 64 are in flight at any time
  (issue #5's goal: 300k calls/s); a throughput row (calls per second).

The echo server is the blocking face's reply_recv loop. The asyncio connection finds
the endpoint through the name server, as an application would.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

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

T = TypeVar("T")


def open_in_loop(
    path: str, opened: Callable[[kernel.AsyncKernel], Awaitable[T]]
) -> tuple[asyncio.AbstractEventLoop, kernel.AsyncKernel, T]:
    """An asyncio row's set-up: a uvloop loop, a connection to the row's private
    kernel at `path`, and what `opened(k)` returns there (what the row calls)."""
    import uvloop

    loop = uvloop.new_event_loop()
    ak = kernel.connect_async(path, autostart=False)

    async def start() -> T:
        await ak.open()
        return await opened(ak)

    return loop, ak, loop.run_until_complete(start())


def close_in_loop(
    loop: asyncio.AbstractEventLoop, ak: kernel.AsyncKernel, client: Any = None
) -> None:
    """open_in_loop()'s end: `client` if it has a close() to await, the connection, the loop."""
    if client is not None:
        with contextlib.suppress(kernel.IPCError, OSError):
            loop.run_until_complete(client.close())
    ak.close()
    loop.close()


async def timed_calls(
    call: Callable[[bytes], Awaitable[object]],
    payload: bytes,
    count: int,
    deadline_ns: int,
    pace_s: float,
) -> array[int]:
    """Await `count` calls one at a time, each timed inside the loop (so the figure is
    the call, not a loop start per call)."""
    clock = time.perf_counter_ns
    out = array("q")
    for _ in range(count):
        t0 = clock()
        await call(payload)
        t1 = clock()
        out.append(t1 - t0)
        if t1 > deadline_ns:
            break
        if pace_s:
            await asyncio.sleep(pace_s)
    return out


async def burst_in_flight(call: Callable[[bytes], Awaitable[object]], payload: bytes) -> None:
    """BURST calls from IN_FLIGHT tasks, each awaiting its calls one after another."""

    async def task() -> None:
        for _ in range(BURST // IN_FLIGHT):
            await call(payload)

    await asyncio.gather(*(task() for _ in range(IN_FLIGHT)))


class _AsyncMechanism(MkipcCall):
    """A private kernel and echo server (MkipcCall), called from a uvloop loop."""

    def setup(self, payload_size: int) -> None:
        super().setup(payload_size)  # the private kernel and the echo server
        assert self._k is not None
        self._k.names.register(_NAME, self._ep, mode=0o600)
        assert self._kernel is not None
        self._loop, self._ak, self._aep = open_in_loop(self._kernel.path, _looked_up)
        self._payload = make_payload(payload_size)

    def teardown(self) -> None:
        loop = self.__dict__.pop("_loop", None)
        if loop is not None:
            close_in_loop(loop, self._ak)
        super().teardown()


async def _looked_up(ak: kernel.AsyncKernel) -> kernel.AsyncEndpointCap:
    return await ak.names.lookup(_NAME, timeout=_START_TIMEOUT_S)


@register
class MkipcAsyncCall(_AsyncMechanism):
    name = "mkipc.call.async"

    def roundtrip(self) -> None:  # one call; the runner times calls with time_roundtrips
        self._loop.run_until_complete(self._aep.call(self._payload))

    def time_roundtrips(self, count: int, deadline_ns: int, pace_s: float) -> array[int]:
        timed = timed_calls(self._aep.call, self._payload, count, deadline_ns, pace_s)
        return self._loop.run_until_complete(timed)


@register
class MkipcAsyncInFlight(_AsyncMechanism):
    name = "mkipc.call.async64"
    batch = BURST  # a throughput row: calls per second

    def roundtrip(self) -> None:
        self._loop.run_until_complete(burst_in_flight(self._aep.call, self._payload))


if __name__ == "__main__":
    serve_role(sys.argv[1:], {"echo": _echo})
