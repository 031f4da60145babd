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
(:mod:`tiltmatch.models.family`, from :data:`FAMILY`'s ``logit_shift``). The same shift
is why the cached sampler modes are refused for it (``FAMILY.refuses``): a cached window
would read its first column from a hidden state it does not recompute.

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

from tiltmatch.models.codecs import ChatCodec
from tiltmatch.models.denoiser import TinyModelSpec, tiny_config_kwargs
from tiltmatch.models.registry import FamilySpec
from tiltmatch.models.released import load_native_checkpoint, native_config_kwargs
from tiltmatch.models.special_ids import SpecialIds, read_special_ids

NAME = "dream"
MASK_TOKEN = "<|mask|>"
END_OF_TURN_TOKEN = "<|im_end|>"
MODEL_TYPES = ("Dream", "dream")


def dream_config_to_qwen2(cfg: Mapping[str, Any]) -> Qwen2Config:
    """The ``Qwen2Config`` (``is_causal=False``, ``dllm_family="dream"``) of a Dream config dict.

    Settings that would change the forward and that this mapping does not carry
    (another activation, RoPE scaling, sliding-window attention) are refused by name
    (:func:`~tiltmatch.models.released.native_config_kwargs`).
    """
    return Qwen2Config(**native_config_kwargs(cfg, "Dream", NAME))


def read_dream_special_ids(
    folder: Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> SpecialIds:
    """Dream's mask / EOS / pad / end-of-turn ids, read from its files."""
    return read_special_ids(
        folder, tokenizer, mask_token=MASK_TOKEN, end_of_turn_token=END_OF_TURN_TOKEN
    )


def load_dream(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerBase, SpecialIds]:
    """A Dream checkpoint folder as ``(Qwen2ForCausalLM, tokenizer, special ids)``.

    Reads Dream's released layout (``config.json`` with ``model_type`` "Dream",
    safetensors shards with Qwen2 key names, Qwen2 tokenizer files) or a folder
    saved from such a model (``model_type`` "qwen2" with ``dllm_family`` "dream").
    Built on the meta device and filled shard by shard; returned in eval mode.
    """
    model, tokenizer, folder = load_native_checkpoint(
        path,
        FAMILY.recognises,
        dream_config_to_qwen2,
        Qwen2ForCausalLM,
        "a Dream",
        dtype,
        device,
        attn_implementation,
    )
    assert isinstance(model, Qwen2ForCausalLM)
    return model, tokenizer, read_dream_special_ids(folder, tokenizer)


def load_dream_folder(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[Qwen2ForCausalLM, ChatCodec]:
    """A Dream folder as model and prompt codec (its chat template; ``FAMILY.load``)."""
    dream, tokenizer, ids = load_dream(path, dtype=dtype)
    return dream, ChatCodec(tokenizer, ids, dream.config.vocab_size)


def tiny_dream_config(vocab_size: int, spec: TinyModelSpec) -> Qwen2Config:
    """A tiny Dream: a bidirectional ``Qwen2Config`` (q/k/v biases; ``FAMILY.tiny_config``)."""
    extras: dict[str, Any] = {"is_causal": False}
    return Qwen2Config(
        **tiny_config_kwargs(vocab_size, spec),
        **extras,
        use_sliding_window=False,
        pad_token_id=None,
    )


#: Dream in the family registry: Qwen2 without the causal mask, logits shifted by one
FAMILY = FamilySpec(
    name=NAME,
    label="Dream",
    architecture="qwen2",
    model_class=Qwen2ForCausalLM,
    load=load_dream_folder,
    tiny_config=tiny_dream_config,
    logit_shift=True,
    model_types=MODEL_TYPES,
    architectures=("DreamModel",),
    mask_token=MASK_TOKEN,
    end_of_turn_token=END_OF_TURN_TOKEN,
    refuses={
        "window_cache": "its shifted head reads each response column from the hidden state "
        "of the column before it, which a cached window does not recompute"
    },
)
