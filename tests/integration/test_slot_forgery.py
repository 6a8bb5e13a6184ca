"""Forged, stale and foreign slot numbers never name a capability (DESIGN §5).

A slot number means something only in the table of the process that got it from
the kernel, and only until that capability is closed or revoked. These tests
throw many numbers at one connection through the raw ring (pipelined, so
100,000 requests take seconds) and require a BAD_SLOT answer for every one,
a kernel that keeps serving, and an intact connection and victim afterwards.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kernel
from capabilities import DEFAULT_ENDPOINT_RIGHTS
from kernel import Rights, Status, abi
from kernel.abi import Op

pytestmark = pytest.mark.integration

PEERS = Path(__file__).parent / "peers"
HOLDER = str(PEERS / "caps_holder.py")

FORGERIES = 100_000
PIPELINE = 256
TIME_LIMIT_S = 30.0
INDEX_BITS = 16

# (opcode, arg, payload): reads, and operations that would change state if a forged
# slot ever resolved (close, copy, revoke, send, signal, mint), so a hit cannot hide.
PROBES = [
    (Op.CAP_INFO, 0, b""),
    (Op.NOTIFICATION_POLL, 0, b""),
    (Op.CAP_INFO, 0, b""),
    (Op.NOTIFICATION_POLL, 0, b""),
    (Op.CAP_CLOSE, 0, b""),
    (Op.CAP_COPY, abi.RIGHTS_SAME, b""),
    (Op.CAP_REVOKE, 0, b""),
    (Op.ENDPOINT_SEND, 0, b"forged"),
    (Op.NOTIFICATION_SIGNAL, 1, b""),
    (Op.CAP_MINT, abi.RIGHTS_SAME, (7).to_bytes(8, "little")),
]


def fire(conn, slots: list[int]) -> tuple[collections.Counter, list[str]]:
    """Submit one probe per slot, PIPELINE at a time; count the statuses.

    Returns (statuses by name, descriptions of every non-BAD_SLOT answer).
    """
    statuses: collections.Counter = collections.Counter()
    hits: list[str] = []
    n_probes = len(PROBES)
    for start in range(0, len(slots), PIPELINE):
        batch = []
        for i in range(start, min(start + PIPELINE, len(slots))):
            op, arg, payload = PROBES[i % n_probes]
            req = conn.submit(op, slots[i], abi.DEADLINE_NOW, arg, payload)
            batch.append((req, op, slots[i]))
        for req, op, slot in batch:
            c = conn.wait(req)
            try:
                name = Status(c.status).name
            except ValueError:
                name = str(c.status)
            statuses[name] += 1
            if c.status != Status.BAD_SLOT:
                hits.append(f"{op.name} on slot {slot:#x}: status {name} ({c.reason()!r})")
    return statuses, hits


def near_misses(slot: int) -> list[int]:
    """Numbers one step from a live slot: other generations, stray high bits."""
    index, gen = slot & ((1 << INDEX_BITS) - 1), slot >> INDEX_BITS
    out = [((gen + d) << INDEX_BITS) | index for d in (1, 2, 3, 1 << 16, 1 << 32, 1 << 47)]
    out += [((gen - 1) << INDEX_BITS) | index, index, gen << INDEX_BITS]  # gen 0, index 0
    out += [slot | (1 << b) for b in (48, 56, 63)]
    out += [slot ^ (1 << b) for b in range(INDEX_BITS)]  # a neighbouring index, same gen
    return [s & (2**64 - 1) for s in out]


def test_one_hundred_thousand_forged_stale_and_foreign_slots_all_fail(kernel_daemon):
    seed = int(os.environ.get("MKIPC_SEED", "0")) or random.SystemRandom().getrandbits(32)
    rnd = random.Random(seed)
    with kernel.connect(autostart=False) as k:
        ep = k.endpoint()  # the holder answers the final call through it
        holder = k.spawn(
            [sys.executable, HOLDER, "1200"],
            caps={"ep": ep},
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            # Stale slots of this process: closed, revoked, and of destroyed objects.
            stale: list[int] = []
            live = [ep]
            for i in range(150):
                n = k.notification()
                a, b = n.copy(), n.mint(badge=i + 1)
                c = b.copy(rights=Rights.SIGNAL | Rights.COPY)
                d = c.copy(rights=Rights.SIGNAL)
                if i % 3 == 0:
                    a.close()
                    stale.append(a.slot)
                    live += [n, b, c, d]
                elif i % 3 == 1:
                    assert n.revoke() == 4
                    stale += [a.slot, b.slot, c.slot, d.slot]
                    live.append(n)
                else:
                    for cap in (d, c, b, a, n):
                        cap.close()
                    stale += [n.slot, a.slot, b.slot, c.slot, d.slot]
            # Every process also holds the name server capability from birth.
            live_slots = {cap.slot for cap in live} | {abi.NAMES_SLOT}
            live_before = {cap.slot: cap.info() for cap in live}
            assert not live_slots & set(stale)

            # Foreign slots: valid in the holder (minus numbers that are also ours).
            line = holder.popen.stdout.readline()
            assert line, "the holder exited before reporting its slots"
            report = json.loads(line)
            foreign = [s for s in report["slots"] if s not in live_slots]
            assert len(foreign) > 1000, f"only {len(foreign)} foreign slots are not also ours"

            near = [s for slot in live_slots for s in near_misses(slot) if s not in live_slots]
            plausible = []  # small generations and indices, as a real table hands out
            while len(plausible) < 20_000:
                s = (rnd.randint(0, 8) << INDEX_BITS) | rnd.randint(0, 4200)
                if s not in live_slots:
                    plausible.append(s)
            slots = [rnd.getrandbits(64) for _ in range(35_000)] + plausible
            for pool, n in ((stale, 15_000), (foreign, 15_000), (near, 15_000)):
                slots += [pool[i % len(pool)] for i in range(n)]
            slots += [0, 2**64 - 1, 2**63, 2**48, 1 << INDEX_BITS]
            del slots[FORGERIES:]
            rnd.shuffle(slots)
            assert len(slots) == FORGERIES

            t0 = time.monotonic()
            statuses, hits = fire(k._conn, slots)
            elapsed = time.monotonic() - t0

            where = f"(seed {seed}; rerun with MKIPC_SEED={seed})"
            assert not hits, f"{len(hits)} forged slots resolved {where}:\n" + "\n".join(hits[:20])
            assert statuses == {"BAD_SLOT": FORGERIES}, f"{statuses} {where}"
            assert elapsed < TIME_LIMIT_S, f"{FORGERIES} forgeries took {elapsed:.1f} s"
            assert kernel_daemon.proc.poll() is None, "the kernel died"

            # Our own capabilities are untouched, and the connection still works.
            assert {cap.slot: cap.info() for cap in live} == live_before
            answer = json.loads(ep.call(b"check", timeout=30).data)
            assert answer == {"intact": len(report["slots"]), "broken": []}
            assert holder.wait(timeout=30) == 0
        finally:
            if holder.popen.poll() is None:
                holder.kill()
            holder.wait(timeout=10)
            holder.popen.stdout.close()


def test_a_closed_or_revoked_slot_never_resolves_to_a_later_object(kernel_daemon):
    with kernel.connect(autostart=False) as k:
        keep = k.endpoint()
        old = k.notification()
        revoked = old.copy()
        old_slot, revoked_slot = old.slot, revoked.slot
        assert old.revoke() == 1
        old.close()
        dead = {old_slot, revoked_slot}
        index_mask = (1 << INDEX_BITS) - 1
        dead_indices = {s & index_mask for s in dead}

        # Churn: with few live capabilities the freed indices come back again and
        # again, each time under a new generation.
        reused = 0
        for i in range(2000):
            new = k.endpoint() if i % 2 else k.notification()
            assert new.slot not in dead
            reused += (new.slot & index_mask) in dead_indices
            dead.add(new.slot)
            new.close()
            if i % 50 == 0:
                for slot in (old_slot, revoked_slot):
                    with pytest.raises(kernel.InvalidCapabilityError):
                        kernel.NotificationCap(k, slot).poll()
        assert reused >= 1000, f"indices of dead slots were reused only {reused} times"

        # Fill: many objects alive at once, on every free index.
        crowd = [k.endpoint() if i % 2 else k.notification() for i in range(1500)]
        assert not {c.slot for c in crowd} & dead
        statuses, hits = fire(k._conn, sorted(dead) * 2)
        assert not hits, "\n".join(hits[:20])
        assert statuses == {"BAD_SLOT": 2 * len(dead)}
        for cap in crowd:
            cap.close()

        # The capability kept throughout still works: a real call through it.
        assert keep.info().rights == DEFAULT_ENDPOINT_RIGHTS
        server = threading.Thread(target=lambda: keep.recv(timeout=10).reply(b"pong"))
        server.start()
        try:
            assert keep.call(b"ping", timeout=10).data == b"pong"
        finally:
            server.join(10)
        keep.close()
