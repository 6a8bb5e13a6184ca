# cython: language_level=3, embedsignature=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""The common paths of the client's session objects, compiled: kernel.Session's
call (SessionCaller), kernel.ServiceClient's call over its session
(ServiceCaller), kernel.SessionServer's recv (SessionReceiver) and
kernel.SessionGroup's wait (group_spin, group_sleep), over a session's port (port.pyx).

After 10 ms of idleness, or with 32 client processes on 2 cores, every call
switches its process in cache-cold, and each Python frame around the compiled
wait cost microseconds. Python (kernel/client/session.py) keeps what is rare:
timeouts, full rings, ended sessions, shutdown.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pythread cimport (
    NOWAIT_LOCK, PY_LOCK_ACQUIRED, PyLockStatus, PyThread_acquire_lock,
    PyThread_allocate_lock, PyThread_free_lock, PyThread_release_lock, PyThread_type_lock,
)
from libc.stdint cimport int64_t, uint64_t
from posix.unistd cimport read

from typing import Any

from kernel._core.port import FULL as _FULL, READY as _READY, SOCKET as _SOCKET
from kernel._core.port import TIMEOUT as _TIMEOUT
from kernel._core.ring import RingCorruptError
from kernel.errors import CallTimeoutError
from kernel._core.port cimport OP_SEND, POLLIN, W_OK, SessionPort, poll, pollfd
from kernel._core.ring cimport (
    mk_cpu_relax, mk_fence, mk_load_acquire_u64, mk_store_u32, mk_yield, now_ns, sole_thread,
    spin_until,
)

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock, long long, int) nogil


# ---------------------------------------------------------------- the calling side

cdef class TurnLock:
    """The lock by which one session's calls take turns: as threading.Lock (with,
    acquire, release, locked), but compiled code takes it without a Python call.
    A thread waiting for its turn still runs its signal handlers."""

    cdef PyThread_type_lock _lock
    cdef bint _held

    def __cinit__(self):
        self._lock = PyThread_allocate_lock()
        if self._lock is NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self._lock is not NULL:
            PyThread_free_lock(self._lock)

    cdef int take(self) except -1:
        cdef PyLockStatus got
        if not PyThread_acquire_lock(self._lock, NOWAIT_LOCK):
            while True:   # ends when the holder gives the turn, or a handler raises
                with nogil:
                    got = PyThread_acquire_lock_timed(self._lock, 50000, 0)
                if got == PY_LOCK_ACQUIRED:
                    break
                PyErr_CheckSignals()
        self._held = True
        return 0

    cdef inline void give(self) noexcept:
        self._held = False
        PyThread_release_lock(self._lock)

    def acquire(self):
        self.take()
        return True

    def release(self):
        if not self._held:
            raise RuntimeError("release unlocked lock")
        self.give()

    def locked(self):
        return self._held

    def __enter__(self):
        self.take()
        return True

    def __exit__(self, *exc_info):
        self.give()


cdef class SessionReply:
    """The answer to a session call. `sender` is the server, as the kernel verified it."""

    cdef readonly bytes data
    cdef readonly object sender

    def __init__(self, bytes data, sender):
        self.data, self.sender = data, sender

    def __repr__(self):
        return f"<session reply of {len(self.data)} bytes from pid {self.sender.pid}>"


cdef SessionReply _reply(bytes data, sender):
    cdef SessionReply r = SessionReply.__new__(SessionReply)
    r.data, r.sender = data, sender
    return r


def deadline_from(timeout):
    """Turn a timeout (seconds, or None) into the absolute CLOCK_MONOTONIC deadline
    in ns that the kernel and the sessions enforce (STYLE §5): -1 waits forever, 0
    returns at once. The one definition for the Python paths (kernel/client/_conn.py
    re-exports it) and the compiled ones. A timeout past ~146 years (math.inf
    included) is capped there: the ring's deadline field is 64 bits."""
    return _deadline(timeout)


cdef int64_t _deadline(timeout) except? -2:
    cdef double t
    if timeout is None:
        return -1
    t = timeout
    if not t >= 0:   # also NaN
        raise ValueError("timeout must be non-negative or None")
    if t == 0:
        return 0
    return now_ns() + max(1, <int64_t>min(t * 1e9, 2.0**62))


