"""Latency statistics that keep every sample.

Why exact: tail percentiles (p99.9) over a few thousand round trips are decided by a handful of
samples, so bucketed histograms or float interpolation would move them. We store every round trip
as an int of nanoseconds in an ``array('q')`` (8 bytes each, no boxing), merge by concatenation,
and read percentiles by the **nearest-rank** definition:

    rank(q) = ceil(q / 100 * n), clamped to [1, n];  P_q = sorted_samples[rank - 1]

so every reported percentile is a latency that was really observed, P_100 is the maximum and
P_0 the minimum (https://en.wikipedia.org/wiki/Percentile#The_nearest-rank_method).
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

__all__ = [
    "REPORTED_PERCENTILES",
    "LatencySamples",
    "RunSpread",
    "Summary",
    "median_of_runs",
    "percentile",
    "ratio_table",
    "summarize",
]

K = TypeVar("K", bound=Hashable)

# The percentiles every report shows, in this order.
REPORTED_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


class LatencySamples:
    """An append-only multiset of latencies in integer nanoseconds."""

    __slots__ = ("_ns",)

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._ns = array("q", values)

    def add(self, ns: int) -> None:
        self._ns.append(ns)

    def __len__(self) -> int:
        return len(self._ns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencySamples) and self._ns == other._ns

    __hash__ = None  # type: ignore[assignment]  # mutable, like list

    def __repr__(self) -> str:
        return f"LatencySamples(<{len(self._ns)} samples>)"

    def values(self) -> array[int]:
        """A copy of the raw samples, in recording order."""
        return array("q", self._ns)

    def sorted_values(self) -> list[int]:
        return sorted(self._ns)

    def merge(self, other: LatencySamples) -> LatencySamples:
        """A new set holding both: merging is concatenation, nothing is resampled."""
        merged = LatencySamples()
        merged._ns = self._ns + other._ns
        return merged

    def percentile(self, q: float) -> int:
        return percentile(self.sorted_values(), q)

    def summary(self) -> Summary:
        return summarize(self.sorted_values())


def _exact(q: float) -> Fraction:
    """``q`` as the decimal the caller wrote: Fraction(99.9) would be 99.900000000000005684…,
    which moves ceil(q * n / 100) up by one whenever q * n / 100 is an integer."""
    return Fraction(repr(q)) if isinstance(q, float) else Fraction(q)


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile ``q`` (0..100) of ascending ``sorted_values``.

    Raises:
        ValueError: ``sorted_values`` is empty or ``q`` is outside [0, 100].
    """
    if not sorted_values:
        raise ValueError("percentile: `sorted_values` must not be empty")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile: `q` must be within [0, 100], got {q!r}")
    n = len(sorted_values)
    rank = math.ceil(_exact(q) * n / 100)
    return sorted_values[min(max(rank, 1), n) - 1]


@dataclass(frozen=True)
class Summary:
    """Percentiles of one sample set, all in nanoseconds."""

    count: int
    p50: int
    p90: int
    p99: int
    p999: int
    max: int
    min: int
    mean: float


def summarize(sorted_values: Sequence[int]) -> Summary:
    """Summary of ascending ``sorted_values`` (sort once, read every percentile from it)."""
    p50, p90, p99, p999 = (percentile(sorted_values, q) for q in REPORTED_PERCENTILES)
    return Summary(
        count=len(sorted_values),
        p50=p50,
        p90=p90,
        p99=p99,
        p999=p999,
        max=sorted_values[-1],
        min=sorted_values[0],
        mean=sum(sorted_values) / len(sorted_values),  # exact int sum, one rounding
    )


@dataclass(frozen=True)
class RunSpread:
    """The median of per-run values and how far the runs disagree."""

    median: float
    low: float  # min over runs
    high: float  # max over runs
    q1: float  # quartiles (statistics.quantiles, inclusive method); equal to median for 1 run
    q3: float
    runs: int


def median_of_runs(values: Sequence[float]) -> RunSpread:
    """Median across runs (e.g. each run's p50), so one disturbed run cannot move the result.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("median_of_runs: `values` must not be empty")
    median = float(statistics.median(values))
    if len(values) < 2:
        q1 = q3 = median
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return RunSpread(median, float(min(values)), float(max(values)), q1, q3, len(values))


def ratio_table(values: Mapping[K, float], baseline: K) -> dict[K, float | None]:
    """Each value divided by the baseline's value; None when there is no usable baseline."""
    base = values.get(baseline)
    if not base:
        return {key: None for key in values}
    return {key: value / base for key, value in values.items()}
