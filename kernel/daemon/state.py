"""The kernel's tables and the rules that tie them together: processes, deadlines, death.

The per-message rules (lookup, refcounts, the endpoint and notification handlers)
are compiled in kernel/_core/kcore.pyx; this class extends that core.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Callable

from capabilities import (
    DEFAULT_ENDPOINT_RIGHTS,
    DEFAULT_QUEUE_RIGHTS,
    Capability,
    Rights,
    SlotError,
)
from capabilities.table import derive, descendants, unlink

from .. import abi
from .._core.kcore import (
    KIND_NAMES,
    Core,
    Endpoint,
    InFlight,
    KernelObject,
    Notification,
    OpError,
    Reply,
)
from .._core.queues import Queue
from ..errors import Status
from .exits import ExitWatches
from .pending import AWAIT_REPLY, WAITING, Pending, Timers
from .process import Proc
from .quota import Users, credit
from .sessions import SessionTable

log = logging.getLogger("mkipc.kernel")

MAX_MONITORS = 4096
"""Exit notices one process can have pending for others (CALLER_MONITOR)."""
MAX_BUNDLES = 4096
"""Spawns (inherit bundles) one process may have that it has not waited for: each
stays in the kernel until Process.wait() (or the parent's end), as a zombie does."""

_EXPIRED_REASON: dict[int, str] = {
    abi.Op.ENDPOINT_SEND: "no receiver took the message before the deadline",
    abi.Op.ENDPOINT_CALL: "no receiver took the call before the deadline",
    abi.Op.ENDPOINT_RECV: "no message arrived before the deadline",
    abi.Op.ENDPOINT_REPLY_RECV: "no message arrived before the deadline",
    abi.Op.NOTIFICATION_WAIT: "no signal arrived before the deadline",
    abi.Op.PROCESS_WAIT: "the process had not ended before the deadline",
    abi.Op.ENDPOINT_SESSION_OPEN: "no server accepted the session before the deadline",
    abi.Op.SEMAPHORE_WAIT: "the semaphore was not posted before the deadline",
    abi.Op.QUEUE_SEND: "the queue had no room before the deadline",
    abi.Op.QUEUE_RECV: "no message of the type asked for arrived before the deadline",
}


NAMES_CLIENT_RIGHTS = Rights.SEND | Rights.GRANT
"""Every process's capability to the name server: call it, and carry capabilities in
both directions (register moves one in, lookup's reply carries one back)."""


class _Unowned:
    """The owner of an object the kernel keeps for itself: charged to no uid."""

    def credit(self, what: str, n: int) -> None:
        pass


class Bundle:
    """Capabilities a parent hands to a child it spawns (DESIGN §2, inheritance).
    The kernel is the owner (None) of the name server's bundle."""

    def __init__(self, owner: Proc | None, caps: dict[str, Capability]) -> None:
        self.owner = owner
        self.caps = caps
        self.child: Proc | None = None
        self.child_gone = False
        self.waiters: deque[Pending] = deque()
        for cap in caps.values():
            cap.holder = self

    def discard(self, cap: Capability, why: str) -> None:
        """Revocation reached a capability still waiting for the child."""
        self.caps = {name: c for name, c in self.caps.items() if c is not cap}
        cap.holder = None


class KernelState(Core):
    def __init__(
        self, clock: Callable[[], int] = time.monotonic_ns, users: Users | None = None
    ) -> None:
        self.procs: dict[int, Proc] = {}
        self.timers = Timers()
        self.bundles: dict[str, Bundle] = {}
        self.clock = clock
        self.cold = {}
        self.trouble = []
        self.names_root: Capability | None = None  # the kernel's own, in no table
        self.names_store: Capability | None = None  # the name server's, across restarts
        self.sessions = SessionTable(self)
        self.users = users or Users()  # per-uid ledgers (quota.py)
        self.exits = ExitWatches(self.kernel_signal, self.release)  # PROCESS_MONITOR

    # ------------------------------------------------------------ the name server

    def enable_names(self) -> None:
        """Create the name server's endpoint; every process connecting from now on
        gets a capability to it in the well-known slot (DESIGN §2, §6)."""
        ep = Endpoint()
        ep.refs = 1  # the kernel's reference, dropped at shutdown
        self.names_root = Capability(ep, DEFAULT_ENDPOINT_RIGHTS)
        # Where the name server keeps its entries: the kernel holds it, so a name
        # server that dies leaves them to the one the kernel starts next, as
        # systemd keeps a service's fd store across its restarts.
        store = Queue(abi.NAMES_STORE_MESSAGES, abi.NAMES_STORE_BYTES, _Unowned())
        store.refs = 1
        self.names_store = Capability(store, DEFAULT_QUEUE_RIGHTS)

    def names_bundle(self) -> str:
        """The inherit token that gives a starting name server the endpoint with every
        right (receive included) and the store of its entries."""
        caps = {}
        for name, root in (("names", self.names_root), ("names.store", self.names_store)):
            assert root is not None
            root.obj.refs += 1
            caps[name] = derive(root, root.rights, 0)
        token = secrets.token_hex(16)
        self.bundles[token] = Bundle(None, caps)
        return token

    def drop_kernel_bundles(self) -> None:
        for token, bundle in list(self.bundles.items()):
            if bundle.owner is None:
                self.drop_bundle(token)

    def _give_names_cap(self, proc: Proc) -> int:
        if self.names_root is None:
            return 0
        slot = self.insert_cap(proc, derive(self.names_root, NAMES_CLIENT_RIGHTS, 0))
        assert slot == abi.NAMES_SLOT, f"the name server's slot is {slot:#x}"
        return slot

    # ------------------------------------------------------------ time

    def expire_due(self) -> int:
        due = self.timers.next_deadline()
        if due is None or due > self.clock():
            return 0
        ops = self.timers.pop_expired(self.clock())
        for op in ops:
            self._expire(op)
        return len(ops)

    def _expire(self, op: Pending) -> None:
        own = getattr(op, "expire", None)  # an object's own rule (a pipe's short write)
        if own is not None:
            own()
            return
        if op.phase == AWAIT_REPLY:
            reason = "the server did not reply before the deadline"
        else:
            reason = _EXPIRED_REASON.get(op.op, "the deadline passed")
        self.abandon(op, "its caller timed out")
        op.proc.complete(op.op, op.req_id, Status.TIMED_OUT, payload=reason.encode())
        if op.op == abi.Op.ENDPOINT_SESSION_OPEN:
            self.sessions.opening_ended(op)

    # ------------------------------------------------------------ capabilities

    def new_object(self, proc: Proc, obj: KernelObject, rights: int) -> int:
        """Name a new object in `proc`'s table; it counts against the uid's objects
        until it is destroyed (quota.py)."""
        try:
            proc.charge("objects", 1)
        except OpError:
            self.release_unnamed(obj)  # uncounted: its destroy() undoes the rest
            raise
        obj.ledger = proc.user
        try:
            return self.insert_cap(proc, Capability(obj, rights))
        except SlotError as e:
            self.release_unnamed(obj)
            raise OpError(Status.NO_RESOURCES, e.reason) from None

    def release_unnamed(self, obj: KernelObject) -> None:
        """Drop an object no capability ever named (its creation failed)."""
        obj.refs += 1
        self.release(obj)

    # ------------------------------------------------------------ processes

    def check_token(self, token: str | None) -> None:
        if token is None:
            return
        bundle = self.bundles.get(token)
        if bundle is None or bundle.child is not None:
            raise OpError(Status.INVALID_ARGS, "unknown or already used inherit token")

    def add_proc(self, proc: Proc, token: str | None) -> dict[str, abi.InheritedCap]:
        proc.names_slot = self._give_names_cap(proc)  # first: it has the well-known slot
        inherited = self._claim(proc, token) if token else {}
        self.procs[proc.ident] = proc
        return inherited

    def _claim(self, proc: Proc, token: str) -> dict[str, abi.InheritedCap]:
        self.check_token(token)
        bundle = self.bundles[token]
        out = {}
        for name, cap in bundle.caps.items():
            slot = proc.caps.insert(cap)  # the bundle's reference moves into the table
            out[name] = abi.InheritedCap(slot, KIND_NAMES[cap.obj.kind], cap.rights)
        bundle.caps = {}
        bundle.child = proc
        proc.claimed_token = token
        return out

    def check_bundle_room(self, owner: Proc) -> None:
        if owner.bundles >= MAX_BUNDLES:
            raise OpError(
                Status.NO_RESOURCES,
                f"{MAX_BUNDLES} spawned processes not waited for: wait() for those that ended",
            )

    def add_bundle(self, owner: Proc, caps: dict[str, Capability]) -> str:
        """Set `caps` aside for the connection that claims the returned token."""
        token = secrets.token_hex(16)
        self.bundles[token] = Bundle(owner, caps)
        owner.bundles += 1
        return token

    def drop_bundle(self, token: str) -> None:
        bundle = self.bundles.pop(token)
        if bundle.owner is not None:
            bundle.owner.bundles -= 1
        for cap in bundle.caps.values():
            unlink(cap)
            self.release(cap.obj)
        self._end_waits(bundle)

    def _end_waits(self, bundle: Bundle) -> None:
        for op in list(bundle.waiters):
            op.finish()
            op.proc.complete(op.op, op.req_id, Status.OK)

    def remove_proc(self, proc: Proc, reason: str) -> None:
        """The process died (DESIGN §2): drop its caps, fail what waits on it."""
        if self.procs.pop(proc.ident, None) is None:
            return
        log.info("process %d (pid %d) is gone: %s", proc.ident, proc.pid, reason)
        credit("connections", 1, proc.user)
        for op in list(proc.pending.values()):
            self.abandon(op, "its caller died")
        self._fail_unanswered_calls(proc)
        self.sessions.process_gone(proc)
        for cap in proc.caps.clear():
            unlink(cap)
            self.release(cap.obj)
        self._fire_monitors(proc)
        self.exits.owner_gone(proc)
        for token, bundle in list(self.bundles.items()):
            if bundle.owner is proc:
                self.drop_bundle(token)
            elif bundle.child is proc:
                bundle.child_gone = True
                self._end_waits(bundle)
        proc.alive = False

    def monitor(self, watched: Proc, target: Endpoint | Notification, token: int) -> None:
        """When `watched` ends, send a kernel message with badge `token` on an
        endpoint, or OR `token` into a notification's word."""
        if len(watched.monitors) >= MAX_MONITORS:
            raise OpError(Status.NO_RESOURCES, f"the process already has {MAX_MONITORS} monitors")
        target.refs += 1
        watched.monitors.append((target, token))

    def _fire_monitors(self, proc: Proc) -> None:
        for target, token in proc.monitors:
            if isinstance(target, Notification):
                self.kernel_signal(target, token)
            else:
                self.kernel_send(target, token, b"")
            self.release(target)
        proc.monitors.clear()

    def revoke(self, cap: Capability) -> int:
        """Delete every capability derived from `cap`, in every process, at once."""
        gone = descendants(cap)
        tables = {id(_table_of(d.holder)) for d in gone if d.holder is not None}
        for d in gone:
            if d.holder is not None:
                d.holder.discard(d, "was revoked")
            d.parent = None
            d.children = []
        cap.children = []
        for proc in [p for p in self.procs.values() if id(p.caps) in tables]:
            self.fail_waiting_through(proc, set(map(id, gone)), "was revoked")
        for d in gone:
            self.release(d.obj)
        return len(gone)

    def fail_waiting_through(self, proc: Proc, caps: set[int], why: str) -> None:
        """Fail at once `proc`'s operations that wait through, or carry, a capability
        (by id) that was just revoked or closed: revoked authority takes no further
        message, and the caller should not wait out its timeout to learn it. (A wait
        is always through the waiter's own capability, so only its table matters.)"""
        for op in list(proc.pending.values()):
            if op.phase != WAITING:
                continue  # a delivered call goes on: its reply capability is separate
            carried = op.transfers is not None and any(id(c) in caps for c, _ in op.transfers)
            if carried or (op.cap is not None and id(op.cap) in caps):
                what = "a capability it carried" if carried else "the capability it waited through"
                op.finish()
                proc.complete(op.op, op.req_id, Status.BAD_SLOT, payload=f"{what} {why}".encode())
                if op.op == abi.Op.ENDPOINT_SESSION_OPEN:
                    self.sessions.opening_ended(op)

    def _fail_unanswered_calls(self, server: Proc) -> None:
        for cap in server.caps:
            reply = cap.obj
            if isinstance(reply, Reply) and reply.caller is not None:
                caller = reply.caller
                reply.abandon("the server died")
                caller.finish()
                caller.proc.complete(
                    caller.op,
                    caller.req_id,
                    Status.PEER_CLOSED,
                    payload=(f"the server (pid {server.pid}) died before replying".encode()),
                )

    def release_names(self) -> None:
        """At exit, after every process is gone: drop the kernel's own references."""
        self.drop_kernel_bundles()
        for root in (self.names_root, self.names_store):
            if root is not None:
                self.release(root.obj)
        self.names_root = self.names_store = None

    def shutdown(self) -> None:
        """Fail every waiting operation with a clear error before the kernel exits."""
        for proc in self.procs.values():
            for op in list(proc.pending.values()):
                self.abandon(op, "the kernel shut down")
                proc.complete(
                    op.op, op.req_id, Status.SHUTDOWN, payload=b"the kernel is shutting down"
                )


def _table_of(holder: object) -> object:
    """The table whose process a revocation must look at: a copy made for a waiting
    message (InFlight) concerns its sender, whose send then fails at once."""
    return holder.sender.caps if isinstance(holder, InFlight) else holder
