# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# cython: boundscheck=False, wraparound=False, auto_pickle=False
"""The kernel's per-message path, compiled: objects, pending ops, the hot handlers.

Every handler validates first (lookup: slot, kind, rights; sizes) and acts after,
as seL4 splits decode*Invocation from invoke* (STYLE §1). Opcodes the hot path
does not know go to Python handlers registered in `Core.cold`.
"""

import logging
import os
from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, int64_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from capabilities._table cimport Capability
from kernel._core.ring cimport (
    HDR_SIZE, Header, Ring, mk_hdr, mk_load_acquire_u64, mk_yield,
)
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport write

from capabilities import DEFAULT_REPLY_RIGHTS, Rights
from capabilities._table import SlotError, derive, unlink
from kernel._core.ring import RingCorruptError

from .. import abi
from ..errors import Status

log = logging.getLogger("mkipc.kernel")

# Mirrors of kernel/abi.py and kernel/errors.py; checked at import below.
cdef enum:
    OP_SEND = 10
    OP_CALL = 11
    OP_RECV = 12
    OP_REPLY = 13
    OP_REPLY_RECV = 14
    OP_SIGNAL = 20
    OP_WAIT = 21
    OP_POLL = 22
    OP_CLOSE = 32
    OP_CANCEL = 42
    OP_SEM_POST = 61
    OP_SEM_WAIT = 62
    KIND_ENDPOINT = 1
    KIND_NOTIFICATION = 2
    KIND_REPLY = 3
    KIND_MEMORY = 4
    KIND_SEMAPHORE = 5
    KIND_QUEUE = 6
    KIND_PIPE_READER = 7
    KIND_PIPE_WRITER = 8
    MSG_IS_CALL = 1
    MSG_FROM_KERNEL = 2
    MSG_SIGNAL = 8
    WAITING = 0
    AWAIT_REPLY = 1
    DONE = 2
    BATCH = 64            # records taken from one ring before the next process's turn
    MAX_PENDING = 4096    # operations one process may have waiting in the kernel
    MAX_OVERFLOW = 16384  # completions held for a process whose CQ is full
    MAX_OVERFLOW_BYTES = 64 << 20   # and their payloads: 64 times its ring
    MAX_HELD_BYTES = 64 << 20       # payloads of one process's sends waiting for receivers

cdef enum:
    ST_OK = 0
    ST_INVALID_ARGS = -10
    ST_BAD_SLOT = -11
    ST_WRONG_TYPE = -12
    ST_TOO_LARGE = -13
    ST_NOT_SUPPORTED = -14
    ST_TIMED_OUT = -20
    ST_PEER_CLOSED = -22
    ST_CALLER_GONE = -23
    ST_ACCESS_DENIED = -30
    ST_NO_RESOURCES = -40

cdef uint64_t R_GRANT = Rights.GRANT
cdef uint64_t R_COPY = Rights.COPY
cdef uint64_t R_TRANSFER = Rights.TRANSFER
cdef uint64_t TRANSFER_COPY = abi.TRANSFER_COPY
cdef uint64_t TRANSFER_MINT = abi.TRANSFER_MINT
cdef uint64_t TRANSFER_SLOT_MASK = abi.TRANSFER_SLOT_MASK
cdef int TRANSFER_RIGHTS_SHIFT = abi.TRANSFER_RIGHTS_SHIFT
cdef uint64_t R_ALL = Rights.ALL
cdef uint64_t TRANSFER_SAME_RIGHTS = abi.TRANSFER_SAME_RIGHTS
cdef int MAX_TRANSFER = abi.MAX_TRANSFER
cdef uint64_t R_SEND = Rights.SEND
cdef uint64_t R_RECEIVE = Rights.RECEIVE
cdef uint64_t R_SIGNAL = Rights.SIGNAL
cdef uint64_t R_WAIT = Rights.WAIT
cdef uint64_t R_REPLY_DEFAULT = DEFAULT_REPLY_RIGHTS
cdef uint64_t MAX_PAYLOAD = abi.MAX_PAYLOAD
cdef uint64_t REPLY_KEPT = abi.REPLY_KEPT

assert (OP_SEND, OP_CALL, OP_RECV, OP_REPLY, OP_REPLY_RECV) == (
    abi.Op.ENDPOINT_SEND, abi.Op.ENDPOINT_CALL, abi.Op.ENDPOINT_RECV, abi.Op.ENDPOINT_REPLY,
    abi.Op.ENDPOINT_REPLY_RECV)
assert (OP_SIGNAL, OP_WAIT, OP_POLL) == (
    abi.Op.NOTIFICATION_SIGNAL, abi.Op.NOTIFICATION_WAIT, abi.Op.NOTIFICATION_POLL)
assert (KIND_ENDPOINT, KIND_NOTIFICATION, KIND_REPLY, KIND_MEMORY, KIND_SEMAPHORE,
        KIND_QUEUE, KIND_PIPE_READER, KIND_PIPE_WRITER) == tuple(abi.ObjectKind)
assert MAX_HELD_BYTES == abi.MAX_HELD_BYTES
assert (MSG_IS_CALL, MSG_FROM_KERNEL) == (abi.MSG_IS_CALL, abi.MSG_FROM_KERNEL)
assert MSG_SIGNAL == abi.MSG_SIGNAL
assert (OP_CANCEL, OP_CLOSE) == (abi.Op.CANCEL, abi.Op.CAP_CLOSE)
assert (OP_SEM_POST, OP_SEM_WAIT) == (abi.Op.SEMAPHORE_POST, abi.Op.SEMAPHORE_WAIT)
cdef uint64_t MAX_SEMAPHORE_VALUE = abi.MAX_SEMAPHORE_VALUE
assert all(getattr(Status, n[3:]) == v for n, v in (
    ("ST_OK", ST_OK), ("ST_INVALID_ARGS", ST_INVALID_ARGS), ("ST_BAD_SLOT", ST_BAD_SLOT),
    ("ST_WRONG_TYPE", ST_WRONG_TYPE), ("ST_TOO_LARGE", ST_TOO_LARGE),
    ("ST_NOT_SUPPORTED", ST_NOT_SUPPORTED), ("ST_TIMED_OUT", ST_TIMED_OUT),
    ("ST_PEER_CLOSED", ST_PEER_CLOSED), ("ST_CALLER_GONE", ST_CALLER_GONE),
    ("ST_ACCESS_DENIED", ST_ACCESS_DENIED), ("ST_NO_RESOURCES", ST_NO_RESOURCES)))

