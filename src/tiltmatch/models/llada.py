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

Public API: :func:`llada_config_to_llama`, :func:`convert_llada_state_dict`,
:func:`load_llada`, :func:`convert_llada` (and :func:`add_convert_parser` for the
``tiltmatch convert-llada`` command), :func:`read_special_ids` and
:class:`LLaDACodec`, the :class:`~tiltmatch.models.codecs.PromptCodec` of a LLaDA
tokenizer; :data:`LLADA_8B_INSTRUCT_CONFIG`, the released LLaDA-8B-Instruct config's
model-deciding keys.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tiltmatch.models.dtypes import DTYPE_NAMES, torch_dtype

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"
SPECIAL_IDS_FILE = "tiltmatch.json"

# Token strings of LLaDA's tokenizer. Their ids are always read from the checkpoint.
MASK_TOKEN = "<|mdm_mask|>"
END_OF_TURN_TOKEN = "<|eot_id|>"

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


def _rename_all(keys: Iterable[str], rename: Callable[[str], str | None]) -> dict[str, str]:
    """``{source key: target key}``; a ``ValueError`` names every key that has no target."""
    mapping, unknown = {}, []
    for key in keys:
        target = rename(key)
        if target is None:
            unknown.append(key)
        else:
            mapping[key] = target
    if unknown:
        shown = ", ".join(repr(k) for k in sorted(unknown)[:8])
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise ValueError(f"unexpected key(s) in the LLaDA checkpoint: {shown}{more}")
    return mapping


