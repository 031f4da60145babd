"""From rewards to per-sample tilt weights (METHOD.md sections 4 and 5).

The tilt weight of a sample ``x`` of prompt ``c`` in a stage with increment ``h`` is
``w_h = exp(h (r(x, c) - b))``. Section 4's minimiser is the tilted posterior for any
baseline ``b`` that is independent of the sample it weights, given the prompt:

- exact (:data:`EXACT_BASELINES`): ``none`` (``b = 0``); ``bound`` (a lower bound of the
  reward declared before training: a task's 0, or ``dtm.reward_lower_bound``);
  ``calibrated`` (the lowest reward of a calibration sample of the base model, drawn
  before training with its own generator); ``leave_one_out`` (the mean of the *other*
  ``G - 1`` rewards of the prompt's group);
- biased (:data:`BIASED_BASELINES`, kept for comparison): ``mean`` and ``min`` of the
  same ``G`` rewards the baseline weights, and ``group_min`` (each group shifted up by
  its minimum where that is negative, what earlier versions did to negative rewards). A
  sample that is its group's minimum always gets weight 1 under ``min``, so its expected
  weight depends on its own reward and the minimiser moves by ``O(1/G)``; self-normalising
  per group (``G softmax(h r)``) has the same order of bias.

A baseline is computed for each row from that row's *whole* group of ``G`` rewards
(``group_rewards``, ``[N, G]``), never from the rows that happen to share its micro-batch:
a micro-batch of single completions carries each row's group with it (section 5).
"""

from __future__ import annotations

import torch

from tiltmatch.dtm.options import BASELINES, FIXED_BASELINES, Baseline


def resolve_baseline(kind: Baseline, declared_bound: float | None) -> Baseline:
    """The baseline a run uses: ``auto`` is the declared lower bound of the reward when there
    is one (every built-in task: 0), else a calibration sample's lowest reward."""
    if kind != "auto":
        return kind
    return "bound" if declared_bound is not None else "calibrated"


def reward_baseline(
    rewards: torch.Tensor,
    group_rewards: torch.Tensor,
    kind: Baseline,
    fixed: float | None = None,
) -> torch.Tensor:
    """The baseline ``b`` of each row, shape ``[N]``.

    ``rewards``: ``[N]``, each row's own reward; ``group_rewards``: ``[N, G]``, the rewards
    of each row's whole group (the row's own among them); ``fixed``: the value of a
    ``bound`` or ``calibrated`` baseline.
    """
    if kind == "none":
        return torch.zeros_like(rewards)
    if kind in FIXED_BASELINES:
        if fixed is None:
            raise ValueError(
                f"baseline {kind!r} needs its value, fixed before training: call the "
                "objective's prepare(phase, reward_lower_bound, calibration) before its "
                "first stage (the trainer does)"
            )
        return torch.full_like(rewards, fixed)
    if kind == "leave_one_out":
        size = group_rewards.shape[1]
        if size < 2:
            raise ValueError("the leave-one-out baseline needs groups of G >= 2 completions")
        return (group_rewards.sum(1) - rewards) / (size - 1)
    if kind == "mean":
        return group_rewards.mean(1)
    if kind == "min":
        return group_rewards.min(1).values
    if kind == "group_min":
        return group_rewards.min(1).values.clamp(max=0.0)
    raise ValueError(f"unknown baseline {kind!r}; expected one of {', '.join(BASELINES[1:])}")


def log_tilt_weights(rewards: torch.Tensor, h: float, baseline: torch.Tensor) -> torch.Tensor:
    """``log w_h = h (r - b)`` (log space keeps large ``h`` stable)."""
    return h * (rewards - baseline)


def tilt_weights(
    rewards: torch.Tensor, h: float, baseline: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """``w_h = exp(h (r - b))``."""
    return torch.exp(h * (rewards - baseline))


def self_normalised_weights(
    rewards: torch.Tensor, group_rewards: torch.Tensor, h: float
) -> torch.Tensor:
    """``w_j = G softmax_j(h r_j)`` within each row's group: ``[N]``, invariant to shifting a
    group's rewards; biased by O(1/G) (section 5). ``exp(h (r - b))`` with ``b`` the
    group's log-mean-exp, computed with the group's maximum subtracted."""
    top = group_rewards.max(1).values
    log_mean = torch.log(torch.exp(h * (group_rewards - top[:, None])).mean(1))
    return torch.exp(h * (rewards - top) - log_mean)


def rows_of_groups(grouped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole groups ``[P, G]`` as rows: each row's reward ``[P G]`` and its group ``[P G, G]``."""
    size = grouped.shape[1]
    return grouped.reshape(-1), grouped.repeat_interleave(size, dim=0)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Normalised ESS per prompt, ``(sum_j w_j)^2 / (G sum_j w_j^2)`` in (0, 1], shape ``[P]``."""
    group = weights.shape[1]
    return weights.sum(1) ** 2 / (group * (weights**2).sum(1))


def effective_sample_size_at(rewards: torch.Tensor, h: float) -> torch.Tensor:
    """ESS of the tilt ``e^{h r}`` over each group ``[P, G]``, computed from ``log w`` stably.

    A per-prompt baseline cancels in the ESS, so it is computed without one: it measures
    how far the stage's tilt moves ``p_a``, which is what the adaptive schedule holds fixed.
    """
    logw = h * rewards
    logw = logw - logw.max(dim=1, keepdim=True).values
    return effective_sample_size(logw.exp())
