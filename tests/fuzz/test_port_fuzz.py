"""Fuzz the compiled session port (kernel/_core/port.pyx) with a hostile peer's ring.

A session's peer writes the ring its partner reads, so SessionPort.recv_many and
take_reply must treat it like the kernel treats a process's ring: every call either
returns what is really there (each message's data lies inside the published
records) or raises RingCorruptError; it never reads outside the data area, which
is fenced by PROT_NONE guard pages (a stray read crashes the run).
"""

from __future__ import annotations

import mmap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ring_fuzz import DATA_OFF, SIZE, U64, _guarded_region, hostile_ring

from kernel import abi
from kernel._core.port import SessionPort
from kernel._core.ring import Ring, RingCorruptError, SessionStates

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _port(mm: mmap.mmap, states: SessionStates, out: Ring) -> tuple[SessionPort, Ring]:
    inbox = Ring(mm, DATA_OFF, SIZE, abi.OFF_SQ_TAIL, abi.OFF_SQ_HEAD, abi.OFF_SQ_WAITING)
    return SessionPort(1, out, inbox, states, 0, -1, abi.MAX_PAYLOAD, 5, "peer", 9), inbox


@given(hostile_ring(), st.booleans(), st.integers(0, 2**64 - 1))
@FUZZ
def test_a_hostile_ring_yields_real_messages_or_ring_corrupt(case, replies, req_id):
    data, head, tail = case
    mm, mine, other = _guarded_region(), mmap.mmap(-1, 4096), mmap.mmap(-1, 4096 * 3)
    states = SessionStates(mine)
    states.set(0, abi.SESSION_OPEN)
    out = Ring(other, abi.CONTROL_SIZE, 4096, abi.OFF_CQ_TAIL, abi.OFF_CQ_HEAD, 384)
    port = inbox = None
    try:
        mm[DATA_OFF : DATA_OFF + SIZE] = data
        U64.pack_into(mm, abi.OFF_SQ_HEAD, head)
        port, inbox = _port(mm, states, out)
        U64.pack_into(mm, abi.OFF_SQ_TAIL, tail)  # published after the port started
        window = bytes(mm[DATA_OFF : DATA_OFF + SIZE])
        for _ in range(4):
            try:
                if replies:
                    got = port.take_reply(req_id)
                    assert got is None or (isinstance(got, bytes) and len(got) <= SIZE)
                else:
                    batch: list = []
                    n = port.recv_many(batch, 8)
                    assert n == len(batch)
                    assert 0 <= n <= 8
                    for m in batch:  # the kernel's badge and peer, never the ring's
                        assert (m.badge, m.sender, m.sender_id) == (5, "peer", 9)
                        assert len(m.data) <= SIZE
                        assert not m.data or m.data in window
            except RingCorruptError:
                break
    finally:
        for ring in (inbox, out):
            if ring is not None:
                ring.close()
        states.close()
