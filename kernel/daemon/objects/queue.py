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

Capabilities travel in messages through a queue capability with GRANT (DESIGN §5),
moved, copied or minted as through an endpoint. A stored message outlives its
sender, so it holds them itself (it is their holder, as a table is): a move leaves
the sender's table when the message is stored, a copy is made then. A waiting send
keeps them as a waiting endpoint send does (moves locked in the sender's table,
copies in flight), so a send that fails leaves them with the sender. Revoking one
held by a stored message leaves a hole: the receiver gets None in its place, so the
others keep their positions. Queue capabilities never travel in queue messages: a
queue holding a capability to itself (or two holding each other's) could never be
destroyed, and the kernel has no collector for such cycles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from capabilities import DEFAULT_QUEUE_RIGHTS, Capability, Rights
from capabilities.table import derive

from ... import abi
from ..._core.kcore import (
    KernelObject,
    OpError,
    ProcCore,
    drop_carried,
    fail_waiters,
    hold,
    in_flight,
)
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


CAP_OVERHEAD = 64
"""Bytes each capability a stored message holds counts towards the queue's bound."""

Transfers = list[tuple[Capability, Any]]  # kcore's: (cap, how it travels)


class Message:
    """One message. The capabilities it carries are in exactly one place: `transfers`
    while its send is being handled (checked, not taken yet), its waiting send's
    `flight` (Pending.transfers), or `caps` once stored (held here)."""

    __slots__ = ("mtype", "payload", "badge", "sender", "cost", "transfers", "flight", "caps")

    def __init__(
        self, mtype: int, payload: bytes, badge: int, sender: ProcCore, transfers: Transfers | None
    ) -> None:
        self.mtype, self.payload, self.badge, self.sender = mtype, payload, badge, sender
        self.cost = len(payload) + MESSAGE_OVERHEAD + CAP_OVERHEAD * len(transfers or ())
        self.transfers = transfers
        self.flight: Transfers | None = None
        self.caps: list[Capability] | None = None

    def keep(self) -> None:
        """The message is stored: take its capabilities from the sender (a move) or
        make them (a copy), and hold them."""
        carried = self.transfers or self.flight
        if not carried:
            return
        held = []
        for cap, how in carried:
            if how is None:  # a move, from the sender's table (locked there if it waited)
                cap.in_transit = False
                self.sender.caps.remove(cap.slot, "was sent away in a queue message")
            elif isinstance(how, tuple):  # a copy or mint not made yet
                cap = derive(cap, *how)
                cap.obj.refs += 1
            cap.holder = self  # (else a copy made when its send began to wait)
            held.append(cap)
        self.caps, self.transfers, self.flight = held, None, None

    def discard(self, cap: Capability, why: str) -> None:
        """Revocation reached a capability this message holds (revoke() releases its
        reference): the message keeps a hole in its place."""
        cap.holder = None

    def drop(self) -> None:
        """The stored message goes undelivered (its queue was destroyed)."""
        for cap in self.caps or ():
            if cap.holder is self:
                drop_carried(cap)
        self.caps = None


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
        for m in self.stored:
            m.drop()
        self.stored.clear()
        self.owner.credit("buffer bytes", self.max_bytes)

    def has_room(self, m: Message) -> bool:
        if self.capacity >= 0 and len(self.stored) >= self.capacity:
            return False
        return self.stored_bytes + m.cost <= self.max_bytes

    def store(self, m: Message) -> None:
        self.stored.append(m)
        self.stored_bytes += m.cost

    def waiting(self) -> Iterator[Message]:
        """Every message a receive may take, oldest first: stored, then waiting sends."""
        yield from self.stored
        for op in self.senders:
            assert op.message is not None
            yield op.message


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


def _hand_over(k: KernelState, m: Message, receiver: ProcCore) -> tuple[list[int] | None, int]:
    """Put `m`'s capabilities in `receiver`'s table: (their slots, kinds), (None, 0)
    if it carries none. If they do not fit, raises OpError and changes nothing."""
    if m.caps is not None:
        return _hand_over_held(m, receiver)
    carried = m.transfers or m.flight
    if not carried:
        return None, 0
    slots, kinds = k.hand_over(carried, m.sender, receiver)
    m.transfers = m.flight = None
    return slots, kinds


def _hand_over_held(m: Message, receiver: ProcCore) -> tuple[list[int], int]:
    held = m.caps or []
    if receiver.caps.count + sum(cap.holder is m for cap in held) > receiver.caps.limit:
        raise OpError(Status.NO_RESOURCES, "the receiver's capability table is full")
    slots, kinds = [], 0
    for i, cap in enumerate(held):
        if cap.holder is m:
            slots.append(receiver.caps.insert(cap))  # its reference moves in with it
            kinds |= (cap.obj.kind & 0xF) << (4 * i)
        else:
            slots.append(0)  # revoked while stored: a hole (the client's None)
    m.caps = []
    return slots, kinds


def _deliver(
    k: KernelState, proc: ProcCore, req_id: int, max_size: int, flags: int, m: Message
) -> bool:
    """Complete receive `req_id` of `proc` with `m`, or fail it if `m` is too long for
    it (TOO_LARGE) or its capabilities do not fit (NO_RESOURCES): `m` then stays
    where it was. True if `m` was taken."""
    payload = m.payload
    if len(payload) > max_size and not flags & abi.QUEUE_TRUNCATE:
        why = f"the message of type {m.mtype} has {len(payload)} bytes, more than max_size"
        proc.complete(Op.QUEUE_RECV, req_id, Status.TOO_LARGE, payload=f"{why} {max_size}".encode())
        return False
    try:
        slots, kinds = _hand_over(k, m, proc)
    except OpError as e:
        proc.complete(Op.QUEUE_RECV, req_id, e.status, payload=e.reason.encode())
        return False
    proc.complete(
        Op.QUEUE_RECV,
        req_id,
        Status.OK,
        arg=m.mtype,
        payload=payload[:max_size],
        badge=m.badge,
        sender=m.sender,
        slots=slots,
        kinds=kinds,
    )
    return True


def _take(q: Queue, m: Message) -> None:
    """Remove `m`, stored or a waiting sender's (which then completes), and let waiting
    senders' messages into the room it leaves, in order."""
    if q.stored and q.stored[0] is m:  # the common case: the oldest
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
    while q.senders and q.has_room(q.senders[0].message):  # type: ignore[arg-type]
        op = q.senders[0]
        assert op.message is not None
        op.message.keep()
        q.store(op.message)
        _sent(op)


def _sent(op: QueueOp) -> None:
    """A waiting send's message was delivered or stored: its capabilities went with
    it (finish() would otherwise give them back to the sender)."""
    op.transfers = None
    op.finish()
    op.proc.complete(op.op, op.req_id, Status.OK)


def _offer(k: KernelState, q: Queue, m: Message) -> bool:
    """Hand `m` to the oldest waiting receiver it matches; True if one took it."""
    for op in list(q.receivers):
        if not abi.queue_selects(m.mtype, op.selector, op.flags):
            continue
        op.finish()
        if op.cap is not None and op.cap.holder is not op.proc.caps:
            op.proc.complete(
                op.op, op.req_id, Status.BAD_SLOT, payload=b"its capability was sent away"
            )
        elif _deliver(k, op.proc, op.req_id, op.max_size, op.flags, m):
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
    proc.charge("buffer bytes", max_bytes)
    slot = k.new_object(proc, Queue(capacity, max_bytes, proc), DEFAULT_QUEUE_RIGHTS)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)


