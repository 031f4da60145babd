"""Checks on a model folder and a loaded model that the loaders leave to their callers.

Every command that reads a model (``train``, ``eval``, the Python API) runs them, so a
damaged model is refused with one line naming it instead of giving a silent result: a
``tiltmatch.json`` whose alphabet is not text, weights that hold NaN or infinity (such a
model samples nothing but one token and scores 0 without complaint), a shifted-logit
(Dream) model asked for a cached sampler mode it has none of.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tiltmatch.models.denoiser import DENOISER_META, ModelLoadError


def check_model_meta(folder: Path) -> None:
    """Refuse a ``tiltmatch.json`` whose alphabet is not a non-empty string of distinct
    characters (the character tokenizer is built from it)."""
    meta_file = folder / DENOISER_META
    if not meta_file.is_file():
        return
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return  # the loader names the file and the cause
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{meta_file} does not hold a JSON object")
    if "alphabet" not in meta:
        return
    alphabet = meta["alphabet"]
    if not isinstance(alphabet, str) or not alphabet:
        raise ModelLoadError(
            f"{meta_file}: 'alphabet' must be a non-empty string of characters, got "
            f"{type(alphabet).__name__} {str(alphabet)[:60]!r}"
        )
    if len(set(alphabet)) != len(alphabet):
        raise ModelLoadError(f"{meta_file}: 'alphabet' repeats characters: {alphabet[:60]!r}")


def check_finite_weights(model: torch.nn.Module, where: str) -> None:
    """Refuse a model with a NaN or infinite weight, naming the first such tensor."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelLoadError(
                f"{where}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf); "
                "the weights are damaged"
            )


def check_sampler_family(model: Any, sampling: Any, where: str, section: str) -> None:
    """Refuse a sampler the loaded model's family cannot decode, before any rollout: the
    sampler registry's own check (:func:`tiltmatch.sampling.registry.strategy_for`), for a
    model given as an object, whose family no config check could read from a folder."""
    from tiltmatch.models.family import FAMILY_KEY
    from tiltmatch.models.registry import DEFAULT_FAMILY
    from tiltmatch.sampling.registry import SamplerRefused, strategy_for

    config = getattr(model, "config", None)
    family = getattr(config, FAMILY_KEY, None) or DEFAULT_FAMILY
    try:
        strategy_for(family, sampling, where, section)
    except SamplerRefused as err:
        raise ValueError(str(err)) from None
