"""The one-way throughput rows run end to end; the receiver's counts are checked by the rows
themselves (a wrong count fails the row). No timing assertions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from kernel.bench.mechanisms.mkipc_send import MkipcSend
from kernel.bench.mechanisms.oneway_os import OneWayPipe, OneWaySocketpair, burst_size
from kernel.bench.report import write_outputs
from kernel.bench.runner import BenchConfig, run_bench

pytestmark = pytest.mark.integration


def test_one_way_rows_send_every_burst_and_write_throughput_csv(tmp_path: Path) -> None:
    config = BenchConfig(payload_sizes=(64,), runs=2, roundtrips=2560, warmup=256)
    mechanisms = [OneWayPipe(), OneWaySocketpair(), MkipcSend()]

    result = run_bench(mechanisms, config)

    bursts = config.roundtrips // burst_size(64)
    for mechanism in mechanisms:
        cell = result.cell(mechanism.name, 64)
        assert cell is not None
        assert cell.note is None, cell.note
        assert cell.batch == burst_size(64)
        assert [len(run.samples) for run in cell.runs] == [bursts] * config.runs
        assert mechanism.peer_pids() == []
    write_outputs(result, tmp_path, plots=False)
    with (tmp_path / "throughput.csv").open(newline="", encoding="utf-8") as file:
        table = list(csv.DictReader(file))
    assert [row["mechanism"] for row in table] == [m.name for m in mechanisms]
    assert [int(row["messages"]) for row in table] == [bursts * config.runs * 256] * 3


def test_mkipc_send_above_the_maximum_payload_is_a_skipped_row() -> None:
    config = BenchConfig(payload_sizes=(512 * 1024,), runs=1, roundtrips=10, warmup=0)
    cell = run_bench([MkipcSend()], config).cell("mkipc.send", 512 * 1024)
    assert cell is not None
    assert cell.count == 0
    assert "at most" in (cell.note or "")


def test_the_asyncio_row_makes_every_call_of_every_burst() -> None:
    from kernel.bench.mechanisms.mkipc_async import BURST, MkipcAsyncInFlight

    config = BenchConfig(payload_sizes=(64,), runs=2, roundtrips=BURST * 12, warmup=BURST)
    mechanism = MkipcAsyncInFlight()
    cell = run_bench([mechanism], config).cell(mechanism.name, 64)
    assert cell is not None
    assert cell.note is None, cell.note
    assert cell.batch == BURST
    assert [len(run.samples) for run in cell.runs] == [12, 12]
    assert mechanism.peer_pids() == []  # torn down: kernel, name server and echo ended
