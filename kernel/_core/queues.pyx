# cython: language_level=3, embedsignature=True, freethreading_compatible=True
# cython: auto_pickle=False
"""Message queues' send and receive, compiled (the rules, their invariant and the
capabilities messages carry are described in kernel/daemon/objects/queue.py).

A queue round trip between two processes is four kernel operations; as Python
handlers each cost a few µs more than kcore's endpoint path. Reached through the
kernel's table of cold handlers, one C call away; creation stays in Python.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t

from capabilities._table cimport Capability, CapTable
from kernel._core.kcore cimport (
    Core, KernelObject, Pending, ProcCore, _drop_copy, _fail_queue, _hold, _in_flight,
    init_pending,
)
from kernel._core.ring cimport Header

from capabilities import Rights
from capabilities.table import derive

from kernel import abi
from kernel._core.kcore import OpError
from kernel.errors import Status

cdef Py_ssize_t _MESSAGE_OVERHEAD = 64
cdef Py_ssize_t _CAP_OVERHEAD = 64
MESSAGE_OVERHEAD = _MESSAGE_OVERHEAD
"""Bytes each stored message counts beyond its payload (the kernel's bookkeeping),
so a queue of empty messages is bounded too."""
CAP_OVERHEAD = _CAP_OVERHEAD
"""Bytes each capability a stored message holds counts towards the queue's bound."""

cdef int KIND_QUEUE = abi.ObjectKind.QUEUE
cdef uint64_t R_SEND = Rights.SEND
cdef uint64_t R_RECEIVE = Rights.RECEIVE
cdef uint64_t R_GRANT = Rights.GRANT
cdef uint64_t TRUNCATE = abi.QUEUE_TRUNCATE
cdef uint64_t EXCEPT = abi.QUEUE_EXCEPT
cdef uint64_t MAX_QUEUE_TYPE = abi.MAX_QUEUE_TYPE
cdef uint64_t MAX_PAYLOAD = abi.MAX_PAYLOAD
cdef int OP_QUEUE_RECV = abi.Op.QUEUE_RECV
cdef int ST_OK = Status.OK
cdef int ST_PEER_CLOSED = Status.PEER_CLOSED
_PARAMS = abi.QUEUE_RECV_PARAMS


cdef inline bint _selects(int64_t mtype, int64_t selector, uint64_t flags) noexcept:
    """abi.queue_selects, in C (a test checks they agree)."""
    if selector == 0:
        return True
    if selector > 0:
        return (mtype != selector) if flags & EXCEPT else mtype == selector
    return mtype <= -selector


def selects(int64_t mtype, int64_t selector, uint64_t flags):
    return _selects(mtype, selector, flags)


cdef class Message:
    """One message. The capabilities it carries are in exactly one place: `transfers`
    while its send is being handled (checked, not taken yet), its waiting send's
    `flight` (Pending.transfers), or `caps` once stored (held here)."""

    cdef public int64_t mtype
    cdef public bytes payload
    cdef public uint64_t badge
    cdef public ProcCore sender
    cdef public Py_ssize_t cost
    cdef public list transfers
    cdef public list flight
    cdef public list caps

    def __init__(self, int64_t mtype, bytes payload, uint64_t badge, ProcCore sender,
                 list transfers):
        self.mtype, self.payload, self.badge, self.sender = mtype, payload, badge, sender
        self.cost = (PyBytes_GET_SIZE(payload) + _MESSAGE_OVERHEAD
                     + _CAP_OVERHEAD * (len(transfers) if transfers else 0))
        self.transfers = transfers

    def keep(self):
        """The message is stored: take its capabilities from the sender (a move) or
        make them (a copy), and hold them."""
        cdef list carried = self.transfers or self.flight
        cdef Capability cap
        if not carried:
            return
        held = []
        for cap, how in carried:
            if how is None:   # a move, from the sender's table (locked there if it waited)
                cap.in_transit = False
                self.sender.caps.remove(cap.slot, "was sent away in a queue message")
            elif isinstance(how, tuple):   # a copy or mint not made yet
                cap = derive(cap, *how)
                (<KernelObject>cap.obj).refs += 1
            cap.holder = self   # (else a copy made when its send began to wait)
            held.append(cap)
        self.caps, self.transfers, self.flight = held, None, None

    def discard(self, Capability cap, str why):
        """Revocation reached a capability this message holds (revoke() releases its
        reference): the message keeps a hole in its place."""
        cap.holder = None

    def drop(self):
        """The stored message goes undelivered (its queue was destroyed)."""
        cdef Capability cap
        for cap in self.caps or ():
            if cap.holder is self:
                _drop_copy(cap)
        self.caps = None


cdef class QueueOp(Pending):
    """A send or receive waiting on a queue: a send's message, a receive's selection."""

    cdef public Message message
    cdef public int64_t selector
    cdef public uint64_t max_size
    cdef public uint64_t flags


cdef QueueOp _new_op(ProcCore proc, Header h, Capability cap):
    cdef QueueOp op = <QueueOp>init_pending(QueueOp.__new__(QueueOp), proc, h)
    op.cap = cap   # revoking or closing it fails the op at once
    return op


cdef class Queue(KernelObject):
    cdef public Py_ssize_t capacity   # -1: bounded by bytes only
    cdef public Py_ssize_t max_bytes
    cdef public object owner          # the creating Proc, charged for `max_bytes`
    cdef public object stored         # deque[Message]
    cdef public Py_ssize_t stored_bytes
    cdef public object senders        # deque[QueueOp]
    cdef public object receivers      # deque[QueueOp]

    def __init__(self, Py_ssize_t capacity, Py_ssize_t max_bytes, owner):
        """`owner` has been charged `max_bytes`; destroy() gives them back."""
        self.kind = KIND_QUEUE
        self.capacity, self.max_bytes, self.owner = capacity, max_bytes, owner
        self.stored = deque()
        self.stored_bytes = 0
        self.senders = deque()
        self.receivers = deque()

    cpdef destroy(self):
        why = b"the queue was destroyed: its last capability was closed"
        _fail_queue(self.senders, why, ST_PEER_CLOSED)
        _fail_queue(self.receivers, why, ST_PEER_CLOSED)
        for m in self.stored:
            (<Message>m).drop()
        self.stored.clear()
        self.owner.credit("buffer bytes", self.max_bytes)

    cdef bint has_room(self, Message m):
        if self.capacity >= 0 and len(self.stored) >= self.capacity:
            return False
        return self.stored_bytes + m.cost <= self.max_bytes

    cdef store(self, Message m):
        self.stored.append(m)
        self.stored_bytes += m.cost

    cdef list waiting(self):
        """Every message a receive may take, oldest first: stored, then waiting sends."""
        return list(self.stored) + [(<QueueOp>op).message for op in self.senders]


cdef Message _select(Queue q, int64_t selector, uint64_t flags):
    """The message msgrcv would take (see objects/queue.py), or None."""
    cdef Message m, best = None
    if selector == 0:   # the common case, without a scan
        if q.stored:
            return <Message>q.stored[0]
        return (<QueueOp>q.senders[0]).message if q.senders else None
    if selector > 0:
        for m in q.waiting():
            if _selects(m.mtype, selector, flags):
                return m
        return None
    for m in q.waiting():   # the first of the lowest type <= |selector|
        if m.mtype <= -selector and (best is None or m.mtype < best.mtype):
            best = m
    return best


cdef tuple _hand_over(Core k, Message m, ProcCore receiver):
    """Put `m`'s capabilities in `receiver`'s table: (their slots, kinds), (None, 0)
    if it carries none. If they do not fit, raises OpError and changes nothing."""
    if m.caps is not None:
        return _hand_over_held(m, receiver)
    cdef list carried = m.transfers or m.flight
    if not carried:
        return None, 0
    out = k._transfer(carried, m.sender, receiver)
    m.transfers = m.flight = None
    return out


cdef tuple _hand_over_held(Message m, ProcCore receiver):
    cdef list held = m.caps or []
    cdef Capability cap
    cdef CapTable table = receiver.caps
    cdef int live = 0, i
    cdef uint32_t kinds = 0
    for cap in held:
        live += cap.holder is m
    if table.count + live > table.limit:
        raise OpError(Status.NO_RESOURCES, "the receiver's capability table is full")
    slots = []
    for i in range(len(held)):
        cap = <Capability>held[i]
        if cap.holder is m:
            slots.append(table.insert(cap))   # its reference moves in with it
            kinds |= ((<KernelObject>cap.obj).kind & 0xF) << (4 * i)
        else:
            slots.append(0)   # revoked while stored: a hole (the client's None)
    m.caps = []
    return slots, kinds


cdef bint _deliver(Core k, ProcCore proc, uint64_t req_id, uint64_t max_size, uint64_t flags,
                   Message m) except -1:
    """Complete receive `req_id` of `proc` with `m`, or fail it if `m` is too long for
    it (TOO_LARGE) or its capabilities do not fit (NO_RESOURCES): `m` then stays
    where it was. True if `m` was taken."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(m.payload)
    if <uint64_t>n > max_size:
        if not flags & TRUNCATE:
            why = (f"the message of type {m.mtype} has {n} bytes, more than "
                   f"max_size {max_size}")
            proc.complete(OP_QUEUE_RECV, req_id, Status.TOO_LARGE, 0, 0, why.encode())
            return False
        n = max_size
    try:
        slots, kinds = _hand_over(k, m, proc)
    except OpError as e:
        proc.complete(OP_QUEUE_RECV, req_id, e.status, 0, 0, e.reason.encode())
        return False
    if slots is None:
        proc.post(OP_QUEUE_RECV, req_id, ST_OK, 0, m.mtype, PyBytes_AS_STRING(m.payload), n,
                  m.badge, m.sender)
    else:
        proc.post_caps(OP_QUEUE_RECV, req_id, 0, m.mtype, PyBytes_AS_STRING(m.payload), n,
                       m.badge, m.sender, slots, kinds)
    return True


cdef _take(Queue q, Message m):
    """Remove `m`, stored or a waiting sender's (which then completes), and let waiting
    senders' messages into the room it leaves, in order."""
    cdef QueueOp op
    if q.stored and q.stored[0] is m:   # the common case: the oldest
        q.stored.popleft()
        q.stored_bytes -= m.cost
    elif m in q.stored:
        q.stored.remove(m)
        q.stored_bytes -= m.cost
    else:
        for op in q.senders:
            if op.message is m:
                _sent(op)
                break
    while q.senders and q.has_room((<QueueOp>q.senders[0]).message):
        op = <QueueOp>q.senders[0]
        op.message.keep()
        q.store(op.message)
        _sent(op)


cdef _sent(QueueOp op):
    """A waiting send's message was delivered or stored: its capabilities went with
    it (finish() would otherwise give them back to the sender)."""
    op.transfers = None
    op.finish()
    op.proc.post(op.op, op.req_id, ST_OK, 0, 0, NULL, 0, 0, None)


cdef bint _offer(Core k, Queue q, Message m) except -1:
    """Hand `m` to the oldest waiting receiver it matches; True if one took it."""
    cdef QueueOp op
    for op in list(q.receivers):
        if not _selects(m.mtype, op.selector, op.flags):
            continue
        op.finish()
        if op.cap is not None and op.cap.holder is not op.proc.caps:
            op.proc.complete(op.op, op.req_id, Status.BAD_SLOT, 0, 0,
                             b"its capability was sent away")
        elif _deliver(k, op.proc, op.req_id, op.max_size, op.flags, m):
            return True
    return False


cdef list _carried(Core k, ProcCore proc, Header h, Capability cap):
    cdef list transfers = k._decode_transfers(proc, h, cap, R_GRANT)
    for carried, _ in transfers:
        if (<KernelObject>(<Capability>carried).obj).kind == KIND_QUEUE:
            raise OpError(
                Status.INVALID_ARGS,
                "a queue message cannot carry a queue capability (a queue that held "
                "itself could never be destroyed); send it through an endpoint",
            )
    return transfers


def queue_send(Core k, ProcCore proc, Header h):
    """QUEUE_SEND: the payload as a message of type `arg` (>= 1), with the
    capabilities it carries. Rights: SEND (and GRANT to carry capabilities)."""
    cdef Capability cap = k.lookup(proc, h.h.slot, KIND_QUEUE, R_SEND)
    cdef Queue q = <Queue>cap.obj
    cdef list transfers = _carried(k, proc, h, cap) if h.h.ncaps else None
    cdef QueueOp op
    cdef Py_ssize_t fits = min(<Py_ssize_t>MAX_PAYLOAD, q.max_bytes - _MESSAGE_OVERHEAD)
    if not 0 < h.h.arg <= MAX_QUEUE_TYPE:
        raise OpError(Status.INVALID_ARGS, f"type must be 1 to {MAX_QUEUE_TYPE}")
    if <Py_ssize_t>h.h.payload_len > fits:
        raise OpError(
            Status.TOO_LARGE,
            f"{h.h.payload_len} bytes never fit this queue "
            f"(max_bytes {q.max_bytes}, {_MESSAGE_OVERHEAD} of them per message)",
        )
    cdef Message m = Message(h.h.arg, proc.sq.payload(h), cap.badge, proc, transfers)
    if _offer(k, q, m):
        proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, 0, NULL, 0, 0, None)
    elif not q.senders and q.has_room(m):
        m.keep()
        q.store(m)
        proc.post(h.h.opcode, h.h.req_id, ST_OK, 0, 0, NULL, 0, 0, None)
    elif k.expired(h.h.deadline):
        why = "no receiver waits" if q.capacity == 0 else "the queue is full"
        raise OpError(Status.TIMED_OUT, why)
    else:
        op = _new_op(proc, h, cap)
        _hold(proc, op, PyBytes_GET_SIZE(m.payload))   # counted as a waiting endpoint send's
        op.message = m
        if transfers:   # moves locked, copies made: as a waiting endpoint send's
            op.transfers = m.flight = _in_flight(transfers, proc)
            m.transfers = None
        op.enqueue(q.senders)
        k.timers.arm(op)


