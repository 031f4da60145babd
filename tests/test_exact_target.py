"""Exact-target evaluation: tilt, total variation, noise floor, and the collapse check."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from tiltmatch.dtm.exact_target import (
    empirical_distribution,
    expected_reward,
    mean_report,
    noise_floor,
    target_report,
    tilt,
    total_variation,
)
from tiltmatch.experiments.maze_target import INVALID, maze_outcome, maze_target_report
from tiltmatch.tasks.maze.task import Maze, MazeTask

# A base over path-like outcomes: four optimal ones (reward 1) with unequal mass,
# detours (reward 0.5625) and the lumped invalid outcome (reward 0).
BASE = {
    "opt1": 0.15,
    "opt2": 0.10,
    "opt3": 0.08,
    "opt4": 0.05,
    "det1": 0.14,
    "det2": 0.10,
    "det3": 0.08,
    "det4": 0.05,
    INVALID: 0.25,
}
REWARD = {k: 1.0 if k.startswith("opt") else 0.5625 if k.startswith("det") else 0.0 for k in BASE}
BETA = 3.0


def draw(dist: dict[str, float], n: int, seed: int) -> list[str]:
    keys = sorted(dist)
    probs = np.array([dist[k] for k in keys])
    idx = np.random.default_rng(seed).choice(len(keys), size=n, p=probs / probs.sum())
    return [keys[i] for i in idx]


def is_optimal(key: object) -> bool:
    return str(key).startswith("opt")


# ----- building blocks ---------------------------------------------------------------------


def test_empirical_distribution() -> None:
    p = empirical_distribution(["a", "b", "a", "c"])
    assert p == {"a": 0.5, "b": 0.25, "c": 0.25}
    with pytest.raises(ValueError):
        empirical_distribution([])


def test_total_variation_properties() -> None:
    rng = random.Random(0)
    dists = []
    for _ in range(5):
        w = {k: rng.random() for k in "abcde" if rng.random() < 0.8} or {"a": 1.0}
        z = sum(w.values())
        dists.append({k: v / z for k, v in w.items()})
    for p in dists:
        assert total_variation(p, p) == 0.0
        for q in dists:
            assert 0.0 <= total_variation(p, q) <= 1.0 + 1e-12
            assert total_variation(p, q) == pytest.approx(total_variation(q, p))
            for r in dists:  # triangle inequality
                assert (
                    total_variation(p, r) <= total_variation(p, q) + total_variation(q, r) + 1e-12
                )
    assert total_variation({"a": 1.0}, {"b": 1.0}) == 1.0  # disjoint supports
    assert total_variation({"a": 0.5, "b": 0.5}, {"a": 1.0}) == pytest.approx(0.5)


def test_tilt_beta_zero_is_identity() -> None:
    out = tilt(BASE, REWARD, 0.0)
    assert out.keys() == BASE.keys()
    for k, p in BASE.items():
        assert out[k] == pytest.approx(p)


def test_tilt_matches_hand_computation() -> None:
    p = {"a": 0.5, "b": 0.3, "c": 0.2}
    r = {"a": 0.0, "b": 1.0, "c": 0.5}
    w = {"a": 0.5, "b": 0.3 * math.e**2, "c": 0.2 * math.e}
    z = sum(w.values())
    out = tilt(p, r, 2.0)
    for k in p:
        assert out[k] == pytest.approx(w[k] / z, rel=1e-12)
    # A callable reward gives the same answer as the table.
    assert tilt(p, r.__getitem__, 2.0) == pytest.approx(out)


def test_tilt_is_stable_and_keeps_support() -> None:
    out = tilt({"a": 0.99, "b": 0.01, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 1.0}, 1e4)
    assert out["b"] == pytest.approx(1.0)
    assert "c" not in out  # zero base mass stays zero: the tilt never adds support
    assert all(math.isfinite(v) for v in out.values())
    with pytest.raises(ValueError, match="beta"):
        tilt({"a": 1.0}, {"a": 1.0}, -1.0)
    with pytest.raises(KeyError, match="no entry"):
        tilt({"a": 1.0}, {}, 1.0)


def test_tilt_raises_expected_reward() -> None:
    rewards = [expected_reward(tilt(BASE, REWARD, b), REWARD) for b in (0.0, 1.0, 3.0, 10.0)]
    assert rewards == sorted(rewards)
    assert rewards[0] == pytest.approx(sum(BASE[k] * REWARD[k] for k in BASE))


# ----- noise floor and the collapse check (METHOD.md section 7) ----------------------------


def test_noise_floor_shrinks_with_sample_size() -> None:
    def mean_floor(n: int) -> float:
        return float(
            np.mean(
                [
                    noise_floor(draw(BASE, n, s), draw(BASE, n, s + 100), REWARD, BETA)
                    for s in range(5)
                ]
            )
        )

    small, large = mean_floor(200), mean_floor(20_000)
    assert large < small / 4  # ~ 1/sqrt(n): a factor 10 for 100x the samples
    assert large < 0.03


def test_exact_model_is_at_the_floor_and_collapsed_model_is_not() -> None:
    n = 5000
    base_a, base_b = draw(BASE, n, 1), draw(BASE, n, 2)
    true_target = tilt(BASE, REWARD, BETA)

    exact = target_report(base_a, base_b, draw(true_target, n, 3), REWARD, BETA, is_optimal)
    assert exact.tv_to_target < 2.0 * exact.tv_noise_floor + 0.01
    assert exact.tv_noise_floor < 0.05
    assert exact.expected_reward_model == pytest.approx(exact.expected_reward_target, abs=0.02)
    assert exact.expected_reward_target > exact.expected_reward_base
    assert exact.distinct_optimal_model == exact.distinct_optimal_base == 4

    # Collapsed: the single most likely optimal outcome. Higher reward than the target,
    # and far from it.
    collapsed = target_report(base_a, base_b, ["opt1"] * n, REWARD, BETA, is_optimal)
    assert collapsed.expected_reward_model == 1.0 > collapsed.expected_reward_target
    assert collapsed.distinct_optimal_model == 1
    assert collapsed.tv_to_target > 0.5
    assert collapsed.tv_to_target > 10 * collapsed.tv_noise_floor

    # The untuned base is also far: it has not moved to the target.
    untuned = target_report(base_a, base_b, draw(BASE, n, 4), REWARD, BETA, is_optimal)
    assert untuned.tv_to_target > 5 * untuned.tv_noise_floor

    summary = mean_report([exact, collapsed])
    assert summary["tv_to_target"] == pytest.approx(
        (exact.tv_to_target + collapsed.tv_to_target) / 2
    )
    assert set(summary) == set(exact.as_dict())


# ----- maze outcomes -----------------------------------------------------------------------

HAND = Maze(grid=("....", ".#..", "....", "...."), start=(0, 0), goal=(3, 3))


def test_maze_outcome_lumps_invalid_responses() -> None:
    task = MazeTask()
    example = task.make_example(HAND)
    assert maze_outcome("RRRDDD", example) == "RRRDDD"
    assert maze_outcome("RRRDDDLR", example) == "RRRDDDLR"
    for bad in ("DRRRDD", "RRRDD", "", "RR?DDD", "URRRDDD"):
        assert maze_outcome(bad, example) == INVALID


def test_maze_target_report() -> None:
    task = MazeTask()
    example = task.make_example(HAND)
    rng = random.Random(0)
    base_a = [task.demonstration(example, rng) for _ in range(400)] + ["DRRRDD"] * 40
    base_b = [task.demonstration(example, rng) for _ in range(400)] + ["RRRDD"] * 40
    model = ["RRRDDD"] * 440
    report = maze_target_report(task, example, base_a, base_b, model, beta=5.0)
    assert report.distinct_optimal_base == 8
    assert report.distinct_optimal_model == 1
    assert report.expected_reward_model == 1.0
    assert report.expected_reward_base < report.expected_reward_target < 1.0
    assert report.tv_to_target > 5 * report.tv_noise_floor


def test_total_variation_does_not_depend_on_the_hash_seed() -> None:
    # String outcomes iterate in a per-process order; the sum must not show it.
    code = (
        "from tiltmatch.dtm.exact_target import total_variation as tv;"
        "p={f'x{i}': (i % 7 + 1) / 10.3 for i in range(40)};"
        "q={f'x{i}': (i % 5 + 1) / 7.1 for i in range(10, 60)};"
        "print(repr(tv(p, q)))"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            check=True,
        ).stdout
        for seed in range(6)
    }
    assert len(outs) == 1
