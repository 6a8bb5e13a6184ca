"""The library rows of `mkipc bench` (pyzmq, Pyro5, gRPC, iceoryx2) end to end.

No timing assertions: counts, skip notes, and that no server peer outlives the benchmark.
"""

from __future__ import annotations

import os

import pytest

from kernel.bench.mechanisms import Mechanism, all_mechanisms
from kernel.bench.mechanisms._served import missing_package
from kernel.bench.mechanisms.lib_zmq import PyzmqReqRep
from kernel.bench.runner import BenchConfig, run_bench

pytestmark = pytest.mark.integration

SMOKE = BenchConfig(payload_sizes=(64,), runs=2, roundtrips=150, warmup=20, max_seconds=60)


def library_mechanisms() -> list[Mechanism]:
    return [m for m in all_mechanisms() if type(m).__module__.rpartition(".")[2].startswith("lib_")]


def children() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == os.getpid():
            found.add(int(entry))
    return found


def test_every_library_row_runs_every_round_trip_or_says_why_not() -> None:
    mechanisms = library_mechanisms()
    assert {m.name for m in mechanisms} >= {"pyzmq.req-rep", "pyro5", "grpc.unix"}
    before = children()

    result = run_bench(mechanisms, SMOKE)

    for mechanism in mechanisms:
        cell = result.cell(mechanism.name, 64)
        assert cell is not None
        if mechanism.unavailable() is not None:
            assert (cell.note or "").startswith("skipped: needs")
            continue
        assert cell.note is None, cell.note
        assert [len(run.samples) for run in cell.runs] == [SMOKE.roundtrips] * SMOKE.runs
        assert mechanism.peer_pids() == []
    assert children() - before == set()  # name server and echo servers are gone


def test_a_missing_package_is_a_skipped_row_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_package("mkipc_no_such_module", "nothing") is not None
    monkeypatch.setattr(
        PyzmqReqRep, "unavailable", lambda self: missing_package("mkipc_no_such_module", "pyzmq")
    )

    cell = run_bench([PyzmqReqRep()], SMOKE).cell("pyzmq.req-rep", 64)

    assert cell is not None
    assert cell.count == 0
    assert cell.note == "skipped: needs pyzmq (pip install 'mkipc[bench]')"
