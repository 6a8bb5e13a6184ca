"""A message queue in the real kernel against a readable model of msgrcv(2)'s rules.

Random sequences of non-blocking sends and receives (types, selectors, EXCEPT,
max_size, truncation, capacity and byte bounds) must give exactly the model's
outcome, message for message: which one a receive takes, what it returns, and
when the kernel says WouldBlock or MessageTooLargeError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernel

pytestmark = pytest.mark.integration

OVERHEAD = 64  # bytes a stored message counts beyond its data (queues.MESSAGE_OVERHEAD)


@dataclass
class QueueModel:
    capacity: int | None
    max_bytes: int
    stored: list[tuple[int, bytes]] = field(default_factory=list)

    def send(self, mtype: int, data: bytes) -> str:
        if len(data) + OVERHEAD > self.max_bytes:
            return "too large"
        used = sum(len(d) + OVERHEAD for _, d in self.stored)
        full = self.capacity is not None and len(self.stored) >= self.capacity
        if full or used + len(data) + OVERHEAD > self.max_bytes:
            return "would block"
        self.stored.append((mtype, data))
        return "ok"

    def recv(self, selector: int, except_type: bool, max_size: int, truncate: bool) -> object:
        index = self._select(selector, except_type)
        if index is None:
            return "would block"
        mtype, data = self.stored[index]
        if len(data) > max_size and not truncate:
            return "too large"
        del self.stored[index]
        return (mtype, data[:max_size])

    def _select(self, selector: int, except_type: bool) -> int | None:
        types = [t for t, _ in self.stored]
        if selector == 0:
            return 0 if types else None
        if selector > 0:
            hits = [i for i, t in enumerate(types) if (t != selector) == except_type]
            return hits[0] if hits else None
        low = [t for t in types if t <= -selector]
        return types.index(min(low)) if low else None


send_op = st.tuples(st.just("send"), st.integers(1, 4), st.binary(max_size=100))
recv_op = st.integers(-4, 4).flatmap(
    lambda sel: st.tuples(
        st.just("recv"),
        st.just(sel),
        st.booleans() if sel > 0 else st.just(False),
        st.integers(0, 120),
        st.booleans(),
    )
)
QUEUES = st.tuples(st.one_of(st.none(), st.integers(0, 5)), st.integers(64, 600))


def _outcome(call, *args, **kwargs) -> object:
    try:
        result = call(*args, **kwargs)
    except kernel.WouldBlock:
        return "would block"
    except kernel.MessageTooLargeError:
        return "too large"
    return "ok" if result is None else (result.mtype, result.data)


@given(QUEUES, st.lists(st.one_of(send_op, recv_op), max_size=30))
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_a_queue_follows_the_model_of_msgrcv(kernel_daemon, queue, ops):
    capacity, max_bytes = queue
    model = QueueModel(capacity, max_bytes)
    with kernel.connect(autostart=False) as k:
        q = k.queue(capacity, max_bytes=max_bytes)
        for op in ops:
            if op[0] == "send":
                _, mtype, data = op
                got = _outcome(q.send_nowait, data, mtype=mtype)
                assert got == model.send(mtype, data), op
            else:
                _, sel, exc, size, trunc = op
                kw = {"mtype": sel, "max_size": size, "truncate": trunc, "except_type": exc}
                assert _outcome(q.recv_nowait, **kw) == model.recv(sel, exc, size, trunc), op
        q.close()
