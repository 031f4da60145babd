"""ESPO, ELBO-based sequence-level policy optimisation (METHOD.md section 8).

The whole completion is one action, its log-likelihood stood in for by an
ELBO estimate. With leave-one-out advantages ``A = r - mean_{others}(r)`` and
``L`` the completion length::

    ratio = exp( (ELBO_theta(o) - ELBO_old(o)) / L )         (per-token normalised)
    loss  = - mean_o min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A)
            + beta_kl * sum_o (ELBO_theta(o) - ELBO_ref(o))^2 / 2 / (N L)   (k2 on the sequence)

The ELBO estimate (:func:`elbo_estimate`): ``x`` of the ``L`` positions masked
at random, ``x`` spread evenly over ``{0..L}`` across the micro-batch's rows
(one random offset, :func:`stratified_mask_counts`), each masked position's
``log mu(o_i | z)`` weighted by ``(L + 1) / x``; with ``coupled`` (the authors'
``reduce_var``) the complementary state (the other ``L - x`` positions masked)
adds its positions with weight ``(L + 1) / (L - x)`` and the two halves are
averaged, so every position is read exactly once. ``num_mc`` such estimates
are averaged. The current, old (the stage's teacher, which sampled) and
reference passes read the same states.
"""

from __future__ import annotations

import torch
from pydantic import Field

from tiltmatch.baselines import BaselineObjective, BaselineOptions, leave_one_out_advantages
from tiltmatch.baselines.diffu_grpo import clip_active, clipped_surrogate
from tiltmatch.baselines.likelihood import masked_token_log_probs, random_subsets
from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.objective import LossInputs, Phase


class ESPOOptions(BaselineOptions):
    """ESPO's options (``method_options``), defaults from the authors' recipes."""

    num_iterations: int = Field(default=8, ge=1, description="updates per batch of rollouts (mu)")
    num_mc: int = Field(default=2, ge=1, description="ELBO estimates averaged per completion")
    coupled: bool = Field(
        default=True, description="add the complementary state to each estimate (reduce_var)"
    )
    clip_epsilon: float = Field(
        default=0.2, ge=0, lt=1, description="ratio clip range [1 - eps, 1 + eps_high]"
    )
    clip_epsilon_high: float | None = Field(
        default=None, ge=0, description="upper clip offset; none: clip_epsilon"
    )
    beta_kl: float = Field(
        default=0.01, ge=0, description="weight of the k2 KL of the sequence ELBO to the base"
    )


