"""Notifications: a 64-bit word that signals OR into; wait returns it and clears it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time

import pytest
from peerlib import PEERS, ROOT, readme_script, run_script, spawned

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


# ------------------------------------------------------------------ bound to an endpoint


def _recv_in_thread(ep: kernel.EndpointCap) -> tuple[threading.Thread, list[kernel.Message]]:
    got: list[kernel.Message] = []
    t = threading.Thread(target=lambda: got.append(ep.recv(timeout=10)))
    t.start()
    time.sleep(0.1)  # it waits in the kernel
    return t, got


def test_a_signal_from_another_process_wakes_a_receive_on_the_bound_endpoint(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        ep.bind(n)
        with spawned(k, "actor.py", "signal", "0.1", str(0b101), n=n) as signaller:
            msg = ep.recv(timeout=10)
            assert signaller.wait(timeout=10) == 0
        assert msg.is_signal
        assert msg.from_kernel
        assert (msg.badge, msg.data, msg.sender.pid, msg.is_call) == (0b101, b"", 0, False)
        assert n.poll() == 0  # the receive took the word


def test_a_pending_signal_comes_before_waiting_messages_and_bits_or_together(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        ep.bind(n)
        sender = threading.Thread(target=ep.send, args=(b"message",), kwargs={"timeout": 10})
        sender.start()
        time.sleep(0.1)  # the message waits for a receiver
        n.signal(1)
        n.signal(8)
        first, second = ep.recv(timeout=10), ep.recv(timeout=10)
        sender.join(10)
        assert (first.is_signal, first.badge) == (True, 9)
        assert (second.is_signal, second.data) == (False, b"message")


def test_binding_with_bits_set_wakes_a_waiting_receive_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        n.signal(2)
        t, got = _recv_in_thread(ep)
        ep.bind(n)
        t.join(10)
        assert (got[0].is_signal, got[0].badge) == (True, 2)


def test_a_wait_on_the_notification_itself_comes_before_the_endpoint(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        ep.bind(n)
        t, got = _recv_in_thread(ep)
        bits: list[int] = []
        waiter = threading.Thread(target=lambda: bits.append(n.wait(timeout=10)))
        waiter.start()
        time.sleep(0.1)
        n.signal(4)
        waiter.join(10)
        assert bits == [4]  # it asked for this notification by name
        assert not got  # the endpoint's receive still waits
        ep.send(b"done", timeout=10)
        t.join(10)
        assert got[0].data == b"done"


def test_bind_needs_receive_and_wait_and_is_one_to_one(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n, other = k.endpoint(), k.notification(), k.notification()
        with pytest.raises(kernel.AccessDeniedError, match="RECEIVE"):
            ep.copy(kernel.Rights.SEND).bind(n)
        with pytest.raises(kernel.AccessDeniedError, match="WAIT"):
            ep.bind(n.copy(kernel.Rights.SIGNAL))
        with pytest.raises(TypeError, match="notification"):
            ep.bind(ep)  # type: ignore[arg-type]
        with pytest.raises(kernel.InvalidArgumentError, match="no notification is bound"):
            ep.unbind()
        ep.bind(n)
        with pytest.raises(kernel.InvalidArgumentError, match="has a bound notification"):
            ep.bind(other)
        with pytest.raises(kernel.InvalidArgumentError, match="bound to an endpoint already"):
            k.endpoint().bind(n)


def test_unbinding_or_destroying_either_side_ends_the_binding(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, n = k.endpoint(), k.notification()
        ep.bind(n)
        ep.unbind()
        n.signal(1)
        with pytest.raises(kernel.CallTimeoutError):
            ep.recv(timeout=0.05)  # the word stays with the notification
        assert n.poll() == 1
        ep.bind(n)
        n.close()  # its last capability: the endpoint is free to bind another
        fresh = k.notification()
        ep.bind(fresh)
        fresh.signal(16)
        assert ep.recv(timeout=10).badge == 16
        ep.close()
        fresh.signal(32)  # the notification outlives its endpoint, unbound
        assert fresh.poll() == 32
        k.endpoint().bind(fresh)


def test_the_signals_example_runs_as_its_readme_says(kernel_daemon):
    out = run_script(readme_script(ROOT / "examples/signals/README.md"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == [
        "hello, 1",
        "hello, 2",
        "bonjour, 3",
        "stopped after 3 calls",
    ]


async def test_the_asyncio_face_binds_and_receives_signals(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep, n = await k.endpoint(), await k.notification()
        await ep.bind(n)
        receiving = asyncio.ensure_future(ep.recv(timeout=10))
        await asyncio.sleep(0.05)
        await n.signal(64)
        msg = await receiving
        assert (msg.is_signal, msg.badge) == (True, 64)
        await ep.unbind()


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
