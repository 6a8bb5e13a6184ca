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

import mmap
import os
import select
import threading
import time
from typing import Any

from .. import abi
from .._core.ring import Completion, RingCorruptError, ring_pair
from ..abi import Op
from ..errors import CallTimeoutError, IPCError, PeerClosedError, Status, error_for
from ._common import Credentials
from ._conn import CROWDED_NS, Connection, as_payload

SPIN_MIN_NS = 2_000
SPIN_MAX_NS = int(float(os.environ.get("MKIPC_SESSION_SPIN_US", "200")) * 1000)
"""Adaptive busy-poll before sleeping on the doorbell. A wake across cores costs
~26 µs here; a reply that comes within the spin costs ~1 µs. Only the two peers
spin: the kernel is not on the path."""
YIELD_AFTER_NS = 20_000
"""Poll without yielding this long first: with no third process on our core
sched_yield() is a wasted syscall per poll."""
SPACE_WAIT_S = 50e-6

_CALL, _SEND, _REPLY = int(Op.ENDPOINT_CALL), int(Op.ENDPOINT_SEND), int(Op.ENDPOINT_REPLY)
_OPEN = abi.SESSION_OPEN

_ENDED: dict[int, str] = {
    Status.PEER_CLOSED: "the peer closed the session or ended",
    Status.BAD_SLOT: "a capability the session was opened or accepted through was revoked",
}


