"""The one registry of sampler strategies, and which of them may decode which model family.

A sampler strategy (:class:`tiltmatch.sampling.strategy.SamplerStrategy`) is registered by
name: :data:`SAMPLERS` holds the modes a ``sampler.mode`` (run config) or ``tiltmatch eval
--sampler`` may name; :data:`DECODERS` holds a model family's own decoders, which its
:class:`~tiltmatch.models.registry.FamilySpec` maps modes to (block diffusion: ``exact`` ->
``block``, ``parallel`` -> ``block+parallel``). Classes are named as ``module:Class`` and
imported only when first used, as the method and family registries do, so this module
imports neither torch nor the strategies and the run config can read it.

:func:`strategy_for` is the one place that decides which strategy decodes a sampler
configuration for a model family, or refuses the combination with one line naming it
(the run config's validation, ``tiltmatch eval --sampler`` and :func:`generate` itself
call it). Adding a strategy: a :class:`SamplerStrategy` subclass and one line here, or
:func:`register_sampler` from anywhere (docs/sampling.md).
"""

from __future__ import annotations

import importlib
from collections.abc import KeysView
from typing import TYPE_CHECKING, Any

from tiltmatch.models.registry import family_spec

if TYPE_CHECKING:
    from tiltmatch.sampling.config import SamplingConfig
    from tiltmatch.sampling.strategy import SamplerStrategy

_STRATEGIES = "tiltmatch.sampling.strategies"
_BLOCK = "tiltmatch.sampling.families"

#: the sampler modes, by name: a strategy class, or where it is defined
SAMPLERS: dict[str, Any] = {
    "exact": f"{_STRATEGIES}:ExactSampler",
    "cached": f"{_STRATEGIES}:CachedSampler",
    "parallel": f"{_STRATEGIES}:ParallelSampler",
    "cached+parallel": f"{_STRATEGIES}:CachedParallelSampler",
    "ancestral": "tiltmatch.sampling.ancestral:AncestralSampler",
}
#: the model families' own decoders, by name (a family's spec maps modes to them)
DECODERS: dict[str, Any] = {
    "block": f"{_BLOCK}:BlockSampler",
    "block+parallel": f"{_BLOCK}:BlockParallelSampler",
}
#: what a strategy may need of a model (``SamplerStrategy.needs``), as messages say it
CAPABILITIES = {
    "window_cache": "reuses the cached keys and values of the columns outside the step's window",
}


class SamplerRefused(ValueError):
    """A sampler configuration that cannot decode a model family; the message names both."""


def sampler_modes() -> KeysView[str]:
    """The registered mode names (a live view: a mode registered later is in it)."""
    return SAMPLERS.keys()


def register_sampler(
    strategy: type[SamplerStrategy], decoder: bool = False, replace: bool = False
) -> type[SamplerStrategy]:
    """Register ``strategy`` under its ``name``: as a mode, or (``decoder``) as a family's
    own decoder; a taken name only with ``replace``. Usable as a class decorator."""
    table = DECODERS if decoder else SAMPLERS
    name = strategy.name
    if not name:
        raise ValueError(f"{strategy.__name__} has no name")
    if name in table and not replace:
        raise ValueError(f"sampler strategy {name!r} is already registered")
    table[name] = strategy
    return strategy


def check_sampler_mode(name: str) -> str:
    """``name`` if it is a registered mode, else a ``ValueError`` listing the known ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler mode {name!r}; known modes: {', '.join(SAMPLERS)}")
    return name


def _resolve(table: dict[str, Any], name: str, what: str) -> type[SamplerStrategy]:
    entry = table.get(name)
    if entry is None:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(table)}")
    if isinstance(entry, str):
        module_name, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module_name), attribute)
        table[name] = entry
    return entry  # type: ignore[no-any-return]


def sampler_class(mode: str) -> type[SamplerStrategy]:
    """The strategy class of sampler mode ``mode`` (imported on first use)."""
    return _resolve(SAMPLERS, mode, "sampler mode")


def decoder_class(name: str) -> type[SamplerStrategy]:
    """The class of a family's own decoder ``name`` (imported on first use)."""
    return _resolve(DECODERS, name, "family decoder")


def readers_of(setting: str) -> list[str]:
    """The registered modes whose strategy reads ``setting`` (a SamplingConfig field)."""
    return [mode for mode in SAMPLERS if setting in sampler_class(mode).reads]


def strategy_for(
    family: str, config: SamplingConfig, where: str = "sampler.mode", section: str = "sampler."
) -> type[SamplerStrategy]:
    """The strategy that decodes ``config`` for a model of ``family``, or
    :class:`SamplerRefused` naming the combination (``where``: how the caller names the mode,
    ``section``: the prefix of its other settings' names).

    A family whose spec names ``decoders`` is decoded by them, for those modes only; any
    other family by the mode's own strategy, unless that strategy needs a capability the
    family's spec ``refuses``. The chosen strategy then checks the settings it does not
    read (:meth:`SamplerStrategy.setting_refusal`).
    """
    spec = family_spec(family)
    mode = config.mode
    head = f"{where}={mode!r} cannot decode a {spec.label} model (model family {spec.name!r})"
    if spec.decoders:
        if mode not in spec.decoders:
            raise SamplerRefused(
                f"{head}: it is decoded by its own decoder, which honours modes "
                f"{', '.join(spec.decoders)}"
            )
        strategy = decoder_class(spec.decoders[mode])
    else:
        strategy = sampler_class(check_sampler_mode(mode))
        for need in sorted(strategy.needs):
            if need in spec.refuses:
                why = CAPABILITIES.get(need, f"needs {need}")
                raise SamplerRefused(f"{head}: the mode {why}, and {spec.refuses[need]}")
    who = f"the {spec.label} decoder (mode {mode!r})" if spec.decoders else f"mode {mode!r}"
    refusal = strategy.setting_refusal(config, who, section)
    if refusal is not None:
        raise SamplerRefused(refusal)
    return strategy
