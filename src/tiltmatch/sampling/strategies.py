"""The common sampler's strategies: semi-autoregressive blocks of any bidirectional denoiser.

The response of length ``L`` is decoded in blocks of ``block_length``, batched over prompts
of different lengths (left padding, see ``models/denoiser.py``). Each strategy is two
choices, each its own class (docs/sampling.md says what each does to ``p_theta``):

- how a step reads the denoiser: :class:`BlockForward`, one full forward of prompt +
  response per step (``exact``, ``parallel``), or :class:`CachedBlockForward`, the keys and
  values outside the active block reused from a cache written in place
  (:class:`~tiltmatch.sampling.cache.WindowCache`; ``cached``, ``cached+parallel``);
- how many masked positions a step commits: the linear schedule's count over ``steps``
  (:class:`ExactSampler`, :class:`CachedSampler`), or every position a confidence rule
  passes, at least one per step (:class:`ParallelSampler`, :class:`CachedParallelSampler`).

The positions themselves are chosen by the one remasking rule
(:func:`tiltmatch.sampling.remasking.commit_positions`), the tokens drawn by
:func:`tiltmatch.sampling.draws.propose`, and every forward goes through
:meth:`MaskedDenoiser.response_logits`, the one join of prompt and canvas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.sampling.cache import WindowCache
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.draws import propose
from tiltmatch.sampling.remasking import ConfidenceRule, commit_positions, tokens_per_step
from tiltmatch.sampling.strategy import (
    COMMON_SETTINGS,
    Job,
    SampleOutput,
    SamplerStrategy,
    ended_rows,
    left_pad,
)

__all__ = [
    "ActiveBlock",
    "BlockForward",
    "CachedBlockForward",
    "CachedParallelSampler",
    "CachedSampler",
    "ExactSampler",
    "ParallelSampler",
    "SemiAutoregressiveSampler",
]


class BlockForward:
    """The denoiser's logits ``[n_open, V]`` at the open positions of the active block.

    Only the still-masked positions of the block can be committed, so only they are
    projected onto the vocabulary (the projection is most of a shallow, wide-vocabulary
    model's forward). One full forward of prompt + response per step. ``reuse``: the
    previous block's forward, whose buffers a subclass may take over (the cache).
    """

    def __init__(
        self,
        denoiser: MaskedDenoiser,
        prompt_ids: torch.Tensor,
        canvas: torch.Tensor,
        prompt_mask: torch.Tensor,
        lo: int,
        hi: int,
        config: SamplingConfig,
        reuse: BlockForward | None = None,
    ) -> None:
        self.denoiser, self.prompt_ids, self.canvas = denoiser, prompt_ids, canvas
        self.prompt_mask, self.lo, self.hi, self.config = prompt_mask, lo, hi, config

    def keep_rows(self, keep: torch.Tensor, canvas: torch.Tensor) -> None:
        """Go on with the rows ``keep`` only; ``canvas`` is their canvas from now on."""
        self.prompt_ids, self.prompt_mask, self.canvas = (
            self.prompt_ids[keep],
            self.prompt_mask[keep],
            canvas,
        )

    def wanted(self, open_: torch.Tensor) -> torch.Tensor:
        """The canvas columns ``[B, L]`` whose logits are needed: the block's open ones."""
        wanted = torch.zeros_like(self.canvas, dtype=torch.bool)
        wanted[:, self.lo : self.hi] = open_
        return wanted

    def __call__(self, step: int, open_: torch.Tensor) -> torch.Tensor:
        """Logits at ``open_`` ``[B, block]`` (row-major), after ``step`` steps of the block."""
        return self.denoiser.response_logits(
            self.prompt_ids, self.prompt_mask, self.canvas, logits_at=self.wanted(open_)
        )


class CachedBlockForward(BlockForward):
    """:class:`BlockForward` with the keys and values outside the block reused.

    A full forward at the block's first step (and every ``refresh_every`` steps) also fills
    a :class:`~tiltmatch.sampling.cache.WindowCache`; it then keeps the keys and values of
    the prefix (prompt and finished blocks) or, for the dual cache, of everything outside the
    block, and later steps run only the block (dual) or the block and the suffix (prefix)
    against them, through the join's window of columns, writing the window's own keys and
    values in place (no copy of the cached ones per step). Attention is bidirectional, so
    the order of cached keys does not matter; positions are the join's and padding stays in
    the attention mask, so a cached row's results still do not depend on its batch's padding.
    The cache is handed from block to block (``reuse``) and lives as long as the call.
    """

    def __init__(
        self,
        denoiser: MaskedDenoiser,
        prompt_ids: torch.Tensor,
        canvas: torch.Tensor,
        prompt_mask: torch.Tensor,
        lo: int,
        hi: int,
        config: SamplingConfig,
        reuse: BlockForward | None = None,
    ) -> None:
        super().__init__(denoiser, prompt_ids, canvas, prompt_mask, lo, hi, config)
        self.cache: WindowCache = (
            reuse.cache if isinstance(reuse, CachedBlockForward) else WindowCache()
        )
        self.fresh = False  # whether the cache holds this block's refresh

    def keep_rows(self, keep: torch.Tensor, canvas: torch.Tensor) -> None:
        """Go on with the rows ``keep`` only (their cached keys and values too)."""
        super().keep_rows(keep, canvas)
        if self.fresh:
            self.cache.keep_rows(keep)

    def __call__(self, step: int, open_: torch.Tensor) -> torch.Tensor:
        """Logits at ``open_``: a refreshing full forward, or the window against the cache."""
        config, wanted, cache = self.config, self.wanted(open_), self.cache
        every = config.refresh_every
        if not self.fresh or (every is not None and step % every == 0):
            cache.restart()
            logits = self.denoiser.response_logits(
                self.prompt_ids, self.prompt_mask, self.canvas, cache=cache, logits_at=wanted
            )
            width = self.prompt_ids.shape[1]
            cache.keep(width + self.lo, width + self.hi if config.cache == "dual" else None)
            self.fresh = True
            return logits
        # The block (dual) or block + suffix (prefix) against the cached columns; the
        # window's keys and values go into the cache's room after them, overwritten next step.
        stop = self.hi if config.cache == "dual" else self.canvas.shape[1]
        return self.denoiser.response_logits(
            self.prompt_ids,
            self.prompt_mask,
            self.canvas,
            cache=cache,
            logits_at=wanted[:, self.lo : stop],
            columns=(self.lo, stop),
        )


@dataclass
class ActiveBlock:
    """The block ``[lo, hi)`` of the response being denoised, for the rows still running.

    ``rows``: indices into the batch (None: every row); ``canvas``: their response canvas
    (the job's own tensor when every row runs, written back by :meth:`commit` otherwise).
    """

    job: Job
    response: torch.Tensor
    canvas: torch.Tensor
    rows: torch.Tensor | None
    lo: int
    hi: int
    forward: BlockForward
    step: int = 0
    visited: list[torch.Tensor] | None = field(default=None)

    @property
    def open_(self) -> torch.Tensor:
        """The block's still-masked positions ``[B_running, block]``."""
        return self.canvas[:, self.lo : self.hi] == self.job.denoiser.mask_token_id

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Go on with the running rows ``keep`` only (indices into the running rows)."""
        self.rows = keep if self.rows is None else self.rows[keep]
        self.canvas = self.canvas[keep]
        self.forward.keep_rows(keep, self.canvas)

    def record(self) -> None:
        """Record the whole batch's canvas (when the job records the visited states)."""
        if self.visited is not None:
            self.visited.append(self.response.clone())

    def commit(self, candidates: torch.Tensor, chosen: torch.Tensor) -> None:
        """Write ``candidates`` ``[B_running, L]`` at the ``chosen`` positions."""
        self.canvas[chosen] = candidates[chosen]
        if self.rows is not None:
            self.response[self.rows] = self.canvas


class SemiAutoregressiveSampler(SamplerStrategy):
    """Semi-autoregressive blocks of ``block_length``, one strategy step at a time.

    Subclasses choose the forward (``forward``) and how many positions a step commits
    (:meth:`quota`, :meth:`choose`); :meth:`step` is the shared step: record, read the
    denoiser, draw (:func:`~tiltmatch.sampling.draws.propose`), choose, commit.
    """

    forward: ClassVar[type[BlockForward]] = BlockForward

    def check(self, job: Job) -> None:
        """The block and step counts must divide the response; the positions must fit."""
        super().check(job)
        config, length = self.config, job.response_length
        if length % config.block_length:
            raise ValueError(
                f"response length {length} is not a multiple of block length {config.block_length}"
            )
        blocks = length // config.block_length
        if "steps" in self.reads and config.steps % blocks:
            raise ValueError(f"steps {config.steps} is not a multiple of the {blocks} blocks")
        if job.prompts and hasattr(job.denoiser, "check_positions"):
            job.denoiser.check_positions(max(len(p) for p in job.prompts), length)

    def decode(self, job: Job) -> SampleOutput:
        """Unmask the responses block by block (``early_finish``: skip rows that ended)."""
        denoiser, config = job.denoiser, self.config
        device = next(denoiser.parameters()).device
        prompt_ids, prompt_mask = left_pad(job.prompts, denoiser.pad_token_id, device)
        batch, length = prompt_ids.shape[0], job.response_length
        response = torch.full((batch, length), denoiser.mask_token_id, device=device)
        visited: list[torch.Tensor] | None = [] if job.record_states else None
        alive = torch.ones(batch, dtype=torch.bool, device=device)
        forward: BlockForward | None = None
        for lo in range(0, length, config.block_length):
            if config.early_finish and lo > 0:
                assert job.eos_token_id is not None  # checked by check()
                done = alive & ended_rows(response[:, :lo], job.eos_token_id)
                response[done, lo:] = job.eos_token_id
                alive &= ~done
                if not alive.any():
                    break
            rows = None if bool(alive.all()) else alive.nonzero().squeeze(1)
            ids, mask, canvas = (
                (prompt_ids, prompt_mask, response)
                if rows is None
                else (prompt_ids[rows], prompt_mask[rows], response[rows])
            )
            hi = lo + config.block_length
            forward = self.forward(denoiser, ids, canvas, mask, lo, hi, config, forward)
            block = ActiveBlock(job, response, canvas, rows, lo, hi, forward, visited=visited)
            while self.step(block):
                block.step += 1
        return SampleOutput(response, torch.stack(visited) if visited is not None else None)

    def quota(self, block: ActiveBlock) -> torch.Tensor | int | None:
        """How many positions this step commits (per running row), or None: block finished."""
        schedule = tokens_per_step(
            self.config.block_length, max(self.config.steps // self._blocks(block), 1)
        )
        return None if block.step == len(schedule) else schedule[block.step]

    def choose(self, score: torch.Tensor, quota: torch.Tensor | int) -> torch.Tensor:
        """The positions ``[B, L]`` this step commits: the remasking rule."""
        return commit_positions(score, quota)

    def step(self, block: ActiveBlock) -> bool:
        """Record, read the denoiser at the open positions, draw, choose and commit."""
        quota = self.quota(block)
        if quota is None:
            return False
        block.record()
        if isinstance(quota, torch.Tensor) or quota > 0:
            open_ = block.open_
            logits = block.forward(block.step, open_)
            job, length = block.job, block.canvas.shape[1]
            candidates, score = propose(
                logits, open_, block.lo, length, job.banned, self.config, job.generator
            )
            block.commit(candidates, self.choose(score, quota))
        return True

    def _blocks(self, block: ActiveBlock) -> int:
        return block.job.response_length // self.config.block_length


class ExactSampler(SemiAutoregressiveSampler):
    """``exact``: the model's own ``p_theta`` (METHOD.md section 1): a full forward per step,
    the linear schedule's count of positions committed per step."""

    name = "exact"


class CachedSampler(ExactSampler):
    """``cached``: :class:`ExactSampler` reading the denoiser through a cache of the columns
    outside the active block, an approximate conditional (docs/sampling.md)."""

    name = "cached"
    reads = COMMON_SETTINGS | {"cache", "refresh_every"}
    needs = frozenset({"window_cache"})
    forward = CachedBlockForward


class ParallelSampler(SemiAutoregressiveSampler):
    """``parallel``: every open position of the block that the confidence rule passes
    (``threshold`` or ``factor``), at least one per step; a batch runs until its slowest row
    has finished the block (rows done leave the forwards). A product of marginals."""

    name = "parallel"
    reads = (COMMON_SETTINGS - {"steps"}) | {"threshold", "factor"}
    inert = frozenset({"steps"})
    fixed_steps = False
    by_confidence = True

    def quota(self, block: ActiveBlock) -> torch.Tensor | int | None:
        """One per running row; rows done with the block leave it (None once all are)."""
        running = block.open_.any(dim=1)
        if not running.any():
            return None
        if not running.all():
            block.keep_rows(running.nonzero().squeeze(1))
        return torch.ones(block.canvas.shape[0], dtype=torch.long, device=block.canvas.device)

    def choose(self, score: torch.Tensor, quota: torch.Tensor | int) -> torch.Tensor:
        """The confidence rule's positions, at least ``quota`` (one) per row."""
        return commit_positions(score, quota, ConfidenceRule.of(self.config))


class CachedParallelSampler(ParallelSampler):
    """``cached+parallel``: :class:`ParallelSampler` through :class:`CachedBlockForward`."""

    name = "cached+parallel"
    reads = ParallelSampler.reads | {"cache", "refresh_every"}
    needs = frozenset({"window_cache"})
    forward = CachedBlockForward
