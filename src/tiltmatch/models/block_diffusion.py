"""Block diffusion checkpoints (SDAR / TraDo) as transformers ``Qwen3ForCausalLM`` models.

SDAR (JetLM/SDAR-1.7B-Chat, -4B-Chat, -8B-Chat) and TraDo (Gen-Verse/TraDo-4B-Instruct,
-8B-Instruct) are Qwen3 models turned into block diffusion models: the sequence is
cut into blocks of ``block_size`` tokens (4 in the releases), counted from the
first prompt token; attention is bidirectional inside a block and causal across
blocks; a block is decoded by masked diffusion given the finished blocks before
it. The transformer is Qwen3's (q/k RMSNorm per head, no biases, RoPE theta 1e6,
grouped kv heads, SiLU-gated MLP, untied head) under Qwen3's own key names, so
the weights load into transformers' native ``Qwen3ForCausalLM`` unchanged, and
the block-causal mask is handed to it as a 4-D attention mask
(:func:`tiltmatch.models.family.block_causal_mask`). The logits are not shifted:
position ``i`` is read from its own hidden state. No remote code is run.

Special ids come from the files: the mask ``<|MASK|>`` (151669 in the releases)
from ``config.json`` or the tokenizer, EOS / pad from the configs and tokenizer,
end of turn ``<|im_end|>``; the block size from ``config.json``'s ``block_size``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from tiltmatch.models.family import BLOCK_DIFFUSION, BLOCK_SIZE_KEY, FAMILY_KEY
from tiltmatch.models.llada import (
    LLaDACodec,
    LLaDASpecialIds,
    load_native_checkpoint,
    read_special_ids,
)

MASK_TOKEN = "<|MASK|>"
END_OF_TURN_TOKEN = "<|im_end|>"
MODEL_TYPES = ("sdar",)

_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "block_size",
)


def is_block_diffusion_config(cfg: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` dict is SDAR's format (or a converted block diffusion model)."""
    return (
        cfg.get("model_type") in MODEL_TYPES
        or "SDARForCausalLM" in (cfg.get("architectures") or [])
        or cfg.get(FAMILY_KEY) == BLOCK_DIFFUSION
    )


def sdar_config_to_qwen3(cfg: Mapping[str, Any]) -> Qwen3Config:
    """The ``Qwen3Config`` (block-causal, ``dllm_block_size``) of an SDAR config dict.

    Mixture-of-experts variants (SDAR-30B-A3B), RoPE scaling, sliding windows
    and biases are refused by name.
    """
    cfg = dict(cfg)
    if BLOCK_SIZE_KEY in cfg and "block_size" not in cfg:
        cfg["block_size"] = cfg[BLOCK_SIZE_KEY]
    for key in _REQUIRED:
        if cfg.get(key) is None:
            raise ValueError(f"SDAR config has no {key!r}: it is required to build the model")
    if "num_experts" in cfg or "moe_intermediate_size" in cfg:
        raise ValueError("SDAR mixture-of-experts checkpoints are not supported (dense only)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"SDAR config hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    if cfg.get("rope_scaling"):
        raise ValueError(f"SDAR config rope_scaling {cfg['rope_scaling']!r} is not supported")
    if cfg.get("use_sliding_window"):
        raise ValueError("SDAR config use_sliding_window=true is not supported")
    if cfg.get("attention_bias"):
        raise ValueError("SDAR config attention_bias=true is not supported")
    block = int(cfg["block_size"])
    if block < 1:
        raise ValueError(f"SDAR config block_size {block} must be >= 1")
    rope = cfg.get("rope_parameters") or {
        "rope_type": "default",
        "rope_theta": float(cfg.get("rope_theta", 1_000_000.0)),
    }
    heads = int(cfg["num_attention_heads"])
    # is_causal=False: transformers adds no causal mask of its own; the block-causal
    # mask is built by the adapter from the positions (tiltmatch.models.family).
    extras: dict[str, Any] = {
        "is_causal": False,
        FAMILY_KEY: BLOCK_DIFFUSION,
        BLOCK_SIZE_KEY: block,
        "mask_token_id": cfg.get("mask_token_id"),  # for the record; see read_special_ids
    }
    return Qwen3Config(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        hidden_act="silu",
        max_position_embeddings=int(cfg.get("max_position_embeddings", 32768)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_parameters=rope,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=False,
        attention_dropout=float(cfg.get("attention_dropout", 0.0)),
        use_sliding_window=False,
        use_cache=False,
        pad_token_id=None,  # see tiltmatch.models.dream: pad = EOS is a response token
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        **extras,
    )


def read_block_special_ids(
    folder: Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> LLaDASpecialIds:
    """SDAR's mask / EOS / pad / end-of-turn ids, read from its files."""
    return read_special_ids(
        folder, tokenizer, mask_token=MASK_TOKEN, end_of_turn_token=END_OF_TURN_TOKEN
    )


def load_block_diffusion(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerBase, LLaDASpecialIds]:
    """An SDAR / TraDo checkpoint folder as ``(Qwen3ForCausalLM, tokenizer, special ids)``."""
    model, tokenizer, folder = load_native_checkpoint(
        path,
        is_block_diffusion_config,
        sdar_config_to_qwen3,
        Qwen3ForCausalLM,
        "an SDAR (block diffusion)",
        dtype,
        device,
        attn_implementation,
    )
    assert isinstance(model, Qwen3ForCausalLM)
    return model, tokenizer, read_block_special_ids(folder, tokenizer)


def block_codec(
    tokenizer: PreTrainedTokenizerBase, ids: LLaDASpecialIds, vocab_size: int
) -> LLaDACodec:
    """The prompt codec of an SDAR tokenizer (chat template; stops at EOS / ``<|im_end|>``)."""
    return LLaDACodec(tokenizer, ids, vocab_size)
