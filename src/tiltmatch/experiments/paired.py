"""Paired comparisons of two methods run on the same seeds and prompts, with intervals.

The side-by-side runs every method on the same seeds (the same base, the same
training prompt order and the same held-out prompts per seed), so method
differences are measured *paired*: per seed, ``d_s = x_A(s) - x_B(s)``. Two
intervals are given for the mean difference:

- a Student-t interval over seeds (the seed-to-seed spread of ``d_s``; with 3
  seeds the t quantile is 4.30, so only large, consistent differences separate);
- a two-level paired bootstrap over seeds and, within each, held-out prompts
  (the same resampled prompts for both methods), which also carries the
  finite-evaluation noise of each seed's number.

A ranking "A above B" is claimed only where an interval of ``A - B`` lies above
zero (:func:`verdict`): the intervals of the difference, not of each method's mean,
are the paired test.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

#: two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (beyond: 1.96)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """``t_{0.975, df}`` (the 95% two-sided Student-t quantile)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1), got df = {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student-t interval of the mean of ``values``.

    One value has no spread to estimate: its interval is unbounded.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("t_interval needs at least one value")
    mean = statistics.fmean(vals)
    if len(vals) == 1:
        return mean, -math.inf, math.inf
    half = t_quantile_975(len(vals) - 1) * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, mean - half, mean + half


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    # Nearest-rank on sorted values: works with infinities (no interpolation of inf - inf).
    k = min(max(round(q * (len(sorted_values) - 1)), 0), len(sorted_values) - 1)
    return sorted_values[k]


def paired_bootstrap(
    per_prompt_a: Sequence[Sequence[float]],
    per_prompt_b: Sequence[Sequence[float]],
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean difference, low, high): 95% two-level paired bootstrap of ``mean(A) - mean(B)``.

    ``per_prompt_a[s][i]`` is method A's held-out score on prompt ``i`` in seed ``s``
    (B likewise, the same prompts in the same order). Each resample draws seeds with
    replacement and, within each drawn seed, prompts with replacement, the same
    prompts for A and B.
    """
    if len(per_prompt_a) != len(per_prompt_b) or not per_prompt_a:
        raise ValueError("paired_bootstrap needs the same (non-zero) number of seeds for A and B")
    diffs: list[list[float]] = []
    for a, b in zip(per_prompt_a, per_prompt_b, strict=True):
        if len(a) != len(b) or not a:
            raise ValueError("paired_bootstrap needs the same prompts for A and B in every seed")
        diffs.append([float(x) - float(y) for x, y in zip(a, b, strict=True)])
    observed = statistics.fmean(statistics.fmean(d) for d in diffs)
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        seeds = [diffs[rng.randrange(len(diffs))] for _ in diffs]
        stats.append(
            statistics.fmean(statistics.fmean(d[rng.randrange(len(d))] for _ in d) for d in seeds)
        )
    stats.sort()
    return observed, _percentile(stats, 0.025), _percentile(stats, 0.975)


def bootstrap_seeds(
    values: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """(median, low, high): 95% bootstrap interval over seeds of the median of ``values``.

    For quantities that may be infinite (rollouts to reach a level that a seed never
    reaches): the median and nearest-rank percentiles stay defined.
    """
    vals = sorted(float(v) for v in values)
    if not vals:
        raise ValueError("bootstrap_seeds needs at least one value")
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        draw = sorted(vals[rng.randrange(len(vals))] for _ in vals)
        stats.append(_percentile(draw, 0.5))
    stats.sort()
    return _percentile(vals, 0.5), _percentile(stats, 0.025), _percentile(stats, 0.975)


def verdict(low: float, high: float) -> str:
    """``">"`` when the interval of ``A - B`` lies above 0, ``"<"`` below, else ``"~"``."""
    if low > 0:
        return ">"
    if high < 0:
        return "<"
    return "~"
