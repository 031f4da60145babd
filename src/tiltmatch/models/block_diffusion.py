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

Such a model can only be decoded block by block: :data:`FAMILY` names its own decoders
for the sampler modes it honours (``exact`` and ``parallel``: the block decoder of
:mod:`tiltmatch.sampling.block`) and every other mode is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

from tiltmatch.models.codecs import ChatCodec
from tiltmatch.models.denoiser import TinyModelSpec, tiny_config_kwargs
from tiltmatch.models.registry import BLOCK_SIZE_KEY, FamilySpec
from tiltmatch.models.released import QWEN_REQUIRED, load_native_checkpoint, native_config_kwargs
from tiltmatch.models.special_ids import SpecialIds, read_special_ids

NAME = "block_diffusion"
MASK_TOKEN = "<|MASK|>"
END_OF_TURN_TOKEN = "<|im_end|>"
MODEL_TYPES = ("sdar",)


def sdar_config_to_qwen3(cfg: Mapping[str, Any]) -> Qwen3Config:
    """The ``Qwen3Config`` (block-causal, ``dllm_block_size``) of an SDAR config dict.

    Mixture-of-experts variants (SDAR-30B-A3B), RoPE scaling, sliding windows
    and biases are refused by name.
    """
    cfg = dict(cfg)
    if BLOCK_SIZE_KEY in cfg and "block_size" not in cfg:
        cfg["block_size"] = cfg[BLOCK_SIZE_KEY]
    if "num_experts" in cfg or "moe_intermediate_size" in cfg:
        raise ValueError("SDAR mixture-of-experts checkpoints are not supported (dense only)")
    kwargs = native_config_kwargs(cfg, "SDAR", NAME, (*QWEN_REQUIRED, "block_size"))
    if cfg.get("attention_bias"):
        raise ValueError("SDAR config attention_bias=true is not supported")
    block = int(cfg["block_size"])
    if block < 1:
        raise ValueError(f"SDAR config block_size {block} must be >= 1")
    # is_causal=False (in kwargs): transformers adds no causal mask of its own; the
    # block-causal mask is built by the adapter from the positions (tiltmatch.models.family).
    heads = kwargs["num_attention_heads"]
    kwargs[BLOCK_SIZE_KEY] = block
    return Qwen3Config(
        **kwargs,
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        attention_bias=False,
    )


def read_block_special_ids(
    folder: Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> SpecialIds:
    """SDAR's mask / EOS / pad / end-of-turn ids, read from its files."""
    return read_special_ids(
        folder, tokenizer, mask_token=MASK_TOKEN, end_of_turn_token=END_OF_TURN_TOKEN
    )


def load_block_diffusion(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerBase, SpecialIds]:
    """An SDAR / TraDo checkpoint folder as ``(Qwen3ForCausalLM, tokenizer, special ids)``."""
    model, tokenizer, folder = load_native_checkpoint(
        path,
        FAMILY.recognises,
        sdar_config_to_qwen3,
        Qwen3ForCausalLM,
        "an SDAR (block diffusion)",
        dtype,
        device,
        attn_implementation,
    )
    assert isinstance(model, Qwen3ForCausalLM)
    return model, tokenizer, read_block_special_ids(folder, tokenizer)


def load_block_diffusion_folder(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[Qwen3ForCausalLM, ChatCodec]:
    """An SDAR / TraDo folder as model and prompt codec (``FAMILY.load``)."""
    sdar, tokenizer, ids = load_block_diffusion(path, dtype=dtype)
    return sdar, ChatCodec(tokenizer, ids, sdar.config.vocab_size)


def tiny_block_diffusion_config(vocab_size: int, spec: TinyModelSpec) -> Qwen3Config:
    """A tiny block diffusion model: a ``Qwen3Config`` (q/k norms) with blocks of
    ``spec.block_size`` (``FAMILY.tiny_config``)."""
    extras: dict[str, Any] = {"is_causal": False, BLOCK_SIZE_KEY: spec.block_size}
    return Qwen3Config(
        **tiny_config_kwargs(vocab_size, spec),
        **extras,
        use_sliding_window=False,
        attention_bias=False,
        pad_token_id=None,
    )


#: Block diffusion in the family registry: Qwen3 with a block-causal mask, its own decoder
FAMILY = FamilySpec(
    name=NAME,
    label="block diffusion (SDAR / TraDo)",
    architecture="qwen3",
    model_class=Qwen3ForCausalLM,
    load=load_block_diffusion_folder,
    tiny_config=tiny_block_diffusion_config,
    block_causal=True,
    model_types=MODEL_TYPES,
    architectures=("SDARForCausalLM",),
    mask_token=MASK_TOKEN,
    end_of_turn_token=END_OF_TURN_TOKEN,
    decoders={"exact": "block", "parallel": "block+parallel"},
)
