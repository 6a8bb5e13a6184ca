"""The one-way throughput rows run end to end; the receiver's counts are checked by the rows
themselves (a wrong count fails the row). No timing assertions."""

from __future__ import annotations

import csv
import os
import signal
import threading
from pathlib import Path

import pytest

from kernel.bench.mechanisms.mkipc_send import MkipcSend
from kernel.bench.mechanisms.mkipc_session import MkipcSessionSend
from kernel.bench.mechanisms.oneway_os import OneWayPipe, OneWaySocketpair, burst_size
from kernel.bench.report import write_outputs
from kernel.bench.runner import BenchConfig, run_bench

pytestmark = pytest.mark.integration


def test_one_way_rows_send_every_burst_and_write_throughput_csv(tmp_path: Path) -> None:
    config = BenchConfig(payload_sizes=(64,), runs=2, roundtrips=2560, warmup=256)
    mechanisms = [OneWayPipe(), OneWaySocketpair(), MkipcSend(), MkipcSessionSend()]

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
    assert [int(row["messages"]) for row in table] == [bursts * config.runs * 256] * 4


def test_mkipc_send_above_the_maximum_payload_is_a_skipped_row() -> None:
    config = BenchConfig(payload_sizes=(512 * 1024,), runs=1, roundtrips=10, warmup=0)
    result = run_bench([MkipcSend(), MkipcSessionSend()], config)
    for name in ("mkipc.send", "mkipc.session.send"):
        cell = result.cell(name, 512 * 1024)
        assert cell is not None
        assert cell.count == 0
        assert "at most" in (cell.note or "")


def test_session_sends_fill_the_ring_and_every_burst_is_counted() -> None:
    # 64 KiB: a burst of burst_size() messages (4 MiB) is four times the session's 1 MiB
    # ring, so the sender waits for room while the server drains.
    config = BenchConfig(payload_sizes=(64 * 1024,), runs=1, roundtrips=640, warmup=64)
    cell = run_bench([MkipcSessionSend()], config).cell("mkipc.session.send", 64 * 1024)
    assert cell is not None
    assert cell.note is None, cell.note
    assert cell.batch == burst_size(64 * 1024) == 64
    assert [len(run.samples) for run in cell.runs] == [10]


def test_a_session_send_stuck_on_a_full_ring_is_aborted() -> None:
    # What the runner's watchdog does when a row stalls: abort() from another thread must
    # end a burst that waits for room the server (stopped here) will never make.
    mechanism = MkipcSessionSend()
    mechanism.setup(64 * 1024)
    try:
        mechanism.roundtrip()
        server = mechanism._peer  # the session's server process (our child)
        assert server is not None
        os.kill(server.pid, signal.SIGSTOP)  # it drains nothing more; SIGKILL still ends it
        failed: list[BaseException] = []

        def burst() -> None:
            try:
                mechanism.roundtrip()
            except BaseException as exc:  # noqa: BLE001 - handed to the test thread
                failed.append(exc)

        sender = threading.Thread(target=burst, daemon=True)
        sender.start()
        sender.join(0.3)
        assert sender.is_alive()  # the ring is full
        mechanism.abort()
        sender.join(10)
        assert not sender.is_alive()
        assert isinstance(failed[0], ConnectionError)  # PeerClosedError or PeerLostError
    finally:
        mechanism.teardown()
    assert mechanism.peer_pids() == []


@pytest.mark.parametrize(
    "row", ["mkipc.call.async64", "mkipc.session.async64", "mkipc.service.async64"]
)
def test_the_asyncio_row_makes_every_call_of_every_burst(row: str) -> None:
    from kernel.bench.mechanisms.mkipc_async import BURST, MkipcAsyncInFlight
    from kernel.bench.mechanisms.mkipc_service import MkipcServiceAsync64
    from kernel.bench.mechanisms.mkipc_session import MkipcSessionAsyncInFlight

    config = BenchConfig(payload_sizes=(64,), runs=2, roundtrips=BURST * 12, warmup=BURST)
    rows = {
        "mkipc.call.async64": MkipcAsyncInFlight,
        "mkipc.session.async64": MkipcSessionAsyncInFlight,
        "mkipc.service.async64": MkipcServiceAsync64,
    }
    mechanism = rows[row]()
    cell = run_bench([mechanism], config).cell(mechanism.name, 64)
    assert cell is not None
    assert cell.note is None, cell.note
    assert cell.batch == BURST
    assert [len(run.samples) for run in cell.runs] == [12, 12]
    assert mechanism.peer_pids() == []  # torn down: kernel, name server and echo ended
