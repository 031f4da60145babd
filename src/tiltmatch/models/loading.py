"""Finding a model and its tokenizer: a shipped base, a saved denoiser, or a released checkpoint.

A checkpoint folder's family is decided once, here, from its ``config.json``
(``model_type`` / ``architectures`` / ``dllm_family``): LLaDA, Dream or block
diffusion (SDAR / TraDo); each family's room in ``tiltmatch.models`` loads it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from tiltmatch.config import ModelConfig
from tiltmatch.models.codecs import CharTokenizer, PromptCodec
from tiltmatch.models.denoiser import (
    DENOISER_META,
    ModelLoadError,
    TinyModelSpec,
    load_denoiser,
    tiny_denoiser,
)
from tiltmatch.models.dtypes import torch_dtype
from tiltmatch.models.family import BLOCK_DIFFUSION, DREAM, LLADA
from tiltmatch.tasks.base import Task

SHIPPED_PREFIX = "shipped:"


def shipped_model_dir(name: str) -> Path:
    """Folder of a base model shipped inside the package (``assets/<name>-base``)."""
    return Path(str(resources.files("tiltmatch") / "assets" / f"{name}-base"))


def resolve_model_path(base: str) -> Path:
    """``shipped:NAME`` -> the packaged folder; anything else is a path that must exist."""
    if base.startswith(SHIPPED_PREFIX):
        path = shipped_model_dir(base[len(SHIPPED_PREFIX) :])
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"no shipped base model {base!r} (looked in {path}); build one with "
                f"'tiltmatch pretrain --task {base[len(SHIPPED_PREFIX) :]} --out DIR'"
            )
        return path
    path = Path(base).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    return path


def load_model_and_codec(
    config: ModelConfig, task: Task, seed: int = 0
) -> tuple[PreTrainedModel, PromptCodec]:
    """The denoiser to fine-tune and the codec that goes with it.

    - no ``base``: a fresh tiny model with the task's character tokenizer;
    - a folder saved by :func:`tiltmatch.models.denoiser.save_denoiser` with an alphabet: that
      model and its character tokenizer;
    - otherwise a LLaDA (or converted Llama-format) checkpoint with its own tokenizer.
    """
    if config.base is None:
        if task.alphabet is None:
            raise ValueError(
                f"task {task.name!r} needs a pretrained model with a tokenizer: set model.base "
                "(or, for a fresh character-level model, the task's alphabet option)"
            )
        codec = CharTokenizer(task.alphabet)
        spec = TinyModelSpec(
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            family=config.family,
            block_size=config.block_size,
        )
        return tiny_denoiser(codec.vocab_size, spec, seed=seed), codec
    path = resolve_model_path(config.base)
    if config.load_in_4bit:
        from tiltmatch.models.llada import LLaDACodec
        from tiltmatch.models.quantisation import load_4bit_base

        model = load_4bit_base(path, torch_dtype(config.dtype), "cuda")
        return model, LLaDACodec.from_pretrained(path)
    return load_model_folder(path, task, dtype=torch_dtype(config.dtype))


def checkpoint_family(cfg: dict[str, Any]) -> str:
    """The family of a released or converted checkpoint's ``config.json`` dict."""
    from tiltmatch.models.block_diffusion import is_block_diffusion_config
    from tiltmatch.models.dream import is_dream_config

    if is_dream_config(cfg):
        return DREAM
    if is_block_diffusion_config(cfg):
        return BLOCK_DIFFUSION
    if cfg.get("model_type") in ("llada", "llama") or "d_model" in cfg:
        return LLADA
    raise ValueError(
        f"config.json: model_type {cfg.get('model_type')!r} (architectures "
        f"{cfg.get('architectures')}) is none of the supported families: LLaDA ('llada', "
        "'llama'), Dream ('Dream'), block diffusion ('sdar')"
    )


def _load_family(
    family: str, path: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PromptCodec]:
    from tiltmatch.models.llada import LLaDACodec, load_llada

    if family == DREAM:
        from tiltmatch.models.dream import dream_codec, load_dream

        dream, tok, ids = load_dream(path, dtype=dtype)
        return dream, dream_codec(tok, ids, dream.config.vocab_size)
    if family == BLOCK_DIFFUSION:
        from tiltmatch.models.block_diffusion import block_codec, load_block_diffusion

        sdar, tok, ids = load_block_diffusion(path, dtype=dtype)
        return sdar, block_codec(tok, ids, sdar.config.vocab_size)
    llada, tokenizer, special_ids = load_llada(path, dtype=dtype)
    # The codec's vocabulary is the width of the logits (the embedding rows).
    return llada, LLaDACodec(tokenizer, special_ids, llada.config.vocab_size)


def load_model_folder(
    path: Path, task: Task | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PromptCodec]:
    """Load a model folder: a character-level denoiser, or a LLaDA / Dream / SDAR checkpoint."""
    meta_file = path / DENOISER_META
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{meta_file} is not valid JSON ({err})") from None
    if isinstance(meta, dict) and "alphabet" in meta:
        model, meta = load_denoiser(path)
        codec = CharTokenizer(meta["alphabet"])
        if (
            task is not None
            and task.alphabet is not None
            and set(task.alphabet) - set(codec.alphabet)
        ):
            raise ValueError(
                f"the model in {path} was trained for task {meta.get('task')!r}; its alphabet "
                f"lacks characters of task {task.name!r}"
            )
        return model, codec
    from tiltmatch.models.llada import CONFIG_FILE, _read_json

    family = checkpoint_family(_read_json(path / CONFIG_FILE))
    return _load_family(family, path, dtype)
