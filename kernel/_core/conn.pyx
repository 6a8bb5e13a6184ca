# cython: language_level=3, embedsignature=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""The compiled half of a process's kernel connection (kernel/client/_conn.py
Connection): submitting an operation and the blocking wait for its completion;
and the fields of a received message (MessageCore).

Every call through the kernel crosses three processes (caller, kernel, server);
on 2 cores each of them is switched in cache-cold on most calls, and the
Python frames of the old submit/wait/poll/take/block chain cost the caller and
the server microseconds per call. Here it is one C call each way. Python keeps
what is rare: sleeping on the eventfd, another thread's completion, an
abandoned operation's result, a full ring, a lost kernel.
"""

from libc.stdint cimport int64_t, uint16_t, uint64_t
from posix.unistd cimport write

from kernel._core.ring cimport Completion, Ring, adapt_spin, spin_gil

from kernel.abi import MSG_IS_CALL as _MSG_IS_CALL
from kernel.abi import Op

cdef uint64_t MSG_IS_CALL = _MSG_IS_CALL
cdef int CAP_CLOSE = Op.CAP_CLOSE


cdef class ConnectionCore:
    """Base of kernel/client/_conn.Connection; that class sets every field up.

    Thread safety is the Python version's: submissions take `_submit_lock`; one
    thread at a time polls the completion ring (`_poll_lock`) and files the
    completions of others in `results`, waking their Event in `_sleeping`.
    """

    cdef public Ring sq, cq
    cdef public dict results       # req_id -> Completion filed for another thread
    cdef public dict abandoned     # withdrawn req_id -> its capability slot
    cdef public dict _sleeping     # req_id -> the Event its waiting thread sleeps on
    cdef public list _deferred     # (op, arg, slot) a finalizer could not submit at once
    cdef public object lost        # None while connected, else why not
    cdef public object _submit_lock, _poll_lock, _ids
    cdef public int sq_efd
    cdef public int64_t _spin_ns, spin_min_ns, spin_max_ns, crowded_ns

    def submit(self, uint16_t op, uint64_t slot=0, int64_t deadline=-1, uint64_t arg=0,
               payload=b"", tuple caps=()):
        """Queue an operation for the kernel; returns its req_id for wait()."""
        return self._submit(op, slot, deadline, arg, payload, caps)

    cdef uint64_t _submit(self, uint16_t op, uint64_t slot, int64_t deadline, uint64_t arg,
                          payload, tuple caps) except? 0:
        cdef uint64_t req_id = next(self._ids)
        cdef uint64_t one = 1
        cdef int pushed
        cdef bint ring = False
        with self._submit_lock:   # close() takes it too: the ring and eventfd stay open
            if self.lost is not None:
                self.check_open()
            if self._deferred:
                ring = self._submit_deferred()
            pushed = self.sq.push_record(op, req_id, slot, deadline, arg, payload, caps)
            while not pushed:
                self._wait_for_space()
                pushed = self.sq.push_record(op, req_id, slot, deadline, arg, payload, caps)
            if ring or pushed == 2:   # the kernel sleeps: ring its doorbell (we hold the lock)
                write(self.sq_efd, &one, 8)
        return req_id

    def submit_unwaited(self, uint16_t op, uint64_t arg=0, *, uint64_t slot=0,
                        bint block=False):
        """Submit `op` (on capability `slot`) and drop its completion unread, for
        finalizers: they must not wait, nor take a lock their thread may hold. If
        the submit lock is busy (another thread submits, or this one was inside a
        submit when the finalizer ran), or the ring is full, the operation waits
        in `_deferred` for the next submit, which sends it first. With `block` it
        waits for the lock instead, and returns False rather than defer if the
        ring is full (the caller holds none of our locks: it can wait for the
        answer instead). False too if the connection is gone."""
        cdef uint64_t one = 1
        cdef int pushed
        cdef bint ring = False
        if self.lost is not None:
            return False
        if not self._submit_lock.acquire(block):
            self._deferred.append((op, arg, slot))   # atomic under the GIL
            return True
        try:
            if self.lost is not None:
                return False
            if self._deferred:
                ring = self._submit_deferred()
            pushed = self._push_unwaited(op, arg, slot)
            if ring or pushed == 2:   # the kernel sleeps: ring its doorbell
                write(self.sq_efd, &one, 8)
            if pushed:
                return True
            if block:   # the ring is full
                return False
            self._deferred.append((op, arg, slot))
            return True
        finally:
            self._submit_lock.release()

    cdef bint _submit_deferred(self) except -1:
        """With the submit lock held: push what finalizers left in `_deferred`, as
        far as the ring has room (the rest waits for the next submit). True if the
        kernel sleeps and must be rung."""
        cdef list todo = self._deferred
        cdef int pushed
        cdef bint ring = False
        cdef Py_ssize_t done = 0
        for op, arg, slot in todo:
            pushed = self._push_unwaited(op, arg, slot)
            if not pushed:
                break
            ring = ring or pushed == 2
            done += 1
        del todo[:done]   # a finalizer may have appended meanwhile: keep what is new
        return ring

    cdef int _push_unwaited(self, uint16_t op, uint64_t arg, uint64_t slot) except -1:
        """With the submit lock held: push one operation whose completion is dropped
        unread; push_record's code (0: no room, nothing pushed)."""
        cdef uint64_t req_id = next(self._ids)
        cdef int pushed
        self.abandoned[req_id] = 0
        pushed = self.sq.push_record(op, req_id, slot, -1, arg, b"", ())
        if not pushed:
            del self.abandoned[req_id]
        return pushed

    def roundtrip(self, uint16_t op, cap, str verb, int64_t deadline=-1, uint64_t arg=0,
                  payload=b"", tuple caps=()):
        """submit() and wait() for `op` on `cap` (None: no capability slot). Raises
        the error a failed completion names (`_failure(c, cap, verb)`); an interrupted
        wait (e.g. KeyboardInterrupt) withdraws the operation before re-raising."""
        cdef uint64_t slot = cap.slot if cap is not None else 0
        cdef uint64_t req_id = self._submit(op, slot, deadline, arg, payload, caps)
        cdef Completion c
        try:
            c = self._wait(req_id)
        except BaseException:
            self.cancel(req_id, slot)
            raise
        if c.status:
            raise self._failure(c, cap, verb)
        return c

    def take(self):
        """The next completion that somebody waits for (orphans go to the stashes)."""
        return self._take()

    cdef Completion _take(self):
        cdef Completion c
        while True:
            c = self.cq.take_completion()
            if c is None or not self.abandoned or c.req_id not in self.abandoned:
                return c
            slot = self.abandoned.pop(c.req_id)
            if c.opcode != CAP_CLOSE:   # a dropped capability's close: nothing to file
                self._orphan(c, slot)

    def wait(self, uint64_t req_id):
        """Block until `req_id` completes. Thread-safe: one thread polls the ring and
        files other threads' completions in `results`; they sleep on an Event."""
        return self._wait(req_id)

    cdef Completion _wait(self, uint64_t req_id):
        cdef Completion c
        while True:
            c = self.results.pop(req_id, None)
            if c is not None:
                return c
            if self.lost is not None:
                self.check_open()
            if self._poll_lock.acquire(False):
                try:
                    return self._poll_for(req_id)
                finally:
                    self._poll_lock.release()
                    if self._sleeping:
                        self._wake_one()   # somebody must poll for the sleepers
            self._sleep_for_result(req_id)

    cdef Completion _poll_for(self, uint64_t req_id):
        cdef Completion c
        while True:
            c = self._take()
            if c is None:
                if req_id in self.results:   # filed by the previous poller
                    return self.results.pop(req_id)
                if self.lost is not None:
                    self.check_open()   # closed meanwhile: leave the ring to close()
                self._block()
            elif c.req_id == req_id:
                return c
            else:
                self.results[c.req_id] = c
                ev = self._sleeping.get(c.req_id)
                if ev is not None:
                    ev.set()   # wake exactly the thread this completion belongs to

    cdef int _block(self) except -1:
        """Spin (adaptively, bounded: ring.pyx adapt_spin; spin_gil), then
        sleep on the completion eventfd (the Python side's _sleep)."""
        cdef Ring cq = self.cq
        cdef int64_t budget = self._spin_ns
        cdef bint found, crowded
        cq._check_open()
        found = spin_gil(cq.tail_p, cq.head, budget, 0, self.crowded_ns, &crowded)
        cq.crowded = crowded
        self._spin_ns = adapt_spin(budget, found, crowded, self.spin_min_ns, self.spin_max_ns)
        if found or not cq.prepare_sleep():
            return 0
        try:
            self._sleep()
        finally:
            cq.end_sleep()
        return 0


