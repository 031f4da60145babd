"""The sampler strategy interface: from an all-mask response to a clean one (METHOD.md section 1).

A strategy is one way of decoding, registered by name (:mod:`tiltmatch.sampling.registry`):
the common sampler's modes (:mod:`tiltmatch.sampling.strategies`) and the model families'
own decoders (:mod:`tiltmatch.sampling.families`). Its configuration is the run config's
``sampler:`` section (:class:`~tiltmatch.sampling.config.SamplingConfig`), of which it
declares what it reads (``reads``), what it tolerates unread (``inert``), what it needs of
the model (``needs``) and whether it takes a fixed number of steps (``fixed_steps``); a
setting it does not read is refused, naming it (:meth:`SamplerStrategy.setting_refusal`).

Decoding goes block by block; :meth:`SamplerStrategy.step` is the one step interface: one
denoising step of the active block (read the denoiser, draw, choose the positions to
commit, commit them), returning whether the block goes on. :meth:`SamplerStrategy.decode`
visits the blocks and calls it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.registry import readers_of

#: the settings every strategy of the common sampler reads
COMMON_SETTINGS = frozenset(
    {"steps", "block_length", "remasking", "temperature", "noise", "early_finish"}
)
#: the settings ``generate`` reads itself, before any strategy (every mode honours them)
CALL_SETTINGS = frozenset({"batch_rows"})


@dataclass
class SampleOutput:
    """Responses ``[B, L]`` and, when recorded, the canvases before each step ``[S, B, L]``."""

    responses: torch.Tensor
    visited: torch.Tensor | None = None


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


def ended_rows(decoded: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Rows ``[B]`` whose decoded part holds end-of-text, and only end-of-text from its first
    (the rows ``early_finish`` stops decoding)."""
    is_eos = decoded == eos_token_id
    first = is_eos.long().argmax(dim=1, keepdim=True)
    columns = torch.arange(decoded.shape[1], device=decoded.device)[None]
    return is_eos.any(dim=1) & (is_eos | (columns < first)).all(dim=1)


@dataclass
class Job:
    """One call of a strategy: the denoiser, what may not be drawn, and the generator."""

    denoiser: MaskedDenoiser
    prompts: Sequence[Sequence[int]]
    response_length: int
    generator: torch.Generator
    banned: list[int]
    eos_token_id: int | None
    record_states: bool


class SamplerStrategy(ABC):
    """One registered way of decoding; its settings are a :class:`SamplingConfig`.

    Subclasses set ``name`` (the registry key), ``reads`` (the SamplingConfig fields they
    read; ``mode`` always), ``inert`` (shared fields they leave unread, documented),
    ``needs`` (model capabilities: a family's spec may refuse one), ``fixed_steps`` (whether
    every call takes the same number of steps, so the visited canvases can be recorded) and
    ``by_confidence`` (whether it commits by the model's confidence, so needs low-confidence
    remasking), and implement :meth:`decode` and :meth:`step`.
    """

    name: ClassVar[str] = ""
    reads: ClassVar[frozenset[str]] = COMMON_SETTINGS
    inert: ClassVar[frozenset[str]] = frozenset()
    needs: ClassVar[frozenset[str]] = frozenset()
    fixed_steps: ClassVar[bool] = True
    by_confidence: ClassVar[bool] = False

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config

    @classmethod
    def setting_refusal(cls, config: SamplingConfig, who: str, section: str = "") -> str | None:
        """Why ``config`` cannot be honoured by this strategy (``who`` names it, ``section``
        prefixes the settings' names), or None.

        A field it neither reads nor declares inert, set to a value other than its default,
        is refused (an explicitly written default is let through: a sampler section that
        was dumped and read back sets every field).
        """
        if cls.by_confidence and config.remasking != "low_confidence":
            return (
                f"{who} commits by the model's confidence: it needs {section}"
                f"remasking='low_confidence', not {config.remasking!r}"
            )
        for field, info in SamplingConfig.model_fields.items():
            value = getattr(config, field)
            honoured = field == "mode" or field in CALL_SETTINGS | cls.reads | cls.inert
            if honoured or value == info.default:
                continue
            readers = ", ".join(readers_of(field)) or "no registered mode"
            return (
                f"{section}{field}={value!r} has no effect with {who} (read by: {readers}); "
                "leave it unset"
            )
        return None

    def check(self, job: Job) -> None:
        """Refuse, before any forward, a call this strategy cannot make."""
        if job.record_states and not self.fixed_steps:
            raise ValueError(
                f"recording the visited canvases needs a fixed number of steps; mode "
                f"{self.config.mode!r} decides it from the confidences"
            )
        if self.config.early_finish and job.eos_token_id is None:
            raise ValueError("early_finish needs the end-of-text token id (eos_token_id)")

    @torch.no_grad()
    def sample(
        self,
        denoiser: MaskedDenoiser,
        prompts: Sequence[Sequence[int]],
        response_length: int,
        generator: torch.Generator,
        record_states: bool = False,
        forbidden_token_ids: Sequence[int] = (),
        eos_token_id: int | None = None,
    ) -> SampleOutput:
        """One response per prompt (``forbidden_token_ids`` and the mask are never drawn)."""
        banned = sorted({denoiser.mask_token_id, *forbidden_token_ids})
        job = Job(
            denoiser, prompts, response_length, generator, banned, eos_token_id, record_states
        )
        self.check(job)
        was_training = denoiser.training
        denoiser.eval()
        try:
            with denoiser.session():  # e.g. a LoRA teacher's adapter stays selected throughout
                return self.decode(job)
        finally:
            denoiser.train(was_training)

    @abstractmethod
    def decode(self, job: Job) -> SampleOutput:
        """Visit the blocks of ``job``'s responses and run :meth:`step` on each until done."""

    @abstractmethod
    def step(self, block: Any) -> bool:
        """One denoising step of the active ``block``; False once the block is finished."""
