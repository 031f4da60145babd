"""The model families' own decoding algorithms, next to the common sampler (``sampler.py``).

- :func:`dream_generate`: Dream's full-sequence decoding. All response
  positions are open at once; step ``i`` of ``S`` goes from time
  ``t = t_i`` to ``s = t_{i+1}`` on ``linspace(1, eps, S + 1)`` and commits
  ``int(n * (1 - s / t))`` of the ``n`` still-masked tokens (all of them at the
  last step), chosen by confidence: the probability of the drawn token
  (``maskgit_plus``), the top-1 minus top-2 margin (``topk_margin``) or the
  negative entropy (``entropy``); with ``alg_temp`` the positions are drawn
  from ``softmax(confidence / alg_temp)`` instead of taken greedily. ``origin``
  commits each masked token independently with probability ``1 - s / t``.
- :func:`block_generate`: block diffusion (SDAR / TraDo). The sequence is cut
  into blocks of the model's ``block_size`` counted from the first prompt token;
  blocks are decoded one after another, each by ``steps_per_block`` denoising
  steps committing ``tokens_per_step(block_size, steps_per_block)`` tokens by
  lowest-confidence-first (or at random). Finished blocks are attended through
  an exact KV cache: under block-causal attention their keys and values never
  depend on later blocks, so caching them changes no logit. The prompt tail
  that shares the first decoded block with the response is recomputed with it.
  The last block is filled with extra masks up to its boundary, as SDAR does,
  and they are dropped from the response.

Token draws follow the package's rule (Gumbel-max in float64; see
``sampler.py``); the confidence of a drawn token is its probability under
``softmax(logits / T)`` (both families' convention; at ``T = 0`` the argmax and
its probability). The mask token and ``forbidden_token_ids`` are never drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.family import block_causal_mask
from tiltmatch.sampling.sampler import (
    FAMILY_DECODERS,
    SampleOutput,
    SamplingConfig,
    gumbel_max,
    left_pad,
    tokens_per_step,
)

DreamAlgorithm = Literal["origin", "maskgit_plus", "topk_margin", "entropy"]


def _draw(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drawn tokens and their probabilities under ``softmax(logits / T)`` (float64)."""
    logits = logits.double()
    tokens = gumbel_max(logits, temperature, generator)
    probs = torch.softmax(logits / temperature if temperature > 0 else logits, dim=-1)
    return tokens, probs


def _confidence(
    probs: torch.Tensor, tokens: torch.Tensor, algorithm: DreamAlgorithm
) -> torch.Tensor:
    if algorithm == "maskgit_plus":
        return probs.gather(-1, tokens[..., None]).squeeze(-1)
    if algorithm == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if algorithm == "entropy":
        return (probs * torch.log(probs.clamp(min=1e-300))).sum(-1)
    raise ValueError(f"unknown Dream algorithm {algorithm!r}")


