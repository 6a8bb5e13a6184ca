"""The client core: handshake, submit, completions. Non-blocking steps only.

Both faces build on this: sync.py blocks in `Connection.wait`, aio.py waits on
the completion eventfd from the event loop. Neither contains protocol logic.
"""

from __future__ import annotations

import array
import itertools
import mmap
import os
import select
import socket
import threading
import time
from collections import deque
from typing import Any

from .. import abi
from .._core.conn import ConnectionCore
from .._core.faces import deadline_from as deadline_from
from .._core.ring import Completion as Completion
from .._core.ring import SessionStates, prefault, ring_pair
from .._core.ring import next_spin as next_spin
from ..abi import Op
from ..errors import IPCError, MessageTooLargeError, PeerClosedError, Status, error_for
from . import _launch

CLOSE_WAIT_S = 2.0
"""How long close() waits for a thread polling the rings to notice and leave them."""

CROWDED_NS = 60_000
"""A sched_yield() in the spin that takes this long means more runnable processes than
cores (a cross-core wakeup is ~26 µs here, a same-core hand-off ~5 µs): stop spinning."""

PREFAULT = os.environ.get("MKIPC_PREFAULT", "1") != "0"
"""Back a ring region's pages when it is mapped (ring.prefault): no call then takes
a page fault, at the price of 2 MiB per connection and per session from the start
and 1-2 ms per open. MKIPC_PREFAULT=0 lets pages fault in as they are first used
(for a process holding many idle sessions)."""

SPIN_MIN_NS = 5_000
SPIN_MAX_NS = int(float(os.environ.get("MKIPC_SPIN_US", "100")) * 1000)
"""Adaptive spin before sleeping: grows while replies come within it, shrinks when not
(ring.pyx adapt_spin, next_spin for Python)."""


def as_payload(data: Any) -> bytes | bytearray | memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"message data must be bytes-like, not {type(data).__name__}")
    if len(data) > abi.MAX_PAYLOAD:
        raise MessageTooLargeError(
            f"message of {len(data)} bytes exceeds the maximum of {abi.MAX_PAYLOAD} bytes"
        )
    return data


def failure(c: Completion, cap: Any, verb: str) -> IPCError:
    """The exception for a failed completion of `verb` on `cap` (None: no capability).

    Callers test `c.status` themselves (0 is OK): an int test on the hot path, and
    the operation's name is only formatted when something failed.
    """
    err = error_for(c.status, cap._what(verb) if cap is not None else verb, c.reason())
    err.reply_kept = bool(c.arg & abi.REPLY_KEPT)  # the kernel's word, for replies only
    return err


