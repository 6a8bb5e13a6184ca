"""Timeouts: 0 returns at once, a duration fails after it (promptly), None waits forever.

Also: a late reply never reaches a later call, and bad timeouts are rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from peerlib import accept_offer, spawned

import kernel
from kernel import abi
from kernel.client._conn import deadline_from

pytestmark = pytest.mark.integration


Op = Callable[[kernel.Kernel, "float | None"], object]

# Each blocks on a fresh object that nobody else holds: only the timeout can end it.
BLOCKING: dict[str, Op] = {
    "recv": lambda k, t: k.endpoint().recv(timeout=t),
    "call": lambda k, t: k.endpoint().call(b"x", timeout=t),
    "send": lambda k, t: k.endpoint().send(b"x", timeout=t),
    "wait": lambda k, t: k.notification().wait(timeout=t),
}


def elapsed_failing(k: kernel.Kernel, op: Op, timeout: float) -> float:
    t0 = time.monotonic()
    with pytest.raises(kernel.CallTimeoutError) as info:
        op(k, timeout)
    assert isinstance(info.value, TimeoutError)
    return time.monotonic() - t0


def test_timeout_zero_fails_at_once(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        k.notification()  # warm up the connection and the kernel
        for name, op in BLOCKING.items():
            assert elapsed_failing(k, op, 0) < 0.05, name


def test_a_short_timeout_fails_after_it_and_promptly(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        for name, op in BLOCKING.items():
            assert 0.1 <= elapsed_failing(k, op, 0.1) < 1.0, name


def test_the_timeout_error_says_what_expired(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        with pytest.raises(kernel.CallTimeoutError, match="no receiver"):
            k.endpoint().call(b"x", timeout=0.05)
        with pytest.raises(kernel.CallTimeoutError, match="no message"):
            k.endpoint().recv(timeout=0.05)


def test_a_negative_or_nan_timeout_raises_value_error(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        for op in BLOCKING.values():
            for timeout in (-1, -0.001, math.nan):
                with pytest.raises(ValueError, match="timeout"):
                    op(k, timeout)
        n = k.notification()  # the connection is fine
        n.signal(1)
        assert n.poll() == 1


def test_a_bad_timeout_on_reply_recv_leaves_the_call_answerable(kernel_daemon):
    """reply_recv checks its timeout before it uses up the one-shot reply: a ValueError
    there must not leave the caller waiting for an answer that can never come."""
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        got: list[bytes] = []
        caller = threading.Thread(target=lambda: got.append(ep.call(b"q", timeout=5).data))
        caller.start()
        msg = ep.recv(timeout=5)
        with pytest.raises(ValueError, match="timeout"):
            ep.reply_recv(msg, b"lost?", timeout=-1)
        msg.reply(b"answered")
        caller.join(5)
        assert got == [b"answered"]


async def test_a_bad_timeout_on_async_reply_recv_leaves_the_call_answerable(kernel_daemon):
    async with kernel.connect_async(autostart=False) as k:
        ep = await k.endpoint()
        call = asyncio.ensure_future(ep.call(b"q", timeout=5))
        msg = await ep.recv(timeout=5)
        with pytest.raises(ValueError, match="timeout"):
            await ep.reply_recv(msg, b"lost?", timeout=math.nan)
        await msg.reply(b"answered")
        assert (await call).data == b"answered"


def test_an_infinite_or_huge_timeout_waits_like_none(kernel_daemon):
    """One deadline_from() for the kernel path and the sessions (faces.pyx): before,
    the kernel path's raised OverflowError for math.inf."""
    assert deadline_from(None) == abi.DEADLINE_FOREVER
    assert deadline_from(0) == abi.DEADLINE_NOW
    with kernel.connect(autostart=False) as k:
        n, ep = k.notification(), k.endpoint()
        for timeout in (math.inf, 1e12):
            n.signal(1)
            assert n.wait(timeout=timeout) == 1
            with _in_thread(_echo_once, ep, timeout):
                assert ep.call(b"x", timeout=timeout).data == b"x"
            opened: list[kernel.Session] = []
            with _in_thread(_open_into, opened, ep, timeout):  # the open waits for the accept
                accepted = accept_offer(ep)
            with _in_thread(_echo_once, accepted, timeout), opened[0] as s:
                assert s.call(b"y", timeout=timeout).data == b"y"
            accepted.close()


@contextlib.contextmanager
def _in_thread(fn: Callable[..., object], *args: object) -> Iterator[None]:
    t = threading.Thread(target=fn, args=args)
    t.start()
    try:
        yield
    finally:
        t.join(10)
    assert not t.is_alive()


def _open_into(opened: list[kernel.Session], ep: kernel.EndpointCap, timeout: float) -> None:
    opened.append(ep.session(timeout=timeout))


