"""The asyncio face: many calls in flight, and cancellation that withdraws from the kernel.

Every test runs under both asyncio and uvloop (see the loop hook in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import kernel

pytestmark = pytest.mark.integration

PEERS = Path(__file__).parent / "peers"


@contextlib.asynccontextmanager
async def spawned(
    k: kernel.AsyncKernel, script: str, *args: str, **caps
) -> AsyncIterator[kernel.AsyncProcess]:
    proc = await k.spawn([sys.executable, str(PEERS / script), *args], caps=caps)
    try:
        yield proc
    finally:
        proc.kill()
        await proc.wait(timeout=10)


async def settle(k: kernel.AsyncKernel) -> None:
    """One round trip: the kernel has handled everything this connection sent before."""
    n = await k.notification()
    await n.close()


async def test_many_calls_in_flight_from_one_task_group(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        async with (
            spawned(k, "echo_server.py", "tag", "A", ep=ep),
            spawned(k, "echo_server.py", "tag", "B", ep=ep),
        ):
            async with asyncio.TaskGroup() as tg:
                tasks = {i: tg.create_task(ep.call(b"%d" % i, timeout=20)) for i in range(500)}
            for i, task in tasks.items():
                data, _, server = task.result().data.rpartition(b"|")
                assert data == b"%d" % i
                assert server in (b"A", b"B")


async def test_a_cancelled_recv_is_withdrawn_and_the_next_recv_gets_the_message(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        recv = asyncio.ensure_future(ep.recv())
        await asyncio.sleep(0.05)  # pending in the kernel
        recv.cancel()
        with pytest.raises(asyncio.CancelledError):
            await recv
        # The kernel handles this connection's records in order, the withdrawal first:
        # had the recv stayed, this would have been handed to it.
        with pytest.raises(kernel.WouldBlock):
            await ep.send_nowait(b"probe")
        async with spawned(k, "actor.py", "send", "0.1", "after the cancel", ep=ep) as sender:
            msg = await ep.recv(timeout=10)
            assert msg.data == b"after the cancel"
            assert msg.sender.pid == sender.pid
            assert await sender.wait(timeout=10) == 0


async def test_a_cancelled_call_is_withdrawn_and_the_late_reply_fails_on_the_server(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        async with spawned(k, "late_server.py", ep=ep) as server:
            assert (await ep.call(b"ping", timeout=10)).data == b"PING|none"
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await ep.call(b"slow:0.3")
            # The server's late reply met a withdrawn call; this call gets its own answer.
            assert (await ep.call(b"after", timeout=10)).data == b"AFTER|PeerClosedError"
            assert (await ep.call(b"stop", timeout=10)).data == b"bye"
            assert await server.wait(timeout=10) == 0


async def test_a_call_whose_message_is_dropped_unanswered_fails_at_once(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        call = asyncio.ensure_future(ep.call(b"x"))  # no timeout
        msg = await ep.recv(timeout=10)
        del msg  # dropped without a reply: its reply capability is closed
        with pytest.raises(kernel.PeerClosedError, match="without replying"):
            await asyncio.wait_for(call, 10)


async def test_a_call_cancelled_before_any_server_took_it_never_reaches_one(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await ep.call(b"withdrawn")
        await settle(k)
        async with spawned(k, "echo_server.py", "upper", ep=ep):
            assert (await ep.call(b"fresh", timeout=10)).data == b"FRESH"


async def test_messages_racing_a_cancelled_recv_are_never_lost(kernel_daemon):
    total = 200
    rng = random.Random(20240601)
    received: list[bytes] = []
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        async with spawned(k, "actor.py", "sendmany", "0", str(total), ep=ep) as sender:
            received.append((await ep.recv(timeout=10)).data)  # the sender is up
            for _ in range(total):  # recv, then cancel it at a random moment
                task = asyncio.ensure_future(ep.recv())
                for _ in range(rng.randrange(4)):
                    await asyncio.sleep(0)
                if rng.random() < 0.5:
                    await asyncio.sleep(rng.random() * 0.003)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    received.append((await task).data)
            while len(received) < total:  # whatever is left, plainly
                try:
                    received.append((await ep.recv(timeout=1)).data)
                except TimeoutError:
                    break
            assert await sender.wait(timeout=10) == 0
    # every send completed (the sender exited 0), so every message was taken by a recv
    assert sorted(received, key=int) == [b"%d" % i for i in range(total)]


async def test_a_message_delivered_as_its_recv_is_cancelled_is_kept(kernel_daemon):
    """Deterministically put the doorbell between Task.cancel() and the task's resumption.

    The random version of this race is test_messages_racing_a_cancelled_recv_are_never_lost.
    """
    uvloop_ordering = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        async with spawned(k, "actor.py", "sendmany", "0", "2", ep=ep) as sender:
            assert (await ep.recv(timeout=10)).data == b"0"  # the sender is up
            task = asyncio.ensure_future(ep.recv())
            for _ in range(3):
                await asyncio.sleep(0)  # the recv is submitted and awaits its future
            # Block the loop: b"1" is delivered and its completion waits in our ring.
            time.sleep(0.2)  # noqa: ASYNC251
            if not uvloop_ordering:
                # asyncio runs I/O callbacks from the ready queue after what is already
                # there: yield once so that the doorbell is queued behind this step.
                await asyncio.sleep(0)
            # uvloop runs I/O callbacks in its poll phase, after this step: cancel now.
            task.cancel()
            received = []
            with contextlib.suppress(asyncio.CancelledError):
                received.append((await task).data)
            if not received:
                with contextlib.suppress(TimeoutError):
                    received.append((await ep.recv(timeout=0.3)).data)
            assert await sender.wait(timeout=10) == 0  # so b"1" was taken by a recv
            assert received == [b"1"]


async def test_closing_the_connection_fails_pending_operations(kernel_daemon):
    k = await kernel.connect_async(autostart=False)
    try:
        ep = await k.endpoint()
        pending = asyncio.ensure_future(ep.recv())
        await asyncio.sleep(0.05)
    finally:
        k.close()
    with pytest.raises(kernel.PeerClosedError):
        await pending
    with pytest.raises(kernel.PeerClosedError):
        await k.endpoint()