cdef class SessionCaller:
    """The compiled half of kernel.Session: `call()`'s common path (write the call,
    wait, take the reply) is one C call, and so is `send()`'s (write, ring). Past
    it, the subclass's `_send_slow(data, timeout)` or `_call_slow(req_id, data,
    deadline, first)` finishes (the latter still holding the turn): `first` is
    SessionPort.call's code, or the ValueError or RingCorruptError it raised."""

    cdef SessionPort _port
    cdef TurnLock _turn
    cdef uint64_t _next_id
    cdef object _peer

    def _bind(self, SessionPort port, peer):
        """Called once by the subclass's __init__; returns the turn lock."""
        self._port, self._peer, self._next_id = port, peer, 1
        self._turn = TurnLock()
        return self._turn

    def call(self, data, *, timeout=None):
        """Send `data` and wait for the reply; the timeout covers both.

        Raises CallTimeoutError (the late reply is dropped, never returned to a later
        call), PeerClosedError when the server closed the session or died, and
        InvalidCapabilityError when the capability it was opened through was revoked.
        """
        cdef object got = self._call(data, _deadline(timeout))
        if type(got) is bytes:
            return _reply(got, self._peer)
        return got

    def send(self, data, *, timeout=None):
        """One-way: queue `data` for the server and return at once. Blocks only while
        the ring is full (the server is behind), until `timeout`."""
        try:
            if self._port._send(OP_SEND, 0, data) == W_OK:
                return
        except (OverflowError, ValueError):
            pass   # the slow path names it
        self._send_slow(data, timeout)

    cdef object _call(self, data, int64_t deadline):
        """The reply's bytes, or the SessionReply of the slow path."""
        cdef uint64_t req_id
        cdef TurnLock turn = self._turn
        if turn is None:
            raise TypeError("SessionCaller._bind() was not called")
        turn.take()
        try:
            req_id = self._next_id
            self._next_id = req_id + 1
            try:
                first = self._port._call(req_id, data, deadline)
                if type(first) is bytes:
                    return first
            except OverflowError:
                first = _FULL   # nothing written: the slow path names it
            except (ValueError, RingCorruptError) as e:   # closed, or the peer broke the ring
                first = e
            except BaseException:   # a signal handler's: its server is told (port.withdraw)
                self._port.withdraw(req_id)
                raise
            try:
                return self._call_slow(req_id, data, deadline, first)
            except BaseException:
                self._port.withdraw(req_id)   # a no-op if the timeout did it
                raise
        finally:
            turn.give()


cdef class ServiceCaller:
    """The compiled half of kernel.ServiceClient: `call()`'s common path (encode the
    request, call over the client's session when no other call is on it, decode an
    OK reply) is one C call. With 32 client processes on 2 cores every call runs
    cache-cold, and ServiceClient's Python around the session call cut the rate
    from 110-117k calls/s (the same session calls made directly) to 70k. The
    subclass does the rest: `_call_slow(data, timeout, type)` when there is no
    session (yet), `_call_kernel(...)` when the session is busy, and
    `_result(reply, type)` for a failure or a type not decoded before."""

    cdef object _encode
    cdef dict _decoders
    cdef SessionCaller _sess
    cdef bint _on_session

    def _bind_codec(self, encode, dict decoders):
        """Called once by the subclass's __init__: msgspec's encode, and the reply
        decoders by type (shared; `_result` adds to it)."""
        self._encode, self._decoders = encode, decoders

    def _set_session(self, SessionCaller session):
        self._sess = session

    @property
    def _session(self):
        """The client's session, or None (not opened, declined, or closed)."""
        return self._sess

    def call(self, request, *, timeout=None, type=Any):
        """Send `request` and return the handler's result (decoded as `type`).

        Raises the handler's exception (a safe builtin as itself, anything else as
        RemoteError), InvalidArgumentError for a request the service does not take,
        CallTimeoutError, PeerClosedError (the service ended).
        """
        data = self._encode(request)
        if self._sess is None:
            return self._call_slow(data, timeout, type)
        return self._session_call(data, timeout, type)

    def _call_session(self, data, timeout, type_):
        """Over the session, or through the kernel while another call is on it (a
        check and a flag under the GIL: no lock needed)."""
        return self._session_call(data, timeout, type_)

    cdef object _session_call(self, data, timeout, type_):
        # A C call from call(): through the Python method it cost an attribute
        # lookup along the subclass's MRO per call, cache-cold with 32 clients.
        cdef SessionCaller session = self._sess
        cdef object reply
        if session is None or self._on_session:
            return self._call_kernel(data, timeout, type_)
        self._on_session = True
        try:
            reply = session._call(data, _deadline(timeout))
        finally:
            self._on_session = False
        if type(reply) is not bytes:
            reply = (<SessionReply>reply).data
        return self._decode(reply, type_)

    cdef object _decode(self, bytes reply, type_):
        cdef object decoder
        if PyBytes_GET_SIZE(reply) and PyBytes_AS_STRING(reply)[0] == 0:
            decoder = self._decoders.get(type_)
            if decoder is not None:
                return decoder.decode(_body(reply))
        return self._result(reply, type_)


