"""Operations that wait inside the kernel, and the deadlines that end them."""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .objects.endpoint import Reply
    from .process import Proc

WAITING, AWAIT_REPLY, DONE = 0, 1, 2


class Pending:
    """One blocked operation of one process.

    Invariant: phase == WAITING  <=> the op sits in exactly one wait queue (`queue`);
               phase == AWAIT_REPLY <=> a call was delivered and `reply` points back here.
    """

    __slots__ = (
        "proc",
        "req_id",
        "op",
        "deadline",
        "slot",
        "payload",
        "badge",
        "is_call",
        "queue",
        "reply",
        "phase",
    )

    def __init__(self, proc: Proc, req_id: int, op: int, deadline: int, slot: int = 0) -> None:
        self.proc = proc
        self.req_id = req_id
        self.op = op
        self.deadline = deadline
        self.slot = slot
        self.payload = b""
        self.badge = 0
        self.is_call = False
        self.queue: deque[Pending] | None = None
        self.reply: Reply | None = None
        self.phase = WAITING

    def enqueue(self, queue: deque[Pending]) -> None:
        self.queue = queue
        queue.append(self)
        self.proc.pending[self.req_id] = self

    def dequeue(self) -> None:
        if self.queue is not None:
            self.queue.remove(self)
            self.queue = None

    def finish(self) -> None:
        """Leave every structure; the caller posts the completion."""
        self.dequeue()
        self.phase = DONE
        if self.proc.pending.get(self.req_id) is self:
            del self.proc.pending[self.req_id]


def pop_live(queue: deque[Pending]) -> Pending | None:
    """The oldest op in `queue`, taken out of it (dead ops never stay queued)."""
    if not queue:
        return None
    op = queue.popleft()
    op.queue = None
    return op


class Timers:
    """A deadline heap with lazy deletion: finished ops are skipped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Pending]] = []
        self._seq = itertools.count()

    def arm(self, op: Pending) -> None:
        if op.deadline >= 0:  # 0 (return at once) expires at the next check
            heapq.heappush(self._heap, (op.deadline, next(self._seq), op))

    def next_deadline(self) -> int | None:
        while self._heap and self._heap[0][2].phase == DONE:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def pop_expired(self, now: int) -> list[Pending]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, _, op = heapq.heappop(self._heap)
            if op.phase != DONE and op.deadline <= now:
                out.append(op)
        return out
