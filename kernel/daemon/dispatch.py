"""Drain a process's submission ring and route each record to its handler.

Every handler validates first (decode: slot, kind, rights, sizes) and acts after
(invoke), as seL4 splits decode*Invocation from invoke* (STYLE §1). Bad requests
get an error completion; only a broken ring format disconnects a process.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import msgspec

from capabilities import (
    DEFAULT_ENDPOINT_RIGHTS,
    DEFAULT_NOTIFICATION_RIGHTS,
    Capability,
    Rights,
    SlotError,
)

from .. import abi
from .._core.ring import Header
from ..abi import Op
from ..errors import Status
from .objects import OpError, endpoint, notification
from .objects.endpoint import Endpoint
from .objects.notification import Notification
from .pending import Pending
from .process import MAX_PENDING, Proc
from .state import Bundle, KernelState

log = logging.getLogger("mkipc.kernel")

BATCH = 64
"""Records taken from one ring before moving on to the next process (fairness)."""

Handler = Callable[[KernelState, Proc, Header], None]


def drain(k: KernelState, proc: Proc) -> int:
    """Handle up to BATCH records of `proc`. Raises RingCorruptError on a broken ring."""
    sq = proc.sq
    n = 0
    while n < BATCH and proc.alive:
        h = sq.read()
        if h is None:
            break
        handle(k, proc, h)
        sq.consume(h)
        n += 1
    return n


def handle(k: KernelState, proc: Proc, h: Header) -> None:
    try:
        fn = HANDLERS.get(h.opcode)
        if fn is None:
            raise OpError(Status.NOT_SUPPORTED, f"unknown opcode {h.opcode}")
        if h.req_id in proc.pending:
            raise OpError(Status.INVALID_ARGS, f"request id {h.req_id} is already in flight")
        if len(proc.pending) >= MAX_PENDING:
            raise OpError(
                Status.NO_RESOURCES, f"more than {MAX_PENDING} operations waiting in the kernel"
            )
        if h.deadline < abi.DEADLINE_FOREVER:
            raise OpError(Status.INVALID_ARGS, "deadline must be -1, 0 or a positive time")
        fn(k, proc, h)
    except OpError as e:
        proc.complete(h.opcode, h.req_id, e.status, payload=e.reason.encode())
    except Exception:  # a kernel bug must not take down every process: fail this op only
        log.exception("%s: internal error handling %r", proc, h)
        proc.complete(
            h.opcode,
            h.req_id,
            Status.INVALID_ARGS,
            payload=b"internal kernel error (logged by the kernel)",
        )


# ------------------------------------------------------------------ endpoints


def _ep_send(k: KernelState, proc: Proc, h: Header) -> None:
    cap = endpoint.decode_message(k, proc, h, Rights.SEND)
    endpoint.invoke_send(k, proc, h, cap, is_call=False)


def _ep_call(k: KernelState, proc: Proc, h: Header) -> None:
    cap = endpoint.decode_message(k, proc, h, Rights.SEND)
    endpoint.invoke_send(k, proc, h, cap, is_call=True)


def _ep_recv(k: KernelState, proc: Proc, h: Header) -> None:
    cap = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.RECEIVE)
    endpoint.invoke_recv(k, proc, h, cap)


def _ep_reply(k: KernelState, proc: Proc, h: Header) -> None:
    cap = endpoint.decode_reply(k, proc, h, h.slot)
    endpoint.invoke_reply(k, proc, h, cap)
    proc.complete(h.opcode, h.req_id, Status.OK)


def _ep_reply_recv(k: KernelState, proc: Proc, h: Header) -> None:
    """Reply to the call whose reply slot is in `arg`, then receive on `slot`.

    If the reply fails (its caller is gone) the whole operation fails with that
    error and no receive starts; the server simply receives again.
    """
    recv_cap = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, Rights.RECEIVE)
    reply_cap = endpoint.decode_reply(k, proc, h, h.arg)
    endpoint.invoke_reply(k, proc, h, reply_cap)
    endpoint.invoke_recv(k, proc, h, recv_cap)


# ------------------------------------------------------------------ notifications


def _ntfn(right: Rights, fn: Callable[[KernelState, Proc, Header, Capability], None]) -> Handler:
    def handler(k: KernelState, proc: Proc, h: Header) -> None:
        fn(k, proc, h, k.lookup(proc, h.slot, abi.ObjectKind.NOTIFICATION, right))

    return handler


# ------------------------------------------------------------------ objects and caps


def _create(obj_type: type, rights: Rights) -> Handler:
    def handler(k: KernelState, proc: Proc, h: Header) -> None:
        slot = k.new_object(proc, obj_type(), rights)
        proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)

    return handler


def _cap_close(k: KernelState, proc: Proc, h: Header) -> None:
    k.lookup(proc, h.slot, 0, Rights.NONE)
    k.remove_cap(proc, h.slot, "was closed")
    proc.complete(h.opcode, h.req_id, Status.OK)


def _cancel(k: KernelState, proc: Proc, h: Header) -> None:
    """Withdraw the caller's own pending op `arg`. It completes with CANCELLED;
    the CANCEL record itself gets no completion (the client does not wait for it)."""
    op = proc.pending.get(h.arg)
    if op is not None:
        k.abandon(op, "its caller cancelled the call")
        proc.complete(op.op, op.req_id, Status.CANCELLED, payload=b"cancelled by the caller")


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
    copies: dict[str, Capability] = {}
    for name, cap in zip(names, caps, strict=True):
        copies[name] = Capability(cap.obj, cap.rights, cap.badge)
        cap.obj.refs += 1
    token = secrets.token_hex(16)
    k.bundles[token] = Bundle(proc, copies)
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


HANDLERS: dict[int, Handler] = {
    Op.ENDPOINT_SEND: _ep_send,
    Op.ENDPOINT_CALL: _ep_call,
    Op.ENDPOINT_RECV: _ep_recv,
    Op.ENDPOINT_REPLY: _ep_reply,
    Op.ENDPOINT_REPLY_RECV: _ep_reply_recv,
    Op.NOTIFICATION_SIGNAL: _ntfn(Rights.SIGNAL, notification.invoke_signal),
    Op.NOTIFICATION_WAIT: _ntfn(Rights.WAIT, notification.invoke_wait),
    Op.NOTIFICATION_POLL: _ntfn(Rights.WAIT, notification.invoke_poll),
    Op.ENDPOINT_CREATE: _create(Endpoint, DEFAULT_ENDPOINT_RIGHTS),
    Op.NOTIFICATION_CREATE: _create(Notification, DEFAULT_NOTIFICATION_RIGHTS),
    Op.CAP_CLOSE: _cap_close,
    Op.CANCEL: _cancel,
    Op.INHERIT_CREATE: _inherit_create,
    Op.PROCESS_WAIT: _process_wait,
}

__all__ = ["drain", "handle", "HANDLERS", "SlotError"]