def reply_body(bytes reply not None):
    """A service reply past its status byte, for its decoder (both clients): a copy
    when small (one object, where a view and its slice are two: ~0.1 µs less for
    64 B), a view when large (no copy; it keeps `reply` alive, as msgspec may
    return views into it)."""
    return _body(reply)


cdef object _body(bytes reply):
    if PyBytes_GET_SIZE(reply) <= 4096:
        return reply[1:]
    return memoryview(reply)[1:]


RECV_BATCH = 256
"""Requests one compiled step takes off the ring at most."""


cdef class SessionReceiver:
    """The compiled half of kernel.SessionServer: `recv()`'s common path (a request
    is queued, or the ring has some, or they come while it waits) is one C call, as
    the server's Python after a wake-up runs cache-cold. Anything else goes to the
    subclass's `_recv_slow(deadline)`: a wait that ended without a request, an ended
    session, or a server shut down or served by a SessionGroup (`_slow_only`)."""

    cdef SessionPort _port
    cdef TurnLock _turn
    cdef list _ready                  # received, not yet returned: _ready[_next:]
    cdef Py_ssize_t _next
    cdef public bint _slow_only

    def _bind(self, SessionPort port):
        """Called once by the subclass's __init__; returns the turn lock."""
        self._port, self._ready, self._next = port, [], 0
        self._turn = TurnLock()
        return self._turn

    def recv(self, *, timeout=None):
        """Wait for the next request. Raises PeerClosedError once the caller closed the
        session or died, CallTimeoutError after `timeout`."""
        cdef int64_t deadline = _deadline(timeout)
        cdef TurnLock turn = self._turn
        cdef list batch
        if turn is None:
            raise TypeError("SessionReceiver._bind() was not called")
        if self._slow_only:
            return self._recv_slow(deadline)
        turn.take()
        try:
            if self._next < len(self._ready):
                return self._pop()
            if not self._slow_only:   # else shut down while this thread waited its turn
                batch = []
                try:
                    if self._port._recv_wait(batch, RECV_BATCH, deadline) > 0:
                        self._ready, self._next = batch, 0
                        return self._pop()
                except (ValueError, RingCorruptError):
                    pass   # closed, or a broken ring: the slow path names it
        finally:
            turn.give()
        return self._recv_slow(deadline)

    cdef object _pop(self):
        m = self._ready[self._next]
        self._ready[self._next] = None
        self._next += 1
        return m

    def _queue(self, list batch):
        """Queue received requests behind those not yet returned (the slow path's)."""
        self._ready = self._ready[self._next:] + batch
        self._next = 0

    def _take_ready(self, Py_ssize_t max_n):
        """Up to `max_n` queued requests, oldest first."""
        cdef Py_ssize_t end = min(len(self._ready), self._next + max_n)
        taken = self._ready[self._next:end]
        if end == len(self._ready):
            self._ready, self._next = [], 0
        else:
            self._next = end
        return taken


# ---------------------------------------------------------------- a group's wait

