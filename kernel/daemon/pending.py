"""Deadlines of operations that wait inside the kernel (the ops live in kcore)."""

from __future__ import annotations

import heapq
import itertools

from .._core.kcore import Pending as Pending

WAITING, AWAIT_REPLY, DONE = 0, 1, 2  # Pending.phase, as in kcore.pyx


class Timers:
    """A deadline heap with lazy deletion: finished ops are skipped when they surface."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Pending]] = []
        self._seq = itertools.count()

    def arm(self, op: Pending) -> None:
        if op.deadline < 0:  # forever: nothing to arm; 0 expires at the next check
            return
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
