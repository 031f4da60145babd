"""wd1, the weighted-likelihood baseline (METHOD.md section 8).

Within a group of ``G`` completions of one prompt, with advantages ``A``::

    loss = sum_i (softmax(-A)_i - softmax(A)_i) * log pi(o_i)

averaged over groups, where ``log pi(o_i)`` is d1's one-pass estimate
(:mod:`tiltmatch.baselines.likelihood`) summed over the completion's tokens.
Minimising it raises the likelihood of above-average completions and lowers
that of below-average ones; the two weights sum to zero in each group, so a
flat group contributes nothing. No ratio, no clipping, no old-policy or
reference pass.

``A`` is METHOD.md's ``r - mean_group(r)``; the published wd1 divides by the
group's std as well, available as ``normalise_advantages``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from tiltmatch.baselines import BaselineObjective, BaselineOptions, group_advantages
from tiltmatch.baselines.likelihood import draw_prompt_mask, one_pass_token_log_probs
from tiltmatch.objective import LossInputs

_STD_FLOOR = 1e-4  # a group's std below this is treated as flat (no division by ~0)


class WD1Options(BaselineOptions):
    """wd1's options (``method_options``)."""

    num_iterations: int = Field(default=1, ge=1, description="updates per batch of rollouts")
    p_mask_prompt: float = Field(
        default=0.15, ge=0, lt=1, description="prompt-token mask probability"
    )
    normalise_advantages: bool = Field(
        default=False, description="divide A by the group's std (the published wd1)"
    )


def wd1_advantages(rewards: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """``A`` for ``[P, G]`` rewards: ``r - mean_group(r)``, optionally over the group's std."""
    adv = group_advantages(rewards)
    if normalise and rewards.shape[1] > 1:
        std = rewards.std(dim=1, keepdim=True)
        adv = torch.where(std > _STD_FLOOR, adv / std.clamp(min=_STD_FLOOR), torch.zeros_like(adv))
    return adv


def wd1_weights(advantages: torch.Tensor) -> torch.Tensor:
    """``softmax(-A) - softmax(A)`` within each group of ``[P, G]`` advantages; rows sum to 0."""
    return torch.softmax(-advantages, dim=1) - torch.softmax(advantages, dim=1)


def wd1_loss(sequence_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """``mean_groups sum_i (softmax(-A)_i - softmax(A)_i) log pi(o_i)``.

    ``sequence_log_probs``: ``[P, G]`` (or ``[P*G]``, rows grouped prompt by
    prompt) summed token log-probabilities; ``advantages``: ``[P, G]``.
    """
    logp = sequence_log_probs.reshape(advantages.shape)
    weights = wd1_weights(advantages).to(logp.dtype).detach()
    return (weights * logp).sum(dim=1).mean()


class WD1Objective(BaselineObjective):
    """wd1 as an :class:`~tiltmatch.objective.Objective`."""

    name = "wd1"

    def __init__(self, options: WD1Options, mask_token_id: int) -> None:
        super().__init__(options, mask_token_id)
        self.options: WD1Options = options

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted log-likelihood loss of one micro-batch (student pass only)."""
        batch = inputs.batch
        prompt_masked = draw_prompt_mask(
            batch.prompt_mask, self.options.p_mask_prompt, inputs.generator
        )
        token_logp = one_pass_token_log_probs(
            inputs.student, batch, prompt_masked, self.mask_token_id
        )
        # Every response position is part of the fixed-length action, as in the DTM loss.
        sequence_logp = token_logp.sum(dim=1)
        advantages = wd1_advantages(batch.grouped_rewards, self.options.normalise_advantages)
        loss = wd1_loss(sequence_logp, advantages)
        return loss, {"sequence_log_prob": float(sequence_logp.detach().mean())}
