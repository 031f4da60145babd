"""Token log-probabilities on masked inputs: what every likelihood-based baseline reads.

A masked diffusion model has no tractable sequence likelihood; the baselines
(METHOD.md section 8) stand in for it with the denoiser's log-probabilities of
the completion's tokens on partly masked inputs:

- d1's one-pass estimate (diffu-GRPO, wd1): the whole completion is masked,
  each real prompt token is masked with probability ``p_mask_prompt``, and the
  log-softmax at completion position ``k`` is read at the token ``o_k``. The
  random prompt mask is drawn once per micro-batch and reused for the current,
  old and reference passes, so the ratio and the KL compare the three models on
  the same input.
- ELBO-style estimates (SPG, ESPO, coupled-GRPO): the same read-out on states
  with some completion positions masked (:func:`masked_token_log_probs`), the
  masks drawn by :func:`random_subsets` and each method's own rule.

DTM needs none of this: its loss is a cross-entropy on masked states and never
asks for a likelihood (section 3).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser


def draw_prompt_mask(
    prompt_mask: torch.Tensor, p_mask_prompt: float, generator: torch.Generator
) -> torch.Tensor:
    """Bool ``[N, T]``: which prompt tokens to mask, each real one with probability ``p``.

    ``prompt_mask`` is the left-padded prompts' attention mask; padding columns
    (``prompt_mask == 0``) are never selected, so they stay padding and stay
    invisible to attention.
    """
    u = torch.rand(prompt_mask.shape, generator=generator, device=prompt_mask.device)
    return (u < p_mask_prompt) & prompt_mask.bool()


def one_pass_inputs(
    batch: RolloutBatch, prompt_masked: torch.Tensor, mask_token_id: int
) -> tuple[RolloutBatch, torch.Tensor]:
    """The one-pass input: the batch with its chosen prompt tokens masked, and an all-mask canvas.

    Returns the batch to feed (prompts changed, attention mask unchanged) and the
    response canvas ``[N, L]`` of mask tokens.
    """
    prompt_ids = batch.prompt_ids.masked_fill(prompt_masked, mask_token_id)
    canvas = torch.full_like(batch.responses, mask_token_id)
    return replace(batch, prompt_ids=prompt_ids), canvas


def masked_token_log_probs(
    denoiser: MaskedDenoiser,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    canvas: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """``log mu_theta(targets_k | z)`` at every completion position ``k``, ``[N, L]``.

    ``canvas`` ``[N, L]`` is the partly masked completion ``z`` (after the
    left-padded ``prompt_ids``, some of which may be masked too); ``targets`` the
    clean tokens. Float32 or wider, whatever the model's dtype.
    """
    logits = denoiser.response_logits(prompt_ids, prompt_mask, canvas)
    # Upcast half precision as the DTM loss does; gather minus logsumexp avoids keeping
    # a second [N, L, V] log-softmax tensor for backward.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = logits.gather(-1, targets[..., None]).squeeze(-1)
    return picked - logits.logsumexp(dim=-1)


def one_pass_token_log_probs(
    denoiser: MaskedDenoiser,
    batch: RolloutBatch,
    prompt_masked: torch.Tensor,
    mask_token_id: int,
) -> torch.Tensor:
    """``log pi(o_k | c)`` estimated in one pass, ``[N, L]`` (float32 or wider).

    ``prompt_masked`` comes from :func:`draw_prompt_mask`; pass the same tensor
    for the current, old and reference models.
    """
    masked_batch, canvas = one_pass_inputs(batch, prompt_masked, mask_token_id)
    return masked_token_log_probs(
        denoiser, masked_batch.prompt_ids, masked_batch.prompt_mask, canvas, batch.responses
    )


def random_subsets(counts: torch.Tensor, width: int, generator: torch.Generator) -> torch.Tensor:
    """Bool ``[N, width]``: in row ``n``, ``counts[n]`` positions chosen uniformly at random.

    Every subset of that size is equally likely (the ranks of i.i.d. uniforms are
    a uniform random permutation).
    """
    u = torch.rand((counts.shape[0], width), generator=generator, device=counts.device)
    rank = u.argsort(dim=1).argsort(dim=1)
    return rank < counts[:, None]
