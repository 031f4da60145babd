"""A CPU stand-in, in plain torch, for the two flash-attn kernels MDLM's released DiT calls.

MDLM's ``models/dit.py`` (kuleshov-group/mdlm) imports flash-attn, which builds for CUDA
only, and calls two of its functions in ``DDiTBlock.forward``:

- ``flash_attn.layers.rotary.apply_rotary_emb_qkv_(qkv, cos, sin)``: rotary embedding of
  the queries and keys of a packed ``[batch, seqlen, 3, heads, head_dim]`` tensor, in
  place, returning it. flash-attn documents ``cos``, ``sin`` as ``[seqlen, rotary_dim /
  2]``, the rotation on the first ``rotary_dim`` features only, the value slice untouched,
  and (``interleaved=False``, the default) the GPT-NeoX layout: the pairs are ``(x_j,
  x_{j + rotary_dim / 2})``, ``x1 cos - x2 sin`` and ``x1 sin + x2 cos``.
- ``flash_attn.flash_attn_interface.flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens,
  max_seqlen, 0.0, causal=False)``: bidirectional attention over a packed ``[total, 3,
  heads, head_dim]`` tensor holding several sequences back to back, sequence ``b`` in rows
  ``cu_seqlens[b]:cu_seqlens[b + 1]``; each attends within itself only, softmax scale
  ``head_dim ** -0.5`` unless given; returns ``[total, heads, head_dim]``.

This module writes both from those documented semantics (softmax and rotation computed in
float32, as the kernels accumulate, then cast to the input's dtype) and, with
:func:`install`, registers them under flash-attn's module names in ``sys.modules`` so
the released file imports unchanged. Used only by ``benchmarks/family_parity.py
--flash-attn-shim`` in its released-side subprocess; never by the library. Settings the
released file never passes (dropout, windows, ALiBi, softcapping, interleaved rotary,
offsets, GQA packing, causal masking) are refused by name, not silently ignored.

What a parity run through it proves: the released DiT's own code (embedding, adaLN,
LayerNorm, rotary tables, packing, MLP, output layer, the order of operations) against
the package's, with these two kernels as their specification says. What it cannot: that
flash-attn's CUDA kernels meet their specification, or the released model's bfloat16
autocast numerics on a GPU.
"""

from __future__ import annotations

import itertools
import sys
import types
from typing import Any

import torch

#: the flash-attn modules the released dit.py imports or reaches by attribute
MODULES = (
    "flash_attn",
    "flash_attn.layers",
    "flash_attn.layers.rotary",
    "flash_attn.flash_attn_interface",
)


def _refuse(name: str, value: Any, default: Any) -> None:
    if value != default:
        raise NotImplementedError(f"flash-attn shim: {name}={value!r} is not supported")


def flash_attn_varlen_qkvpacked_func(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Attention of each packed sequence over itself: ``qkv`` ``[total, 3, heads, d]``,
    sequence ``b`` in rows ``cu_seqlens[b]:cu_seqlens[b + 1]``; ``[total, heads, d]``."""
    _refuse("dropout_p", dropout_p, 0.0)  # its random mask cannot be reproduced anyway
    _refuse("window_size", tuple(window_size), (-1, -1))
    _refuse("alibi_slopes", alibi_slopes, None)
    _refuse("return_attn_probs", return_attn_probs, False)
    _refuse("softcap", softcap, 0.0)
    _refuse("causal", causal, False)  # the released DiT is bidirectional
    del deterministic  # no effect on the forward
    if qkv.dim() != 4 or qkv.shape[1] != 3:
        raise ValueError(f"flash-attn shim: qkv must be [total, 3, heads, d], got {qkv.shape}")
    bounds = [int(b) for b in cu_seqlens.tolist()]
    if bounds[0] != 0 or bounds[-1] != qkv.shape[0] or bounds != sorted(bounds):
        raise ValueError(f"flash-attn shim: cu_seqlens {bounds} do not tile {qkv.shape[0]} rows")
    if max(b - a for a, b in itertools.pairwise(bounds)) > max_seqlen:
        raise ValueError(f"flash-attn shim: a sequence is longer than max_seqlen={max_seqlen}")
    scale = qkv.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.empty_like(qkv[:, 0])
    for start, end in itertools.pairwise(bounds):
        q, k, v = qkv[start:end].float().unbind(1)  # each [n, heads, d]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        weights = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", weights, v).to(qkv.dtype)
    return out


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """GPT-NeoX rotary in place on the first ``2 * cos.shape[-1]`` features of ``x``
    ``[batch, seqlen, heads, d]``; ``cos``, ``sin`` ``[>= seqlen, rotary_dim / 2]``."""
    half = cos.shape[-1]
    if 2 * half > x.shape[-1]:
        raise ValueError(f"flash-attn shim: rotary_dim {2 * half} exceeds head_dim")
    c = cos[: x.shape[1], None, :].float()
    s = sin[: x.shape[1], None, :].float()
    # Both halves are computed before either is written: float32 .float() is no copy.
    x1, x2 = x[..., :half].float(), x[..., half : 2 * half].float()
    first, second = x1 * c - x2 * s, x1 * s + x2 * c
    x[..., :half] = first.to(x.dtype)
    x[..., half : 2 * half] = second.to(x.dtype)


def apply_rotary_emb_qkv_(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_k: torch.Tensor | None = None,
    sin_k: torch.Tensor | None = None,
    interleaved: bool = False,
    seqlen_offsets: int = 0,
    num_heads_q: int | None = None,
) -> torch.Tensor:
    """Rotary on the queries and keys of ``qkv`` ``[batch, seqlen, 3, heads, d]`` in place
    (``cos_k``, ``sin_k`` for the keys when given); returns ``qkv``."""
    _refuse("interleaved", interleaved, False)
    _refuse("seqlen_offsets", seqlen_offsets, 0)
    _refuse("num_heads_q", num_heads_q, None)
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"flash-attn shim: qkv must be [b, s, 3, heads, d], got {qkv.shape}")
    _rotate(qkv[:, :, 0], cos, sin)
    _rotate(qkv[:, :, 1], cos if cos_k is None else cos_k, sin if sin_k is None else sin_k)
    return qkv


def install() -> None:
    """Register the shim as ``flash_attn`` (and the submodules the released DiT reaches) in
    ``sys.modules``; refuses to shadow a flash-attn already imported."""
    present = [name for name in MODULES if name in sys.modules]
    if present:
        raise RuntimeError(f"flash-attn shim: {present} already imported; not replacing them")
    doc = "CPU shim of flash-attn (benchmarks/flash_attn_shim.py)"
    top, layers, rotary, interface = (types.ModuleType(name, doc) for name in MODULES)
    top.__path__ = []  # packages, so ``import flash_attn.layers.rotary`` resolves here
    layers.__path__ = []
    top.__dict__.update(__version__="shim", layers=layers, flash_attn_interface=interface)
    layers.__dict__.update(rotary=rotary)
    rotary.__dict__.update(apply_rotary_emb_qkv_=apply_rotary_emb_qkv_)
    interface.__dict__.update(flash_attn_varlen_qkvpacked_func=flash_attn_varlen_qkvpacked_func)
    sys.modules.update(zip(MODULES, (top, layers, rotary, interface), strict=True))
