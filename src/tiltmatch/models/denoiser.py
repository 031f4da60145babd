"""The denoiser: one thin adapter around a Hugging Face ``PreTrainedModel``.

METHOD.md section 1: a masked diffusion model is a denoiser ``mu_theta(v | z, i)``,
the softmax of the logits at a masked position ``i`` of the partly masked
response ``z``. Every denoiser here is a transformers model with non-causal
attention: a ``LlamaForCausalLM`` whose config says ``is_causal=False`` has
exactly LLaDA's architecture, whether tiny (built from a config for CPU work)
or LLaDA-8B itself; Dream is such a ``Qwen2ForCausalLM``, block diffusion (SDAR)
such a ``Qwen3ForCausalLM`` with a block-causal mask. What differs between the
families is one hook read from the config (:mod:`tiltmatch.models.family`).

Batch layout used throughout the package: each row is a **left-padded prompt
followed by a response of fixed length L**, so the response occupies the last L
columns of every row. Padding is expressed only through the 2-D attention mask
(keys at padded columns are ignored by every query; attention stays
bidirectional), and position ids count real tokens only, so a row's outputs do
not depend on how much padding its batch needed.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from tiltmatch.models.family import (
    BLOCK_DIFFUSION,
    BLOCK_SIZE_KEY,
    DREAM,
    FAMILY_KEY,
    LLADA,
    family_of,
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of a tiny bidirectional Llama for CPU work."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256
    #: the model family (tiltmatch.models.family): "llada", "dream" or "block_diffusion"
    family: str = LLADA
    #: block size of a block diffusion model
    block_size: int = 4


def tiny_denoiser(
    vocab_size: int, spec: TinyModelSpec | None = None, seed: int = 0
) -> PreTrainedModel:
    """A freshly initialised tiny denoiser of ``spec.family``'s architecture.

    LLaDA: a bidirectional ``LlamaForCausalLM``; Dream: a bidirectional
    ``Qwen2ForCausalLM`` (q/k/v biases, shifted logits); block diffusion: a
    ``Qwen3ForCausalLM`` (q/k norms) with block-causal attention.
    """
    spec = spec or TinyModelSpec()
    # ``is_causal`` is not a declared config field (mypy), but transformers' masking
    # reads it from the config: passed through ``**`` as an extra attribute.
    extras: dict[str, Any] = {"is_causal": False}
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,  # Qwen3's default would be 128
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
    )
    config: LlamaConfig | Qwen2Config | Qwen3Config
    if spec.family == LLADA:  # LLaDA's architecture: a Llama without the causal mask
        config = LlamaConfig(**common, **extras, attention_bias=False, mlp_bias=False)
    elif spec.family == DREAM:
        extras[FAMILY_KEY] = DREAM
        config = Qwen2Config(**common, **extras, use_sliding_window=False, pad_token_id=None)
    elif spec.family == BLOCK_DIFFUSION:
        extras |= {FAMILY_KEY: BLOCK_DIFFUSION, BLOCK_SIZE_KEY: spec.block_size}
        config = Qwen3Config(
            **common, **extras, use_sliding_window=False, attention_bias=False, pad_token_id=None
        )
    else:
        raise ValueError(f"unknown model family {spec.family!r}")
    model_class = {LLADA: LlamaForCausalLM, DREAM: Qwen2ForCausalLM}.get(
        spec.family, Qwen3ForCausalLM
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model


class MaskedDenoiser(nn.Module):
    """``mu_theta(. | z, i)`` on response positions, from a bidirectional transformers model.

    Holds the mask and padding token ids and the model's family
    (:mod:`tiltmatch.models.family`: a shifted head, a block-causal mask).
    ``forward`` returns logits for the last ``response_length`` columns only: the
    vocabulary projection over a long prompt is most of the memory of a large
    model (METHOD.md section 6).
    """

    def __init__(self, model: PreTrainedModel, mask_token_id: int, pad_token_id: int) -> None:
        super().__init__()
        if getattr(model.config, "is_causal", True):
            raise ValueError(
                "the denoiser must have bidirectional attention: build the model with "
                "config.is_causal=False"
            )
        self.model = model
        self.family = family_of(model.config)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)

    @staticmethod
    def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
        """Positions counted over real tokens only, so left padding shifts nothing."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` at the last ``response_length`` columns of ``input_ids``."""
        family = self.family
        if family.logit_shift and not bool(attention_mask[:, -response_length - 1].all()):
            # A shifted head reads response position 0 from the token before it.
            raise ValueError(
                "a shifted-logit (Dream) denoiser needs a non-empty prompt in every row"
            )
        position_ids = self.position_ids(attention_mask)
        out = self.model(
            input_ids=input_ids,
            attention_mask=family.attention(attention_mask, position_ids),
            position_ids=position_ids,
            logits_to_keep=response_length + family.extra_columns,
            use_cache=False,
        )
        return family.response_logits(out.logits, response_length)

    def response_logits(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, canvas: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` on the canvas ``z`` ``[B, L]`` that follows each prompt.

        The one place where a left-padded prompt (ids and attention mask ``[B, P]``)
        and a response canvas are joined into the model's input: the sampler, the
        objectives and pretraining all read the denoiser through it. Every canvas
        column is attended to (mask tokens included: they are what the denoiser
        reads, METHOD.md section 1). The model call goes through ``self(...)``, so a
        subclass that routes its forward differently (a LoRA adapter view) is honoured.
        """
        ids = torch.cat([prompt_ids, canvas], dim=1)
        mask = torch.cat([prompt_mask, torch.ones_like(canvas)], dim=1)
        return self(ids, mask, canvas.shape[1])

    def session(self) -> AbstractContextManager[None]:
        """A context around many consecutive forwards of this denoiser alone (sampling).

        A plain denoiser needs none; a view of a shared model (a LoRA adapter)
        uses it to switch adapters once instead of around every forward.
        """
        return nullcontext()


DENOISER_META = "tiltmatch.json"


def save_denoiser(
    folder: str | Path,
    model: PreTrainedModel,
    meta: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save a denoiser with ``save_pretrained`` (safetensors) plus tiltmatch's metadata.

    ``meta`` holds what the adapter needs to use it again: special token ids
    and, for character-level tasks, the tokenizer alphabet and the task name.
    ``state_dict``: the weights to write instead of the model's own (its whole
    tensors, when the model holds FSDP shards).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    (folder / DENOISER_META).write_text(json.dumps(meta, indent=2))
    return folder


def load_denoiser(folder: str | Path) -> tuple[PreTrainedModel, dict[str, Any]]:
    """Load a denoiser saved by :func:`save_denoiser`; a missing folder is a clear error."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no denoiser checkpoint (config.json) in {folder}")
    meta_file = folder / DENOISER_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    # Llama, Qwen2 or Qwen3 by the config's model_type: transformers' own classes only.
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=False
    )
    if getattr(model.config, "is_causal", True):
        raise ValueError(f"the model in {folder} is causal; a denoiser needs is_causal=False")
    return model, meta
