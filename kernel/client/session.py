"""Direct sessions, blocking face: `ep.session()` and `ep.accept_session(offer)`."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import abi
from ..abi import Op
from ._conn import as_payload, deadline_from
from ._session import (
    _CALL,
    _SEND,
    CallerSide,
    SessionEnd,
    SessionMessage,
    SessionReply,
    deadline_passed,
)

if TYPE_CHECKING:
    from .sync import Kernel

Data = bytes | bytearray | memoryview


class _Base:
    def __init__(self, k: Kernel, end: SessionEnd) -> None:
        self._k = k
        self._end = end

    @property
    def peer(self) -> Any:
        """The other side's pid/uid/gid, as the kernel verified them."""
        return self._end.peer

    @property
    def closed(self) -> bool:
        return self._end.closed

    def close(self) -> None:
        """End the session for both sides (the peer's next operation raises
        PeerClosedError) and free its resources. Idempotent."""
        end = self._end
        if end.closed:
            return
        try:
            if end.conn.lost is None:
                self._k._roundtrip(Op.SESSION_CLOSE, None, "session close", arg=end.index)
        finally:
            end.release()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_end", None) or self._end.closed:
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a finalizer must not raise; the kernel ends it at exit
            pass


class Session(_Base):
    """The calling side of a direct session (`ep.session()`): calls and one-way sends
    go straight to the server that accepted it, not through the kernel. Thread-safe:
    one call at a time."""

    def __init__(self, k: Kernel, end: SessionEnd) -> None:
        super().__init__(k, end)
        self._side = CallerSide(end)

    def call(self, data: Data, *, timeout: float | None = None) -> SessionReply:
        """Send `data` and wait for the reply; the timeout covers both.

        Raises CallTimeoutError (the late reply is dropped, never returned to a later
        call), PeerClosedError when the server closed the session or died, and
        InvalidCapabilityError when the capability it was opened through was revoked.
        """
        payload = as_payload(data)
        deadline = deadline_from(timeout)
        side = self._side
        end = side.end
        with side.lock:
            end.check()
            req_id = side.start(_CALL, payload, deadline)
            while (reply := side.answer(req_id)) is None:
                if deadline_passed(deadline):
                    end.check()
                    raise _timeout(end.sid)
                end.wait(deadline)
            return reply

    def send(self, data: Data, *, timeout: float | None = None) -> None:
        """One-way: queue `data` for the server and return at once. Blocks only while
        the ring is full (the server is behind), until `timeout`."""
        payload = as_payload(data)
        with self._side.lock:
            self._side.end.check()
            self._side.start(_SEND, payload, deadline_from(timeout))


class SessionServer(_Base):
    """The serving side of a direct session (`ep.accept_session(offer)`)."""

    def __init__(self, k: Kernel, end: SessionEnd, badge: int) -> None:
        super().__init__(k, end)
        self.badge = badge

    def recv(self, *, timeout: float | None = None) -> SessionMessage:
        """Wait for the next request. Raises PeerClosedError once the caller closed the
        session or died, CallTimeoutError after `timeout`."""
        deadline = deadline_from(timeout)
        end = self._end
        end.check()
        while (c := end.take()) is None:
            if deadline_passed(deadline):
                end.check()
                raise _timeout(end.sid)
            end.wait(deadline)
        return SessionMessage(c, end, self.badge)


def _timeout(sid: int) -> Exception:
    from ..errors import CallTimeoutError

    return CallTimeoutError(f"session {sid}: no answer before the deadline")


def open_session(k: Kernel, ep: Any, timeout: float | None) -> Session:
    c = k._roundtrip(Op.ENDPOINT_SESSION_OPEN, ep, "session", timeout=timeout)
    return Session(k, SessionEnd(k._conn, c, server=False))


def accept_session(k: Kernel, ep: Any, offer: Any) -> SessionServer:
    if not getattr(offer, "session_offer", False):
        raise TypeError(f"accept_session needs a session offer message, not {offer!r}")
    sid = abi.decode_offer(offer.data).sid
    c = k._roundtrip(Op.ENDPOINT_SESSION_ACCEPT, ep, "accept_session", arg=sid)
    return SessionServer(k, SessionEnd(k._conn, c, server=True), offer.badge)


__all__ = ["Session", "SessionServer", "SessionMessage", "SessionReply"]
