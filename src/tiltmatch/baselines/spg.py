"""SPG, the sandwiched policy gradient (METHOD.md section 8).

A masked diffusion model's ``log pi(o | c)`` is intractable, but it is sandwiched:
``ELBO(o) <= log pi(o | c) <= EUBO(o)``. With ``A = r - mean_group(r)`` SPG raises
a lower bound where ``A > 0`` and lowers an upper bound where ``A < 0``, so both
moves push the true likelihood the right way::

    loss = - mean_o  A(o) * L(o),   L = ELBO           where A > 0
                                    L = w EUBO + (1 - w) ELBO   elsewhere ("mix";
                                        "eubo": w = 1, "elbo": w = 0)

Both bounds are estimated from ``num_t`` block-wise masked states ``z_t`` per
completion (:func:`block_states`), with ``M_t`` the masked completion
positions and ``t_emp = |M_t| / L``::

    ELBO(o) = mean_t  (1 / |M_t|) sum_{i in M_t} log mu(o_i | z_t)
    EUBO(o) = (1 / beta) mean_{i in S} log( mean_t  1{i in M_t} mu(o_i | z_t)^beta / t_emp )

(``S``: the positions masked in at least one draw). Both are per-token
averages, as the authors' code computes them; completions are then weighted by
their length, which for this package's fixed-length responses is a plain mean.
No ratio, no clipping, no old-policy or reference pass: the ``num_iterations``
updates on a batch of rollouts each draw fresh states.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from tiltmatch.baselines import BaselineObjective, BaselineOptions, group_advantages
from tiltmatch.baselines.likelihood import masked_token_log_probs
from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.objective import LossInputs

NegativeBound = Literal["mix", "eubo", "elbo"]


class SPGOptions(BaselineOptions):
    """SPG's options (``method_options``); defaults are the authors' "SPG w/ Mixture"."""

    num_iterations: int = Field(default=4, ge=1, description="updates per batch of rollouts (mu)")
    negative_bound: NegativeBound = Field(
        default="mix", description="the bound lowered for A <= 0: mix, eubo or elbo"
    )
    mix_weight: float = Field(
        default=0.5, ge=0, le=1, description="w: the EUBO's share of the mixture"
    )
    eubo_beta: float = Field(
        default=1.5, ge=1, description="beta of the EUBO (the authors: 1.0 on Sudoku)"
    )
    num_t: int = Field(default=2, ge=1, description="masked states per completion")
    block_length: int = Field(default=32, ge=1, description="block of the block-wise masking")
    p_mask_prompt: float = Field(
        default=0.15, ge=0, lt=1, description="mask probability of prompt and earlier-block tokens"
    )

    @model_validator(mode="after")
    def _no_ignored_setting(self) -> SPGOptions:
        if "mix_weight" in self.model_fields_set and self.negative_bound != "mix":
            raise ValueError(
                f"mix_weight is read only with negative_bound=mix, not {self.negative_bound}"
            )
        if "eubo_beta" in self.model_fields_set and self.negative_bound == "elbo":
            raise ValueError("eubo_beta is read only with negative_bound=mix or eubo")
        return self


def block_states(
    prompt_mask: torch.Tensor,
    length: int,
    num_t: int,
    block_length: int,
    p_mask_prompt: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPG's block-wise masking: ``num_t`` states per row, as (prompt, completion) masks.

    Returns bool ``[N, num_t, T]`` (prompt tokens to mask) and ``[N, num_t, L]``
    (completion positions to mask). Per state: an active block ``k`` (the
    ``num_t`` states of a row take distinct blocks while there are enough),
    ``m ~ U{1..|block k|}`` of its positions masked at random, every later block
    fully masked, and each real prompt token and each position of an earlier
    block masked with probability ``p_mask_prompt`` (padding never). Blocks are
    ``block_length`` positions from the completion's start; a last, shorter one
    is its own block. One state is METHOD.md section 6's SAR-aligned state
    plus the light perturbation of the clean part.
    """
    rows, device = prompt_mask.shape[0], prompt_mask.device
    num_blocks = -(-length // block_length)
    # The first num_t blocks of a random order of the blocks (more orders if num_t exceeds them).
    rounds = -(-num_t // num_blocks)
    u = torch.rand((rows, rounds, num_blocks), generator=generator, device=device)
    active = u.argsort(dim=-1).reshape(rows, -1)[:, :num_t]  # [N, num_t]
    block_of = torch.arange(length, device=device) // block_length  # [L]
    size = (length - active * block_length).clamp(max=block_length)
    drawn = torch.rand((rows, num_t), generator=generator, device=device)
    in_block = (drawn * size).long().clamp(max=size - 1) + 1  # U{1..size}
    in_active = block_of == active[..., None]  # [N, num_t, L]
    scores = torch.rand((rows, num_t, length), generator=generator, device=device)
    scores = torch.where(in_active, scores, torch.full_like(scores, 2.0))
    active_masked = in_active & (scores.argsort(-1).argsort(-1) < in_block[..., None])
    earlier = block_of < active[..., None]
    light = torch.rand((rows, num_t, length), generator=generator, device=device) < p_mask_prompt
    completion = active_masked | (block_of > active[..., None]) | (earlier & light)
    width = prompt_mask.shape[1]
    u_prompt = torch.rand((rows, num_t, width), generator=generator, device=device)
    prompt = (u_prompt < p_mask_prompt) & prompt_mask.bool()[:, None, :]
    return prompt, completion


def state_log_probs(
    denoiser: MaskedDenoiser,
    batch: RolloutBatch,
    prompt_masked: torch.Tensor,
    masked: torch.Tensor,
    mask_token_id: int,
) -> torch.Tensor:
    """``log mu(o_i | z_t)`` at every completion position of every state, ``[N, num_t, L]``.

    All ``N x num_t`` states go through one forward.
    """
    rows, num_t, length = masked.shape
    prompt_ids = batch.prompt_ids[:, None, :].expand(-1, num_t, -1)
    prompt_ids = prompt_ids.masked_fill(prompt_masked, mask_token_id).reshape(rows * num_t, -1)
    prompt_mask = batch.prompt_mask.repeat_interleave(num_t, dim=0)
    targets = batch.responses[:, None, :].expand(-1, num_t, -1)
    canvas = targets.masked_fill(masked, mask_token_id).reshape(rows * num_t, length)
    flat_targets = targets.reshape(rows * num_t, length)
    logp = masked_token_log_probs(denoiser, prompt_ids, prompt_mask, canvas, flat_targets)
    return logp.view(rows, num_t, length)


def elbo_per_token(logp: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mean_t (1/|M_t|) sum_{i in M_t} log mu(o_i | z_t)`` per row, ``[N]``.

    ``logp``, ``masked``: ``[N, num_t, L]``; ``mask``: ``[N, L]``, the completion
    positions that count (all of them for fixed-length responses).
    """
    covered = (masked & mask[:, None, :].bool()).to(logp.dtype)
    per_state = (logp * covered).sum(-1) / covered.sum(-1).clamp(min=1e-8)
    return per_state.mean(dim=1)


def eubo_per_token(
    logp: torch.Tensor, masked: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """``(1/beta) mean_{i in S} log mean_t (1{i in M_t} mu(o_i|z_t)^beta / t_emp)``, ``[N]``.

    The Renyi upper bound estimated from the same states as the ELBO; ``S`` is
    where the inner mean is positive (positions masked in at least one state).
    """
    mask_f = mask.to(logp.dtype)[:, None, :]
    covered = masked.to(logp.dtype) * mask_f
    t_emp = covered.sum(-1, keepdim=True) / mask_f.sum(-1, keepdim=True)
    inner = ((beta * logp).exp() * covered / t_emp.clamp(min=1e-8)).mean(dim=1)  # [N, L]
    support = inner > 0
    logs = torch.where(support, inner, torch.ones_like(inner)).log()  # log 1 = 0 off S
    return (logs * support).sum(-1) / support.sum(-1).clamp(min=1e-8) / beta


def sandwiched_scores(
    logp: torch.Tensor,
    masked: torch.Tensor,
    mask: torch.Tensor,
    positive: torch.Tensor,
    negative_bound: NegativeBound,
    mix_weight: float,
    beta: float,
) -> torch.Tensor:
    """``L(o)`` per row ``[N]``: the ELBO where ``positive``, else the chosen upper bound."""
    elbo = elbo_per_token(logp, masked, mask)
    if negative_bound == "elbo":
        return elbo
    eubo = eubo_per_token(logp, masked, mask, beta)
    weight = 1.0 if negative_bound == "eubo" else mix_weight
    upper = weight * eubo + (1.0 - weight) * elbo
    return torch.where(positive, elbo, upper)


def spg_loss(scores: torch.Tensor, advantages: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``- sum_o A(o) L(o) |o| / sum_o |o|``: the advantage-weighted bounds, length-weighted."""
    lengths = lengths.to(scores.dtype)
    return -(advantages.to(scores.dtype) * scores * lengths).sum() / lengths.sum()


class SPGObjective(BaselineObjective):
    """SPG as an :class:`~tiltmatch.objective.Objective`."""

    name = "spg"

    def __init__(self, options: SPGOptions, mask_token_id: int) -> None:
        super().__init__(options, mask_token_id)
        self.options: SPGOptions = options

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The sandwiched loss of one micro-batch (student pass only)."""
        opts, batch = self.options, inputs.batch
        length = batch.responses.shape[1]
        prompt_masked, masked = block_states(
            batch.prompt_mask,
            length,
            opts.num_t,
            opts.block_length,
            opts.p_mask_prompt,
            inputs.generator,
        )
        logp = state_log_probs(inputs.student, batch, prompt_masked, masked, self.mask_token_id)
        advantages = group_advantages(batch.grouped_rewards).reshape(-1)
        positive = advantages > 0
        # Every response position is part of the fixed-length action, as in the DTM loss.
        mask = torch.ones_like(batch.responses, dtype=torch.bool)
        scores = sandwiched_scores(
            logp, masked, mask, positive, opts.negative_bound, opts.mix_weight, opts.eubo_beta
        )
        loss = spg_loss(scores, advantages, mask.sum(dim=1))
        with torch.no_grad():
            stats = {
                "elbo_per_token": float(elbo_per_token(logp, masked, mask).mean()),
                "negative_fraction": float((advantages < 0).float().mean()),
                "masked_fraction": float(masked.float().mean()),
            }
        return loss, stats
