"""Parallelism as a strategy the one :class:`~tiltmatch.training.trainer.Trainer` receives.

The trainer's loop is the same on one process and on many; a
:class:`Parallelism` says what differs at the few points where processes must
agree. :func:`make_parallel` picks it from the launch
(:func:`~tiltmatch.training.distributed.process_context`):

- :class:`SingleProcess`: every step is the plain single-process action.
- :class:`DataParallel` (``configs/accelerate/ddp.yaml``), ``N`` processes with
  DDP semantics:

  - Rollouts: each rank keeps its own replay buffer of ``train.buffer_prompts``
    prompts, drawn from its own disjoint share of the training prompt pool, and
    samples them with its own generator (seeded ``rank_seed(seed, rank)``). All
    batch and buffer sizes in the config are per process, like TRL's
    ``per_device_*`` sizes: the global micro-batch is ``N x prompts_per_batch``.
    The published recipes (METHOD.md section 6) need this reading: Countdown's
    12 prompts per micro-batch do not fit in 40/8 = 5 buffer prompts per GPU.
  - Stage choice: every rank sees the rewards of all ranks' buffers, so the
    adaptive ``h`` and the stage statistics agree everywhere.
  - Gradients: averaged over ranks once per optimiser update (after the
    gradient-accumulation micro-batches), bucketed into flat all-reduces. This
    is exactly what DDP with ``no_sync`` on all but the last micro-batch
    computes; it is done by hand because the LoRA student is one adapter of a
    model it shares with the teacher (DDP wraps a module, fixes its buckets at
    wrap time and by default broadcasts all of the module's weights, the frozen
    8B base included, which fits that badly). Each rank then takes the same
    AdamW step, so replicas stay identical, which is checked when training
    starts.
  - Logs and checkpoints: rank 0 alone writes them. A checkpoint holds the
    shared state once plus every rank's own buffer and RNG states; every rank
    reads it on resume and takes its own part back.
  - Evaluation: the held-out examples are split over ranks and the sampled
    texts gathered, so each metric is the task's own over the whole set.

- :class:`Sharded` (``configs/accelerate/fsdp.yaml``, FSDP2): data parallelism
  as above with every model of the pair (student, teacher, EMA and reference
  copies, or the one PEFT model carrying the student and teacher adapters)
  sharded by PyTorch's ``fully_shard``: one unit per decoder layer (the
  accelerate config's ``fsdp_transformer_layer_cls_to_wrap``) plus the root,
  every parameter a ``DTensor`` split along its first dimension. A forward
  gathers one layer at a time, so the teacher's and the sampler's forwards are
  collective too; the trainer keeps them in lockstep by giving every rank the
  same number of forwards (equal buffers, evaluation shares padded to equal
  length).

  - Placement: :mod:`tiltmatch.training.runner` builds the pair on the CPU
    under FSDP; ``fully_shard`` moves one layer at a time to the launch's GPU
    and shards it, so no GPU holds the whole student, teacher and reference
    copies at once (the host does, once per rank). A 4-bit base cannot be
    sharded (refused).
  - Gradients: ``fully_shard`` reduce-scatters them during ``backward`` and
    averages over ranks, so no extra all-reduce is done; gradient clipping,
    AdamW and the per-stage optimiser reset (METHOD.md section 6) work on the
    sharded parameters unchanged.
  - Teacher refresh and EMA: the copies have the same shapes, so their shards
    line up and each rank copies its own shard.
  - Checkpoints: every rank gathers each sharded tensor (one at a time, to the
    CPU) and rank 0 writes the usual single checkpoint; on resume every rank
    reads it and keeps its own shard. Checkpoints are therefore
    interchangeable with data-parallel ones of the same world size.

  Why FSDP2 and not accelerate's FSDP1 wrapper: per-parameter sharding keeps
  frozen base weights and trainable adapters apart without
  ``use_orig_params``, and the teacher and student shards line up parameter by
  parameter.

The DeepSpeed launch is refused in :func:`~tiltmatch.training.distributed.process_context`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tiltmatch.tasks.base import Example
from tiltmatch.training.checkpoint import save_checkpoint
from tiltmatch.training.distributed import (
    DistributedContext,
    FSDPSettings,
    all_gather_object,
    all_gather_rows,
    all_reduce_mean_,
    gather_object_to_main,
    process_context,
    rank_seed,
    reduce_scalars,
    shard,
    unshard,
)
from tiltmatch.training.evaluation import SampleTexts
from tiltmatch.training.pair import DenoiserPair

#: a checkpoint's tensor groups: group name -> parameter name -> tensor
WeightGroups = dict[str, dict[str, torch.Tensor]]


class Parallelism:
    """What the trainer asks of the processes it runs on (one, or several in lockstep).

    Each method's body here is the one-process action (:class:`SingleProcess`);
    :class:`DataParallel` and :class:`Sharded` override what must agree across
    processes. Methods documented "collective" must be called by every rank, in
    the same order; the trainer does so.
    """

    #: this process's rank and the number of processes
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (logs, checkpoints, the final model)."""
        return self.rank == 0

    def process_seed(self, seed: int) -> int:
        """The seed of this process's own randomness (rollouts, states, evaluation)."""
        return rank_seed(seed, self.rank)

    def prepare(self, pair: DenoiserPair, seed: int) -> None:
        """Once, before training: seed this process, check the replicas, place the weights.

        On one process nothing: the run's seed is set and the weights are where the
        runner put them.
        """

    def training_share(self, examples: Sequence[Example]) -> list[Example]:
        """This process's share of the training prompt pool (on one process, all of it)."""
        return list(examples)

    def all_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """The buffer rewards ``[P, G]`` of every process, so that all choose the same ``h``."""
        return rewards

    def synchronise(
        self, parameters: Iterable[nn.Parameter], loss: float, extras: dict[str, float]
    ) -> tuple[float, dict[str, float]]:
        """Average the student's gradients, the logged loss and the diagnostics (collective);
        on one process there is nothing to average."""
        return loss, extras

    def write_checkpoint(
        self,
        path: Path,
        tensors: WeightGroups,
        own: dict[str, Any],
        shared: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        """Write the checkpoint folder (collective); on one process, with everything in it.

        ``own``: this process's private state (its buffer and RNG); ``shared``:
        state every process holds alike (optimiser, LR schedule).
        """
        return save_checkpoint(path, tensors, {**own, **shared}, meta)

    def own_state(self, objects: dict[str, Any]) -> dict[str, Any]:
        """This process's ``own`` state, out of a checkpoint's objects: on one process the
        top-level buffer and RNG states (a data-parallel checkpoint's are rank 0's)."""
        return objects

    def localise_weights(self, groups: WeightGroups, pair: DenoiserPair) -> WeightGroups:
        """Checkpointed weights as this process holds them: whole, unless sharded."""
        return groups

    def localise_optimizer_state(
        self, state: dict[str, Any], optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """A checkpointed optimiser state as this process holds it: whole, unless sharded."""
        return state

    def student_weights_to_save(self, pair: DenoiserPair) -> dict[str, torch.Tensor] | None:
        """The student's whole weights for the final save when they are not whole here, else
        None (collective)."""
        return None

    def sample_shares(
        self, examples: Sequence[Example], sample: SampleTexts, seed: int
    ) -> list[list[str]]:
        """The sampled texts of every example, in order (collective).

        ``sample(share, seed)`` samples a share of the examples; on one process
        the share is all of them, drawn with ``seed``.
        """
        return sample(examples, seed)


class SingleProcess(Parallelism):
    """One process: nothing to share, every step is the plain action (:class:`Parallelism`'s)."""


class DataParallel(Parallelism):
    """One of several data-parallel processes, each holding the whole model (DDP semantics)."""

    def __init__(self, context: DistributedContext) -> None:
        if context.world_size < 2 or not dist.is_initialized():
            raise ValueError("data parallelism needs an initialised group of 2+ processes")
        self.context = context
        self.rank, self.world_size = context.rank, context.world_size

    def prepare(self, pair: DenoiserPair, seed: int) -> None:
        """Seed this rank's torch RNG (dropout), check that the ranks built the same model,
        then place its weights."""
        torch.manual_seed(rank_seed(seed, self.rank))
        self._check_replicas_agree(pair)
        self._place(pair)

    def _place(self, pair: DenoiserPair) -> None:
        """Where the weights go once the ranks agree on them: replicated, as they are."""

    def training_share(self, examples: Sequence[Example]) -> list[Example]:
        """Every ``world_size``-th prompt from ``rank`` on: disjoint prompts per rank (the
        same pool everywhere would sample the same prompts N times)."""
        mine = shard(examples, self.rank, self.world_size)
        if not mine:
            raise ValueError(
                f"train.train_examples={len(examples)} leaves no prompts for rank "
                f"{self.rank} of {self.world_size}"
            )
        return mine

    def all_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """Rewards ``[N x P, G]`` of every rank's buffer, rank by rank."""
        return all_gather_rows(rewards, self.context.device)

    def synchronise(
        self, parameters: Iterable[nn.Parameter], loss: float, extras: dict[str, float]
    ) -> tuple[float, dict[str, float]]:
        """Average the student's gradients over ranks; combine the logged scalars."""
        self._average_gradients(parameters)
        numbers = {k: float(v) for k, v in extras.items() if isinstance(v, int | float)}
        combined = reduce_scalars({**numbers, "loss": loss}, self.context.device)
        loss = combined.pop("loss")
        return loss, {**extras, **combined}

    def _average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """The gradients' mean over ranks, in one bucketed all-reduce."""
        grads = []
        for p in parameters:
            if p.grad is None:  # unused on this rank: DDP counts it as a zero gradient
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        all_reduce_mean_(grads)

    def _whole(self, obj: Any) -> Any:
        """``obj`` with whole tensors, as the checkpoint holds them: as it is (replicas)."""
        return obj

    def write_checkpoint(
        self,
        path: Path,
        tensors: WeightGroups,
        own: dict[str, Any],
        shared: dict[str, Any],
        meta: dict[str, Any],
    ) -> Path:
        """Rank 0 writes the shared state once, plus every rank's own state under ``ranks``."""
        tensors, shared = self._whole(tensors), self._whole(shared)
        ranks = gather_object_to_main(own)
        if self.is_main:
            meta = {**meta, "world_size": self.world_size}
            save_checkpoint(path, tensors, {**own, **shared, "ranks": ranks}, meta)
        dist.barrier()  # nobody moves on (or resumes) before the checkpoint exists
        return path

    def own_state(self, objects: dict[str, Any]) -> dict[str, Any]:
        """This rank's own buffer and RNG states; refused from another world size."""
        ranks = objects.get("ranks")
        if ranks is None:
            raise ValueError(
                "this checkpoint was written by a single process; a data-parallel run resumes "
                "only from a data-parallel checkpoint"
            )
        if len(ranks) != self.world_size:
            raise ValueError(
                f"this checkpoint was written by {len(ranks)} processes; resume it with "
                f"{len(ranks)}, not {self.world_size}"
            )
        return ranks[self.rank]

    def sample_shares(
        self, examples: Sequence[Example], sample: SampleTexts, seed: int
    ) -> list[list[str]]:
        """The texts of every example, each rank sampling its share (seeded per rank).

        Every rank runs the same forwards (a sharded forward is collective under
        FSDP): a share shorter than the longest is padded with copies of its
        first example (or of the set's first), whose samples are dropped before
        the shares are joined.
        """
        rank, world = self.rank, self.world_size
        shares = [shard(examples, r, world) for r in range(world)]
        mine = shares[rank]
        filler = (mine or list(examples))[:1]
        padded = mine + filler * (max(len(s) for s in shares) - len(mine))
        texts: list[list[str]] = []
        if padded:
            texts = sample(padded, rank_seed(seed, rank))
        gathered = all_gather_object(texts)
        return unshard([t[: len(shares[r])] for r, t in enumerate(gathered)])

    @torch.no_grad()
    def _check_replicas_agree(self, pair: DenoiserPair) -> None:
        """Fail early if the ranks' models differ (e.g. built without the same seed)."""
        sums = []
        for group in pair.state_dict().values():
            for t in group.values():
                d = t.detach().double()
                sums.append(torch.stack([d.sum(), d.abs().sum()]))
        local = torch.stack(sums).to(self.context.device)
        everyone = all_gather_rows(local[None], self.context.device)
        if not torch.allclose(everyone, everyone[:1].expand_as(everyone), rtol=1e-12, atol=0):
            raise RuntimeError(
                "the model differs between ranks: build it with the same seed on every rank "
                "(torch.manual_seed(config.seed) before loading it and adding adapters)"
            )


class Sharded(DataParallel):
    """Data parallelism with every model of the pair sharded by FSDP2 (module docstring)."""

    def __init__(self, context: DistributedContext) -> None:
        if context.fsdp is None:
            raise ValueError("sharding needs the FSDP settings of the launch")
        super().__init__(context)
        self.settings: FSDPSettings = context.fsdp

    def _place(self, pair: DenoiserPair) -> None:
        """Shard every model of the pair, once the whole weights were checked to agree."""
        pair.apply_sharding(lambda module: shard_module(module, self.settings))

    def _average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Nothing: ``fully_shard`` reduce-scattered (and averaged) them in backward."""

    def _whole(self, obj: Any) -> Any:
        """Every shard gathered into the whole tensor on the CPU (collective)."""
        return full_tensors(obj)

    def localise_weights(self, groups: WeightGroups, pair: DenoiserPair) -> WeightGroups:
        """This rank's shards of the checkpointed weights."""
        return shard_groups(groups, pair.state_dict())

    def localise_optimizer_state(
        self, state: dict[str, Any], optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """This rank's shards of the checkpointed optimiser moments."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return shard_optimizer_state(state, params)

    def student_weights_to_save(self, pair: DenoiserPair) -> dict[str, torch.Tensor] | None:
        """The student's whole weights, gathered on every rank (collective)."""
        return full_tensors(pair.student_weights())


def make_parallel(context: DistributedContext | None = None) -> Parallelism:
    """The strategy of this launch: one process, data-parallel, or sharded (FSDP)."""
    context = context or process_context()
    if context.world_size == 1:
        return SingleProcess()
    if context.fsdp is not None:
        return Sharded(context)
    return DataParallel(context)


# -- FSDP2 layout: whole tensors <-> this rank's shards ------------------------------------------


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
    from torch.distributed.tensor import DTensor

    def walk(value: Any) -> Any:
        if isinstance(value, DTensor):
            return value.full_tensor().cpu()
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(walk(v) for v in value)
        return value

    return walk(obj)


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``like``: this rank's shard if ``like`` is one."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return value
    return distribute_tensor(
        value.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements
    )


def shard_groups(
    groups: Mapping[str, Mapping[str, torch.Tensor]],
    like: Mapping[str, Mapping[str, torch.Tensor]],
) -> WeightGroups:
    """Checkpointed weight groups (whole tensors) laid out as the pair's own (``like``)."""
    out: WeightGroups = {}
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


__all__ = [
    "DataParallel",
    "Parallelism",
    "Sharded",
    "SingleProcess",
    "full_tensors",
    "make_parallel",
    "shard_groups",
    "shard_like",
    "shard_module",
    "shard_optimizer_state",
]
