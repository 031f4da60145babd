"""LLaDA-8B checkpoints as transformers ``LlamaForCausalLM`` models with bidirectional attention.

LLaDA is a Llama-style transformer without the causal mask (STYLE.md: one model
path, every denoiser is a Hugging Face ``PreTrainedModel``). Its official
safetensors load into ``LlamaForCausalLM`` built with ``config.is_causal=False``
by renaming keys alone; no weight is permuted or reshaped. What the official
``modeling_llada.py`` does, and why a rename is enough:

- block ``llama``: ``x + attn_out(Attn(attn_norm(x)))`` then
  ``x + ff_out(act(ff_proj(ff_norm(x))) * up_proj(ff_norm(x)))``. So ``ff_proj``
  is the gate (Llama's ``gate_proj``) and ``up_proj`` the linear branch;
- RoPE: ``inv_freq = theta^(-2i/d)``, angles ``cat(freqs, freqs)`` and
  ``rotate_half`` splits each head into its two contiguous halves, exactly as
  transformers' Llama does, so no q/k row permutation is needed;
- RMSNorm in float32 with a weight and no bias, attention scaled by
  ``1/sqrt(head_dim)``, grouped kv heads repeated head-contiguously (head ``h``
  reads kv head ``h // groups``), untied ``ff_out`` as the output projection:
  all Llama's conventions too.

Two differences remain, neither in the float32 equations: LLaDA applies the
rotation itself in float32 (``rope_full_precision``) where Llama rotates in the
activations' dtype, a rounding difference in bfloat16; and LLaDA numbers
positions by column, while :class:`tiltmatch.models.denoiser.MaskedDenoiser` counts real
tokens only, so a left-padded row gives the outputs LLaDA gives the unpadded row.

Public API: :data:`FAMILY` (the family's registry spec), :func:`llada_config_to_llama`,
:func:`convert_llada_state_dict`, :func:`load_llada`, :func:`convert_llada` (what
``tiltmatch convert-llada`` runs);
:data:`LLADA_8B_INSTRUCT_CONFIG`, the released LLaDA-8B-Instruct config's model-deciding
keys. What every family shares lives in shared modules (folder and weight reading:
:mod:`tiltmatch.models.released`; special ids: :mod:`tiltmatch.models.special_ids`, whose
defaults are LLaDA's tokens; the prompt codec: :class:`tiltmatch.models.codecs.ChatCodec`);
``LLaDACodec``, ``LLaDASpecialIds`` and ``read_special_ids`` are those, under the names
this module has always offered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from tiltmatch.models.codecs import ChatCodec
from tiltmatch.models.denoiser import ModelLoadError, TinyModelSpec, tiny_config_kwargs
from tiltmatch.models.folders import CONFIG_FILE, read_json
from tiltmatch.models.registry import FamilySpec
from tiltmatch.models.released import (
    load_tokenizer,
    rename_all,
    resolve_folder,
    stream_weights,
)
from tiltmatch.models.special_ids import (
    LLADA_END_OF_TURN_TOKEN,
    LLADA_MASK_TOKEN,
    SPECIAL_IDS_FILE,
    SpecialIds,
    read_special_ids,
)

#: LLaDA's prompt codec and special ids: the shared ones (LLaDA's tokens are their defaults)
LLaDACodec = ChatCodec
LLaDASpecialIds = SpecialIds


# Token strings of LLaDA's tokenizer. Their ids are always read from the checkpoint.
MASK_TOKEN = LLADA_MASK_TOKEN
END_OF_TURN_TOKEN = LLADA_END_OF_TURN_TOKEN

# The defaults of LLaDA's own ``ModelConfig`` for the settings that decide the
# architecture: a config.json that omits one of them means this value, so a
# missing ``block_type`` is a "sequential" block, which is not supported.
_LLADA_DEFAULTS: dict[str, Any] = {
    "activation_type": "swiglu",
    "block_type": "sequential",
    "block_group_size": 1,
    "alibi": False,
    "rope": False,
    "rope_theta": 10000.0,
    "include_bias": False,
    "include_qkv_bias": False,
    "bias_for_layer_norm": None,
    "layer_norm_type": "default",
    "layer_norm_with_affine": True,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "scale_logits": False,
    "weight_tying": True,
    "attention_dropout": 0.1,
    "residual_dropout": 0.1,
    "embedding_dropout": 0.1,
    "rms_norm_eps": 1e-5,
    "max_sequence_length": 1024,
    "mlp_ratio": 4,
    "mlp_hidden_size": None,
    "n_kv_heads": None,
    "multi_query_attention": None,
}

# Settings that must hold for the rename to be exact: (key, required value, why).
_REQUIRED_SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("block_type", "llama", "only the Llama-style block (separate q/k/v, gated MLP) maps to Llama"),
    ("activation_type", "silu", "only the SiLU-gated MLP (SwiGLU through ff_proj/up_proj) maps"),
    ("layer_norm_type", "rms", "Llama uses RMSNorm"),
    ("layer_norm_with_affine", True, "Llama's RMSNorm has a weight"),
    ("rope", True, "Llama uses rotary position embeddings"),
    ("alibi", False, "Llama has no ALiBi bias"),
    ("include_bias", False, "Llama's linear layers here have no bias"),
    ("include_qkv_bias", False, "Llama's q/k/v projections here have no bias"),
    ("attention_layer_norm", False, "Llama has no q/k norm"),
    ("input_emb_norm", False, "Llama does not scale its input embeddings"),
    ("scale_logits", False, "Llama does not scale its logits"),
    ("block_group_size", 1, "grouped blocks are stored under other key names"),
    ("residual_dropout", 0.0, "Llama has no residual dropout"),
    ("embedding_dropout", 0.0, "Llama has no embedding dropout"),
)

#: The keys of the released LLaDA-8B-Instruct config.json that decide the model.
LLADA_8B_INSTRUCT_CONFIG: dict[str, Any] = {
    "block_type": "llama",
    "activation_type": "silu",
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
    "rms_norm_eps": 1e-5,
    "rope": True,
    "rope_theta": 500000.0,
    "alibi": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "attention_layer_norm": False,
    "input_emb_norm": False,
    "scale_logits": False,
    "block_group_size": 1,
    "weight_tying": False,
    "attention_dropout": 0.0,
    "residual_dropout": 0.0,
    "embedding_dropout": 0.0,
    "d_model": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "n_kv_heads": 32,
    "mlp_hidden_size": 12288,
    "vocab_size": 126464,
    "embedding_size": 126464,
    "max_sequence_length": 4096,
    "mask_token_id": 126336,
    "eos_token_id": 126081,
    "pad_token_id": 126081,
}


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg[key] if key in cfg else _LLADA_DEFAULTS.get(key)


def _require_int(cfg: Mapping[str, Any], key: str) -> int:
    if key not in cfg or cfg[key] is None:
        raise ValueError(f"LLaDA config has no {key!r}: it is required to build the model")
    return int(cfg[key])


def llada_config_to_llama(cfg: Mapping[str, Any]) -> LlamaConfig:
    """The ``LlamaConfig`` (``is_causal=False``) of a LLaDA ``config.json`` dict.

    Every setting that changes the forward pass is either mapped or checked;
    an unsupported one (biases, another activation or block type, ...) raises a
    ``ValueError`` naming its key. Keys that only concern training or
    initialisation (``init_*``, ``precision``, ``flash_attention``) are ignored.
    """
    for key, required, why in _REQUIRED_SETTINGS:
        value = _setting(cfg, key)
        # None is LLaDA's "unset" for the bias flags: falsy means no bias.
        ok = bool(value) == required if isinstance(required, bool) else value == required
        if not ok:
            raise ValueError(
                f"LLaDA config key {key!r} = {value!r} is not supported (need {required!r}): {why}"
            )
    layer_norm_bias = _setting(cfg, "bias_for_layer_norm")
    if layer_norm_bias:
        raise ValueError(
            f"LLaDA config key 'bias_for_layer_norm' = {layer_norm_bias!r} is not supported: "
            "Llama's RMSNorm has no bias"
        )

    d_model = _require_int(cfg, "d_model")
    n_heads = _require_int(cfg, "n_heads")
    n_layers = _require_int(cfg, "n_layers")
    vocab_size = _require_int(cfg, "vocab_size")
    if d_model % n_heads:
        raise ValueError(f"LLaDA config: d_model {d_model} is not a multiple of n_heads {n_heads}")
    # The weight matrices have embedding_size rows (a multiple of 128 at or above the
    # tokenizer's vocab_size); the logits therefore have that many columns.
    embedding_size = int(cfg.get("embedding_size") or vocab_size)
    if embedding_size < vocab_size:
        raise ValueError(
            f"LLaDA config: embedding_size {embedding_size} is smaller than vocab_size {vocab_size}"
        )
    # LLaDA's effective_n_kv_heads: n_kv_heads, else 1 for multi-query attention, else n_heads.
    mqa = _setting(cfg, "multi_query_attention")
    n_kv_heads = _setting(cfg, "n_kv_heads") or (1 if mqa else n_heads)
    if mqa is not None and int(n_kv_heads) != (1 if mqa else n_heads):
        raise ValueError(
            f"LLaDA config: 'multi_query_attention' = {mqa!r} contradicts "
            f"'n_kv_heads' = {n_kv_heads!r}"
        )
    hidden = _setting(cfg, "mlp_hidden_size") or int(_setting(cfg, "mlp_ratio")) * d_model
    # Settings LlamaConfig keeps as plain attributes (not declared fields).
    extras: dict[str, Any] = {
        "is_causal": False,  # the one architectural difference from Llama
        "mask_token_id": cfg.get("mask_token_id"),  # for the record; see read_special_ids
    }

    return LlamaConfig(
        vocab_size=embedding_size,
        hidden_size=d_model,
        intermediate_size=int(hidden),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=int(n_kv_heads),
        head_dim=d_model // n_heads,
        hidden_act="silu",
        max_position_embeddings=int(_setting(cfg, "max_sequence_length")),
        rms_norm_eps=float(_setting(cfg, "rms_norm_eps")),
        rope_parameters={"rope_type": "default", "rope_theta": float(_setting(cfg, "rope_theta"))},
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=float(_setting(cfg, "attention_dropout") or 0.0),
        tie_word_embeddings=bool(_setting(cfg, "weight_tying")),
        use_cache=False,  # a masked diffusion model has nothing to cache between steps
        # No pad id in the model config: Llama would make it the embedding's
        # padding_idx, freezing the row of LLaDA's EOS (= pad), which responses use.
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=cfg.get("eos_token_id"),
        **extras,
    )


# --------------------------------------------------------------------------- key renaming

# LLaDA keys after the "model.transformer." prefix (all weights, stored [out, in]).
_BLOCK_RENAMES = {
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",  # the gate: act(ff_proj(x)) * up_proj(x) in LLaDALlamaBlock
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}
_TOP_RENAMES = {"wte": "model.embed_tokens", "ln_f": "model.norm", "ff_out": "lm_head"}
_PREFIXES = ("model.transformer.", "transformer.")
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\w+)\.weight")
_TOP_KEY = re.compile(r"(\w+)\.weight")


def llada_key_to_llama(key: str) -> str | None:
    """The Llama name of one LLaDA weight name, or None if it is not a LLaDA weight."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            break
    else:
        return None
    if m := _BLOCK_KEY.fullmatch(rest):
        layer, name = m.groups()
        if name in _BLOCK_RENAMES:
            return f"model.layers.{int(layer)}.{_BLOCK_RENAMES[name]}.weight"
    elif (m := _TOP_KEY.fullmatch(rest)) and m.group(1) in _TOP_RENAMES:
        return f"{_TOP_RENAMES[m.group(1)]}.weight"
    return None


