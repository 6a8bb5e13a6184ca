"""KERNEL_STATUS: what `mkipc status` shows, the kernel's own ipcs(1).

Who holds what: each connected process's capabilities by kind, its waiting
operations, sessions, spawns and watches, and each uid's ledger against its bounds,
so that a ResourceLimitError can be traced to the processes behind it. Root and the
kernel's own uid see everything; any other uid sees its own processes and ledger
only (and how many it does not see), as ipcs shows a user only what it may read.
"""

from __future__ import annotations

import os
import time
from collections import Counter

from .. import abi
from .._core.kcore import (
    KIND_NAMES,
    Endpoint,
    KernelObject,
    Notification,
    Semaphore,
    live_objects,
)
from .._core.pipes import PipeEnd
from .._core.queues import Queue
from .objects.memory import MemoryObject
from .process import Proc
from .state import KernelState

MAX_LISTED = 1024
"""Processes or objects one answer lists at most (the rest are counted); fewer when
that many would not fit in one completion (kernel.MAX_PAYLOAD)."""

STARTED = time.monotonic()


def encoded_status(k: KernelState, asker: Proc) -> bytes:
    """KERNEL_STATUS's answer, listing as much as fits in one completion."""
    listed = MAX_LISTED
    while True:
        payload = abi.encode_status(kernel_status(k, asker, listed))
        if len(payload) <= abi.MAX_PAYLOAD or listed == 0:
            return payload
        listed //= 2


def kernel_status(k: KernelState, asker: Proc, listed: int = MAX_LISTED) -> abi.KernelStatus:
    sees_all = asker.uid in (0, os.geteuid())
    procs = [p for p in k.procs.values() if sees_all or p.uid == asker.uid]
    shown = procs[:listed]
    uids = sorted(k.users.by_uid) if sees_all else [asker.uid]
    fds = k.users.descriptors
    objects = _objects(shown)
    return abi.KernelStatus(
        pid=os.getpid(),
        uid=os.geteuid(),
        uptime_s=round(time.monotonic() - STARTED, 3),
        live_objects=live_objects(),
        processes=[_process(k, p) for p in shown],
        hidden=len(k.procs) - len(shown),
        users=[_user(k, uid) for uid in uids],
        descriptors=fds.in_use(),
        descriptor_limit=-1 if fds.limit is None else fds.limit,
        descriptor_reserve=fds.reserve,
        objects=objects[:listed],
        objects_hidden=max(0, len(objects) - listed),
    )


def _process(k: KernelState, p: Proc) -> abi.ProcessStatus:
    bundle = k.bundles.get(p.claimed_token or "")
    parent = bundle.owner if bundle is not None else None
    kinds = Counter(KIND_NAMES[cap.obj.kind] for cap in p.caps)
    return abi.ProcessStatus(
        conn=p.ident,
        pid=p.pid,
        uid=p.uid,
        gid=p.gid,
        parent=parent.ident if parent is not None and parent.alive else 0,
        name_server=bundle is not None and bundle.owner is None,
        caps=dict(sorted(kinds.items())),
        pending=len(p.pending),
        sessions=len(p.sessions),
        spawned=p.bundles,
        watched=p.ledger.used["watched processes"],
    )


def _user(k: KernelState, uid: int) -> abi.UserStatus:
    ledger = k.users.ledger(uid)
    return abi.UserStatus(uid, dict(ledger.used), dict(ledger.limits))


def _objects(procs: list[Proc]) -> list[abi.ObjectStatus]:
    """The objects the processes shown hold capabilities to (replies aside: they
    live for one call), oldest first."""
    held: dict[int, tuple[KernelObject, list[int]]] = {}
    for p in procs:
        for cap in p.caps:
            if cap.obj.kind == abi.ObjectKind.REPLY:
                continue
            obj, holders = held.setdefault(id(cap.obj), (cap.obj, []))
            if not holders or holders[-1] != p.ident:
                holders.append(p.ident)
    return [
        abi.ObjectStatus(obj.oid, KIND_NAMES[obj.kind], holders, obj.refs, _state(obj))
        for obj, holders in sorted(held.values(), key=lambda entry: entry[0].oid)
    ]


def _state(obj: KernelObject) -> dict[str, int]:
    """What an object holds and has waiting (waiting ops include any a revocation
    has doomed: they fail when their turn comes). A queue's `used_bytes` is what
    counts against its `max_bytes`: payloads, and 64 bytes per message and per
    capability carried."""
    if isinstance(obj, Endpoint):
        return {"senders": len(obj.senders), "receivers": len(obj.receivers),
                "bound": int(obj.bound is not None)}  # fmt: skip
    if isinstance(obj, Notification):
        return {"set": int(obj.word != 0), "waiters": len(obj.waiters)}
    if isinstance(obj, Semaphore):
        return {"value": obj.value, "waiters": len(obj.waiters)}
    if isinstance(obj, Queue):
        return {"messages": len(obj.stored), "capacity": obj.capacity,
                "used_bytes": obj.stored_bytes, "max_bytes": obj.max_bytes,
                "senders": len(obj.senders), "receivers": len(obj.receivers)}  # fmt: skip
    if isinstance(obj, PipeEnd):
        pipe = obj.pipe
        return {"buffered": len(pipe.buffer), "capacity": pipe.capacity,
                "readers": len(pipe.readers), "writers": len(pipe.writers)}  # fmt: skip
    if isinstance(obj, MemoryObject):
        return {"size": obj.size}
    return {}
