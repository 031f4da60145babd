"""Rejection-sampling fine-tuning: train only on the best samples (METHOD.md section 8).

Of each group of ``G`` completions keep those with the group's highest reward
(optionally only when it reaches ``min_reward``) and train on them with the
ordinary masked-diffusion loss: the DTM loss with ``c = 0``, weight 1 on kept
samples and 0 on the rest, on random-mask states (section 4 at unit weights).

This is the ``h -> infinity`` limit of one DTM stage: the self-normalised
tilt weights ``G softmax(h r)`` (section 5) tend to ``G / k`` on the ``k``
group maxima and to 0 elsewhere, so the stage's target moves all the way to
the best samples of ``p_a`` instead of a step ``h`` along the annealing path.
The limit keeps the same samples; it weighs them 1 instead of ``G / k``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from tiltmatch.baselines import BaselineObjective, BaselineOptions
from tiltmatch.batch import RolloutBatch
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.states import States, random_mask_states
from tiltmatch.objective import LossInputs, Phase


class RejectionOptions(BaselineOptions):
    """Rejection-sampling fine-tuning's options (``method_options``)."""

    num_iterations: int = Field(default=1, ge=1, description="updates per batch of rollouts")
    min_reward: float | None = Field(
        default=None, description="keep a group's best samples only if their reward is >= this"
    )
    inverse_t_weight: bool = Field(
        default=True, description="lambda(t) = 1/t (the ELBO) instead of 1"
    )


def best_of_group(rewards: torch.Tensor, min_reward: float | None = None) -> torch.Tensor:
    """Bool ``[P, G]``: the samples holding their group's maximum reward (ties all kept).

    With ``min_reward`` set, a group whose maximum is below it keeps nothing.
    """
    best = rewards == rewards.max(dim=1, keepdim=True).values
    if min_reward is not None:
        best &= rewards >= min_reward
    return best


def select_rows(states: States, rows: torch.Tensor) -> States:
    """The states of the given rows only."""
    return States(states.z[rows], states.loss_mask[rows], states.position_weight[rows])


class RejectionObjective(BaselineObjective):
    """Rejection-sampling fine-tuning as an :class:`~tiltmatch.objective.Objective`."""

    name = "rejection"

    def __init__(self, options: RejectionOptions, mask_token_id: int) -> None:
        super().__init__(options, mask_token_id)
        self.options: RejectionOptions = options

    def begin_stage(self, phase: Phase, rewards: torch.Tensor) -> dict[str, float]:
        """Adds the fraction of the stage's samples that are kept."""
        stats = super().begin_stage(phase, rewards)
        kept = best_of_group(rewards, self.options.min_reward)
        stats["kept_fraction"] = float(kept.float().mean())
        return stats

    def states(self, batch: RolloutBatch, generator: torch.Generator) -> States:
        """Random-mask states of the micro-batch's responses (section 4)."""
        return random_mask_states(
            batch.responses, self.mask_token_id, generator, self.options.inverse_t_weight
        )

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """Masked-diffusion loss on the kept samples, normalised by the micro-batch size."""
        batch = inputs.batch
        kept = best_of_group(batch.grouped_rewards, self.options.min_reward).reshape(-1)
        states = self.states(batch, inputs.generator)
        stats = {"kept_fraction": float(kept.float().mean())}
        rows = kept.nonzero().squeeze(1)
        n_kept = rows.numel()
        if n_kept == 0:
            # Nothing kept: still one forward (of row 0, weight 0), because under FSDP every
            # forward and backward is collective and a rank that skipped them would leave the
            # others waiting. The gradient is zero, as data parallelism already counted it.
            rows = torch.zeros(1, dtype=torch.long, device=kept.device)
        # Rows of weight 0 contribute nothing, so only kept rows go through the model; the
        # factor k / N restores dtm_loss's per-row average over the whole micro-batch.
        kept_batch = RolloutBatch(
            batch.prompt_ids[rows],
            batch.prompt_mask[rows],
            batch.responses[rows],
            batch.rewards[rows],
            group_size=1,
        )
        kept_states = select_rows(states, rows)
        logits = inputs.student.response_logits(  # only where the loss reads (METHOD.md sec. 6)
            kept_batch.prompt_ids,
            kept_batch.prompt_mask,
            kept_states.z,
            logits_at=kept_states.loss_mask,
        )
        weights = kept[rows].to(dtype=logits.dtype, device=logits.device)  # 1, or the stand-in's 0
        loss, _ = dtm_loss(logits, kept_batch.responses, kept_states, weights, c=0.0)
        return loss * (n_kept / kept.numel()), stats
