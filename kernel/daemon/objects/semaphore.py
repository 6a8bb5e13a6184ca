"""Counting semaphores (DESIGN §4), to coordinate processes that share a memory object.

`post` adds to the count and wakes waiters oldest first, one unit each; `wait` takes
a unit or waits for one until its deadline (0: try once). A waiter whose capability
is revoked or closed fails at once, as on every other object.

Post and wait run in kcore (`Core._sem_post`, `Core._sem_wait`): a producer and a
consumer take four of them per item, so each one's cost shows in a round trip.
Only creation is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from capabilities import DEFAULT_SEMAPHORE_RIGHTS

from ... import abi
from ..._core.kcore import OpError, Semaphore
from ..._core.ring import Header
from ...abi import Op
from ...errors import Status
from ..process import Proc

if TYPE_CHECKING:
    from ..state import KernelState


def semaphore_create(k: KernelState, proc: Proc, h: Header) -> None:
    """SEMAPHORE_CREATE: a semaphore whose count starts at `arg`."""
    if not 0 <= h.arg <= abi.MAX_SEMAPHORE_VALUE:
        raise OpError(
            Status.INVALID_ARGS,
            f"semaphore value must be 0 to {abi.MAX_SEMAPHORE_VALUE}, not {h.arg}",
        )
    slot = k.new_object(proc, Semaphore(h.arg), DEFAULT_SEMAPHORE_RIGHTS)
    proc.complete(h.opcode, h.req_id, Status.OK, arg=slot)


HANDLERS: dict[int, Callable[[KernelState, Proc, Header], None]] = {
    Op.SEMAPHORE_CREATE: semaphore_create,
}
