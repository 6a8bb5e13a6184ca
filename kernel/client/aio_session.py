"""Direct sessions, asyncio face: `await ep.session()`, many calls in flight.

The event loop watches this side's session doorbell. While the loop has nothing
to take from the ring, the ring's waiting flag stays set, so the peer rings the
doorbell exactly when a record lands (as aio.py does with the kernel's ring);
replies that land together are taken in one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._core.port import FULL
from .._core.ring import RingCorruptError
from ..abi import Op
from ..errors import CallTimeoutError, PeerClosedError
from ._conn import CROWDED_NS, deadline_from, next_spin
from ._session import (
    _CALL,
    _REPLY,
    _SEND,
    ANSWERED_GRACE_S,
    SPACE_WAIT_S,
    SPIN_MIN_NS,
    YIELD_AFTER_NS,
    SessionEnd,
    SessionMessage,
    SessionReply,
    SessionView,
    answer_never_came,
    awrite_kept,
    dropped_error,
    ended_error,
    no_answer,
)
from .session import RECV_BATCH, _offered_sid

SPIN_ASYNC_NS = 30_000
"""Longest poll for a lone call's reply that blocks the event loop."""

if TYPE_CHECKING:
    from .._core.ring import Completion
    from .aio import AsyncKernel

Data = bytes | bytearray | memoryview


class _AsyncSide(SessionView):
    """Doorbell handling shared by both roles."""

    def __init__(self, k: AsyncKernel, end: SessionEnd) -> None:
        self._k = k
        self._end = end
        self._loop = k._loop
        self._failure: Exception | None = None
        # The loop holds the doorbell's callback: through a weak reference, so that
        # a side dropped unclosed can be collected (and close itself: __del__).
        self._loop.add_reader(end.my_efd, _ring, weakref.ref(self))
        k._sessions.add(self)
        self._arm()

    def __del__(self) -> None:
        """Dropped without close(): end it without waiting for the kernel's answer,
        as the blocking face does. Nothing else can reach it now."""
        end = getattr(self, "_end", None)
        if end is None or end.closed or end.closing:
            return
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._loop.remove_reader(end.my_efd)
        end.close_unwaited(block=False)

    def _arm(self) -> None:
        if not self._end.inbox.prepare_sleep():  # something landed meanwhile
            self._loop.call_soon(self._on_doorbell)

    def _on_doorbell(self) -> None:
        end = self._end
        if end.closed:
            return
        try:
            os.eventfd_read(end.my_efd)
        except BlockingIOError:
            pass
        try:
            while True:
                end.inbox.end_sleep()
                self._take()
                end.check()
                if end.inbox.prepare_sleep():
                    return
        except Exception as e:  # the session ended or the peer broke the ring
            self._failure = e
            self._fail(e)

    def _take(self) -> None:
        """Take what landed (raises if the session ended or the ring is broken)."""
        raise NotImplementedError

    def _fail(self, e: Exception) -> None:
        raise NotImplementedError

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        self._end.check()

    async def _put(self, op: int, req_id: int, data: Any, deadline: int) -> None:
        end = self._end
        while code := end._write(op, req_id, data):
            if code != FULL:
                raise ended_error(end.sid, code)
            self._check()
            end.before_space_wait(deadline)
            await asyncio.sleep(SPACE_WAIT_S)

    async def close(self) -> None:
        """End the session for both sides and free its resources. Idempotent."""
        end = self._end
        if end.closed or end.closing:
            return
        end.closing = True
        self._loop.remove_reader(end.my_efd)
        self._k._sessions.discard(self)
        self._fail(_closed(end.sid))
        try:
            if end.conn.lost is None:
                await self._k._roundtrip(Op.SESSION_CLOSE, None, "session close", arg=end.index)
        except PeerClosedError:
            pass  # the kernel is gone, and every session with it
        finally:
            end.release()

    def _abandon(self, e: Exception) -> None:
        """The connection closes under it: fail its waiters, unmap (no kernel call)."""
        end = self._end
        if end.closed:
            return
        end.closing = True
        self._loop.remove_reader(end.my_efd)
        self._k._sessions.discard(self)
        self._failure = e
        self._fail(e)
        end.release()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _ring(side_ref: weakref.ref[_AsyncSide]) -> None:
    side = side_ref()
    if side is not None:
        side._on_doorbell()


def _closed(sid: int) -> Exception:
    return PeerClosedError(f"session {sid}: closed")


def _shut_down(sid: int) -> Exception:
    return PeerClosedError(f"session {sid}: shut down")