class Connection(ConnectionCore):
    """One process's connection: bootstrap socket, mapped rings, eventfds. Submitting
    and the blocking wait are compiled (kernel/_core/conn.pyx); this is the rest."""

    def __init__(
        self, path: str | None = None, *, autostart: bool = True, inherit: str | None = None
    ) -> None:
        self.path = path or _launch.default_socket_path()
        # The capabilities a parent set aside for us: from spawn (one-shot: not for
        # grandchildren), or an explicit token (a service's worker connections).
        token = inherit if inherit is not None else os.environ.pop("MKIPC_INHERIT", None)
        self.sock, welcome, fds = _connect(self.path, token, autostart)
        self.welcome = welcome
        memfd, self.sq_efd, self.cq_efd = fds
        try:
            self.mm = mmap.mmap(memfd, welcome.region_size)
        finally:
            os.close(memfd)
        if PREFAULT:  # no page fault in any call; the kernel's side then only maps
            prefault(self.mm)
        self.sq, self.cq = ring_pair(self.mm, welcome.sq_size, welcome.cq_size)
        self.session_states = SessionStates(self.mm)  # the kernel's word on each session
        # sid -> descriptor triples read but not yet claimed; a list because a session
        # with both ends in this connection comes as two frames with one sid
        self._session_fds: dict[int, list[list[int]]] = {}
        self._memory_fds: dict[int, tuple[int, bool]] = {}  # MEMORY_MAP req_id -> (fd, writable)
        self._sock_lock = threading.Lock()
        self.results: dict[int, Completion] = {}
        self.abandoned: dict[int, int] = {}  # withdrawn req_id -> its cap slot
        self.msg_stash: dict[int, deque[Completion]] = {}  # slot -> orphaned messages
        self.bits_stash: dict[int, int] = {}  # slot -> orphaned notification bits
        self.units_stash: dict[int, int] = {}  # slot -> orphaned semaphore units
        self.queue_stash: dict[int, deque[Completion]] = {}  # slot -> orphaned queue messages
        self.pipe_stash: dict[int, bytearray] = {}  # slot -> bytes orphaned pipe reads took
        self.lost: str | None = None
        self._ids = itertools.count(1)
        self._submit_lock = threading.Lock()
        self._deferred: list[tuple[int, int, int]] = []  # ConnectionCore.submit_unwaited
        self._poll_lock = threading.Lock()
        self._sleeping: dict[int, threading.Event] = {}  # req_id -> its waiting thread's
        self._events = threading.local()  # one reusable Event per thread
        self._spin_ns = SPIN_MAX_NS // 2
        self.spin_min_ns, self.spin_max_ns, self.crowded_ns = SPIN_MIN_NS, SPIN_MAX_NS, CROWDED_NS

    # ------------------------------------------------------------ submit

    def _failure(self, c: Completion, cap: Any, verb: str) -> IPCError:
        return failure(c, cap, verb)

    def _wait_for_space(self) -> None:
        """The submission ring is full: nudge the kernel, and notice if it is gone."""
        os.eventfd_write(self.sq_efd, 1)  # the kernel may sleep; it frees space as it drains
        self.check_socket()  # a kernel that dropped us never drains: raise, don't spin
        time.sleep(0.0001)

    def cancel(self, req_id: int, slot: int) -> None:
        """Withdraw a pending op; a result that raced the withdrawal is kept, not lost."""
        if self.lost is not None:
            return
        self.abandoned[req_id] = slot
        self.submit(Op.CANCEL, arg=req_id)

    # ------------------------------------------------------------ completions

    def drain(self) -> list[Completion]:
        """Take every completion out of the ring (orphans go to the stashes)."""
        out: list[Completion] = []
        while (c := self.take()) is not None:
            out.append(c)
        return out

    def stash_result(self, c: Completion, slot: int) -> None:
        """Keep the result of an op whose waiter was cancelled as it completed."""
        self._orphan(c, slot)

    def _orphan(self, c: Completion, slot: int) -> None:
        if c.status != Status.OK:
            return
        if c.opcode in (Op.ENDPOINT_SESSION_OPEN, Op.ENDPOINT_SESSION_ACCEPT):
            self._drop_session(c)
        elif c.opcode in (Op.ENDPOINT_RECV, Op.ENDPOINT_REPLY_RECV):
            self.msg_stash.setdefault(slot, deque()).append(c)
        elif c.opcode == Op.NOTIFICATION_WAIT and c.arg:
            self.bits_stash[slot] = self.bits_stash.get(slot, 0) | c.arg
        elif c.opcode == Op.SEMAPHORE_WAIT:  # the unit it took is this process's now
            self.units_stash[slot] = self.units_stash.get(slot, 0) + 1
        elif c.opcode == Op.QUEUE_RECV:  # it left the queue: keep it for the next recv
            self.queue_stash.setdefault(slot, deque()).append(c)
        elif c.opcode == Op.PIPE_READ and c.payload:  # in order: before what comes next
            self.pipe_stash.setdefault(slot, bytearray()).extend(c.payload)
        elif c.opcode == Op.MEMORY_MAP:
            os.close(self.memory_fd(c.req_id)[0])

    # ------------------------------------------------------------ session descriptors

    def session_fds(self, sid: int) -> list[int]:
        """The descriptors of session `sid`: the kernel sent them on the bootstrap socket
        just before the completion that granted it, so they are there to read."""
        with self._sock_lock:
            while not self._session_fds.get(sid):
                self._file_frame()
            triples = self._session_fds[sid]
            fds = triples.pop(0)
            if not triples:
                del self._session_fds[sid]
            return fds

    def memory_fd(self, req_id: int) -> tuple[int, bool]:
        """(descriptor, writable) of the memory object that MEMORY_MAP `req_id` maps:
        the kernel sent it just before the completion, so it is there to read."""
        with self._sock_lock:
            while req_id not in self._memory_fds:
                self._file_frame()
            return self._memory_fds.pop(req_id)

    def _drop_session(self, c: Completion) -> None:
        """A session granted to a waiter that gave up: close it, waiting for nothing."""
        for fd in self.session_fds(abi.decode_grant(c.payload).sid):
            os.close(fd)
        self.abandoned[self.submit(Op.SESSION_CLOSE, arg=c.arg)] = 0

    # ------------------------------------------------------------ blocking wait (sync face)

    def _wake_one(self) -> None:
        for ev in list(self._sleeping.values())[:1]:
            ev.set()

    def _wake_all(self) -> None:
        for ev in list(self._sleeping.values()):
            ev.set()

    def _sleep_for_result(self, req_id: int) -> None:
        """Sleep until the poller files `req_id` or hands polling over. The thread's
        Event is registered before the re-check, so a filing cannot slip between."""
        ev = getattr(self._events, "ev", None)
        if ev is None:
            ev = self._events.ev = threading.Event()
        ev.clear()
        self._sleeping[req_id] = ev
        try:
            if req_id not in self.results and self._poll_lock.locked():
                ev.wait(0.05)  # bounded: a missed wake costs 50 ms, not a hang
        finally:
            del self._sleeping[req_id]

    def _sleep(self) -> None:
        self.check_open()
        poller = select.poll()
        poller.register(self.cq_efd, select.POLLIN)
        poller.register(self.sock, select.POLLIN)
        ready = poller.poll()
        self.check_open()  # close() woke us: the socket may be closed by now
        for fd, _ in ready:
            if fd == self.cq_efd:
                self.clear_doorbell()
            else:
                self.check_socket()

    def clear_doorbell(self) -> None:
        try:
            os.eventfd_read(self.cq_efd)
        except BlockingIOError:
            pass

    def check_socket(self) -> None:
        """Called when the bootstrap socket is readable: the kernel went away, or a
        session's descriptors wait there (peek first: never eat part of a frame)."""
        try:
            data = self.sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as e:
            data = b""
            self.lost = f"the kernel connection failed: {e}"
        if not data:
            self.lost = self.lost or "the kernel closed the connection (it exited or shut down)"
        self.check_open()
        self._stash_frames()

    def _stash_frames(self) -> None:
        """File the session frames waiting on the socket under their sid. A frame whose
        completion never comes (the open failed after the kernel sent it, or its waiter
        gave up) would otherwise keep the socket readable, and every poll() on it would
        return at once: a busy loop. Skipped if another thread is reading it now."""
        if not self._sock_lock.acquire(blocking=False):
            return
        ready = select.poll()  # not select(): a busy process may have fds above 1023
        ready.register(self.sock, select.POLLIN)
        try:
            while ready.poll(0):
                self._file_frame()
        except PeerClosedError as e:  # it ended mid-frame: the kernel is gone
            self.lost = self.lost or str(e)
            raise
        finally:
            self._sock_lock.release()

    def _file_frame(self) -> None:
        """Read one frame (under _sock_lock) and file its descriptors by sid or req_id."""
        frame, fds = _read_frame_shared(self.sock)
        if isinstance(frame, abi.MemoryFd) and len(fds) == 1:
            self._memory_fds[frame.req_id] = (fds[0], frame.writable)
            return
        if not isinstance(frame, abi.SessionFds) or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            self.lost = f"the kernel sent an unexpected frame: {frame!r}"
            self.check_open()
        assert isinstance(frame, abi.SessionFds)
        self._session_fds.setdefault(frame.sid, []).append(fds)

    def check_open(self) -> None:
        if self.lost is not None:
            raise PeerClosedError(self.lost, Status.PEER_CLOSED)

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        """Disconnect. Threads still waiting get PeerClosedError; the rings are unmapped
        only once no thread polls them (one spinning on an unmapped ring would crash)."""
        if self.lost == "closed":
            return
        self.lost = "closed"
        os.eventfd_write(self.cq_efd, 1)  # a poller asleep on the ring wakes and sees `lost`
        with self._submit_lock:
            polling_done = self._poll_lock.acquire(timeout=CLOSE_WAIT_S)
        try:
            self.sock.close()  # EOF: the kernel frees everything this process held
            if not polling_done:  # e.g. close() from a signal handler of the poller itself
                return  # leave the mapping to the garbage collector rather than crash
            self.sq.close()
            self.cq.close()
            self.session_states.close()
            self.mm.close()
            os.close(self.sq_efd)
            os.close(self.cq_efd)
            for triples in self._session_fds.values():
                for fds in triples:
                    for fd in fds:
                        os.close(fd)
            for fd, _ in self._memory_fds.values():
                os.close(fd)
        finally:
            if polling_done:
                self._poll_lock.release()
            self._wake_all()