cdef class MessageCore:
    """Base of kernel/client/_common.MessageBase: a received message's fields, set
    in C (every message through the kernel builds one, on the caller's side and on
    the server's). `data` is bytes; `badge` and the credentials come from the
    kernel; `_reply_slot` is the one-shot reply capability of a call (0: none)."""

    cdef public bytes data
    cdef public uint64_t badge
    cdef public Completion _c
    cdef public uint64_t _reply_slot
    cdef public object _k
    cdef public object _caps   # list, built on first use

    def __init__(self, Completion c not None, k):
        self.data = c.payload
        self.badge = c.badge
        self._c = c
        self._reply_slot = c.slot if c.arg & MSG_IS_CALL else 0
        self._k = k
        self._caps = None

    def __dealloc__(self):
        cdef tuple carried
        if self._k is None:
            return
        if self._reply_slot:   # a call dropped unanswered
            _close_dropped(self._k, self._reply_slot)
        if self._caps is None and self._c is not None:   # carried, never looked at
            carried = self._c.caps
            for slot in carried:
                _close_dropped(self._k, slot)

    @property
    def caps(self):
        """The capabilities the message carried (typed by the kernel's word on their
        kind), wrapped on first use."""
        cdef Completion c = self._c
        cdef tuple slots = c.caps
        cdef Py_ssize_t i
        if self._caps is None:
            wrap = self._k._wrap
            self._caps = [wrap((c.flags >> (4 * i)) & 0xF, slots[i]) for i in range(len(slots))]
        return self._caps


cdef class CapCore:
    """Base of kernel/client/_common.CapBase: a capability object's fields, and its
    finalizer in C (a Python __del__ cost every dropped object a call). One that
    owns its slot and is collected unclosed closes it."""

    cdef public object _k
    cdef public object slot
    cdef public bint _owned
    cdef object __weakref__

    def __dealloc__(self):
        if self._owned and self._k is not None:
            _close_dropped(self._k, self.slot)


cdef void _close_dropped(k, uint64_t slot) noexcept:
    """A capability this process can no longer reach: a call's reply capability
    in a message freed unanswered (its caller gets PeerClosedError at once, as
    when a server closes it, instead of waiting out its timeout, or forever), the
    capabilities a message carried if nobody looked at them, or a capability
    object dropped unclosed. Close it, so that its slot does not stay taken in
    this process's table. From a finalizer: it never waits, nor takes a lock its
    thread may hold (submit_unwaited; if the submit lock is busy, the next submit
    sends it)."""
    try:
        conn = k._conn
        if conn is not None:
            conn.submit_unwaited(CAP_CLOSE, slot=slot)
    except BaseException:
        pass   # closed or lost: the kernel ends every call with the connection
