"""kernel.bench.stats: exact nearest-rank percentiles, merging, run medians, ratios."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.bench.stats import (
    LatencySamples,
    median_of_runs,
    percentile,
    ratio_table,
    summarize,
)

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
LATENCIES = st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300)
QUANTILES = st.floats(min_value=0, max_value=100, allow_nan=False)


def test_percentiles_of_one_to_hundred_are_the_ranks_themselves() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (0, 1, 50, 90, 99, 99.9, 100)] == [
        1, 1, 50, 90, 99, 100, 100,
    ]  # fmt: skip


def test_p999_of_a_thousand_samples_is_the_999th_not_the_maximum() -> None:
    # 99.9 as a binary float is 99.900000000000005684..., which would round rank 999 up to 1000.
    values = list(range(1, 1001))
    assert percentile(values, 99.9) == 999
    assert percentile(values, 99.99) == 1000


def test_percentile_rejects_empty_samples_and_out_of_range_quantiles() -> None:
    with pytest.raises(ValueError, match="sorted_values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q"):
        percentile([1], 100.5)
    with pytest.raises(ValueError, match="q"):
        percentile([1], -1)


def test_summary_reports_each_percentile_the_max_and_the_exact_mean() -> None:
    samples = LatencySamples([5, 1, 4, 2, 3])
    summary = samples.summary()
    assert (summary.count, summary.min, summary.max, summary.mean) == (5, 1, 5, 3.0)
    assert (summary.p50, summary.p90, summary.p99, summary.p999) == (3, 5, 5, 5)


def test_samples_keep_recording_order_and_merge_leaves_both_operands_alone() -> None:
    first, second = LatencySamples([3, 1]), LatencySamples([2])
    first.add(7)
    merged = first.merge(second)
    assert merged.values().tolist() == [3, 1, 7, 2]
    assert first.values().tolist() == [3, 1, 7]
    assert second.values().tolist() == [2]
    assert len(merged) == 4


def test_median_of_runs_gives_the_median_and_the_spread() -> None:
    spread = median_of_runs([12.0, 10.0, 30.0, 11.0, 13.0])
    assert (spread.median, spread.low, spread.high, spread.runs) == (12.0, 10.0, 30.0, 5)
    assert (spread.q1, spread.q3) == (11.0, 13.0)
    assert median_of_runs([4.0, 2.0]).median == 3.0


def test_median_of_one_run_is_that_run_and_of_none_is_an_error() -> None:
    spread = median_of_runs([7.0])
    assert (spread.median, spread.low, spread.high, spread.q1, spread.q3) == (7.0,) * 5
    with pytest.raises(ValueError, match="values"):
        median_of_runs([])


def test_ratio_table_divides_by_the_baseline() -> None:
    ratios = ratio_table({"os.pipe": 10.0, "mkipc": 5.0, "tcp": 25.0}, "os.pipe")
    assert ratios == {"os.pipe": 1.0, "mkipc": 0.5, "tcp": 2.5}


@pytest.mark.parametrize("values", [{"mkipc": 5.0}, {"os.pipe": 0.0, "mkipc": 5.0}])
def test_ratio_table_without_a_usable_baseline_has_no_ratios(values: dict[str, float]) -> None:
    assert set(ratio_table(values, "os.pipe").values()) == {None}


@given(LATENCIES, QUANTILES, QUANTILES)
def test_percentiles_are_monotone_in_q(values: list[int], q1: float, q2: float) -> None:
    ordered = sorted(values)
    low, high = sorted((q1, q2))
    assert percentile(ordered, low) <= percentile(ordered, high)


@given(LATENCIES)
def test_p100_is_the_max_and_p0_the_min(values: list[int]) -> None:
    samples = LatencySamples(values)
    assert samples.percentile(100) == max(values) == samples.summary().max
    assert samples.percentile(0) == min(values)


@given(LATENCIES, QUANTILES)
def test_percentile_is_a_sample_that_satisfies_the_nearest_rank_definition(
    values: list[int], q: float
) -> None:
    ordered = sorted(values)
    value, n = percentile(ordered, q), len(ordered)
    exact_q = Fraction(repr(q))  # q as the decimal it prints as, like the implementation
    assert value in ordered
    # At least q% of the samples are <= P_q, and (for q > 0) fewer than q% are < P_q.
    assert sum(v <= value for v in ordered) * 100 >= exact_q * n
    if q > 0:
        assert sum(v < value for v in ordered) * 100 < exact_q * n


@given(st.lists(INT64, max_size=100), st.lists(INT64, max_size=100))
def test_merge_equals_concatenation(left: list[int], right: list[int]) -> None:
    merged = LatencySamples(left).merge(LatencySamples(right))
    assert merged == LatencySamples(left + right)
    assert merged.values().tolist() == left + right


@given(st.lists(LATENCIES, min_size=1, max_size=5))
def test_percentiles_of_merged_runs_equal_percentiles_of_all_samples(runs: list[list[int]]) -> None:
    merged = LatencySamples()
    for run in runs:
        merged = merged.merge(LatencySamples(run))
    everything = sorted(v for run in runs for v in run)
    assert merged.summary() == summarize(everything)
