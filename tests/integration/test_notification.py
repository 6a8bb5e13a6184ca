"""Notifications: a 64-bit word that signals OR into; wait returns it and clears it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

import pytest
from peerlib import PEERS, spawned

import kernel
from kernel.abi import Op

pytestmark = pytest.mark.integration


def test_signals_or_together_and_wait_returns_and_clears_them(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        n.signal(1)
        n.signal(4)
        n.signal(4)
        assert n.wait(timeout=1) == 5
        assert n.poll() == 0
        with pytest.raises(TimeoutError):
            n.wait(timeout=0)
        n.signal(2)
        assert n.wait(timeout=0) == 2  # timeout=0 only fails when nothing is set


def test_poll_never_blocks_and_returns_zero_when_nothing_is_set(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        t0 = time.monotonic()
        assert [n.poll() for _ in range(20)] == [0] * 20
        assert time.monotonic() - t0 < 0.5
        n.signal(0b110)
        assert n.poll() == 0b110
        assert n.poll() == 0


def test_bits_are_a_non_zero_64_bit_mask(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        n.signal(1 << 63)
        assert n.wait(timeout=1) == 1 << 63
        n.signal(2**64 - 1)
        assert n.poll() == 2**64 - 1
        for bits in (0, 2**64, -1, 2**70):
            with pytest.raises(ValueError, match="non-zero 64-bit"):
                n.signal(bits)
        # past the client's check, straight to the kernel: an error, not a disconnect
        with pytest.raises(kernel.InvalidArgumentError, match="non-zero"):
            k._roundtrip(Op.NOTIFICATION_SIGNAL, n, "signal", arg=0)
        assert n.poll() == 0  # nothing was signalled
        n.signal(8)
        assert n.poll() == 8


def test_a_waiter_blocked_in_another_process_is_woken_by_signal(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n, back = k.notification(), k.endpoint()
        with spawned(k, "actor.py", "wait", "0", n=n, back=back) as waiter:
            time.sleep(0.3)  # let it block in wait
            t0 = time.monotonic()
            n.signal(0b1010)
            assert back.recv(timeout=10).data == b"10"
            assert time.monotonic() - t0 < 1.0
            assert waiter.wait(timeout=10) == 0
        assert n.poll() == 0  # the waiter took (and cleared) the word


def test_a_signal_from_another_process_wakes_a_waiter_here(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        n = k.notification()
        with spawned(k, "actor.py", "signal", "0.1", str(1 << 40), n=n) as signaller:
            assert n.wait(timeout=10) == 1 << 40
            assert signaller.wait(timeout=10) == 0


# ------------------------------------------------------------------ async on_signal


async def until(condition, timeout: float = 5.0) -> None:
    """Poll `condition` (the handler runs in its own task; nothing to await on here)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_on_signal_runs_a_plain_callback_when_bits_arrive(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        got: list[int] = []
        task = n.on_signal(got.append)
        try:
            await n.signal(3)
            await until(lambda: got == [3])
            await n.signal(1 << 63)
            await until(lambda: got == [3, 1 << 63])
        finally:
            await stop(task)


async def test_on_signal_runs_a_coroutine_callback_and_keeps_bits_that_arrive_meanwhile(
    kernel_daemon,
):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        got: list[int] = []

        async def handler(bits: int) -> None:
            got.append(bits)
            await asyncio.sleep(0.2)  # bits signalled now wait for the next call

        task = n.on_signal(handler)
        try:
            await n.signal(1)
            await until(lambda: got == [1])
            await n.signal(2)
            await n.signal(4)
            await until(lambda: len(got) == 2)
            assert got == [1, 6]
        finally:
            await stop(task)


async def test_on_signal_stops_when_its_task_is_cancelled_and_leaves_later_bits(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        got: list[int] = []
        task = n.on_signal(got.append)
        await n.signal(1)
        await until(lambda: got == [1])
        await asyncio.sleep(0.05)  # the handler's next wait is now pending in the kernel
        await stop(task)
        await n.signal(16)  # the cancelled wait was withdrawn: nobody takes these bits
        await asyncio.sleep(0.1)
        assert got == [1]
        assert await n.poll() == 16


async def test_on_signal_gets_bits_signalled_by_another_process(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        n = await k.notification()
        got: list[int] = []
        task = n.on_signal(got.append)
        try:
            proc = await k.spawn(
                [sys.executable, str(PEERS / "actor.py"), "signal", "0", str(0xF0)], caps={"n": n}
            )
            try:
                assert await proc.wait(timeout=10) == 0
            finally:
                proc.kill()
                await proc.wait(timeout=10)
            await until(lambda: got == [0xF0])
        finally:
            await stop(task)
