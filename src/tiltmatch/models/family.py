"""Masked diffusion model families: the one hook :class:`MaskedDenoiser` asks of a model.

Every denoiser is a transformers ``PreTrainedModel`` (STYLE.md: one model path);
the families differ in two things only, both read from the model's config:

- ``logit_shift`` (Dream): the logits for response position ``i`` are read from
  the hidden state at ``i - 1`` (Dream keeps the autoregressive head of the
  Qwen2.5 model it was initialised from);
- ``block_size`` (block diffusion, SDAR / TraDo): attention is bidirectional
  inside a block of ``block_size`` positions and causal across blocks, blocks
  counted over real tokens from the first prompt token. Finished blocks
  therefore never see later ones, so their keys and values are cached exactly.

LLaDA (and the tiny Llama-architecture models) has neither. Which family has which
is declared once, by each family's spec (:mod:`tiltmatch.models.registry`); the
family is stored in the config as ``dllm_family`` (and ``dllm_block_size``), so a
saved denoiser keeps it; a config without it is of the default family (LLaDA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tiltmatch.models.registry import (
    BLOCK_SIZE_KEY,
    DEFAULT_FAMILY,
    FAMILIES,
    FAMILY_KEY,
    family_names,
    family_spec,
)


@dataclass(frozen=True)
class Family:
    """What a denoiser's forward needs to know about its model family."""

    name: str = DEFAULT_FAMILY
    logit_shift: bool = False
    block_size: int | None = None

    @property
    def extra_columns(self) -> int:
        """Columns of logits to compute beyond the response (1 for a shifted head)."""
        return 1 if self.logit_shift else 0

    def attention(self, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """The mask handed to the model: the 2-D padding mask, or a 4-D block-causal one.

        Block-causal (``[B, 1, T, T]``, True = may attend): query ``q`` sees key
        ``k`` when ``k`` is a real token and ``block(k) <= block(q)``, with
        ``block = position // block_size`` over real-token positions, so left
        padding moves no block boundary. Padded queries see only themselves,
        which keeps their (unused) rows finite.
        """
        if self.block_size is None:
            return attention_mask
        return block_causal_mask(attention_mask, position_ids, self.block_size)

    def response_logits(self, logits: torch.Tensor, response_length: int) -> torch.Tensor:
        """``[B, L, V]`` logits of the response from the model's last ``L + extra`` columns."""
        if self.logit_shift:
            # Dream: position i is predicted from the hidden state at i - 1.
            return logits[:, -response_length - 1 : -1]
        return logits[:, -response_length:]


def block_causal_mask(
    attention_mask: torch.Tensor, position_ids: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Boolean ``[B, 1, T, T]`` block-causal mask over real tokens (:meth:`Family.attention`)."""
    real = attention_mask.bool()
    block = torch.div(position_ids, block_size, rounding_mode="floor")
    allowed = (block[:, None, :] <= block[:, :, None]) & real[:, None, :]
    eye = torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
    allowed = allowed | (eye[None] & ~real[:, :, None])
    return allowed[:, None]


def family_of(config: Any) -> Family:
    """The hook of the family a model config declares (``dllm_family``; the default family
    when absent), as that family's registry spec describes it."""
    name = getattr(config, FAMILY_KEY, None) or DEFAULT_FAMILY
    if name not in FAMILIES:
        raise ValueError(
            f"unknown model family {name!r} in the model config (known: {family_names()})"
        )
    spec = family_spec(name)
    if spec.block_causal:
        size = getattr(config, BLOCK_SIZE_KEY, None)
        if not isinstance(size, int) or size < 1:
            raise ValueError(
                f"a block-causal ({spec.label}) model config needs {BLOCK_SIZE_KEY} >= 1"
            )
        return Family(name, logit_shift=spec.logit_shift, block_size=size)
    return Family(name, logit_shift=spec.logit_shift)


def decoder_layer_classes(model: Any) -> tuple[str, ...]:
    """Class names of the model's decoder layers, from its ``_no_split_modules``.

    The units FSDP wraps one by one (and activation checkpointing recomputes):
    ``LlamaDecoderLayer``, ``Qwen2DecoderLayer``, ``Qwen3DecoderLayer``, ... A
    PEFT wrapper is looked through.
    """
    from transformers import PreTrainedModel

    names: tuple[str, ...] = ()
    for module in model.modules():  # the model itself, or the one a PEFT wrapper holds
        if isinstance(module, PreTrainedModel) and module._no_split_modules:
            names = tuple(module._no_split_modules)
            break
    if not names:
        raise ValueError(f"{type(model).__name__} declares no decoder layer class")
    return names


def lora_targets(model_type: str | None) -> list[str] | None:
    """The default LoRA targets of a transformers ``model_type``: those of the registered
    family built on it (every attention and MLP projection for Llama, Qwen2, Qwen3)."""
    for name in family_names():
        spec = family_spec(name)
        if spec.architecture == model_type:
            return list(spec.lora_targets)
    return None


def lora_target_modules(model: Any, requested: list[str] | None = None) -> list[str]:
    """The LoRA target module names for ``model`` (``requested`` checked against it).

    Llama, Qwen2 and Qwen3 name their projections alike; an architecture no registered
    family is built on needs explicit targets (:func:`lora_targets`), and a requested name
    that matches no module of the model is an error naming it.
    """
    model_type = getattr(model.config, "model_type", None)
    if requested is None:
        requested = lora_targets(model_type)
        if requested is None:
            raise ValueError(
                f"no default LoRA targets for model_type {model_type!r}: set lora.target_modules"
            )
    # A target names a module by its last dotted components, as PEFT matches it
    # ("dense", or "shared_experts.gate_proj" to leave a MoE's routed experts out).
    names = [name for name, _ in model.named_modules()]
    if missing := [t for t in requested if not any(_ends_with(n, t) for n in names)]:
        raise ValueError(
            f"lora.target_modules {missing} match no module of this {model_type!r} model"
        )
    return list(requested)


def _ends_with(name: str, target: str) -> bool:
    """Whether module ``name`` is matched by LoRA target ``target`` (PEFT's suffix rule)."""
    return name == target or name.endswith("." + target)