def convert_llada_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LLaDA state dict (``model.transformer.*``) renamed to ``LlamaForCausalLM``'s keys.

    Only names change: tensors are passed through as they are (no copy). Any key
    that is not a LLaDA weight raises a ``ValueError`` naming it.
    """
    mapping = _rename_all(sd.keys(), llada_key_to_llama)
    return {target: sd[source] for source, target in mapping.items()}


# --------------------------------------------------------------------------- special ids


@dataclass(frozen=True)
class LLaDASpecialIds:
    """The token ids the denoiser and the codec need, read from the checkpoint's files."""

    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    eot_token_id: int | None = None  # end of turn (<|eot_id|>), where the tokenizer has one
    bos_token_id: int | None = None

    def to_json(self) -> dict[str, int | None]:
        """The ids as a JSON-ready dict (the content of ``tiltmatch.json``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = SPECIAL_IDS_FILE) -> LLaDASpecialIds:
        """Ids from a ``tiltmatch.json`` dict; a missing required id names the file."""
        try:
            return cls(
                mask_token_id=int(data["mask_token_id"]),
                eos_token_id=int(data["eos_token_id"]),
                pad_token_id=int(data["pad_token_id"]),
                eot_token_id=_opt_int(data.get("eot_token_id")),
                bos_token_id=_opt_int(data.get("bos_token_id")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: bad or missing special token id ({err})") from None


def _opt_int(value: Any) -> int | None:
    if isinstance(value, list):  # generation configs may list several EOS ids
        value = value[0] if value else None
    return None if value is None else int(value)


_REQUIRED_IDS = ("mask_token_id", "eos_token_id", "pad_token_id")


def _first_id(*candidates: Any) -> int | None:
    """The first id that is set, in order of authority."""
    return next((v for v in map(_opt_int, candidates) if v is not None), None)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def read_special_ids(
    folder: str | Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    mask_token: str = MASK_TOKEN,
    end_of_turn_token: str = END_OF_TURN_TOKEN,
) -> LLaDASpecialIds:
    """The special ids of a checkpoint folder (LLaDA or converted), never hard-coded.

    A ``tiltmatch.json`` holding the mask, EOS and pad ids (as :func:`convert_llada`
    writes it) is authoritative; one without them (``tiltmatch.models.denoiser.save_denoiser``
    writes other metadata under the same name) is passed over. Otherwise: the mask
    id from ``config.json`` (``mask_token_id``), then ``generation_config.json``, or the
    tokenizer's ``mask_token`` (LLaDA's ``<|mdm_mask|>`` by default), which must agree
    when both exist; EOS from ``config.json``, then
    ``generation_config.json``, then the tokenizer; pad from ``config.json``,
    then the tokenizer, then EOS; end-of-turn and BOS from the tokenizer.
    """
    folder = Path(folder)
    meta_path = folder / SPECIAL_IDS_FILE
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    if all(key in meta for key in _REQUIRED_IDS):
        return LLaDASpecialIds.from_json(meta, str(meta_path))
    cfg = _read_json(folder / CONFIG_FILE)
    tok = tokenizer if tokenizer is not None else _load_tokenizer(folder)
    vocab = tok.get_vocab()
    gen_path = folder / GENERATION_CONFIG_FILE
    gen = _read_json(gen_path) if gen_path.is_file() else {}

    mask = _first_id(cfg.get("mask_token_id"), gen.get("mask_token_id"))
    tok_mask = vocab.get(mask_token)
    if mask is not None and tok_mask is not None and mask != tok_mask:
        raise ValueError(
            f"{folder / CONFIG_FILE} says mask_token_id = {mask} but the tokenizer's "
            f"{mask_token} is {tok_mask}"
        )
    mask = _first_id(mask, tok_mask)
    if mask is None:
        raise ValueError(
            f"no mask token id: {folder} has no mask_token_id in its configs and the tokenizer "
            f"has no {mask_token}"
        )
    eos = _first_id(cfg.get("eos_token_id"), gen.get("eos_token_id"), tok.eos_token_id)
    if eos is None:
        raise ValueError(f"no end-of-sequence token id in {folder}'s config or tokenizer")
    pad = _first_id(cfg.get("pad_token_id"), tok.pad_token_id, eos)
    return LLaDASpecialIds(
        mask_token_id=int(mask),
        eos_token_id=int(eos),
        pad_token_id=eos if pad is None else pad,
        eot_token_id=vocab.get(end_of_turn_token),
        bos_token_id=tok.bos_token_id,
    )


# --------------------------------------------------------------------------- loading


def _resolve_folder(path: str | Path) -> Path:
    """A local checkpoint folder; a hub id is downloaded only where a network exists."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    text = str(path)
    looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith(".")
    if local.exists() or not looks_like_hub_id:
        raise FileNotFoundError(f"no checkpoint folder at {local}")
    try:
        from huggingface_hub import snapshot_download

        # Weights, configs and tokenizer files only: no *.py, so no remote code is
        # even fetched (trust_remote_code is never used here).
        patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as err:
        raise FileNotFoundError(
            f"{text!r} is not a local folder and downloading it from the Hugging Face hub "
            f"failed ({type(err).__name__}: {err}); download it where a network exists and "
            "pass the local folder"
        ) from err


