"""Reduce the one-way throughput rows (Cell.batch > 1) of a BenchResult to messages per second.

What the numbers mean:
- A sample of a throughput row is one burst: ``batch`` pipelined messages and the receiver's
  count. A run's rate is its messages over the sum of its burst times, so the time between two
  bursts (the timing loop) is left out.
- msgs/s is the median over runs, with the runs' min–max beside it.
- The ratio divides each run's rate by the baseline row's rate *in the same interleaved run*
  (``<baseline>.send``, default os.pipe.send), then takes the median over runs.
- CPU µs/msg: CPU time over the runs divided by messages, for this process and for the peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kernel.bench.runner import BenchResult, Cell, RunRecord
from kernel.bench.stats import median_of_runs, ratio_table

__all__ = ["ThroughputRow", "baseline_for", "format_throughput", "throughput_rows"]


@dataclass(frozen=True)
class ThroughputRow:
    mechanism: str
    payload_size: int
    runs: int
    messages: int
    msgs_per_s: float | None = None  # median over runs
    msgs_per_s_low: float | None = None
    msgs_per_s_high: float | None = None
    ratio: float | None = None
    cpu_self_us_per_msg: float | None = None
    cpu_peers_us_per_msg: float | None = None
    note: str | None = None


def baseline_for(latency_baseline: str) -> str:
    """The throughput row that plays the latency baseline's part: os.pipe -> os.pipe.send."""
    return f"{latency_baseline}.send"


def throughput_rows(result: BenchResult, baseline: str) -> list[ThroughputRow]:
    """One row per throughput cell: the baselines' rows (the operating system's), then
    mkipc's, each in the result's order; ``baseline`` is a throughput row. (The
    result's order follows the modules that register the rows, and a module may
    hold a latency row and a throughput row.)"""
    cells = [cell for cell in result.cells if cell.batch > 1]
    cells.sort(key=lambda cell: cell.mechanism.startswith("mkipc."))  # stable
    ratios = _run_ratios(cells, baseline)
    return [_row(cell, ratios.get((cell.mechanism, cell.payload_size), [])) for cell in cells]


def _rate(run: RunRecord, batch: int) -> float:
    return batch * len(run.samples) * 1e9 / sum(run.samples.values())


def _run_ratios(cells: Sequence[Cell], baseline: str) -> dict[tuple[str, int], list[float]]:
    per_run: dict[tuple[int, int], dict[str, float]] = {}  # (payload, run) -> name -> rate
    for cell in cells:
        for run in cell.runs:
            if len(run.samples):
                key = (cell.payload_size, run.index)
                per_run.setdefault(key, {})[cell.mechanism] = _rate(run, cell.batch)
    out: dict[tuple[str, int], list[float]] = {}
    for (payload, _), rates in sorted(per_run.items()):
        for name, ratio in ratio_table(rates, baseline).items():
            if ratio is not None:
                out.setdefault((name, payload), []).append(ratio)
    return out


def _row(cell: Cell, ratios: list[float]) -> ThroughputRow:
    runs = [run for run in cell.runs if len(run.samples)]
    messages = cell.count * cell.batch
    cpu_self, cpu_peers = cell.cpu_us_per_op()  # per burst
    row = ThroughputRow(cell.mechanism, cell.payload_size, len(runs), messages, note=cell.note)
    if not runs:
        return row
    rates = median_of_runs([_rate(run, cell.batch) for run in runs])
    return ThroughputRow(
        cell.mechanism,
        cell.payload_size,
        len(runs),
        messages,
        msgs_per_s=rates.median,
        msgs_per_s_low=rates.low,
        msgs_per_s_high=rates.high,
        ratio=median_of_runs(ratios).median if ratios else None,
        cpu_self_us_per_msg=None if cpu_self is None else cpu_self / cell.batch,
        cpu_peers_us_per_msg=None if cpu_peers is None else cpu_peers / cell.batch,
        note=cell.note,
    )


def format_throughput(table: Sequence[ThroughputRow], baseline: str) -> list[str]:
    """The throughput table as plain ASCII lines, notes last; empty if there are no rows."""
    if not table:
        return []
    header = [
        "one-way", "payload", "msgs/s", "(runs min-max)", f"x {baseline}", "cpu us/msg self",
        "peers",
    ]  # fmt: skip
    lines = [header] + [_cells(row) for row in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [_join(line, widths) for line in lines]
    out.insert(1, _join(["-" * w for w in widths], widths))
    notes = [f"  {row.mechanism} ({row.payload_size} B): {row.note}" for row in table if row.note]
    return out + notes


def _cells(row: ThroughputRow) -> list[str]:
    spread = (
        "" if row.msgs_per_s is None else f"({_k(row.msgs_per_s_low)}-{_k(row.msgs_per_s_high)})"
    )
    ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
    return [
        row.mechanism, f"{row.payload_size} B", _k(row.msgs_per_s), spread, ratio,
        _us(row.cpu_self_us_per_msg), _us(row.cpu_peers_us_per_msg),
    ]  # fmt: skip


def _k(rate: float | None) -> str:
    """Rates in thousands (k) or millions (M), three significant digits."""
    if rate is None:
        return "-"
    value, unit = (rate / 1e6, "M") if rate >= 1e6 else (rate / 1e3, "k")
    return f"{value:.3g}{unit}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return "  ".join([first, *rest]).rstrip()
