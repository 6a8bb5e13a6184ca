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

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize
from cpython.bytes cimport PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset
from cpython.exc cimport PyErr_CheckSignals
from posix.unistd cimport read, write

from kernel._core.ring cimport (
    HDR_SIZE, MAX_TRACKED_CALLS, OFF_CALLS, OFF_CQ_ROOM, Completion, Header, Ring,
    SessionStates, adapt_spin, mk_cas_u64, mk_exchange_u32, mk_fence, mk_hdr,
    mk_load_acquire_u64, mk_load_u32, mk_store_release_u64, mk_store_u32, now_ns, spin_gil,
    spin_until,
)

cdef enum:
    ST_OPEN = 1
    ST_PEER_CLOSED = -22

OK, FULL, LATE = W_OK, W_FULL, W_LATE
"""Return codes of the write methods (LATE: a reply whose caller gave up first,
not written); a negative code is the Status the session ended with (the kernel's
word)."""

# The call words (ring.pxd) tell a server whether its reply is still awaited, as
# the kernel's reply capabilities do (DESIGN §5), without the kernel on the path.
# Word (id % MAX_TRACKED_CALLS) settles call `id`:
# - the server answers only after swapping it to id|ANSWERED, unless it holds
#   id|WITHDRAWN: then it stores id|ANSWERED|WITHDRAWN (seen, refused) and
#   writes nothing; a request dropped unanswered is answered "dropped" (_drop);
# - a caller that gives up swaps it to id|WITHDRAWN, unless it holds id|ANSWERED
#   (then the reply is on its way and is the answer).
# Each swaps whatever other value is there (an earlier call's), so exactly one of
# the two wins. Only the server writes a word while calls succeed, so its cache
# line stays on the server's core: a first version in which the caller marked and
# freed a word per call cost a session call ~0.3 µs and 64 asyncio calls in
# flight ~25%. The caller keeps in private memory which call owns each word; a
# withdrawn call keeps it until the server has seen the withdrawal (else a later
# call's swap would erase it). A call whose word is still owned is not written
# (W_FULL: the caller waits for room, as for a full ring), so every call is
# tracked and no outcome is ever ambiguous. The peer can write the words too: the
# caller believes ANSWERED only for a bounded grace (kernel/client/_session.py).
cdef uint64_t ANSWERED = (<uint64_t>1) << 63
cdef uint64_t WITHDRAWN = (<uint64_t>1) << 62
cdef uint64_t REFUSED = ANSWERED | WITHDRAWN
cdef uint64_t UNSEEN = (<uint64_t>1) << 63   # in owner[]: withdrawn, not yet seen

READY, SOCKET, TIMEOUT = 0, 5, 6
"""Return codes of wait(): a record may be there; the kernel's socket is readable
(it went away, or a frame waits: the client library looks); the deadline passed."""

DROPPED = 8
"""take_reply()'s and call()'s answer when the server dropped the call without
replying (a reply record with a status: only _drop writes one)."""