cdef class GroupReceiver:
    """The compiled half of kernel.SessionGroup: `recv_many()`'s loop (take, spin,
    sleep) is one C call, which calls the subclass only for what is rare:
    `_before_pass()` once a member joins or the group is shut down or closed (it
    joins them, or raises), `_take_ended(out, max_n, taken, ended)` for members
    that ended, and `_after_sleep(code)` for a wake-up that is not a doorbell. In
    Python this loop cost ~0.45 µs per batch warm (now ~0.2), a sixth of a
    one-client Service call, and more cache-cold after idleness."""

    cdef public list _port_list       # the members' ports; replaced, never edited
    cdef public list _joining         # added, not yet members: _before_pass() joins them
    cdef public bint _closed
    cdef public bint _draining
    cdef object _glock                # the group's lock: held while it reads the rings
    cdef int _wake_fd
    cdef int64_t _spin_ns, _poll_ns
    cdef int _spin_yields
    cdef Py_ssize_t _first            # the member the next pass starts with

    def _bind(self, lock, int wake_fd, int64_t spin_ns, int64_t poll_ns, int spin_yields):
        """Called once by the subclass's __init__."""
        self._glock, self._wake_fd = lock, wake_fd
        self._spin_ns, self._poll_ns, self._spin_yields = spin_ns, poll_ns, spin_yields
        self._port_list, self._joining = [], []

    def recv_many(self, Py_ssize_t max_n=RECV_BATCH, *, timeout=None):
        """Wait for requests on any member; return those waiting, up to `max_n` (at
        least one). Raises CallTimeoutError after `timeout`, PeerClosedError once the
        group is closed or shut down, or the kernel went away."""
        cdef list out = [], ended = []
        cdef Py_ssize_t taken
        cdef int64_t deadline
        if max_n < 1:
            raise ValueError("max_n must be at least 1")
        deadline = _deadline(timeout)
        lock = self._glock
        if lock is None:
            raise TypeError("GroupReceiver._bind() was not called")
        lock.acquire()
        try:
            while True:
                if self._closed or self._draining or self._joining:
                    self._before_pass()
                taken = _group_take(self._port_list, out, max_n, ended, &self._first)
                if ended:   # rare: the slow way raises each one's error, and drops it
                    taken += self._take_ended(out, max_n, taken, ended)
                    ended = []
                if taken:
                    return out
                if 0 <= deadline <= now_ns():
                    raise CallTimeoutError("session group: no request before the deadline")
                if group_spin(self._port_list, spin_until(self._spin_ns, deadline),
                              self._poll_ns, self._spin_yields):
                    continue
                code = group_sleep(self._port_list, self._wake_fd, deadline, lock)
                if code != _READY:
                    self._after_sleep(code)
        finally:
            lock.release()


def group_take(list ports, list out, Py_ssize_t max_n, list ended, Py_ssize_t first=0):
    """kernel.SessionGroup's pass over its members, compiled: append up to `max_n`
    requests from the members' inboxes to `out`, starting with member `first` and
    going round, and return (how many, the member the next pass starts with). The
    index of a member that ended (its state word, a closed or broken ring) goes to
    `ended` for the group's slow path, which names the error. With 32 members a
    pass takes 0.4 µs; in Python it took 2.2, on every pass."""
    taken = _group_take(ports, out, max_n, ended, &first)
    return taken, first


cdef Py_ssize_t _group_take(list ports, list out, Py_ssize_t max_n, list ended,
                            Py_ssize_t *first) except -1:
    """A pass that fills the batch ends in some member; the next pass starts with
    the member after it. Else a caller that always has a batch waiting (a one-way
    stream, or an asyncio client with hundreds of calls in flight) would be served
    alone while the members after it starved."""
    cdef Py_ssize_t n = len(ports), i, k, start, room = max_n
    cdef int64_t got
    cdef SessionPort port
    if n == 0:
        return 0
    start = first[0] % n  # the list may have shrunk since
    for k in range(n):
        i = start + k
        if i >= n:
            i -= n
        port = ports[i]
        try:
            got = port._recv_many(out, room)
        except (ValueError, RingCorruptError):
            got = -1
        if got < 0:
            ended.append(i)
            continue
        room -= got
        if room <= 0:
            first[0] = i + 1
            break
    return max_n - room


def group_spin(list ports, int64_t budget_ns, int64_t poll_ns, int max_yields):
    """kernel.SessionGroup's busy-poll before it sleeps, compiled: True as soon as
    any member's inbox has a record, False after `budget_ns` or `max_yields`. It
    polls without a system call for `poll_ns`, then yields the core once per pass
    (the callers may need it). In Python each pass took ~1 µs and a sched_yield(),
    so a request waited ~0.5 µs to be seen, and the GIL was held throughout; now it
    is released if another thread may want it (ring.pyx spin_gil has the why).
    The caller holds the group's lock: no member is unmapped meanwhile."""
    cdef Py_ssize_t n = len(ports), i
    cdef const uint64_t **tails = <const uint64_t **>PyMem_Malloc(n * sizeof(uint64_t *) + 1)
    cdef uint64_t *heads = <uint64_t *>PyMem_Malloc(n * sizeof(uint64_t) + 1)
    cdef SessionPort port
    cdef bint found
    if tails == NULL or heads == NULL:
        PyMem_Free(tails)
        PyMem_Free(heads)
        raise MemoryError()
    try:
        for i in range(n):
            port = ports[i]
            if port.inbox.data == NULL:
                return True   # closed meanwhile: the group looks, and drops it
            tails[i], heads[i] = port.inbox.tail_p, port.inbox.head
        if sole_thread():
            return _scan(tails, heads, n, budget_ns, poll_ns, max_yields)
        with nogil:
            found = _scan(tails, heads, n, budget_ns, poll_ns, max_yields)
        return found
    finally:
        PyMem_Free(tails)
        PyMem_Free(heads)