def stratified_mask_counts(rows: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """How many of ``length`` positions each of ``rows`` states masks, ``[rows]`` long.

    ``x_n = round(k + n (L + 1) / rows) mod (L + 1)`` with one ``k ~ U{0..L}``: each
    row's count is uniform on ``{0..L}`` and the rows cover the range evenly.
    """
    k = torch.randint(0, length + 1, (), generator=generator, device=generator.device)
    step = (length + 1) / rows
    grid = k.double() + step * torch.arange(rows, dtype=torch.float64, device=k.device)
    return torch.round(grid).long() % (length + 1)


def espo_states(
    rows: int, length: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ELBO state per row: bool ``[rows, L]`` masked positions and their counts ``[rows]``."""
    counts = stratified_mask_counts(rows, length, generator)
    return random_subsets(counts, length, generator), counts


def elbo_estimate(
    denoiser: MaskedDenoiser,
    batch: RolloutBatch,
    masked: torch.Tensor,
    counts: torch.Tensor,
    mask_token_id: int,
    coupled: bool,
) -> torch.Tensor:
    """The sequence ELBO estimate ``[N]`` of each completion from one masked state.

    ``sum_{i in M} log mu(o_i | z) (L + 1) / x``; with ``coupled``, plus
    ``sum_{i not in M} log mu(o_i | z') (L + 1) / (L - x)`` on the complementary
    state ``z'``, the sum halved. The prompt is never masked.
    """
    length = masked.shape[1]
    responses = batch.responses
    scale = counts.to(torch.float64)[:, None] / (length + 1)  # x / (L + 1), [N, 1]

    def part(positions: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
        canvas = responses.masked_fill(positions, mask_token_id)
        logp = masked_token_log_probs(
            denoiser, batch.prompt_ids, batch.prompt_mask, canvas, responses
        )
        # 1 / ratio only where masked (a state with nothing masked has ratio 0).
        weight = torch.where(positions, 1.0 / ratio, torch.zeros_like(ratio)).to(logp.dtype)
        return (logp * weight).sum(dim=1)

    elbo = part(masked, scale.expand_as(masked))
    if coupled:
        complement = (length / (length + 1) - scale).expand_as(masked)
        elbo = (elbo + part(~masked, complement)) / 2
    return elbo


def espo_loss(
    elbo: torch.Tensor,
    elbo_old: torch.Tensor,
    elbo_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    length: int,
    options: ESPOOptions,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ESPO's clipped sequence-level surrogate plus its k2 KL, and diagnostics.

    ``elbo`` ``[N]`` carries gradient; ``elbo_old`` and ``elbo_ref`` (None when
    ``beta_kl == 0``) do not; ``advantages`` ``[N]``; ``length`` the completion length.
    """
    eps, eps_high = options.clip_epsilon, options.clip_epsilon_high
    adv = advantages.to(elbo.dtype)
    ratio = ((elbo - elbo_old.detach()) / length).exp()
    loss = -clipped_surrogate(ratio, adv, eps, eps_high).mean()
    kl = torch.zeros_like(elbo)
    if options.beta_kl > 0:
        if elbo_ref is None:
            raise ValueError("ESPO with beta_kl > 0 needs the reference model's ELBO")
        kl = (elbo - elbo_ref.detach()) ** 2 / 2
        loss = loss + options.beta_kl * kl.sum() / (elbo.numel() * length)
    with torch.no_grad():
        stats = {
            "clip_fraction": float(clip_active(ratio, adv, eps, eps_high).float().mean()),
            "kl": float(kl.mean() / length),
            "ratio_mean": float(ratio.mean()),
            "elbo_per_token": float(elbo.mean() / length),
        }
    return loss, stats


class ESPOObjective(BaselineObjective):
    """ESPO as an :class:`~tiltmatch.objective.Objective`."""

    name = "espo"

    def __init__(self, options: ESPOOptions, mask_token_id: int) -> None:
        super().__init__(options, mask_token_id)
        self.options: ESPOOptions = options
        # The base model is kept (and run) only when the KL term is on.
        self.needs_reference = options.beta_kl > 0

    def begin_stage(self, phase: Phase, rewards: torch.Tensor) -> dict[str, float]:
        """Refuses groups of one (the leave-one-out baseline needs others)."""
        leave_one_out_advantages(rewards)
        return super().begin_stage(phase, rewards)

    def mean_elbo(
        self,
        denoiser: MaskedDenoiser,
        batch: RolloutBatch,
        states: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """The ELBO estimate averaged over the ``num_mc`` states, ``[N]``."""
        estimates = [
            elbo_estimate(denoiser, batch, m, x, self.mask_token_id, self.options.coupled)
            for m, x in states
        ]
        return torch.stack(estimates).mean(dim=0)

    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch; the teacher is the old policy."""
        opts, batch, reference = self.options, inputs.batch, inputs.reference
        if self.needs_reference and reference is None:
            raise ValueError("ESPO with beta_kl > 0 needs the reference (base) model")
        rows, length = batch.responses.shape
        # One set of states per micro-batch, shared by the current, old and reference passes.
        states = [espo_states(rows, length, inputs.generator) for _ in range(opts.num_mc)]
        elbo = self.mean_elbo(inputs.student, batch, states)
        with torch.no_grad():
            elbo_old = self.mean_elbo(inputs.teacher, batch, states)
            elbo_ref = None
            if self.needs_reference:
                assert reference is not None
                elbo_ref = self.mean_elbo(reference, batch, states)
        advantages = leave_one_out_advantages(batch.grouped_rewards).reshape(-1)
        return espo_loss(elbo, elbo_old, elbo_ref, advantages, length, opts)
