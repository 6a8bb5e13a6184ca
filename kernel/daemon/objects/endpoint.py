"""Endpoints: synchronous rendezvous, zero capacity, one-shot reply capabilities."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from capabilities import DEFAULT_REPLY_RIGHTS, Capability, Rights, SlotError

from ... import abi
from ...errors import Status
from ..pending import AWAIT_REPLY, Pending, pop_live
from . import KernelObject, OpError

if TYPE_CHECKING:
    from ..._core.ring import Header
    from ..process import Proc
    from ..state import KernelState


class Endpoint(KernelObject):
    kind = abi.ObjectKind.ENDPOINT
    __slots__ = ("senders", "receivers")

    def __init__(self) -> None:
        super().__init__()
        self.senders: deque[Pending] = deque()  # blocked send/call ops, payload copied
        self.receivers: deque[Pending] = deque()  # blocked recv / reply_recv ops

    def destroy(self) -> None:
        for queue in (self.senders, self.receivers):
            while (op := pop_live(queue)) is not None:
                op.finish()
                op.proc.complete(
                    op.op,
                    op.req_id,
                    Status.PEER_CLOSED,
                    payload=(b"the endpoint was destroyed: its last capability was closed"),
                )


class Reply(KernelObject):
    """The one-shot right to answer one call (DESIGN §5). `caller` None = call is over."""

    kind = abi.ObjectKind.REPLY
    __slots__ = ("caller", "gone_reason")

    def __init__(self, caller: Pending) -> None:
        super().__init__()
        self.caller: Pending | None = caller
        self.gone_reason = ""

    def abandon(self, reason: str) -> None:
        self.caller = None
        self.gone_reason = reason

    def destroy(self) -> None:
        # The server dropped the reply capability (closed it or died) without answering.
        caller = self.caller
        if caller is not None:
            self.abandon("the reply capability was dropped")
            caller.finish()
            caller.proc.complete(
                caller.op,
                caller.req_id,
                Status.PEER_CLOSED,
                payload=b"the server closed the call without replying",
            )


# ------------------------------------------------------------------ delivery


def _install_reply(k: KernelState, receiver: Proc, caller: Pending) -> int:
    reply = Reply(caller)
    try:
        slot = k.insert_cap(receiver, Capability(reply, DEFAULT_REPLY_RIGHTS))
    except SlotError as e:
        raise OpError(Status.NO_RESOURCES, f"receiver cannot hold a reply capability: {e}") from e
    caller.reply = reply
    caller.phase = AWAIT_REPLY
    return slot


def deliver_from_ring(
    k: KernelState, rx: Pending, sender: Proc, h: Header, badge: int, caller: Pending | None
) -> None:
    """A receiver was waiting: copy the message straight from the sender's ring."""
    slot = _install_reply(k, rx.proc, caller) if caller is not None else 0
    rx.finish()
    rx.proc.forward(
        sender.sq,
        h,
        rx.op,
        rx.req_id,
        slot,
        abi.MSG_IS_CALL if caller is not None else 0,
        badge,
        sender.creds,
    )


def deliver_stored(k: KernelState, rx: Pending, tx: Pending) -> None:
    """A sender was waiting with a copied payload: hand it to receiver `rx`."""
    if tx.is_call:
        slot = _install_reply(k, rx.proc, tx)  # its deadline timer is already armed
    else:
        slot = 0
        tx.finish()
        tx.proc.complete(tx.op, tx.req_id, Status.OK)
    rx.finish()
    rx.proc.complete(
        rx.op,
        rx.req_id,
        Status.OK,
        slot=slot,
        arg=abi.MSG_IS_CALL if tx.is_call else 0,
        payload=tx.payload,
        badge=tx.badge,
        creds=tx.proc.creds,
    )


# ------------------------------------------------------------------ decode / invoke


def decode_message(k: KernelState, proc: Proc, h: Header, right: Rights) -> Capability:
    cap = k.lookup(proc, h.slot, abi.ObjectKind.ENDPOINT, right)
    if h.payload_len > abi.MAX_PAYLOAD:
        raise OpError(
            Status.TOO_LARGE,
            f"payload of {h.payload_len} bytes exceeds the maximum of {abi.MAX_PAYLOAD}",
        )
    if h.ncaps:
        raise OpError(Status.NOT_SUPPORTED, "capability transfer in messages is not supported yet")
    return cap


def invoke_send(k: KernelState, proc: Proc, h: Header, cap: Capability, is_call: bool) -> None:
    ep: Endpoint = cap.obj
    op = Pending(proc, h.req_id, h.opcode, h.deadline, h.slot)
    op.is_call = is_call
    rx = pop_live(ep.receivers)
    if rx is not None:
        if is_call:
            proc.pending[op.req_id] = op
            try:
                deliver_from_ring(k, rx, proc, h, cap.badge, op)
            except OpError:
                del proc.pending[op.req_id]
                ep.receivers.appendleft(rx)
                rx.queue = ep.receivers
                raise
            k.timers.arm(op)
        else:
            deliver_from_ring(k, rx, proc, h, cap.badge, None)
            proc.complete(h.opcode, h.req_id, Status.OK)
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "no receiver was waiting on the endpoint")
    else:
        op.payload = proc.sq.payload(h)
        op.badge = cap.badge
        op.enqueue(ep.senders)
        k.timers.arm(op)


def invoke_recv(k: KernelState, proc: Proc, h: Header, cap: Capability) -> None:
    ep: Endpoint = cap.obj
    rx = Pending(proc, h.req_id, h.opcode, h.deadline, h.slot)
    tx = pop_live(ep.senders)
    if tx is not None:
        try:
            deliver_stored(k, rx, tx)
        except OpError:
            ep.senders.appendleft(tx)
            tx.queue = ep.senders
            raise
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "no message arrived on the endpoint")
    else:
        rx.enqueue(ep.receivers)
        k.timers.arm(rx)


def decode_reply(k: KernelState, proc: Proc, h: Header, reply_slot: int) -> Capability:
    cap = k.lookup(proc, reply_slot, abi.ObjectKind.REPLY, Rights.SEND)
    if h.payload_len > abi.MAX_PAYLOAD:
        raise OpError(
            Status.TOO_LARGE,
            f"payload of {h.payload_len} bytes exceeds the maximum of {abi.MAX_PAYLOAD}",
        )
    if h.ncaps:
        raise OpError(Status.NOT_SUPPORTED, "capability transfer in messages is not supported yet")
    return cap


def invoke_reply(k: KernelState, proc: Proc, h: Header, cap: Capability) -> None:
    """Answer a call. The reply capability is consumed whether or not the caller is there."""
    reply: Reply = cap.obj
    caller, why_gone = reply.caller, reply.gone_reason
    reply.abandon("it was already answered")  # DESIGN §5: reply caps are one-shot
    k.remove_cap(proc, cap.slot, "was used by an earlier reply")
    if caller is None:
        raise OpError(Status.CALLER_GONE, f"the reply was not delivered: {why_gone}")
    caller.finish()
    caller.proc.forward(proc.sq, h, caller.op, caller.req_id, 0, 0, 0, proc.creds)
