"""Counting semaphores (DESIGN §4), to coordinate processes that share a memory object.

`post` adds to the count and wakes waiters oldest first, one unit each; `wait` takes
a unit or waits for one until its deadline (0: try once). A waiter whose capability
is revoked or closed fails at once, as on every other object.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import DEFAULT_SEMAPHORE_RIGHTS, Rights

from ... import abi
from ..._core.kcore import KernelObject, OpError, fail_waiters, pop_live
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..pending import Pending
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState


class Semaphore(KernelObject):
    # Invariant: value == 0 or not waiters (a unit never sits beside a waiter).
    def __init__(self, value: int) -> None:
        self.kind = abi.ObjectKind.SEMAPHORE
        self.value = value
        self.waiters: deque[Pending] = deque()

    def destroy(self) -> None:
        fail_waiters(self.waiters, b"the semaphore was destroyed: its last capability was closed")

    def hand_out(self) -> None:
        """Give units to waiters, oldest first, while both last (pop_live fails a
        waiter whose capability was revoked or sent away meanwhile)."""
        while self.value and (op := pop_live(self.waiters)) is not None:
            op.finish()
            self.value -= 1
            op.proc.complete(op.op, op.req_id, Status.OK, arg=self.value)


def _check_count(n: int, what: str) -> None:
    if not 0 <= n <= abi.MAX_SEMAPHORE_VALUE:
        raise OpError(
            Status.INVALID_ARGS, f"semaphore {what} must be 0 to {abi.MAX_SEMAPHORE_VALUE}, not {n}"
        )


def semaphore_create(k: KernelState, proc: Proc, h: Header) -> None:
    """SEMAPHORE_CREATE: a semaphore whose count starts at `arg`."""
    _check_count(h.arg, "value")
    slot = k.new_object(proc, Semaphore(h.arg), DEFAULT_SEMAPHORE_RIGHTS)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)


def semaphore_post(k: KernelState, proc: Proc, h: Header) -> None:
    """SEMAPHORE_POST: add `arg` (at least 1) units. Rights: SIGNAL."""
    sem = k.lookup(proc, h.slot, abi.ObjectKind.SEMAPHORE, Rights.SIGNAL).obj
    assert isinstance(sem, Semaphore)
    if h.arg == 0:
        raise OpError(Status.INVALID_ARGS, "n must be at least 1")
    _check_count(h.arg, "post n")
    if sem.value + h.arg > abi.MAX_SEMAPHORE_VALUE:  # POSIX sem_post: EOVERFLOW
        raise OpError(Status.INVALID_ARGS, f"the count would exceed {abi.MAX_SEMAPHORE_VALUE}")
    sem.value += h.arg
    sem.hand_out()
    proc.complete(h.opcode, h.req_id, Status.OK, arg=sem.value)


def semaphore_wait(k: KernelState, proc: Proc, h: Header) -> None:
    """SEMAPHORE_WAIT: take one unit, waiting for it until the deadline. Rights: WAIT.
    Completes with the count left in `arg`."""
    cap = k.lookup(proc, h.slot, abi.ObjectKind.SEMAPHORE, Rights.WAIT)
    sem = cap.obj
    assert isinstance(sem, Semaphore)
    if sem.value:
        sem.value -= 1
        proc.complete(h.opcode, h.req_id, Status.OK, arg=sem.value)
    elif k.expired(h.deadline):
        raise OpError(Status.TIMED_OUT, "the count is 0")
    else:
        op = Pending(proc, h.req_id, h.opcode, h.deadline)
        op.cap = cap  # revoking or closing it fails the wait at once
        op.enqueue(sem.waiters)
        k.timers.arm(op)


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.SEMAPHORE_CREATE: semaphore_create,
    Op.SEMAPHORE_POST: semaphore_post,
    Op.SEMAPHORE_WAIT: semaphore_wait,
}
