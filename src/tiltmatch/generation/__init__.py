"""Using a trained model: its record (how it was trained to be sampled), the sampler's
geometry derived from a response length, loading a saved folder and sampling from it.

``load_pretrained`` and ``DiffusionLM`` (:mod:`tiltmatch.generation.pretrained`) are
imported lazily, so that the run config and the command line can read a record or derive a
geometry without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DiffusionLM": "tiltmatch.generation.pretrained",
    "load_pretrained": "tiltmatch.generation.pretrained",
    "default_device": "tiltmatch.generation.pretrained",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tiltmatch.generation' has no attribute {name!r}")
