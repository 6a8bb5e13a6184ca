# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""Single-producer single-consumer record rings over a shared memfd region.

The layout is documented in ring.pxd. The kernel treats every ring a process
can write as hostile: read() copies a header out of shared memory before it
checks it, and every length and index is bounded before use (DESIGN §3).
"""

from cpython.buffer cimport (
    PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EINVAL, errno
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "<sys/mman.h>" nogil:
    int madvise(void *addr, size_t length, int advice)

cdef extern from "Python.h":
    ctypedef struct PyInterpreterState:
        pass
    ctypedef struct PyThreadState:
        pass
    PyInterpreterState *PyInterpreterState_Get()
    PyThreadState *PyInterpreterState_ThreadHead(PyInterpreterState *)
    PyThreadState *PyThreadState_Next(PyThreadState *)

cdef enum:
    MADV_POPULATE_WRITE = 23   # Linux 5.14
    PAGE = 4096


class RingCorruptError(Exception):
    """The other side broke the ring protocol (bad index or malformed record)."""


cdef inline uint64_t _align8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000 + ts.tv_nsec


cdef bint spin_for(const uint64_t *tail_p, uint64_t head, int64_t budget_ns,
                   int64_t yield_after_ns, int64_t crowded_ns, bint *crowded) noexcept nogil:
    """Busy-poll `*tail_p` until it differs from `head` (True) or `budget_ns` passes
    (Ring.spin has the why of yielding and of `crowded`; the session port uses it too)."""
    cdef int64_t start = now_ns(), now, after
    cdef uint64_t i = 0
    now = start
    crowded[0] = False
    while True:
        if mk_load_acquire_u64(tail_p) != head:
            return True
        i += 1
        if (i & 31) == 0:
            now = now_ns()
            if now - start >= budget_ns:
                return False
        if now - start >= yield_after_ns:
            mk_yield()
            # A yield may hand the core to others for microseconds or more: read the
            # clock after each one, so that the budget bounds the yields too. Checked
            # every 32 polls only, 31 yields could pass a 5 µs budget: with 32 clients
            # calling through the kernel, each call cost ~10 context switches.
            after = now_ns()
            if crowded_ns > 0 and after - now >= crowded_ns:
                crowded[0] = True
                return mk_load_acquire_u64(tail_p) != head
            now = after
            if now - start >= budget_ns:
                return mk_load_acquire_u64(tail_p) != head
        else:
            mk_cpu_relax()


cdef bint sole_thread() noexcept:
    """Is this the interpreter's only thread? Called with the GIL, so no thread
    state is freed meanwhile; one that C code adds without it right after the check
    only waits for the GIL (spin_gil bounds that)."""
    return PyThreadState_Next(PyInterpreterState_ThreadHead(PyInterpreterState_Get())) == NULL


cdef bint spin_gil(const uint64_t *tail_p, uint64_t head, int64_t budget_ns,
                   int64_t yield_after_ns, int64_t crowded_ns, bint *crowded) noexcept:
    """spin_for() from a caller that holds the GIL: released only if another thread
    may want it. Releasing it and taking it back costs a mutex round trip each and a
    condition signal, per wait: ~6% of all CPU with 32 session clients on 2 cores,
    where each call waits once and every switch runs cache-cold. A thread started
    from C meanwhile waits for the GIL at most one spin budget."""
    if sole_thread():
        return spin_for(tail_p, head, budget_ns, yield_after_ns, crowded_ns, crowded)
    with nogil:
        return spin_for(tail_p, head, budget_ns, yield_after_ns, crowded_ns, crowded)


cdef class Header:
    """A copy of one record's header, taken out of shared memory."""

    def __init__(self):
        raise TypeError("Header objects are made by Ring.read()")

    @property
    def size(self): return self.h.size
    @property
    def opcode(self): return self.h.opcode
    @property
    def ncaps(self): return self.h.ncaps
    @property
    def req_id(self): return self.h.req_id
    @property
    def slot(self): return self.h.slot
    @property
    def payload_len(self): return self.h.payload_len
    @property
    def status(self): return self.h.status
    @property
    def flags(self): return self.h.flags
    @property
    def deadline(self): return self.h.deadline
    @property
    def arg(self): return self.h.arg
    @property
    def badge(self): return self.h.badge
    @property
    def pid(self): return self.h.pid
    @property
    def uid(self): return self.h.uid
    @property
    def gid(self): return self.h.gid

    def __repr__(self):
        return (f"Header(op={self.h.opcode}, req_id={self.h.req_id}, "
                f"slot={self.h.slot:#x}, status={self.h.status}, "
                f"payload_len={self.h.payload_len}, ncaps={self.h.ncaps})")