KIND_NAMES = {KIND_ENDPOINT: "endpoint", KIND_NOTIFICATION: "notification",
              KIND_REPLY: "reply capability", KIND_MEMORY: "memory object",
              KIND_SEMAPHORE: "semaphore", KIND_QUEUE: "queue",
              KIND_PIPE_READER: "pipe read end", KIND_PIPE_WRITER: "pipe write end"}

cdef long _live = 0
cdef uint64_t _next_oid = 1
cdef int64_t TIMER_CHECK_NS = 50_000   # deadlines are checked this often while polling


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000000000 + ts.tv_nsec


def live_objects():
    """Objects created and not yet destroyed, for the leak check at kernel exit."""
    return _live


class OpError(Exception):
    """A request failed validation or could not be carried out; the caller gets `status`."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ------------------------------------------------------------------ objects


cdef class KernelObject:
    """Reference-counted by the capabilities that name it (DESIGN §5)."""

    def __cinit__(self):
        global _live, _next_oid
        _live += 1
        self.oid = _next_oid
        _next_oid += 1

    cpdef destroy(self):
        """The last capability is gone; fail whatever waits on the object."""


cdef void _fail_queue(object queue, bytes why, int status=ST_PEER_CLOSED):
    cdef Pending op
    while (op := _pop(queue)) is not None:
        op.finish()
        op.proc.complete(op.op, op.req_id, status, payload=why)


cdef class Endpoint(KernelObject):
    """Synchronous rendezvous with zero capacity."""

    def __init__(self):
        self.kind = KIND_ENDPOINT
        self.senders = deque()
        self.receivers = deque()

    cpdef destroy(self):
        why = b"the endpoint was destroyed: its last capability was closed"
        if self.bound is not None:   # binding holds no reference: it ends with either
            (<Notification>self.bound).bound_to = None
            self.bound = None
        _fail_queue(self.senders, why)
        _fail_queue(self.receivers, why)


cdef class Notification(KernelObject):
    """A 64-bit word that signals OR into; wait returns and clears it."""

    def __init__(self):
        self.kind = KIND_NOTIFICATION
        self.word = 0
        self.waiters = deque()

    cpdef destroy(self):
        if self.bound_to is not None:
            (<Endpoint>self.bound_to).bound = None
            self.bound_to = None
        _fail_queue(self.waiters,
                    b"the notification was destroyed: its last capability was closed")


cdef class Semaphore(KernelObject):
    """A counting semaphore (DESIGN §4), to coordinate processes that share memory.
    Its post and wait are here, beside the endpoint's, because each is a kernel
    round trip of a producer/consumer loop (kernel/daemon/objects/semaphore.py
    creates them)."""

    def __init__(self, uint64_t value):
        self.kind = KIND_SEMAPHORE
        self.value = value
        self.waiters = deque()

    cpdef destroy(self):
        _fail_queue(self.waiters, b"the semaphore was destroyed: its last capability was closed")


cdef class Reply(KernelObject):
    """The one-shot right to answer one call (DESIGN §5). `caller` None = call is over."""

    def __init__(self):
        self.kind = KIND_REPLY
        self.gone_reason = ""

    cpdef abandon(self, str reason):
        self.caller = None
        self.gone_reason = reason

    cpdef destroy(self):
        # The reply capability was dropped (closed, or its holder died) unanswered.
        cdef Pending caller = self.caller
        if caller is not None:
            self.abandon("the reply capability was dropped")
            caller.finish()
            caller.proc.complete(caller.op, caller.req_id, ST_PEER_CLOSED,
                                 payload=b"the server closed the call without replying")


cdef Reply _new_reply(Pending caller):
    cdef Reply r = Reply.__new__(Reply)
    r.kind = KIND_REPLY
    r.caller = caller
    r.gone_reason = ""
    return r


# ------------------------------------------------------------------ pending ops


cdef class Pending:
    """One operation of one process that waits inside the kernel."""

    def __init__(self, ProcCore proc, uint64_t req_id, int op, int64_t deadline,
                 uint64_t slot=0):
        self.proc = proc
        self.req_id = req_id
        self.op = op
        self.deadline = deadline
        self.slot = slot
        self.payload = b""
        self.phase = WAITING

    cpdef enqueue(self, object queue):
        self.queue = queue
        queue.append(self)
        self.proc.pending[self.req_id] = self

    cpdef dequeue(self):
        if self.queue is not None:
            self.queue.remove(self)
            self.queue = None

    cpdef finish(self):
        """Leave every structure; the caller posts the completion.

        A send that failed (timeout, cancel, death) leaves the capabilities it
        would have moved with the sender, untouched, and drops the copies made for
        it (InFlight).
        """
        self.dequeue()
        self.phase = DONE
        _unhold(self)   # the payload itself stays: a delivered send is posted after this
        if self.transfers is not None:
            for cap, made in self.transfers:
                if made is None:
                    (<Capability>cap).in_transit = False
                elif (<Capability>cap).holder is made:   # not revoked meanwhile
                    _drop_copy(cap)
            self.transfers = None
        if self.proc.pending.get(self.req_id) is self:
            del self.proc.pending[self.req_id]


cdef int _hold(ProcCore proc, Pending op, Py_ssize_t n) except -1:
    """Count a send's stored payload (`n` bytes) against its process: the kernel keeps
    it until a receiver comes, so without a bound 4096 waiting sends of 256 KiB each
    held 1 GiB of the kernel's memory for one process."""
    if proc.held_bytes + n > MAX_HELD_BYTES:
        raise OpError(Status.NO_RESOURCES,
                      f"more than {MAX_HELD_BYTES >> 20} MiB of this process's messages "
                      "wait in the kernel for receivers")
    proc.held_bytes += n
    op.held = n
    return 0


