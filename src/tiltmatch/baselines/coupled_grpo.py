"""coupled-GRPO (DiffuCoder), GRPO on coupled-mask token likelihoods (METHOD.md section 8).

A token's log-probability is read from three passes that share one random
mask: the whole completion masked (d1's one-pass estimate), a state ``z`` with
each completion position masked with probability ``t ~ U(t_min, t_max)`` (one
``t`` per micro-batch), and its complement ``z'`` (the other positions
masked). Every position is masked in exactly one of ``z``, ``z'``; with ``M``
the positions masked in ``z``::

    log pi(o_k) ~ ( log mu(o_k | all masked) + { log mu(o_k | z)  / t        if k in M
                                                { log mu(o_k | z') / (1 - t)  otherwise ) / 2

On these token log-probabilities the loss is GRPO's (as diffu-GRPO's, with
leave-one-out advantages ``A = r - mean_{others}(r)``): clipped ratios to the
old policy (the stage's teacher, which sampled), a k3 KL to the base, averaged
over all completion tokens of the micro-batch. The current, old and reference
passes read the same masks. The prompt is never masked.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from tiltmatch.baselines import BaselineObjective, BaselineOptions, leave_one_out_advantages
from tiltmatch.baselines.diffu_grpo import grpo_token_loss
from tiltmatch.baselines.likelihood import masked_token_log_probs
from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.objective import LossInputs, Phase


class CoupledGRPOOptions(BaselineOptions):
    """coupled-GRPO's options (``method_options``), defaults from DiffuCoder's recipe."""

    num_iterations: int = Field(default=2, ge=1, description="updates per batch of rollouts (mu)")
    clip_epsilon: float = Field(
        default=0.5, gt=0, lt=1, description="ratio clip range [1-eps, 1+eps]"
    )
    beta_kl: float = Field(default=0.01, ge=0, description="weight of the k3 KL to the base model")
    min_mask_ratio: float = Field(
        default=0.2, gt=0, lt=1, description="t_min of t ~ U(t_min, t_max)"
    )
    max_mask_ratio: float = Field(
        default=0.8, gt=0, lt=1, description="t_max of t ~ U(t_min, t_max)"
    )

    @model_validator(mode="after")
    def _ordered_ratios(self) -> CoupledGRPOOptions:
        if self.min_mask_ratio > self.max_mask_ratio:
            raise ValueError(
                f"min_mask_ratio {self.min_mask_ratio} exceeds max_mask_ratio {self.max_mask_ratio}"
            )
        return self


def coupled_masks(
    rows: int, length: int, low: float, high: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool ``[rows, L]`` positions masked in ``z`` (``z'`` masks the rest), and ``t``.

    One ``t ~ U(low, high)`` for the whole micro-batch; each position is masked
    in ``z`` with probability ``t``.
    """
    device = generator.device
    t = low + (high - low) * torch.rand((), generator=generator, device=device)
    u = torch.rand((rows, length), generator=generator, device=device)
    return u < t, t


def coupled_token_log_probs(
    denoiser: MaskedDenoiser,
    batch: RolloutBatch,
    masked: torch.Tensor,
    t: torch.Tensor,
    mask_token_id: int,
) -> torch.Tensor:
    """The coupled estimate of ``log pi(o_k)`` at every completion position, ``[N, L]``."""
    responses = batch.responses

    def read(positions: torch.Tensor) -> torch.Tensor:
        canvas = responses.masked_fill(positions, mask_token_id)
        return masked_token_log_probs(
            denoiser, batch.prompt_ids, batch.prompt_mask, canvas, responses
        )

    full = read(torch.ones_like(masked))
    t = t.to(full.dtype)
    coupled = torch.where(masked, read(masked) / t, read(~masked) / (1 - t))
    return (full + coupled) / 2


class CoupledGRPOObjective(BaselineObjective):
    """coupled-GRPO as an :class:`~tiltmatch.objective.Objective`."""

    name = "coupled-grpo"

    def __init__(self, options: CoupledGRPOOptions, mask_token_id: int) -> None:
        super().__init__(options, mask_token_id)
        self.options: CoupledGRPOOptions = options
        # The base model is kept (and run) only when the KL term is on.
        self.needs_reference = options.beta_kl > 0

    def begin_stage(self, phase: Phase, rewards: torch.Tensor) -> dict[str, float]:
        """Refuses groups of one (the leave-one-out baseline needs others)."""
        leave_one_out_advantages(rewards)
        return super().begin_stage(phase, rewards)

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped-ratio loss of one micro-batch; the teacher is the old policy."""
        opts, batch, reference = self.options, inputs.batch, inputs.reference
        if self.needs_reference and reference is None:
            raise ValueError("coupled-GRPO with beta_kl > 0 needs the reference (base) model")
        rows, length = batch.responses.shape
        # One mask per micro-batch, shared by the current, old and reference passes.
        masked, t = coupled_masks(
            rows, length, opts.min_mask_ratio, opts.max_mask_ratio, inputs.generator
        )
        mask_id = self.mask_token_id
        logp = coupled_token_log_probs(inputs.student, batch, masked, t, mask_id)
        with torch.no_grad():
            logp_old = coupled_token_log_probs(inputs.teacher, batch, masked, t, mask_id)
            logp_ref = None
            if self.needs_reference:
                assert reference is not None
                logp_ref = coupled_token_log_probs(reference, batch, masked, t, mask_id)
        advantages = leave_one_out_advantages(batch.grouped_rewards).reshape(-1)
        # Every response position is part of the fixed-length action, as in the DTM loss.
        mask = torch.ones_like(batch.responses, dtype=torch.bool)
        loss, stats = grpo_token_loss(
            logp, logp_old, logp_ref, advantages, mask, opts.clip_epsilon, opts.beta_kl, True
        )
        stats["mask_ratio"] = float(t)
        return loss, stats