# ------------------------------------------------------------ bootstrap


def _connect(
    path: str, token: str | None, autostart: bool
) -> tuple[socket.socket, abi.Welcome, list[int]]:
    try:
        return _handshake(path, token)
    except (FileNotFoundError, ConnectionRefusedError):
        if not autostart:
            raise PeerClosedError(f"no kernel listens on {path}") from None
    with _launch.start_lock(path):
        try:
            return _handshake(path, token)
        except (FileNotFoundError, ConnectionRefusedError):
            proc = _launch.start_kernel(path)
        deadline = time.monotonic() + _launch.START_TIMEOUT
        while True:
            try:
                return _handshake(path, token)
            except (FileNotFoundError, ConnectionRefusedError):
                _launch.check_alive(proc, path)
                if time.monotonic() > deadline:
                    raise PeerClosedError(
                        f"the kernel on {path} did not start in time; see {path}.log"
                    ) from None
                time.sleep(0.01)


def _handshake(path: str, token: str | None) -> tuple[socket.socket, abi.Welcome, list[int]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        sock.sendall(abi.encode_frame(abi.Hello(abi.ABI_VERSION, token)))
        frame, fds = _recv_frame(sock)
    except BaseException:
        sock.close()
        raise
    if isinstance(frame, abi.Welcome) and len(fds) == 3:
        return sock, frame, fds
    for fd in fds:
        os.close(fd)
    sock.close()
    if not isinstance(frame, abi.Refused):
        frame = abi.Refused(f"unexpected {frame!r}", Status.INVALID_ARGS)
    raise error_for(frame.status, f"connect to the kernel on {path}", f"refused: {frame.reason}")


def _recv_frame(sock: socket.socket) -> tuple[abi.Handshake, list[int]]:
    buf = b""
    fds: list[int] = []
    sock.settimeout(10.0)
    while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "little"):
        data, anc, _, _ = sock.recvmsg(65536, socket.CMSG_LEN(3 * 4))
        if not data:
            raise PeerClosedError("the kernel closed the connection during the handshake")
        fds += _passed_fds(anc)
        buf += data
    sock.settimeout(None)
    return abi.decode_frame(buf[4:]), fds


