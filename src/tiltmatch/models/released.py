"""Reading a released checkpoint folder, whatever its family: files, config, weights, tokenizer.

What every family's loader shares (:mod:`tiltmatch.models.llada`, ``dream``,
``block_diffusion``): the folder itself (a local path, or a hub id where a network
exists: :func:`resolve_folder`), its JSON files (:func:`read_json`), the safetensors
shards named by ``model.safetensors.index.json`` streamed into a meta-device model one
shard at a time (:func:`stream_weights`), the tokenizer, never remote code
(:func:`load_tokenizer`), and for the families whose weights already carry a native
transformers class's key names the whole load (:func:`load_native_checkpoint`) and the
settings their ``config.json`` maps (:func:`native_config_kwargs`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from tiltmatch.models.folders import CONFIG_FILE, read_json
from tiltmatch.models.registry import FAMILY_KEY

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
GENERATION_CONFIG_FILE = "generation_config.json"

#: remote tokenizer classes that are renamed copies of a transformers class (Dream's
#: ``tokenization_dream.DreamTokenizer`` is Qwen2's tokenizer under another name)
NATIVE_TOKENIZER_ALIASES = {"DreamTokenizer": "Qwen2Tokenizer"}


def resolve_folder(path: str | Path) -> Path:
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


def rename_all(
    keys: Iterable[str], rename: Callable[[str], str | None], what: str = "LLaDA"
) -> dict[str, str]:
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
        raise ValueError(f"unexpected key(s) in the {what} checkpoint: {shown}{more}")
    return mapping


def shard_files(folder: Path) -> dict[Path, set[str]]:
    """``{shard file: keys the index assigns to it}`` (an empty set for a single file)."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = read_json(index_path)
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


def stream_weights(
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
    for shard, indexed in shard_files(folder).items():
        with safe_open(str(shard), framework="pt", device=str(device)) as f:
            keys = set(f.keys())
            if indexed - keys:
                raise ValueError(
                    f"{shard.name} lacks {sorted(indexed - keys)[:4]} that {INDEX_FILE} puts there"
                )
            part = {}
            for source, target in rename_all(keys, rename).items():
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


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, never remote code.

    A plain fast tokenizer (``tokenizer.json``) loads as it is; a remote class that only
    renames a native one (:data:`NATIVE_TOKENIZER_ALIASES`) is loaded as the native class.
    """
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = read_json(tok_cfg_path) if tok_cfg_path.is_file() else {}
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
    filled shard by shard (strictly: :func:`stream_weights`), in eval mode, with its
    tokenizer. Returns the folder too, for the family's special-id reader."""
    folder = resolve_folder(path)
    cfg = read_json(folder / CONFIG_FILE)
    if not is_family(cfg):
        raise ValueError(f"{folder / CONFIG_FILE} is not {what} config")
    config = to_config(cfg)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        model = model_class(config)
    expected = set(model.state_dict().keys())
    stream_weights(
        model, folder, lambda k: k if k in expected else None, dtype, torch.device(device)
    )
    model.eval()
    return model, load_tokenizer(folder), folder


#: what a Qwen-architecture config map needs from every ``config.json``
QWEN_REQUIRED = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
)


def native_config_kwargs(
    cfg: Mapping[str, Any], what: str, family: str, required: Iterable[str] = QWEN_REQUIRED
) -> dict[str, Any]:
    """The config arguments every bidirectional Qwen-architecture family maps alike.

    For a released ``config.json`` dict of family ``family`` (``what`` names it in
    messages): the sizes, RoPE, norms and ids of a ``Qwen2Config`` / ``Qwen3Config`` with
    ``is_causal=False`` and ``dllm_family`` recorded. Settings that would change the
    forward and that no such map carries (another activation, RoPE scaling, sliding-window
    attention) and a missing ``required`` key are refused by name.
    """
    for key in required:
        if cfg.get(key) is None:
            raise ValueError(f"{what} config has no {key!r}: it is required to build the model")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{what} config hidden_act {cfg['hidden_act']!r} is not supported (silu)")
    if cfg.get("rope_scaling"):
        raise ValueError(f"{what} config rope_scaling {cfg['rope_scaling']!r} is not supported")
    if cfg.get("use_sliding_window"):
        raise ValueError(f"{what} config use_sliding_window=true is not supported")
    rope = cfg.get("rope_parameters") or {
        "rope_type": "default",
        "rope_theta": float(cfg.get("rope_theta", 1_000_000.0)),
    }
    heads = int(cfg["num_attention_heads"])
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": int(cfg["hidden_size"]),
        "intermediate_size": int(cfg["intermediate_size"]),
        "num_hidden_layers": int(cfg["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": int(cfg.get("num_key_value_heads") or heads),
        "hidden_act": "silu",
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 32768)),
        "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
        "rope_parameters": rope,
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "attention_dropout": float(cfg.get("attention_dropout", 0.0)),
        "use_sliding_window": False,
        "use_cache": False,
        # No pad id in the model config: it would become the embedding's padding_idx
        # (these families' pad is their EOS, which responses use).
        "pad_token_id": None,
        "bos_token_id": cfg.get("bos_token_id"),
        "eos_token_id": cfg.get("eos_token_id"),
        # Settings the config classes keep as plain attributes (not declared fields).
        "is_causal": False,
        FAMILY_KEY: family,
        "mask_token_id": cfg.get("mask_token_id"),  # for the record; see read_special_ids
    }
