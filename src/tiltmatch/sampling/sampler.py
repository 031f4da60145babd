"""The sampler: from an all-mask response to a clean one (METHOD.md section 1).

Batched over prompts of different lengths (left padding, see ``models/denoiser.py``).
The response of length ``L`` is decoded in semi-autoregressive blocks of
``block_length``; within a block, each step unmasks a number of tokens given by
the linear schedule, chosen by lowest-confidence-first or at random. Sampling
at temperature ``T`` is Gumbel-max, ``argmax(logits + T * Gumbel)``, computed in
float64: in low precision the Gumbel noise of unlikely tokens rounds away and
sampling silently becomes less random.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from tiltmatch.models.denoiser import MaskedDenoiser

Remasking = Literal["low_confidence", "random"]


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are generated."""

    steps: int = 12
    block_length: int = 12
    remasking: Remasking = "low_confidence"
    temperature: float = 1.0


@dataclass
class SampleOutput:
    """Responses ``[B, L]`` and, when recorded, the canvases before each step ``[S, B, L]``."""

    responses: torch.Tensor
    visited: torch.Tensor | None = None


#: decoders of the model families that cannot take the common sampler, by family name
#: (``tiltmatch.sampling.families`` registers them; the package imports it)
FAMILY_DECODERS: dict[str, Callable[..., SampleOutput]] = {}


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids ``[B, P]`` and their attention mask."""
    if not prompts:
        raise ValueError("no prompts to pad")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        if len(p):
            ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
    return ids, mask


def tokens_per_step(masked: int, steps: int) -> list[int]:
    """The linear schedule: ``masked`` tokens spread as evenly as possible over ``steps``."""
    base, extra = divmod(masked, steps)
    return [base + (1 if j < extra else 0) for j in range(steps)]


def gumbel_max(logits: torch.Tensor, temperature: float, generator: torch.Generator):
    """Token ids drawn from ``softmax(logits / T)`` by Gumbel-max, in float64."""
    logits = logits.double()
    if temperature <= 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
    return (logits + temperature * gumbel).argmax(-1)


@torch.no_grad()
def generate(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    config: SamplingConfig,
    generator: torch.Generator,
    record_states: bool = False,
    forbidden_token_ids: Sequence[int] = (),
) -> SampleOutput:
    """Generate one response per prompt.

    ``forbidden_token_ids`` are never produced (the mask token always is, and
    the caller may add padding or other specials). A model family that needs
    its own decoding (block diffusion) is handed to its decoder in
    :data:`FAMILY_DECODERS` (registered by :mod:`tiltmatch.sampling.families`).
    """
    family = denoiser.family
    if family.block_size is not None or family.name in FAMILY_DECODERS:
        decode = FAMILY_DECODERS.get(family.name)
        if decode is None:  # never silently decode a block model by the common order
            raise RuntimeError(f"no decoder registered for model family {family.name!r}")
        return decode(
            denoiser,
            prompts,
            response_length,
            config,
            generator,
            record_states,
            forbidden_token_ids,
        )
    if response_length % config.block_length:
        raise ValueError(
            f"response length {response_length} is not a multiple of block length "
            f"{config.block_length}"
        )
    num_blocks = response_length // config.block_length
    if config.steps % num_blocks:
        raise ValueError(f"steps {config.steps} is not a multiple of the {num_blocks} blocks")
    device = next(denoiser.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, denoiser.pad_token_id, device)
    batch = prompt_ids.shape[0]
    response = torch.full((batch, response_length), denoiser.mask_token_id, device=device)
    banned = sorted({denoiser.mask_token_id, *forbidden_token_ids})
    visited: list[torch.Tensor] | None = [] if record_states else None
    was_training = denoiser.training
    denoiser.eval()
    with denoiser.session():  # e.g. a LoRA teacher's adapter stays selected throughout
        _denoise(denoiser, prompt_ids, prompt_mask, response, banned, visited, config, generator)
    denoiser.train(was_training)
    out_visited = torch.stack(visited) if visited is not None else None
    return SampleOutput(responses=response, visited=out_visited)


def _denoise(
    denoiser: MaskedDenoiser,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response: torch.Tensor,
    banned: list[int],
    visited: list[torch.Tensor] | None,
    config: SamplingConfig,
    generator: torch.Generator,
) -> None:
    """Unmask ``response`` in place, block by block (the loop of :func:`generate`)."""
    response_length = response.shape[1]
    num_blocks = response_length // config.block_length
    steps_per_block = config.steps // num_blocks
    device = response.device
    for block in range(num_blocks):
        lo, hi = block * config.block_length, (block + 1) * config.block_length
        for count in tokens_per_step(config.block_length, steps_per_block):
            if visited is not None:
                visited.append(response.clone())
            if count == 0:
                continue
            logits = denoiser.response_logits(prompt_ids, prompt_mask, response)
            logits = logits.double()
            logits[..., banned] = -torch.inf
            candidates = gumbel_max(logits, config.temperature, generator)
            if config.remasking == "low_confidence":
                probs = torch.softmax(logits, dim=-1)
                confidence = probs.gather(-1, candidates[..., None]).squeeze(-1)
            elif config.remasking == "random":
                confidence = torch.rand(
                    response.shape, generator=generator, dtype=torch.float64, device=device
                )
            else:
                raise ValueError(f"unknown remasking {config.remasking!r}")
            # Only still-masked positions of the current block may be committed.
            open_ = response == denoiser.mask_token_id
            open_[:, :lo] = False
            open_[:, hi:] = False
            confidence = torch.where(open_, confidence, torch.full_like(confidence, -torch.inf))
            chosen = confidence.topk(count, dim=1).indices
            response.scatter_(1, chosen, candidates.gather(1, chosen))