cdef inline void _unhold(Pending op) noexcept:
    """The kernel no longer waits to deliver `op`'s payload (delivered or ended)."""
    if op.held:
        op.proc.held_bytes -= op.held
        op.held = 0


cdef Pending _new_pending(ProcCore proc, Header h):
    return init_pending(Pending.__new__(Pending), proc, h)


cdef Pending init_pending(Pending op, ProcCore proc, Header h):
    """Fill a new `op` (a Pending, or a subclass of the compiled objects: pipes.pyx,
    queues.pyx) for request `h` of `proc`, waiting."""
    op.proc = proc
    op.req_id = h.h.req_id
    op.op = h.h.opcode
    op.deadline = h.h.deadline
    op.slot = h.h.slot
    op.payload = b""
    op.phase = WAITING
    return op


cdef Pending _pop(object queue, bint newest=False):
    """The oldest (or newest) op in `queue`, taken out of it."""
    if not queue:
        return None
    cdef Pending op = queue.pop() if newest else queue.popleft()
    op.queue = None
    return op


cdef Pending _pop_live(object queue, bint newest=False):
    """The oldest (or newest) op in `queue` whose process still holds the capability
    it waits through. One whose capability was revoked, closed or moved away
    meanwhile fails instead of being served: revoked authority takes no further
    message."""
    cdef Pending op
    while (op := _pop(queue, newest)) is not None:
        if op.cap is None or op.cap.holder is op.proc.caps:
            return op
        op.finish()
        op.proc.complete(op.op, op.req_id, ST_BAD_SLOT, payload=(
            b"the capability this operation waited through was revoked, closed or sent away"))
    return None


# ------------------------------------------------------------------ processes


cdef class ProcCore:
    """What the per-message path needs of a connected process."""

    cdef int post(self, uint32_t opcode, uint64_t req_id, int32_t status, uint64_t slot,
                  uint64_t arg, const char *payload, Py_ssize_t n, uint64_t badge,
                  ProcCore sender) except -1:
        """Write a completion; keep it in order behind earlier ones if the ring is full."""
        return self._post(opcode, req_id, status, slot, arg, payload, n, badge, sender, None, 0)

    cdef int post_caps(self, uint32_t opcode, uint64_t req_id, uint64_t slot, uint64_t arg,
                       const char *payload, Py_ssize_t n, uint64_t badge, ProcCore sender,
                       list slots, uint32_t kinds) except -1:
        """A successful completion that also hands over capabilities (their new slots
        here; their kinds, 4 bits each, in `flags` so the client can type them)."""
        return self._post(opcode, req_id, ST_OK, slot, arg, payload, n, badge, sender,
                          slots, kinds)

    cdef int _post(self, uint32_t opcode, uint64_t req_id, int32_t status, uint64_t slot,
                   uint64_t arg, const char *payload, Py_ssize_t n, uint64_t badge,
                   ProcCore sender, list slots, uint32_t kinds) except -1:
        cdef mk_hdr h
        cdef uint64_t cbuf[8]   # MAX_TRANSFER
        cdef Py_ssize_t i, ncaps = len(slots) if slots is not None else 0
        if not self.alive:
            return 0
        if ncaps > MAX_TRANSFER:
            raise ValueError("more capabilities than a message carries")
        self.dirty = True
        memset(&h, 0, HDR_SIZE)
        h.opcode = opcode
        h.req_id = req_id
        h.status = status
        h.slot = slot
        h.arg = arg
        h.badge = badge
        if sender is not None:
            h.pid, h.uid, h.gid = sender.pid, sender.uid, sender.gid
            h.deadline = sender.ident   # completions carry the sender's connection id here
        h.ncaps = <uint16_t>ncaps
        h.flags = kinds
        for i in range(ncaps):
            cbuf[i] = slots[i]
        if not self.overflow and self.cq._write(&h, cbuf, payload, n) == 1:
            return 0
        if len(self.overflow) >= MAX_OVERFLOW or self.overflow_bytes + n > MAX_OVERFLOW_BYTES:
            # Raising here would blame whichever process we were serving; mark instead.
            # Counting payload bytes too: 16384 messages of 256 KiB held for a process
            # that never reads them was 4 GiB of the kernel's memory.
            self.doomed = "it does not drain its completion ring"
            return 0
        self.overflow_bytes += n
        self.overflow.append((opcode, req_id, status, slot, arg,
                              PyBytes_FromStringAndSize(payload, n),
                              tuple(slots) if ncaps else (), badge, h.pid, h.uid, h.gid, kinds,
                              h.deadline))
        return 0

    cpdef complete(self, int opcode, uint64_t req_id, int status, uint64_t slot=0,
                   uint64_t arg=0, bytes payload=b"", uint64_t badge=0, ProcCore sender=None,
                   list slots=None, uint32_t kinds=0):
        """Post a completion from Python (cold paths, errors); a message's `sender`
        gives it the kernel-verified pid/uid/gid and connection id, `slots` and
        `kinds` the capabilities it hands over (as post_caps)."""
        self._post(opcode, req_id, status, slot, arg, PyBytes_AS_STRING(payload),
                   PyBytes_GET_SIZE(payload), badge, sender, slots, kinds)

    @property
    def creds(self):
        return (self.pid, self.uid, self.gid)


cdef ProcCore _new_kernel_sender():
    """The sender of messages the kernel makes itself: pid 0, never alive, so the
    completions a send would post back to its sender go nowhere."""
    cdef ProcCore k = ProcCore.__new__(ProcCore)
    k.ident, k.pid, k.uid, k.gid = 0, 0, os.getuid(), os.getgid()
    k.pending = {}
    k.overflow = deque()
    k.alive = False
    return k


cdef ProcCore _KERNEL = _new_kernel_sender()


cdef inline uint64_t _msg_flags(Pending tx):
    return ((MSG_IS_CALL if tx.is_call else 0) | (MSG_FROM_KERNEL if tx.proc is _KERNEL else 0)
            | tx.msg_flags)