cdef bint _scan(const uint64_t **tails, const uint64_t *heads, Py_ssize_t n,
                int64_t budget_ns, int64_t poll_ns, int max_yields) noexcept nogil:
    """group_spin()'s loop over the members' tails."""
    cdef Py_ssize_t i
    cdef int64_t start = now_ns(), now
    cdef int yields = 0
    cdef uint64_t passes = 0
    now = start
    while True:
        for i in range(n):
            if mk_load_acquire_u64(tails[i]) != heads[i]:
                return True
        passes += 1
        if (passes & 15) == 0 or now - start >= poll_ns:
            now = now_ns()
            if now - start >= budget_ns:
                return False
        if now - start < poll_ns:
            mk_cpu_relax()
        elif yields < max_yields:
            mk_yield()
            yields += 1
        else:
            return False


WOKEN = 7
"""group_sleep()'s code when the group's own wake fd fired (add(), shutdown(), close())."""


def group_sleep(list ports, int wake_fd, int64_t deadline, lock=None):
    """kernel.SessionGroup's sleep, compiled (in Python it cost 12-18 µs per sleep
    with 32 members, here 3.5): announce the sleep on every member's inbox, re-check
    each, then poll every doorbell, the group's wake fd and the kernel sockets at
    once, with the group's `lock` (held on entry) let go only during the poll.
    Returns READY (a doorbell rang, or a record landed meanwhile), SOCKET (a kernel
    socket is readable: the group looks), WOKEN (the wake fd: the group drains it)
    or TIMEOUT. A member closed during the poll is not touched after it (its close
    runs under the GIL, and so do these checks)."""
    cdef Py_ssize_t n = len(ports), i, j, nfds = 1, armed = 0
    cdef pollfd *fds = <pollfd *>PyMem_Malloc((2 * n + 1) * sizeof(pollfd))
    cdef Py_ssize_t *owner = <Py_ssize_t *>PyMem_Malloc((2 * n + 1) * sizeof(Py_ssize_t))
    cdef SessionPort port
    cdef int ms = -1, rc
    cdef int64_t left, code = _READY
    cdef uint64_t count
    if fds == NULL or owner == NULL:
        PyMem_Free(fds)
        PyMem_Free(owner)
        raise MemoryError()
    try:
        if deadline >= 0:
            left = deadline - now_ns()
            if left <= 0:
                return _TIMEOUT
            ms = <int>min(left // 1000000 + 1, 2**30)
        fds[0].fd, fds[0].events, fds[0].revents, owner[0] = wake_fd, POLLIN, 0, -1
        for i in range(n):
            port = ports[i]
            if port.inbox.data == NULL:
                continue   # closed meanwhile: the group drops it
            mk_store_u32(port.inbox.waiting_p, 1)
            armed = i + 1
            mk_fence()   # SYNC POINT: pairs with the exchange in the peer's _doorbell()
            if mk_load_acquire_u64(port.inbox.tail_p) != port.inbox.head:
                return _READY
            fds[nfds].fd, fds[nfds].events, fds[nfds].revents = port.my_efd, POLLIN, 0
            owner[nfds] = i
            nfds += 1
        for i in range(n):   # each kernel socket once: members usually share one
            port = ports[i]
            for j in range(nfds):
                if owner[j] == -2 and fds[j].fd == port.sock_fd:
                    break
            else:
                fds[nfds].fd, fds[nfds].events, fds[nfds].revents = port.sock_fd, POLLIN, 0
                owner[nfds] = -2
                nfds += 1
        PyErr_CheckSignals()
        if lock is not None:
            lock.release()
        try:
            with nogil:
                rc = poll(fds, nfds, ms)
        finally:
            if lock is not None:
                lock.acquire()
        if rc == 0:
            return _TIMEOUT
        if rc < 0:   # a signal (EINTR): run its handler now, which may raise
            PyErr_CheckSignals()
            return _READY
        for j in range(1, nfds):
            if not fds[j].revents:
                continue
            if owner[j] == -2:
                code = _SOCKET
            elif (<SessionPort>ports[owner[j]]).inbox.data != NULL:   # fd still its own
                read(fds[j].fd, &count, 8)   # non-blocking
        if code == _READY and fds[0].revents:
            return WOKEN
        return code
    finally:
        for i in range(armed):
            port = ports[i]
            if port.inbox.data != NULL:
                mk_store_u32(port.inbox.waiting_p, 0)
        PyMem_Free(fds)
        PyMem_Free(owner)
