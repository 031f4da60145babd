"""The cached sampler's keys and values, written in place (docs/sampling.md, "cached").

A cached step runs a window of canvas columns (the active block, or block + suffix) against
the keys and values of the other columns, computed at the block's refresh. transformers'
``DynamicCache`` concatenates the window onto the cached columns in every layer at every
step, copying all of them (prompt + response) each time; at long responses that copy is a
tenth of a cached block's time. :class:`WindowCache` holds each layer's keys and values in
one tensor of all ``prompt + response`` columns instead:

- a refresh (a full forward, the cache empty) keeps the forward's own keys and values as
  that tensor, in column order;
- :meth:`WindowCache.keep` then arranges the cached columns first, as the join expects them
  (:meth:`~tiltmatch.models.denoiser.MaskedDenoiser.response_logits`, ``columns``): the
  prefix already is; the dual cache moves the suffix down once over the block's columns;
- every later step writes the window's keys and values into the slice after the cached
  columns and attends to the whole tensor; the next step overwrites the slice.

The keys and values a step attends to are the ones the ``DynamicCache`` path gave it, in the
same order and layout, so the sampler's tokens are the same (tests/test_sampler_cache.py).
It relies on transformers' cache interface (``Cache`` holding ``CacheLayerMixin`` layers,
whose ``update`` returns the keys and values a layer attends to, and whose
``get_seq_length`` and ``get_mask_sizes`` size the attention mask): transformers 5.x.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["WindowCache", "WindowLayer"]


class WindowLayer(CacheLayerMixin):
    """One layer's keys and values ``[B, H, P + L, D]``: ``held`` cached columns first, then
    the room a step's window is written into."""

    is_compileable = False
    is_sliding = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.held = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Nothing to allocate ahead: a refresh's own keys and values become the tensors."""
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a window's keys and values after the cached columns; return what it attends to.

        With nothing cached (a refresh) the forward's keys and values are every column: they
        are kept (contiguous, as a concatenation would have made them). Otherwise they are
        written into the columns ``[held, held + width)`` of the kept tensors, in place.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.held == 0 or self.keys is None or self.values is None:
            self.keys, self.values = key_states.contiguous(), value_states.contiguous()
            return self.keys, self.values
        stop = self.held + key_states.shape[-2]
        if stop > self.keys.shape[-2] or key_states.shape[0] != self.keys.shape[0]:
            raise ValueError(
                f"a window of {key_states.shape[-2]} columns after {self.held} cached ones does "
                f"not fit the cache's {self.keys.shape[-2]} columns of {self.keys.shape[0]} rows"
            )
        self.keys[..., self.held : stop, :] = key_states
        self.values[..., self.held : stop, :] = value_states
        if stop == self.keys.shape[-2]:
            return self.keys, self.values
        return self.keys[..., :stop, :], self.values[..., :stop, :]

    def keep(self, start: int, stop: int | None) -> None:
        """Keep the columns before ``start`` and, with ``stop``, those from ``stop`` on (moved
        down to follow the first ones); the rest is the window's room."""
        if self.keys is None or self.values is None:
            raise ValueError("nothing cached yet: a refresh must come first")
        if stop is not None and stop < self.keys.shape[-2]:
            moved = self.keys.shape[-2] - stop
            for tensor in (self.keys, self.values):
                tensor[..., start : start + moved, :] = tensor[..., stop:, :].clone()
            start += moved
        self.held = start

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep the cached rows ``rows`` only (a batch whose finished rows leave it)."""
        if self.keys is not None and self.values is not None:
            self.keys, self.values = self.keys[rows], self.values[rows]

    def restart(self) -> None:
        """Cache nothing: the next forward is a refresh (its tensors replace these)."""
        self.keys = self.values = None
        self.held = 0

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """The attention mask's key columns: the cached ones and the window's."""
        return self.held + query_length, 0

    def get_seq_length(self) -> int:
        """The cached columns (the window's room is not part of them)."""
        return self.held

    def get_max_length(self) -> int:
        """No maximum: a refresh sets the size."""
        return -1


class WindowCache(Cache):
    """transformers ``Cache`` of :class:`WindowLayer` layers: the cached sampler's keys and
    values, kept at ``prompt + response`` columns and written in place."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=WindowLayer)

    def _window_layers(self) -> list[WindowLayer]:
        layers = []
        for layer in self.layers:
            if not isinstance(layer, WindowLayer):
                raise TypeError(f"the sampler's cache needs full-attention layers, not {layer!r}")
            layers.append(layer)
        return layers

    def restart(self) -> None:
        """Drop every cached column: the next forward refreshes the cache."""
        for layer in self._window_layers():
            layer.restart()

    def keep(self, start: int, stop: int | None) -> None:
        """Keep the columns before ``start`` and, with ``stop``, from ``stop`` on, in that
        order (the prefix cache: ``stop`` None; the dual cache: ``stop`` the block's end)."""
        for layer in self._window_layers():
            layer.keep(start, stop)

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Keep the rows ``rows`` of every layer."""
        for layer in self._window_layers():
            layer.keep_rows(rows)
