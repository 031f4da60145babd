"""Data-parallel training: the same :class:`~tiltmatch.training.trainer.Trainer` on several
processes.

Launch with ``accelerate launch --config_file configs/accelerate/ddp.yaml ...`` (or
``torchrun``); :func:`make_trainer` returns the plain single-process trainer when
there is one process, so that path never imports accelerate. With ``N``
processes (DDP semantics):

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
  is exactly what DDP with ``no_sync`` on all but the last micro-batch computes;
  it is done by hand because the LoRA student is one adapter of a model it
  shares with the teacher (DDP wraps a module, fixes its buckets at wrap time
  and by default broadcasts all of the module's weights, the frozen 8B base
  included, which fits that badly). Each rank then takes the same AdamW
  step, so replicas stay identical, which is checked when training starts.
- Logs and checkpoints: rank 0 alone writes them. A checkpoint holds the
  shared state once plus every rank's own buffer and RNG states; every rank
  reads it on resume and takes its own part back.
- Evaluation: the held-out examples are split over ranks and the sampled texts
  gathered, so each metric is the task's own over the whole set.

An FSDP launch gets :class:`tiltmatch.training.sharding.ShardedTrainer`, the same trainer
with sharded weights; a DeepSpeed launch is refused with an explanation (see
:func:`process_context`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tiltmatch.config import RunConfig
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.objective import Objective
from tiltmatch.sampling.rollouts import PromptPool, ReplayBuffer
from tiltmatch.tasks.base import Example, Task
from tiltmatch.training.checkpoint import save_checkpoint
from tiltmatch.training.evaluation import sample_texts
from tiltmatch.training.pair import DenoiserPair
from tiltmatch.training.trainer import CHECKPOINT, Trainer, restore_rng_state, rng_state

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


# -- the trainer -----------------------------------------------------------------------------


class _JobBuffer(ReplayBuffer):
    """This rank's replay buffer; it reports the rollouts of the whole job (all ranks)."""

    def __init__(self, *args: Any, world_size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world_size = world_size

    def rebuild(self, fill) -> int:
        """Rebuild this rank's buffer; every rank does the same, so the job made N times more."""
        return super().rebuild(fill) * self.world_size

    def refresh(self, count: int, fill) -> int:
        """Refresh this rank's oldest slots; the job made N times more rollouts."""
        return super().refresh(count, fill) * self.world_size


class DistributedTrainer(Trainer):
    """The trainer on one of several data-parallel processes (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        task: Task,
        codec: PromptCodec,
        pair: DenoiserPair,
        objective: Objective,
        out_dir: str | Path,
        context: DistributedContext,
        quiet: bool = False,
    ) -> None:
        if context.world_size < 2 or not dist.is_initialized():
            raise ValueError("DistributedTrainer needs an initialised group of 2+ processes")
        super().__init__(
            config, task, codec, pair, objective, out_dir, quiet=quiet or not context.is_main
        )
        self.context = context
        rank, world = context.rank, context.world_size
        tc = config.train
        examples = shard(self.pool.examples, rank, world)
        if not examples:
            raise ValueError(
                f"train.train_examples={len(self.pool.examples)} leaves no prompts for rank "
                f"{rank} of {world}"
            )
        # Disjoint prompts per rank: the same pool everywhere would sample the same prompts N times.
        self.pool = PromptPool(examples, config.seed)
        self.buffer = _JobBuffer(
            self.pool,
            tc.buffer_prompts,
            tc.num_generations,
            codec.pad_token_id,
            world_size=world,
        )
        torch.manual_seed(rank_seed(config.seed, rank))
        self._check_replicas_agree()
        self._shard_weights()
        # Rollouts, states and dropout differ per rank, reproducibly; the generator lives
        # where the weights do once placed (FSDP moves CPU-built weights to the GPU).
        device = next(pair.student.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(rank_seed(config.seed, rank))

    def _shard_weights(self) -> None:
        """Where the weights go once the ranks agree on them: replicated here (DDP)."""

    # -- the hooks of Trainer ----------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, which alone writes logs, checkpoints and the final model."""
        return self.context.is_main

    def _all_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        """Rewards ``[N x P, G]`` of every rank's buffer, rank by rank."""
        return all_gather_rows(rewards, self.context.device)

    def _synchronise(self, loss: float, extras: dict[str, float]) -> tuple[float, dict[str, float]]:
        """Average the student's gradients over ranks; combine the logged scalars."""
        self._average_gradients()
        numbers = {k: float(v) for k, v in extras.items() if isinstance(v, int | float)}
        combined = reduce_scalars({**numbers, "loss": loss}, self.context.device)
        loss = combined.pop("loss")
        return loss, {**extras, **combined}

    def _average_gradients(self) -> None:
        grads = []
        for p in self.pair.trainable_parameters():
            if p.grad is None:  # unused on this rank: DDP counts it as a zero gradient
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        all_reduce_mean_(grads)

    def _process_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "rng": rng_state(self.generator)}

    def _write_checkpoint(
        self, tensors: dict[str, dict[str, torch.Tensor]], objects: dict[str, Any], meta: Any
    ) -> Path:
        """Rank 0 writes the shared state once, plus every rank's buffer and RNG states.

        Collective: every rank calls it (through :meth:`Trainer.save`).
        """
        ranks = gather_object_to_main(self._process_state())
        path = self.out_dir / CHECKPOINT
        if self.context.is_main:
            meta = {**meta, "world_size": self.context.world_size}
            save_checkpoint(path, tensors, {**objects, "ranks": ranks}, meta)
        dist.barrier()  # nobody moves on (or resumes) before the checkpoint exists
        return path

    def _restore_process_state(self, objects: dict[str, Any]) -> None:
        """Take this rank's own buffer and RNG states back from the checkpoint."""
        ranks = objects.get("ranks")
        if ranks is None:
            raise ValueError(
                "this checkpoint was written by a single process; a data-parallel run resumes "
                "only from a data-parallel checkpoint"
            )
        if len(ranks) != self.context.world_size:
            raise ValueError(
                f"this checkpoint was written by {len(ranks)} processes; resume it with "
                f"{len(ranks)}, not {self.context.world_size}"
            )
        mine = ranks[self.context.rank]
        self.buffer.load_state_dict(mine["buffer"])
        restore_rng_state(mine["rng"], self.generator)

    def _open_log(self) -> Any:
        """Rank 0 writes the run log and the resolved config; the others log nothing."""
        return super()._open_log() if self.context.is_main else None

    def evaluate(self, denoiser=None) -> dict[str, float]:
        """Held-out metrics over all examples, each rank sampling its share of them.

        Collective, like :meth:`save`: every rank must call it (the trainer does, at
        each stage end). Every rank runs the same forwards (a sharded forward is
        collective under FSDP): a share shorter than the longest is padded with
        copies of its first example (or of the set's first), whose samples are
        dropped before scoring.
        """
        ec = self.config.eval
        rank, world = self.context.rank, self.context.world_size
        shares = [shard(self.eval_examples, r, world) for r in range(world)]
        mine = shares[rank]
        filler = (mine or self.eval_examples)[:1]
        padded = mine + filler * (max(len(s) for s in shares) - len(mine))
        texts: list[list[str]] = []
        if padded:
            texts = sample_texts(
                self.worker,
                denoiser or self.pair.student,
                padded,
                ec.samples_per_example,
                ec.temperature,
                seed=rank_seed(self.config.seed + 777, rank),
            )
        gathered = all_gather_object(texts)
        groups = unshard([t[: len(shares[r])] for r, t in enumerate(gathered)])
        flat_texts = [t for group in groups for t in group]
        flat_examples: list[Example] = [
            e for e in self.eval_examples for _ in range(ec.samples_per_example)
        ]
        return self.task.metrics(flat_texts, flat_examples)

    # -- checks ------------------------------------------------------------------------------

    @torch.no_grad()
    def _check_replicas_agree(self) -> None:
        """Fail early if the ranks' models differ (e.g. built without the same seed)."""
        sums = []
        for group in self.pair.state_dict().values():
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


