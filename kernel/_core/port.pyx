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
from posix.unistd cimport write

from kernel._core.ring cimport (
    HDR_SIZE, Header, Ring, SessionStates, mk_exchange_u32, mk_hdr, mk_load_acquire_u64,
)

cdef enum:
    OP_SEND = 10
    OP_CALL = 11
    OP_REPLY = 13
    ST_OPEN = 1
    ST_PEER_CLOSED = -22

OK, FULL = 0, 1
"""Return codes of the write methods; a negative code is the Status the session
ended with (the kernel's word)."""


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

    def __init__(self, uint64_t sid, Ring out, Ring inbox, SessionStates states,
                 Py_ssize_t index, int peer_efd, Py_ssize_t max_payload, uint64_t badge,
                 sender, uint64_t sender_id):
        self.sid = sid
        self.out, self.inbox, self.states, self.index = out, inbox, states, index
        self.peer_efd, self.max_payload = peer_efd, max_payload
        self.badge, self.sender, self.sender_id = badge, sender, sender_id
        states._word(index)   # validates the index

    cdef inline int64_t _state(self) except? -1:
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