def _echo_once(ep: kernel.EndpointCap | kernel.SessionServer, timeout: float) -> None:
    m = ep.recv(timeout=timeout)
    m.reply(m.data)


# ------------------------------------------------------------------ timeout=None


def test_blocking_ops_without_a_timeout_wait_for_a_late_peer(kernel_daemon):
    """recv, send, call and wait with timeout=None, one thread each, all at once; each is
    satisfied by another process that acts 0.2 s after it connected."""
    with kernel.connect(autostart=False) as k:
        ep_recv, ep_send, ep_call, back_send, back_call = (k.endpoint() for _ in range(5))
        n = k.notification()
        ops: dict[str, Callable[[], object]] = {
            "recv": lambda: ep_recv.recv(timeout=None).data,
            "send": lambda: ep_send.send(b"patient", timeout=None),
            "call": lambda: ep_call.call(b"echo me", timeout=None).data,
            "wait": lambda: n.wait(timeout=None),
        }
        results: dict[str, object] = {}
        elapsed: dict[str, float] = {}

        def run(name: str) -> None:
            t0 = time.monotonic()
            results[name] = ops[name]()
            elapsed[name] = time.monotonic() - t0

        with contextlib.ExitStack() as stack:
            peers = [
                stack.enter_context(spawned(k, "actor.py", *args, **caps))
                for args, caps in [
                    (("send", "0.2", "late"), {"ep": ep_recv}),
                    (("recv", "0.2"), {"ep": ep_send, "back": back_send}),
                    (("recv", "0.2"), {"ep": ep_call, "back": back_call}),
                    (("signal", "0.2", str(0b1100)), {"n": n}),
                ]
            ]
            threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in ops]
            for t in threads:
                t.start()
            for t in threads:
                t.join(15)
            assert results == {"recv": b"late", "send": None, "call": b"echo me", "wait": 0b1100}
            assert min(elapsed.values()) >= 0.2, elapsed
            assert back_send.recv(timeout=10).data == b"patient"
            assert back_call.recv(timeout=10).data == b"echo me"
            assert [p.wait(timeout=10) for p in peers] == [0, 0, 0, 0]


def test_a_call_timeout_covers_the_wait_for_the_reply(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, ready = k.endpoint(), k.notification()
        with spawned(k, "echo_server.py", "hold", ep=ep, ready=ready) as server:
            deadline = time.monotonic() + 10
            while f"pid {server.pid} uid" not in kernel_daemon.log():  # it connected
                assert time.monotonic() < deadline
                time.sleep(0.005)
            time.sleep(0.05)  # and sits in recv
            t0 = time.monotonic()
            with pytest.raises(kernel.CallTimeoutError, match="did not reply"):
                ep.call(b"never answered", timeout=0.3)
            assert 0.3 <= time.monotonic() - t0 < 1.3
            assert ready.poll() == 1  # the server did take the call


# ------------------------------------------------------------------ late replies


class Interrupted(Exception):
    pass


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted


def test_a_call_ended_by_a_signal_handler_is_withdrawn_from_the_kernel(kernel_daemon):
    """An exception from a signal handler ends a blocking call (as Ctrl-C does) and
    withdraws it: no server receives a call whose caller has gone on."""
    old = signal.signal(signal.SIGALRM, _interrupt)
    try:
        with kernel.connect(autostart=False) as k:
            ep = k.endpoint()
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                ep.call(b"withdrawn")  # nobody receives yet: it waits in the kernel
            with pytest.raises(kernel.CallTimeoutError):
                ep.recv(timeout=0.3)
            k.notification().signal(1)  # the connection still works
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_a_late_reply_fails_on_the_server_and_never_reaches_a_later_call(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()
        with spawned(k, "late_server.py", ep=ep) as server:
            assert ep.call(b"ping", timeout=10).data == b"PING|none"
            with pytest.raises(kernel.CallTimeoutError):
                ep.call(b"slow:0.3", timeout=0.1)
            # This call waits while the server sleeps and then tries its late reply;
            # it must get its own answer, which reports how the late reply fared.
            assert ep.call(b"after", timeout=10).data == b"AFTER|PeerClosedError"
            assert ep.call(b"stop", timeout=10).data == b"bye"
            assert server.wait(timeout=10) == 0


def test_reply_recv_to_a_caller_that_died_fails_without_receiving(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        ep, back = k.endpoint(), k.endpoint()
        with spawned(k, "actor.py", "call", "0", "q", ep=ep, back=back):
            msg = ep.recv(timeout=10)
        # the caller is gone (killed and reaped above): the reply part fails ...
        with pytest.raises(kernel.PeerClosedError, match="not delivered"):
            ep.reply_recv(msg, b"too late", timeout=0.5)
        # ... and no receive was left behind in the kernel
        with pytest.raises(kernel.WouldBlock):
            ep.send_nowait(b"x")
