"""`mkipc bench` end to end: real peer processes, the runner, the report files.

No timing assertions: only counts, notes, files, and that nothing outlives the benchmark.
"""

from __future__ import annotations

import csv
import json
import os
import threading
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

from kernel.bench.cli import main
from kernel.bench.mechanisms import Mechanism, PeerLostError, all_mechanisms
from kernel.bench.report import format_table, rows, write_outputs
from kernel.bench.runner import BenchConfig, BenchResult, run_bench

pytestmark = pytest.mark.integration

SMOKE = BenchConfig(payload_sizes=(64,), runs=2, roundtrips=150, warmup=20, max_seconds=60)
PEER_MARKERS = (b"peer_entry", b"spawn_main")  # command lines of bench peers


def os_mechanisms() -> list[Mechanism]:
    """The built-in OS baselines (modules os_*), not mkipc's own mechanisms."""
    return [m for m in all_mechanisms() if type(m).__module__.rpartition(".")[2].startswith("os_")]


def bench_children() -> list[int]:
    """Live children of this process that are benchmark peers."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError):
            continue  # not a pid, or gone meanwhile
        if ppid == os.getpid() and any(marker in command for marker in PEER_MARKERS):
            found.append(int(entry))
    return found


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_every_available_os_mechanism_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    mechanisms = os_mechanisms()
    resource_tracker.ensure_running()  # mp.Queue starts it once per process; not a leak
    fds_before = open_fds()

    result = run_bench(mechanisms, SMOKE)

    assert result.stop_reason is None
    assert [cell.mechanism for cell in result.cells] == [m.name for m in mechanisms]
    for mechanism in mechanisms:
        cell = result.cell(mechanism.name, 64)
        assert cell is not None
        if mechanism.unavailable() is not None:  # an optional package is missing here
            assert cell.note is not None
            assert cell.note.startswith("skipped:")
            assert cell.count == 0
            continue
        assert cell.note is None, cell.note
        assert [len(run.samples) for run in cell.runs] == [SMOKE.roundtrips] * SMOKE.runs
        assert all(run.cpu_self_ns >= 0 for run in cell.runs)
        assert mechanism.peer_pids() == []
    assert bench_children() == []
    assert open_fds() - fds_before == set()
    check_written_files(result, tmp_path)


def check_written_files(result: BenchResult, out: Path) -> None:
    paths = write_outputs(result, out)
    assert {path.name for path in paths} >= {"results.json", "summary.csv", "samples.csv"}
    document = json.loads((out / "results.json").read_text("utf-8"))
    assert document["schema"] == "mkipc-bench/1"
    assert len(document["rows"]) == len(result.cells)
    assert document["environment"]["python"]
    autogroup = Path("/proc/sys/kernel/sched_autogroup_enabled")
    expected = autogroup.read_text().strip() != "0" if autogroup.exists() else None
    assert document["environment"]["sched_autogroup"] is expected
    with (out / "summary.csv").open(newline="", encoding="utf-8") as file:
        summary = list(csv.DictReader(file))
    assert [row["mechanism"] for row in summary] == [cell.mechanism for cell in result.cells]
    with (out / "samples.csv").open(newline="", encoding="utf-8") as file:
        samples = list(csv.DictReader(file))
    assert len(samples) == sum(cell.count for cell in result.cells)
    assert all(int(sample["latency_ns"]) > 0 for sample in samples)


class FakeMechanism(Mechanism):
    """In-process stand-in: no peer, so the runner's bookkeeping is tested on its own."""

    def __init__(self, name: str, *, reason: str | None = None, fail_after: int = -1) -> None:
        self.name = name
        self._reason = reason
        self._fail_after = fail_after  # round trips before it raises; -1: never
        self.calls = 0
        self.torn_down = 0

    def unavailable(self) -> str | None:
        return self._reason

    def setup(self, payload_size: int) -> None:
        self.calls = 0

    def roundtrip(self) -> None:
        self.calls += 1
        if self.calls == self._fail_after:
            raise PeerLostError("fake peer died")

    def peer_pids(self) -> list[int]:
        return []

    def teardown(self) -> None:
        self.torn_down += 1


