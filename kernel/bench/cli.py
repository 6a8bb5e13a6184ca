"""`mkipc bench`: time IPC round trips of mkipc and of the OS's own mechanisms, side by side.

Every mechanism runs in the same session, interleaved run by run, and is reported next to a
baseline (default os.pipe) as a ratio, so results from different machines compare by shape.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from kernel.bench.mechanisms import Mechanism, all_mechanisms
from kernel.bench.report import DEFAULT_BASELINE, format_table, write_outputs
from kernel.bench.runner import PLACEMENTS, BenchConfig, Placement, run_bench

__all__ = ["main"]

# (runs, round trips per run, warm-up round trips, time bound in seconds)
_FULL = (5, 10_000, 1_000, 600.0)
_QUICK = (3, 5_000, 500, 60.0)
_SIZE_SUFFIXES = {"k": 1024, "m": 1024 * 1024}
# `--payload sweep`: 64 B to 1 MiB; 256 KiB is mkipc's MAX_PAYLOAD, so its message rows skip
# 1 MiB (mkipc.memory carries every size: bulk data goes through memory objects).
PAYLOAD_SWEEP = (64, 1024, 16 * 1024, 256 * 1024, 1024 * 1024)
T = TypeVar("T", int, float)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table on stdout and progress on stderr."""
    parser = _parser()
    args = parser.parse_args(argv)
    known = all_mechanisms()
    if args.list:
        _print_list(known)
        return 0
    if args.idle_cpu is not None:
        from kernel.bench.idle import idle_cpu_percent

        pct = idle_cpu_percent(args.idle_cpu)
        print(
            f"idle kernel daemon + name server: {pct:.2f}% of one core over {args.idle_cpu:g} s "
            "(one connected, idle client)"
        )
        return 0
    try:
        config = _config(args)
        chosen = _select(known, args.mechanisms, args.baseline)
    except ValueError as exc:
        parser.error(str(exc))
    progress = _Progress(sys.stderr)
    try:
        result = run_bench(chosen, config, progress=progress)
    except ValueError as exc:  # e.g. a placement this machine cannot do
        progress.done()
        print(f"mkipc bench: {exc}", file=sys.stderr)
        return 2
    progress.done()
    print(format_table(result, args.baseline))
    paths = [] if args.out is None else write_outputs(result, args.out, args.baseline)
    if args.clients:
        calls = _given(args.client_calls, config.roundtrips)
        paths += _clients_sweep(args.clients, calls, config.payload_sizes[0], args.out)
    if paths:
        print(f"wrote {', '.join(str(path) for path in paths)}", file=sys.stderr)
    return 0


