"""Direct sessions: one caller and one server exchange messages over rings of their own.

Why (docs/architecture.md, "Direct sessions"): a call through the kernel crosses
three processes, and on two cores that costs two hand-offs per call however fast
each hop is. A session checks authority once, when it is opened (SEND) and accepted
(RECEIVE); afterwards the two processes talk over a ring pair in a memfd only they
map, and wake each other with eventfds only they hold. The kernel never maps it.

What stays with the kernel: the session holds a capability derived from each side's,
so revoking either (or an ancestor) ends it, in every process, at once, as it ends
any other derived capability. Closing it, or the death of either process, ends it
too. The end is written as the kernel's state word in each process's OWN region
(ring.pxd), which the peer cannot map: a revoked caller cannot pretend it still
may talk. Each side treats the peer's ring as hostile (kernel/_core/ring.pyx).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import Capability, Rights
from capabilities.table import derive, unlink

from .. import abi
from .._core.kcore import Endpoint, OpError
from .._core.ring import Header
from ..abi import Op
from ..errors import Status
from .bootstrap import send_frame
from .pending import Pending
from .process import Proc

if TYPE_CHECKING:
    from .state import KernelState

log = logging.getLogger("mkipc.kernel")

REGION_SIZE = abi.CONTROL_SIZE + 2 * abi.SESSION_RING_SIZE


class Session:
    """One session, as the kernel sees it. `caps` are the kernel's own children of
    the caller's and the server's capabilities (holder: this session)."""

    def __init__(self, table: SessionTable, sid: int, client: Proc, cap: Capability) -> None:
        self.table = table
        self.sid = sid
        self.client = client
        self.server: Proc | None = None
        self.ep = cap.obj
        self.caps = [self._hold(cap)]
        self.words: list[tuple[Proc, int]] = []  # (side, its state word) while held
        # (a list, not a dict by process: both ends may be in one process)
        self.opening: deque[Pending] = deque()  # the caller's ENDPOINT_SESSION_OPEN
        self.offer: Pending | None = None  # the kernel's offer while no server took it
        self.efds: tuple[int, int] | None = None  # (caller's doorbell, server's)
        self.ended = 0  # the Status it ended with

    def _hold(self, cap: Capability) -> Capability:
        child = derive(cap, cap.rights, cap.badge)
        child.holder = self
        child.obj.refs += 1
        return child

    def discard(self, cap: Capability, why: str) -> None:
        """Revocation reached one of our capabilities (revoke() releases its reference)."""
        cap.holder = None
        self.table.end(self, Status.BAD_SLOT)

    def __repr__(self) -> str:
        return f"<session {self.sid}>"


class SessionTable:
    def __init__(self, k: KernelState) -> None:
        self.k = k
        self.by_sid: dict[int, Session] = {}
        self.last_sid = 0

    # ------------------------------------------------------------ open and accept

    def open(self, proc: Proc, h: Header, cap: Capability) -> None:
        if len(proc.sessions) + self._opening(proc) >= abi.MAX_SESSIONS:
            raise OpError(Status.NO_RESOURCES, f"the process has {abi.MAX_SESSIONS} sessions")
        proc.charge("sessions", 1)  # its uid's: two descriptors the kernel keeps
        self.last_sid += 1
        sess = Session(self, self.last_sid, proc, cap)
        self.by_sid[sess.sid] = sess
        op = Pending(proc, h.req_id, h.opcode, h.deadline)
        op.cap = cap  # revoking or closing it fails the open at once (fail_waiting_through)
        op.enqueue(sess.opening)
        self.k.timers.arm(op)
        offer = abi.SessionOffer(sess.sid, proc.pid, proc.uid, proc.gid, proc.ident)
        assert isinstance(sess.ep, Endpoint)
        sess.offer = self.k.kernel_send(
            sess.ep, cap.badge, abi.encode_struct(offer), abi.MSG_SESSION_OFFER
        )

    def _opening(self, proc: Proc) -> int:
        return sum(1 for s in self.by_sid.values() if s.client is proc and s.opening)

    def _offered(self, sid: int, cap: Capability, verb: str) -> Session:
        """The session `sid` waiting to be accepted on `cap`'s endpoint."""
        sess = self.by_sid.get(sid)
        if sess is None or sess.server is not None:
            if not 0 < sid < self.last_sid + 1:
                raise OpError(Status.NOT_FOUND, f"session {verb}: there is no session {sid}")
            raise OpError(
                Status.CALLER_GONE,
                f"session {verb}: session {sid} no longer waits "
                "(its caller gave up, or it was answered already)",
            )
        if sess.ep is not cap.obj:
            raise OpError(Status.INVALID_ARGS, f"session {verb}: offered on another endpoint")
        if not sess.opening:  # the caller timed out, cancelled or died
            self._forget(sess)
            raise OpError(Status.CALLER_GONE, f"session {verb}: the caller gave up")
        return sess

    def decline(self, sid: int, cap: Capability, why: str) -> None:
        """The server will not take it: the caller's open fails (NO_RESOURCES) with the
        server's reason, and it may use the endpoint through the kernel instead."""
        sess = self._offered(sid, cap, "decline")
        op = sess.opening[0]
        op.finish()
        reason = f"the server declined the session: {why}"
        op.proc.complete(op.op, op.req_id, Status.NO_RESOURCES, payload=reason.encode())
        self._forget(sess)

    def accept(self, server: Proc, req_id: int, sid: int, cap: Capability) -> None:
        sess = self._offered(sid, cap, "accept")
        client = sess.client
        if len(server.sessions) >= abi.MAX_SESSIONS:
            self._refuse(sess, f"the server has {abi.MAX_SESSIONS} sessions")
        memfd, efds = _make_session()
        try:
            for side in (client, server):
                send_frame(side.sock, abi.SessionFds(sid), [memfd, *efds])
        except OSError as e:  # e.g. a side that never reads its socket filled it
            for fd in efds:
                os.close(fd)
            self._refuse(sess, f"could not hand over the session: {e}")
        finally:
            os.close(memfd)
        self._connect(sess, server, cap, efds)
        op = sess.opening[0]
        op.finish()
        (_, caller_word), (_, server_word) = sess.words
        client.complete(op.op, op.req_id, Status.OK, arg=caller_word, payload=_grant(sid, server))
        server.complete(
            Op.ENDPOINT_SESSION_ACCEPT,
            req_id,
            Status.OK,
            arg=server_word,
            payload=_grant(sid, client),
        )

    def _connect(self, sess: Session, server: Proc, cap: Capability, efds: tuple[int, int]) -> None:
        sess.server = server
        sess.caps.append(sess._hold(cap))
        sess.efds = efds
        for side in (sess.client, server):
            index = min(set(range(abi.MAX_SESSIONS)) - side.sessions.keys())
            side.sessions[index] = sess
            side.session_states.set(index, abi.SESSION_OPEN)
            sess.words.append((side, index))

    def _refuse(self, sess: Session, why: str) -> None:
        """Fail the caller's open and the server's accept alike."""
        op = sess.opening[0]
        op.finish()
        op.proc.complete(op.op, op.req_id, Status.NO_RESOURCES, payload=why.encode())
        self._forget(sess)
        raise OpError(Status.NO_RESOURCES, f"session accept: {why}")

    def opening_ended(self, op: Pending) -> None:
        """The caller's open timed out or was cancelled: drop the session it asked for."""
        for sess in list(self.by_sid.values()):
            if sess.server is None and sess.client is op.proc and not sess.opening:
                self._forget(sess)

    # ------------------------------------------------------------ the end

    def end(self, sess: Session, status: int) -> None:
        """Tell both sides, through their state words and doorbells, that it is over."""
        if sess.ended:
            return
        sess.ended = status
        for side, index in sess.words:
            if side.alive:
                side.session_states.set(index, status)
        for fd in sess.efds or ():
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass

    def leave(self, proc: Proc, index: int, status: int = Status.PEER_CLOSED) -> None:
        """`proc` closes its end (or died): the session ends; its word is freed."""
        sess = proc.sessions.pop(index, None)
        if sess is None:
            raise OpError(Status.BAD_SLOT, f"session close: no session at index {index}")
        self.end(sess, status)
        sess.words.remove((proc, index))
        if proc.alive:
            proc.session_states.set(index, abi.SESSION_FREE)
        if not sess.words:
            self._forget(sess)

    def process_gone(self, proc: Proc) -> None:
        for index in list(proc.sessions):
            self.leave(proc, index)
        for sess in list(self.by_sid.values()):
            if sess.server is None and sess.client is proc:
                self._forget(sess)

    def _forget(self, sess: Session) -> None:
        if self.by_sid.pop(sess.sid, None) is not None:
            sess.client.credit("sessions", 1)
        if sess.offer is not None:  # a caller that gave up leaves no offer queued: a
            sess.offer.dequeue()  # loop of short opens once grew the kernel without end
            sess.offer = None
        for cap in sess.caps:
            if cap.holder is sess:  # not revoked: revoke() released those itself
                cap.holder = None
                unlink(cap)
                self.k.release(cap.obj)
        sess.caps = []
        for fd in sess.efds or ():
            os.close(fd)
        sess.efds = None


