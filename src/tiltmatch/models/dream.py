"""Dream checkpoints (Dream-v0-Instruct-7B) as transformers ``Qwen2ForCausalLM`` models.

Dream is Qwen2.5-7B trained as a masked diffusion model: the same transformer
(q/k/v projections with biases, RMSNorm, RoPE with theta 1e6, grouped kv heads,
SiLU-gated MLP, untied output head) with the causal mask removed. Its released
weights carry Qwen2's own key names (``model.layers.N.self_attn.q_proj.bias``,
``lm_head.weight``, ...), so they load into transformers' native
``Qwen2ForCausalLM`` built with ``is_causal=False`` with no renaming at all; no
remote code (``modeling_dream.py``, ``tokenization_dream.py``) is run.

The one difference from LLaDA is in how the logits are read: Dream kept the
autoregressive head, so the distribution of position ``i`` comes from the hidden
state at ``i - 1`` (its generate does ``cat([logits[:, :1], logits[:, :-1]])``).
The config records this as ``dllm_family = "dream"``, and
:class:`~tiltmatch.models.denoiser.MaskedDenoiser` applies the shift
(:mod:`tiltmatch.models.family`).

Special ids are read from the files: the mask ``<|mask|>`` (151666 in the
release) from ``config.json`` / ``generation_config.json`` or the tokenizer; EOS
and pad (151643, ``<|endoftext|>``); end of turn ``<|im_end|>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from tiltmatch.models.family import DREAM, FAMILY_KEY
from tiltmatch.models.llada import (
    LLaDACodec,
    LLaDASpecialIds,
    load_native_checkpoint,
    read_special_ids,
)

MASK_TOKEN = "<|mask|>"
END_OF_TURN_TOKEN = "<|im_end|>"
MODEL_TYPES = ("Dream", "dream")

_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def is_dream_config(cfg: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` dict is Dream's own format (or a converted Dream)."""
    return (
        cfg.get("model_type") in MODEL_TYPES
        or "DreamModel" in (cfg.get("architectures") or [])
        or cfg.get(FAMILY_KEY) == DREAM
    )


def dream_config_to_qwen2(cfg: Mapping[str, Any]) -> Qwen2Config:
    """The ``Qwen2Config`` (``is_causal=False``, ``dllm_family="dream"``) of a Dream config dict.

    Settings that would change the forward and that this mapping does not carry
    (another activation, RoPE scaling, sliding-window attention) are refused by name.
    """
    for key in _REQUIRED:
        if cfg.get(key) is None:
            raise ValueError(f"Dream config has no {key!r}: it is required to build the model")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Dream config hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    if cfg.get("rope_scaling"):
        raise ValueError(f"Dream config rope_scaling {cfg['rope_scaling']!r} is not supported")
    if cfg.get("use_sliding_window"):
        raise ValueError("Dream config use_sliding_window=true is not supported")
    rope = cfg.get("rope_parameters") or {
        "rope_type": "default",
        "rope_theta": float(cfg.get("rope_theta", 1_000_000.0)),
    }
    extras: dict[str, Any] = {
        "is_causal": False,
        FAMILY_KEY: DREAM,
        "mask_token_id": cfg.get("mask_token_id"),  # for the record; see read_special_ids
    }
    heads = int(cfg["num_attention_heads"])
    return Qwen2Config(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        hidden_act="silu",
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_parameters=rope,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        use_sliding_window=False,
        use_cache=False,
        # No pad id in the model config: it would become the embedding's padding_idx
        # (Dream's pad is its EOS, which responses use).
        pad_token_id=None,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        **extras,
    )


def read_dream_special_ids(
    folder: Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> LLaDASpecialIds:
    """Dream's mask / EOS / pad / end-of-turn ids, read from its files."""
    return read_special_ids(
        folder, tokenizer, mask_token=MASK_TOKEN, end_of_turn_token=END_OF_TURN_TOKEN
    )


def load_dream(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase, LLaDASpecialIds]:
    """A Dream checkpoint folder as ``(Qwen2ForCausalLM, tokenizer, special ids)``.

    Reads Dream's released layout (``config.json`` with ``model_type`` "Dream",
    safetensors shards with Qwen2 key names, Qwen2 tokenizer files) or a folder
    saved from such a model (``model_type`` "qwen2" with ``dllm_family`` "dream").
    Built on the meta device and filled shard by shard; returned in eval mode.
    """
    model, tokenizer, folder = load_native_checkpoint(
        path,
        is_dream_config,
        dream_config_to_qwen2,
        Qwen2ForCausalLM,
        "a Dream",
        dtype,
        device,
        attn_implementation,
    )
    assert isinstance(model, Qwen2ForCausalLM)
    return model, tokenizer, read_dream_special_ids(folder, tokenizer)


def dream_codec(
    tokenizer: PreTrainedTokenizerBase, ids: LLaDASpecialIds, vocab_size: int
) -> LLaDACodec:
    """The prompt codec of a Dream tokenizer: its chat template, stop at EOS / ``<|im_end|>``."""
    return LLaDACodec(tokenizer, ids, vocab_size)
