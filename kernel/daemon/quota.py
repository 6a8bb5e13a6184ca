"""What each process and each user may keep in the kernel (DESIGN §3: the kernel stays
up for everyone else).

Per-process bounds alone did not bound a user: a process may open more connections,
each with a fresh quota, and what it created outlives it in other processes' tables
(or in queue messages). So every charge also goes to the creator's uid, as Linux
charges POSIX message queues to the user (RLIMIT_MSGQUEUE) and System V bounds them
machine-wide. What a user's bounds protect is the kernel's heap (queue and pipe
buffers, objects) and its descriptors (a connection holds four, a session two, a
memory object or a watched process one), so that one user's runaway program or
hostile loop leaves room for the others. The kernel's own uid is bounded too: one
buggy program of the same user should not take the kernel down for its neighbours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .. import abi
from .._core.kcore import OpError
from ..errors import Status

PROCESS_LIMITS: Mapping[str, int] = {
    "buffer bytes": abi.MAX_RESERVED_BYTES,
    "memory bytes": abi.MAX_MEMORY_BYTES,
    "watched processes": abi.MAX_WATCHED_PROCESSES,
}
USER_LIMITS: Mapping[str, int] = {
    "connections": abi.MAX_CONNECTIONS_PER_UID,
    "sessions": abi.MAX_SESSIONS_PER_UID,
    "objects": abi.MAX_OBJECTS_PER_UID,
    "memory objects": abi.MAX_MEMORY_OBJECTS_PER_UID,
    "buffer bytes": abi.MAX_RESERVED_BYTES_PER_UID,
    "memory bytes": abi.MAX_MEMORY_BYTES_PER_UID,
    "watched processes": abi.MAX_WATCHED_PROCESSES_PER_UID,
}
_WHAT = {
    "buffer bytes": "of queue and pipe buffers",
    "memory bytes": "of memory objects",
}


DESCRIPTORS: Mapping[str, int] = {
    "connections": 4,  # its socket, ring memfd and two eventfds
    "sessions": 2,
    "memory objects": 1,
    "watched processes": 1,
}
"""Descriptors the kernel holds for each of these, whoever asked."""
KERNEL_OWN_DESCRIPTORS = 64
"""Kept out of every budget for the kernel itself: its listener, event loop, log,
a descriptor being handed over, a name server restarting."""
MAX_RESERVE = 256
"""Descriptors kept for root and the kernel's own uid (at most an eighth of the
budget): when other users hold all the rest, an administrator can still connect
and see who holds what (`mkipc status`)."""


class Ledger:
    """What one process or one uid holds, against its limits. A uid's ledger also
    knows the kernel's descriptor budget all uids share (`budget`)."""

    __slots__ = ("whose", "limits", "used", "uid", "budget")

    def __init__(
        self,
        whose: str,
        limits: Mapping[str, int],
        uid: int | None = None,
        budget: Descriptors | None = None,
    ) -> None:
        self.whose = whose
        self.limits = limits
        self.used = dict.fromkeys(limits, 0)
        self.uid, self.budget = uid, budget

    def __repr__(self) -> str:
        return f"<ledger of {self.whose}: {self.used}>"

    def object_gone(self) -> None:
        """An object charged here was destroyed (kcore's release calls this)."""
        self.used["objects"] -= 1


def charge(what: str, n: int, *ledgers: Ledger) -> None:
    """Add `n` of `what` to every ledger, or to none (NO_RESOURCES) if one would
    pass its limit, or the kernel's descriptors would run out for that uid."""
    for ledger in ledgers:
        limit = ledger.limits.get(what)
        if limit is not None and ledger.used[what] + n > limit:
            too_much = f"{ledger.whose} would have more than {_amount(what, limit)}"
            raise OpError(Status.NO_RESOURCES, too_much)
        if ledger.budget is not None and ledger.uid is not None and what in DESCRIPTORS:
            ledger.budget.check(DESCRIPTORS[what] * n, ledger.uid)
    for ledger in ledgers:
        if what in ledger.used:
            ledger.used[what] += n


def credit(what: str, n: int, *ledgers: Ledger) -> None:
    """Give back what `charge` took."""
    for ledger in ledgers:
        if what in ledger.used:
            ledger.used[what] -= n


def _amount(what: str, limit: int) -> str:
    if what not in _WHAT:
        return f"{limit} {what}"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if limit >= 1 << shift and not limit % (1 << shift):
            return f"{limit >> shift} {unit} {_WHAT[what]}"
    return f"{limit} bytes {_WHAT[what]}"


class Descriptors:
    """The kernel's descriptors, shared by all uids: each uid's bounds add up past
    them (four users at their defaults hold ~20,000), so the last few are kept for
    root and the kernel's own uid. What is in use is counted from the uids' ledgers
    (DESCRIPTORS), so it cannot drift from them; a check costs one pass over the
    uids, and only operations that take a descriptor make one."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self.limit: int | None = None  # None: not bounded (no daemon, as in unit tests)
        self.privileged = {0, os.geteuid()}

    def set_limit(self, nofile: int) -> None:
        """The process's RLIMIT_NOFILE, less what the kernel keeps for itself."""
        self.limit = max(0, nofile - KERNEL_OWN_DESCRIPTORS)

    @property
    def reserve(self) -> int:
        return 0 if self.limit is None else min(MAX_RESERVE, self.limit // 8)

    def in_use(self) -> int:
        return sum(DESCRIPTORS[w] * ledger.used[w]
                   for ledger in self.users.by_uid.values() for w in DESCRIPTORS)  # fmt: skip

    def check(self, n: int, uid: int) -> None:
        if self.limit is None:
            return
        budget = self.limit - (0 if uid in self.privileged else self.reserve)
        left = budget - self.in_use()
        if n > left:
            kept = "" if uid in self.privileged else f"; the last {self.reserve} are kept for root"
            raise OpError(Status.NO_RESOURCES, f"the kernel has {max(0, left)} descriptors "
                          f"left for uid {uid} and needs {n}{kept}")  # fmt: skip


class Users:
    """The uids' ledgers; one per uid that ever connected (uids are few)."""

    def __init__(self, limits: Mapping[str, int] | None = None) -> None:
        """`limits` replaces some of USER_LIMITS (`mkipc kernel --user-limit`)."""
        unknown = set(limits or ()) - set(USER_LIMITS)
        if unknown:
            raise ValueError(f"unknown user limits {sorted(unknown)}")
        self.limits = {**USER_LIMITS, **(limits or {})}
        self.by_uid: dict[int, Ledger] = {}
        self.descriptors = Descriptors(self)

    def ledger(self, uid: int) -> Ledger:
        ledger = self.by_uid.get(uid)
        if ledger is None:
            ledger = Ledger(f"uid {uid}", self.limits, uid, self.descriptors)
            self.by_uid[uid] = ledger
        return ledger
