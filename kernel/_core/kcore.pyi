# Stub for the compiled kernel._core.kcore (see kcore.pyx / kcore.pxd).
from collections import deque
from collections.abc import Callable
from typing import Any, Self

from typing_extensions import disjoint_base

from capabilities._table import Capability, CapTable
from kernel._core.ring import Header, Ring

KIND_NAMES: dict[int, str]

def live_objects() -> int: ...

class OpError(Exception):
    status: int
    reason: str
    def __init__(self, status: int, reason: str) -> None: ...

@disjoint_base
class KernelObject:
    refs: int
    kind: int
    oid: int
    ledger: Any  # kernel.daemon.quota.Ledger of its creator's uid, or None
    def destroy(self) -> None: ...

@disjoint_base
class Endpoint(KernelObject):
    senders: deque[Pending]
    receivers: deque[Pending]
    bound: Notification | None
    def __init__(self) -> None: ...

@disjoint_base
class Notification(KernelObject):
    word: int
    waiters: deque[Pending]
    bound_to: Endpoint | None
    def __init__(self) -> None: ...

@disjoint_base
class Semaphore(KernelObject):
    value: int
    waiters: deque[Pending]
    def __init__(self, value: int) -> None: ...

@disjoint_base
class Reply(KernelObject):
    caller: Pending | None
    gone_reason: str
    watch: tuple[Endpoint, int] | None
    def __init__(self) -> None: ...
    def abandon(self, reason: str) -> None: ...

@disjoint_base
class InFlight:
    @property
    def sender(self) -> ProcCore: ...
    def __init__(self, sender: ProcCore) -> None: ...
    def discard(self, cap: Capability, why: str) -> None: ...

@disjoint_base
class Pending:
    proc: ProcCore
    req_id: int
    op: int
    deadline: int
    slot: int
    payload: bytes
    badge: int
    is_call: bool
    queue: deque[Pending] | None
    reply: Reply | None
    phase: int
    transfers: (
        list[tuple[Capability, InFlight | None]] | None
    )  # a waiting message's: (cap, None: moved, locked; InFlight: a copy made at send)
    grant: bool
    cap: Capability | None
    msg_flags: int
    held: int
    def __init__(
        self, proc: ProcCore, req_id: int, op: int, deadline: int, slot: int = 0
    ) -> None: ...
    def enqueue(self, queue: deque[Self]) -> None: ...
    def dequeue(self) -> None: ...
    def finish(self) -> None: ...

@disjoint_base
class ProcCore:
    ident: int
    pid: int
    uid: int
    gid: int
    sq: Ring
    cq: Ring
    caps: CapTable
    pending: dict[int, Pending]
    overflow: deque[tuple[Any, ...]]
    overflow_bytes: int
    held_bytes: int
    alive: bool
    dirty: bool
    doomed: str | None
    cq_efd: int
    @property
    def creds(self) -> tuple[int, int, int]: ...
    def complete(
        self,
        opcode: int,
        req_id: int,
        status: int,
        slot: int = 0,
        arg: int = 0,
        payload: bytes = b"",
        badge: int = 0,
        sender: ProcCore | None = None,
        slots: list[int] | None = None,
        kinds: int = 0,
    ) -> None: ...

@disjoint_base
class Core:
    timers: Any
    clock: Callable[[], int]
    cold: dict[int, Callable[..., None]]  # handler(k, proc, h), typed by its module
    def expired(self, deadline: int) -> bool: ...
    def lookup(self, proc: ProcCore, slot: int, kind: int, right: int) -> Capability: ...
    def insert_cap(self, proc: ProcCore, cap: Capability) -> int: ...
    def remove_cap(self, proc: ProcCore, slot: int, why: str) -> Capability: ...
    def release(self, obj: KernelObject) -> None: ...
    def abandon(self, op: Pending, why: str) -> None: ...
    def signal_bound(self, n: Notification) -> bool: ...
    def kernel_signal(self, n: Notification, bits: int) -> None: ...
    def kernel_send(
        self, ep: Endpoint, badge: int, payload: bytes, flags: int = ...
    ) -> Pending | None: ...
    trouble: list[tuple[Any, str]]  # (the daemon's Proc, why it must go)
    last_work: int  # CLOCK_MONOTONIC ns of the last work; spans pump() calls
    def drain(self, proc: ProcCore) -> int: ...
    def pump(self, procs: list[ProcCore], idle_ns: int, slice_ns: int) -> int: ...
    def ring_doorbells(self, procs: list[ProcCore]) -> int: ...
