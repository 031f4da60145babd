"""From rewards to per-sample tilt weights (METHOD.md sections 4 and 5).

Rewards arrive grouped by prompt, shape ``[P, G]`` (``G`` completions of each
of ``P`` prompts). The tilt weight of a stage with increment ``h`` is
``w_h = exp(h (r - b(c)))``; ``b`` is a per-prompt baseline, which changes each
prompt's overall scale but not the minimiser.
"""

from __future__ import annotations

from typing import Literal

import torch

Baseline = Literal["none", "mean", "min"]


def clamp_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards clamped at 0 (changes the target for negative rewards; kept for comparison)."""
    return rewards.clamp(min=0.0)


def nonnegative_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """``[P, G]`` rewards made non-negative by shifting each group up by its minimum where
    that minimum is negative; groups with no negative reward are returned unchanged.

    METHOD.md section 5 asks for rewards ``>= 0`` so that with ``b = 0`` and ``c <= 1``
    every coefficient of the c-DTM target is non-negative. Clamping at 0 would do that
    by changing the reward (every negative score of a reward model would become the
    same 0). A per-prompt shift is a baseline ``b(c)`` instead, which leaves the
    minimiser unchanged (section 4) and the ESS too; on rewards that are already
    ``>= 0`` (every built-in task's, in [0, 1]) it is the identity, bit for bit.
    """
    low = rewards.min(dim=1, keepdim=True).values
    return rewards - low.clamp(max=0.0)


def group_baseline(rewards: torch.Tensor, kind: Baseline) -> torch.Tensor:
    """Per-prompt baseline ``b(c)`` of ``[P, G]`` rewards, shape ``[P, 1]``.

    ``mean`` centres each group; ``min`` keeps every ``w_h >= 1``.
    """
    if kind == "none":
        return torch.zeros_like(rewards[:, :1])
    if kind == "mean":
        return rewards.mean(dim=1, keepdim=True)
    if kind == "min":
        return rewards.min(dim=1, keepdim=True).values
    raise ValueError(f"unknown baseline {kind!r}; expected 'none', 'mean' or 'min'")


def log_tilt_weights(rewards: torch.Tensor, h: float, baseline: Baseline = "none") -> torch.Tensor:
    """``log w_h = h (r - b)`` for ``[P, G]`` rewards (log space keeps large ``h`` stable)."""
    return h * (rewards - group_baseline(rewards, baseline))


def tilt_weights(rewards: torch.Tensor, h: float, baseline: Baseline = "none") -> torch.Tensor:
    """``w_h = exp(h (r - b))`` for ``[P, G]`` rewards."""
    return log_tilt_weights(rewards, h, baseline).exp()


def self_normalised_weights(rewards: torch.Tensor, h: float) -> torch.Tensor:
    """``w_j = G softmax_j(h r_j)`` within each group: invariant to shifting a group's rewards.

    The same idea as the baseline, with an O(1/G) bias (section 5).
    """
    group = rewards.shape[1]
    return group * torch.softmax(h * rewards, dim=1)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Normalised ESS per prompt, ``(sum_j w_j)^2 / (G sum_j w_j^2)`` in (0, 1], shape ``[P]``."""
    group = weights.shape[1]
    return weights.sum(1) ** 2 / (group * (weights**2).sum(1))


def effective_sample_size_at(rewards: torch.Tensor, h: float) -> torch.Tensor:
    """ESS of the tilt weights at increment ``h``, computed from ``log w`` stably.

    The baseline cancels in the ESS, so it is computed without one.
    """
    logw = h * rewards
    logw = logw - logw.max(dim=1, keepdim=True).values
    return effective_sample_size(logw.exp())
