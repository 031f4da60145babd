"""Atomic checkpoints: a run killed at any moment leaves either the old checkpoint or the new one.

A checkpoint is a folder: named tensor groups as safetensors files (model
weights), pickled-free torch objects (optimizer state, RNG states) via
``torch.save``, and a JSON file of plain metadata, written last. It is written
into a temporary sibling folder (``.checkpoint.tmp-*``), flushed, and swapped in
with ``os.replace`` (the previous folder goes to ``.checkpoint.old-*`` for the
instant between the two renames). Every save records a sequence number one
above the previous checkpoint's; after a good save, stray siblings left by
killed saves are removed. With the checkpoint itself missing, the loader takes
the complete sibling with the highest sequence number.
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


SEQUENCE = "sequence"  # the meta key of a checkpoint's save counter


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the file."""


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (read-only folder, full disk); the previous one
    is intact."""


def _siblings(path: Path) -> list[Path]:
    """Folders a killed save may leave beside ``path``: ``.NAME.tmp-*`` and ``.NAME.old-*``."""
    if not path.parent.is_dir():
        return []
    return [
        p
        for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*")
        for p in path.parent.glob(pattern)
        if p.is_dir()
    ]


def _read_meta(folder: Path) -> dict[str, Any]:
    """``folder``'s meta.json as a dict; :class:`CheckpointError` naming it when unreadable."""
    meta_file = folder / META
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: no {META}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint file {meta_file} is unreadable: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint file {meta_file} does not hold a JSON object")
    return meta


def _sequence(folder: Path) -> int | None:
    """The save counter of a complete checkpoint folder, or None when it is not complete."""
    try:
        meta = _read_meta(folder)
    except CheckpointError:
        return None
    value = meta.get(SEQUENCE, 0)
    return value if isinstance(value, int) else 0


def _newest_complete(path: Path) -> Path | None:
    """The complete sibling of a missing checkpoint that was written last.

    Ranked by the recorded sequence number, then modification time: never by name
    (the suffixes are random).
    """
    ranked = []
    for candidate in _siblings(path):
        seq = _sequence(candidate)
        if seq is not None:
            ranked.append((seq, (candidate / META).stat().st_mtime_ns, candidate))
    return max(ranked)[2] if ranked else None


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
    previous = path if path.is_dir() else _newest_complete(path)
    last = _sequence(previous) if previous is not None else None
    meta = {**meta, SEQUENCE: (last or 0) + 1}
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
    except OSError as err:
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {err}") from err
    try:
        for name, sd in tensors.items():
            flat = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
            save_file(flat, str(tmp / f"{name}.safetensors"))
        for name, obj in objects.items():
            torch.save(obj, tmp / f"{name}.pt")
        # meta.json last: a folder holding a readable one is complete.
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
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full disk surfaces as OSError, as torch.save's RuntimeError or as safetensors' own
        # error type: one message, naming the checkpoint and saying that nothing was lost.
        raise CheckpointWriteError(
            f"cannot write checkpoint {path} ({type(err).__name__}: {_one_line(err)}); "
            "the previous checkpoint is intact"
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # The new checkpoint is in place: whatever earlier killed saves left beside it goes.
    for stray in _siblings(path):
        shutil.rmtree(stray, ignore_errors=True)
    return path


def find_checkpoint(path: str | Path) -> Path | None:
    """The folder :func:`load_checkpoint` would read for ``path``, or None when there is none."""
    path = Path(path)
    return path if path.is_dir() else _newest_complete(path)


def checkpoint_meta(path: str | Path) -> dict[str, Any] | None:
    """The meta.json of the checkpoint at ``path`` (or its newest complete sibling), or None."""
    found = find_checkpoint(path)
    return None if found is None else _read_meta(found)


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint folder written by :func:`save_checkpoint`.

    Returns ``(tensors, objects, meta)``. A missing, truncated or corrupt piece raises
    :class:`CheckpointError` naming the file. Objects are read with ``weights_only=True``
    (tensors and plain containers only: no pickled code runs).
    """
    path = Path(path)
    if not path.is_dir():
        # A crash between the two renames leaves the previous folder under .old-* (and a
        # complete new one under .tmp-*): take the one written last.
        found = _newest_complete(path)
        if found is None:
            raise CheckpointError(f"checkpoint not found: {path}")
        path = found
    meta = _read_meta(path)
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for f in sorted(path.glob("*.safetensors")):
        try:
            tensors[f.stem] = load_file(str(f))
        except Exception as err:  # safetensors raises its own error types for bad bytes
            raise CheckpointError(
                f"checkpoint file {f} is unreadable ({type(err).__name__}: {_one_line(err)})"
            ) from None
    objects: dict[str, Any] = {}
    for f in sorted(path.glob("*.pt")):
        try:
            objects[f.stem] = torch.load(f, weights_only=True)
        except Exception as err:  # truncated zip, garbage bytes, a forbidden pickle global
            raise CheckpointError(
                f"checkpoint file {f} is unreadable ({type(err).__name__}: {_one_line(err)})"
            ) from None
    return tensors, objects, meta


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
