"""The cached sampler's cache written in place (sampling/cache.py).

Traps: it must give token for token what the earlier cache gave (transformers'
``DynamicCache``, the window concatenated onto the cached columns at every step, then cut
off again), in both cache modes, with refreshes inside a block, with parallel commits and
with rows leaving the batch; and a cached step must not copy the cached keys and values
(no concatenation of ``[B, H, T, D]`` tensors once the block's refresh is done).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.sampling.sampler import SamplingConfig
from tiltmatch.sampling.strategies import (
    BlockForward,
    CachedParallelSampler,
    CachedSampler,
)

SPEC = TinyModelSpec(hidden_size=32, num_layers=3, num_heads=2, intermediate_size=64)
VOCAB, MASK, PAD, EOS = 40, 1, 0, 2
PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12], [20, 21, 22, 23, 24, 25, 26]]


@pytest.fixture(scope="module")
def denoiser() -> MaskedDenoiser:
    return MaskedDenoiser(tiny_denoiser(VOCAB, SPEC, seed=5), MASK, PAD).eval()


def _keep_columns(cache: DynamicCache, start: int, stop: int | None) -> None:
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None
        keys, values = layer.keys, layer.values
        assert values is not None
        if stop is None:
            layer.keys, layer.values = keys[..., :start, :], values[..., :start, :]
        else:
            layer.keys = torch.cat([keys[..., :start, :], keys[..., stop:, :]], dim=-2)
            layer.values = torch.cat([values[..., :start, :], values[..., stop:, :]], dim=-2)


class ConcatenatingForward(BlockForward):
    """The cached forward before the in-place cache (a ``DynamicCache`` per refresh, the
    window concatenated at every step and cut off after it), kept as the reference."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args[:7])
        self.cache: DynamicCache | None = None
        self.kept = 0

    def keep_rows(self, keep: torch.Tensor, canvas: torch.Tensor) -> None:
        super().keep_rows(keep, canvas)
        if self.cache is not None:
            for layer in self.cache.layers:
                assert layer.keys is not None and layer.values is not None
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]

    def __call__(self, step: int, open_: torch.Tensor) -> torch.Tensor:
        config, wanted = self.config, self.wanted(open_)
        every = config.refresh_every
        if self.cache is None or (every is not None and step % every == 0):
            cache = DynamicCache()
            logits = self.denoiser.response_logits(
                self.prompt_ids, self.prompt_mask, self.canvas, cache=cache, logits_at=wanted
            )
            width = self.prompt_ids.shape[1]
            stop = width + self.hi if config.cache == "dual" else None
            _keep_columns(cache, width + self.lo, stop)
            self.cache, self.kept = cache, cache.get_seq_length()
            return logits
        stop = self.hi if config.cache == "dual" else self.canvas.shape[1]
        logits = self.denoiser.response_logits(
            self.prompt_ids,
            self.prompt_mask,
            self.canvas,
            cache=self.cache,
            logits_at=wanted[:, self.lo : stop],
            columns=(self.lo, stop),
        )
        _keep_columns(self.cache, self.kept, None)
        return logits


class ConcatenatingSampler(CachedSampler):
    forward = ConcatenatingForward


class ConcatenatingParallelSampler(CachedParallelSampler):
    forward = ConcatenatingForward


def _sample(strategy: Any, denoiser: MaskedDenoiser, length: int, seed: int) -> torch.Tensor:
    out = strategy.sample(
        denoiser, PROMPTS, length, torch.Generator().manual_seed(seed), eos_token_id=EOS
    )
    return out.responses


CASES = [
    dict(mode="cached", cache="dual", steps=8, block_length=4),
    dict(mode="cached", cache="prefix", steps=8, block_length=4),
    dict(mode="cached", cache="dual", steps=16, block_length=8, refresh_every=3),
    dict(mode="cached", cache="prefix", steps=16, block_length=4, temperature=0.0),
    dict(mode="cached", cache="dual", steps=4, block_length=4, remasking="random"),
    dict(mode="cached+parallel", cache="dual", block_length=8, threshold=0.05),
    dict(mode="cached+parallel", cache="prefix", block_length=4, factor=0.5),
]


