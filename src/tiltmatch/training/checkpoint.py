"""Atomic checkpoints: a run killed at any moment leaves either the old checkpoint or the new one.

A checkpoint is a folder: named tensor groups as safetensors files (model
weights), pickled-free torch objects (optimizer state, RNG states) via
``torch.save``, and a JSON file of plain metadata. It is written into a
temporary sibling folder, flushed, and swapped in with ``os.replace``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

META = "meta.json"


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing or incomplete."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | Path,
    tensors: Mapping[str, Mapping[str, torch.Tensor]],
    objects: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``tensors``: name -> state dict, saved as ``name.safetensors``;
    ``objects``: name -> torch-serialisable object (tensors, dicts, lists of
    numbers), saved as ``name.pt``; ``meta``: JSON-serialisable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, sd in tensors.items():
            flat = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
            save_file(flat, str(tmp / f"{name}.safetensors"))
        for name, obj in objects.items():
            torch.save(obj, tmp / f"{name}.pt")
        (tmp / META).write_text(json.dumps(dict(meta), indent=2))
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint folder written by :func:`save_checkpoint`.

    Returns ``(tensors, objects, meta)``. A missing folder or file raises
    :class:`CheckpointError` naming it.
    """
    path = Path(path)
    if not path.is_dir():
        # A crash between the two renames leaves only the previous folder under .old-*.
        olds = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        if not olds:
            raise CheckpointError(f"checkpoint not found: {path}")
        path = olds[-1]
    meta_file = path / META
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: no {META}")
    meta = json.loads(meta_file.read_text())
    tensors = {f.stem: load_file(str(f)) for f in sorted(path.glob("*.safetensors"))}
    objects = {f.stem: torch.load(f, weights_only=True) for f in sorted(path.glob("*.pt"))}
    return tensors, objects, meta