def _grant(sid: int, peer: Proc) -> bytes:
    return abi.encode_struct(
        abi.SessionGrant(sid, abi.SESSION_RING_SIZE, peer.pid, peer.uid, peer.gid, peer.ident)
    )


def _make_session() -> tuple[int, tuple[int, int]]:
    """The rings' memfd, sealed at its size (no SIGBUS for either side), and the two
    doorbells. The kernel never maps it: it is only the two peers' memory."""
    fd = os.memfd_create("mkipc-session", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, REGION_SIZE)
        seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        flags = os.EFD_NONBLOCK | os.EFD_CLOEXEC
        efds = (os.eventfd(0, flags), os.eventfd(0, flags))
    except BaseException:
        os.close(fd)
        raise
    return fd, efds


# ------------------------------------------------------------------ handlers


def session_open(k: KernelState, proc: Proc, h: Header) -> None:
    """ENDPOINT_SESSION_OPEN: offer a session to the endpoint's servers; completes
    when one accepts. Rights: SEND."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.SEND)
    k.sessions.open(proc, h, cap)


def session_accept(k: KernelState, proc: Proc, h: Header) -> None:
    """ENDPOINT_SESSION_ACCEPT: take session `arg`, offered on this endpoint.
    Rights: RECEIVE."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.RECEIVE)
    k.sessions.accept(proc, h.req_id, h.arg, cap)


MAX_DECLINE_REASON = 1024


def session_decline(k: KernelState, proc: Proc, h: Header) -> None:
    """ENDPOINT_SESSION_DECLINE: refuse session `arg` (payload: the reason, UTF-8).
    Rights: RECEIVE."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.RECEIVE)
    raw = proc.sq.payload(h)
    if len(raw) > MAX_DECLINE_REASON:
        raise OpError(Status.INVALID_ARGS, f"session decline: a reason takes at most "
                      f"{MAX_DECLINE_REASON} bytes")  # fmt: skip
    k.sessions.decline(h.arg, cap, raw.decode("utf-8", "replace"))
    proc.complete(h.opcode, h.req_id, Status.OK)


def session_close(k: KernelState, proc: Proc, h: Header) -> None:
    """SESSION_CLOSE: end the session whose state word is `arg`, and free the word."""
    k.sessions.leave(proc, h.arg)
    proc.complete(h.opcode, h.req_id, Status.OK)


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.ENDPOINT_SESSION_OPEN: session_open,
    Op.ENDPOINT_SESSION_ACCEPT: session_accept,
    Op.ENDPOINT_SESSION_DECLINE: session_decline,
    Op.SESSION_CLOSE: session_close,
}