class SessionEnd:
    """One side of a session: mapped rings, doorbells, the kernel's state word.
    Non-blocking steps and the wait; both faces and both roles build on it."""

    def __init__(self, conn: Connection, grant: Completion, *, server: bool) -> None:
        info = abi.decode_grant(grant.payload)
        self.conn = conn
        self.sid = info.sid
        self.index = grant.arg
        self.peer = Credentials(info.pid, info.uid, info.gid)
        self.peer_id = info.sender_id
        memfd, caller_efd, server_efd = conn.session_fds(info.sid)
        try:
            size = abi.CONTROL_SIZE + 2 * info.ring_size
            self.mm = mmap.mmap(memfd, size)
        except BaseException:
            for fd in (caller_efd, server_efd):
                os.close(fd)
            raise
        finally:
            os.close(memfd)
        requests, replies = ring_pair(self.mm, info.ring_size, info.ring_size)
        self.out, self.inbox = (replies, requests) if server else (requests, replies)
        self.my_efd, self.peer_efd = (
            (server_efd, caller_efd) if server else (caller_efd, server_efd)
        )
        self.broken: str | None = None  # the peer broke the ring format
        self.closed = False
        self._spin_ns = SPIN_MAX_NS // 2

    # ------------------------------------------------------------ state

    def check(self) -> None:
        """Raise if the session ended (the kernel's word) or this side closed it."""
        if self.closed:
            raise PeerClosedError(f"session {self.sid}: closed")
        if self.broken is not None:
            raise PeerClosedError(f"session {self.sid}: {self.broken}")
        state = self.conn.session_states.get(self.index)
        if state != _OPEN:
            why = _ENDED.get(state, f"it ended ({state})")
            raise error_for(state, f"session {self.sid}", why)

    # ------------------------------------------------------------ produce

    def put(self, op: int, req_id: int, payload: Any, deadline: int) -> None:
        """Write one record; wait for space (the peer drains) until `deadline`."""
        while True:
            pushed = self.out.push(op, req_id, 0, 0, 0, payload)
            if pushed:
                if pushed == 2:  # the peer sleeps: ring its doorbell
                    os.eventfd_write(self.peer_efd, 1)
                return
            self._wait_for_space(deadline)

    def _wait_for_space(self, deadline: int) -> None:
        self.check()
        if 0 <= deadline < time.monotonic_ns():
            raise CallTimeoutError(f"session {self.sid}: the peer does not drain the ring")
        os.eventfd_write(self.peer_efd, 1)  # it may have gone to sleep with work queued
        time.sleep(SPACE_WAIT_S)

    # ------------------------------------------------------------ consume

    def take(self) -> Completion | None:
        try:
            return self.inbox.take()
        except RingCorruptError as e:
            self.broken = f"the peer broke the ring format ({e}); the session is closed"
            raise PeerClosedError(f"session {self.sid}: {self.broken}") from None

    def wait(self, deadline: int) -> None:
        """Spin (adaptively, bounded), then sleep on the doorbell until a record is
        there, the session ends, or `deadline` (CallTimeoutError)."""
        ring = self.inbox
        found = ring.spin(self._spin_ns, YIELD_AFTER_NS, CROWDED_NS)
        if ring.crowded:
            self._spin_ns = SPIN_MIN_NS
        elif found:
            self._spin_ns = min(SPIN_MAX_NS, self._spin_ns * 2)
        else:
            self._spin_ns = max(SPIN_MIN_NS, self._spin_ns // 2)
        if found:
            return
        self.check()
        if not ring.prepare_sleep():
            return
        try:
            self.check()  # the kernel writes the doorbell after the word: no lost end
            self._sleep(deadline)
        finally:
            ring.end_sleep()

    def _sleep(self, deadline: int) -> None:
        if deadline < 0:
            ms = -1
        else:
            left = deadline - time.monotonic_ns()
            if left <= 0:
                raise CallTimeoutError(f"session {self.sid}: the deadline passed")
            ms = max(1, -(-left // 1_000_000))
        poller = select.poll()
        poller.register(self.my_efd, select.POLLIN)
        poller.register(self.conn.sock, select.POLLIN)  # the kernel's end: nobody can revoke
        for fd, _ in poller.poll(ms):
            if fd == self.my_efd:
                try:
                    os.eventfd_read(self.my_efd)
                except BlockingIOError:
                    pass
            else:
                self.conn.check_socket()

    # ------------------------------------------------------------ teardown

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


def deadline_passed(deadline: int) -> bool:
    return 0 <= deadline <= time.monotonic_ns()


class SessionMessage:
    """A request that arrived over a session. `badge` and `sender` are the kernel's
    (fixed when the session was opened), never what the caller wrote in the ring."""

    __slots__ = ("data", "badge", "sender", "sender_id", "is_call", "_req_id", "_end")

    def __init__(self, c: Completion, end: SessionEnd, badge: int) -> None:
        self.data: bytes = c.payload
        self.badge = badge
        self.sender = end.peer
        self.sender_id = end.peer_id
        self.is_call = c.opcode == _CALL
        self._req_id = c.req_id if self.is_call else 0
        self._end = end

    from_kernel = False

    def reply(self, data: Any) -> None:
        """Answer the call over the session. Raises PeerClosedError if the session
        ended, or if the caller does not drain its ring (it waits for one reply at a
        time, so a full ring means it misbehaves)."""
        payload = as_payload(data)
        req_id, self._req_id = self._req_id, 0
        if not req_id:
            raise IPCError(
                "reply: this message was sent, not called, or was already answered",
                Status.BAD_SLOT,
            )
        end = self._end
        end.check()
        pushed = end.out.push(_REPLY, req_id, 0, 0, 0, payload)
        if not pushed:
            raise PeerClosedError(f"session {end.sid}: the caller does not drain its ring")
        if pushed == 2:
            os.eventfd_write(end.peer_efd, 1)

    def __repr__(self) -> str:
        kind = "call" if self.is_call else "message"
        return f"<session {kind} of {len(self.data)} bytes from pid {self.sender.pid}>"


class SessionReply:
    """The answer to a session call. `sender` is the server, as the kernel verified it."""

    __slots__ = ("data", "sender")

    def __init__(self, data: bytes, sender: Credentials) -> None:
        self.data = data
        self.sender = sender

    def __repr__(self) -> str:
        return f"<session reply of {len(self.data)} bytes from pid {self.sender.pid}>"


class CallerSide:
    """Request bookkeeping of the calling side (one call at a time: a lock)."""

    def __init__(self, end: SessionEnd) -> None:
        self.end = end
        self.lock = threading.Lock()
        self.next_id = 1

    def start(self, op: int, payload: Any, deadline: int) -> int:
        req_id, self.next_id = self.next_id, self.next_id + 1
        self.end.put(op, req_id, payload, deadline)
        return req_id

    def answer(self, req_id: int) -> SessionReply | None:
        """The reply to `req_id` if it is there; stale replies (to calls that timed out)
        are dropped: a late answer never reaches a later call."""
        end = self.end
        while (c := end.take()) is not None:
            if c.req_id == req_id and c.opcode == _REPLY:
                return SessionReply(c.payload, end.peer)
        return None
