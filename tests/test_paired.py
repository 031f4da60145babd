"""Paired comparisons: t intervals, the two-level paired bootstrap, and the ranking rule."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tiltmatch.experiments.bench import compare, paired_goal
from tiltmatch.experiments.paired import (
    bootstrap_seeds,
    paired_bootstrap,
    t_interval,
    t_quantile_975,
    verdict,
)


def test_t_interval_matches_hand_computation() -> None:
    mean, low, high = t_interval([0.1, 0.2, 0.3])
    half = 4.303 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(0.2)
    assert (low, high) == pytest.approx((0.2 - half, 0.2 + half))
    assert t_interval([0.5])[1:] == (-math.inf, math.inf)
    assert t_quantile_975(100) == 1.96
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_t_interval_covers_the_mean_at_about_95_percent() -> None:
    rng = random.Random(0)
    hits = 0
    for _ in range(2000):
        _, low, high = t_interval([rng.gauss(1.0, 2.0) for _ in range(4)])
        hits += low <= 1.0 <= high
    assert 0.93 <= hits / 2000 <= 0.97


def test_paired_bootstrap_sees_a_consistent_difference_that_unpaired_noise_hides() -> None:
    # Prompts differ a lot in difficulty, A beats B by about 0.05 on every prompt: the
    # paired interval excludes 0 although each method's own spread over prompts is +-0.3.
    rng = random.Random(1)
    seeds_a, seeds_b = [], []
    for _ in range(3):
        hard = [rng.uniform(0.1, 0.9) for _ in range(40)]
        seeds_b.append(hard)
        seeds_a.append([h + 0.05 + rng.gauss(0.0, 0.02) for h in hard])
    mean, low, high = paired_bootstrap(seeds_a, seeds_b)
    assert mean == pytest.approx(0.05, abs=0.01)
    assert 0 < low < mean < high < 0.1
    assert verdict(low, high) == ">"
    # Swapping the roles flips the sign; no difference gives a degenerate interval at 0.
    assert verdict(*paired_bootstrap(seeds_b, seeds_a)[1:]) == "<"
    assert paired_bootstrap(seeds_a, seeds_a) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        paired_bootstrap(seeds_a, seeds_b[:2])


def test_bootstrap_seeds_handles_never_reached() -> None:
    median, low, high = bootstrap_seeds([0.3, 0.4, math.inf])
    assert median == 0.4 and low == 0.3 and high == math.inf


def _record(method: str, seed: int, acc: float, curve: list[float]) -> dict:
    points = [{"rollouts": 100 * i, "heldout_accuracy": a} for i, a in enumerate(curve)]
    return {
        "method": method,
        "seed": seed,
        "heldout_accuracy": acc,
        "curve": points,
        "per_prompt_accuracy": [acc + 0.01 * (i % 3 - 1) for i in range(9)],
    }


def test_compare_claims_a_ranking_only_when_both_intervals_exclude_zero() -> None:
    records = [_record("dtm", s, 0.60 + 0.01 * s, [0.3, 0.6]) for s in range(3)]
    records += [_record("wd1", s, 0.40 + 0.01 * s, [0.3, 0.4]) for s in range(3)]
    records += [_record("rejection", s, [0.55, 0.70, 0.58][s], [0.3, 0.6]) for s in range(3)]
    assert compare(records, "dtm", "wd1")["verdict"] == ">"
    close = compare(records, "dtm", "rejection")
    assert close["verdict"] == "~"  # per-seed differences of both signs
    assert close["per_seed"] == pytest.approx([0.05, -0.09, 0.04])
    goal = paired_goal(records, size=type("S", (), {"budget": 100})())
    assert goal["best_baseline"] == "rejection"
    # Seed 1's DTM curve never reaches rejection's 0.70: counted as never (inf).
    assert goal["fraction_of_budget_to_match"][1] == math.inf
    assert statistics.median(goal["fraction_of_budget_to_match"]) == goal["fraction_median"]
