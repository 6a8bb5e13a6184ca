"""kernel.bench.throughput: burst samples become messages per second and same-run ratios."""

from __future__ import annotations

import pytest

from kernel.bench.report import format_table, rows
from kernel.bench.runner import BenchConfig, BenchResult, Cell, RunRecord
from kernel.bench.stats import LatencySamples
from kernel.bench.throughput import baseline_for, throughput_rows


def run(index: int, burst_ns: list[int]) -> RunRecord:
    return RunRecord(index, LatencySamples(burst_ns), sum(burst_ns), 1000 * len(burst_ns), None)


def result(cells: list[Cell]) -> BenchResult:
    return BenchResult(BenchConfig(), {}, {"mode": "unpinned"}, cells, None, 1.0)


def test_rate_is_messages_over_burst_time_and_ratio_is_per_run() -> None:
    # os.pipe.send: 100 messages per 1 ms burst = 100k/s in both runs.
    # other: 200k/s in run 0 and 50k/s in run 1 -> ratios 2.0 and 0.5, median 1.25.
    base = Cell("os.pipe.send", 64, [run(0, [10**6] * 3), run(1, [10**6] * 3)], batch=100)
    other = Cell("other", 64, [run(0, [5 * 10**5] * 3), run(1, [2 * 10**6] * 3)], batch=100)

    by_name = {row.mechanism: row for row in throughput_rows(result([base, other]), "os.pipe.send")}

    assert by_name["os.pipe.send"].msgs_per_s == pytest.approx(1e5)
    assert by_name["os.pipe.send"].ratio == 1.0
    assert by_name["other"].messages == 600
    assert (by_name["other"].msgs_per_s_low, by_name["other"].msgs_per_s_high) == (
        pytest.approx(5e4),
        pytest.approx(2e5),
    )
    assert by_name["other"].ratio == pytest.approx(1.25)
    assert by_name["other"].cpu_self_us_per_msg == pytest.approx(0.01)  # 1 µs per 100 messages


def test_latency_and_throughput_rows_never_mix() -> None:
    latency = Cell("os.pipe", 64, [run(0, [1000, 2000])])
    oneway = Cell("os.pipe.send", 64, [run(0, [10**6])], batch=50)
    skipped = Cell("mkipc.send", 64, note="skipped: not here", batch=50)
    both = result([latency, oneway, skipped])

    assert [row.mechanism for row in rows(both)] == ["os.pipe"]
    assert [row.mechanism for row in throughput_rows(both, "os.pipe.send")] == [
        "os.pipe.send",
        "mkipc.send",
    ]
    text = format_table(both)
    assert "x os.pipe.send" in text
    assert "mkipc.send (64 B): skipped: not here" in text
    assert baseline_for("os.pipe") == "os.pipe.send"


def test_the_baselines_rows_come_before_mkipcs() -> None:
    names = ["mkipc.service.async64", "os.pipe.send", "mkipc.send", "os.socketpair.send"]
    cells = [Cell(name, 64, [run(0, [10**6])], batch=50) for name in names]
    assert [row.mechanism for row in throughput_rows(result(cells), "os.pipe.send")] == [
        "os.pipe.send",
        "os.socketpair.send",
        "mkipc.service.async64",
        "mkipc.send",
    ]
