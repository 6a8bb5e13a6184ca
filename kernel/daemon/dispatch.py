"""The cold operations: object creation, derivation, cancel, spawning.

Memory objects have their operations in Python, in kernel/daemon/objects/; queues,
pipes and semaphores their creation there, and their per-message operations compiled
(kernel/_core/queues.pyx and pipes.pyx, registered here as cold handlers, and
kcore). A map is a control-plane step.

The per-message operations (endpoints, notifications, a semaphore's post and wait)
and the drain loop are
compiled in kernel/_core/kcore.pyx; `install()` registers these handlers there.
Each validates first and acts after (STYLE §1); bad requests get an error
completion, and only a broken ring format disconnects a process.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from capabilities import (
    DEFAULT_ENDPOINT_RIGHTS,
    DEFAULT_NOTIFICATION_RIGHTS,
    Capability,
    Rights,
    SlotError,
)
from capabilities.table import derive, descendants, unlink

from .. import abi
from .._core.kcore import KIND_NAMES
from .._core.ring import Header
from ..abi import Op
from ..errors import Status
from .objects import Endpoint, Notification, OpError, Reply
from .objects.memory import HANDLERS as MEMORY_HANDLERS
from .objects.pipe import HANDLERS as PIPE_HANDLERS
from .objects.queue import HANDLERS as QUEUE_HANDLERS
from .objects.semaphore import HANDLERS as SEMAPHORE_HANDLERS
from .pending import Pending
from .process import Proc
from .sessions import HANDLERS as SESSION_HANDLERS
from .state import KernelState
from .status import encoded_status

Handler = Callable[[KernelState, Proc, Header], None]


# ------------------------------------------------------------------ objects and caps


def _create(obj_type: type, rights: Rights) -> Handler:
    def handler(k: KernelState, proc: Proc, h: Header) -> None:
        slot = k.new_object(proc, obj_type(), rights)
        proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)

    return handler


def _derived_rights(cap: Capability, requested: int, verb: str) -> int:
    if requested == abi.RIGHTS_SAME:
        return cap.rights
    if requested & ~int(Rights.ALL):
        raise OpError(Status.INVALID_ARGS, f"{verb}: {requested:#x} is not a set of Rights")
    if requested & ~cap.rights:  # DESIGN §5: a derived capability never gains a right
        missing = Rights(requested & ~cap.rights)
        raise OpError(
            Status.ACCESS_DENIED, f"{verb} would add rights the capability lacks: {missing!r}"
        )
    return requested


def _install_derived(k: KernelState, proc: Proc, h: Header, child: Capability) -> None:
    try:
        slot = k.insert_cap(proc, child)
    except SlotError as e:
        unlink(child)  # it never became visible: undo the derivation link
        raise OpError(Status.NO_RESOURCES, e.reason) from None
    proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)


def _cap_copy(k: KernelState, proc: Proc, h: Header) -> None:
    cap = k.lookup(proc, h.slot, 0, Rights.COPY)
    _reject_reply(cap, "copy")
    rights = _derived_rights(cap, h.arg, "copy")
    _install_derived(k, proc, h, derive(cap, rights, cap.badge))


def _cap_mint(k: KernelState, proc: Proc, h: Header) -> None:
    cap = k.lookup(proc, h.slot, 0, Rights.COPY)
    _reject_reply(cap, "mint")
    rights = _derived_rights(cap, h.arg, "mint")
    raw = proc.sq.payload(h)
    if len(raw) != 8:
        raise OpError(Status.INVALID_ARGS, "mint: the badge must be 8 bytes")
    badge = int.from_bytes(raw, "little")
    if cap.badge and badge != cap.badge:  # seL4: a badge is set once
        raise OpError(
            Status.ACCESS_DENIED, f"mint: the capability already carries badge {cap.badge}"
        )
    _install_derived(k, proc, h, derive(cap, rights, badge))


def _reject_reply(cap: Capability, verb: str) -> None:
    if cap.obj.kind == abi.ObjectKind.REPLY:  # DESIGN §5: reply capabilities are one-shot
        raise OpError(Status.ACCESS_DENIED, f"{verb}: a reply capability cannot be duplicated")


def _cap_revoke(k: KernelState, proc: Proc, h: Header) -> None:
    cap = k.lookup(proc, h.slot, 0, Rights.MANAGE)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=k.revoke(cap))


def _cap_info(k: KernelState, proc: Proc, h: Header) -> None:
    cap = k.lookup(proc, h.slot, 0, Rights.NONE)
    parent = cap.parent
    info = abi.CapInfo(
        KIND_NAMES[cap.obj.kind],
        cap.rights,
        cap.badge,
        cap.slot,
        cap.obj.oid,
        cap.obj.refs,
        len(descendants(cap)),
        parent.slot if parent is not None and parent.holder is proc.caps else None,
    )
    proc.complete(h.opcode, h.req_id, Status.OK, payload=abi.encode_info(info))


def _kernel_status(k: KernelState, proc: Proc, h: Header) -> None:
    """KERNEL_STATUS: who holds what (status.py; `mkipc status`)."""
    proc.complete(h.opcode, h.req_id, Status.OK, payload=encoded_status(k, proc))


def _cancel(k: KernelState, proc: Proc, h: Header) -> None:
    """Withdraw the caller's own pending op `arg`. It completes with CANCELLED;
    the CANCEL record itself gets no completion (the client does not wait for it)."""
    op = proc.pending.get(h.arg)
    if op is not None:
        k.abandon(op, "its caller cancelled the call")
        proc.complete(op.op, op.req_id, Status.CANCELLED, payload=b"cancelled by the caller")
        if op.op == Op.ENDPOINT_SESSION_OPEN:
            k.sessions.opening_ended(op)


def _monitor_target(
    k: KernelState, proc: Proc, h: Header, verb: str, signals: bool = False
) -> tuple[Reply, Pending, Endpoint | Notification]:
    """The call behind the reply capability in `slot`, and what the kernel will tell,
    named by the 8-byte slot in the payload: an endpoint (SEND) or, with `signals`,
    a notification (SIGNAL)."""
    reply = k.lookup(proc, h.slot, abi.ObjectKind.REPLY, Rights.SEND).obj
    assert isinstance(reply, Reply)
    raw = proc.sq.payload(h)
    if len(raw) != 8:
        raise OpError(Status.INVALID_ARGS, f"{verb}: the target's slot must be 8 bytes")
    slot = int.from_bytes(raw, "little")
    if signals and k.lookup(proc, slot, 0, 0).obj.kind == abi.ObjectKind.NOTIFICATION:
        target = k.lookup(proc, slot, abi.ObjectKind.NOTIFICATION, Rights.SIGNAL).obj
        if not h.arg:
            raise OpError(Status.INVALID_ARGS, f"{verb}: bits must be a non-zero 64-bit mask")
    else:
        target = k.lookup(proc, slot, abi.ObjectKind.ENDPOINT, Rights.SEND).obj
    caller = reply.caller
    if caller is None:
        raise OpError(Status.CALLER_GONE, f"{verb}: the caller is gone: {reply.gone_reason}")
    assert isinstance(target, Endpoint | Notification)
    return reply, caller, target


def _caller_monitor(k: KernelState, proc: Proc, h: Header) -> None:
    """Watch the process that waits on the reply capability in `slot`: when it ends,
    the kernel sends a message with badge `arg` on an endpoint, or ORs `arg` into a
    notification. Holding the reply capability is the authority: a server can watch
    only processes that called it."""
    _, caller, target = _monitor_target(k, proc, h, "monitor", signals=True)
    assert isinstance(caller.proc, Proc)
    k.monitor(caller.proc, target, h.arg)
    proc.complete(h.opcode, h.req_id, Status.OK)


def _process_monitor(k: KernelState, proc: Proc, h: Header) -> None:
    """PROCESS_MONITOR: when the child process whose pid is the payload ends, OR
    `arg` into the notification in `slot` (SIGNAL): SIGCHLD on capabilities."""
    n = k.lookup(proc, h.slot, abi.ObjectKind.NOTIFICATION, Rights.SIGNAL).obj
    assert isinstance(n, Notification)
    raw = proc.sq.payload(h)
    if len(raw) != 8 or not h.arg:
        raise OpError(Status.INVALID_ARGS, "monitor: an 8-byte pid and non-zero bits")
    k.exits.add(proc, int.from_bytes(raw, "little", signed=True), n, h.arg)
    proc.complete(h.opcode, h.req_id, Status.OK)


def _call_monitor(k: KernelState, proc: Proc, h: Header) -> None:
    """Watch the call itself: if it ends unanswered (the caller timed out, cancelled
    or died), the kernel sends a message with badge `arg` (its reason as payload) on
    the endpoint. One watch per call; a later one replaces it."""
    reply, _, ep = _monitor_target(k, proc, h, "monitor_call")
    assert isinstance(ep, Endpoint)  # a notification only with signals=True
    reply.watch = (ep, h.arg)
    proc.complete(h.opcode, h.req_id, Status.OK)


# ------------------------------------------------------------------ bound notifications


def _bind(k: KernelState, proc: Proc, h: Header) -> None:
    """NOTIFICATION_BIND: receives on the endpoint in `slot` (RECEIVE) also take the
    word of the notification in `arg` (WAIT), as a signal message, so one thread can
    wait for messages and signals at once (seL4's bound notification). One each way;
    the binding ends with either object."""
    ep = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.RECEIVE).obj
    n = k.lookup(proc, h.arg, abi.ObjectKind.NOTIFICATION, Rights.WAIT).obj
    assert isinstance(ep, Endpoint)
    assert isinstance(n, Notification)
    if ep.bound is not None:
        raise OpError(Status.INVALID_ARGS, "bind: the endpoint has a bound notification already")
    if n.bound_to is not None:
        raise OpError(Status.INVALID_ARGS, "bind: the notification is bound to an endpoint already")
    ep.bound, n.bound_to = n, ep
    k.signal_bound(n)  # a word set before, with a receiver waiting: it goes now
    proc.complete(h.opcode, h.req_id, Status.OK)


def _unbind(k: KernelState, proc: Proc, h: Header) -> None:
    """NOTIFICATION_UNBIND: the endpoint in `slot` (RECEIVE) stops taking signals."""
    ep = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.RECEIVE).obj
    assert isinstance(ep, Endpoint)
    if ep.bound is None:
        raise OpError(Status.INVALID_ARGS, "unbind: no notification is bound to the endpoint")
    ep.bound.bound_to = None
    ep.bound = None
    proc.complete(h.opcode, h.req_id, Status.OK)


# ------------------------------------------------------------------ spawning


def _inherit_create(k: KernelState, proc: Proc, h: Header) -> None:
    try:
        names = abi.decode_names(proc.sq.payload(h))
    except msgspec.DecodeError as e:
        raise OpError(Status.INVALID_ARGS, f"names must be a msgpack list of str: {e}") from None
    slots = proc.sq.caps(h)
    if len(names) != len(slots) or len(set(names)) != len(names):
        raise OpError(Status.INVALID_ARGS, "need one distinct name per capability")
    if any(not 0 < len(n) <= 256 for n in names):
        raise OpError(Status.INVALID_ARGS, "names must have 1 to 256 characters")
    caps = [_inheritable(k, proc, s) for s in slots]
    k.check_bundle_room(proc)
    copies: dict[str, Capability] = {}
    for name, cap in zip(names, caps, strict=True):
        # A child of the parent's capability: revoking that reaches into the child.
        copies[name] = derive(cap, cap.rights, cap.badge)
        cap.obj.refs += 1
    token = k.add_bundle(proc, copies)
    proc.complete(h.opcode, h.req_id, Status.OK, payload=token.encode())


def _inheritable(k: KernelState, proc: Proc, slot: int) -> Capability:
    cap = k.lookup(proc, slot, 0, Rights.COPY)
    if cap.obj.kind == abi.ObjectKind.REPLY:
        raise OpError(Status.WRONG_TYPE, f"slot {slot:#x}: a reply capability cannot be inherited")
    return cap


def _process_wait(k: KernelState, proc: Proc, h: Header) -> None:
    token = proc.sq.payload(h).decode("ascii", "replace")
    bundle = k.bundles.get(token)
    if bundle is None:
        raise OpError(Status.INVALID_ARGS, "unknown spawn token")
    if bundle.owner is not proc:
        raise OpError(Status.ACCESS_DENIED, "the process was not spawned by this process")
    if bundle.child is None or bundle.child_gone:
        k.drop_bundle(token)
        proc.complete(h.opcode, h.req_id, Status.OK)
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "the process is still connected to the kernel")
    else:
        op = Pending(proc, h.req_id, h.opcode, h.deadline)
        op.enqueue(bundle.waiters)
        k.timers.arm(op)


COLD_HANDLERS: dict[int, Handler] = {
    Op.ENDPOINT_CREATE: _create(Endpoint, DEFAULT_ENDPOINT_RIGHTS),
    Op.NOTIFICATION_CREATE: _create(Notification, DEFAULT_NOTIFICATION_RIGHTS),
    Op.CAP_COPY: _cap_copy,
    Op.CAP_MINT: _cap_mint,
    Op.CAP_REVOKE: _cap_revoke,
    Op.CAP_INFO: _cap_info,
    Op.CANCEL: _cancel,
    Op.INHERIT_CREATE: _inherit_create,
    Op.PROCESS_WAIT: _process_wait,
    Op.CALLER_MONITOR: _caller_monitor,
    Op.CALL_MONITOR: _call_monitor,
    Op.PROCESS_MONITOR: _process_monitor,
    Op.KERNEL_STATUS: _kernel_status,
    Op.NOTIFICATION_BIND: _bind,
    Op.NOTIFICATION_UNBIND: _unbind,
}


def install(k: KernelState) -> None:
    k.cold.update(COLD_HANDLERS)
    k.cold.update(SESSION_HANDLERS)
    k.cold.update(MEMORY_HANDLERS)
    k.cold.update(SEMAPHORE_HANDLERS)
    k.cold.update(QUEUE_HANDLERS)
    k.cold.update(PIPE_HANDLERS)
