# cython: language_level=3, embedsignature=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""The per-message path of a direct session, compiled (kernel/client/_session.py
has the protocol; kernel/daemon/sessions.py the why).

In Python a session's send cost ~1.3 µs, of which the ring write was 0.3: the
rest was checks and attribute lookups around it. Here each message is one C call
that checks the kernel's state word, writes the record and rings the doorbell only
if the peer sleeps; a receiver takes a whole batch in one call. Errors are left to
Python (one place maps them): methods return codes, documented on each.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint16_t, uint64_t
from libc.string cimport memset
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pythread cimport (
    NOWAIT_LOCK, PY_LOCK_ACQUIRED, PyLockStatus, PyThread_acquire_lock,
    PyThread_allocate_lock, PyThread_free_lock, PyThread_release_lock, PyThread_type_lock,
)
from posix.unistd cimport read, write

from kernel._core.ring import RingCorruptError
from kernel._core.ring cimport (
    HDR_SIZE, Header, Ring, SessionStates, mk_exchange_u32, mk_fence, mk_hdr,
    mk_load_acquire_u64, mk_store_u32, now_ns, spin_for,
)

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock, long long, int) nogil

cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, nfds_t nfds, int timeout)
    enum: POLLIN

cdef enum:
    OP_SEND = 10
    OP_CALL = 11
    OP_REPLY = 13
    ST_OPEN = 1
    ST_PEER_CLOSED = -22

OK, FULL = 0, 1
"""Return codes of the write methods; a negative code is the Status the session
ended with (the kernel's word)."""

READY, SOCKET, TIMEOUT = 0, 5, 6
"""Return codes of wait(): a record may be there; the kernel's socket is readable
(it went away, or a frame waits: the client library looks); the deadline passed."""