def close_process_group() -> None:
    """Wait for every rank, then destroy the process group (a no-op with one process).

    Call it before a multi-process job exits: a process that exits with the group
    still alive can abort in gloo's worker threads during interpreter shutdown
    ("terminate called without an active exception") and take the job down.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def make_trainer(
    config: RunConfig,
    task: Task,
    codec: PromptCodec,
    pair: DenoiserPair,
    objective: Objective,
    out_dir: str | Path,
    quiet: bool = False,
    context: DistributedContext | None = None,
) -> Trainer:
    """The trainer for this process: plain with one process, data-parallel with several."""
    context = context or process_context()
    if context.world_size == 1:
        return Trainer(config, task, codec, pair, objective, out_dir, quiet=quiet)
    if context.fsdp is not None:
        from tiltmatch.training.sharding import ShardedTrainer

        return ShardedTrainer(config, task, codec, pair, objective, out_dir, context, quiet)
    return DistributedTrainer(config, task, codec, pair, objective, out_dir, context, quiet)


__all__ = [
    "DistributedContext",
    "DistributedTrainer",
    "FSDPSettings",
    "all_gather_object",
    "all_gather_rows",
    "all_reduce_mean_",
    "close_process_group",
    "fsdp_settings_from_env",
    "gather_object_to_main",
    "make_trainer",
    "process_context",
    "rank_seed",
    "reduce_scalars",
    "shard",
    "unshard",
    "world_size_from_env",
]
