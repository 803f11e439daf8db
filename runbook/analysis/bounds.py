"""How sure a verdict is: bounds on a loss rate from `lost` of `n` exposed requests at
95% confidence. With none lost, the exact one-sided binomial (Clopper-Pearson) upper
bound, 1 - 0.05^(1/n) (about 3/n, the rule of three); with losses, the Wilson score
interval, which behaves near 0 and 1 where the normal approximation does not."""

from __future__ import annotations

import math

#: The two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def upper_bound_none_lost(n: int, confidence: float = 0.95) -> float | None:
    """The one-sided upper bound on the loss rate when 0 of `n` were lost; None for n = 0
    (nothing exposed says nothing)."""
    if n < 0 or not 0 < confidence < 1:
        raise ValueError(f"n={n} must be >= 0 and confidence={confidence} in (0, 1)")
    if n == 0:
        return None
    return 1 - (1 - confidence) ** (1 / n)


def wilson_interval(lost: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval for `lost` of `n`; None for n = 0."""
    if not 0 <= lost <= n:
        raise ValueError(f"lost={lost} must be within 0..n={n}")
    if n == 0:
        return None
    p = lost / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def loss_bounds(lost: int, n: int) -> dict[str, float | list[float] | None]:
    """The comparison's fields: the observed rate, and the bound that fits it."""
    if n == 0:
        return {"loss_rate": None, "loss_rate_upper_95": None, "loss_rate_interval_95": None}
    if lost == 0:
        upper = upper_bound_none_lost(n)
        return {
            "loss_rate": 0.0,
            "loss_rate_upper_95": None if upper is None else round(upper, 6),
            "loss_rate_interval_95": None,
        }
    interval = wilson_interval(lost, n)
    assert interval is not None
    return {
        "loss_rate": round(lost / n, 6),
        "loss_rate_upper_95": None,
        "loss_rate_interval_95": [round(interval[0], 6), round(interval[1], 6)],
    }


def percent(rate: float) -> str:
    """0.009318 -> `0.93%`; small rates keep two significant digits."""
    pct = rate * 100
    return f"{pct:.2g}%" if pct < 0.1 else f"{pct:.2f}%"
