"""Notifications: a 64-bit word that signals OR into; wait returns and clears it."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from capabilities import Capability

from ... import abi
from ...errors import Status
from ..pending import Pending, pop_live
from . import KernelObject, OpError

if TYPE_CHECKING:
    from ..._core.ring import Header
    from ..process import Proc
    from ..state import KernelState

WORD_MASK = (1 << 64) - 1


class Notification(KernelObject):
    kind = abi.ObjectKind.NOTIFICATION
    __slots__ = ("word", "waiters")

    def __init__(self) -> None:
        super().__init__()
        self.word = 0
        self.waiters: deque[Pending] = deque()

    def take(self) -> int:
        word, self.word = self.word, 0
        return word

    def destroy(self) -> None:
        while (op := pop_live(self.waiters)) is not None:
            op.finish()
            op.proc.complete(
                op.op,
                op.req_id,
                Status.PEER_CLOSED,
                payload=(b"the notification was destroyed: its last capability was closed"),
            )


def invoke_signal(k: KernelState, proc: Proc, h: Header, cap: Capability) -> None:
    ntfn: Notification = cap.obj
    if h.arg == 0:
        raise OpError(Status.INVALID_ARGS, "bits must be a non-zero 64-bit mask")
    ntfn.word |= h.arg & WORD_MASK
    waiter = pop_live(ntfn.waiters)
    if waiter is not None:
        waiter.finish()
        waiter.proc.complete(waiter.op, waiter.req_id, Status.OK, arg=ntfn.take())
    proc.complete(h.opcode, h.req_id, Status.OK)


def invoke_wait(k: KernelState, proc: Proc, h: Header, cap: Capability) -> None:
    ntfn: Notification = cap.obj
    if ntfn.word:
        proc.complete(h.opcode, h.req_id, Status.OK, arg=ntfn.take())
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "no signal arrived on the notification")
    else:
        op = Pending(proc, h.req_id, h.opcode, h.deadline, h.slot)
        op.enqueue(ntfn.waiters)
        k.timers.arm(op)


def invoke_poll(k: KernelState, proc: Proc, h: Header, cap: Capability) -> None:
    ntfn: Notification = cap.obj
    proc.complete(h.opcode, h.req_id, Status.OK, arg=ntfn.take())