cdef class SessionPort:
    """One side of a session: the ring it writes, the ring it reads, the kernel's
    state word (in this process's own region), the peer's doorbell."""

    cdef Ring out
    cdef Ring inbox
    cdef SessionStates states
    cdef Py_ssize_t index
    cdef int peer_efd
    cdef Py_ssize_t max_payload
    cdef readonly uint64_t badge      # the kernel's, for messages this side receives
    cdef readonly object sender       # the peer's Credentials, as the kernel verified them
    cdef readonly uint64_t sender_id
    cdef readonly uint64_t sid
    cdef int my_efd                   # our doorbell, and the kernel's socket: wait() polls both
    cdef int sock_fd
    cdef int64_t spin_ns, spin_min, spin_max, yield_after_ns, crowded_ns
    cdef bint crowded                 # the last spin's yield let others run >= crowded_ns
    cdef bint broken                  # the peer broke the ring format: mark_broken()

    def __init__(self, uint64_t sid, Ring out, Ring inbox, SessionStates states,
                 Py_ssize_t index, int peer_efd, Py_ssize_t max_payload, uint64_t badge,
                 sender, uint64_t sender_id, int my_efd=-1, int sock_fd=-1):
        self.sid = sid
        self.out, self.inbox, self.states, self.index = out, inbox, states, index
        self.peer_efd, self.max_payload = peer_efd, max_payload
        self.badge, self.sender, self.sender_id = badge, sender, sender_id
        self.my_efd, self.sock_fd = my_efd, sock_fd
        self.set_spin(2000, 200000, 1000, 0)
        states._word(index)   # validates the index

    def set_spin(self, int64_t spin_min, int64_t spin_max, int64_t yield_after_ns,
                 int64_t crowded_ns):
        """wait()'s busy-poll before it sleeps (kernel/client/_session.py has the
        figures): adaptive between the bounds, sched_yield() after `yield_after_ns`,
        and the minimum once a yield took `crowded_ns` (0: never)."""
        if not 0 <= spin_min <= spin_max or yield_after_ns < 0 or crowded_ns < 0:
            raise ValueError("spin bounds must satisfy 0 <= min <= max, others >= 0")
        self.spin_min, self.spin_max = spin_min, spin_max
        self.yield_after_ns, self.crowded_ns = yield_after_ns, crowded_ns
        self.spin_ns = spin_max // 2

    def mark_broken(self):
        """The peer broke the ring format: from now on every operation returns the
        ended Status and touches neither ring (the client library says why)."""
        self.broken = True

    cdef inline int64_t _state(self) except? -1:
        if self.broken:
            return ST_PEER_CLOSED
        # SYNC POINT: acquire; the kernel releases the word, then writes our doorbell.
        cdef int64_t st = <int64_t>mk_load_acquire_u64(<uint64_t *>self.states._word(self.index))
        if st == ST_OPEN:
            return ST_OPEN
        return st if st < 0 else ST_PEER_CLOSED   # 0: freed under us, i.e. closed

    def state(self):
        """1 while the session stands, else the Status it ended with."""
        return self._state()

    cdef int _put(self, uint16_t op, uint64_t req_id, payload) except -2:
        cdef mk_hdr h
        cdef const unsigned char[::1] view
        cdef const char *p
        cdef Py_ssize_t n
        if PyBytes_CheckExact(payload):
            p, n = PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload)
        else:
            view = payload
            n = view.shape[0]
            p = <const char *>&view[0] if n else NULL
        if n > self.max_payload:
            raise OverflowError(n)
        memset(&h, 0, HDR_SIZE)
        h.opcode = op
        h.req_id = req_id
        return self.out._write(&h, NULL, p, n)

    cdef inline void _doorbell(self) noexcept:
        """Ring once per sleep: take the peer's waiting flag as we ring, so the rest of
        a burst written while it wakes makes no syscall (a write per message measured
        ~700k msgs/s against ~4M/s). The exchange is a full barrier: either it sees the
        flag, or the peer's re-check after setting it sees our record (ring.pyx)."""
        cdef uint64_t one = 1
        # SYNC POINT: seq_cst exchange orders our tail store before the flag's read.
        if mk_exchange_u32(self.out.waiting_p, 0):
            write(self.peer_efd, &one, 8)

    def send(self, uint16_t op, uint64_t req_id, payload):
        """Write one record: OK, FULL, or the ended session's Status. OverflowError
        for a payload above the maximum (the caller names it)."""
        cdef int64_t st = self._state()
        if st != ST_OPEN:
            return st
        if not self._put(op, req_id, payload):
            return FULL
        self._doorbell()
        return OK

    def send_many(self, list payloads, Py_ssize_t start):
        """Write one-way records for payloads[start:] until the ring is full; ring the
        doorbell once. Returns how many were written, or the ended Status (< 0)."""
        cdef int64_t st = self._state()
        cdef Py_ssize_t i = start, n = len(payloads)
        if st != ST_OPEN:
            return st
        while i < n and self._put(OP_SEND, 0, payloads[i]):
            i += 1
        if i > start:
            self._doorbell()
        return i - start

    def recv_many(self, list out, Py_ssize_t max_n):
        """Append up to max_n received messages to `out`. Returns how many, or the
        ended Status (< 0): nothing is taken once the kernel says it ended."""
        return self._recv_many(out, max_n)

    cdef int64_t _recv_many(self, list out, Py_ssize_t max_n) except? -1000:
        cdef int64_t st = self._state()
        cdef Py_ssize_t taken = 0
        cdef Header h
        if st != ST_OPEN:
            return st
        while taken < max_n:
            h = self.inbox.next_record()
            if h is None:
                break
            out.append(_message(self, h))
            self.inbox.consume_record(h)
            taken += 1
        return taken

    def take_reply(self, uint64_t req_id):
        """The payload of the reply to `req_id` if it is there, else None. Other
        records (replies to calls that timed out) are dropped: a late answer never
        reaches a later call."""
        return self._take_reply(req_id)

    cdef object _take_reply(self, uint64_t req_id):
        cdef Header h
        cdef object data
        while True:
            h = self.inbox.next_record()
            if h is None:
                return None
            data = None
            if h.h.opcode == OP_REPLY and h.h.req_id == req_id:
                data = _payload(self.inbox, h)
            self.inbox.consume_record(h)
            if data is not None:
                return data

    # ------------------------------------------------------------ waiting
    #
    # After 10 ms of idleness every instruction runs cache-cold (on this VM a
    # Python-level wait cost ~15 µs between the doorbell and the handler), so
    # the whole wait is here: spin, announce the sleep, poll, clear.

    def call(self, uint64_t req_id, payload, int64_t deadline):
        """Write a call and wait for its reply: the reply's bytes, or a code for
        the client library's slow path: FULL (nothing written), SOCKET or TIMEOUT
        (written, no reply yet), or the ended Status (< 0)."""
        return self._call(req_id, payload, deadline)

    cdef object _call(self, uint64_t req_id, payload, int64_t deadline):
        cdef int64_t code = self._state()
        if code != ST_OPEN:
            return code
        if not self._put(OP_CALL, req_id, payload):
            return FULL
        self._doorbell()
        while True:
            data = self._take_reply(req_id)
            if data is not None:
                return data
            code = self._wait(deadline)
            if code != READY:
                return code

    def recv_wait(self, list out, Py_ssize_t max_n, int64_t deadline):
        """recv_many(), waiting (once) for a record if none is there. Returns how
        many were taken; 0 when the wait ended without one (woken, the deadline,
        or the kernel's socket: the caller looks); or the ended Status (< 0)."""
        return self._recv_wait(out, max_n, deadline)

    cdef int64_t _recv_wait(self, list out, Py_ssize_t max_n, int64_t deadline) except? -1000:
        cdef int64_t code = self._recv_many(out, max_n)
        if code != 0:
            return code
        code = self._wait(deadline)
        if code < 0:
            return code
        return self._recv_many(out, max_n) if code == READY else 0

    def wait(self, int64_t deadline):
        """Wait until a record may be there: READY, SOCKET, TIMEOUT or the ended
        Status (< 0). Spins first (set_spin), then sleeps on the doorbell."""
        return self._wait(deadline)

    cdef int64_t _wait(self, int64_t deadline) except? -1000:
        cdef Ring ring = self.inbox
        cdef int64_t st
        ring._check_open()
        if self._spin():
            return READY
        st = self._state()
        if st != ST_OPEN:
            return st
        mk_store_u32(ring.waiting_p, 1)
        mk_fence()   # SYNC POINT: pairs with the exchange in the peer's _doorbell()
        if mk_load_acquire_u64(ring.tail_p) != ring.head:
            mk_store_u32(ring.waiting_p, 0)
            return READY
        try:
            PyErr_CheckSignals()   # one that came while we spun: its handler runs now
            st = self._state()   # the kernel writes the doorbell after the word: no lost end
            return self._sleep(deadline) if st == ST_OPEN else st
        finally:
            mk_store_u32(ring.waiting_p, 0)

    cdef int64_t _sleep(self, int64_t deadline) except? -1000:
        cdef pollfd fds[2]
        cdef int ms = -1, rc
        cdef int64_t left
        cdef uint64_t count
        if deadline >= 0:
            left = deadline - now_ns()
            if left <= 0:
                return TIMEOUT
            ms = <int>min(left // 1000000 + 1, 2**30)
        fds[0].fd, fds[0].events, fds[0].revents = self.my_efd, POLLIN, 0
        fds[1].fd, fds[1].events, fds[1].revents = self.sock_fd, POLLIN, 0
        with nogil:
            rc = poll(fds, 2, ms)
        if rc == 0:
            return TIMEOUT
        if rc < 0:   # a signal (EINTR): run its handler now, which may raise
            PyErr_CheckSignals()
            return READY
        if fds[0].revents:
            read(self.my_efd, &count, 8)   # non-blocking: another thread may have read it
        if fds[1].revents:
            return SOCKET
        return READY   # the doorbell: the caller looks again

    cdef bint _spin(self):
        """Busy-poll the inbox for up to spin_ns (ring.pyx spin_for), adapting it as
        kernel/client/_conn.py next_spin() says (grow on success, halve on a miss,
        the minimum on a crowded machine). The GIL is released meanwhile.
        While the machine is crowded, yield at once: the answer needs the server to
        run, and polling first only burns the core it needs (32 client processes on
        2 cores: 163-190k calls/s polling 1 µs first, 178-207k yielding at once)."""
        cdef Ring ring = self.inbox
        cdef int64_t budget = self.spin_ns
        cdef int64_t yield_after = 0 if self.crowded else self.yield_after_ns
        cdef bint found, crowded
        with nogil:
            found = spin_for(ring.tail_p, ring.head, budget, yield_after,
                             self.crowded_ns, &crowded)
        self.crowded = crowded
        if crowded:
            self.spin_ns = self.spin_min
        elif found:
            self.spin_ns = min(self.spin_max, budget * 2)
        else:
            self.spin_ns = max(self.spin_min, budget // 2)
        return found

cdef inline bytes _payload(Ring ring, Header h):
    return PyBytes_FromStringAndSize(ring.data + h.pos + HDR_SIZE + 8 * h.h.ncaps,
                                     h.h.payload_len)


cdef SessionMessage _message(SessionPort port, Header h):
    cdef SessionMessage m = SessionMessage.__new__(SessionMessage)
    m.data = _payload(port.inbox, h)
    m.is_call = h.h.opcode == OP_CALL
    m.req_id = h.h.req_id if m.is_call else 0
    m.port = port
    return m


cdef class SessionMessage:
    """A request that arrived over a session. `badge`, `sender` and `sender_id` are
    the kernel's (fixed when the session was opened), never what the caller wrote
    in the ring."""

    cdef readonly bytes data
    cdef readonly bint is_call
    cdef uint64_t req_id
    cdef SessionPort port

    def __init__(self, *args, **kwargs):
        raise TypeError("SessionMessage objects are made by SessionServer.recv()")

    @property
    def badge(self): return self.port.badge
    @property
    def sender(self): return self.port.sender
    @property
    def sender_id(self): return self.port.sender_id
    @property
    def from_kernel(self): return False

    def reply(self, data):
        """Answer the call over the session. Raises PeerClosedError if the session
        ended, or if the caller does not drain its ring (it waits for one answer at a
        time, so a full ring means it misbehaves)."""
        cdef uint64_t req_id = self.req_id
        if req_id == 0:
            raise _error_hook(self.port, NOT_A_CALL, "reply")
        try:
            code = self.port.send(OP_REPLY, req_id, data)
        except OverflowError:
            raise _error_hook(self.port, TOO_LARGE, "reply") from None  # still answerable
        except ValueError:   # its rings were released: this side closed the session
            code = CLOSED
        self.req_id = 0
        if code != OK:
            raise _error_hook(self.port, code, "reply")

    def __repr__(self):
        kind = "call" if self.is_call else "message"
        return f"<session {kind} of {len(self.data)} bytes from pid {self.port.sender.pid}>"


_error_hook = None


def set_error_hook(hook):
    """`hook(port, code, verb)` returns the exception for a failed write (the client
    library's one mapping from a code to an error)."""
    global _error_hook
    _error_hook = hook


NOT_A_CALL, TOO_LARGE, CLOSED = 2, 3, 4
"""Codes of reply(): a message that was sent, not called, or already answered; a
payload above the maximum; this side closed the session."""


# ---------------------------------------------------------------- the calling side
#
# With 32 client processes on 2 cores every call switches its client in cache-cold,
# and each Python frame around the compiled wait cost µs: calling SessionPort.call
# straight from the benchmark's loop, without Session.call's Python, took 32 clients
# from ~105k to ~150k calls/s. So Session.call's whole common path is here.

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


cdef int64_t _deadline(timeout) except? -2:
    """kernel/client/_conn.py deadline_from(), compiled: -1 forever, 0 now."""
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
    """The compiled half of kernel.Session: `call()`'s common path (the reply came,
    or the session ended) is one C call. Anything else, the subclass's
    `_call_slow(req_id, data, deadline, first)` finishes, still holding the turn:
    `first` is SessionPort.call's code, or the ValueError or RingCorruptError it raised."""

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
        cdef int64_t deadline = _deadline(timeout)
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
            except OverflowError:
                first = FULL   # nothing written: the slow path names it
            except (ValueError, RingCorruptError) as e:   # closed, or the peer broke the ring
                first = e
            if type(first) is bytes:
                return _reply(first, self._peer)
            return self._call_slow(req_id, data, deadline, first)
        finally:
            turn.give()


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
            if self._slow_only:   # shut down while this thread waited for its turn
                batch = None
            else:
                batch = []
            try:
                if batch is not None and self._port._recv_wait(batch, RECV_BATCH, deadline) > 0:
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


# ---------------------------------------------------------------- a group's sleep

WOKEN = 7
"""group_sleep()'s code when the group's own wake fd fired (add() or close())."""


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
    cdef int64_t left, code = READY
    cdef uint64_t count
    if fds == NULL or owner == NULL:
        PyMem_Free(fds)
        PyMem_Free(owner)
        raise MemoryError()
    try:
        if deadline >= 0:
            left = deadline - now_ns()
            if left <= 0:
                return TIMEOUT
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
                return READY
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
            return TIMEOUT
        if rc < 0:   # a signal (EINTR): run its handler now, which may raise
            PyErr_CheckSignals()
            return READY
        for j in range(1, nfds):
            if not fds[j].revents:
                continue
            if owner[j] == -2:
                code = SOCKET
            elif (<SessionPort>ports[owner[j]]).inbox.data != NULL:   # fd still its own
                read(fds[j].fd, &count, 8)   # non-blocking
        if code == READY and fds[0].revents:
            return WOKEN
        return code
    finally:
        for i in range(armed):
            port = ports[i]
            if port.inbox.data != NULL:
                mk_store_u32(port.inbox.waiting_p, 0)
        PyMem_Free(fds)
        PyMem_Free(owner)
