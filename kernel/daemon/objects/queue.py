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

Send and receive, the message and the queue are compiled (kernel/_core/queues.pyx):
a round trip through a queue is four of them. Creation is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import DEFAULT_QUEUE_RIGHTS

from ... import abi
from ..._core.kcore import OpError
from ..._core.queues import Queue, queue_recv, queue_send
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState


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


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.QUEUE_CREATE: queue_create,
    Op.QUEUE_SEND: queue_send,
    Op.QUEUE_RECV: queue_recv,
}