def queue_recv(Core k, ProcCore proc, Header h):
    """QUEUE_RECV: take a message as msgrcv(2) selects it; the payload holds the
    selector, max_size and flags. Completes with the message, its type in `arg`.
    Rights: RECEIVE."""
    cdef Capability cap = k.lookup(proc, h.h.slot, KIND_QUEUE, R_RECEIVE)
    cdef Queue q = <Queue>cap.obj
    cdef bytes raw = proc.sq.payload(h)
    cdef int64_t selector
    cdef uint64_t max_size, flags
    cdef QueueOp op
    if PyBytes_GET_SIZE(raw) != _PARAMS.size:
        raise OpError(Status.INVALID_ARGS, f"parameters take {_PARAMS.size} bytes")
    selector, max_size, flags = _PARAMS.unpack(raw)
    if flags & ~(TRUNCATE | EXCEPT):
        raise OpError(Status.INVALID_ARGS, f"unknown flags {flags:#x}")
    cdef Message m = _select(q, selector, flags)
    if m is not None:
        if _deliver(k, proc, h.h.req_id, max_size, flags, m):
            _take(q, m)
    elif k.expired(h.h.deadline):
        raise OpError(Status.TIMED_OUT, "no message of the type asked for")
    else:
        op = _new_op(proc, h, cap)
        op.selector, op.max_size, op.flags = selector, max_size, flags
        op.enqueue(q.receivers)
        k.timers.arm(op)
