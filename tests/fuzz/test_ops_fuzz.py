"""Every operation with arguments drawn at random: an answer for each, and a kernel
that stays up for everyone else (DESIGN §3; "bad input gets a clear error").

The ring fuzz sends malformed records; this one sends well-formed records whose
contents are wrong: every opcode (but CANCEL, which is never answered) with slots
drawn from live capabilities of every kind, stale and forged numbers; `arg` from
the edges (0, 1, 2^63, 2^64-1, slot numbers); payloads of edge sizes and 8-byte
numbers (slots, pids, lengths); zero to three capability words. Each record must
be answered (with any status) and the connection must stay up: a disconnect would
mean the kernel took a well-formed record for a hostile one. Afterwards a second
process still gets a call answered, and the kernel_daemon fixture checks that the
kernel logged no traceback and left no object alive at its exit.

Default 3000 records; MKIPC_OPS_FUZZ_RECORDS for more, MKIPC_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import sys
import time

import msgspec
import pytest

import kernel
from kernel import abi
from kernel.abi import Op

pytestmark = pytest.mark.integration

RECORDS = int(os.environ.get("MKIPC_OPS_FUZZ_RECORDS", "3000"))
OPS = [op for op in Op if op not in (Op.PAD, Op.CANCEL)]
EDGES = [0, 1, 2, 7, 64, 4096, 1 << 31, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


class Objects:
    """A fresh capability of every kind, a reply capability among them (of a call
    this process made to itself, pending until the fuzz answers it or the reply
    capability goes); remade every so often, since the fuzz closes, revokes, moves
    and binds them."""

    def __init__(self, k: kernel.Kernel) -> None:
        r, w = k.pipe()
        ep = k.endpoint()
        k._conn.submit(Op.ENDPOINT_CALL, ep.slot, abi.DEADLINE_FOREVER, 0, b"?")  # to itself
        self.msg = ep.recv(timeout=10)
        self.caps = [ep, k.notification(), k.queue(capacity=4), r, w, k.memory(4096),
                     k.semaphore(1)]  # fmt: skip
        self.by_kind = {c.kind: c.slot for c in self.caps}
        self.by_kind["reply capability"] = self.msg._reply_slot
        self.slots = [*self.by_kind.values(), abi.NAMES_SLOT]


# The kind of capability each family of operations wants, so that about half the
# records get past the type check and reach the operation's own rules.
FAMILIES = [  # the first prefix that matches counts
    ("ENDPOINT_REPLY", "reply capability"), ("NOTIFICATION_BIND", "endpoint"),
    ("NOTIFICATION_UNBIND", "endpoint"), ("PROCESS_MONITOR", "notification"),
    ("ENDPOINT", "endpoint"), ("SESSION", "endpoint"), ("NOTIFICATION", "notification"),
    ("QUEUE", "queue"), ("PIPE_READ", "pipe read end"), ("PIPE_WRITE", "pipe write end"),
    ("MEMORY", "memory object"), ("SEMAPHORE", "semaphore"), ("CALL", "reply capability"),
    ("CAP", "notification"),
]  # fmt: skip


def _wanted(op: Op, objects: Objects) -> int | None:
    for prefix, kind in FAMILIES:
        if op.name.startswith(prefix):
            return objects.by_kind.get(kind)
    return None


def _slot(rnd: random.Random, live: list[int], stale: list[int]) -> int:
    pick = rnd.random()
    if pick < 0.6:
        return rnd.choice(live)
    if pick < 0.8 and stale:
        return rnd.choice(stale)
    return rnd.choice([*EDGES, rnd.getrandbits(64), rnd.choice(live) ^ (1 << rnd.randrange(64))])


def _payload(rnd: random.Random, live: list[int]) -> bytes:
    kind = rnd.randrange(6)
    if kind == 0:
        return b""
    if kind == 1:
        return rnd.choice([*live, *EDGES, os.getpid(), 1]).to_bytes(8, "little")
    if kind == 2:
        return abi.QUEUE_RECV_PARAMS.pack(
            rnd.choice([0, 1, -1, 5, -(1 << 63)]), rnd.choice(EDGES), rnd.choice(EDGES)
        )
    if kind == 3:
        return msgspec.msgpack.encode(rnd.choice([["a"], ["a", "b"], [1], {}, "x" * 300]))
    return rnd.randbytes(rnd.choice([1, 7, 8, 9, 16, 100, 4096, 70_000]))


def _record(rnd: random.Random, objects: Objects, stale: list[int]) -> tuple:
    op, live = rnd.choice(OPS), objects.slots
    deadline = abi.DEADLINE_NOW if rnd.random() < 0.8 else time.monotonic_ns() + 2_000_000
    arg = rnd.choice([*EDGES, *live, rnd.getrandbits(64)])
    caps = tuple(_slot(rnd, live, stale) for _ in range(rnd.choice([0, 0, 0, 1, 2, 3])))
    wanted = _wanted(op, objects)
    slot = wanted if wanted is not None and rnd.random() < 0.5 else _slot(rnd, live, stale)
    return op, slot, deadline, arg, _payload(rnd, live), caps


ECHO_ONCE = """import kernel
with kernel.connect() as k:
    m = k.inherited["ep"].recv(timeout=20)
    m.reply(m.data)
"""
RECORDS_PER_CONNECTION = 2000
"""Then a fresh connection: what the records created (never closed: the fuzz holds
no objects for them) would fill the 4096-slot table, and each end of a connection
holding random state is one more thing the kernel must clean up."""


def test_every_operation_with_random_arguments_gets_an_answer(kernel_daemon):
    seed = int(os.environ.get("MKIPC_SEED", "0")) or random.SystemRandom().getrandbits(32)
    rnd = random.Random(seed)
    answered: dict[str, int] = {}
    for first in range(0, RECORDS, RECORDS_PER_CONNECTION):
        count = min(RECORDS_PER_CONNECTION, RECORDS - first)
        _fuzz_one_connection(rnd, seed, first, count, answered)
    with kernel.connect(autostart=False) as other:  # and the kernel serves others
        ep = other.endpoint()
        echo = other.spawn([sys.executable, "-c", ECHO_ONCE], caps={"ep": ep})
        assert ep.call(b"still here", timeout=20).data == b"still here"
        assert echo.wait(timeout=20) == 0
    assert len(answered) > 3, f"seed {seed}: {answered}"  # errors of several kinds, and OKs


def _fuzz_one_connection(
    rnd: random.Random, seed: int, first: int, count: int, answered: dict[str, int]
) -> None:
    with kernel.connect(autostart=False) as k:
        conn, objects, stale = k._conn, Objects(k), []
        for i in range(first, first + count):
            if i % 100 == 99:
                stale += objects.slots[:-1]
                objects = Objects(k)  # the old set closes as it goes
            record = _record(rnd, objects, stale)
            try:
                c = conn.wait(conn.submit(*record))
            except kernel.PeerClosedError as e:
                pytest.fail(f"seed {seed}: record {i} {record[0].name} ended the connection: {e}")
            status = kernel.Status(c.status).name if c.status in set(kernel.Status) else c.status
            answered[status] = answered.get(status, 0) + 1
        # The self-calls are not waited for: a raw receive may have put one's reply
        # capability in this table with no object to close it, so it ends only with
        # the connection (the fixture checks that nothing outlives the kernel).
        n = k.notification()  # the connection still works as it should
        n.signal(5)
        assert n.poll() == 5, f"seed {seed}"
