"""Turn a BenchResult into a terminal table, JSON, CSV and (with matplotlib) PNG plots.

What the numbers mean:
- p50 is the median over runs of each run's p50, with the runs' min–max beside it: one
  disturbed run cannot move it, and the spread shows how much the runs agreed.
- p90 … max are nearest-rank percentiles of all runs' samples merged (kernel.bench.stats).
- The ratio compares each run's p50 with the baseline's p50 *of the same interleaved run*, then
  takes the median over runs, so drift between runs cancels out.
- CPU µs/op is CPU time over the runs divided by round trips; "self" is this process, including
  the timing loop; "peers" is every peer pid (the echo process, or the daemon and server).
"""

from __future__ import annotations

import csv
import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kernel.bench.runner import BenchResult, Cell
from kernel.bench.stats import median_of_runs, ratio_table
from kernel.bench.throughput import (
    ThroughputRow,
    baseline_for,
    format_throughput,
    throughput_rows,
)

__all__ = [
    "DEFAULT_BASELINE",
    "Row",
    "format_table",
    "result_to_dict",
    "rows",
    "write_csv",
    "write_json",
    "write_outputs",
    "write_plots",
]

DEFAULT_BASELINE = "os.pipe"
SCHEMA = "mkipc-bench/1"


@dataclass(frozen=True)
class Row:
    """One line of the report: a (mechanism, payload size) cell, reduced. Times in ns."""

    mechanism: str
    payload_size: int
    runs: int
    count: int
    p50_ns: float | None = None  # median over runs of the per-run p50
    p50_low_ns: float | None = None  # the runs' lowest and highest p50
    p50_high_ns: float | None = None
    p90_ns: int | None = None  # p90 … max: over all runs' samples merged
    p99_ns: int | None = None
    p999_ns: int | None = None
    max_ns: int | None = None
    mean_ns: float | None = None
    ratio: float | None = None  # median over runs of p50 / baseline p50 in the same run
    cpu_self_us_per_op: float | None = None
    cpu_peers_us_per_op: float | None = None
    note: str | None = None


def rows(result: BenchResult, baseline: str = DEFAULT_BASELINE) -> list[Row]:
    """Reduce every latency cell of ``result`` to a Row, in the result's order.

    Throughput cells (batch > 1) are reduced by kernel.bench.throughput instead.
    """
    ratios = _run_ratios(result, baseline)
    return [
        _row(cell, ratios.get((cell.mechanism, cell.payload_size), []))
        for cell in _latency_cells(result)
    ]


def _latency_cells(result: BenchResult) -> list[Cell]:
    return [cell for cell in result.cells if cell.batch == 1]


def _run_ratios(result: BenchResult, baseline: str) -> dict[tuple[str, int], list[float]]:
    """Per (mechanism, payload): p50 / baseline p50 for every run index both have."""
    per_run: dict[tuple[int, int], dict[str, float]] = {}  # (payload, run index) -> name -> p50
    for cell in _latency_cells(result):
        for run in cell.runs:
            if len(run.samples):
                key = (cell.payload_size, run.index)
                per_run.setdefault(key, {})[cell.mechanism] = run.samples.percentile(50)
    out: dict[tuple[str, int], list[float]] = {}
    for (payload, _), p50s in sorted(per_run.items()):
        for name, ratio in ratio_table(p50s, baseline).items():
            if ratio is not None:
                out.setdefault((name, payload), []).append(ratio)
    return out


def _row(cell: Cell, ratios: list[float]) -> Row:
    runs = [run for run in cell.runs if len(run.samples)]
    cpu_self, cpu_peers = cell.cpu_us_per_op()
    row = Row(
        cell.mechanism,
        cell.payload_size,
        runs=len(runs),
        count=cell.count,
        cpu_self_us_per_op=cpu_self,
        cpu_peers_us_per_op=cpu_peers,
        note=cell.note,
    )
    if not runs:
        return row
    p50 = median_of_runs([run.samples.percentile(50) for run in runs])
    merged = cell.merged().summary()
    return replace(
        row,
        p50_ns=p50.median,
        p50_low_ns=p50.low,
        p50_high_ns=p50.high,
        p90_ns=merged.p90,
        p99_ns=merged.p99,
        p999_ns=merged.p999,
        max_ns=merged.max,
        mean_ns=merged.mean,
        ratio=median_of_runs(ratios).median if ratios else None,
    )


# --- terminal ------------------------------------------------------------------------------