cdef class Completion:
    """One completion, copied out of a process's completion ring by Ring.take()."""

    def __init__(self, *args, **kwargs):
        raise TypeError("Completion objects are made by Ring.take()")

    def reason(self):
        """The kernel's reason text of a failed operation."""
        return self.payload.decode("utf-8", "replace")

    def __repr__(self):
        return (f"Completion(op={self.opcode}, req_id={self.req_id}, status={self.status}, "
                f"slot={self.slot:#x}, arg={self.arg:#x}, {len(self.payload)} bytes)")


cdef class Ring:
    """One direction of a process's ring pair.

    The same object type serves both ends: a producer calls the write methods,
    a consumer calls read()/consume(). Each end keeps its own index privately
    and only publishes it, so the peer can never make us skip or repeat a record.
    """

    def __cinit__(self):
        self.has_buf = False

    def __init__(self, region, Py_ssize_t data_off, uint64_t size,
                 Py_ssize_t tail_off, Py_ssize_t head_off, Py_ssize_t waiting_off):
        if size < 4096 or size & (size - 1):
            raise ValueError("ring size must be a power of two >= 4096")
        for off, width in ((tail_off, 8), (head_off, 8), (waiting_off, 4)):
            if off < 0 or off + width > CONTROL_SIZE or off % width:
                raise ValueError(f"index offset {off} must be aligned and inside the "
                                 f"{CONTROL_SIZE}-byte control page")
        PyObject_GetBuffer(region, &self.buf, PyBUF_WRITABLE)
        self.has_buf = True
        if <uint64_t>self.buf.len < <uint64_t>data_off + size or data_off < CONTROL_SIZE:
            self.close()
            raise ValueError("region too small for the ring")
        cdef char *base = <char *>self.buf.buf
        self.data = base + data_off
        self.size = size
        self.mask = size - 1
        self.tail_p = <uint64_t *>(base + tail_off)
        self.head_p = <uint64_t *>(base + head_off)
        self.waiting_p = <uint32_t *>(base + waiting_off)
        # Both ends start from what is published (a fresh region is all zeros);
        # _reserve() and read() refuse to work from an index that is not 8-aligned.
        self.tail = mk_load_acquire_u64(self.tail_p)
        self.head = mk_load_acquire_u64(self.head_p)

    def __dealloc__(self):
        if self.has_buf:
            PyBuffer_Release(&self.buf)

    def close(self):
        """Release the region (the mapping can be closed afterwards).

        Every later use raises ValueError instead of touching freed memory.
        """
        self.data = NULL
        self.tail_p = self.head_p = NULL
        self.waiting_p = NULL
        if self.has_buf:
            PyBuffer_Release(&self.buf)
            self.has_buf = False

    cdef int _check_open(self) except -1:
        if self.data == NULL:
            raise ValueError("the ring is closed")
        return 0

    cdef int _check_current(self, Header h) except -1:
        """`h` must be the unconsumed record read() returned last, from this ring."""
        self._check_open()
        if h.ring is not self or h.at != self.head:
            raise ValueError("the header is not the record read() returned last from this ring")
        return 0

    @property
    def capacity(self): return self.size

    @property
    def max_record(self):
        """Largest record that always fits once the consumer catches up."""
        return self.size // 2

    # ---------------------------------------------------------------- producer

    cdef char *_reserve(self, uint64_t need) except? NULL:
        # SYNC POINT: acquire the consumer's head so that the space it freed
        # is really free before we overwrite it.
        cdef uint64_t head = mk_load_acquire_u64(self.head_p)
        cdef uint64_t used = self.tail - head
        if used > self.size or self.tail & 7:
            raise RingCorruptError("consumer index out of range")
        cdef uint64_t pos = self.tail & self.mask
        cdef uint64_t to_end = self.size - pos
        if to_end < need:
            if self.size - used < to_end + need:
                return NULL
            (<uint32_t *>(self.data + pos))[0] = <uint32_t>to_end
            (<uint16_t *>(self.data + pos + 4))[0] = OP_PAD
            self.tail += to_end
            pos = 0
        elif self.size - used < need:
            return NULL
        return self.data + pos

    cdef int _write(self, mk_hdr *h, const uint64_t *caps,
                    const char *payload, Py_ssize_t n) except -1:
        self._check_open()
        cdef uint64_t need = _align8(HDR_SIZE + 8 * <uint64_t>h.ncaps + <uint64_t>n)
        if need > self.size // 2:
            raise ValueError(f"record of {need} bytes exceeds the ring's "
                             f"limit of {self.size // 2}")
        cdef char *dst = self._reserve(need)
        if dst == NULL:
            return 0
        h.size = <uint32_t>need
        h.payload_len = <uint32_t>n
        memcpy(dst, h, HDR_SIZE)
        if h.ncaps:
            memcpy(dst + HDR_SIZE, caps, 8 * h.ncaps)
        if n:
            memcpy(dst + HDR_SIZE + 8 * h.ncaps, payload, n)
        self.tail += need
        # SYNC POINT: release the record; the consumer's acquire of tail sees it.
        mk_store_release_u64(self.tail_p, self.tail)
        return 1

    def submit(self, uint16_t opcode, uint64_t req_id, uint64_t slot,
               int64_t deadline, uint64_t arg, const unsigned char[::1] payload,
               tuple caps=()):
        """Write a submission record. Returns False when the ring is full."""
        return self.push(opcode, req_id, slot, deadline, arg, payload, caps) != 0

    def complete(self, uint16_t opcode, uint64_t req_id, int32_t status,
                 uint64_t slot=0, uint64_t arg=0, const unsigned char[::1] payload=None,
                 tuple caps=(), uint64_t badge=0, uint32_t pid=0, uint32_t uid=0,
                 uint32_t gid=0, uint32_t flags=0, uint64_t sender_id=0):
        """Write a completion record. Returns False when the ring is full.

        A received message's completion carries its sender's connection id in the
        `deadline` field, which completions do not otherwise use."""
        cdef mk_hdr h
        memset(&h, 0, HDR_SIZE)
        h.opcode = opcode
        h.req_id = req_id
        h.status = status
        h.slot = slot
        h.arg = arg
        h.badge = badge
        h.pid = pid
        h.uid = uid
        h.gid = gid
        h.flags = flags
        h.deadline = <int64_t>sender_id
        return self._write_with_caps(&h, caps, payload)

    cdef object _write_with_caps(self, mk_hdr *h, tuple caps,
                                 const unsigned char[::1] payload):
        cdef uint64_t cbuf[MAX_CAPS_PER_RECORD]
        cdef Py_ssize_t i, n = len(caps)
        if n > MAX_CAPS_PER_RECORD:
            raise ValueError(f"at most {MAX_CAPS_PER_RECORD} capabilities per message")
        for i in range(n):
            cbuf[i] = caps[i]
        h.ncaps = <uint16_t>n
        if payload is None or payload.shape[0] == 0:
            return self._write(h, cbuf, NULL, 0) == 1
        return self._write(h, cbuf, <const char *>&payload[0], payload.shape[0]) == 1

    def forward(self, Ring src, Header sh, uint16_t opcode, uint64_t req_id,
                int32_t status, uint64_t slot, uint64_t arg, uint64_t badge,
                uint32_t pid, uint32_t uid, uint32_t gid):
        """Copy the payload of `sh` (a record in `src`) into a new completion.

        This is the one payload copy of the routing fast path (DESIGN §8).
        Capabilities are not forwarded: the kernel translates them.
        Returns False when this ring is full.
        """
        cdef mk_hdr h
        memset(&h, 0, HDR_SIZE)
        h.opcode = opcode
        h.req_id = req_id
        h.status = status
        h.slot = slot
        h.arg = arg
        h.badge = badge
        h.pid = pid
        h.uid = uid
        h.gid = gid
        h.ncaps = 0
        src._check_current(sh)
        cdef const char *p = src.data + sh.pos + HDR_SIZE + 8 * sh.h.ncaps
        return self._write(&h, NULL, p, sh.h.payload_len) == 1

    def peer_waiting(self):
        """After publishing: does the consumer sleep and need its eventfd written?"""
        # SYNC POINT: the fence orders our tail store before the waiting load;
        # the consumer fences between its waiting store and its tail load.
        self._check_open()
        mk_fence()
        return mk_load_u32(self.waiting_p) != 0

    # ---------------------------------------------------------------- consumer

    def readable(self):
        """True when at least one record (or pad) is published."""
        self._check_open()
        return mk_load_acquire_u64(self.tail_p) != self.head

    def read(self):
        """The next record's header, validated, or None when the ring is empty.

        Raises RingCorruptError when the producer broke the format.
        """
        return self.next_record()

    cdef Header next_record(self):
        cdef uint64_t tail, avail, pos, to_end, expect
        cdef uint32_t first[2]
        cdef Header out
        cdef bint padded = False
        self._check_open()
        while True:
            # SYNC POINT: acquire the producer's tail; records before it are complete.
            tail = mk_load_acquire_u64(self.tail_p)
            if tail == self.head:
                return None
            avail = tail - self.head
            if avail > self.size or (avail | self.head) & 7:
                raise RingCorruptError("producer index out of range")
            pos = self.head & self.mask
            to_end = self.size - pos
            memcpy(first, self.data + pos, 8)
            if (first[1] & 0xffff) == OP_PAD:
                # A PAD always runs to the end and is followed by a real record at 0.
                if first[0] != to_end or avail < to_end or padded:
                    raise RingCorruptError("malformed pad record")
                padded = True
                self.head += to_end
                mk_store_release_u64(self.head_p, self.head)
                continue
            if to_end < HDR_SIZE or avail < HDR_SIZE:
                raise RingCorruptError("truncated record header")
            out = Header.__new__(Header)
            memcpy(&out.h, self.data + pos, HDR_SIZE)    # copy first, then check the copy
            expect = _align8(HDR_SIZE + 8 * <uint64_t>out.h.ncaps + out.h.payload_len)
            if out.h.ncaps > MAX_CAPS_PER_RECORD:
                raise RingCorruptError(f"record carries {out.h.ncaps} capabilities")
            if out.h.size != expect or expect > avail or expect > to_end:
                raise RingCorruptError(
                    f"record size {out.h.size} does not match its contents or the ring")
            out.pos = pos
            out.at = self.head
            out.ring = self
            return out

    def payload(self, Header h):
        """The payload of `h` (the record read() returned last) as bytes."""
        self._check_current(h)
        return PyBytes_FromStringAndSize(
            self.data + h.pos + HDR_SIZE + 8 * h.h.ncaps, h.h.payload_len)

    def caps(self, Header h):
        """The capability slots carried by `h`, as a tuple of ints."""
        self._check_current(h)
        cdef const uint64_t *c = <const uint64_t *>(self.data + h.pos + HDR_SIZE)
        return tuple([c[i] for i in range(h.h.ncaps)])

    def consume(self, Header h):
        """Free the record `h`, which must be the one read() returned last."""
        self.consume_record(h)

    cdef int consume_record(self, Header h) except -1:
        self._check_current(h)
        self.head += h.h.size
        # SYNC POINT: release the space; the producer's acquire of head sees it free.
        mk_store_release_u64(self.head_p, self.head)
        return 0

    def take(self):
        """Client side: the next completion, copied out and consumed, or None."""
        return self.take_completion()

    cdef Completion take_completion(self):
        cdef Header h = self.next_record()
        if h is None:
            return None
        cdef Completion c = Completion.__new__(Completion)
        c.opcode = h.h.opcode
        c.req_id = h.h.req_id
        c.status = h.h.status
        c.slot = h.h.slot
        c.arg = h.h.arg
        c.badge = h.h.badge
        c.pid = h.h.pid
        c.uid = h.h.uid
        c.gid = h.h.gid
        c.flags = h.h.flags
        c.sender_id = <uint64_t>h.h.deadline
        c.payload = PyBytes_FromStringAndSize(
            self.data + h.pos + HDR_SIZE + 8 * h.h.ncaps, h.h.payload_len)
        c.caps = self.caps(h) if h.h.ncaps else ()
        self.consume_record(h)
        return c

    def push(self, uint16_t opcode, uint64_t req_id, uint64_t slot, int64_t deadline,
             uint64_t arg, const unsigned char[::1] payload, tuple caps=()):
        """submit() and peer_waiting() in one call: 0 ring full, 1 written, 2 written
        and the consumer sleeps (write its eventfd)."""
        return self.push_record(opcode, req_id, slot, deadline, arg, payload, caps)

    cdef int push_record(self, uint16_t opcode, uint64_t req_id, uint64_t slot,
                         int64_t deadline, uint64_t arg, const unsigned char[::1] payload,
                         tuple caps) except -1:
        cdef mk_hdr h
        memset(&h, 0, HDR_SIZE)
        h.opcode = opcode
        h.req_id = req_id
        h.slot = slot
        h.deadline = deadline
        h.arg = arg
        if not self._write_with_caps(&h, caps, payload):
            return 0
        mk_fence()   # SYNC POINT: as in peer_waiting()
        return 2 if mk_load_u32(self.waiting_p) else 1

    def prepare_sleep(self):
        """Announce that the consumer is about to block on its eventfd.

        Returns True when it may block; False when a record arrived meanwhile
        (the flag is cleared again and the caller should read instead).
        """
        self._check_open()
        mk_store_u32(self.waiting_p, 1)
        mk_fence()   # SYNC POINT: pairs with the fence in peer_waiting()
        if mk_load_acquire_u64(self.tail_p) != self.head:
            mk_store_u32(self.waiting_p, 0)
            return False
        return True

    def end_sleep(self):
        self._check_open()
        mk_store_u32(self.waiting_p, 0)

    def spin(self, int64_t budget_ns, int64_t yield_after_ns=0, int64_t crowded_ns=0):
        """Busy-poll for a record for up to `budget_ns`; True when one is there.

        After `yield_after_ns` (default: at once) the loop calls sched_yield()
        between polls. With 2 cores and 3 busy processes (client, kernel, server)
        the peer with work is often waiting for our core: yielding at once
        measured 4.8 µs per round trip, spinning 2 µs first 11 µs, 20 µs first
        36 µs. With no peer on our core sched_yield() returns at once.

        With `crowded_ns` > 0, a sched_yield() that takes longer than that ends the
        spin and sets `self.crowded`: other processes queue for our core, and each
        further yield is a context switch that takes CPU from whoever must answer
        us (32 clients on 2 cores made 28 such switches per call). The caller
        should sleep instead. The GIL is released if other threads may run (spin_gil).
        """
        cdef bint found, crowded
        self._check_open()
        found = spin_gil(self.tail_p, self.head, budget_ns, yield_after_ns, crowded_ns,
                         &crowded)
        self.crowded = crowded
        return found


