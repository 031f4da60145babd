"""The one registry of model families: what the package needs to know about each.

A family (LLaDA, Dream, block diffusion, ...) is a :class:`FamilySpec` defined in its own
room (``models/<family>.py``, as ``FAMILY``) and registered here by name. The built-in
families are named as ``module:attribute`` and imported only when first asked for, as the
method registry does (:mod:`tiltmatch.training.methods`), so this module imports nothing of
the package, neither torch nor transformers, and the run config can read it.

Every caller reads the spec: the run config's ``model.family`` (:func:`check_family_name`),
the one dispatch on a released ``config.json`` (:func:`checkpoint_family`), the loaders
(``spec.load``), :func:`tiltmatch.models.denoiser.tiny_denoiser` (``spec.tiny_config``,
``spec.model_class``), the denoiser's hook (:func:`tiltmatch.models.family.family_of`:
``logit_shift``, ``block_causal``) and the sampler (``spec.decoders``, ``spec.refuses``;
:func:`tiltmatch.sampling.registry.strategy_for`).

Adding a family: a module with its config map, loader and tiny config builder and a
``FAMILY = FamilySpec(...)``, then one line in :data:`FAMILIES` (or
:func:`register_family` with the spec itself, from anywhere: docs/families.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: the model config attribute that records a denoiser's family (absent: the default family)
FAMILY_KEY = "dllm_family"
#: the model config attribute that records a block-causal model's block size
BLOCK_SIZE_KEY = "dllm_block_size"
#: the family of a model config without :data:`FAMILY_KEY` (and of a fresh tiny model)
DEFAULT_FAMILY = "llada"
#: every attention and MLP projection: the LoRA targets of Llama, Qwen2 and Qwen3
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FamilySpec:
    """One model family: its hook, how its released ``config.json`` is recognised, how a
    folder of it and a tiny model of it are built, and what the samplers may ask of it.

    - ``name``: the registry key (``model.family``, the config's ``dllm_family``);
      ``label``: how messages and docs name it.
    - ``architecture``: the transformers ``model_type`` its models are built on
      (``llama``, ``qwen2``, ``qwen3``); ``model_class``: that transformers class.
    - The hook :class:`~tiltmatch.models.denoiser.MaskedDenoiser` reads
      (:mod:`tiltmatch.models.family`): ``logit_shift`` (position ``i`` read from the
      hidden state at ``i - 1``), ``block_causal`` (bidirectional inside blocks of the
      config's ``dllm_block_size``, causal across them).
    - Recognising a released ``config.json``: its ``model_type`` in ``model_types``, an
      entry of ``architectures`` in its ``architectures``, or one of ``config_keys``
      present (a saved denoiser's ``dllm_family`` always decides first).
    - ``load(folder, dtype) -> (model, codec)``: a folder in the family's released (or
      converted) format; ``tiny_config(vocab_size, TinyModelSpec) -> PretrainedConfig``:
      a fresh tiny model's config (``tiny_denoiser`` records the family in it).
    - ``mask_token``, ``end_of_turn_token``: the token strings its special ids are read
      by when a config does not record them (``tiltmatch.models.special_ids``).
    - Sampling: ``decoders`` maps each sampler mode this family honours to its own decoder
      (a name in ``tiltmatch.sampling.registry.DECODERS``) when the common sampler cannot
      decode it; empty: every sampler mode, except those needing a capability named in
      ``refuses`` (capability -> why this family lacks it).
    - ``refuses_states``: DTM state kinds (``dtm.states``) this family's denoiser cannot be
      trained on, beside the hook's own rule (a block-causal family takes ``block`` or
      ``trajectory`` states only), each with the reason (the trainer refuses them, naming it).
    - ``lora_targets``: the module names LoRA adapts by default.
    """

    name: str
    label: str
    architecture: str
    model_class: type[Any]
    load: Callable[..., Any]
    tiny_config: Callable[..., Any]
    logit_shift: bool = False
    block_causal: bool = False
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    mask_token: str | None = None
    end_of_turn_token: str | None = None
    decoders: Mapping[str, str] = field(default_factory=dict)
    refuses: Mapping[str, str] = field(default_factory=dict)
    refuses_states: Mapping[str, str] = field(default_factory=dict)
    lora_targets: tuple[str, ...] = PROJECTIONS

    def recognises(self, cfg: Mapping[str, Any]) -> bool:
        """Whether a ``config.json`` dict is this family's (released, converted or saved)."""
        if cfg.get(FAMILY_KEY) is not None:
            return bool(cfg.get(FAMILY_KEY) == self.name)
        return (
            cfg.get("model_type") in self.model_types
            or any(a in self.architectures for a in cfg.get("architectures") or [])
            or any(key in cfg for key in self.config_keys)
        )


#: the families by name: a spec, or where its module defines it (imported when first used)
FAMILIES: dict[str, FamilySpec | str] = {
    "llada": "tiltmatch.models.llada:FAMILY",
    "dream": "tiltmatch.models.dream:FAMILY",
    "block_diffusion": "tiltmatch.models.block_diffusion:FAMILY",
    "llada2": "tiltmatch.models.llada2:FAMILY",
    "mdlm": "tiltmatch.models.mdlm:FAMILY",
    "bd3lm": "tiltmatch.models.bd3lm:FAMILY",
}


def register_family(spec: FamilySpec, replace: bool = False) -> FamilySpec:
    """Add ``spec`` to :data:`FAMILIES` under its name (a taken name only with ``replace``)."""
    if spec.name in FAMILIES and not replace:
        raise ValueError(f"model family {spec.name!r} is already registered")
    FAMILIES[spec.name] = spec
    return spec


def family_names() -> tuple[str, ...]:
    """The registered family names, in registration order."""
    return tuple(FAMILIES)


def check_family_name(name: str) -> str:
    """``name`` if it is a registered family, else a ``ValueError`` listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(FAMILIES)}")
    return name


def family_spec(name: str) -> FamilySpec:
    """The registered spec of family ``name`` (its module imported on first use)."""
    entry = FAMILIES.get(check_family_name(name))
    if isinstance(entry, str):
        module_name, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(entry, FamilySpec) or entry.name != name:
            raise TypeError(f"{FAMILIES[name]} is not the FamilySpec of {name!r}")
        FAMILIES[name] = entry
    assert isinstance(entry, FamilySpec)
    return entry


def checkpoint_family(cfg: Mapping[str, Any]) -> str:
    """The family of a released, converted or saved checkpoint's ``config.json`` dict.

    The one dispatch on a folder's format: a recorded ``dllm_family`` decides; otherwise the
    first registered family that recognises the config (:meth:`FamilySpec.recognises`).
    """
    recorded = cfg.get(FAMILY_KEY)
    if recorded is not None:
        if recorded not in FAMILIES:
            raise ValueError(
                f"config.json: {FAMILY_KEY} {recorded!r} is not a registered model family "
                f"({', '.join(FAMILIES)})"
            )
        return str(recorded)
    specs = [family_spec(name) for name in FAMILIES]
    for spec in specs:
        if spec.recognises(cfg):
            return spec.name
    known = ", ".join(
        f"{s.label} ({', '.join(repr(t) for t in s.model_types) or s.name})" for s in specs
    )
    raise ValueError(
        f"config.json: model_type {cfg.get('model_type')!r} (architectures "
        f"{cfg.get('architectures')}) is none of the supported families: {known}"
    )