class AsyncSession(_AsyncSide):
    """The calling side of a direct session, for asyncio: any number of calls may be
    in flight; each is answered by request id, so a late reply never reaches a later
    call."""

    def __init__(self, k: AsyncKernel, end: SessionEnd) -> None:
        self._futures: dict[int, asyncio.Future[Completion]] = {}
        self._next_id = 1
        self._spin_ns = SPIN_ASYNC_NS
        super().__init__(k, end)

    def _take(self) -> None:
        end = self._end
        try:
            while (c := end.port.take_record()) is not None:
                fut = self._futures.pop(c.req_id, None)
                if fut is not None and c.opcode == _REPLY and not fut.done():
                    if c.status:  # the server dropped the call without replying
                        fut.set_exception(dropped_error(end.sid))
                    else:
                        fut.set_result(c)
        except RingCorruptError as e:
            raise end.corrupt(e) from None

    def _fail(self, e: Exception) -> None:
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            if not fut.done():
                fut.set_exception(e)

    async def call(self, data: Data, *, timeout: float | None = None) -> SessionReply:
        """Send `data` and wait for its reply; the timeout covers both. A call that
        times out or whose task is cancelled is withdrawn: its server's reply then
        fails as too late, unless it answered first (port.pyx, the call words)."""
        deadline = deadline_from(timeout)
        self._check()
        req_id, self._next_id = self._next_id, self._next_id + 1
        fut: asyncio.Future[Completion] = self._loop.create_future()
        self._futures[req_id] = fut
        timer = None
        try:
            await self._put(_CALL, req_id, data, deadline)  # the port validates it
            if len(self._futures) == 1:
                # After whatever is ready now: other tasks about to call make it moot.
                self._loop.call_soon(self._spin_for, fut)
            if deadline >= 0:  # same clock: loop.time() is time.monotonic()
                timer = self._loop.call_at(deadline / 1e9, self._expire, req_id, fut)
            c = await fut
        except BaseException:
            self._end.port.withdraw(req_id)  # cancelled or failed; a no-op after _expire
            raise
        finally:
            self._futures.pop(req_id, None)
            if timer is not None:
                timer.cancel()
        return SessionReply(c.payload, self._end.peer)

    def _expire(self, req_id: int, fut: asyncio.Future[Completion]) -> None:
        """The call's deadline: withdraw it and fail it, unless its server answered
        first (then its reply is the answer: wait ANSWERED_GRACE_S for it). A loop
        callback, so no reply is taken between the check and the withdrawal."""
        if fut.done() or self._end.closed:
            return
        if self._end.port.withdraw(req_id):
            fut.set_exception(no_answer(self._end.sid))
        else:
            self._loop.call_later(ANSWERED_GRACE_S, self._never_came, fut)

    def _never_came(self, fut: asyncio.Future[Completion]) -> None:
        if not fut.done():
            fut.set_exception(answer_never_came(self._end.sid))

    def _spin_for(self, fut: asyncio.Future[Completion]) -> None:
        """The only call in flight: poll briefly for its reply before the loop sleeps.
        A reply within the spin costs ~3 µs; waking a sleeping loop ~25 µs. Bounded
        (SPIN_ASYNC_NS) so other tasks of the loop wait at most that long."""
        end = self._end
        if fut.done() or len(self._futures) != 1 or end.closed:
            return
        ring = end.inbox
        found = ring.spin(self._spin_ns, YIELD_AFTER_NS, CROWDED_NS)
        self._spin_ns = next_spin(
            self._spin_ns, found, crowded=ring.crowded, lo=SPIN_MIN_NS, hi=SPIN_ASYNC_NS
        )
        if found:
            self._on_doorbell()

    async def send(self, data: Data, *, timeout: float | None = None) -> None:
        """One-way: queue `data` for the server; waits only while the ring is full."""
        self._check()
        await self._put(_SEND, 0, data, deadline_from(timeout))  # the port validates it


class AsyncSessionServer(_AsyncSide):
    """The serving side of a direct session, for asyncio."""

    def __init__(self, k: AsyncKernel, end: SessionEnd) -> None:
        self._ready: asyncio.Future[None] | None = None
        self._inbox: deque[SessionMessage] = deque()
        self._draining = False
        super().__init__(k, end)

    @property
    def badge(self) -> int:
        """The badge of the caller's capability, fixed by the kernel at open."""
        return int(self._end.port.badge)

    def _take(self) -> None:
        batch: list[SessionMessage] = []
        if self._end.take_many(batch, RECV_BATCH):
            self._inbox.extend(batch)
            self._wake(None)

    def _fail(self, e: Exception) -> None:
        self._wake(e)

    def _wake(self, e: Exception | None) -> None:
        fut, self._ready = self._ready, None
        if fut is not None and not fut.done():
            if e is None:
                fut.set_result(None)
            else:
                fut.set_exception(e)

    async def close(self, linger: float = 0.0) -> None:
        """End the session for both sides and free its resources. Idempotent.
        With `linger`, first wait up to that many seconds while the caller drains
        the replies kept for its full ring (as SessionServer.close)."""
        end = self._end
        if linger > 0 and not (end.closed or end.closing):
            await awrite_kept([end], time.monotonic() + linger)
        await super().close()

    def shutdown(self) -> None:
        """Stop receiving: a task waiting in recv() raises PeerClosedError now, and so
        does every later recv(); requests already received can still be answered."""
        self._draining = True
        self._wake(_shut_down(self._end.sid))

    async def recv(self, *, timeout: float | None = None) -> SessionMessage:
        """Wait for the next request; PeerClosedError once the session ended."""
        while not self._inbox:
            if self._draining:
                raise _shut_down(self._end.sid)
            self._check()
            self._ready = self._loop.create_future()
            try:
                await asyncio.wait_for(self._ready, timeout)
            except TimeoutError:
                raise CallTimeoutError(
                    f"session {self._end.sid}: no request before the deadline"
                ) from None
        return self._inbox.popleft()


async def open_session(k: AsyncKernel, ep: Any, timeout: float | None) -> AsyncSession:
    c = await k._roundtrip(Op.ENDPOINT_SESSION_OPEN, ep, "session", timeout=timeout)
    return AsyncSession(k, SessionEnd(k._open(), c, server=False))


async def decline_session(k: AsyncKernel, ep: Any, offer: Any, reason: str) -> None:
    sid = _offered_sid(offer, "decline_session")
    await k._roundtrip(
        Op.ENDPOINT_SESSION_DECLINE, ep, "decline_session", arg=sid, payload=reason.encode()
    )


async def accept_session(k: AsyncKernel, ep: Any, offer: Any) -> AsyncSessionServer:
    sid = _offered_sid(offer, "accept_session")
    c = await k._roundtrip(Op.ENDPOINT_SESSION_ACCEPT, ep, "accept_session", arg=sid)
    return AsyncSessionServer(k, SessionEnd(k._open(), c, server=True, badge=offer.badge))
