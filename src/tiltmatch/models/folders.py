"""Where a model lives, and which family it is, before anything is loaded.

A base is a model shipped inside the package (``shipped:NAME``) or a folder; its family is
read from its ``config.json`` alone (:func:`folder_family`: a saved denoiser's recorded
``dllm_family``, else the registered family that recognises the config). Nothing here
imports torch or transformers, so the run config can ask which family its base is and
refuse a sampler that cannot decode it before any weight is read.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from tiltmatch.models.registry import checkpoint_family

SHIPPED_PREFIX = "shipped:"
CONFIG_FILE = "config.json"


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable or non-object file names itself."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def shipped_model_dir(name: str) -> Path:
    """Folder of a base model shipped inside the package (``assets/<name>-base``)."""
    return Path(str(resources.files("tiltmatch") / "assets" / f"{name}-base"))


def resolve_model_path(base: str) -> Path:
    """``shipped:NAME`` -> the packaged folder; anything else is a path that must exist."""
    if base.startswith(SHIPPED_PREFIX):
        path = shipped_model_dir(base[len(SHIPPED_PREFIX) :])
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"no shipped base model {base!r} (looked in {path}); build one with "
                f"'tiltmatch pretrain --task {base[len(SHIPPED_PREFIX) :]} --out DIR'"
            )
        return path
    path = Path(base).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    return path


def folder_family(path: Path) -> str:
    """The registered family of a model folder, from its ``config.json`` alone (no weights
    read): a released, converted or saved model's (a saved denoiser records its own)."""
    return checkpoint_family(read_json(path / CONFIG_FILE))


def base_family(base: str) -> str | None:
    """The family of ``model.base`` when its folder can be read now, else None (a hub id,
    a folder not there yet, an unreadable config: loading it will say what is wrong)."""
    try:
        return folder_family(resolve_model_path(base))
    except (OSError, ValueError):
        return None
