"""Semaphores: counting, across processes, with timeouts and revocation (DESIGN §4)."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from peerlib import spawned

import kernel
from kernel import Rights, abi
from kernel.abi import Op

pytestmark = pytest.mark.integration

SLOTS = 4  # as in peers/shm_peer.py


def test_units_are_counted_and_try_wait_never_blocks(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        sem = k.semaphore(2)
        assert [sem.try_wait() for _ in range(3)] == [True, True, False]
        sem.post(3)
        assert [sem.try_wait() for _ in range(4)] == [True, True, True, False]
        t0 = time.monotonic()
        with pytest.raises(kernel.CallTimeoutError, match="not posted before the deadline"):
            sem.wait(timeout=0.05)
        assert 0.04 < time.monotonic() - t0 < 2


def test_a_bounded_buffer_in_shared_memory_between_two_processes(kernel_daemon):
    """The textbook producer/consumer: a ring of SLOTS records, `empty` and `full`."""
    count = 500
    with kernel.connect(autostart=False) as k:
        mem, back = k.memory(8 * SLOTS), k.endpoint()
        empty, full = k.semaphore(SLOTS), k.semaphore(0)
        with (
            mem.map() as m,
            spawned(
                k, "shm_peer.py", "consume", str(count), mem=mem, full=full, empty=empty, back=back
            ) as consumer,
        ):
            for i in range(count):
                empty.wait(timeout=10)
                struct.pack_into("<Q", m, 8 * (i % SLOTS), i * i)
                full.post()
            assert back.recv(timeout=10).data == str(sum(i * i for i in range(count))).encode()
            assert consumer.wait(timeout=10) == 0
        assert [empty.try_wait() for _ in range(SLOTS + 1)] == [True] * SLOTS + [False]


def test_a_waiter_in_another_process_is_woken_by_post(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        sem, back = k.semaphore(), k.endpoint()
        with spawned(k, "shm_peer.py", "wait", sem=sem, back=back) as waiter:
            time.sleep(0.3)  # let it block in the kernel
            sem.post()
            assert back.recv(timeout=10).data == b"took"
            assert waiter.wait(timeout=10) == 0
        assert not sem.try_wait()  # the one unit went to the waiter


def test_revoking_the_waiters_capability_fails_its_wait_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        sem, back = k.semaphore(), k.endpoint()
        with spawned(k, "shm_peer.py", "wait", sem=sem, back=back) as waiter:
            time.sleep(0.3)
            assert sem.revoke() == 1
            assert back.recv(timeout=10).data == b"InvalidCapabilityError"
            assert waiter.wait(timeout=10) == 0
        sem.post()
        assert sem.try_wait()  # the revoked waiter took nothing


def test_rights_counts_and_kinds_are_checked(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        sem = k.semaphore()
        with pytest.raises(kernel.AccessDeniedError, match="lacks the SIGNAL right"):
            sem.copy(Rights.WAIT).post()
        with pytest.raises(kernel.AccessDeniedError, match="lacks the WAIT right"):
            sem.copy(Rights.SIGNAL).try_wait()
        for n in (0, -1, abi.MAX_SEMAPHORE_VALUE + 1):
            with pytest.raises(ValueError, match="n must be an integer"):
                sem.post(n)
        with pytest.raises(ValueError, match="value must be an integer"):
            k.semaphore(-1)
        with pytest.raises(kernel.InvalidArgumentError, match="at least 1"):
            k._roundtrip(Op.SEMAPHORE_POST, sem, "post", arg=0)  # the kernel checks too
        full = k.semaphore(abi.MAX_SEMAPHORE_VALUE)
        with pytest.raises(kernel.InvalidArgumentError, match="would exceed"):
            full.post()
        assert full.try_wait()
        full.post()  # room for one again
        with pytest.raises(kernel.InvalidCapabilityError, match="not a semaphore"):
            k._roundtrip(Op.SEMAPHORE_WAIT, k.endpoint(), "wait", timeout=0)


def test_a_unit_won_by_a_withdrawn_wait_is_kept_for_the_next(kernel_daemon):
    """The kernel handed the unit out as the client withdrew the wait: not lost."""
    with kernel.connect(autostart=False) as k:
        sem = k.semaphore(1)
        conn = k._conn
        req = conn.submit(Op.SEMAPHORE_WAIT, sem.slot, -1, 0, b"", ())
        conn.cancel(req, sem.slot)
        sem.post()  # a round trip: the orphaned completion is taken meanwhile
        assert conn.units_stash == {sem.slot: 1}
        assert [sem.try_wait() for _ in range(3)] == [True, True, False]


async def test_waiters_are_served_oldest_first_and_a_cancelled_wait_takes_nothing(
    kernel_daemon,
):
    async with kernel.connect_async(autostart=False) as k:
        sem = await k.semaphore()
        assert isinstance(sem, kernel.AsyncSemaphoreCap)
        order: list[int] = []

        async def waiter(i: int) -> None:
            await sem.wait(timeout=10)
            order.append(i)

        tasks = []
        for i in range(3):
            tasks.append(asyncio.ensure_future(waiter(i)))
            await asyncio.sleep(0.02)  # each is queued in the kernel before the next
        tasks[1].cancel()
        await asyncio.sleep(0.02)
        await sem.post(2)
        await asyncio.wait_for(asyncio.gather(tasks[0], tasks[2]), 10)
        assert order == [0, 2]
        assert not await sem.try_wait()
        await sem.post()
        assert await sem.try_wait()
