"""The baselines DTM is measured against (METHOD.md section 8), as :class:`Objective` s.

They share the trainer, the sampler, the rollouts, the buffer and the teacher
refresh with DTM and differ only in their loss (STYLE.md). What they also share
with each other lives here: a stage is one batch of rollouts from the teacher
(the "old policy") followed by ``num_iterations`` (GRPO's ``mu``) updates, and a
run ends after ``total_stages`` stages or once ``max_rollouts`` completions have
been sampled.

- :mod:`tiltmatch.baselines.likelihood`: token log-probabilities on masked inputs (d1's
  one-pass estimate and the ELBO-style ones).
- :mod:`tiltmatch.baselines.diffu_grpo`: diffu-GRPO (d1).
- :mod:`tiltmatch.baselines.wd1`: wd1.
- :mod:`tiltmatch.baselines.rejection`: rejection-sampling fine-tuning.
- :mod:`tiltmatch.baselines.spg`: SPG, the sandwiched policy gradient.
- :mod:`tiltmatch.baselines.espo`: ESPO, ELBO-based sequence-level policy optimisation.
- :mod:`tiltmatch.baselines.coupled_grpo`: coupled-GRPO (DiffuCoder).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from tiltmatch.objective import Objective, Phase


class BaselineOptions(BaseModel):
    """Options every baseline takes: inner updates per rollout batch, and the run's length.

    With neither ``total_stages`` nor ``max_rollouts`` the run's length is left
    to ``train.max_stages``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_iterations: int = Field(default=1, ge=1, description="updates per batch of rollouts (mu)")
    total_stages: int | None = Field(default=None, ge=1, description="stop after this many stages")
    max_rollouts: int | None = Field(
        default=None, ge=1, description="stop once this many completions have been sampled"
    )


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``A = r - mean_group(r)`` for ``[P, G]`` rewards, not divided by the std (section 8).

    d1 leaves the std out (dividing by it up-weights prompts whose rewards barely
    differ), and METHOD.md states the same ``A`` for diffu-GRPO and wd1.
    """
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    # The float mean of equal rewards need not equal them (3 x 0.7 leaves 1e-16): set flat
    # groups to exactly 0 so that they carry exactly no gradient.
    flat = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    return adv.masked_fill(flat, 0.0)


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """``A_i = r_i - mean_{j != i} r_j`` for ``[P, G]`` rewards (ESPO's and coupled-GRPO's).

    Equal to ``G / (G - 1)`` times :func:`group_advantages`: the baseline of a sample
    is the mean of the others, so it is independent of the sample it weights.
    Needs ``G >= 2`` (a group of one has no others).
    """
    size = rewards.shape[1]
    if size < 2:
        raise ValueError(
            f"leave-one-out advantages need at least 2 completions per prompt, got {size}: "
            "set train.num_generations >= 2"
        )
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (size - 1)
    flat = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)  # exactly 0, as above
    return (rewards - others).masked_fill(flat, 0.0)


class BaselineObjective(Objective):
    """Stage logic shared by the baselines; subclasses write :meth:`loss`.

    One AdamW at a constant learning rate runs the whole run, its moments carried from one
    batch of rollouts to the next, as the authors' trainers (TRL's) do; only DTM restarts
    them at each stage (METHOD.md section 6).
    """

    reset_optimizer_each_stage = False

    def __init__(self, options: BaselineOptions, mask_token_id: int) -> None:
        self.options = options
        self.mask_token_id = int(mask_token_id)

    def steps_in_stage(self) -> int:
        """``num_iterations`` (mu) updates on each batch of rollouts."""
        return self.options.num_iterations

    def begin_stage(self, phase: Phase, rewards: torch.Tensor) -> dict[str, float]:
        """Stats of the stage's rollouts; the trainer adds the reward mean and std."""
        # Groups whose rewards are all equal carry no signal for a group-relative method.
        flat = (rewards == rewards[:, :1]).all(dim=1)
        return {"flat_group_fraction": float(flat.float().mean())}

    def finished(self, phase: Phase) -> bool:
        """Done after ``total_stages`` stages or ``max_rollouts`` completions, if set."""
        opts = self.options
        # The trainer asks both inside its stage end (stage not yet counted, ``begun`` still
        # True) and between stages (stage counted, ``begun`` False): count finished stages
        # the same way in both places.
        completed = phase.stage + int(phase.begun)
        if opts.total_stages is not None and completed >= opts.total_stages:
            return True
        return opts.max_rollouts is not None and phase.rollouts >= opts.max_rollouts


__all__ = [
    "BaselineObjective",
    "BaselineOptions",
    "group_advantages",
    "leave_one_out_advantages",
]
