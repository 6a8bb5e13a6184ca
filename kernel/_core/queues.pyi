# Stub for the compiled kernel._core.queues (see queues.pyx).
from collections import deque
from typing import Any

from typing_extensions import disjoint_base

from capabilities._table import Capability
from kernel._core.kcore import Core, KernelObject, Pending, ProcCore
from kernel._core.ring import Header

MESSAGE_OVERHEAD: int
CAP_OVERHEAD: int

def selects(mtype: int, selector: int, flags: int) -> bool: ...

@disjoint_base
class Message:
    mtype: int
    payload: bytes
    badge: int
    sender: ProcCore
    cost: int
    transfers: list[tuple[Capability, Any]] | None
    flight: list[tuple[Capability, Any]] | None
    caps: list[Capability] | None
    def __init__(
        self,
        mtype: int,
        payload: bytes,
        badge: int,
        sender: ProcCore,
        transfers: list[tuple[Capability, Any]] | None,
    ) -> None: ...
    def keep(self) -> None: ...
    def discard(self, cap: Capability, why: str) -> None: ...
    def drop(self) -> None: ...

@disjoint_base
class QueueOp(Pending):
    message: Message | None
    selector: int
    max_size: int
    flags: int

@disjoint_base
class Queue(KernelObject):
    capacity: int
    max_bytes: int
    owner: Any  # the creating kernel.daemon.process.Proc
    stored: deque[Message]
    stored_bytes: int
    senders: deque[QueueOp]
    receivers: deque[QueueOp]
    def __init__(self, capacity: int, max_bytes: int, owner: Any) -> None: ...

def queue_send(k: Core, proc: ProcCore, h: Header) -> None: ...
def queue_recv(k: Core, proc: ProcCore, h: Header) -> None: ...
