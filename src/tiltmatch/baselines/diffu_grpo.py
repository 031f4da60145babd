"""diffu-GRPO (d1), the policy-gradient baseline (METHOD.md section 8).

Per token ``k`` of completion ``o`` with advantage ``A = r - mean_group(r)``::

    ratio_k = exp(log pi_theta(o_k) - log pi_old(o_k))
    surr_k  = min(ratio_k A, clip(ratio_k, 1 - eps, 1 + eps) A)
    kl_k    = exp(ref_k - cur_k) - (ref_k - cur_k) - 1          (k3, cur = log pi_theta)
    loss    = - mean_seq mean_{k in seq} (surr_k - beta_kl kl_k)

The log-probabilities are d1's one-pass estimates
(:mod:`tiltmatch.baselines.likelihood`); the old policy is the stage's teacher,
which sampled the rollouts, and the reference is the frozen base model.
Averaging follows d1: tokens are averaged within each sequence, then
sequences over the micro-batch, so every completion counts the same whatever
its length.
"""

from __future__ import annotations

import torch
from pydantic import Field

from tiltmatch.baselines import BaselineObjective, BaselineOptions, group_advantages
from tiltmatch.baselines.likelihood import draw_prompt_mask, one_pass_token_log_probs
from tiltmatch.objective import LossInputs


class DiffuGRPOOptions(BaselineOptions):
    """diffu-GRPO's options (``method_options``), defaults from d1."""

    num_iterations: int = Field(default=4, ge=1, description="updates per batch of rollouts (mu)")
    clip_epsilon: float = Field(
        default=0.5, gt=0, lt=1, description="ratio clip range [1-eps, 1+eps]"
    )
    beta_kl: float = Field(default=0.04, ge=0, description="weight of the k3 KL to the base model")
    p_mask_prompt: float = Field(
        default=0.15, ge=0, lt=1, description="prompt-token mask probability"
    )


def clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float,
    epsilon_high: float | None = None,
) -> torch.Tensor:
    """PPO's ``min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)``, elementwise.

    ``eps_high`` defaults to ``eps`` (TRL's ``epsilon_high``). The clipped term is the
    smaller one, and the gradient vanishes, exactly when ``A > 0`` and
    ``ratio > 1 + eps_high`` or ``A < 0`` and ``ratio < 1 - eps``.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    clipped = ratio.clamp(1.0 - epsilon, 1.0 + high)
    return torch.minimum(ratio * advantages, clipped * advantages)


def clip_active(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float,
    epsilon_high: float | None = None,
) -> torch.Tensor:
    """Bool: where :func:`clipped_surrogate` is on its flat, clipped branch."""
    high = epsilon if epsilon_high is None else epsilon_high
    return ((advantages > 0) & (ratio > 1.0 + high)) | ((advantages < 0) & (ratio < 1.0 - epsilon))


def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of ``KL(pi_theta || pi_ref)``: ``e^(ref - cur) - (ref - cur) - 1``.

    Non-negative, zero with zero gradient where ``cur == ref``.
    """
    delta = logp_ref - logp
    return delta.exp() - delta - 1.0


def grpo_token_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float,
    beta_kl: float,
    token_mean: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The diffu-GRPO loss from per-token log-probabilities, and its diagnostics.

    ``logp``, ``logp_old``, ``logp_ref``: ``[N, L]`` (only ``logp`` carries
    gradient; ``logp_ref`` may be None when ``beta_kl == 0``); ``advantages``:
    ``[N]``; ``mask``: ``[N, L]``, the completion tokens the loss covers (each row
    needs at least one). Tokens are averaged per sequence, then over sequences;
    ``token_mean``: over all covered tokens of the micro-batch at once instead
    (coupled-GRPO's; the same when every row covers as many tokens).
    """
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)[:, None]
    ratio = (logp - logp_old.detach()).exp()
    per_token = clipped_surrogate(ratio, adv, epsilon)
    kl = torch.zeros_like(logp)
    if beta_kl > 0:
        if logp_ref is None:
            raise ValueError("beta_kl > 0 needs the reference model's log-probabilities")
        kl = k3_kl(logp, logp_ref.detach())
        per_token = per_token - beta_kl * kl
    if token_mean:
        loss = -(per_token * mask).sum() / mask.sum()
    else:
        loss = -((per_token * mask).sum(dim=1) / mask.sum(dim=1)).mean()
    with torch.no_grad():
        total = mask.sum()
        stats = {
            "clip_fraction": float((clip_active(ratio, adv, epsilon) * mask).sum() / total),
            "kl": float((kl * mask).sum() / total),
            "ratio_mean": float((ratio * mask).sum() / total),
        }
    return loss, stats


class DiffuGRPOObjective(BaselineObjective):
    """diffu-GRPO as an :class:`~tiltmatch.objective.Objective`."""

    name = "diffu-grpo"

    def __init__(self, options: DiffuGRPOOptions, mask_token_id: int) -> None:
        super().__init__(options, mask_token_id)
        self.options: DiffuGRPOOptions = options
        # The base model is kept (and run) only when the KL term is on.
        self.needs_reference = options.beta_kl > 0

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The clipped-ratio loss of one micro-batch; the teacher is the old policy."""
        opts = self.options
        batch, reference = inputs.batch, inputs.reference
        if self.needs_reference and reference is None:
            raise ValueError("diffu-GRPO with beta_kl > 0 needs the reference (base) model")
        # One prompt mask per micro-batch, shared by the current, old and reference passes.
        prompt_masked = draw_prompt_mask(batch.prompt_mask, opts.p_mask_prompt, inputs.generator)
        mask_id = self.mask_token_id
        logp = one_pass_token_log_probs(inputs.student, batch, prompt_masked, mask_id)
        with torch.no_grad():
            logp_old = one_pass_token_log_probs(inputs.teacher, batch, prompt_masked, mask_id)
            logp_ref = None
            if self.needs_reference:
                assert reference is not None
                logp_ref = one_pass_token_log_probs(reference, batch, prompt_masked, mask_id)
        advantages = group_advantages(batch.grouped_rewards).reshape(-1)
        # Every response position is part of the fixed-length action, as in the DTM loss.
        mask = torch.ones_like(batch.responses, dtype=torch.bool)
        return grpo_token_loss(
            logp, logp_old, logp_ref, advantages, mask, opts.clip_epsilon, opts.beta_kl
        )
