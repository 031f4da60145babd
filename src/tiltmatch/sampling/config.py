"""How responses are generated: the one sampler configuration (METHOD.md sections 1 and 6).

The run config's ``sampler:`` section, the rollouts, evaluation and ``tiltmatch eval`` all use
this one class, so a new field reaches every caller. It imports neither torch nor transformers
(the run config reads it).

``mode`` names the distribution the sampler draws from (docs/sampling.md says what each
approximation does to DTM's target):

- ``exact``: the model's own ``p_theta(x | c)`` (METHOD.md section 1): every step is one full
  forward of prompt + response, a fixed number of tokens committed per step.
- ``cached``: the keys and values of the positions outside the active block are computed once
  per block (and every ``refresh_every`` steps) and reused: an approximate conditional.
- ``parallel``: every masked token of the block whose confidence clears ``threshold`` (or the
  ``factor`` rule) is committed at once, at least one per step: a product of the tokens'
  marginals over the committed set instead of their joint.
- ``cached+parallel``: both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Remasking = Literal["low_confidence", "random"]
SamplerMode = Literal["exact", "cached", "parallel", "cached+parallel"]
SAMPLER_MODES: tuple[str, ...] = ("exact", "cached", "parallel", "cached+parallel")


class SamplingConfig(BaseModel):
    """Generation settings (rollouts and evaluation); ``sampler:`` in a run config."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    steps: int = Field(
        8, ge=1, description="sampler steps over the whole response (ignored by parallel modes)"
    )
    block_length: int = Field(8, ge=1, description="semi-autoregressive block size")
    remasking: Remasking = "low_confidence"
    temperature: float = Field(1.0, ge=0.0)
    mode: SamplerMode = Field(
        "exact", description="exact | cached | parallel | cached+parallel (see docs/sampling.md)"
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
        "compatible",
        description="Gumbel noise: drawn for every response position as earlier versions did "
        "(the same generator gives the same tokens) or only where a token can be committed "
        "(same distribution, other draws, less work)",
    )

    @model_validator(mode="after")
    def _parallel_needs_confidence(self) -> SamplingConfig:
        if self.parallel and self.remasking != "low_confidence":
            raise ValueError(
                f"mode {self.mode!r} commits by the model's confidence: it needs "
                f"remasking='low_confidence', not {self.remasking!r}"
            )
        return self

    @property
    def cached(self) -> bool:
        """Whether keys and values outside the active block are reused."""
        return self.mode in ("cached", "cached+parallel")

    @property
    def parallel(self) -> bool:
        """Whether the number of tokens committed per step follows the confidences."""
        return self.mode in ("parallel", "cached+parallel")