def _carried(k: KernelState, proc: Proc, h: Header, cap: Capability) -> Transfers:
    transfers: Transfers = k.carried(proc, h, cap)
    for carried, _ in transfers:
        if carried.obj.kind == abi.ObjectKind.QUEUE:
            raise OpError(
                Status.INVALID_ARGS,
                "a queue message cannot carry a queue capability (a queue that held "
                "itself could never be destroyed); send it through an endpoint",
            )
    return transfers


def queue_send(k: KernelState, proc: Proc, h: Header) -> None:
    """QUEUE_SEND: the payload as a message of type `arg` (>= 1), with the
    capabilities it carries. Rights: SEND (and GRANT to carry capabilities)."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.QUEUE, Rights.SEND)
    q = cap.obj
    assert isinstance(q, Queue)
    transfers = _carried(k, proc, h, cap) if h.ncaps else None
    if not 0 < h.arg <= abi.MAX_QUEUE_TYPE:
        raise OpError(Status.INVALID_ARGS, f"type must be 1 to {abi.MAX_QUEUE_TYPE}")
    if h.payload_len > min(abi.MAX_PAYLOAD, q.max_bytes - MESSAGE_OVERHEAD):
        raise OpError(
            Status.TOO_LARGE,
            f"{h.payload_len} bytes never fit this queue "
            f"(max_bytes {q.max_bytes}, {MESSAGE_OVERHEAD} of them per message)",
        )
    m = Message(h.arg, proc.sq.payload(h), cap.badge, proc, transfers)
    if _offer(k, q, m):
        proc.complete(h.opcode, h.req_id, Status.OK)
    elif not q.senders and q.has_room(m):
        m.keep()
        q.store(m)
        proc.complete(h.opcode, h.req_id, Status.OK)
    elif k.expired(h.deadline):
        why = "no receiver waits" if q.capacity == 0 else "the queue is full"
        raise OpError(Status.TIMED_OUT, why)
    else:
        op = QueueOp(proc, h.req_id, h.opcode, h.deadline)
        hold(proc, op, len(m.payload))  # counted as a waiting endpoint send's is
        op.message, op.cap = m, cap
        if transfers:  # moves locked, copies made: as a waiting endpoint send's
            op.transfers = m.flight = in_flight(transfers, proc)
            m.transfers = None
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
        if _deliver(k, proc, h.req_id, max_size, flags, m):
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
