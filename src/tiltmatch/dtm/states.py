"""The partly masked states the DTM loss is evaluated on (METHOD.md sections 4 and 6).

Every function here takes clean responses ``x`` of shape ``[B, L]`` and returns
:class:`States`: the masked responses ``z``, which positions the loss covers,
and each covered position's weight (``lambda(t)`` and the per-row
normalisation). By section 4 the minimiser is the tilted posterior whatever the
state distribution, so these differ only in where capacity and variance go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class States:
    """Masked responses and the positions (with weights) the loss covers.

    ``z``: ``[B, L]`` token ids with some positions set to the mask id.
    ``loss_mask``: ``[B, L]`` bool, the positions ``S`` the loss sums over.
    ``position_weight``: ``[B, L]`` float, zero off ``loss_mask``.
    """

    z: torch.Tensor
    loss_mask: torch.Tensor
    position_weight: torch.Tensor


def antithetic_times(n: int, generator: torch.Generator, device: torch.device | None = None):
    """``n`` times in (0, 1], low-discrepancy: one uniform shift of an even grid.

    ``t_k = 1 - ((u + k/n) mod 1)`` covers (0, 1] evenly for any ``u``, which
    cuts the variance of the time average (as in MDLM's sampler).
    """
    u = torch.rand((), generator=generator, device=device)
    grid = torch.arange(n, device=device, dtype=torch.float32) / n
    return 1.0 - torch.remainder(u + grid, 1.0)


def random_mask_states(
    x: torch.Tensor,
    mask_token_id: int,
    generator: torch.Generator,
    inverse_t_weight: bool = True,
) -> States:
    """Forward masking ``q_t``: each token masked with probability ``t``, ``t`` antithetic.

    The loss covers every masked position with weight ``lambda(t) / L``, where
    ``lambda(t) = 1/t`` (the masked-diffusion ELBO) or 1.
    """
    batch, length = x.shape
    t = antithetic_times(batch, generator, x.device)
    u = torch.rand((batch, length), generator=generator, device=x.device)
    masked = u < t[:, None]
    z = torch.where(masked, torch.full_like(x, mask_token_id), x)
    lam = (1.0 / t) if inverse_t_weight else torch.ones_like(t)
    weight = masked.float() * (lam / length)[:, None]
    return States(z=z, loss_mask=masked, position_weight=weight)


def sar_states(
    x: torch.Tensor, mask_token_id: int, block_length: int, generator: torch.Generator
) -> States:
    """SAR-aligned states matching semi-autoregressive block decoding.

    Draw ``n ~ U{1..L}`` tokens to mask; the last ``(n-1) div B`` blocks are fully
    masked, the block before them is the active block with ``(n-1) mod B + 1`` of
    its positions masked at random, earlier blocks are clean. The loss covers
    only the masked positions of the active block, normalised by their count.
    """
    batch, length = x.shape
    if length % block_length:
        raise ValueError(f"response length {length} is not a multiple of block {block_length}")
    n = torch.randint(1, length + 1, (batch,), generator=generator, device=x.device)
    full_blocks = (n - 1) // block_length
    in_active = (n - 1) % block_length + 1
    num_blocks = length // block_length
    active = num_blocks - 1 - full_blocks  # index of the active block
    pos = torch.arange(length, device=x.device)
    block_of = pos // block_length
    # Random order inside each block: the first ``in_active`` by that order are masked.
    scores = torch.rand((batch, length), generator=generator, device=x.device)
    rank = torch.empty_like(scores, dtype=torch.long)
    for b in range(num_blocks):
        cols = slice(b * block_length, (b + 1) * block_length)
        rank[:, cols] = scores[:, cols].argsort(dim=1).argsort(dim=1)
    is_active = block_of[None, :] == active[:, None]
    active_masked = is_active & (rank < in_active[:, None])
    later = block_of[None, :] > active[:, None]
    masked = active_masked | later
    z = torch.where(masked, torch.full_like(x, mask_token_id), x)
    weight = active_masked.float() / in_active[:, None].float()
    return States(z=z, loss_mask=active_masked, position_weight=weight)


def block_states(
    x: torch.Tensor,
    prompt_lengths: torch.Tensor,
    block_size: int,
    mask_token_id: int,
    generator: torch.Generator,
) -> States:
    """Block diffusion states: the active block partly masked given the finished ones.

    Blocks are the model's (``block_size`` tokens counted from each row's first
    prompt token, so a response may start inside a block; ``prompt_lengths``:
    ``[B]`` real prompt tokens per row). Per row: an active block uniformly among
    the blocks the response touches, ``n ~ U{1..m}`` of its ``m`` response
    positions masked at random, earlier blocks clean, later blocks fully masked.
    The loss covers the masked positions of the active block, normalised by
    their count: state-level matching inside the active block conditioned on
    the finished ones (docs/families.md).
    """
    batch, length = x.shape
    device = x.device
    offset = (prompt_lengths.to(device).long() % block_size)[:, None]
    block_of = (offset + torch.arange(length, device=device)[None, :]) // block_size  # [B, L]
    num_blocks = block_of[:, -1] + 1
    u = torch.rand(batch, generator=generator, device=device)
    active = (u * num_blocks).long().clamp(max=num_blocks - 1)
    in_active = block_of == active[:, None]
    size = in_active.sum(1)
    n = (torch.rand(batch, generator=generator, device=device) * size).long().clamp(
        max=size - 1
    ) + 1
    scores = torch.rand((batch, length), generator=generator, device=device)
    scores = torch.where(in_active, scores, torch.full_like(scores, 2.0))
    rank = scores.argsort(dim=1).argsort(dim=1)  # active positions first, in random order
    active_masked = in_active & (rank < n[:, None])
    masked = active_masked | (block_of > active[:, None])
    z = torch.where(masked, torch.full_like(x, mask_token_id), x)
    weight = active_masked.float() / n[:, None].float()
    return States(z=z, loss_mask=active_masked, position_weight=weight)


def trajectory_states(
    x: torch.Tensor, visited: torch.Tensor, mask_token_id: int, generator: torch.Generator
) -> States:
    """States the sampler actually visited: one recorded canvas per row, drawn uniformly.

    ``visited`` is ``[S, B, L]``: the response canvas before each of the ``S``
    sampler steps (as recorded by :func:`tiltmatch.sampling.sampler.generate`). The loss
    covers the canvas's masked positions, normalised by their count.
    """
    steps, batch, _ = visited.shape
    pick = torch.randint(0, steps, (batch,), generator=generator, device=x.device)
    z = visited[pick, torch.arange(batch, device=x.device)]
    masked = z == mask_token_id
    count = masked.sum(1, keepdim=True).clamp(min=1).float()
    return States(z=z, loss_mask=masked, position_weight=masked.float() / count)
