"""The kernel's tables and the rules that tie them together: lookup, refcounts, death."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from capabilities import Capability, Rights, SlotError

from .. import abi
from ..errors import Status
from .objects import KernelObject, OpError
from .pending import AWAIT_REPLY, WAITING, Pending, Timers
from .process import Proc

log = logging.getLogger("mkipc.kernel")

_KIND_NAME = {
    abi.ObjectKind.ENDPOINT: "endpoint",
    abi.ObjectKind.NOTIFICATION: "notification",
    abi.ObjectKind.REPLY: "reply capability",
}

_EXPIRED_REASON: dict[int, str] = {
    abi.Op.ENDPOINT_SEND: "no receiver took the message before the deadline",
    abi.Op.ENDPOINT_CALL: "no receiver took the call before the deadline",
    abi.Op.ENDPOINT_RECV: "no message arrived before the deadline",
    abi.Op.ENDPOINT_REPLY_RECV: "no message arrived before the deadline",
    abi.Op.NOTIFICATION_WAIT: "no signal arrived before the deadline",
    abi.Op.PROCESS_WAIT: "the process had not ended before the deadline",
}


class Bundle:
    """Capabilities a parent hands to a child it spawns (DESIGN §2, inheritance)."""

    def __init__(self, owner: Proc, caps: dict[str, Capability]) -> None:
        self.owner = owner
        self.caps = caps
        self.child: Proc | None = None
        self.child_gone = False
        self.waiters: deque[Pending] = deque()


class KernelState:
    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.procs: dict[int, Proc] = {}
        self.timers = Timers()
        self.bundles: dict[str, Bundle] = {}
        self.clock = clock

    # ------------------------------------------------------------ time

    def expired(self, deadline: int) -> bool:
        return deadline == abi.DEADLINE_NOW or (deadline > 0 and deadline <= self.clock())

    def expire_due(self) -> int:
        due = self.timers.next_deadline()
        if due is None or due > self.clock():
            return 0
        ops = self.timers.pop_expired(self.clock())
        for op in ops:
            self._expire(op)
        return len(ops)

    def _expire(self, op: Pending) -> None:
        if op.phase == AWAIT_REPLY:
            reason = "the server did not reply before the deadline"
        else:
            reason = _EXPIRED_REASON.get(op.op, "the deadline passed")
        self.abandon(op, "its caller timed out")
        op.proc.complete(op.op, op.req_id, Status.TIMED_OUT, payload=reason.encode())

    def abandon(self, op: Pending, why: str) -> None:
        """End `op` without a completion; a delivered call's reply learns `why`."""
        if op.phase == AWAIT_REPLY and op.reply is not None:
            op.reply.abandon(why)
        op.finish()

    # ------------------------------------------------------------ capabilities

    def lookup(self, proc: Proc, slot: int, kind: int, right: Rights) -> Capability:
        try:
            cap = proc.caps.lookup(slot)
        except SlotError as e:
            raise OpError(Status.BAD_SLOT, e.reason) from None
        if kind and cap.obj.kind != kind:
            raise OpError(
                Status.WRONG_TYPE,
                f"slot {slot:#x} holds a {_KIND_NAME[cap.obj.kind]}, "
                f"not a {_KIND_NAME[abi.ObjectKind(kind)]}",
            )
        if right not in cap.rights:
            raise OpError(
                Status.ACCESS_DENIED,
                f"the capability in slot {slot:#x} lacks the {right.name} right",
            )
        return cap

    def insert_cap(self, proc: Proc, cap: Capability) -> int:
        slot = proc.caps.insert(cap)
        cap.obj.refs += 1
        return slot

    def new_object(self, proc: Proc, obj: KernelObject, rights: Rights) -> int:
        try:
            return self.insert_cap(proc, Capability(obj, rights))
        except SlotError as e:
            raise OpError(Status.NO_RESOURCES, e.reason) from None

    def remove_cap(self, proc: Proc, slot: int, why: str) -> Capability:
        cap = proc.caps.remove(slot, why)
        self.release(cap.obj)
        return cap

    def release(self, obj: KernelObject) -> None:
        obj.refs -= 1
        if obj.refs == 0:
            KernelObject.live -= 1
            obj.destroy()

    # ------------------------------------------------------------ processes

    def add_proc(self, proc: Proc, token: str | None) -> dict[str, abi.InheritedCap]:
        inherited = self._claim(proc, token) if token else {}
        self.procs[proc.ident] = proc
        return inherited

    def check_token(self, token: str | None) -> None:
        if token is None:
            return
        bundle = self.bundles.get(token)
        if bundle is None or bundle.child is not None:
            raise OpError(Status.INVALID_ARGS, "unknown or already used inherit token")

    def _claim(self, proc: Proc, token: str) -> dict[str, abi.InheritedCap]:
        self.check_token(token)
        bundle = self.bundles[token]
        out = {}
        for name, cap in bundle.caps.items():
            slot = proc.caps.insert(cap)  # the bundle's reference moves into the table
            out[name] = abi.InheritedCap(slot, _KIND_NAME[cap.obj.kind], int(cap.rights))
        bundle.caps = {}
        bundle.child = proc
        proc.claimed_token = token
        return out

    def drop_bundle(self, token: str) -> None:
        bundle = self.bundles.pop(token)
        for cap in bundle.caps.values():
            self.release(cap.obj)
        for op in list(bundle.waiters):
            op.finish()
            op.proc.complete(op.op, op.req_id, Status.OK)

    def remove_proc(self, proc: Proc, reason: str) -> None:
        """The process died (DESIGN §2): drop its caps, fail what waits on it."""
        if self.procs.pop(proc.ident, None) is None:
            return
        log.info("process %d (pid %d) is gone: %s", proc.ident, proc.pid, reason)
        for op in list(proc.pending.values()):
            self.abandon(op, "its caller died")
        self._fail_unanswered_calls(proc)
        for cap in proc.caps.clear():
            self.release(cap.obj)
        for token, bundle in list(self.bundles.items()):
            if bundle.owner is proc:
                self.drop_bundle(token)
            elif bundle.child is proc:
                bundle.child_gone = True
                for op in list(bundle.waiters):
                    op.finish()
                    op.proc.complete(op.op, op.req_id, Status.OK)
        proc.alive = False

    def _fail_unanswered_calls(self, server: Proc) -> None:
        for cap in server.caps:
            caller = getattr(cap.obj, "caller", None)  # only Reply objects have one
            if caller is not None:
                cap.obj.abandon("the server died")
                caller.finish()
                caller.proc.complete(
                    caller.op,
                    caller.req_id,
                    Status.PEER_CLOSED,
                    payload=(f"the server (pid {server.pid}) died before replying".encode()),
                )

    def shutdown(self) -> None:
        """Fail every waiting operation with a clear error before the kernel exits."""
        for proc in self.procs.values():
            for op in list(proc.pending.values()):
                self.abandon(op, "the kernel shut down")
                proc.complete(
                    op.op, op.req_id, Status.SHUTDOWN, payload=b"the kernel is shutting down"
                )


__all__ = ["KernelState", "Bundle", "WAITING"]
