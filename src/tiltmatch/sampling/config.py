"""How responses are generated: the one sampler configuration (METHOD.md sections 1 and 6).

The run config's ``sampler:`` section, the rollouts, evaluation and ``tiltmatch eval`` all use
this one class, so a new field reaches every caller. It imports neither torch nor transformers
(the run config reads it); checking a mode's settings imports that mode's strategy.

``mode`` names a registered sampler strategy (:mod:`tiltmatch.sampling.registry`) and so the
distribution the sampler draws from (docs/sampling.md says what each approximation does to
DTM's target):

- ``exact``: the model's own ``p_theta(x | c)`` (METHOD.md section 1): every step is one full
  forward of prompt + response, a fixed number of tokens committed per step.
- ``cached``: the keys and values of the positions outside the active block are computed once
  per block (and every ``refresh_every`` steps) and reused: an approximate conditional.
- ``parallel``: every masked token of the block whose confidence clears ``threshold`` (or the
  ``factor`` rule) is committed at once, at least one per step: a product of the tokens'
  marginals over the committed set instead of their joint.
- ``cached+parallel``: both.

A setting the chosen mode does not read is refused when given a value other than its default
(``threshold`` with mode ``exact``, ``cache`` with ``parallel``, ...): never silently
ignored. Two shared settings are the exception, read by some modes and documented as inert in
the others, so that one sampler section can switch modes (``eval.sampler``, ``tiltmatch bench
--rollout-sampler``): ``steps`` in the parallel modes (the confidences decide the steps) and
``block_length`` in the block diffusion decoder (it decodes the model's own blocks). Whether a
mode can decode a given model family is the registry's :func:`strategy_for`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tiltmatch.sampling.registry import check_sampler_mode, sampler_class, sampler_modes

Remasking = Literal["low_confidence", "random"]
#: the registered sampler modes (a live view of the registry: ``tiltmatch eval --sampler``)
SAMPLER_MODES = sampler_modes()


class SamplingConfig(BaseModel):
    """Generation settings (rollouts and evaluation); ``sampler:`` in a run config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int = Field(
        8,
        ge=1,
        description="sampler steps over the whole response (inert in the parallel modes, "
        "whose confidences decide the steps)",
    )
    block_length: int = Field(
        8,
        ge=1,
        description="semi-autoregressive block size (inert for a block diffusion model, "
        "decoded in its own blocks)",
    )
    remasking: Remasking = "low_confidence"
    temperature: float = Field(1.0, ge=0.0)
    mode: str = Field(
        "exact",
        description="a registered sampler strategy: exact | cached | parallel | "
        "cached+parallel (tiltmatch.sampling.registry; docs/sampling.md)",
    )
    cache: Literal["prefix", "dual"] = Field(
        "dual",
        description="cached modes: reuse the prefix's keys/values (prefix) or the prefix's and "
        "the still-masked suffix's (dual)",
    )
    refresh_every: int | None = Field(
        None,
        ge=1,
        description="cached modes: also recompute the cache every this many steps inside a "
        "block (none: at block boundaries only)",
    )
    threshold: float = Field(
        0.9, gt=0.0, description="parallel modes: commit every masked token above this confidence"
    )
    factor: float | None = Field(
        None,
        gt=0.0,
        description="parallel modes: instead of the threshold, commit the n most confident "
        "tokens while the n-th has confidence >= 1 - factor / (n + 1)",
    )
    early_finish: bool = Field(
        False,
        description="a row whose decoded blocks end in end-of-text from its first end-of-text "
        "on gets end-of-text for its remaining blocks without running them",
    )
    noise: Literal["compatible", "lean"] = Field(
        "lean",
        description="token draws: only where a token can be committed (lean: an inverse CDF "
        "on the open positions of the block) or as earlier versions drew them (compatible: "
        "the same generator gives the same tokens; on a GPU it draws a float64 uniform per "
        "response position and vocabulary entry at every step, rows x L x V x 8 bytes)",
    )

    batch_rows: int | None = Field(
        None,
        ge=1,
        description="the most rows one generate call decodes at once, larger batches decoded "
        "in turn (none: all at once; the trainer's rollouts and evaluation: 256). The cached "
        "modes' keys and values grow with it: at LLaDA-8B's shape about 0.37 GiB per row "
        "(BENCHMARKS.md). A different value draws different samples",
    )

    @field_validator("mode")
    @classmethod
    def _registered_mode(cls, mode: str) -> str:
        return check_sampler_mode(mode)

    @model_validator(mode="after")
    def _mode_reads_its_settings(self) -> SamplingConfig:
        refusal = sampler_class(self.mode).setting_refusal(self, f"mode {self.mode!r}")
        if refusal is not None:
            raise ValueError(refusal)
        return self


#: the most prompts one ``generate`` call of a worker decodes when ``sampler.batch_rows`` is
#: unset (the trainer's rollout workers: :class:`~tiltmatch.training.rollouts.RolloutWorker`)
ROLLOUT_ROWS = 256


def rows_per_call(sampling: SamplingConfig, default: int = ROLLOUT_ROWS) -> int:
    """The most rows of one ``generate`` call a rollout worker makes: the sampler's
    ``batch_rows``, else ``default`` (the worker's own, :data:`ROLLOUT_ROWS` in the trainer).
    The worker chunks its prompts by it and the preflight sizes the sampler's memory by it."""
    return sampling.batch_rows or default