def _clients_sweep(
    counts: tuple[int, ...], calls: int, payload_size: int, out: Path | None
) -> list[Path]:
    """The concurrent-clients sweep (`calls` per point), after the main run."""
    from kernel.bench.clients import SERVICES, run_clients_sweep
    from kernel.bench.clients_report import format_clients, write_clients

    print(
        f"clients sweep {', '.join(map(str, counts))}: starting client processes", file=sys.stderr
    )
    with tempfile.TemporaryDirectory(prefix="mkb-clients-") as workdir:
        points = run_clients_sweep(list(SERVICES), counts, payload_size, calls, Path(workdir))
    print()
    print(format_clients(points))
    return [] if out is None else write_clients(points, out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkipc bench", description=__doc__)
    add = parser.add_argument
    add("--quick", action="store_true", help="about a minute at most: fewer runs and round trips")
    add("--mechanisms", metavar="NAMES", help="comma-separated names (default: all; see --list)")
    add("--list", action="store_true", help="list the mechanisms and whether they can run here")
    add(
        "--payload",
        type=_sizes,
        default=(64,),
        metavar="SIZES",
        help="comma-separated payload sizes in bytes, k/m suffixes allowed, or `sweep` "
        "for 64,1k,16k,256k,1m (default: 64)",
    )
    add(
        "--clients",
        type=_counts,
        metavar="COUNTS",
        help="also sweep concurrent client processes on one server, e.g. 1,4,32 or `sweep` "
        "for 1,2,4,8,16,32 (at most 32), at the first payload size",
    )
    add(
        "--client-calls",
        type=_positive,
        metavar="N",
        help="calls per point of the clients sweep, split over its clients (default: "
        "--roundtrips); the latency rows keep --roundtrips",
    )
    add(
        "--runs", type=int, help=f"timed runs per mechanism (default {_FULL[0]}, quick {_QUICK[0]})"
    )
    add(
        "--roundtrips",
        type=int,
        help=f"round trips per run (default {_FULL[1]}, quick {_QUICK[1]})",
    )
    add("--warmup", type=int, help=f"untimed round trips first (default {_FULL[2]})")
    add(
        "--baseline",
        default=DEFAULT_BASELINE,
        help="mechanism the ratios divide by; always run (default: %(default)s)",
    )
    add(
        "--placement",
        choices=PLACEMENTS,
        default="unpinned",
        help="pin this process and the peers to one CPU, or to two different CPUs",
    )
    add(
        "--max-seconds",
        type=float,
        metavar="S",
        help=f"stop cleanly after this long (default {_FULL[3]:g}, quick {_QUICK[3]:g})",
    )
    add("--out", type=Path, metavar="DIR", help="write results.json, CSV files and plots here")
    add(
        "--pace",
        type=float,
        default=0.0,
        metavar="MS",
        help="idle this many ms between round trips (untimed), e.g. 10: every call then "
        "starts with every process asleep",
    )
    add(
        "--idle-cpu",
        type=float,
        metavar="S",
        help="instead of latency: the idle daemon's CPU use over S seconds",
    )
    return parser  # fmt: skip


def _sizes(text: str) -> tuple[int, ...]:
    """``"64,4k,1m"`` -> (64, 4096, 1048576); ``"sweep"`` -> PAYLOAD_SWEEP."""
    if text.strip().lower() == "sweep":
        return PAYLOAD_SWEEP
    try:
        return tuple(_size(part.strip().lower()) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None


def _counts(text: str) -> tuple[int, ...]:
    """``"1,4,32"`` -> (1, 4, 32); ``"sweep"`` -> 1, 2, 4 … 32."""
    from kernel.bench.clients import CLIENT_COUNTS, MAX_CLIENTS

    if text.strip().lower() == "sweep":
        return CLIENT_COUNTS
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of client counts: {text!r}") from None
    if not counts or not all(1 <= n <= MAX_CLIENTS for n in counts):
        raise argparse.ArgumentTypeError(f"client counts must be within 1..{MAX_CLIENTS}")
    return counts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def _size(text: str) -> int:
    scale = _SIZE_SUFFIXES.get(text[-1:], 1)
    return int(text[:-1] if scale != 1 else text) * scale


def _config(args: argparse.Namespace) -> BenchConfig:
    runs, roundtrips, warmup, max_seconds = _QUICK if args.quick else _FULL
    placement: Placement = args.placement
    return BenchConfig(
        payload_sizes=args.payload,
        runs=_given(args.runs, runs),
        roundtrips=_given(args.roundtrips, roundtrips),
        warmup=_given(args.warmup, warmup),
        max_seconds=_given(args.max_seconds, max_seconds),
        placement=placement,
        pace_s=args.pace / 1000.0,
    )


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


def _select(known: Sequence[Mechanism], names: str | None, baseline: str) -> list[Mechanism]:
    """The mechanisms asked for (all if ``names`` is None), plus the baseline, in known order."""
    by_name = {mechanism.name: mechanism for mechanism in known}
    wanted = set(by_name) if names is None else {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(wanted - set(by_name))
    if unknown:
        raise ValueError(f"unknown mechanism(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    if baseline in by_name:
        wanted.add(baseline)
    return [mechanism for mechanism in known if mechanism.name in wanted]


def _print_list(known: Sequence[Mechanism]) -> None:
    width = max((len(mechanism.name) for mechanism in known), default=0)
    for mechanism in known:
        reason = mechanism.unavailable()
        print(f"{mechanism.name.ljust(width)}  {'ok' if reason is None else reason}")


class _Progress:
    """One status line on stderr, rewritten in place on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = 0

    def __call__(self, line: str) -> None:
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))  # blank out a longer old line
            self._width = max(self._width, len(line))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._tty and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


if __name__ == "__main__":  # python -m kernel.bench.cli
    sys.exit(main())
