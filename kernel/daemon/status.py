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
from .._core.kcore import KIND_NAMES, live_objects
from .process import Proc
from .state import KernelState

MAX_LISTED = 1024
"""Processes one answer lists (the rest are counted in `hidden`): the answer must fit
in one completion (kernel.MAX_PAYLOAD)."""

STARTED = time.monotonic()


def kernel_status(k: KernelState, asker: Proc) -> abi.KernelStatus:
    sees_all = asker.uid in (0, os.geteuid())
    procs = [p for p in k.procs.values() if sees_all or p.uid == asker.uid]
    listed = procs[:MAX_LISTED]
    uids = sorted(k.users.by_uid) if sees_all else [asker.uid]
    fds = k.users.descriptors
    return abi.KernelStatus(
        pid=os.getpid(),
        uid=os.geteuid(),
        uptime_s=round(time.monotonic() - STARTED, 3),
        live_objects=live_objects(),
        processes=[_process(k, p) for p in listed],
        hidden=len(k.procs) - len(listed),
        users=[_user(k, uid) for uid in uids],
        descriptors=fds.in_use(),
        descriptor_limit=-1 if fds.limit is None else fds.limit,
        descriptor_reserve=fds.reserve,
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