@cython.no_gc_clear   # a SessionMessage's __dealloc__ may still use its port
cdef class SessionPort:
    """One side of a session: the ring it writes, the ring it reads, the kernel's
    state word (in this process's own region), the peer's doorbell."""

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
        # The call words are in the control page of the session's region, which
        # both rings share (the inbox's: a Ring's region holds at least that page).
        self.calls = <uint64_t *>(<char *>inbox.buf.buf + OFF_CALLS)
        self.room_p = <uint32_t *>(<char *>inbox.buf.buf + OFF_CQ_ROOM)

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

    cdef int64_t _state(self) except? -1:
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
        """Write one record: W_OK, W_FULL (the ring is full, or a call's word is
        still owned), or W_LATE (a reply whose caller gave up: nothing written).
        A call claims its word first, and gives it back if it was not written."""
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
        if op == OP_CALL and not self._claim(req_id):
            return W_FULL   # its word is still owned: wait for the server, as for room
        elif op == OP_REPLY:
            if self._keeps_too_many():
                return W_FULL   # more than an honest caller has in flight: not committed
            if not self._commit(req_id):
                return W_LATE
            self._deliver(&h, p, n)
            return W_OK
        if self.out._write(&h, NULL, p, n):
            return W_OK
        if op == OP_CALL:
            self._settle(req_id)   # not written: it is sent again, or given up
        return W_FULL

    # ------------------------------------------------------------ call words

    cdef uint64_t *_call_word(self, uint64_t req_id) noexcept:
        if self.out is None or self.inbox is None:   # cleared by the collector
            return NULL
        if self.out.data == NULL or self.inbox.data == NULL:   # released: unmapped
            return NULL
        return self.calls + (req_id & (MAX_TRACKED_CALLS - 1))

    cdef bint _claim(self, uint64_t req_id) noexcept:
        """Caller: make call `req_id` the owner of its word; False while an
        earlier call owns it (in flight, or withdrawn and not yet seen)."""
        cdef Py_ssize_t i = req_id & (MAX_TRACKED_CALLS - 1)
        cdef uint64_t held = self.owner[i]
        cdef uint64_t *w
        if held & UNSEEN:
            w = self._call_word(req_id)
            if w == NULL or mk_load_acquire_u64(w) != (held & ~UNSEEN) | REFUSED:
                return False
            held = 0
        if (held != 0 and held != req_id) or req_id & REFUSED:
            return False
        self.owner[i] = req_id
        return True

    cdef void _settle(self, uint64_t req_id) noexcept:
        """Caller: call `req_id` is over (its reply taken, or it was not written)."""
        cdef Py_ssize_t i = req_id & (MAX_TRACKED_CALLS - 1)
        if self.owner[i] == req_id:
            self.owner[i] = 0

    cdef bint _commit(self, uint64_t req_id) noexcept:
        """Server: take the right to answer call `req_id`; False (and the word
        marked seen) when its caller gave up first."""
        cdef uint64_t *w = self._call_word(req_id)
        cdef uint64_t seen
        if w == NULL:
            return True   # released: the write says so
        while True:
            seen = mk_load_acquire_u64(w)
            if seen == req_id | WITHDRAWN:
                mk_store_release_u64(w, req_id | REFUSED)   # the caller waits for this
                return False
            if mk_cas_u64(w, seen, req_id | ANSWERED):
                return True

    cdef int _drop(self, uint64_t req_id) except -1:
        """Server: call `req_id` was dropped unanswered. Tell its caller at once,
        as the kernel does when a reply capability is closed: a reply record
        with status PEER_CLOSED and no payload. If its caller gave up first, the
        swap marks the word seen. With MAX_TRACKED_CALLS replies already kept
        back (a caller that does not drain), its deadline ends the call."""
        cdef mk_hdr h
        if self.states is None or self._call_word(req_id) == NULL:
            return 0   # cleared by the collector, or released: nobody to tell
        if self._keeps_too_many() or self._state() != ST_OPEN or not self._commit(req_id):
            return 0
        memset(&h, 0, HDR_SIZE)
        h.opcode = OP_REPLY
        h.req_id = req_id
        h.status = ST_PEER_CLOSED
        self._deliver(&h, NULL, 0)
        self._doorbell()
        return 0

    # ------------------------------------------------------------ replies kept back
    #
    # A committed reply must reach its caller: the server has told its code the
    # reply went out, and the caller waits for it (past its deadline, for the
    # grace). The caller's ring may be full though, with no fault of the caller:
    # 16 asyncio calls in flight whose replies are 200 KiB each fill its 1 MiB
    # before its loop runs. So a reply without room is kept in the server's
    # memory, in order (as the kernel keeps completions: kcore.pyx `overflow`),
    # and written as the caller drains: the server sets the room flag, and the
    # caller, having taken records, rings the server's doorbell if it is set; the
    # server then writes what fits on its next read of its inbox (_recv_many),
    # or before its next reply. At most MAX_TRACKED_CALLS are kept (an honest
    # caller never has more calls in flight: the call words): past that a reply
    # fails, uncommitted, and the caller's deadline ends its call.

    cdef inline bint _keeps_too_many(self):
        """Server: MAX_TRACKED_CALLS replies wait for room already (a caller that
        does not drain): the next is refused before it is committed."""
        return self.overflow is not None and len(self.overflow) >= MAX_TRACKED_CALLS

    cdef int _deliver(self, mk_hdr *h, const char *p, Py_ssize_t n) except -1:
        """Server: write a committed reply, or keep a copy until it fits."""
        if self.overflow is None and self.out._write(h, NULL, p, n):
            return 0
        if self.overflow is None:
            self.overflow = []
        self.overflow.append((h.req_id, h.status,
                              PyBytes_FromStringAndSize(p, n) if n else b""))
        return self._flush()

    cdef int _flush(self) except -1:
        """Server: write the replies kept back while they fit. If some are left,
        set the room flag, then try once more: the caller may have drained
        before it could see the flag."""
        cdef list kept = self.overflow
        cdef Py_ssize_t i = 0, n = len(kept)
        cdef bint flagged = False
        cdef mk_hdr h
        cdef bytes data
        if self.out.data == NULL:   # released: the caller learns from the session
            self.overflow = None
            return 0
        memset(&h, 0, HDR_SIZE)
        h.opcode = OP_REPLY
        while True:
            while i < n:
                h.req_id, h.status, data = kept[i]
                if not self.out._write(&h, NULL, PyBytes_AS_STRING(data),
                                       PyBytes_GET_SIZE(data)):
                    break
                i += 1
            if i == n or flagged:
                break
            mk_store_u32(self.room_p, 1)
            mk_fence()   # SYNC POINT: pairs with the fence in the caller's _room_bell()
            flagged = True
        if i:
            del kept[:i]
            self._doorbell()
        if not kept:
            self.overflow = None
            mk_store_u32(self.room_p, 0)
        return 0

    def flush_kept(self):
        """Server: write what fits of the replies kept for the caller's full ring;
        return how many are still kept (0: none)."""
        if self.overflow is None:
            return 0
        self._flush()
        return len(self.overflow) if self.overflow is not None else 0

    cdef void _room_bell(self) noexcept:
        """Caller, after taking records: ring the server if it keeps replies back."""
        cdef uint64_t one = 1
        mk_fence()   # SYNC POINT: our head's store before the flag's load (_flush)
        if mk_load_u32(self.room_p) and mk_exchange_u32(self.room_p, 0):
            write(self.peer_efd, &one, 8)

    cpdef bint withdraw(self, uint64_t req_id):
        """Caller: give up on call `req_id` (a timeout, a cancel, an exception).
        True when its server will be told that a reply is too late (or it dropped
        the call); False when the server answered first: the reply is on its way
        and is the call's answer. Only the first use of a call decides."""
        cdef uint64_t *w = self._call_word(req_id)
        cdef Py_ssize_t i = req_id & (MAX_TRACKED_CALLS - 1)
        cdef uint64_t seen
        if w == NULL or self.owner[i] != req_id:
            return True
        while True:
            seen = mk_load_acquire_u64(w)
            if seen == req_id | ANSWERED or seen == req_id | REFUSED:
                self.owner[i] = 0
                return seen == req_id | REFUSED
            if mk_cas_u64(w, seen, req_id | WITHDRAWN):
                self.owner[i] = req_id | UNSEEN
                return True

    cdef void _doorbell(self) noexcept:
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
        return self._send(op, req_id, payload)

    cdef int64_t _send(self, uint16_t op, uint64_t req_id, payload) except? -1000:
        cdef int64_t st = self._state()
        cdef int code
        if st != ST_OPEN:
            return st
        code = self._put(op, req_id, payload)
        if code == W_OK:
            self._doorbell()
        return code

    def send_many(self, list payloads, Py_ssize_t start):
        """Write one-way records for payloads[start:] until the ring is full; ring the
        doorbell once. Returns how many were written, or the ended Status (< 0)."""
        cdef int64_t st = self._state()
        cdef Py_ssize_t i = start, n = len(payloads)
        if st != ST_OPEN:
            return st
        while i < n and self._put(OP_SEND, 0, payloads[i]) == W_OK:
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
        if self.overflow is not None:
            self._flush()
        while taken < max_n:
            h = self.inbox.next_record()
            if h is None:
                break
            out.append(_message(self, h))
            self.inbox.consume_record(h)
            taken += 1
        return taken

    def take_reply(self, uint64_t req_id):
        """The payload of the reply to `req_id` if it is there, else None, or
        DROPPED when the server dropped the call without replying. Other
        records (replies to calls given up on after their server answered) are
        dropped: a late answer never reaches a later call."""
        return self._take_reply(req_id)

    cdef object _take_reply(self, uint64_t req_id):
        cdef Header h
        cdef object data
        cdef bint took = False
        while True:
            h = self.inbox.next_record()
            if h is None:
                if took:
                    self._room_bell()
                return None
            data = None
            if h.h.opcode == OP_REPLY:
                self._settle(h.h.req_id)
                if h.h.req_id == req_id:
                    data = _payload(self.inbox, h) if h.h.status == 0 else DROPPED
            self.inbox.consume_record(h)
            took = True
            if data is not None:
                self._room_bell()
                return data

    def take_record(self):
        """The next record of the inbox as a Completion, or None (the asyncio
        face's take, which calls until None); a reply ends its call's hold on its
        word. The None after records were taken rings the server if it keeps
        replies back (_room_bell): once per drain, not per record."""
        cdef Completion c = self.inbox.take_completion()
        if c is None:
            if self.took:
                self.took = False
                self._room_bell()
            return None
        if c.opcode == OP_REPLY:
            self._settle(c.req_id)
        self.took = True
        return c

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
        cdef int64_t code = self._send(OP_CALL, req_id, payload)
        if code != W_OK:
            return code
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
        if self._spin(deadline):
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

    cdef bint _spin(self, int64_t deadline):
        """Busy-poll the inbox for up to spin_ns (ring.pyx spin_for), adapting it as
        ring.pyx adapt_spin() says (grow on success, halve on a miss, the minimum
        on a crowded machine), but never past `deadline`: a 20 µs timeout must not
        wait out a 200 µs spin (a miss cut short teaches nothing about the peer).
        The GIL is released meanwhile if another thread may want it (spin_gil).
        While the machine is crowded, yield at once: the answer needs the server to
        run, and polling first only burns the core it needs (32 client processes on
        2 cores: 163-190k calls/s polling 1 µs first, 178-207k yielding at once)."""
        cdef Ring ring = self.inbox
        cdef int64_t budget = spin_until(self.spin_ns, deadline)
        cdef int64_t yield_after = 0 if self.crowded else self.yield_after_ns
        cdef bint found, crowded
        found = spin_gil(ring.tail_p, ring.head, budget, yield_after, self.crowded_ns,
                         &crowded)
        self.crowded = crowded
        if found or budget == self.spin_ns:
            self.spin_ns = adapt_spin(self.spin_ns, found, crowded, self.spin_min,
                                      self.spin_max)
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

    def __dealloc__(self):
        if self.req_id and self.port is not None:   # a call dropped unanswered
            try:
                self.port._drop(self.req_id)
            except Exception:
                pass   # released or ended: its caller learns that from the session

    @property
    def badge(self): return self.port.badge
    @property
    def sender(self): return self.port.sender
    @property
    def sender_id(self): return self.port.sender_id
    @property
    def from_kernel(self): return False
    @property
    def is_signal(self): return False

    def reply(self, data):
        """Answer the call over the session. A reply the caller's ring has no room
        for yet is kept and written as the caller drains it (SessionPort._deliver).
        Raises PeerClosedError if the caller gave up on the call first (a timeout or
        a cancel: nothing is written), if the session ended, or if the caller does
        not drain its ring (MAX_TRACKED_CALLS replies already wait for room)."""
        cdef uint64_t req_id = self.req_id
        if req_id == 0:
            raise _error_hook(self.port, NOT_A_CALL, "reply")
        try:
            code = self.port._send(OP_REPLY, req_id, data)
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