cdef int _forward(ProcCore dst, ProcCore src, Header h, uint32_t opcode, uint64_t req_id,
                  uint64_t slot, uint64_t arg, uint64_t badge, tuple moved) except -1:
    """Copy the payload of `h` (current in src's SQ) into dst's CQ: the one copy.

    `moved` is (slots, kinds) of capabilities handed over with it, or None."""
    cdef Ring sq = src.sq
    sq._check_current(h)
    cdef const char *p = sq.data + h.pos + HDR_SIZE + 8 * h.h.ncaps
    if moved is None:
        return dst.post(opcode, req_id, ST_OK, slot, arg, p, h.h.payload_len, badge, src)
    return dst.post_caps(opcode, req_id, slot, arg, p, h.h.payload_len, badge, src,
                         moved[0], moved[1])


cdef int _post_signal(ProcCore proc, uint32_t opcode, uint64_t req_id, Notification n) except -1:
    """Complete a receive with `n`'s word, taken and cleared: a message from the
    kernel with no payload, the word in its badge (seL4's bound notification)."""
    cdef uint64_t word = n.word
    n.word = 0
    return proc.post(opcode, req_id, ST_OK, 0, MSG_FROM_KERNEL | MSG_SIGNAL, NULL, 0, word,
                     _KERNEL)


cdef tuple _minted(Capability cap, uint64_t rights, uint64_t badge):
    """(rights, badge) of a child minted in transit, checked as CAP_MINT checks them."""
    if rights & ~cap.rights:   # DESIGN §5: a derived capability never gains a right
        raise OpError(Status.ACCESS_DENIED, f"a minted transfer would add rights slot "
                      f"{cap.slot:#x} lacks: {Rights(rights & ~cap.rights)!r}")
    if cap.badge and badge != cap.badge:   # seL4: a badge is set once
        raise OpError(Status.ACCESS_DENIED,
                      f"slot {cap.slot:#x} already carries badge {cap.badge}")
    return (rights, badge)


cdef bint _moves(tuple words, uint64_t slot):
    """Does a message's capability list move `slot` away (not copy or mint it)?"""
    cdef Py_ssize_t i = 0, n = len(words)
    cdef uint64_t raw
    while i < n:
        raw = words[i]
        if raw & TRANSFER_MINT:
            i += 2   # the next word is a badge, not a slot
            continue
        if raw == slot:   # a copy has its flag bit set, so it never equals a slot
            return True
        i += 1
    return False


cdef class InFlight:
    """Holds the copies and mints that a message waiting for its receiver carries.

    They are made when the message is sent, as SCM_RIGHTS makes a file in flight:
    the sender may go on using, closing or resending its own capability. (When
    copies were made at delivery, the source stayed locked meanwhile, and an
    asyncio task that used it failed or not depending on whether the receiver had
    come yet.) A copy is a child in the derivation tree from the start, so a
    revocation reaches it here (discard) and fails the send; delivery moves it
    into the receiver's table; a send that ends otherwise drops it."""

    cdef readonly ProcCore sender

    def __init__(self, ProcCore sender):
        self.sender = sender

    def discard(self, Capability cap, str why):
        """Revocation reached a copy still in flight (its object is released by the
        revoker)."""
        cap.holder = None


cdef list _in_flight(list transfers, ProcCore sender):
    """A waiting message's capabilities as [(cap, made)]: a move stays in the
    sender's table, locked (made None); a copy or mint is derived now, held by
    `made`, an InFlight."""
    cdef InFlight flight = None
    cdef Capability child
    out = []
    for cap, derived in transfers:
        if derived is None:
            (<Capability>cap).in_transit = True
            out.append((cap, None))
            continue
        if flight is None:
            flight = InFlight(sender)
        child = derive(cap, derived[0], derived[1])
        child.holder = flight
        (<KernelObject>(<Capability>cap).obj).refs += 1
        out.append((child, flight))
    return out


cdef void _drop_copy(Capability cap) except *:
    """A copy made for a message that was not delivered: out of the tree, released."""
    unlink(cap)
    cap.holder = None
    _release(<KernelObject>cap.obj)


cdef void _release(KernelObject obj) except *:
    global _live
    obj.refs -= 1
    if obj.refs == 0:
        _live -= 1
        obj.destroy()
        if obj.ledger is not None:
            obj.ledger.object_gone()


cdef bint _intact(Pending tx):
    """Is every capability of `tx`'s waiting message still there: each move in its
    sender's table, each copy in flight (not revoked)?"""
    for cap, made in tx.transfers:
        if (<Capability>cap).holder is not (tx.proc.caps if made is None else made):
            return False
    return True


# ------------------------------------------------------------------ the core