class StallingMechanism(FakeMechanism):
    """Waits forever on its first timed round trip, until the watchdog calls abort()."""

    def __init__(self, name: str, warmup: int) -> None:
        super().__init__(name)
        self._warmup = warmup
        self._woken = threading.Event()

    def roundtrip(self) -> None:
        self.calls += 1
        if self.calls > self._warmup:
            self._woken.wait(30)
            raise PeerLostError("aborted")

    def abort(self) -> None:
        self._woken.set()


def test_one_failing_or_missing_mechanism_does_not_stop_the_others() -> None:
    good = FakeMechanism("good")
    missing = FakeMechanism("missing", reason="needs a package that is not installed")
    broken = FakeMechanism("broken", fail_after=SMOKE.warmup + SMOKE.roundtrips + 1)

    result = run_bench([good, missing, broken], SMOKE)

    notes = {cell.mechanism: cell.note or "" for cell in result.cells}
    counts = {cell.mechanism: cell.count for cell in result.cells}
    assert counts == {"good": 300, "missing": 0, "broken": 150}
    assert notes["good"] == ""
    assert notes["missing"] == "skipped: needs a package that is not installed"
    assert notes["broken"].startswith("failed in run 2: PeerLostError")
    assert good.torn_down >= 1
    assert broken.torn_down >= 1
    by_name = {row.mechanism: row for row in rows(result, baseline="good")}
    assert by_name["good"].ratio == 1.0
    assert by_name["missing"].p50_ns is None
    assert "needs a package" in format_table(result, baseline="good")


def test_a_stalled_round_trip_is_aborted_by_the_watchdog() -> None:
    config = BenchConfig(runs=1, roundtrips=10, warmup=5, stall_seconds=0.3)
    stalled = StallingMechanism("stalled", warmup=config.warmup)

    result = run_bench([stalled, FakeMechanism("other")], config)

    cell = result.cell("stalled", 64)
    assert cell is not None
    assert cell.note is not None
    assert "stalled for more than" in cell.note
    other = result.cell("other", 64)
    assert other is not None
    assert other.count == 10


def test_the_time_bound_ends_the_benchmark_cleanly() -> None:
    config = BenchConfig(payload_sizes=(64, 128), runs=3, roundtrips=10**9, max_seconds=0.2)
    fake = FakeMechanism("busy")

    result = run_bench([fake], config)

    assert result.stop_reason is not None
    assert "time bound" in result.stop_reason
    first, second = result.cells
    assert first.count > 0
    assert second.note is not None
    assert second.note.startswith("not run")
    assert fake.torn_down >= 1


def test_cli_prints_the_table_and_writes_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--mechanisms", "os.socketpair", "--runs", "1", "--roundtrips", "50", "--warmup", "5"]

    assert main([*argv, "--out", str(tmp_path)]) == 0

    table = capsys.readouterr().out
    assert "os.socketpair" in table
    assert "os.pipe" in table  # the baseline always runs
    assert (tmp_path / "results.json").is_file()


def test_cli_runs_the_session_rows_alone_and_prints_both_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = "mkipc.session.call,mkipc.session.send"
    argv = ["--mechanisms", names, "--runs", "1", "--roundtrips", "300", "--warmup", "20"]

    assert main([*argv, "--out", str(tmp_path)]) == 0

    latency, _, oneway = capsys.readouterr().out.partition("one-way")
    assert "mkipc.session.call" in latency
    assert "mkipc.session.send" in oneway
    with (tmp_path / "samples.csv").open(newline="", encoding="utf-8") as file:
        samples = [row["mechanism"] for row in csv.DictReader(file)]
    assert samples.count("mkipc.session.call") == 300
    assert samples.count("mkipc.session.send") == 10  # bursts: at least 10 per run
    with (tmp_path / "throughput.csv").open(newline="", encoding="utf-8") as file:
        (sends,) = list(csv.DictReader(file))
    assert (sends["mechanism"], sends["messages"]) == ("mkipc.session.send", "2560")
    assert bench_children() == []


def test_cli_rejects_an_unknown_mechanism(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--mechanisms", "carrier-pigeon"])
    assert exit_info.value.code == 2
    assert "carrier-pigeon" in capsys.readouterr().err