def _shard_files(folder: Path) -> dict[Path, set[str]]:
    """``{shard file: keys the index assigns to it}`` (an empty set for a single file)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no 'weight_map' object")
        shards: dict[Path, set[str]] = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or Path(name).name != name:
                raise ValueError(f"{index_path}: bad shard name {name!r} for {key!r}")
            shards.setdefault(folder / name, set()).add(key)
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"missing shard {shard} (listed in {index_path})")
        return shards
    if (folder / SINGLE_FILE).is_file():
        return {folder / SINGLE_FILE: set()}
    raise FileNotFoundError(f"no weights in {folder}: neither {INDEX_FILE} nor {SINGLE_FILE}")


def _llama_identity(expected: set[str]) -> Callable[[str], str | None]:
    return lambda key: key if key in expected else None


def _stream_weights(
    model: PreTrainedModel,
    folder: Path,
    rename: Callable[[str], str | None],
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Fill a meta-device model shard by shard: no weight is ever held twice."""
    expected = set(model.state_dict().keys())
    if model.config.tie_word_embeddings:
        expected.discard("lm_head.weight")  # shares the embedding's storage
    loaded: set[str] = set()
    for shard, indexed in _shard_files(folder).items():
        with safe_open(str(shard), framework="pt", device=str(device)) as f:
            keys = set(f.keys())
            if indexed - keys:
                raise ValueError(
                    f"{shard.name} lacks {sorted(indexed - keys)[:4]} that {INDEX_FILE} puts there"
                )
            mapping = _rename_all(keys, rename)
            part = {}
            for source, target in mapping.items():
                if target == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue  # a stored copy of the tied embedding
                if target not in expected:
                    raise ValueError(f"unexpected key {source!r} in {shard.name}")
                if target in loaded or target in part:
                    raise ValueError(f"weight {target!r} appears twice (again in {shard.name})")
                part[target] = f.get_tensor(source).to(dtype=dtype)
        # assign=True puts the loaded tensors in place of the meta parameters.
        model.load_state_dict(part, strict=False, assign=True)
        loaded |= part.keys()
        del part
    if missing := sorted(expected - loaded):
        raise ValueError(f"checkpoint in {folder} lacks weight(s): {missing[:8]}")
    if model.config.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (RoPE inverse frequencies) were created on the meta
    # device with the model: build them again for real.
    backbone = model.get_decoder()  # Llama, Qwen2 and Qwen3 keep RoPE on the backbone
    rotary = backbone.rotary_emb
    backbone.rotary_emb = type(rotary)(config=model.config).to(device)
    if meta := [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]:
        raise RuntimeError(f"tensors left uninitialised after loading: {meta[:8]}")


