"""Many direct sessions served from one thread: `kernel.SessionGroup`.

A thread per session (SessionServer.recv in each) costs a server one wake-up, one
GIL hand-over and one context switch per request. With 32 client processes on 2
cores that made 104k calls/s; one thread that takes whatever waits on any member's
ring, answers it, and sleeps on all the doorbells at once only when every ring is
empty made 172-178k (a fork-based experiment; docs/architecture.md). The group
is that thread's loop, as a selector is for sockets.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from .._core.faces import WOKEN, GroupReceiver
from .._core.port import SOCKET, SessionPort
from ..errors import IPCError, PeerClosedError
from ._session import SessionMessage, write_kept
from .session import SessionServer

SPIN_NS = 200_000
POLL_NS = 1_000
SPIN_YIELDS = 50
"""An idle group polls every ring (compiled: group_spin), first for POLL_NS
without a system call, then yielding the core between passes, for up to SPIN_NS
and SPIN_YIELDS yields before it sleeps on the doorbells: a request that
comes meanwhile costs no wake-up. The pass bound matters as much as the time:
under EEVDF every sched_yield() with others runnable pushes the yielder's
deadline back a slice, and a group that yielded for the whole 200 µs was later
starved for up to 180 ms (one call's worst case with 32 clients)."""

EndHandler = Callable[[SessionServer, IPCError], None]


class SessionGroup(GroupReceiver):
    """Serve many sessions from one thread: `recv_many()` returns the requests
    waiting on any member's ring; each answers on its own session (`msg.reply`).

    A member whose caller closed it, died, or was revoked is closed and dropped;
    `on_end(server, error)` hears of it. `add()`, `shutdown()` and `close()` may
    come from any thread; `recv_many()` from one at a time. A member's own close()
    waits until the group's thread is off its rings.
    """

    # recv_many() is compiled (GroupReceiver); the hooks it calls for what is rare are here.
    _port_list: list[SessionPort]  # the members' ports, as the C loops take them
    _joining: list[SessionServer]
    _closed: bool
    _draining: bool

    def __init__(self, *, on_end: EndHandler | None = None) -> None:
        self._lock = threading.Lock()  # the members' rings: held while the group reads them
        self._members: list[SessionServer] = []
        self._on_end = on_end
        self._wake_efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._bind(self._lock, self._wake_efd, SPIN_NS, POLL_NS, SPIN_YIELDS)

    def __len__(self) -> int:
        return len(self._members) + len(self._joining)

    def add(self, server: SessionServer) -> None:
        """Serve `server`'s session from the group from now on."""
        if self._closed:
            raise PeerClosedError("the session group is closed")
        with self._lock:
            server._lock = self._lock  # its rings are the group's: close() waits for us
            server._slow_only = True  # and its own recv(), if called, takes our lock too
            self._joining.append(server)
        os.eventfd_write(self._wake_efd, 1)  # a sleeping recv_many() takes it in

    def shutdown(self) -> None:
        """Stop receiving: a thread waiting in recv_many() raises PeerClosedError
        now, and so does every later call. The members stay open, so the requests
        already taken can still be answered; then close() the group. (A graceful
        stop; thread-safe.)"""
        self._draining = True
        if not self._closed:  # else its wake fd is gone: nobody waits
            os.eventfd_write(self._wake_efd, 1)

    def close(self, linger: float = 0.0) -> None:
        """Close every member (their callers get PeerClosedError) and the group.
        With `linger`, first wait up to that many seconds while callers drain the
        replies kept for their full rings (a graceful stop delivers what it
        answered)."""
        if self._closed:
            return
        if linger > 0:
            with self._lock:
                ends = [m._end for m in self._members + self._joining]
            write_kept(ends, time.monotonic() + linger)
        self._closed = True
        os.eventfd_write(self._wake_efd, 1)
        with self._lock:
            members = self._members + self._joining
            self._set_members([])
            self._joining = []
            for server in members:
                server._lock = threading.Lock()  # no group any more: close() must not wait
            os.close(self._wake_efd)  # a recv_many() that wakes sees _closed first
        for server in members:
            server.close()

    # ------------------------------------------------------------ the loop

    def _before_pass(self) -> None:
        """Raise once the group is closed or shut down; take joining members in."""
        if self._closed:
            raise PeerClosedError("the session group is closed")
        if self._draining:
            raise PeerClosedError("the session group is shut down")
        if self._joining:
            self._join()

    def _take_ended(
        self, out: list[SessionMessage], max_n: int, taken: int, ended: list[int]
    ) -> int:
        """The members at `ended` (indexes) looked ended: take what they still hold
        the slow way, which raises the member's error, and drop it."""
        members, more = self._members, 0  # _drop() replaces the lists, never edits them
        for i in ended:
            try:
                more += members[i]._end.take_many(out, max_n - taken - more)
            except IPCError as e:
                self._drop(members[i], e)
        return more

    def _join(self) -> None:
        self._set_members(self._members + self._joining)
        self._joining = []

    def _drop(self, server: SessionServer, error: IPCError) -> None:
        self._set_members([m for m in self._members if m is not server])
        server._lock = threading.Lock()  # its close() below must not wait on ours
        if not server._end.close_unwaited(block=True):  # no kernel round trip in the loop:
            server.close()  # with another thread polling the kernel ring it took 50-100 ms
        if self._on_end is not None:
            self._on_end(server, error)

    def _set_members(self, members: list[SessionServer]) -> None:
        """New lists, never edited in place: a sleeping loop holds the old ones."""
        self._members = members
        self._port_list = [m._end.port for m in members]

    def _after_sleep(self, code: int) -> None:
        """After the compiled sleep (faces.pyx group_sleep(), which lets the lock go
        so that add() and a member's close() proceed): drain the group's wake fd, or
        look at the kernel sockets (a lost kernel writes no word), as `code` says."""
        if self._closed:
            return  # the wake fd is closed: touch nothing
        if code == WOKEN:
            _drain(self._wake_efd)
        elif code == SOCKET:
            for conn in {id(m._end.conn): m._end.conn for m in self._members}.values():
                conn.check_socket()


def _drain(efd: int) -> None:
    try:
        os.eventfd_read(efd)
    except (BlockingIOError, OSError):
        pass  # another reader took it, or a member closed meanwhile


__all__ = ["SessionGroup"]
