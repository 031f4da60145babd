"""The model families' own decoding algorithms, next to the common sampler's strategies.

- :func:`dream_generate`: Dream's full-sequence decoding. All response
  positions are open at once; step ``i`` of ``S`` goes from time
  ``t = t_i`` to ``s = t_{i+1}`` on ``linspace(1, eps, S + 1)`` and commits
  ``int(n * (1 - s / t))`` of the ``n`` still-masked tokens (all of them at the
  last step), chosen by confidence: the probability of the drawn token
  (``maskgit_plus``), the top-1 minus top-2 margin (``topk_margin``) or the
  negative entropy (``entropy``); with ``alg_temp`` the positions are drawn
  from ``softmax(confidence / alg_temp)`` instead of taken greedily. ``origin``
  commits each masked token independently with probability ``1 - s / t``.
- The block decoder (:class:`BlockSampler`, :class:`BlockParallelSampler`, registered as
  the block diffusion family's decoders for modes ``exact`` and ``parallel``; and
  :func:`block_generate`): block diffusion (SDAR / TraDo). The sequence is cut into blocks
  of the model's ``block_size`` counted from the first prompt token; blocks are decoded one
  after another, each by ``steps_per_block`` denoising steps committing
  ``tokens_per_step(block_size, steps_per_block)`` tokens by lowest-confidence-first (or at
  random); with a confidence rule (mode ``parallel``: ``threshold`` or ``factor``), every
  token the rule passes when they are at least the step's quota, as SDAR's
  ``low_confidence_dynamic``. Finished blocks are attended through an exact KV cache: under
  block-causal attention their keys and values never depend on later blocks, so caching
  them changes no logit. The prompt tail that shares the first decoded block with the
  response is recomputed with it. The last block is filled with extra masks up to its
  boundary, as SDAR does, and they are dropped from the response. Every forward goes
  through :meth:`MaskedDenoiser.response_logits` (a window of columns against the cache).

Token draws follow the package's rule (Gumbel-max in float64; see
``sampling/draws.py``); the confidence of a drawn token is its probability under
``softmax(logits / T)`` (both families' convention; at ``T = 0`` the argmax and
its probability). The mask token and ``forbidden_token_ids`` are never drawn; the positions
a step commits are chosen by the one remasking rule (``sampling/remasking.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import DynamicCache

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.draws import _lean_draw, gumbel_max
from tiltmatch.sampling.remasking import ConfidenceRule, commit_positions, tokens_per_step
from tiltmatch.sampling.strategy import Job, SampleOutput, SamplerStrategy, ended_rows, left_pad

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
                u = torch.rand(
                    response.shape, generator=generator, dtype=torch.float64, device=response.device
                )
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
                u = torch.rand(
                    confidence.shape,
                    generator=generator,
                    dtype=torch.float64,
                    device=confidence.device,
                )
                gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
                confidence = torch.where(open_, confidence / alg_temp + gumbel, confidence)
            commit = commit_positions(confidence, count)
            response[commit] = tokens[commit]
    denoiser.train(was_training)
    return SampleOutput(response, torch.stack(visited) if record_states else None)


@dataclass(frozen=True)
class BlockDecoding:
    """The block decoder's own settings: denoising steps per model block, remasking,
    temperature, the confidence rule of threshold decoding (None: the fixed quota), and
    whether rows that have ended stop being decoded (``early_finish``), and how tokens are
    drawn (``noise``: ``compatible``, float64 Gumbel-max over every column of the block, as
    this decoder always drew; ``lean``, the common sampler's inverse-CDF draw on the block's
    open columns only, :func:`~tiltmatch.sampling.draws._lean_draw`)."""

    steps_per_block: int
    remasking: str = "low_confidence"
    temperature: float = 0.0
    rule: ConfidenceRule | None = None
    early_finish: bool = False
    noise: str = "compatible"


@dataclass
class ModelBlock:
    """One model block being decoded for a group of rows sharing its columns.

    ``x``: the group's prompt (``x[:, :width]``) and canvas (``x[:, width:]``); ``lo``, ``hi``:
    the block in canvas columns (``lo < 0``: the prompt's tail shares it); ``cache``: the
    keys and values of every column before it.
    """

    job: Job
    decoding: BlockDecoding
    x: torch.Tensor
    width: int
    prompt_mask: torch.Tensor
    cache: DynamicCache
    lo: int
    hi: int
    schedule: list[int]
    visited: list[torch.Tensor] | None
    step: int = 0

    def run(self, logits: bool = True, at: torch.Tensor | None = None) -> torch.Tensor:
        """The block's columns through the denoiser's join, against the cache (which the
        forward extends by the block; logits ``[B, block, V]``, only ``at`` ``[n_at, V]``,
        or none)."""
        denoiser = self.job.denoiser
        prompt, canvas = self.x[:, : self.width], self.x[:, self.width :]
        keep = at if logits else torch.zeros_like(self.x[:, : self.hi - self.lo], dtype=torch.bool)
        return denoiser.response_logits(
            prompt, self.prompt_mask, canvas, self.cache, keep, columns=(self.lo, self.hi)
        )


class BlockSampler(SamplerStrategy):
    """The block diffusion decoder, mode ``exact``: ``steps`` spread over the response
    (``steps * block_size / L`` denoising steps per model block, at least 1), the fixed
    linear quota per step. ``block_length`` is inert: the model's own blocks are decoded.

    ``decoding``: the decoder's own settings when given directly (:func:`block_generate`)
    instead of read from ``config``.
    """

    name = "block"
    reads = frozenset({"steps", "remasking", "temperature", "early_finish", "noise"})
    inert = frozenset({"block_length"})

    def __init__(self, config: SamplingConfig, decoding: BlockDecoding | None = None) -> None:
        super().__init__(config)
        self.decoding = decoding

    def rule(self) -> ConfidenceRule | None:
        """The confidence rule of threshold decoding (none: the fixed quota)."""
        return None

    def settings(self, block_size: int, response_length: int) -> BlockDecoding:
        """The decoder's settings for a model of ``block_size`` and a response length."""
        if self.decoding is not None:
            return self.decoding
        config = self.config
        per_block = max(1, min(block_size, round(config.steps * block_size / response_length)))
        return BlockDecoding(
            per_block,
            config.remasking,
            config.temperature,
            self.rule(),
            config.early_finish,
            config.noise,
        )

    def decode(self, job: Job) -> SampleOutput:
        """Rows in groups sharing the response's offset in its first block (their blocks
        occupy the same columns); a group with fewer blocks than another repeats its first
        (all-masked) canvas in front of its recorded ones, a valid state."""
        size = job.denoiser.family.block_size
        if size is None:
            raise ValueError(
                "the block decoder needs a block diffusion denoiser (family block_size)"
            )
        decoding = self.settings(size, job.response_length)
        if decoding.steps_per_block < 1:
            raise ValueError(f"steps_per_block must be >= 1, got {decoding.steps_per_block}")
        groups: dict[int, list[int]] = {}
        for row, prompt in enumerate(job.prompts):
            groups.setdefault(len(prompt) % size, []).append(row)
        device = next(job.denoiser.parameters()).device
        shape = (len(job.prompts), job.response_length)
        responses = torch.empty(shape, dtype=torch.long, device=device)
        records: dict[int, list[torch.Tensor]] = {}
        for offset, rows in groups.items():
            out, records[offset] = self._decode_group(job, decoding, rows, offset, size)
            responses[rows] = out
        if not job.record_states:
            return SampleOutput(responses)
        depth = max(len(v) for v in records.values())
        stacked = torch.empty((depth, *shape), dtype=torch.long, device=device)
        for offset, rows in groups.items():
            canvases = records[offset]
            stacked[:, rows] = torch.stack([canvases[0]] * (depth - len(canvases)) + canvases)
        return SampleOutput(responses, stacked)

    def _decode_group(
        self, job: Job, decoding: BlockDecoding, rows: list[int], offset: int, size: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Block-by-block decoding of rows whose response starts ``offset`` into a block."""
        denoiser, length = job.denoiser, job.response_length
        device = next(denoiser.parameters()).device
        prompt_ids, prompt_mask = left_pad(
            [job.prompts[r] for r in rows], denoiser.pad_token_id, device
        )
        width = prompt_ids.shape[1]
        extra = (-(offset + length)) % size  # masks completing the last block (dropped)
        canvas = torch.full((len(rows), length + extra), denoiser.mask_token_id, device=device)
        x = torch.cat([prompt_ids, canvas], dim=1)
        visited: list[torch.Tensor] = []
        schedule = tokens_per_step(size, decoding.steps_per_block)
        block = ModelBlock(
            job, decoding, x, width, prompt_mask, DynamicCache(), -width, -offset, schedule,
            visited if job.record_states else None,
        )  # fmt: skip
        if width > offset:  # prefill: the prompt's finished blocks
            block.run(logits=False)
        for lo in range(-offset, length + extra, size):
            block.lo, block.hi, block.step = lo, lo + size, 0
            while self.step(block):
                block.step += 1
            if bool((x[:, width + lo : width + lo + size] == denoiser.mask_token_id).any()):
                raise RuntimeError("block decoding left masks in a finished block")
            if decoding.early_finish and self._finish_ended(block, length):
                break
            block.run(logits=False)  # the finished block joins the cache (as SDAR)
        return x[:, width : width + length], visited

    @staticmethod
    def _finish_ended(block: ModelBlock, length: int) -> bool:
        """``early_finish``: rows whose decoded response has ended get end-of-text in their
        remaining columns (never decoded); True when every row of the group has ended."""
        eos = block.job.eos_token_id
        assert eos is not None  # checked by SamplerStrategy.check
        start = block.width
        done = ended_rows(block.x[:, start : start + min(block.hi, length)], eos)
        block.x[done, start + block.hi :] = eos
        return bool(done.all())

    def step(self, block: ModelBlock) -> bool:
        """One denoising step of the model block: its quota (or the rule's positions)."""
        if block.step == len(block.schedule):
            return False
        job, decoding, width = block.job, block.decoding, block.width
        if block.visited is not None:
            block.visited.append(block.x[:, width : width + job.response_length].clone())
        window = block.x[:, width + block.lo : width + block.hi]
        open_ = window == job.denoiser.mask_token_id
        if not bool(open_.any()):
            return True
        tokens, confidence = self._propose(block, open_)
        block.cache.crop(-(block.hi - block.lo))  # a denoising step must not extend the cache
        if decoding.remasking == "low_confidence":
            score = confidence
        elif decoding.remasking == "random":
            score = torch.rand(
                open_.shape, generator=job.generator, dtype=torch.float64, device=open_.device
            )
        else:
            raise ValueError(f"unknown remasking {decoding.remasking!r}")
        score = torch.where(open_, score, torch.full_like(score, -torch.inf))
        commit = commit_positions(score, block.schedule[block.step], decoding.rule)
        window[commit] = tokens[commit]
        return True

    @staticmethod
    def _propose(block: ModelBlock, open_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, block]`` drawn from ``softmax(logits / T)`` and their probabilities
        under it (at ``T = 0`` the argmax and its probability): Gumbel-max over every column
        of the block (``noise: compatible``), or the lean draw on the open ones only."""
        job, decoding = block.job, block.decoding
        temperature = decoding.temperature
        if decoding.noise != "lean":
            logits = block.run().double()
            logits[..., job.banned] = -torch.inf
            tokens, probs = _draw(logits, temperature, job.generator)
            return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)
        chosen = block.run(at=open_).float()
        chosen[:, job.banned] = -torch.inf
        if temperature > 0:  # draw from, and score under, softmax(logits / T)
            chosen.div_(temperature)
        picked, confident = _lean_draw(chosen, 1.0 if temperature > 0 else 0.0, job.generator)
        tokens = torch.zeros(open_.shape, dtype=torch.long, device=open_.device)
        tokens[open_] = picked
        confidence = torch.zeros(open_.shape, dtype=torch.float64, device=open_.device)
        confidence[open_] = confident
        return tokens, confidence


class BlockParallelSampler(BlockSampler):
    """The block diffusion decoder, mode ``parallel``: threshold decoding as SDAR's and
    TraDo's releases run it (``low_confidence_dynamic``): each step commits every masked
    token of the block whose confidence the rule passes (above ``threshold``, or the
    ``factor`` rule) when they are at least the step's quota, otherwise the quota most
    confident. With one token per step (``steps`` equal to the response length) that is
    "every token above the threshold, at least one per step"."""

    name = "block+parallel"
    reads = BlockSampler.reads | {"threshold", "factor"}
    by_confidence = True

    def rule(self) -> ConfidenceRule | None:
        """The threshold (or factor) rule of the sampler section."""
        return ConfidenceRule.of(self.config)


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

    The block decoder (:class:`BlockSampler`) with its settings given directly.
    ``confidence_threshold`` is SDAR's ``low_confidence_dynamic``: every token above it is
    committed when they are at least the step's quota. Where the quota exceeds the masks
    left in a block (a first block that starts inside the prompt), all of them are committed
    (SDAR's top-k would then also overwrite prompt tokens; that is not reproduced). With
    ``record_states`` the response canvas before every scheduled step is recorded
    (``[S, B, L]``).
    """
    if denoiser.family.block_size is None:
        raise ValueError("block_generate needs a block diffusion denoiser (family block_size)")
    rule = None if confidence_threshold is None else ConfidenceRule(confidence_threshold)
    decoding = BlockDecoding(steps_per_block, remasking, temperature, rule)
    strategy = BlockSampler(SamplingConfig(), decoding)
    return strategy.sample(
        denoiser, prompts, response_length, generator, record_states, forbidden_token_ids
    )
