"""runbook.analysis.bounds against known values."""

from __future__ import annotations

import pytest

from runbook.analysis.bounds import loss_bounds, percent, upper_bound_none_lost, wilson_interval


@pytest.mark.parametrize(
    ("n", "upper"),
    [
        (1, 0.95),
        (10, 0.2589),  # 1 - 0.05^(1/10)
        (320, 0.009318),  # the README's example: about 3/320
        (10_000, 0.0002995),  # the busy scenario's goal: below 0.03%
    ],
)
def test_the_exact_upper_bound_with_none_lost(n: int, upper: float) -> None:
    assert upper_bound_none_lost(n) == pytest.approx(upper, rel=1e-3)


def test_the_rule_of_three_is_its_large_n_limit() -> None:
    for n in (300, 3000, 30000):
        assert upper_bound_none_lost(n) == pytest.approx(3 / n, rel=0.01)


@pytest.mark.parametrize(
    ("lost", "n", "low", "high"),
    [
        (10, 100, 0.0552, 0.1744),  # the textbook case
        (2, 10, 0.0567, 0.5098),
        (1, 1, 0.2065, 1.0),
        (5, 5, 0.5655, 1.0),
    ],
)
def test_wilson_interval_known_values(lost: int, n: int, low: float, high: float) -> None:
    interval = wilson_interval(lost, n)
    assert interval is not None
    assert interval[0] == pytest.approx(low, abs=5e-4)
    assert interval[1] == pytest.approx(high, abs=5e-4)


def test_nothing_exposed_says_nothing() -> None:
    assert upper_bound_none_lost(0) is None and wilson_interval(0, 0) is None
    assert loss_bounds(0, 0) == {
        "loss_rate": None,
        "loss_rate_upper_95": None,
        "loss_rate_interval_95": None,
    }


@pytest.mark.parametrize(("lost", "n"), [(-1, 3), (4, 3)])
def test_counts_outside_their_range_are_refused(lost: int, n: int) -> None:
    with pytest.raises(ValueError, match=f"lost={lost} must be within 0..n={n}"):
        wilson_interval(lost, n)


def test_percent_keeps_small_rates_readable() -> None:
    assert (percent(0.009318), percent(0.0002995), percent(0.2)) == ("0.93%", "0.03%", "20.00%")
