"""Direct sessions, client library side (kernel/daemon/sessions.py has the why).

A session is a ring pair in a memfd that only its caller and its server map, plus
a doorbell eventfd for each. The caller produces requests into the first ring and
consumes replies from the second; the server the other way round. Each side treats
what the peer writes as hostile (the ring validates every record), and believes
only the kernel's state word in its own region about whether the session still
stands. Records reuse the kernel's header: opcode ENDPOINT_CALL or ENDPOINT_SEND
for requests, ENDPOINT_REPLY for replies, `req_id` chosen by the caller.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import time
from collections.abc import Sequence
from typing import Any

from .. import abi
from .._core.faces import SessionReply as SessionReply
from .._core.port import (
    CLOSED,
    DROPPED,
    FULL,
    LATE,
    NOT_A_CALL,
    SOCKET,
    TOO_LARGE,
    SessionPort,
    set_error_hook,
)
from .._core.port import SessionMessage as SessionMessage
from .._core.ring import Completion, RingCorruptError, prefault, ring_pair
from ..abi import Op
from ..errors import (
    CallTimeoutError,
    IPCError,
    MessageTooLargeError,
    PeerClosedError,
    Status,
    error_for,
)
from ._common import Credentials
from ._conn import CROWDED_NS, PREFAULT, Connection

SPIN_MIN_NS = 2_000
SPIN_MAX_NS = int(float(os.environ.get("MKIPC_SESSION_SPIN_US", "200")) * 1000)
"""Adaptive busy-poll before sleeping on the doorbell. A wake across cores costs
~26 µs here; a reply that comes within the spin costs ~1 µs. Only the two peers
spin: the kernel is not on the path."""
YIELD_AFTER_NS = int(float(os.environ.get("MKIPC_SESSION_YIELD_US", "1")) * 1000)
"""Poll this long before each sched_yield(). When the peer shares our core it runs
only once we yield: polling 20 µs first put ~1-10% of calls at 12-50 µs whenever
the scheduler paired them on one core (p99 3-52 µs across runs); yielding after
1 µs keeps p50 at ~2.0 µs with p99 3.4-12.9 µs, and 0 gives p50 2.6 µs with p99
3.5-7.5 µs (mkipc bench, 3 invocations each)."""
SPACE_WAIT_S = 50e-6
ANSWERED_GRACE_S = 0.1
"""How long a caller past its deadline waits for a reply its server had already
answered (port.pyx, the call words). An honest server writes it within
microseconds of answering; the bound keeps a peer that forges the word from
holding the caller past its timeout."""

_CALL, _SEND, _REPLY = int(Op.ENDPOINT_CALL), int(Op.ENDPOINT_SEND), int(Op.ENDPOINT_REPLY)
_OPEN = abi.SESSION_OPEN

_ENDED: dict[int, str] = {
    Status.PEER_CLOSED: "the peer closed the session or ended",
    Status.BAD_SLOT: "a capability the session was opened or accepted through was revoked",
}


class SessionEnd:
    """One side of a session: mapped rings, doorbells, the compiled port that checks
    the kernel's state word on every message. The waits and errors live here; both
    faces and both roles build on it."""

    def __init__(
        self, conn: Connection, grant: Completion, *, server: bool, badge: int = 0
    ) -> None:
        info = abi.decode_grant(grant.payload)
        self.conn = conn
        self.sid = info.sid
        self.index = grant.arg
        self.peer = Credentials(info.pid, info.uid, info.gid)
        memfd, caller_efd, server_efd = conn.session_fds(info.sid)
        try:
            self.mm = mmap.mmap(memfd, abi.CONTROL_SIZE + 2 * info.ring_size)
        except BaseException:
            for fd in (caller_efd, server_efd):
                os.close(fd)
            raise
        finally:
            os.close(memfd)
        if PREFAULT:  # no page fault in any call (ring.pyx)
            prefault(self.mm)
        requests, replies = ring_pair(self.mm, info.ring_size, info.ring_size)
        self.out, self.inbox = (replies, requests) if server else (requests, replies)
        self.my_efd, self.peer_efd = (
            (server_efd, caller_efd) if server else (caller_efd, server_efd)
        )
        self.port = SessionPort(
            info.sid, self.out, self.inbox, conn.session_states, self.index, self.peer_efd,
            abi.MAX_PAYLOAD, badge, self.peer, info.sender_id, self.my_efd, conn.sock.fileno(),
        )  # fmt: skip
        self.port.set_spin(min(SPIN_MIN_NS, SPIN_MAX_NS), SPIN_MAX_NS, YIELD_AFTER_NS, CROWDED_NS)
        self.broken: str | None = None  # the peer broke the ring format
        self.closing = False  # this side asked the kernel to end it
        self.closed = False  # unmapped

    # ------------------------------------------------------------ state

    def kept(self) -> int:
        """Replies kept for the caller's full ring, after writing what fits now (a
        server that closes gracefully lets them out first: write_kept)."""
        try:
            return int(self.port.flush_kept())
        except ValueError:  # released: this side closed it
            return 0

    def check(self) -> None:
        """Raise if the session ended (the kernel's word) or this side closed it."""
        if self.conn.lost is not None:  # closed or lost: the kernel ended every session
            raise PeerClosedError(f"session {self.sid}: {self.conn.lost}")
        if self.closed or self.closing:
            raise PeerClosedError(f"session {self.sid}: closed")
        if self.broken is not None:
            raise PeerClosedError(f"session {self.sid}: {self.broken}")
        state = self.port.state()
        if state != _OPEN:
            raise ended_error(self.sid, state)

    def corrupt(self, e: Exception) -> PeerClosedError:
        """Mark the session unusable: nothing more is written to or read from it
        (a call would otherwise go out on a session whose answers cannot be read)."""
        self.broken = f"the peer broke the ring format ({e}); the session is unusable"
        self.port.mark_broken()
        return PeerClosedError(f"session {self.sid}: {self.broken}")

    # ------------------------------------------------------------ produce

    def send(self, op: int, req_id: int, data: Any, deadline: int) -> None:
        """Write one record, waiting for space (the peer drains) until `deadline`."""
        while code := self._write(op, req_id, data):
            if code != FULL:
                self.check()  # this side's own close or a broken ring says it better
                raise ended_error(self.sid, code)
            self.wait_for_space(deadline)

    def _write(self, op: int, req_id: int, data: Any) -> int:
        try:
            return int(self.port.send(op, req_id, data))
        except OverflowError:
            raise too_large(len(data)) from None
        except ValueError:  # released: this side closed it
            self.check()
            raise

    def wait_for_space(self, deadline: int) -> None:
        self.before_space_wait(deadline)
        time.sleep(SPACE_WAIT_S)

    def before_space_wait(self, deadline: int) -> None:
        """The ring is full: raise if the session, the kernel or the deadline is over,
        and nudge the peer. The faces then wait SPACE_WAIT_S, each its own way."""
        self.check()
        self.conn.check_socket()  # a dead kernel never writes the word: ask its socket
        if 0 <= deadline < time.monotonic_ns():
            raise CallTimeoutError(f"session {self.sid}: the peer does not drain the ring")
        os.eventfd_write(self.peer_efd, 1)  # it may have gone to sleep with work queued

    # ------------------------------------------------------------ consume

    def give_up(self, req_id: int) -> int:
        """The call's deadline passed without a reply: withdraw it, so that its
        server is told its reply is too late, and raise CallTimeoutError. If the
        server answered first, the reply is the call's: returns the deadline to
        wait for it until (ANSWERED_GRACE_S from now)."""
        self.check()
        if self.port.withdraw(req_id):
            raise no_answer(self.sid)
        return time.monotonic_ns() + int(ANSWERED_GRACE_S * 1e9)

    def take_reply(self, req_id: int) -> bytes | None:
        """The reply to `req_id` if it is there; raises PeerClosedError if the
        server dropped the call without replying."""
        try:
            data = self.port.take_reply(req_id)
        except RingCorruptError as e:
            raise self.corrupt(e) from None
        if isinstance(data, int):  # DROPPED, the only code it returns
            raise dropped_error(self.sid)
        return data

    def take_many(self, out: list[Any], max_n: int, wait_until: int | None = None) -> int:
        """Move up to `max_n` received messages into `out`; raise if it ended. With
        `wait_until` (a deadline), wait once for a message when none is there: 0
        then means the wait ended without one (woken, the deadline, or the kernel's
        socket is readable)."""
        try:
            if wait_until is None:
                n = int(self.port.recv_many(out, max_n))
            else:
                n = int(self.port.recv_wait(out, max_n, wait_until))
        except RingCorruptError as e:
            raise self.corrupt(e) from None
        except ValueError:  # released: this side closed it
            self.check()
            raise
        if n < 0:
            self.after_wait(n)  # this side's own close says it better than the word
        return n

    def wait(self, deadline: int) -> None:
        """Spin (adaptively, bounded), then sleep on the doorbell until a record may
        be there, the session ends, or `deadline` (the caller's loop raises then)."""
        try:
            code = int(self.port.wait(deadline))
        except ValueError:  # released: this side closed it
            self.check()
            raise
        self.after_wait(code)

    def after_wait(self, code: int) -> None:
        """Act on a compiled wait's code (SessionPort.wait, .call, .recv_wait)."""
        if code == DROPPED:
            raise dropped_error(self.sid)
        if code == SOCKET:
            self.conn.check_socket()  # a dead kernel never writes the word: ask its socket
        elif code < 0:
            self.check()  # this side's own close, or a lost connection, says it better
            raise ended_error(self.sid, code)

    # ------------------------------------------------------------ teardown

    def close_unwaited(self, *, block: bool) -> bool:
        """Ask the kernel to end the session without waiting for its answer, and
        unmap (a finalizer's close, in either face, and a group's drop). False if
        the request could not be queued at once (`block` and a full ring): then
        nothing changed, and a waited close must do it."""
        if not self.closing:
            queued = self.conn.submit_unwaited(Op.SESSION_CLOSE, arg=self.index, block=block)
            if block and not queued:
                return False
            self.closing = True  # not queued (the connection is gone): it ended with it
        self.release()
        return True

    def release(self) -> None:
        """Unmap and close this side's descriptors (after SESSION_CLOSE, or when the
        connection is gone and the kernel ended every session)."""
        if self.closed:
            return
        self.closed = True
        self.out.close()
        self.inbox.close()
        self.mm.close()
        os.close(self.my_efd)
        os.close(self.peer_efd)


class SessionView:
    """What both faces' session objects show of their side (`_end`)."""

    _end: SessionEnd

    @property
    def peer(self) -> Credentials:
        """The other side's pid/uid/gid, as the kernel verified them."""
        return self._end.peer

    @property
    def peer_id(self) -> int:
        """The kernel's id of the other side's connection (as `msg.sender_id`)."""
        return int(self._end.port.sender_id)

    @property
    def closed(self) -> bool:
        return self._end.closed


KEPT_POLL_S = 0.001
"""How often a graceful close looks whether callers drained what was kept for them."""


def write_kept(ends: Sequence[SessionEnd], deadline: float) -> None:
    """Before a graceful close: until the monotonic `deadline`, write the replies
    kept for callers' full rings as those callers drain them. (A reply the server
    committed is the call's answer; closing first would drop it.)"""
    while any([end.kept() for end in ends]) and time.monotonic() < deadline:
        time.sleep(KEPT_POLL_S)


async def awrite_kept(ends: Sequence[SessionEnd], deadline: float) -> None:
    """write_kept() for the asyncio face. It polls: no event says "drained"."""
    while any([end.kept() for end in ends]) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(KEPT_POLL_S)


def deadline_passed(deadline: int) -> bool:
    return 0 <= deadline <= time.monotonic_ns()


def ended_error(sid: int, state: int) -> IPCError:
    why = _ENDED.get(state, f"it ended ({state})")
    return error_for(state, f"session {sid}", why)


def no_answer(sid: int) -> CallTimeoutError:
    """The call's deadline passed and it was withdrawn (both faces)."""
    return CallTimeoutError(f"session {sid}: no answer before the deadline")


def answer_never_came(sid: int) -> CallTimeoutError:
    """The server marked the call answered, but no reply came within the grace."""
    return CallTimeoutError(f"session {sid}: the answer did not arrive")


def dropped_error(sid: int) -> PeerClosedError:
    """The server dropped the call without replying (the kernel path's words)."""
    return PeerClosedError(f"session {sid}: the server closed the call without replying")


def too_large(n: int) -> MessageTooLargeError:
    return MessageTooLargeError(
        f"message of {n} bytes exceeds the maximum of {abi.MAX_PAYLOAD} bytes"
    )


def _port_error(port: SessionPort, code: int, verb: str) -> IPCError:
    """The compiled port's codes as exceptions (port.set_error_hook)."""
    sid = port.sid
    if code == FULL:
        return PeerClosedError(
            f"session {sid}: {verb}: the caller does not drain its ring "
            f"({abi.MAX_TRACKED_CALLS} replies wait for room)"
        )
    if code == LATE:  # as the kernel path's late reply says it (DESIGN §5)
        return PeerClosedError(
            f"session {sid}: {verb}: the reply was not delivered: the caller gave up "
            "on the call (timed out or cancelled)",
            Status.CALLER_GONE,
        )
    if code == NOT_A_CALL:
        return IPCError(
            f"session {sid}: {verb}: this message was sent, not called, or was already answered",
            Status.BAD_SLOT,
        )
    if code == TOO_LARGE:
        return too_large(abi.MAX_PAYLOAD + 1)
    if code == CLOSED:
        return PeerClosedError(f"session {sid}: closed")
    return ended_error(sid, code)


set_error_hook(_port_error)