@pytest.mark.parametrize("fields", CASES, ids=lambda f: "-".join(f"{v}" for v in f.values()))
@pytest.mark.parametrize("noise", ["lean", "compatible"])
def test_in_place_cache_gives_the_concatenating_caches_tokens(denoiser, fields, noise) -> None:
    config = SamplingConfig(noise=noise, **{"temperature": 1.0, **fields})
    parallel = "parallel" in fields["mode"]
    reference = ConcatenatingParallelSampler if parallel else ConcatenatingSampler
    strategy = CachedParallelSampler if parallel else CachedSampler
    for seed in range(3):
        new = _sample(strategy(config), denoiser, 16, seed)
        old = _sample(reference(config), denoiser, 16, seed)
        assert torch.equal(new, old), (fields, seed)


def test_rows_that_end_leave_the_cache(denoiser) -> None:
    """``early_finish``: rows whose first blocks are all end-of-text leave the batch and the
    in-place cache follows (only end-of-text and one other token may be drawn, so some rows
    end after a block of two and others do not)."""
    config = SamplingConfig(mode="cached", steps=8, block_length=2, early_finish=True)
    forbidden = [t for t in range(VOCAB) if t not in (EOS, 7, MASK)]
    some_rows_ended = False
    for seed in range(6):
        outs = [
            strategy(config).sample(
                denoiser, PROMPTS, 8, torch.Generator().manual_seed(seed),
                forbidden_token_ids=forbidden, eos_token_id=EOS,
            ).responses
            for strategy in (CachedSampler, ConcatenatingSampler)
        ]  # fmt: skip
        assert torch.equal(outs[0], outs[1]), seed
        ended = (outs[0][:, :2] == EOS).all(dim=1)
        some_rows_ended |= bool(ended.any() and not ended.all())
    assert some_rows_ended


class FourDimensionalCats(TorchDispatchMode):
    """Counts concatenations of 4-D tensors along their columns (keys and values are
    ``[B, H, T, D]``; RoPE's own concatenation along ``D`` is not one)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        dim = args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)
        if func is torch.ops.aten.cat.default and out.dim() == 4 and dim in (2, -2):
            self.count += 1
        return out


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_cached_step_copies_no_cached_keys(denoiser, cache) -> None:
    """Two blocks of 8 steps: the in-place cache concatenates no keys or values at all; the
    concatenating one did at every cached step, in every layer (keys and values)."""
    config = SamplingConfig(mode="cached", cache=cache, steps=16, block_length=8)
    counts, widths = {}, []
    model_forward = denoiser.model.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        widths.append(kwargs["input_ids"].shape[1])
        return model_forward(*args, **kwargs)

    for name, strategy in (("in place", CachedSampler), ("concatenating", ConcatenatingSampler)):
        widths.clear()
        denoiser.model.forward = recording  # type: ignore[method-assign]
        try:
            with FourDimensionalCats() as cats:
                _sample(strategy(config), denoiser, 16, 0)
        finally:
            del denoiser.model.forward
        counts[name] = cats.count
        # One full forward, then the window alone (the cache is read, not recomputed).
        full = max(len(p) for p in PROMPTS) + 16
        first = 16 if cache == "prefix" else 8  # block + suffix, or the block
        assert widths == [full] + [first] * 7 + [full] + [8] * 7
    assert counts["in place"] == 0
    layers, cached_steps = SPEC.num_layers, 14
    assert counts["concatenating"] >= 2 * layers * cached_steps


def test_forward_hands_its_cache_to_the_next_block(denoiser) -> None:
    """One cache per generate call: the next block's forward takes the previous one's."""
    from tiltmatch.sampling.strategies import CachedBlockForward

    config = SamplingConfig(mode="cached", steps=8, block_length=4)
    ids = torch.tensor([[5, 6, 7]])
    canvas = torch.full((1, 8), MASK)
    mask = torch.ones_like(ids)
    first = CachedBlockForward(denoiser, ids, canvas, mask, 0, 4, config)
    second = CachedBlockForward(denoiser, ids, canvas, mask, 4, 8, config, first)
    assert second.cache is first.cache
    other = CachedBlockForward(denoiser, ids, canvas, mask, 4, 8, config)
    assert other.cache is not first.cache
