"""Direct sessions, blocking face: `ep.session()` and `ep.accept_session(offer)`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import abi
from .._core.faces import RECV_BATCH as RECV_BATCH
from .._core.faces import SessionCaller, SessionReceiver
from .._core.port import FULL
from .._core.ring import RingCorruptError
from ..abi import Op
from ..errors import CallTimeoutError, PeerClosedError
from ._conn import deadline_from
from ._session import (
    _CALL,
    _SEND,
    SessionEnd,
    SessionMessage,
    SessionReply,
    SessionView,
    answer_never_came,
    deadline_passed,
    ended_error,
    too_large,
    write_kept,
)

if TYPE_CHECKING:
    from .sync import Kernel

Data = bytes | bytearray | memoryview


class _Base(SessionView):
    def __init__(self, k: Kernel, end: SessionEnd) -> None:
        self._k = k
        self._end = end
        # Held while a thread waits on the rings (it may spin without the GIL): close()
        # from another thread ends the session first, then unmaps once that thread left.
        self._lock: AbstractContextManager[bool] = threading.Lock()

    def close(self) -> None:
        """End the session for both sides (the peer's next operation raises
        PeerClosedError) and free its resources. Idempotent."""
        end = self._end
        if end.closed:
            return
        if not end.closing:
            end.closing = True  # check() raises from now on, whatever the word says
            try:  # the kernel ends it: a waiting thread wakes and leaves
                if end.conn.lost is None:
                    self._k._roundtrip(Op.SESSION_CLOSE, None, "session close", arg=end.index)
            except PeerClosedError:
                pass  # the kernel is gone, and every session with it
        with self._lock:
            end.release()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        """Dropped without close(): end it without waiting for the kernel's answer.
        (A finalizer may run on any thread, even one inside the connection's own
        locks, so it never blocks on them; if one is busy, the connection's next
        submit sends the close.) Nothing else can reach it now."""
        end = getattr(self, "_end", None)
        if end is not None and not end.closed:
            end.close_unwaited(block=False)


class Session(SessionCaller, _Base):
    """The calling side of a direct session (`ep.session()`): calls and one-way sends
    go straight to the server that accepted it, not through the kernel. Thread-safe:
    calls take turns; sends need no turn (each is one compiled step under the GIL).
    `call()` and `send()` are compiled (kernel/_core/faces.pyx SessionCaller); their
    rare paths are here."""

    def __init__(self, k: Kernel, end: SessionEnd) -> None:
        super().__init__(k, end)
        self._lock = self._bind(end.port, end.peer)  # the turn: close() waits for a call

    def _call_slow(
        self, req_id: int, data: Data, deadline: int, first: int | Exception
    ) -> SessionReply:
        """call() past its compiled common path, with the turn held. `first` is the
        code SessionPort.call returned, or what it raised."""
        end = self._end
        if isinstance(first, Exception):
            if isinstance(first, RingCorruptError):  # never resend: it may have gone out
                raise end.corrupt(first) from None
            end.check()  # a ValueError: released, as this side closed it
            raise first
        if first == FULL:  # not written: wait for room (or raise)
            end.send(_CALL, req_id, data, deadline)
        else:
            end.after_wait(first)
        answered = False  # the server answered before the deadline: its reply is ours
        while (reply := end.take_reply(req_id)) is None:
            if deadline_passed(deadline):
                if answered:  # it never came (the peer forged the word, or stalls)
                    raise answer_never_came(end.sid)
                deadline, answered = end.give_up(req_id), True
            end.wait(deadline)
        return SessionReply(reply, end.peer)

    def _send_slow(self, data: Data, timeout: float | None) -> None:
        """send() past its compiled common path: a full ring, a payload too large, or
        an ended session (each named here)."""
        self._end.send(_SEND, 0, data, deadline_from(timeout))

    def send_many(self, data: Sequence[Data], *, timeout: float | None = None) -> None:
        """One-way, a batch: queue every item of `data` in order, ringing the server's
        doorbell once per ring-full rather than per message. Blocks only while the
        ring is full, until `timeout`."""
        items = data if isinstance(data, list) else list(data)
        end, deadline, done = self._end, deadline_from(timeout), 0
        while done < len(items):
            try:  # no lock: each step is one compiled call under the GIL
                n = end.port.send_many(items, done)
            except OverflowError:
                raise too_large(max(map(len, items))) from None
            except ValueError:
                end.check()
                raise
            if n < 0:
                raise ended_error(end.sid, n)
            done += n
            if not n:
                end.wait_for_space(deadline)


class SessionServer(SessionReceiver, _Base):
    """The serving side of a direct session (`ep.accept_session(offer)`). `recv()`
    is compiled (kernel/_core/faces.pyx SessionReceiver); its rare paths are here."""

    def __init__(self, k: Kernel, end: SessionEnd) -> None:
        super().__init__(k, end)
        self._lock = self._bind(end.port)  # the turn: close() waits for a recv
        self._draining = False

    def close(self, linger: float = 0.0) -> None:
        """End the session for both sides and free its resources. Idempotent.
        With `linger`, first wait up to that many seconds while the caller drains
        the replies kept for its full ring: without it, a call this side answered
        but could not yet write fails with PeerClosedError. (SessionGroup.close
        takes the same.)"""
        end = self._end
        if linger > 0 and not (end.closed or end.closing):
            write_kept([end], time.monotonic() + linger)
        super().close()

    def shutdown(self) -> None:
        """Stop receiving: a thread waiting in recv() raises PeerClosedError now, and so
        does every later recv(); requests already received can still be answered.
        Then close() it. (A server's graceful stop; thread-safe.)"""
        self._draining = self._slow_only = True
        try:
            os.eventfd_write(self._end.my_efd, 1)  # wake a sleeping recv()
        except OSError:
            pass  # closed meanwhile: nobody waits

    @property
    def badge(self) -> int:
        """The badge of the caller's capability, fixed by the kernel at open."""
        return int(self._end.port.badge)

    def _recv_slow(self, deadline: int) -> SessionMessage:
        """recv() past its compiled common path (the turn is free)."""
        return self._take_or_fill(1, deadline)[0]

    def recv_many(
        self, max_n: int = RECV_BATCH, *, timeout: float | None = None
    ) -> list[SessionMessage]:
        """Wait for requests; return every one waiting, up to `max_n` (at least one).
        One compiled step takes the whole batch: for high message rates."""
        if max_n < 1:
            raise ValueError("max_n must be at least 1")
        return self._take_or_fill(max_n, deadline_from(timeout))

    def _take_or_fill(self, max_n: int, deadline: int) -> list[SessionMessage]:
        """Up to `max_n` queued requests, waiting for a batch first if none is queued."""
        with self._lock:
            if not (ready := self._take_ready(max_n)):
                self._fill(deadline)
                ready = self._take_ready(max_n)
        return ready

    def _fill(self, deadline: int) -> None:
        end = self._end
        batch: list[SessionMessage] = []
        # Shut down: no more waiting (shutdown()'s doorbell may be spent), but what
        # already arrived is still taken.
        while not end.take_many(batch, RECV_BATCH, None if self._draining else deadline):
            if self._draining:
                raise PeerClosedError(f"session {end.sid}: shut down")
            if deadline_passed(deadline):
                end.check()
                raise CallTimeoutError(f"session {end.sid}: no request before the deadline")
            end.conn.check_socket()  # the wait may have ended for the kernel's socket
        self._queue(batch)


def open_session(k: Kernel, ep: Any, timeout: float | None) -> Session:
    c = k._roundtrip(Op.ENDPOINT_SESSION_OPEN, ep, "session", timeout=timeout)
    return Session(k, SessionEnd(k._conn, c, server=False))


def decline_session(k: Kernel, ep: Any, offer: Any, reason: str) -> None:
    sid = _offered_sid(offer, "decline_session")
    k._roundtrip(
        Op.ENDPOINT_SESSION_DECLINE, ep, "decline_session", arg=sid, payload=reason.encode()
    )


def _offered_sid(offer: Any, verb: str) -> int:
    if not getattr(offer, "session_offer", False):
        raise TypeError(f"{verb} needs a session offer message, not {offer!r}")
    return abi.decode_offer(offer.data).sid


def accept_session(k: Kernel, ep: Any, offer: Any) -> SessionServer:
    sid = _offered_sid(offer, "accept_session")
    c = k._roundtrip(Op.ENDPOINT_SESSION_ACCEPT, ep, "accept_session", arg=sid)
    return SessionServer(k, SessionEnd(k._conn, c, server=True, badge=offer.badge))


__all__ = ["Session", "SessionServer", "SessionMessage", "SessionReply"]
