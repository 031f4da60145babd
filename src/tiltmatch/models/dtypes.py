"""The one table of weight dtypes a run config or a command line may name.

``model.dtype`` in the run config, ``convert-llada --dtype``, the 4-bit base's
compute dtype and the GPU check all read it, so a dtype is added (or refused)
in one place. torch is imported only when a name is turned into a dtype: the
config (and ``tiltmatch --help``) stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

#: the names a config or a command line may give
DTypeName = Literal["float32", "bfloat16", "float16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DTypeName)


def torch_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` named ``name`` (one of :data:`DTYPE_NAMES`)."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(DTYPE_NAMES)}")
    dtype: torch.dtype = getattr(torch, name)
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The table's name of ``dtype`` (``torch.bfloat16`` -> ``"bfloat16"``)."""
    for name in DTYPE_NAMES:
        if torch_dtype(name) == dtype:
            return name
    raise ValueError(f"dtype {dtype} is not one of {', '.join(DTYPE_NAMES)}")