def convert_llada_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LLaDA state dict (``model.transformer.*``) renamed to ``LlamaForCausalLM``'s keys.

    Only names change: tensors are passed through as they are (no copy). Any key
    that is not a LLaDA weight raises a ``ValueError`` naming it.
    """
    mapping = rename_all(sd.keys(), llada_key_to_llama)
    return {target: sd[source] for source, target in mapping.items()}


# --------------------------------------------------------------------------- loading


def _llama_identity(expected: set[str]) -> Callable[[str], str | None]:
    return lambda key: key if key in expected else None


def load_llada(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, SpecialIds]:
    """A LLaDA checkpoint as ``(LlamaForCausalLM with is_causal=False, tokenizer, special ids)``.

    ``path``: a local folder holding either LLaDA's own format (``config.json``
    with ``model_type`` "llada", ``model.transformer.*`` weights in safetensors
    shards with ``model.safetensors.index.json``, or one ``model.safetensors``),
    converted on the fly, or a folder already in Llama format (``model_type``
    "llama", e.g. written by :func:`convert_llada`). A hub id is accepted only
    where the hub can be reached. The model is built on the meta device and
    filled shard by shard on ``device`` in ``dtype``; it is returned in eval mode.
    """
    folder = resolve_folder(path)
    device = torch.device(device)
    cfg = read_json(folder / CONFIG_FILE)
    model_type = cfg.get("model_type")
    if model_type == "llama":
        config = LlamaConfig.from_dict(cfg)
        # load_llada only loads LLaDA: a conversion that lost the flag must not
        # silently make attention causal.
        config.is_causal = False
        config.pad_token_id = None  # see llada_config_to_llama
    elif model_type == "llada" or "d_model" in cfg:
        config = llada_config_to_llama(cfg)
    else:
        raise ValueError(
            f"{folder / CONFIG_FILE}: model_type {model_type!r} is neither 'llada' nor 'llama'"
        )
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    rename = (
        _llama_identity(set(model.state_dict().keys()))
        if model_type == "llama"
        else llada_key_to_llama
    )
    try:
        stream_weights(model, folder, rename, dtype, device)
    except (ValueError, FileNotFoundError):
        raise  # already one line naming the file and the tensor
    except Exception as err:  # safetensors' error type for bad bytes; a wrong-shaped tensor
        text = " ".join(str(err).split())[:300]
        raise ModelLoadError(
            f"cannot load the weights in {folder} ({type(err).__name__}: {text})"
        ) from None
    model.eval()
    tokenizer = load_tokenizer(folder)
    return model, tokenizer, read_special_ids(folder, tokenizer)


def convert_llada(
    src: str | Path,
    dst: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Write ``src`` (a LLaDA checkpoint) to ``dst`` in Llama format; returns ``dst``.

    ``dst`` gets sharded safetensors and ``config.json`` (``save_pretrained``),
    the tokenizer files, and ``tiltmatch.json`` with the special ids, so that
    :func:`load_llada` (or plain ``LlamaForCausalLM.from_pretrained`` followed by
    ``config.is_causal=False``) reads it without any conversion. The model is
    materialised once, on the CPU. The result is written into a temporary sibling
    folder and renamed into place, so a killed conversion leaves no half model; a
    non-empty ``dst`` is refused unless ``overwrite``, which replaces it whole.
    """
    from tiltmatch.destination import Destination

    dst = Path(dst)
    # The one destination check of every writer: never the source, nor a link or a non-empty
    # folder without overwrite (tiltmatch.destination).
    Destination(dst, "converted model", overwrite, sources=[Path(src)]).check()
    model, tokenizer, ids = load_llada(src, dtype=dtype, device="cpu")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(tmp)
        (tmp / SPECIAL_IDS_FILE).write_text(json.dumps(ids.to_json(), indent=2) + "\n")
        old = dst.parent / f".{dst.name}.old-{os.getpid()}"
        if dst.exists():
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


