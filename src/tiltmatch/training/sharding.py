"""Fully sharded data parallelism (FSDP2): the data-parallel trainer with sharded weights.

Launch with ``accelerate launch --config_file configs/accelerate/fsdp.yaml ...``.
Everything :mod:`tiltmatch.training.distributed` says about rollouts, buffers, stage
statistics, logs and evaluation holds; what changes is where the weights live.
Each model the pair holds (student, teacher, EMA and reference copies, or the
one PEFT model carrying the student and teacher adapters) is sharded with
PyTorch's ``fully_shard``: one unit per decoder layer (the accelerate config's
``fsdp_transformer_layer_cls_to_wrap``) plus the root, every parameter a
``DTensor`` split along its first dimension over the ranks. A forward gathers
one layer at a time, so the teacher's and the sampler's forwards are collective
too; the trainer keeps them in lockstep by giving every rank the same number of
forwards (equal buffers, and evaluation shards padded to equal length).

- Placement: :mod:`tiltmatch.training.runner` builds the pair on the CPU under FSDP;
  ``fully_shard`` moves one layer at a time to the launch's GPU and shards it,
  so no GPU holds the whole student, teacher and reference copies at once (the
  host does, once per rank). A 4-bit base cannot be sharded (refused).
- Gradients: ``fully_shard`` reduce-scatters them during ``backward`` and
  averages over ranks, so no extra all-reduce is done; gradient clipping,
  AdamW and the per-stage optimiser reset (METHOD.md section 6) work on the
  sharded parameters unchanged.
- Teacher refresh and EMA: the copies have the same shapes, so their shards
  line up and each rank copies its own shard.
- Checkpoints: every rank gathers each sharded tensor (one at a time, to the
  CPU) and rank 0 writes the usual single checkpoint; on resume every rank
  reads it and keeps its own shard. Checkpoints are therefore interchangeable
  with data-parallel ones of the same world size.

Why FSDP2 and not accelerate's FSDP1 wrapper: per-parameter sharding keeps
frozen base weights and trainable adapters apart without ``use_orig_params``,
and the teacher and student shards line up parameter by parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from tiltmatch.training.distributed import DistributedTrainer, FSDPSettings


def shard_module(module: nn.Module, settings: FSDPSettings) -> None:
    """``fully_shard`` every layer of the named classes, then the root (in place)."""
    from torch.distributed.fsdp import fully_shard

    from tiltmatch.models.family import decoder_layer_classes

    # No class named by the launch: the model's own decoder layers (_no_split_modules).
    wanted = set(settings.layer_classes or decoder_layer_classes(module))
    layers = [m for m in module.modules() if type(m).__name__ in wanted]
    if not layers:
        found = sorted({type(m).__name__ for m in module.modules() if "Layer" in type(m).__name__})
        raise ValueError(
            f"fsdp_transformer_layer_cls_to_wrap={sorted(wanted)} matches no module of "
            f"{type(module).__name__}; its layer classes: {found}"
        )
    for layer in layers:
        fully_shard(layer, reshard_after_forward=settings.reshard_after_forward)
    fully_shard(module, reshard_after_forward=settings.reshard_after_forward)


def full_tensors(obj: Any) -> Any:
    """``obj`` with every ``DTensor`` replaced by the whole tensor on the CPU.

    Collective: every rank must call it with the same structure (dictionaries are
    walked in their insertion order, which is the same on every rank).
    """
    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, Mapping):
        return {k: full_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(full_tensors(v) for v in obj)
    return obj


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``like``: this rank's shard if ``like`` is one."""
    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(
        value.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements
    )


def shard_groups(
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    like: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[str, dict[str, torch.Tensor]]:
    """Checkpointed weight groups (whole tensors) laid out as the pair's own (``like``)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensors in groups.items():
        ref = like.get(name, {})
        out[name] = {k: shard_like(v, ref[k]) if k in ref else v for k, v in tensors.items()}
    return out


def shard_optimizer_state(state: dict[str, Any], params: list[nn.Parameter]) -> dict[str, Any]:
    """An optimiser ``state_dict`` of whole tensors laid out as ``params`` (in group order)."""
    per_param = state.get("state", {})
    out_state = {}
    for index, values in per_param.items():
        param = params[int(index)]
        out_state[index] = {
            k: shard_like(v, param) if isinstance(v, torch.Tensor) and v.shape == param.shape else v
            for k, v in values.items()
        }
    return {**state, "state": out_state}


class ShardedTrainer(DistributedTrainer):
    """The data-parallel trainer with every model of the pair sharded (module docstring)."""

    def _shard_weights(self) -> None:
        """Shard every model of the pair, after the parent checked the whole weights agree."""
        settings = self.context.fsdp
        if settings is None:
            raise ValueError("ShardedTrainer needs the FSDP settings of the launch")
        self.pair.apply_sharding(lambda module: shard_module(module, settings))

    def _average_gradients(self) -> None:
        """Nothing to do: ``fully_shard`` reduce-scattered (and averaged) them in backward."""

    def _write_checkpoint(
        self, tensors: dict[str, dict[str, torch.Tensor]], objects: dict[str, Any], meta: Any
    ) -> Path:
        """Gather every shard (all ranks), then write the single checkpoint as DDP does."""
        return super()._write_checkpoint(full_tensors(tensors), full_tensors(objects), meta)

    def _localise_weights(
        self, groups: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, dict[str, torch.Tensor]]:
        return shard_groups(groups, self.pair.state_dict())

    def _localise_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        assert self.optimizer is not None
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return shard_optimizer_state(state, params)

    def student_weights_to_save(self) -> dict[str, torch.Tensor] | None:
        """The student's whole weights, gathered on every rank (collective)."""
        return full_tensors(self.pair.student_weights())


__all__ = [
    "ShardedTrainer",
    "full_tensors",
    "shard_groups",
    "shard_like",
    "shard_module",
    "shard_optimizer_state",
]
