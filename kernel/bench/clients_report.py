"""The clients sweep as a terminal table, clients.csv, and throughput_vs_clients.png."""

from __future__ import annotations

import csv
import importlib
from collections.abc import Sequence
from pathlib import Path

from kernel.bench.clients import ClientsPoint

__all__ = ["format_clients", "write_clients"]


def format_clients(points: Sequence[ClientsPoint]) -> str:
    header = ["service", "clients", "payload", "calls", "calls/s", "p50 us", "p99 us", "max us"]
    lines = [header] + [_cells(point) for point in points]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [_join(line, widths) for line in lines]
    out.insert(1, _join(["-" * w for w in widths], widths))
    notes = [f"  {p.mechanism} x{p.clients}: {p.note}" for p in points if p.note]
    return "\n".join(out + notes)


def _cells(point: ClientsPoint) -> list[str]:
    rate = point.calls_per_s
    if not len(point.samples):
        return [point.mechanism, str(point.clients), f"{point.payload_size} B", "0"] + ["-"] * 4
    summary = point.samples.summary()
    return [
        point.mechanism, str(point.clients), f"{point.payload_size} B", str(summary.count),
        "-" if rate is None else f"{rate:.0f}", f"{summary.p50 / 1e3:.1f}",
        f"{summary.p99 / 1e3:.1f}", f"{summary.max / 1e3:.1f}",
    ]  # fmt: skip


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return "  ".join([cells[0].ljust(widths[0]), *rest]).rstrip()


def write_clients(points: Sequence[ClientsPoint], out_dir: Path) -> list[Path]:
    """clients.csv (one line per point, latencies in ns) and, with matplotlib, the plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "clients.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["mechanism", "clients", "payload_size", "calls", "calls_per_s",
                         "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns", "note"])  # fmt: skip
        for p in points:
            s = p.samples.summary() if len(p.samples) else None
            latencies = [s.p50, s.p90, s.p99, s.p999, s.max] if s else [None] * 5
            writer.writerow([p.mechanism, p.clients, p.payload_size, len(p.samples),
                             p.calls_per_s, *latencies, p.note])  # fmt: skip
    return [path, *_plot(points, out_dir)]


def _plot(points: Sequence[ClientsPoint], out_dir: Path) -> list[Path]:
    try:  # optional, as in report.write_plots
        figure = importlib.import_module("matplotlib.figure")
    except ImportError:
        return []
    fig = figure.Figure(figsize=(8, 5))
    ax = fig.subplots()
    for name in dict.fromkeys(p.mechanism for p in points):
        drawn = [(p.clients, p.calls_per_s) for p in points if p.mechanism == name]
        drawn = [(x, y) for x, y in drawn if y is not None]
        if drawn:
            xs, ys = zip(*drawn, strict=True)
            ax.plot(xs, ys, marker="o", label=name)
    ax.set(xscale="log", xlabel="concurrent client processes", ylabel="aggregate calls per second")
    ax.set_xscale("log", base=2)
    ax.set_title("Throughput vs concurrent clients (one server)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = out_dir / "throughput_vs_clients.png"
    fig.savefig(path, dpi=120)
    return [path]
