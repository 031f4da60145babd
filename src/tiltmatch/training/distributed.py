"""The process group under data parallelism: where this process stands and how ranks talk.

``accelerate launch --config_file configs/accelerate/{ddp,fsdp}.yaml ...`` (or
``torchrun``) starts the processes; :func:`process_context` reads the launch
(rank, world size, device, the FSDP settings) and initialises
``torch.distributed`` through accelerate. With one process it returns at once
and never imports accelerate. A DeepSpeed launch is refused with an
explanation. The rest are the collectives the strategies of
:mod:`tiltmatch.training.parallel` use, and the per-rank seeds and shares.

What the trainer does differently on several processes (per-rank buffers,
gradient averaging, sharded weights, checkpoints, evaluation) is
:mod:`tiltmatch.training.parallel`'s business; this module knows nothing of
the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: gradients are all-reduced in flat buckets of at most this many bytes
BUCKET_BYTES = 256 * 2**20


#: what ``fully_shard`` wraps when the accelerate config names no layer class: empty means
#: the model's own decoder layers (``tiltmatch.models.family.decoder_layer_classes``)
DEFAULT_LAYER_CLASSES: tuple[str, ...] = ()


@dataclass(frozen=True)
class FSDPSettings:
    """The accelerate FSDP settings the trainer honours."""

    #: free the gathered weights after each forward (ZeRO-3); ``False`` keeps them until
    #: backward (ZeRO-2-like: FSDP1's SHARD_GRAD_OP)
    reshard_after_forward: bool = True
    #: module class names that each become one FSDP unit
    layer_classes: tuple[str, ...] = DEFAULT_LAYER_CLASSES


def _flag(name: str) -> bool:
    """Whether the launcher set environment flag ``name`` (accelerate's spelling)."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def fsdp_settings_from_env() -> FSDPSettings:
    """The settings ``accelerate launch`` passes for an FSDP config (read by accelerate's plugin).

    Settings the trainer cannot honour are refused by name: CPU offload, the
    ``NO_SHARD``/hybrid strategies, and an auto-wrap policy other than
    transformer-based (size-based wrapping has no fixed unit to shard).
    """
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if _flag("FSDP_OFFLOAD_PARAMS"):
        raise NotImplementedError("fsdp_offload_params: tiltmatch does not offload weights to CPU")
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP").upper()
    if policy != "TRANSFORMER_BASED_WRAP":
        raise NotImplementedError(
            f"fsdp_auto_wrap_policy={policy}: tiltmatch shards per decoder layer; use "
            "TRANSFORMER_BASED_WRAP with fsdp_transformer_layer_cls_to_wrap"
        )
    reshard = plugin.reshard_after_forward
    if reshard is None:  # FSDP1 settings keep the strategy under its old name
        reshard = plugin.sharding_strategy
    if not isinstance(reshard, bool):  # FSDP1 names: 1 FULL_SHARD, 2 SHARD_GRAD_OP, ...
        strategy = getattr(reshard, "name", str(reshard)).upper()
        if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP", "1", "2"):
            raise NotImplementedError(
                f"fsdp_sharding_strategy={strategy}: tiltmatch supports FULL_SHARD and "
                "SHARD_GRAD_OP"
            )
        reshard = strategy in ("FULL_SHARD", "1")
    names = plugin.transformer_cls_names_to_wrap or list(DEFAULT_LAYER_CLASSES)
    if isinstance(names, str):
        names = names.split(",")
    return FSDPSettings(bool(reshard), tuple(n.strip() for n in names if n.strip()))


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: set when the launch asked for FSDP: the weights are sharded over the ranks
    fsdp: FSDPSettings | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes logs and checkpoints."""
        return self.rank == 0


def world_size_from_env() -> int:
    """The number of processes a launcher (accelerate, torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _refuse_deepspeed_launch() -> None:
    if _flag("ACCELERATE_USE_DEEPSPEED"):
        # Why not: DeepSpeed's engine owns the optimiser step, gradient clipping and LR
        # schedule, which the trainer restarts at every DTM stage (METHOD.md section 6).
        raise NotImplementedError(
            "the tiltmatch trainer runs DDP or FSDP; DeepSpeed was requested by the accelerate "
            "config. For ZeRO-2's sharding of gradients and optimiser states use "
            "configs/accelerate/fsdp.yaml with fsdp_reshard_after_forward: false (or "
            "fsdp_sharding_strategy: SHARD_GRAD_OP), or configs/accelerate/ddp.yaml with LoRA; "
            "see the header of configs/accelerate/deepspeed_zero2.yaml."
        )


def process_context(cpu: bool | None = None) -> DistributedContext:
    """This process's rank, world size and device; initialises the process group if needed.

    One process: no process group and no accelerate import. Several (started
    by ``accelerate launch`` or ``torchrun``): accelerate's ``PartialState``
    initialises ``torch.distributed`` (NCCL on GPUs, gloo on CPUs) from the
    launcher's environment. ``cpu`` forces CPU processes (default: when no GPU).
    """
    if cpu is None:  # `accelerate launch --cpu` says so through the environment
        cpu = _flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    if world_size_from_env() <= 1:
        device = torch.device("cpu" if cpu else "cuda")
        return DistributedContext(device=device)
    _refuse_deepspeed_launch()
    fsdp = fsdp_settings_from_env() if _flag("ACCELERATE_USE_FSDP") else None
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    if state.num_processes <= 1 or not dist.is_initialized():
        raise RuntimeError(
            f"WORLD_SIZE={world_size_from_env()} but no process group was initialised "
            f"(accelerate state: {state.distributed_type})"
        )
    return DistributedContext(
        rank=state.process_index,
        world_size=state.num_processes,
        local_rank=state.local_process_index,
        device=torch.device(state.device),
        fsdp=fsdp,
    )


def rank_seed(seed: int, rank: int) -> int:
    """A seed per rank, fixed by the run's seed; rank 0 keeps the run's own seed."""
    return seed + 1_000_003 * rank


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s share of ``items``: every ``world_size``-th item, from ``rank`` on."""
    return list(items[rank::world_size])


def unshard(shards: Sequence[Sequence[T]]) -> list[T]:
    """Undo :func:`shard`: the items of every rank's share, back in their original order."""
    world = len(shards)
    total = sum(len(s) for s in shards)
    return [shards[j % world][j // world] for j in range(total)]


# -- collectives (callable only inside an initialised process group) -------------------------


def all_reduce_mean_(tensors: Sequence[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average ``tensors`` over ranks, in place: one flat all-reduce per bucket.

    Consecutive tensors of one dtype and device share a bucket of at most
    ``bucket_bytes`` (a single larger tensor gets a bucket of its own).
    """
    world = dist.get_world_size()
    bucket: list[torch.Tensor] = []
    size = 0

    def flush() -> None:
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)  # a sum: gloo has no average
        flat.div_(world)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if bucket and (
            t.dtype != bucket[0].dtype
            or t.device != bucket[0].device
            or size + nbytes > bucket_bytes
        ):
            flush()
            bucket, size = [], 0
        bucket.append(t)
        size += nbytes
    if bucket:
        flush()


def reduce_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Scalars combined over ranks: the max for names holding "max", the min for "min",
    the mean otherwise. Every rank must pass the same names."""
    names = sorted(values)
    if not names:
        return {}
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=device)
    total, high, low = t.clone(), t.clone(), t.clone()
    dist.all_reduce(total)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    out = {}
    for i, k in enumerate(names):
        src = high if "max" in k else low if "min" in k else total / dist.get_world_size()
        out[k] = float(src[i])
    return out


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (pickled: for small Python objects)."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` on rank 0 (in rank order); ``None`` on the other ranks."""
    main = dist.get_rank() == 0
    out: list[Any] | None = [None] * dist.get_world_size() if main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_rows(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Every rank's ``t`` (same shape on each) stacked along dim 0, on ``t``'s device."""
    local = t.to(device).contiguous()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(t.device)


def close_process_group() -> None:
    """Wait for every rank, then destroy the process group (a no-op with one process).

    Call it before a multi-process job exits: a process that exits with the group
    still alive can abort in gloo's worker threads during interpreter shutdown
    ("terminate called without an active exception") and take the job down.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = [
    "DistributedContext",
    "FSDPSettings",
    "all_gather_object",
    "all_gather_rows",
    "all_reduce_mean_",
    "close_process_group",
    "fsdp_settings_from_env",
    "gather_object_to_main",
    "process_context",
    "rank_seed",
    "reduce_scalars",
    "shard",
    "unshard",
    "world_size_from_env",
]
