"""Which masked positions a denoising step commits: the remasking rule, written once.

METHOD.md section 1: a step of the sampler commits tokens at some of the still-masked
positions of the active block and leaves the others masked. Every decoder here chooses them
the same way (:func:`commit_positions`): each position has a score, its confidence (the
probability of its drawn token: low-confidence remasking keeps the least confident masked)
or a uniform draw (random remasking: a uniformly random order); the step's quota of
positions with the highest scores is committed. A confidence rule
(:class:`ConfidenceRule`: a threshold, or Fast-dLLM's factor rule) commits instead every
position it passes, when they are at least the quota: SDAR's ``low_confidence_dynamic``,
and with a quota of one the parallel modes' "every token above the threshold, at least one
per step". The quota of a fixed schedule is the linear one (:func:`tokens_per_step`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tiltmatch.sampling.config import SamplingConfig


def tokens_per_step(masked: int, steps: int) -> list[int]:
    """The linear schedule: ``masked`` tokens spread as evenly as possible over ``steps``."""
    base, extra = divmod(masked, steps)
    return [base + (1 if j < extra else 0) for j in range(steps)]


@dataclass(frozen=True)
class ConfidenceRule:
    """The positions a confidence-driven step may commit at once.

    Threshold rule: every position whose confidence exceeds ``threshold``. Factor rule
    (``factor`` set): the ``n`` most confident while the ``n``-th has confidence
    ``>= 1 - factor / (n + 1)``.
    """

    threshold: float = 0.9
    factor: float | None = None

    @classmethod
    def of(cls, config: SamplingConfig) -> ConfidenceRule:
        """The rule a sampler configuration sets (``threshold``, ``factor``)."""
        return cls(config.threshold, config.factor)

    def passes(self, confidence: torch.Tensor) -> torch.Tensor:
        """Boolean ``[B, W]``: the positions the rule lets commit (``-inf``: never)."""
        open_ = torch.isfinite(confidence)
        if self.factor is None:
            return open_ & (confidence > self.threshold)
        ranked, order = confidence.sort(dim=1, descending=True)
        n = torch.arange(1, confidence.shape[1] + 1, device=confidence.device)
        passes = ranked >= 1.0 - self.factor / (n + 1)
        leading = passes.long().cumprod(dim=1).sum(dim=1, keepdim=True)
        chosen = torch.zeros_like(open_)
        chosen.scatter_(1, order, (n - 1)[None] < leading)
        return chosen & open_


def commit_positions(
    score: torch.Tensor, quota: int | torch.Tensor, rule: ConfidenceRule | None = None
) -> torch.Tensor:
    """Which positions a step commits, boolean ``[B, W]``.

    ``score``: float64 ``[B, W]``, a position's confidence (or a uniform draw, for random
    remasking), ``-inf`` where nothing may be committed. ``quota``: the step's count (an int,
    or one per row), at most the positions open in a row. Without ``rule``: the ``quota``
    highest-scoring positions. With one: the positions it passes where they are at least
    ``quota``, otherwise the ``quota`` highest-scoring ones.
    """
    open_ = torch.isfinite(score)
    batch = score.shape[0]
    counts = torch.as_tensor(quota, device=score.device).expand(batch)
    counts = torch.minimum(counts, open_.sum(dim=1))
    commit = torch.zeros_like(open_)
    top = int(counts.max()) if batch else 0
    if top > 0:
        chosen = score.topk(top, dim=1).indices
        ranks = torch.arange(top, device=score.device)[None]
        commit.scatter_(1, chosen, ranks < counts[:, None])
    if rule is not None:
        passed = rule.passes(score)
        enough = passed.sum(dim=1) >= counts
        commit = torch.where(enough[:, None], passed, commit)
    return commit