cdef int64_t adapt_spin(int64_t spin_ns, bint found, bint crowded,
                        int64_t lo, int64_t hi) noexcept nogil:
    """The adaptive spin budget after a spin: it grows (to `hi`) while answers come
    within it and shrinks (to `lo`) when not. A crowded machine (a sched_yield that
    let others run for the crowded bound) drops it to `lo` even if the answer came
    meanwhile: it came because we stepped aside, and spinning on would steal the CPU
    of whoever must answer the next call. The one rule for every waiter that spins."""
    if crowded:
        return lo
    return min(hi, spin_ns * 2) if found else max(lo, spin_ns // 2)


cdef int64_t spin_until(int64_t budget, int64_t deadline) noexcept nogil:
    """A spin budget cut to end by `deadline` (-1: none): a short timeout must
    not wait out the whole spin (a 20 µs one waited out 200 µs)."""
    if deadline < 0:
        return budget
    return max(0, min(budget, deadline - now_ns()))


def next_spin(int64_t spin_ns, bint found, bint crowded, int64_t lo, int64_t hi):
    """adapt_spin() for Python callers (the asyncio session face)."""
    return adapt_spin(spin_ns, found, crowded, lo, hi)


def ring_pair(region, uint64_t sq_size, uint64_t cq_size):
    """A process's (submission, completion) rings over its region, laid out as ring.pxd says."""
    return (Ring(region, CONTROL_SIZE, sq_size, OFF_SQ_TAIL, OFF_SQ_HEAD, OFF_SQ_WAITING),
            Ring(region, CONTROL_SIZE + sq_size, cq_size,
                 OFF_CQ_TAIL, OFF_CQ_HEAD, OFF_CQ_WAITING))


def prefault(region, bint by_reading=False):
    """Back every page of a freshly mapped shared `region` now, so that no ring
    record ever waits on a page fault. Unfaulted, a ring's first pass took a fault
    every ~35 calls (the writer's allocates and clears a page: 2-3 µs here), which
    put a session call's p99 at 12-14 µs against 1.6 µs. Populating the 2 MiB of
    a session costs ~1.5 ms once, without the GIL (mmap.mmap's MAP_POPULATE holds
    it). Best effort: a page not populated now faults later, as before.
    `by_reading` skips MADV_POPULATE_WRITE for the fallback it needs before Linux
    5.14 (a read per page), so that tests reach that path on any kernel."""
    cdef Py_buffer view
    cdef char *base
    cdef size_t n, off
    cdef volatile char _touched
    cdef int rc
    PyObject_GetBuffer(region, &view, PyBUF_WRITABLE)
    try:
        base, n = <char *>view.buf, <size_t>view.len
        with nogil:
            rc = -1 if by_reading else madvise(base, n, MADV_POPULATE_WRITE)
            if rc != 0 and (by_reading or errno == EINVAL):   # before Linux 5.14: read each page
                off = 0
                while off < n:
                    _touched = base[off]
                    off += PAGE
    finally:
        PyBuffer_Release(&view)


cdef class SessionStates:
    """The kernel-written state word of each direct session of one process.

    They sit in the control page of the process's own region (ring.pxd), which no
    other process maps: a session's peer cannot forge the kernel's word that the
    session ended (revoked, closed, or the peer died)."""

    def __cinit__(self):
        self.has_buf = False

    def __init__(self, region):
        PyObject_GetBuffer(region, &self.buf, PyBUF_WRITABLE)
        self.has_buf = True
        if self.buf.len < OFF_SESSIONS + 8 * MAX_SESSIONS:
            self.close()
            raise ValueError("region too small for the session table")
        self.words = <int64_t *>(<char *>self.buf.buf + OFF_SESSIONS)

    def __dealloc__(self):
        if self.has_buf:
            PyBuffer_Release(&self.buf)

    def close(self):
        self.words = NULL
        if self.has_buf:
            PyBuffer_Release(&self.buf)
            self.has_buf = False

    cdef int64_t *_word(self, Py_ssize_t index) except NULL:
        if self.words == NULL:
            raise ValueError("the session table is closed")
        if not 0 <= index < MAX_SESSIONS:
            raise IndexError(f"session index {index} is out of range")
        return self.words + index

    def get(self, Py_ssize_t index):
        # SYNC POINT: acquire; pairs with the kernel's release in set().
        return <int64_t>mk_load_acquire_u64(<uint64_t *>self._word(index))

    def set(self, Py_ssize_t index, int64_t value):
        # SYNC POINT: release, then the kernel writes the session's eventfds.
        mk_store_release_u64(<uint64_t *>self._word(index), <uint64_t>value)