def format_table(result: BenchResult, baseline: str = DEFAULT_BASELINE) -> str:
    """The report as plain text (ASCII only, so any terminal encoding can print it)."""
    reduced = rows(result, baseline)
    table = [_header(baseline)] + [_cells(row) for row in reduced]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [_join(line, widths) for line in table]
    lines.insert(1, _join(["-" * w for w in widths], widths))
    oneway = baseline_for(baseline)
    tp = format_throughput(throughput_rows(result, oneway), oneway)
    return "\n".join([*lines, *_notes(reduced), *([""] + tp if tp else []), *_footer(result)])


def _header(baseline: str) -> list[str]:
    return [
        "mechanism", "payload", "p50 us", "(runs min-max)", "p90", "p99", "p99.9", "max",
        f"x {baseline}", "cpu us/op self", "peers",
    ]  # fmt: skip


def _cells(row: Row) -> list[str]:
    spread = f"({_us(row.p50_low_ns)}-{_us(row.p50_high_ns)})" if row.p50_ns is not None else ""
    return [
        row.mechanism, f"{row.payload_size} B", _us(row.p50_ns), spread, _us(row.p90_ns),
        _us(row.p99_ns), _us(row.p999_ns), _us(row.max_ns), _ratio(row.ratio),
        _num(row.cpu_self_us_per_op), _num(row.cpu_peers_us_per_op),
    ]  # fmt: skip


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    first = cells[0].ljust(widths[0])
    return "  ".join(
        [first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))]
    ).rstrip()


def _us(ns: float | None) -> str:
    return "-" if ns is None else _num(ns / 1e3)


def _num(value: float | None) -> str:
    """About three significant digits without exponents: 0.123, 12.3, 123, 12345."""
    if value is None:
        return "-"
    digits = 3 if value < 1 else 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _notes(reduced: list[Row]) -> Iterator[str]:
    for row in reduced:
        if row.note:
            yield f"  {row.mechanism} ({row.payload_size} B): {row.note}"


def _footer(result: BenchResult) -> Iterator[str]:
    cfg, env = result.config, result.environment
    yield (
        f"{cfg.runs} runs x {cfg.roundtrips} round trips (interleaved), warm-up {cfg.warmup}; "
        f"placement {result.placement.get('mode')}; {result.elapsed_s:.1f} s"
        + (f"; paced: {cfg.pace_s * 1000:g} ms idle between round trips" if cfg.pace_s else "")
    )
    yield (
        f"{env.get('cpu_model')}, {env.get('usable_cpus')} CPUs; kernel {env.get('kernel')}; "
        f"{env.get('python')}; timer overhead {env.get('clock_overhead_ns')} ns per sample"
        + ("; sched_autogroup on" if env.get("sched_autogroup") else "")
    )
    if result.stop_reason:
        yield f"stopped early: {result.stop_reason}"


# --- files ---------------------------------------------------------------------------------


def result_to_dict(result: BenchResult, baseline: str = DEFAULT_BASELINE) -> dict[str, Any]:
    """Everything but the raw samples (those go to samples.csv), JSON-ready."""
    return {
        "schema": SCHEMA,
        "baseline": baseline,
        "config": asdict(result.config),
        "environment": result.environment,
        "placement": result.placement,
        "stop_reason": result.stop_reason,
        "elapsed_s": result.elapsed_s,
        "rows": [asdict(row) for row in rows(result, baseline)],
        "throughput_baseline": baseline_for(baseline),
        "throughput": [asdict(row) for row in throughput_rows(result, baseline_for(baseline))],
        "runs": [_cell_runs(cell) for cell in result.cells],
    }


def _cell_runs(cell: Cell) -> dict[str, Any]:
    return {
        "mechanism": cell.mechanism,
        "payload_size": cell.payload_size,
        "batch": cell.batch,
        "note": cell.note,
        "runs": [
            {
                "index": run.index,
                "wall_ns": run.wall_ns,
                "cpu_self_ns": run.cpu_self_ns,
                "cpu_peers_ns": run.cpu_peers_ns,
                "peer_cpus": {str(pid): list(v) for pid, v in run.peer_cpus.items()},
                "summary": asdict(run.samples.summary()) if len(run.samples) else None,
            }
            for run in cell.runs
        ],
    }


def write_json(result: BenchResult, out_dir: Path, baseline: str = DEFAULT_BASELINE) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(result_to_dict(result, baseline), indent=2) + "\n", "utf-8")
    return path


