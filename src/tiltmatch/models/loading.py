"""Finding a model and its tokenizer: a shipped base, a saved denoiser, or a released checkpoint.

A checkpoint folder's family is decided once, from its ``config.json``
(``model_type`` / ``architectures`` / ``dllm_family``), by the family registry
(:func:`tiltmatch.models.registry.checkpoint_family`); that family's spec loads it
(``FamilySpec.load``: LLaDA, Dream, block diffusion, or any family registered).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch
from transformers import PreTrainedModel

from tiltmatch.models.codecs import CharTokenizer, ChatCodec, PromptCodec
from tiltmatch.models.config import ModelConfig
from tiltmatch.models.denoiser import (
    DENOISER_META,
    ModelLoadError,
    TinyModelSpec,
    load_denoiser,
    tiny_denoiser,
)
from tiltmatch.models.dtypes import torch_dtype
from tiltmatch.models.folders import (
    SHIPPED_PREFIX,
    folder_family,
    resolve_model_path,
    shipped_model_dir,
)
from tiltmatch.models.registry import checkpoint_family, family_spec

__all__ = [
    "SHIPPED_PREFIX",
    "checkpoint_family",
    "folder_family",
    "load_model_and_codec",
    "load_model_folder",
    "resolve_model_path",
    "shipped_model_dir",
]


class Alphabetic(Protocol):
    """What loading reads of a task (a :class:`~tiltmatch.tasks.base.Task` is one): its name,
    and the characters of a character-level model's alphabet, if it has one."""

    @property
    def name(self) -> str: ...

    @property
    def alphabet(self) -> str | None: ...


def load_model_and_codec(
    config: ModelConfig, task: Alphabetic, seed: int = 0
) -> tuple[PreTrainedModel, PromptCodec]:
    """The denoiser to fine-tune and the codec that goes with it.

    - no ``base``: a fresh tiny model with the task's character tokenizer;
    - a folder saved by :func:`tiltmatch.models.denoiser.save_denoiser` with an alphabet: that
      model and its character tokenizer;
    - otherwise a released (or converted) checkpoint of a registered family, with its own
      tokenizer (:func:`load_model_folder`).
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
        from tiltmatch.models.quantisation import load_4bit_base

        model = load_4bit_base(path, torch_dtype(config.dtype), "cuda")
        family = family_spec(folder_family(path))
        return model, ChatCodec.from_pretrained(
            path, mask_token=family.mask_token, end_of_turn_token=family.end_of_turn_token
        )
    return load_model_folder(path, task, dtype=torch_dtype(config.dtype))


def load_model_folder(
    path: Path, task: Alphabetic | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PromptCodec]:
    """Load a model folder: a character-level denoiser, or a released checkpoint of a
    registered family (LLaDA, Dream, SDAR / TraDo, ...), loaded by that family's spec."""
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
    model, codec = family_spec(folder_family(path)).load(path, dtype)
    return model, codec
