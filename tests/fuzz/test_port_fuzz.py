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


# ------------------------------------------------------------------ the call words

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["call", "recv", "reply", "drop", "withdraw", "take"]), st.integers(0, 7)
    ),  # fmt: skip
    max_size=60,
)


@given(_OPS)
@settings(FUZZ, max_examples=1500)  # ~2 s: each example is a few hundred µs
def test_every_call_ends_the_same_way_for_caller_and_server(ops):
    """Any interleaving of calls, receives, replies, drops, withdrawals and takes,
    with ids crowded onto two call words: when it has all settled, each call's
    caller got its reply exactly when its server saw the reply delivered, got
    "dropped" only when its server dropped it, and no reply came for a call
    whose withdrawal was accepted."""
    import kernel
    from kernel._core.port import FULL, OK
    from kernel._core.ring import ring_pair

    shared, mine = mmap.mmap(-1, abi.CONTROL_SIZE + 2 * (1 << 16)), mmap.mmap(-1, 4096)
    states = SessionStates(mine)
    states.set(0, abi.SESSION_OPEN)
    requests, replies = ring_pair(shared, 1 << 16, 1 << 16)
    caller = SessionPort(1, requests, replies, states, 0, -1, abi.MAX_PAYLOAD, 0, "s", 9)
    server = SessionPort(1, replies, requests, states, 0, -1, abi.MAX_PAYLOAD, 5, "c", 8)
    lap = abi.MAX_TRACKED_CALLS
    ids = iter(range(1, 10**9))
    open_calls: list[int] = []  # written, not given up, no answer taken yet
    received: list = []  # (id, message) the server holds
    served: dict[int, str] = {}  # id -> delivered / refused / dropped
    got: dict[int, str] = {}  # id -> answered / dropped / withdrawn / awaited

    def take() -> None:
        while (c := caller.take_record()) is not None:
            assert c.req_id not in got or got[c.req_id] == "awaited"
            got[c.req_id] = "dropped" if c.status else "answered"
            if c.req_id in open_calls:
                open_calls.remove(c.req_id)

    try:
        for op, k in ops:
            if op == "call":
                req_id = next(i for i in ids if i % lap < 2)  # two words, crowded
                code = caller.send(abi.Op.ENDPOINT_CALL, req_id, b"%d" % req_id)
                assert code in (OK, FULL)
                if code == OK:
                    open_calls.append(req_id)
            elif op == "recv":
                batch: list = []
                server.recv_many(batch, 8)
                received += [(int(m.data), m) for m in batch]
            elif op in ("reply", "drop") and received:
                req_id, msg = received.pop(k % len(received))
                if op == "drop":
                    del msg
                    served[req_id] = "dropped"
                    continue
                try:
                    msg.reply(b"r")
                    served[req_id] = "delivered"
                except kernel.PeerClosedError as e:  # only its caller giving up
                    served[req_id] = "refused" if e.status == kernel.Status.CALLER_GONE else "?"
            elif op == "withdraw" and open_calls:
                req_id = open_calls.pop(k % len(open_calls))
                got[req_id] = "withdrawn" if caller.withdraw(req_id) else "awaited"
            elif op == "take":
                take()
        batch = []
        while server.recv_many(batch, 64):  # settle everything: the server answers all
            pass
        received += [(int(m.data), m) for m in batch]
        for req_id, msg in received:
            try:
                msg.reply(b"r")
                served[req_id] = "delivered"
            except kernel.PeerClosedError:
                served[req_id] = "refused"
        received.clear()
        take()
        for req_id in open_calls:  # answered by now: nothing was lost
            assert got.get(req_id) in ("answered", "dropped"), req_id
        for req_id, outcome in served.items():
            expected = {"delivered": "answered", "dropped": "dropped"}.get(outcome, "withdrawn")
            if outcome == "dropped" and got.get(req_id) == "withdrawn":
                continue  # dropped after its caller gave up: nothing written, both agree
            assert got.get(req_id) == expected, (req_id, outcome, got.get(req_id))
        for _ in range(2):  # settled: no word is still held back from a new call
            assert caller.send(abi.Op.ENDPOINT_CALL, next(i for i in ids if i % lap < 2), b"") == OK
    finally:
        received.clear()
        for ring in (requests, replies):
            ring.close()
        states.close()