def write_csv(result: BenchResult, out_dir: Path, baseline: str = DEFAULT_BASELINE) -> list[Path]:
    """summary.csv (one line per latency row), throughput.csv (one per throughput row) and
    samples.csv (every timed operation in ns: a round trip, or a burst of ``messages``)."""
    summary, samples = out_dir / "summary.csv", out_dir / "samples.csv"
    fields = list(Row.__dataclass_fields__)
    with summary.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(asdict(row) for row in rows(result, baseline))
    with samples.open("w", newline="", encoding="utf-8") as file:
        writer_raw = csv.writer(file)
        writer_raw.writerow(["mechanism", "payload_size", "run", "seq", "latency_ns", "messages"])
        for cell in result.cells:
            for run in cell.runs:
                for seq, ns in enumerate(run.samples.values()):
                    row = [cell.mechanism, cell.payload_size, run.index, seq, ns, cell.batch]
                    writer_raw.writerow(row)
    return [summary, samples, *_write_throughput_csv(result, out_dir, baseline)]


def _write_throughput_csv(result: BenchResult, out_dir: Path, baseline: str) -> list[Path]:
    table = throughput_rows(result, baseline_for(baseline))
    if not table:
        return []
    path = out_dir / "throughput.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(ThroughputRow.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(row) for row in table)
    return [path]


def write_plots(result: BenchResult, out_dir: Path, baseline: str = DEFAULT_BASELINE) -> list[Path]:
    """PNG plots if matplotlib is installed (the optional [bench] extra); else nothing."""
    try:  # imported by name: optional, and Figure needs no pyplot global state
        figure = importlib.import_module("matplotlib.figure")
    except ImportError:
        return []
    sizes = sorted({cell.payload_size for cell in _latency_cells(result)})
    paths = [_plot_cdf(figure, result, size, out_dir / f"cdf_{size}B.png") for size in sizes]
    if len(sizes) > 1:
        paths.append(_plot_vs_payload(figure, rows(result, baseline), out_dir))
    oneway = throughput_rows(result, baseline_for(baseline))
    if len({row.payload_size for row in oneway}) > 1:
        paths.append(_plot_throughput_vs_payload(figure, oneway, out_dir))
    return paths


def _plot_cdf(figure: Any, result: BenchResult, size: int, path: Path) -> Path:
    fig = figure.Figure(figsize=(8, 5))
    ax = fig.subplots()
    drawn = [cell for cell in _latency_cells(result) if cell.payload_size == size and cell.count]
    for index, cell in enumerate(drawn):
        values = [ns / 1e3 for ns in cell.merged().sorted_values()]
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        ax.plot(values, fractions, label=cell.mechanism, linestyle=_line_style(index))
    ax.set(xscale="log", xlabel="round-trip latency (us)", ylabel="fraction of round trips")
    ax.set_title(f"Latency CDF, {size} B payload")
    _finish(fig, ax, path)
    return path


def _plot_vs_payload(figure: Any, table: list[Row], out_dir: Path) -> Path:
    fig = figure.Figure(figsize=(8, 5))
    ax = fig.subplots()
    for index, name in enumerate(dict.fromkeys(row.mechanism for row in table)):
        points = [
            (row.payload_size, row.p50_ns / 1e3)
            for row in table
            if row.mechanism == name and row.p50_ns is not None
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=name, linestyle=_line_style(index))
    ax.set(xscale="log", yscale="log", xlabel="payload (bytes)", ylabel="p50 round trip (us)")
    ax.set_title("Median latency vs payload size")
    path = out_dir / "latency_vs_payload.png"
    _finish(fig, ax, path)
    return path


def _plot_throughput_vs_payload(figure: Any, table: list[ThroughputRow], out_dir: Path) -> Path:
    fig = figure.Figure(figsize=(8, 5))
    ax = fig.subplots()
    for index, name in enumerate(dict.fromkeys(row.mechanism for row in table)):
        points = [(r.payload_size, r.msgs_per_s) for r in table if r.mechanism == name]
        drawn = [(x, y) for x, y in points if y is not None]
        if drawn:
            xs, ys = zip(*drawn, strict=True)
            ax.plot(xs, ys, marker="o", label=name, linestyle=_line_style(index))
    ax.set(xscale="log", yscale="log", xlabel="payload (bytes)", ylabel="messages per second")
    ax.set_title("One-way throughput vs payload size")
    path = out_dir / "throughput_vs_payload.png"
    _finish(fig, ax, path)
    return path


def _line_style(index: int) -> str:
    """Matplotlib cycles 10 colours; change the dash pattern so line 11 differs from line 1."""
    return ("-", "--", ":", "-.")[index // 10 % 4]


def _finish(fig: Any, ax: Any, path: Path) -> None:
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_outputs(
    result: BenchResult, out_dir: Path, baseline: str = DEFAULT_BASELINE, *, plots: bool = True
) -> list[Path]:
    """Write JSON, CSV and (if possible and wanted) plots into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_json(result, out_dir, baseline), *write_csv(result, out_dir, baseline)]
    return paths + (write_plots(result, out_dir, baseline) if plots else [])
