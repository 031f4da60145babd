"""The sampler: from an all-mask response to a clean one (METHOD.md section 1).

:func:`generate` is the one entry: it asks the registry which strategy decodes the
sampler configuration for the denoiser's model family
(:func:`tiltmatch.sampling.registry.strategy_for`: the mode's own strategy, or the family's
decoder, or a refusal naming the combination) and runs it. The strategies:

- the common sampler's modes (:mod:`tiltmatch.sampling.strategies`): ``exact`` (the model's
  own ``p_theta``), ``cached``, ``parallel`` and ``cached+parallel``, semi-autoregressive
  blocks of any bidirectional denoiser (LLaDA, Dream);
- a family's own decoder (:mod:`tiltmatch.sampling.families`): block diffusion's block
  decoder for modes ``exact`` and ``parallel``.

Every mode but ``exact`` and ``early_finish`` is an approximation of ``p_theta``:
docs/sampling.md says what each does to the distribution DTM's target is defined by. The
pieces they share: token draws (float64 Gumbel-max, lean logits: ``sampling/draws.py``),
the remasking rule (``sampling/remasking.py``) and the denoiser's one join of prompt and
canvas (:meth:`MaskedDenoiser.response_logits`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.registry import DEFAULT_FAMILY
from tiltmatch.sampling.config import Remasking, SamplingConfig
from tiltmatch.sampling.draws import _lean_draw as _lean_draw
from tiltmatch.sampling.draws import gumbel_max
from tiltmatch.sampling.registry import sampler_class, strategy_for
from tiltmatch.sampling.remasking import ConfidenceRule, commit_positions, tokens_per_step
from tiltmatch.sampling.strategies import BlockForward
from tiltmatch.sampling.strategy import SampleOutput, ended_rows, left_pad

__all__ = [
    "Remasking",
    "SampleOutput",
    "SamplingConfig",
    "generate",
    "gumbel_max",
    "left_pad",
    "tokens_per_step",
]

# Private names tests/test_sampler.py reaches for, as the earlier sampler spelled them
# (``_lean_draw`` above; ``_parallel_commit`` and ``_BlockForward`` below).
_ended = ended_rows


@torch.no_grad()
def generate(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    config: SamplingConfig,
    generator: torch.Generator,
    record_states: bool = False,
    forbidden_token_ids: Sequence[int] = (),
    eos_token_id: int | None = None,
) -> SampleOutput:
    """Generate one response per prompt with the strategy that decodes ``config`` for this
    denoiser's model family (a combination the family cannot honour is a ``ValueError``
    naming it, before any forward).

    ``forbidden_token_ids`` are never produced (the mask token always is, and
    the caller may add padding or other specials). ``eos_token_id``: the
    end-of-text token, needed by ``config.early_finish``. ``record_states``: also return the
    canvas before every step (``[S, B, L]``; strategies with a fixed number of steps only).
    ``config.batch_rows``: decode at most that many prompts at once, the batches in turn
    from the same generator.
    """
    family = getattr(getattr(denoiser, "family", None), "name", DEFAULT_FAMILY)
    strategy = strategy_for(family, config)(config)

    def sample(part: Sequence[Sequence[int]]) -> SampleOutput:
        return strategy.sample(
            denoiser,
            part,
            response_length,
            generator,
            record_states,
            forbidden_token_ids,
            eos_token_id,
        )

    rows = config.batch_rows
    if rows is None or len(prompts) <= rows:
        return sample(prompts)
    outs = [sample(prompts[lo : lo + rows]) for lo in range(0, len(prompts), rows)]
    states = [out.visited for out in outs if out.visited is not None]
    return SampleOutput(
        responses=torch.cat([out.responses for out in outs]),
        visited=torch.cat(states, dim=1) if states else None,
    )


def _parallel_commit(confidence: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Which open positions a parallel step commits ``[B, L]`` (at least one per open row):
    the remasking rule with ``config``'s confidence rule and a quota of one."""
    return commit_positions(confidence, 1, ConfidenceRule.of(config))


def _BlockForward(  # the name of the class this replaced
    denoiser: MaskedDenoiser,
    prompt_ids: torch.Tensor,
    canvas: torch.Tensor,
    prompt_mask: torch.Tensor,
    positions: torch.Tensor,
    lo: int,
    hi: int,
    config: SamplingConfig,
) -> BlockForward:
    """The block forward of ``config``'s mode, under the earlier class's name and signature
    (``positions`` are the join's business now: unused)."""
    del positions
    forward: type[BlockForward] = getattr(sampler_class(config.mode), "forward", BlockForward)
    return forward(denoiser, prompt_ids, canvas, prompt_mask, lo, hi, config)