def _canvas(
    denoiser: MaskedDenoiser, prompts: Sequence[Sequence[int]], response_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = next(denoiser.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, denoiser.pad_token_id, device)
    response = torch.full(
        (prompt_ids.shape[0], response_length), denoiser.mask_token_id, device=device
    )
    return prompt_ids, prompt_mask, response


@torch.no_grad()
def dream_generate(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    steps: int,
    generator: torch.Generator,
    algorithm: DreamAlgorithm = "maskgit_plus",
    temperature: float = 0.0,
    alg_temp: float | None = None,
    eps: float = 1e-3,
    record_states: bool = False,
    forbidden_token_ids: Sequence[int] = (),
) -> SampleOutput:
    """One response per prompt by Dream's full-sequence decoding (see the module docstring)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    prompt_ids, prompt_mask, response = _canvas(denoiser, prompts, response_length)
    banned = sorted({denoiser.mask_token_id, *forbidden_token_ids})
    # float32, as Dream computes them: the per-step counts int(n * (1 - s / t)) agree.
    times = torch.linspace(1.0, eps, steps + 1, dtype=torch.float32)
    visited: list[torch.Tensor] = []
    was_training = denoiser.training
    denoiser.eval()
    with denoiser.session():
        for i in range(steps):
            if record_states:
                visited.append(response.clone())
            open_ = response == denoiser.mask_token_id
            if not bool(open_.any()):
                continue
            logits = denoiser.response_logits(prompt_ids, prompt_mask, response)
            logits = logits.double()
            logits[..., banned] = -torch.inf
            tokens, probs = _draw(logits, temperature, generator)
            t, s = times[i], times[i + 1]
            last = i == steps - 1
            if algorithm == "origin":
                u = torch.rand(response.shape, generator=generator, dtype=torch.float64)
                commit = open_ & ((u < float(1 - s / t)) | last)
                response[commit] = tokens[commit]
                continue
            # Dream counts the masked tokens averaged over the batch (equal in every row here).
            remaining = open_.sum() / open_.shape[0]
            count = int(remaining) if last else int(remaining * (1 - s / t))
            if count <= 0:
                continue
            confidence = _confidence(probs, tokens, algorithm)
            confidence = torch.where(open_, confidence, torch.full_like(confidence, -torch.inf))
            if alg_temp:
                # Positions drawn without replacement from softmax(confidence / alg_temp):
                # Gumbel-top-k, in float64.
                u = torch.rand(confidence.shape, generator=generator, dtype=torch.float64)
                gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
                confidence = torch.where(open_, confidence / alg_temp + gumbel, confidence)
            chosen = confidence.topk(count, dim=1).indices
            response.scatter_(1, chosen, tokens.gather(1, chosen))
    denoiser.train(was_training)
    return SampleOutput(response, torch.stack(visited) if record_states else None)


@torch.no_grad()
def block_generate(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    steps_per_block: int,
    generator: torch.Generator,
    remasking: str = "low_confidence",
    temperature: float = 0.0,
    confidence_threshold: float | None = None,
    record_states: bool = False,
    forbidden_token_ids: Sequence[int] = (),
) -> SampleOutput:
    """One response per prompt by block diffusion decoding with an exact KV cache.

    Rows are decoded in groups that share the offset of the response inside
    its first block (prompt length mod block size), so that a group's blocks
    occupy the same columns. ``confidence_threshold`` is SDAR's
    ``low_confidence_dynamic``: every token above it is committed when they are
    at least the step's quota. Where the quota exceeds the masks left in a
    block (a first block that starts inside the prompt), all of them are
    committed (SDAR's top-k would then also overwrite prompt tokens; that is not
    reproduced). With ``record_states`` the response canvas before every
    scheduled step is recorded (``[S, B, L]``); a group with fewer blocks than
    another repeats its first (all-masked) canvas in front, a valid state.
    """
    block = denoiser.family.block_size
    if block is None:
        raise ValueError("block_generate needs a block diffusion denoiser (family block_size)")
    if steps_per_block < 1:
        raise ValueError(f"steps_per_block must be >= 1, got {steps_per_block}")
    lengths = [len(p) for p in prompts]
    groups: dict[int, list[int]] = {}
    for row, n in enumerate(lengths):
        groups.setdefault(n % block, []).append(row)
    device = next(denoiser.parameters()).device
    responses = torch.empty((len(prompts), response_length), dtype=torch.long, device=device)
    records: dict[int, list[torch.Tensor]] = {}
    was_training = denoiser.training
    denoiser.eval()
    with denoiser.session():
        for offset, rows in groups.items():
            out, visited = _decode_group(
                denoiser,
                [prompts[r] for r in rows],
                response_length,
                offset,
                steps_per_block,
                generator,
                remasking,
                temperature,
                confidence_threshold,
                sorted({denoiser.mask_token_id, *forbidden_token_ids}),
                record_states,
            )
            responses[rows] = out
            records[offset] = visited
    denoiser.train(was_training)
    if not record_states:
        return SampleOutput(responses)
    depth = max(len(v) for v in records.values())
    stacked = torch.empty((depth, len(prompts), response_length), dtype=torch.long, device=device)
    for offset, rows in groups.items():
        canvases = records[offset]
        canvases = [canvases[0]] * (depth - len(canvases)) + canvases
        stacked[:, rows] = torch.stack(canvases)
    return SampleOutput(responses, stacked)


def _decode_group(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    offset: int,
    steps_per_block: int,
    generator: torch.Generator,
    remasking: str,
    temperature: float,
    confidence_threshold: float | None,
    banned: list[int],
    record_states: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Block-by-block decoding of rows whose response starts ``offset`` tokens into a block."""
    from transformers import DynamicCache

    block = denoiser.family.block_size
    assert block is not None
    model, mask_id = denoiser.model, denoiser.mask_token_id
    prompt_ids, prompt_mask, _ = _canvas(denoiser, prompts, 0)
    batch, width = prompt_ids.shape
    span = offset + response_length
    extra = (-span) % block  # masks that complete the last block (dropped at the end)
    masks = torch.full((batch, response_length + extra), mask_id, device=prompt_ids.device)
    x = torch.cat([prompt_ids, masks], dim=1)
    real = torch.cat([prompt_mask, torch.ones_like(x[:, width:])], dim=1)
    positions = MaskedDenoiser.position_ids(real)
    allowed = block_causal_mask(real, positions, block)
    cache = DynamicCache()
    start = width - offset  # first column of the first decoded block
    if start > 0:  # prefill: the prompt's finished blocks
        model(
            input_ids=x[:, :start],
            attention_mask=allowed[:, :, :start, :start],
            position_ids=positions[:, :start],
            cache=cache,
            use_cache=True,
        )
    schedule = tokens_per_step(block, steps_per_block)
    visited: list[torch.Tensor] = []
    for lo in range(start, x.shape[1], block):
        hi = lo + block
        mask = allowed[:, :, lo:hi, :hi]
        for count in schedule:
            if record_states:
                visited.append(x[:, width : width + response_length].clone())
            open_ = x[:, lo:hi] == mask_id
            if not bool(open_.any()):
                continue
            logits = model(
                input_ids=x[:, lo:hi],
                attention_mask=mask,
                position_ids=positions[:, lo:hi],
                cache=cache,
                use_cache=True,
            ).logits
            cache.crop(-block)  # a denoising step must not extend the cache
            logits = logits.double()
            logits[..., banned] = -torch.inf
            tokens, probs = _draw(logits, temperature, generator)
            if remasking == "low_confidence":
                confidence = probs.gather(-1, tokens[..., None]).squeeze(-1)
            elif remasking == "random":
                confidence = torch.rand(open_.shape, generator=generator, dtype=torch.float64)
            else:
                raise ValueError(f"unknown remasking {remasking!r}")
            confidence = torch.where(open_, confidence, torch.full_like(confidence, -torch.inf))
            quota = torch.clamp(open_.sum(1), max=count)
            ranks = confidence.argsort(dim=1, descending=True).argsort(dim=1)
            commit = (ranks < quota[:, None]) & open_
            if confidence_threshold is not None:
                above = (confidence > confidence_threshold) & open_
                enough = above.sum(1) >= quota
                commit = torch.where(enough[:, None], above, commit)
            window = x[:, lo:hi]
            window[commit] = tokens[commit]
        if bool((x[:, lo:hi] == mask_id).any()):  # a schedule shorter than the block's masks
            raise RuntimeError("block decoding left masks in a finished block")
        # The finished block's keys and values join the cache (one more forward, as SDAR).
        model(
            input_ids=x[:, lo:hi],
            attention_mask=mask,
            position_ids=positions[:, lo:hi],
            cache=cache,
            use_cache=True,
        )
    return x[:, width : width + response_length], visited


def block_family_generate(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    config: SamplingConfig,
    generator: torch.Generator,
    record_states: bool = False,
    forbidden_token_ids: Sequence[int] = (),
) -> SampleOutput:
    """The common sampler's call for a block diffusion model: :func:`block_generate`.

    A block diffusion model can only be decoded block by block; ``config.steps``
    is spread over the response's blocks (``steps * block_size / L`` denoising
    steps per block, at least 1). LLaDA and Dream models are bidirectional and
    take any of the common sampler's orders (no decoder is registered for them).
    """
    block = denoiser.family.block_size
    if block is None:
        raise ValueError("block_family_generate needs a block diffusion denoiser")
    per_block = max(1, min(block, round(config.steps * block / response_length)))
    return block_generate(
        denoiser,
        prompts,
        response_length,
        per_block,
        generator,
        remasking=config.remasking,
        temperature=config.temperature,
        record_states=record_states,
        forbidden_token_ids=forbidden_token_ids,
    )


# The block diffusion family's spec names them (models/block_diffusion.py: FAMILY.decoders).
FAMILY_DECODERS["block"] = block_family_generate
FAMILY_DECODERS["block+parallel"] = block_family_generate
