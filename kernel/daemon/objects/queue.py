"""Message queues (DESIGN §4): System V's msgsnd/msgrcv, rebuilt on capabilities.

An indirect mailbox of typed messages. `capacity` bounds the messages it stores (0: a
rendezvous, a send waits for a receiver; -1: only the byte bound), `max_bytes` their
size, reserved against the creator's quota when the queue is made, as System V's
msg_qbytes is. A full queue makes senders wait, in order; an empty one (for the type
asked) makes receivers wait. What System V lacks: every wait has a deadline, and a
waiter whose capability is revoked fails at once.

Receive selects as msgrcv(2) does: type 0 takes the first message, t > 0 the first of
type t (with EXCEPT, the first of another type), t < 0 the first of the lowest type
<= |t|. A message longer than the receiver's max_size fails the receive (TOO_LARGE:
System V's E2BIG) and stays queued, unless TRUNCATE (MSG_NOERROR) cuts it.

Invariant: no waiting receiver matches a stored message or a waiting sender's (each
receive looks at both before it waits, and each send offers itself to the receivers
first), so handing a new message straight to a receiver never overtakes an older one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from capabilities import DEFAULT_QUEUE_RIGHTS, Rights

from ... import abi
from ..._core.kcore import KernelObject, OpError, ProcCore, fail_waiters, hold
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..pending import Pending
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState

MESSAGE_OVERHEAD = 64
"""Bytes each stored message counts beyond its payload (the kernel's bookkeeping),
so a queue of empty messages is bounded too."""


class Message:
    __slots__ = ("mtype", "payload", "badge", "sender")

    def __init__(self, mtype: int, payload: bytes, badge: int, sender: ProcCore) -> None:
        self.mtype, self.payload, self.badge, self.sender = mtype, payload, badge, sender


class QueueOp(Pending):
    """A send or receive waiting on a queue: a send's message, a receive's selection."""

    message: Message | None = None
    selector = 0
    max_size = 0
    flags = 0


class Queue(KernelObject):
    def __init__(self, capacity: int, max_bytes: int, owner: Proc) -> None:
        """`owner` has reserved `max_bytes` (Proc.reserve); destroy() gives them back."""
        self.kind = abi.ObjectKind.QUEUE
        self.capacity, self.max_bytes, self.owner = capacity, max_bytes, owner
        self.stored: deque[Message] = deque()
        self.stored_bytes = 0
        self.senders: deque[QueueOp] = deque()
        self.receivers: deque[QueueOp] = deque()

    def destroy(self) -> None:
        why = b"the queue was destroyed: its last capability was closed"
        fail_waiters(self.senders, why)
        fail_waiters(self.receivers, why)
        self.stored.clear()
        self.owner.unreserve(self.max_bytes)

    def has_room(self, m: Message) -> bool:
        if self.capacity >= 0 and len(self.stored) >= self.capacity:
            return False
        return self.stored_bytes + _cost(m) <= self.max_bytes

    def store(self, m: Message) -> None:
        self.stored.append(m)
        self.stored_bytes += _cost(m)

    def waiting(self) -> Iterator[Message]:
        """Every message a receive may take, oldest first: stored, then waiting sends."""
        yield from self.stored
        for op in self.senders:
            assert op.message is not None
            yield op.message


def _cost(m: Message) -> int:
    return len(m.payload) + MESSAGE_OVERHEAD


def _select(q: Queue, selector: int, flags: int) -> Message | None:
    """The message msgrcv would take (see the module's docstring), or None."""
    if selector == 0:  # the common case, without a scan
        if q.stored:
            return q.stored[0]
        return q.senders[0].message if q.senders else None
    if selector > 0:
        return next((m for m in q.waiting() if abi.queue_selects(m.mtype, selector, flags)), None)
    best: Message | None = None
    for m in q.waiting():  # the first of the lowest type <= |selector|
        if m.mtype <= -selector and (best is None or m.mtype < best.mtype):
            best = m
    return best


def _deliver(proc: ProcCore, req_id: int, max_size: int, flags: int, m: Message) -> bool:
    """Complete receive `req_id` of `proc` with `m`, or fail it if `m` is too long for
    it (TOO_LARGE: `m` stays where it was). True if `m` was taken."""
    payload = m.payload
    if len(payload) > max_size:
        if not flags & abi.QUEUE_TRUNCATE:
            proc.complete(
                Op.QUEUE_RECV,
                req_id,
                Status.TOO_LARGE,
                payload=f"the message of type {m.mtype} has {len(payload)} "
                f"bytes, more than max_size {max_size}".encode(),
            )
            return False
        payload = payload[:max_size]
    proc.complete(
        Op.QUEUE_RECV,
        req_id,
        Status.OK,
        arg=m.mtype,
        payload=payload,
        badge=m.badge,
        sender=m.sender,
    )
    return True


def _take(q: Queue, m: Message) -> None:
    """Remove `m`, stored or a waiting sender's (which then completes), and let waiting
    senders' messages into the room it leaves, in order."""
    if q.stored and q.stored[0] is m:  # the common case: the oldest
        q.stored.popleft()
        q.stored_bytes -= _cost(m)
    elif m in q.stored:
        q.stored.remove(m)
        q.stored_bytes -= _cost(m)
    else:
        for op in q.senders:
            if op.message is m:
                op.finish()
                op.proc.complete(op.op, op.req_id, Status.OK)
                break
    while q.senders and q.has_room(q.senders[0].message):  # type: ignore[arg-type]
        op = q.senders[0]
        assert op.message is not None
        q.store(op.message)
        op.finish()
        op.proc.complete(op.op, op.req_id, Status.OK)


def _offer(q: Queue, m: Message) -> bool:
    """Hand `m` to the oldest waiting receiver it matches; True if one took it."""
    for op in list(q.receivers):
        if not abi.queue_selects(m.mtype, op.selector, op.flags):
            continue
        op.finish()
        if op.cap is not None and op.cap.holder is not op.proc.caps:
            op.proc.complete(
                op.op, op.req_id, Status.BAD_SLOT, payload=b"its capability was sent away"
            )
        elif _deliver(op.proc, op.req_id, op.max_size, op.flags, m):
            return True
    return False


# ------------------------------------------------------------------ handlers


def queue_create(k: KernelState, proc: Proc, h: Header) -> None:
    """QUEUE_CREATE: `arg` is the capacity in messages (QUEUE_UNBOUNDED: none but the
    byte bound), the 8-byte payload the byte bound."""
    capacity = -1 if h.arg == abi.QUEUE_UNBOUNDED else h.arg
    raw = proc.sq.payload(h)
    if len(raw) != 8:
        raise OpError(Status.INVALID_ARGS, "max_bytes must be 8 bytes")
    max_bytes = int.from_bytes(raw, "little")
    if not 0 <= capacity <= abi.MAX_QUEUE_CAPACITY and capacity != -1:
        raise OpError(
            Status.INVALID_ARGS,
            f"capacity must be 0 to {abi.MAX_QUEUE_CAPACITY}, or unbounded",
        )
    if not 0 < max_bytes <= abi.MAX_QUEUE_BYTES:
        raise OpError(Status.INVALID_ARGS, f"max_bytes must be 1 to {abi.MAX_QUEUE_BYTES}")
    proc.reserve(max_bytes)
    slot = k.new_object(proc, Queue(capacity, max_bytes, proc), DEFAULT_QUEUE_RIGHTS)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)


def queue_send(k: KernelState, proc: Proc, h: Header) -> None:
    """QUEUE_SEND: the payload as a message of type `arg` (>= 1). Rights: SEND."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.QUEUE, Rights.SEND)
    q = cap.obj
    assert isinstance(q, Queue)
    if h.ncaps:
        raise OpError(Status.NOT_SUPPORTED, "queues carry no capabilities")
    if not 0 < h.arg <= abi.MAX_QUEUE_TYPE:
        raise OpError(Status.INVALID_ARGS, f"type must be 1 to {abi.MAX_QUEUE_TYPE}")
    if h.payload_len > min(abi.MAX_PAYLOAD, q.max_bytes - MESSAGE_OVERHEAD):
        raise OpError(
            Status.TOO_LARGE,
            f"{h.payload_len} bytes never fit this queue "
            f"(max_bytes {q.max_bytes}, {MESSAGE_OVERHEAD} of them per message)",
        )
    m = Message(h.arg, proc.sq.payload(h), cap.badge, proc)
    if _offer(q, m):
        proc.complete(h.opcode, h.req_id, Status.OK)
    elif not q.senders and q.has_room(m):
        q.store(m)
        proc.complete(h.opcode, h.req_id, Status.OK)
    elif k.expired(h.deadline):
        why = "no receiver waits" if q.capacity == 0 else "the queue is full"
        raise OpError(Status.TIMED_OUT, why)
    else:
        op = QueueOp(proc, h.req_id, h.opcode, h.deadline)
        hold(proc, op, len(m.payload))  # counted as a waiting endpoint send's is
        op.message, op.cap = m, cap
        op.enqueue(q.senders)
        k.timers.arm(op)


def queue_recv(k: KernelState, proc: Proc, h: Header) -> None:
    """QUEUE_RECV: take a message as msgrcv(2) selects it; the payload holds the
    selector, max_size and flags. Completes with the message, its type in `arg`.
    Rights: RECEIVE."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.QUEUE, Rights.RECEIVE)
    q = cap.obj
    assert isinstance(q, Queue)
    raw = proc.sq.payload(h)
    if len(raw) != abi.QUEUE_RECV_PARAMS.size:
        raise OpError(Status.INVALID_ARGS, f"parameters take {abi.QUEUE_RECV_PARAMS.size} bytes")
    selector, max_size, flags = abi.QUEUE_RECV_PARAMS.unpack(raw)
    if flags & ~(abi.QUEUE_TRUNCATE | abi.QUEUE_EXCEPT):
        raise OpError(Status.INVALID_ARGS, f"unknown flags {flags:#x}")
    m = _select(q, selector, flags)
    if m is not None:
        if _deliver(proc, h.req_id, max_size, flags, m):
            _take(q, m)
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "no message of the type asked for")
    else:
        op = QueueOp(proc, h.req_id, h.opcode, h.deadline)
        op.selector, op.max_size, op.flags, op.cap = selector, max_size, flags, cap
        op.enqueue(q.receivers)
        k.timers.arm(op)


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.QUEUE_CREATE: queue_create,
    Op.QUEUE_SEND: queue_send,
    Op.QUEUE_RECV: queue_recv,
}