cdef class Core:
    """Capability rules and the hot handlers. KernelState (Python) extends it."""

    cpdef bint expired(self, int64_t deadline):
        return deadline == 0 or (deadline > 0 and deadline <= self.clock())

    cpdef Capability lookup(self, ProcCore proc, uint64_t slot, int kind, uint64_t right):
        cdef Capability cap
        try:
            cap = proc.caps.find(slot)
        except SlotError as e:
            raise OpError(Status.BAD_SLOT, e.reason) from None
        cdef KernelObject obj = <KernelObject>cap.obj
        if kind and obj.kind != kind:
            raise OpError(Status.WRONG_TYPE, f"slot {slot:#x} holds a {KIND_NAMES[obj.kind]}, "
                          f"not a {KIND_NAMES[kind]}")
        if cap.rights & right != right:
            raise OpError(Status.ACCESS_DENIED, f"the capability in slot {slot:#x} lacks the "
                          f"{Rights(right & ~cap.rights).name} right")
        if cap.in_transit:
            raise OpError(Status.INVALID_ARGS, f"slot {slot:#x}: the capability is in transit "
                          "in a message that no receiver has taken yet")
        return cap

    cpdef uint64_t insert_cap(self, ProcCore proc, Capability cap) except 0:
        cdef uint64_t slot = proc.caps.insert(cap)
        (<KernelObject>cap.obj).refs += 1
        return slot

    cpdef Capability remove_cap(self, ProcCore proc, uint64_t slot, str why):
        cdef Capability cap = proc.caps.take(slot, why)
        if cap.parent is not None or cap.children:
            unlink(cap)   # its children move up: revoking an ancestor still reaches them
        self.release(cap.obj)
        return cap

    cpdef release(self, KernelObject obj):
        _release(obj)

    cpdef abandon(self, Pending op, str why):
        """End `op` without a completion; a delivered call's reply learns `why`, and a
        server that asked (CALL_MONITOR) gets a kernel message that it ended."""
        cdef Reply reply = op.reply
        cdef tuple watch
        if op.phase == AWAIT_REPLY and reply is not None:
            reply.abandon(why)
            watch, reply.watch = reply.watch, None
            if watch is not None and (<Endpoint>watch[0]).refs > 0:
                self.kernel_send(watch[0], watch[1], why.encode())
        op.finish()

    cdef void _arm(self, Pending op) except *:
        if op.deadline >= 0:   # 0 (return at once) expires at the next check
            self.timers.arm(op)

    # -------------------------------------------------------------- polling

    cpdef int pump(self, list procs, int64_t idle_ns, int64_t slice_ns) except -1:
        """Poll every submission ring, handling records as they come.

        Returns 1 when `slice_ns` ran out while work was flowing (the event loop
        gets a turn, then pumping resumes), 0 after `idle_ns` without work (time
        to sleep), 2 when `trouble` holds a process to disconnect.
        """
        cdef int64_t start = _now_ns(), now = start
        cdef int work
        cdef ProcCore proc
        cdef Ring sq
        while True:
            work = 0
            for proc in procs:
                if not proc.alive:
                    continue
                if proc.overflow:
                    work += (<object>proc).flush_overflow()   # Python: Proc
                sq = proc.sq
                if mk_load_acquire_u64(sq.tail_p) != sq.head:
                    try:
                        work += self.drain(proc)
                    except RingCorruptError as e:
                        self.trouble.append((proc, f"malformed ring: {e}"))
                if proc.doomed is not None:
                    self.trouble.append((proc, proc.doomed))
            if now >= self.next_timer_check:
                self.next_timer_check = now + TIMER_CHECK_NS
                work += (<object>self).expire_due()   # Python: KernelState
            self.ring_doorbells(procs)
            if self.trouble:
                return 2
            now = _now_ns()
            if work:
                self.last_work = now
            elif now - self.last_work >= idle_ns:   # measured across slices, not per call
                return 0
            else:
                mk_yield()   # 2 cores, 3 busy processes: let the peer with work run
            if now - start >= slice_ns:
                return 1

    cpdef int ring_doorbells(self, list procs) except -1:
        """Write the eventfd of each process that got completions and sleeps."""
        cdef ProcCore proc
        cdef uint64_t one = 1
        for proc in procs:
            if proc.dirty:
                proc.dirty = False
                if proc.alive and proc.cq.peer_waiting():
                    write(proc.cq_efd, &one, 8)
        return 0

    # -------------------------------------------------------------- drain

    cpdef int drain(self, ProcCore proc) except -1:
        """Handle up to BATCH records of `proc`. Raises RingCorruptError on a broken ring."""
        cdef int n = 0
        cdef Header h
        cdef Ring sq = proc.sq
        while n < BATCH and proc.alive:
            h = sq.next_record()
            if h is None:
                break
            self.handle(proc, h)
            sq.consume_record(h)
            n += 1
        return n

    cdef handle(self, ProcCore proc, Header h):
        cdef int op = h.h.opcode
        try:
            if h.h.req_id in proc.pending:
                raise OpError(Status.INVALID_ARGS, f"request id {h.h.req_id} is already in flight")
            if len(proc.pending) >= MAX_PENDING and op != OP_CANCEL:   # CANCEL frees, not takes
                raise OpError(Status.NO_RESOURCES,
                              f"more than {MAX_PENDING} operations waiting in the kernel")
            if h.h.deadline < -1:
                raise OpError(Status.INVALID_ARGS, "deadline must be -1, 0 or a positive time")
            if op == OP_CALL or op == OP_SEND:
                self._send(proc, h, op == OP_CALL)
            elif op == OP_REPLY_RECV:
                self._reply_recv(proc, h)
            elif op == OP_RECV:
                self._recv(proc, h, self.lookup(proc, h.h.slot, KIND_ENDPOINT, R_RECEIVE))
            elif op == OP_REPLY:
                self._reply(proc, h, self._decode_reply(proc, h, h.h.slot))
                proc.post(op, h.h.req_id, ST_OK, 0, 0, NULL, 0, 0, None)
            elif op == OP_SIGNAL:
                self._signal(proc, h, self.lookup(proc, h.h.slot, KIND_NOTIFICATION, R_SIGNAL))
            elif op == OP_WAIT:
                self._wait(proc, h, self.lookup(proc, h.h.slot, KIND_NOTIFICATION, R_WAIT))
            elif op == OP_POLL:
                self._poll(proc, h, self.lookup(proc, h.h.slot, KIND_NOTIFICATION, R_WAIT))
            elif op == OP_SEM_POST:
                self._sem_post(proc, h, self.lookup(proc, h.h.slot, KIND_SEMAPHORE, R_SIGNAL))
            elif op == OP_SEM_WAIT:
                self._sem_wait(proc, h, self.lookup(proc, h.h.slot, KIND_SEMAPHORE, R_WAIT))
            elif op == OP_CLOSE:
                self._close(proc, h, self.lookup(proc, h.h.slot, 0, 0))
            else:
                fn = self.cold.get(op)
                if fn is None:
                    raise OpError(Status.NOT_SUPPORTED, f"unknown opcode {op}")
                fn(self, proc, h)
        except OpError as e:
            proc.complete(op, h.h.req_id, e.status, arg=self._reply_kept(proc, h),
                          payload=e.reason.encode())
        except Exception:   # a kernel bug must not take down every process: fail this op
            log.exception("%r: internal error handling %r", proc, h)
            proc.complete(op, h.h.req_id, ST_INVALID_ARGS, arg=self._reply_kept(proc, h),
                          payload=b"internal kernel error (logged by the kernel)")

    cdef uint64_t _reply_kept(self, ProcCore proc, Header h):
        """For a failed reply: REPLY_KEPT if its reply capability is still in the table
        (the refusal came before consuming it), so the client can let it be retried."""
        cdef int op = h.h.opcode
        cdef Capability cap
        if op != OP_REPLY and op != OP_REPLY_RECV:
            return 0
        try:
            cap = proc.caps.find(h.h.slot if op == OP_REPLY else h.h.arg)
        except SlotError:
            return 0
        return REPLY_KEPT if (<KernelObject>cap.obj).kind == KIND_REPLY else 0

    # -------------------------------------------------------------- endpoints

    cdef Capability _decode_message(self, ProcCore proc, Header h, uint64_t slot, int kind,
                                    uint64_t right):
        cdef Capability cap = self.lookup(proc, slot, kind, right)
        if h.h.payload_len > MAX_PAYLOAD:
            raise OpError(Status.TOO_LARGE, f"payload of {h.h.payload_len} bytes exceeds the "
                          f"maximum of {MAX_PAYLOAD}")
        return cap

    cdef list _decode_transfers(self, ProcCore proc, Header h, Capability used,
                                uint64_t grant_right):
        """Validate every capability a message carries, all before anything changes.

        The capability the message goes through needs GRANT; each carried one
        needs TRANSFER, and COPY too when it is sent as a copy.
        """
        cdef uint64_t raw, slot, rights
        cdef bint copy
        cdef Capability cap
        cdef tuple words = proc.sq.caps(h)
        cdef Py_ssize_t i = 0, n = len(words)
        if h.h.ncaps > MAX_TRANSFER:
            raise OpError(Status.INVALID_ARGS,
                          f"a message carries at most {MAX_TRANSFER} capability words")
        if used.rights & grant_right != grant_right:
            raise OpError(Status.ACCESS_DENIED, f"the capability in slot {used.slot:#x} lacks "
                          "the GRANT right, so messages through it cannot carry capabilities")
        out = []
        seen = set()
        while i < n:
            raw = words[i]
            i += 1
            if raw & TRANSFER_MINT:
                slot = raw & TRANSFER_SLOT_MASK
                cap = self.lookup(proc, slot, 0, R_TRANSFER | R_COPY)
                if i == n:
                    raise OpError(Status.INVALID_ARGS, "a minted transfer needs its badge word")
                rights = (cap.rights if raw & TRANSFER_SAME_RIGHTS
                          else (raw >> TRANSFER_RIGHTS_SHIFT) & R_ALL)
                derived = _minted(cap, rights, words[i])
                i += 1
            else:
                copy = (raw & TRANSFER_COPY) != 0
                slot = raw & ~TRANSFER_COPY
                cap = self.lookup(proc, slot, 0, R_TRANSFER | (R_COPY if copy else 0))
                derived = (cap.rights, cap.badge) if copy else None
            if id(cap) in seen:
                raise OpError(Status.INVALID_ARGS, f"slot {slot:#x} appears twice in the message")
            if cap is used and derived is None:
                raise OpError(Status.INVALID_ARGS,
                              "a message cannot move the capability it is sent through")
            seen.add(id(cap))
            out.append((cap, derived))
        return out

    cdef tuple _transfer(self, list transfers, ProcCore sender, ProcCore receiver):
        """Hand the carried capabilities to `receiver`: moves leave the sender's table,
        copies derive new children (a waiting message's were made when it was sent:
        InFlight). All checks come first, so a failure changes nothing."""
        cdef Capability cap
        cdef uint64_t slot
        cdef uint32_t kinds = 0
        cdef int i = 0
        for cap, derived in transfers:
            if cap.holder is not (derived if isinstance(derived, InFlight) else sender.caps):
                raise OpError(Status.BAD_SLOT,
                              "a capability in the message was revoked before delivery")
        if receiver.caps.count + len(transfers) > receiver.caps.limit:
            raise OpError(Status.NO_RESOURCES, "the receiver's capability table is full")
        slots = []
        for cap, derived in transfers:
            cap.in_transit = False
            if isinstance(derived, InFlight):   # made at send: its reference moves in
                slot = receiver.caps.insert(cap)
            elif derived is not None:   # a copy or a mint: a child, with its rights and badge
                slot = self.insert_cap(receiver, derive(cap, derived[0], derived[1]))
            else:
                sender.caps.take(cap.slot, f"was sent to pid {receiver.pid}")
                slot = receiver.caps.insert(cap)   # same capability: refs and tree kept
            slots.append(slot)
            kinds |= ((<KernelObject>cap.obj).kind & 0xF) << (4 * i)
            i += 1
        return slots, kinds

    cdef uint64_t _install_reply(self, ProcCore receiver, Pending caller, bint grant) except 0:
        cdef Reply reply = _new_reply(caller)
        cdef Capability cap = Capability.__new__(Capability)
        cap.obj = reply
        # seL4's canGrantReply: a reply may carry capabilities only if the caller's
        # endpoint capability had GRANT, i.e. the caller agreed to receive some.
        cap.rights = R_REPLY_DEFAULT | (R_GRANT if grant else 0)
        cdef uint64_t slot
        global _live
        try:
            slot = self.insert_cap(receiver, cap)
        except SlotError as e:
            _live -= 1   # the reply object is dropped before any capability named it
            raise OpError(Status.NO_RESOURCES,
                          f"receiver cannot hold a reply capability: {e}") from None
        caller.reply = reply
        caller.phase = AWAIT_REPLY
        return slot

    cdef _send(self, ProcCore proc, Header h, bint is_call):
        cdef Capability cap = self._decode_message(proc, h, h.h.slot, KIND_ENDPOINT, R_SEND)
        cdef list transfers = self._decode_transfers(proc, h, cap, R_GRANT) if h.h.ncaps else None
        cdef Endpoint ep = <Endpoint>cap.obj
        cdef Pending op = _new_pending(proc, h)
        # Newest receiver first: the one that just finished is likely still spinning,
        # the oldest likely asleep (docs/architecture.md). Senders stay FIFO: order.
        cdef Pending rx = _pop_live(ep.receivers, True)
        cdef uint64_t slot = 0
        cdef tuple moved = None
        op.is_call = is_call
        op.grant = cap.rights & R_GRANT != 0
        if rx is not None:
            try:
                if transfers is not None and (rx.proc.caps.count + len(transfers) + is_call
                                              > rx.proc.caps.limit):
                    raise OpError(Status.NO_RESOURCES, "the receiver's capability table is full")
                if is_call:
                    slot = self._install_reply(rx.proc, op, op.grant)
            except OpError:
                ep.receivers.append(rx)   # back where it was: the newest end
                rx.queue = ep.receivers
                raise
            if transfers is not None:
                moved = self._transfer(transfers, proc, rx.proc)   # room checked above
            if is_call:
                proc.pending[op.req_id] = op
            rx.finish()
            _forward(rx.proc, proc, h, rx.op, rx.req_id, slot,
                     MSG_IS_CALL if is_call else 0, cap.badge, moved)
            if is_call:
                self._arm(op)
            else:
                proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, 0, NULL, 0, 0, None)
        elif self.expired(h.h.deadline):
            raise OpError(Status.TIMED_OUT, "no receiver was waiting on the endpoint")
        else:
            op.payload = proc.sq.payload(h)
            _hold(proc, op, len(op.payload))
            op.badge = cap.badge
            op.cap = cap
            if transfers is not None:   # moves locked until a receiver takes it; copies made
                op.transfers = _in_flight(transfers, proc)
            op.enqueue(ep.senders)
            self._arm(op)

    cdef _deliver_stored(self, Pending rx, Pending tx):
        """A sender was waiting with a copied payload: hand it to receiver `rx`."""
        cdef uint64_t slot = 0
        cdef tuple moved = None
        cdef ProcCore receiver = rx.proc
        if tx.transfers is not None and (receiver.caps.count + len(tx.transfers) + tx.is_call
                                         > receiver.caps.limit):
            raise OpError(Status.NO_RESOURCES, "the receiver's capability table is full")
        if tx.is_call:
            slot = self._install_reply(receiver, tx, tx.grant)   # its timer is already armed
        if tx.transfers is not None:
            moved = self._transfer(tx.transfers, tx.proc, receiver)
            tx.transfers = None
        if not tx.is_call:
            tx.finish()
            tx.proc.post(tx.op, tx.req_id, ST_OK, 0, 0, NULL, 0, 0, None)
        rx.finish()
        _unhold(tx)   # a call stays pending for its reply, but it was delivered
        if moved is None:
            receiver.post(rx.op, rx.req_id, ST_OK, slot, _msg_flags(tx),
                          PyBytes_AS_STRING(tx.payload), PyBytes_GET_SIZE(tx.payload),
                          tx.badge, tx.proc)
        else:
            receiver.post_caps(rx.op, rx.req_id, slot, _msg_flags(tx),
                               PyBytes_AS_STRING(tx.payload), PyBytes_GET_SIZE(tx.payload),
                               tx.badge, tx.proc, moved[0], moved[1])

    cdef _recv(self, ProcCore proc, Header h, Capability cap):
        cdef Endpoint ep = <Endpoint>cap.obj
        cdef Pending rx, tx
        if ep.bound is not None and (<Notification>ep.bound).word:
            # seL4: a pending signal on the bound notification comes before messages
            _post_signal(proc, h.h.opcode, h.h.req_id, <Notification>ep.bound)
            return
        rx = _new_pending(proc, h)
        while True:
            tx = _pop_live(ep.senders)
            if tx is None or tx.transfers is None or _intact(tx):
                break
            # A capability of the waiting message was revoked meanwhile: that send fails
            # (the rest of its capabilities stay with the sender) and the next one is tried.
            tx.finish()
            tx.proc.complete(tx.op, tx.req_id, ST_BAD_SLOT,
                             payload=b"a capability in the message was revoked before delivery")
        if tx is not None:
            try:
                self._deliver_stored(rx, tx)
            except OpError:
                ep.senders.appendleft(tx)
                tx.queue = ep.senders
                raise
        elif self.expired(h.h.deadline):
            raise OpError(Status.TIMED_OUT, "no message arrived on the endpoint")
        else:
            rx.cap = cap
            rx.enqueue(ep.receivers)
            self._arm(rx)

    cpdef kernel_send(self, Endpoint ep, uint64_t badge, bytes payload, uint64_t flags=0):
        """Send a message from the kernel itself on `ep` (e.g. a monitored process
        exited): the receiver sees MSG_FROM_KERNEL, sender pid 0 and `badge`. It waits
        for a receiver like any send, without a deadline. `flags` adds to its `arg`
        (MSG_SESSION_OFFER). Returns the stored message while it waits (its
        dequeue() withdraws it), or None if a receiver took it at once."""
        cdef Pending rx = _pop_live(ep.receivers, True)
        cdef Pending tx
        if rx is not None:
            rx.finish()
            rx.proc.post(rx.op, rx.req_id, ST_OK, 0, MSG_FROM_KERNEL | flags,
                         PyBytes_AS_STRING(payload),
                         PyBytes_GET_SIZE(payload), badge, _KERNEL)
            return None
        tx = Pending.__new__(Pending)
        tx.proc = _KERNEL
        tx.op = OP_SEND
        tx.deadline = -1
        tx.payload = payload
        tx.badge = badge
        tx.msg_flags = flags
        tx.phase = WAITING
        tx.queue = ep.senders   # not in any process's pending table: nobody can cancel it
        ep.senders.append(tx)
        return tx

    cdef Capability _decode_reply(self, ProcCore proc, Header h, uint64_t reply_slot):
        return self._decode_message(proc, h, reply_slot, KIND_REPLY, R_SEND)

    cdef _reply(self, ProcCore proc, Header h, Capability cap):
        """Answer a call. The reply capability is consumed whether or not the caller is
        there, but not when the capabilities the reply carries fail their checks."""
        cdef Reply reply = <Reply>cap.obj
        cdef Pending caller = reply.caller
        cdef str why_gone = reply.gone_reason
        cdef list transfers = self._decode_transfers(proc, h, cap, R_GRANT) if h.h.ncaps else None
        cdef tuple moved = None
        if transfers is not None and caller is not None and (
                caller.proc.caps.count + len(transfers) > caller.proc.caps.limit):
            raise OpError(Status.NO_RESOURCES, "the caller's capability table is full")
        reply.abandon("it was already answered")   # DESIGN §5: reply caps are one-shot
        self.remove_cap(proc, cap.slot, "was used by an earlier reply")
        if caller is None:
            raise OpError(Status.CALLER_GONE, f"the reply was not delivered: {why_gone}")
        if transfers is not None:
            moved = self._transfer(transfers, proc, caller.proc)
        caller.finish()
        _forward(caller.proc, proc, h, caller.op, caller.req_id, 0, 0, 0, moved)

    cdef _reply_recv(self, ProcCore proc, Header h):
        """Reply to the call whose reply slot is in `arg`, then receive on `slot`.

        If the reply fails (its caller is gone) the whole operation fails with that
        error and no receive starts; the server simply receives again.
        """
        cdef Capability recv_cap = self.lookup(proc, h.h.slot, KIND_ENDPOINT, R_RECEIVE)
        cdef Capability reply_cap = self._decode_reply(proc, h, h.h.arg)
        if h.h.ncaps and _moves(proc.sq.caps(h), recv_cap.slot):
            raise OpError(Status.INVALID_ARGS,
                          "reply_recv cannot move away the capability it receives through")
        self._reply(proc, h, reply_cap)
        self._recv(proc, h, recv_cap)

    # -------------------------------------------------------------- capabilities

    cdef _close(self, ProcCore proc, Header h, Capability cap):
        """CAP_CLOSE, compiled: every looked-up capability and unanswered reply ends here.

        While the object lives on through other capabilities, what waited through this
        one fails now. Closing the last one destroys the object, which fails its
        waiters with PEER_CLOSED, "destroyed": the object, not only this authority, is
        gone."""
        if proc.pending and (<KernelObject>cap.obj).refs > 1:
            (<object>self).fail_waiting_through(proc, {id(cap)}, "was closed")   # Python
        self.remove_cap(proc, h.h.slot, "was closed")
        proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, 0, NULL, 0, 0, None)

    # -------------------------------------------------------------- notifications

    cdef _signal(self, ProcCore proc, Header h, Capability cap):
        if h.h.arg == 0:
            raise OpError(Status.INVALID_ARGS, "bits must be a non-zero 64-bit mask")
        self._raise_bits(<Notification>cap.obj, h.h.arg)
        proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, 0, NULL, 0, 0, None)

    def kernel_signal(self, Notification n, uint64_t bits):
        """The kernel's own signal (a monitored process ended): as a process's."""
        self._raise_bits(n, bits)

    cdef int _raise_bits(self, Notification n, uint64_t bits) except -1:
        """OR `bits` into `n`'s word and hand the word to a waiter, or else to a
        receiver of the endpoint it is bound to. The path of every signal, a C call
        from NOTIFICATION_SIGNAL (no lookup for a Python override on the way)."""
        cdef Pending waiter
        cdef uint64_t word
        n.word |= bits
        waiter = _pop_live(n.waiters)
        if waiter is not None:
            word, n.word = n.word, 0
            waiter.finish()
            waiter.proc.post(waiter.op, waiter.req_id, ST_OK, 0, word, NULL, 0, 0, None)
        elif n.bound_to is not None:
            self.signal_bound(n)
        return 0

    cpdef bint signal_bound(self, Notification n) except -1:
        """Hand a set word to a receiver waiting on the endpoint `n` is bound to, as
        a signal message (its own waiters come first: they asked for it by name).
        True if one took it."""
        if not n.word or n.bound_to is None:
            return False
        cdef Pending rx = _pop_live((<Endpoint>n.bound_to).receivers, True)
        if rx is None:
            return False
        rx.finish()
        _post_signal(rx.proc, rx.op, rx.req_id, n)
        return True

    cdef _wait(self, ProcCore proc, Header h, Capability cap):
        cdef Notification n = <Notification>cap.obj
        cdef uint64_t word = n.word
        cdef Pending op
        if word:
            n.word = 0
            proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, word, NULL, 0, 0, None)
        elif self.expired(h.h.deadline):
            raise OpError(Status.TIMED_OUT, "no signal arrived on the notification")
        else:
            op = _new_pending(proc, h)
            op.cap = cap
            op.enqueue(n.waiters)
            self._arm(op)

    # -------------------------------------------------------------- semaphores

    cdef _sem_post(self, ProcCore proc, Header h, Capability cap):
        """Add `arg` units; waiters take one each, oldest first (one whose capability
        was revoked or sent away meanwhile fails instead). Completes with the count."""
        cdef Semaphore sem = <Semaphore>cap.obj
        cdef uint64_t n = h.h.arg
        cdef Pending op
        if n == 0:
            raise OpError(Status.INVALID_ARGS, "n must be at least 1")
        if n > MAX_SEMAPHORE_VALUE:
            raise OpError(Status.INVALID_ARGS,
                          f"semaphore post n must be 0 to {MAX_SEMAPHORE_VALUE}, not {n}")
        if sem.value + n > MAX_SEMAPHORE_VALUE:   # POSIX sem_post: EOVERFLOW
            raise OpError(Status.INVALID_ARGS, f"the count would exceed {MAX_SEMAPHORE_VALUE}")
        sem.value += n
        while sem.value and (op := _pop_live(sem.waiters)) is not None:
            op.finish()
            sem.value -= 1
            op.proc.post(op.op, op.req_id, ST_OK, 0, sem.value, NULL, 0, 0, None)
        proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, sem.value, NULL, 0, 0, None)

    cdef _sem_wait(self, ProcCore proc, Header h, Capability cap):
        """Take a unit, or wait for one until the deadline; completes with the count
        left."""
        cdef Semaphore sem = <Semaphore>cap.obj
        cdef Pending op
        if sem.value:
            sem.value -= 1
            proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, sem.value, NULL, 0, 0, None)
        elif self.expired(h.h.deadline):
            raise OpError(Status.TIMED_OUT, "the count is 0")
        else:
            op = _new_pending(proc, h)
            op.cap = cap   # revoking or closing it fails the wait at once
            op.enqueue(sem.waiters)
            self._arm(op)

    cdef _poll(self, ProcCore proc, Header h, Capability cap):
        cdef Notification n = <Notification>cap.obj
        cdef uint64_t word = n.word
        n.word = 0
        proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, word, NULL, 0, 0, None)