FRAME_WAIT_S = 10.0
"""How long a session's descriptors may take to arrive (they are sent before the
completion that announces them, so they are normally there already)."""


def _read_frame_shared(sock: socket.socket) -> tuple[abi.Handshake, list[int]]:
    """One frame, exactly, from the bootstrap socket after the handshake.

    Other threads peek at this socket meanwhile (check_socket), so its blocking mode
    must never change: a socket with a timeout makes their MSG_DONTWAIT peek wait
    for data and then fail with TimeoutError, which reads as a lost kernel. So: poll,
    then non-blocking reads; the length first (the descriptors ride on its bytes),
    then exactly the body, so a following frame stays where it is."""
    deadline = time.monotonic() + FRAME_WAIT_S
    fds: list[int] = []
    head = _read_exact(sock, 4, deadline, fds)
    size = int.from_bytes(head, "little")
    if not 0 < size <= abi.HANDSHAKE_MAX:
        raise PeerClosedError(f"the kernel sent a frame of {size} bytes")
    return abi.decode_frame(_read_exact(sock, size, deadline, fds)), fds


def _read_exact(sock: socket.socket, n: int, deadline: float, fds: list[int]) -> bytes:
    buf = b""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerClosedError("the kernel's session frame did not arrive in time")
        poller.poll(max(1, int(left * 1000)))
        try:
            data, anc, _, _ = sock.recvmsg(
                n - len(buf), socket.CMSG_LEN(3 * 4), socket.MSG_DONTWAIT
            )
        except BlockingIOError:
            continue
        if not data:
            raise PeerClosedError("the kernel closed the connection")
        fds += _passed_fds(anc)
        buf += data
    return buf


def _passed_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message carried (recvmsg's ancillary data)."""
    out: list[int] = []
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            out.extend(array.array("i", raw[: len(raw) - len(raw) % 4]))
    return out
