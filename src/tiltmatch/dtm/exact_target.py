"""Exact-target evaluation over discrete outcomes (METHOD.md sections 2 and 7).

When a task's outcomes are enumerable (the maze's paths), the reward-tilted
target ``p_beta ∝ p_0 · exp(beta · r)`` (section 2) can be computed from the
base model's own outcome frequencies. The check of section 7: after
annealing to ``beta``, the total-variation distance between the fine-tuned
model's outcome distribution and that target must be near the Monte Carlo
noise floor, the same estimator applied to two independent base samples,
while the expected reward rises. A model that keeps one optimal outcome out
of several has high reward and still fails.

Everything here works on samples of one prompt (hashable outcomes); averaging
over prompts is the caller's choice (:func:`mean_report`). Nothing here knows a
task: the maze's outcome keys and report live in :mod:`tiltmatch.experiments.maze_target`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

Distribution = dict[Hashable, float]
Reward = Callable[[Hashable], float] | Mapping[Hashable, float]


def empirical_distribution(samples: Sequence[Hashable]) -> Distribution:
    """Relative frequency of each distinct outcome among ``samples``."""
    if len(samples) == 0:
        raise ValueError("empirical_distribution needs at least one sample")
    n = len(samples)
    return {x: k / n for x, k in Counter(samples).items()}


def _reward_of(reward: Reward) -> Callable[[Hashable], float]:
    if isinstance(reward, Mapping):
        table = reward

        def lookup(x: Hashable) -> float:
            if x not in table:
                raise KeyError(f"reward table has no entry for outcome {x!r}")
            return float(table[x])

        return lookup
    return lambda x: float(reward(x))


def tilt(dist: Mapping[Hashable, float], reward: Reward, beta: float) -> Distribution:
    """The tilted distribution ``p_beta(x) ∝ p(x) · exp(beta · r(x))`` (METHOD.md section 2).

    ``reward`` is a function of an outcome or a table of rewards. Computed in
    log space with the maximum subtracted, so large ``beta`` cannot overflow.
    Outcomes of probability 0 stay at 0 (the tilt reweights, it never adds
    support).
    """
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    r = _reward_of(reward)
    support = {x: p for x, p in dist.items() if p > 0}
    if not support:
        raise ValueError("cannot tilt a distribution with no positive mass")
    logits = {x: math.log(p) + beta * r(x) for x, p in support.items()}
    top = max(logits.values())
    unnorm = {x: math.exp(v - top) for x, v in logits.items()}
    z = sum(unnorm.values())
    return {x: w / z for x, w in unnorm.items()}


def total_variation(p: Mapping[Hashable, float], q: Mapping[Hashable, float]) -> float:
    """``(1/2) sum_x |p(x) - q(x)|`` over the union of the two supports.

    Summed with :func:`math.fsum` (exactly rounded): the union is a set, whose
    iteration order for string outcomes changes with Python's per-process hash
    seed, and a plain float sum would then differ in the last digit run to run.
    """
    keys = set(p) | set(q)
    return 0.5 * math.fsum(abs(p.get(x, 0.0) - q.get(x, 0.0)) for x in keys)


def expected_reward(dist: Mapping[Hashable, float], reward: Reward) -> float:
    """``E_dist[r]``."""
    r = _reward_of(reward)
    return sum(p * r(x) for x, p in dist.items() if p > 0)


def noise_floor(
    base_a: Sequence[Hashable], base_b: Sequence[Hashable], reward: Reward, beta: float
) -> float:
    """TV between the targets estimated from two independent base samples.

    The same estimator as ``tv_to_target`` with the model's samples replaced
    by a second base sample tilted the same way: the distance a perfect
    fine-tuned model would show from sampling noise alone (METHOD.md section 7).
    Use samples of equal size to the model's for a like-for-like floor.
    """
    target_a = tilt(empirical_distribution(base_a), reward, beta)
    target_b = tilt(empirical_distribution(base_b), reward, beta)
    return total_variation(target_a, target_b)


@dataclass(frozen=True)
class TargetReport:
    """How far a model's outcome distribution is from the tilted target, for one prompt.

    ``tv_to_target``: TV(empirical model, tilt(empirical base_a)).
    ``tv_noise_floor``: the same estimator on two independent base samples.
    Expected rewards are under the empirical model, the estimated target and
    the empirical ``base_a``. ``distinct_optimal_*``: number of distinct optimal
    outcomes among ``base_a`` and the model's samples.
    """

    tv_to_target: float
    tv_noise_floor: float
    expected_reward_model: float
    expected_reward_target: float
    expected_reward_base: float
    distinct_optimal_base: int
    distinct_optimal_model: int

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for JSON and logging)."""
        return {k: float(v) for k, v in asdict(self).items()}


def target_report(
    base_a: Sequence[Hashable],
    base_b: Sequence[Hashable],
    model_samples: Sequence[Hashable],
    reward: Reward,
    beta: float,
    is_optimal: Callable[[Hashable], bool],
) -> TargetReport:
    """Compare a fine-tuned model's samples with the tilted target of the base (section 7).

    ``base_a`` estimates the target, ``base_b`` only sets the noise floor;
    the two must be independent samples of the base model for the same
    prompt, the model's samples come from the fine-tuned model. The model has
    reached the target when ``tv_to_target`` is close to ``tv_noise_floor``.
    """
    base = empirical_distribution(base_a)
    target = tilt(base, reward, beta)
    model = empirical_distribution(model_samples)
    return TargetReport(
        tv_to_target=total_variation(model, target),
        tv_noise_floor=noise_floor(base_a, base_b, reward, beta),
        expected_reward_model=expected_reward(model, reward),
        expected_reward_target=expected_reward(target, reward),
        expected_reward_base=expected_reward(base, reward),
        distinct_optimal_base=sum(1 for x in base if is_optimal(x)),
        distinct_optimal_model=sum(1 for x in model if is_optimal(x)),
    )


def mean_report(reports: Sequence[TargetReport]) -> dict[str, float]:
    """Field-wise mean of per-prompt reports (the prompts weigh equally)."""
    if not reports:
        raise ValueError("mean_report needs at least one report")
    return {
        f.name: sum(float(getattr(r, f.name)) for r in reports) / len(reports)
        for f in fields(TargetReport)
    }