#: remote tokenizer classes that are renamed copies of a transformers class (Dream's
#: ``tokenization_dream.DreamTokenizer`` is Qwen2's tokenizer under another name)
NATIVE_TOKENIZER_ALIASES = {"DreamTokenizer": "Qwen2Tokenizer"}


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    # Never remote code: LLaDA's tokenizer is a plain fast tokenizer (tokenizer.json);
    # a remote class that only renames a native one is loaded as the native class.
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
    native = NATIVE_TOKENIZER_ALIASES.get(str(tok_cfg.get("tokenizer_class")))
    if native is not None:
        import transformers

        return getattr(transformers, native).from_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def load_native_checkpoint(
    path: str | Path,
    is_family: Callable[[dict[str, Any]], bool],
    to_config: Callable[[dict[str, Any]], PretrainedConfig],
    model_class: type[PreTrainedModel],
    what: str,
    dtype: torch.dtype,
    device: str | torch.device,
    attn_implementation: str,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """A released folder whose keys are already a native transformers class's (Dream's
    Qwen2, SDAR's Qwen3): config checked and mapped, model built on the meta device and
    filled shard by shard (strictly: :func:`_stream_weights`), in eval mode, with its
    tokenizer. Returns the folder too, for the family's special-id reader."""
    folder = _resolve_folder(path)
    cfg = _read_json(folder / CONFIG_FILE)
    if not is_family(cfg):
        raise ValueError(f"{folder / CONFIG_FILE} is not {what} config")
    config = to_config(cfg)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = model_class(config)
    expected = set(model.state_dict().keys())
    _stream_weights(
        model, folder, lambda k: k if k in expected else None, dtype, torch.device(device)
    )
    model.eval()
    return model, _load_tokenizer(folder), folder


def load_llada(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase, LLaDASpecialIds]:
    """A LLaDA checkpoint as ``(LlamaForCausalLM with is_causal=False, tokenizer, special ids)``.

    ``path``: a local folder holding either LLaDA's own format (``config.json``
    with ``model_type`` "llada", ``model.transformer.*`` weights in safetensors
    shards with ``model.safetensors.index.json``, or one ``model.safetensors``),
    converted on the fly, or a folder already in Llama format (``model_type``
    "llama", e.g. written by :func:`convert_llada`). A hub id is accepted only
    where the hub can be reached. The model is built on the meta device and
    filled shard by shard on ``device`` in ``dtype``; it is returned in eval mode.
    """
    folder = _resolve_folder(path)
    device = torch.device(device)
    cfg = _read_json(folder / CONFIG_FILE)
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
        _stream_weights(model, folder, rename, dtype, device)
    except (ValueError, FileNotFoundError):
        raise  # already one line naming the file and the tensor
    except Exception as err:  # safetensors' error type for bad bytes; a wrong-shaped tensor
        from tiltmatch.models.denoiser import ModelLoadError

        text = " ".join(str(err).split())[:300]
        raise ModelLoadError(
            f"cannot load the weights in {folder} ({type(err).__name__}: {text})"
        ) from None
    model.eval()
    tokenizer = _load_tokenizer(folder)
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


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert-llada SRC DST`` on an argparse subparsers object.

    The parser's ``func`` default runs the conversion: a CLI calls ``args.func(args)``.
    """
    parser = subparsers.add_parser(
        "convert-llada",
        help="convert a LLaDA checkpoint to a Llama-format (bidirectional) checkpoint",
        description=convert_llada.__doc__,
    )
    parser.add_argument("src", help="LLaDA checkpoint folder (or hub id where a network exists)")
    parser.add_argument("dst", help="output folder (must be empty or absent)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bfloat16")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty DST (refused without it)"
    )
    parser.set_defaults(func=_run_convert)
    return parser


def _run_convert(args: argparse.Namespace) -> int:
    out = convert_llada(
        args.src,
        args.dst,
        dtype=torch_dtype(args.dtype),
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- codec


class LLaDACodec:
    """The :class:`~tiltmatch.models.codecs.PromptCodec` of a LLaDA (Instruct) tokenizer.

    A prompt becomes one user turn of the chat template followed by the
    assistant header, after which the response starts. ``vocab_size`` is the
    model's (the width of its logits), not the tokenizer's length.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        special_ids: LLaDASpecialIds,
        vocab_size: int,
        use_chat_template: bool = True,
    ) -> None:
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; pass use_chat_template=False")
        self.tokenizer = tokenizer
        self.special_ids = special_ids
        self.use_chat_template = use_chat_template
        self.mask_token_id = special_ids.mask_token_id
        self.pad_token_id = special_ids.pad_token_id
        self.eos_token_id = special_ids.eos_token_id
        self.vocab_size = int(vocab_size)
        self._stop_ids = {special_ids.eos_token_id, special_ids.pad_token_id}
        if special_ids.eot_token_id is not None:
            self._stop_ids.add(special_ids.eot_token_id)

    @classmethod
    def from_pretrained(cls, path: str | Path, use_chat_template: bool = True) -> LLaDACodec:
        """The codec of a checkpoint folder (LLaDA or converted), without loading weights."""
        folder = _resolve_folder(path)
        cfg = _read_json(folder / CONFIG_FILE)
        vocab_size = cfg.get("embedding_size") or cfg.get("vocab_size")
        if vocab_size is None:
            raise ValueError(f"{folder / CONFIG_FILE} has no vocab_size")
        tok = _load_tokenizer(folder)
        return cls(tok, read_special_ids(folder, tok), int(vocab_size), use_chat_template)

    def _render(self, prompt: str, add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert isinstance(text, str)
        return text

    def prompt_text(self, prompt: str) -> str:
        """The chat-formatted prompt, ending with exactly one assistant header."""
        if not self.use_chat_template:
            return prompt
        with_header = self._render(prompt, add_generation_prompt=True)
        without = self._render(prompt, add_generation_prompt=False)
        # LLaDA's template appends the assistant header whatever add_generation_prompt
        # says; a template that also honours the flag would then append it twice.
        header = with_header[len(without) :] if with_header.startswith(without) else ""
        if header and without.endswith(header):
            return without
        return with_header

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a prompt (chat template, BOS included), ready for the response."""
        text = self.prompt_text(prompt)
        # The template writes BOS itself; the tokenizer must not add another.
        add_special = not self.use_chat_template
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def decode_response(self, ids: Sequence[int]) -> str:
        """Text of a response up to its first EOS / end-of-turn / pad token, specials skipped."""
        kept = []
        for i in ids:
            if int(i) in self._stop_ids:
                break
            kept.append(int(i))
        return str(self.tokenizer.decode(kept, skip_special_tokens=True))
