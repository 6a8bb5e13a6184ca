"""The concurrent-clients sweep end to end: every client's calls arrive, files are written.

No timing assertions: counts, notes, files, and that no client outlives the sweep.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest

from kernel.bench.cli import PAYLOAD_SWEEP, _counts, _sizes
from kernel.bench.clients import SERVICES, run_clients_sweep
from kernel.bench.clients_report import format_clients, write_clients

pytestmark = pytest.mark.integration


def children() -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                if int(stat.read().rsplit(b")", 1)[1].split()[1]) == os.getpid():
                    found.add(int(entry))
        except (OSError, ValueError):
            continue
    return found


def test_every_client_of_every_point_makes_its_calls(tmp_path: Path) -> None:
    before = children()

    services = ["os.unix", "mkipc.call", "mkipc.session", "mkipc.service"]
    points = run_clients_sweep(services, [1, 3], 64, 150, tmp_path / "work")

    assert [(p.mechanism, p.clients) for p in points] == [
        ("os.unix", 1), ("os.unix", 3), ("mkipc.call", 1), ("mkipc.call", 3),
        ("mkipc.session", 1), ("mkipc.session", 3),  # a session per client, one group
        ("mkipc.service", 1), ("mkipc.service", 3),  # a ServiceClient per client
    ]  # fmt: skip
    for point in points:
        assert point.note is None, point.note
        assert len(point.samples) == point.clients * (150 // point.clients)
        assert point.span_ns > 0
    assert children() - before == set()
    paths = write_clients(points, tmp_path / "out")
    with paths[0].open(newline="", encoding="utf-8") as file:
        assert [int(row["calls"]) for row in csv.DictReader(file)] == [150] * 8
    table = format_clients(points)
    assert "mkipc.call" in table
    assert "mkipc.session" in table
    assert "mkipc.service" in table


def test_sweep_arguments() -> None:
    assert _sizes("sweep") == PAYLOAD_SWEEP == (64, 1024, 16384, 262144, 1048576)
    assert _counts("sweep") == (1, 2, 4, 8, 16, 32)
    assert _counts("1,4") == (1, 4)
    with pytest.raises(ValueError):  # the sweep is bounded: at most 32 clients
        run_clients_sweep(["os.unix"], [33], 64, 10, Path("/nonexistent"))


def test_a_client_stays_until_every_client_is_done(tmp_path: Path) -> None:
    """An exit costs an interpreter 10-30 ms of CPU: clients that left as soon as
    their own calls were done slowed the ones still calling. They wait for "done"."""
    stop, spawn = SERVICES["os.unix"](64, 60.0)
    try:
        client = spawn([str(tmp_path), "0", "20", "64"])
        try:
            deadline = time.monotonic() + 30
            while not (tmp_path / "0.ready").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            (tmp_path / "go").touch()
            while not (tmp_path / "0.result").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (tmp_path / "0.result").exists()
            time.sleep(0.3)
            assert client.alive()  # done with its calls, still there
            (tmp_path / "done").touch()
            while client.alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not client.alive()
        finally:
            client.stop()
    finally:
        stop()