# --------------------------------------------------------------------------- the family


def load_llada_folder(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, ChatCodec]:
    """A LLaDA (or converted Llama-format) folder as model and prompt codec (``FAMILY.load``)."""
    llada, tokenizer, special_ids = load_llada(path, dtype=dtype)
    # The codec's vocabulary is the width of the logits (the embedding rows).
    return llada, ChatCodec(tokenizer, special_ids, llada.config.vocab_size)


def tiny_llada_config(vocab_size: int, spec: TinyModelSpec) -> LlamaConfig:
    """A tiny LLaDA: a ``LlamaConfig`` without the causal mask (``FAMILY.tiny_config``)."""
    extras: dict[str, Any] = {"is_causal": False}  # not a declared field: an extra attribute
    return LlamaConfig(
        **tiny_config_kwargs(vocab_size, spec), **extras, attention_bias=False, mlp_bias=False
    )


#: LLaDA in the family registry: a Llama without the causal mask, no hook
FAMILY = FamilySpec(
    name="llada",
    label="LLaDA",
    architecture="llama",
    model_class=LlamaForCausalLM,
    load=load_llada_folder,
    tiny_config=tiny_llada_config,
    model_types=("llada", "llama"),
    config_keys=("d_model",),
    mask_token=MASK_TOKEN,
    end_of_turn_token=END_OF_TURN_TOKEN,
)
