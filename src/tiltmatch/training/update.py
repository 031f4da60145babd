"""One optimiser update: the step the trainer takes and ``benchmarks/gpu_check.py`` times.

Zero the gradients, accumulate the objective's loss over micro-batches, let the
parallelism strategy average the gradients and the logged scalars, clip, step
the optimiser (and the LR schedule), then let the pair track its EMA
(METHOD.md section 6). One function, so a benchmark measures exactly the
update a run makes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tiltmatch.batch import RolloutBatch
from tiltmatch.objective import LossInputs, Objective, Phase
from tiltmatch.training.pair import DenoiserPair
from tiltmatch.training.parallel import Parallelism, SingleProcess


@dataclass(frozen=True)
class UpdateResult:
    """What one update reports: the mean micro-batch loss, the pre-clip gradient norm, and
    the objective's diagnostics of the last micro-batch."""

    loss: float
    grad_norm: float
    extras: dict[str, float]


def optimizer_update(
    objective: Objective,
    pair: DenoiserPair,
    optimizer: torch.optim.Optimizer,
    next_batch: Callable[[], RolloutBatch],
    phase: Phase,
    generator: torch.Generator,
    max_grad_norm: float,
    accumulation_steps: int = 1,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    parallel: Parallelism | None = None,
) -> UpdateResult:
    """One optimiser update of the student over ``accumulation_steps`` micro-batches.

    ``next_batch`` is called once per micro-batch, between the losses, so that
    drawing a batch and the loss's own randomness interleave on ``generator``
    as a run's do. A non-finite loss stops the run with what to change.
    """
    parallel = parallel or SingleProcess()
    reference = pair.reference() if objective.needs_reference else None
    pair.student.train()
    optimizer.zero_grad(set_to_none=True)
    total, extras = 0.0, dict[str, float]()
    for _ in range(accumulation_steps):
        inputs = LossInputs(pair.student, pair.teacher, next_batch(), phase, generator, reference)
        loss, extras = objective.loss(inputs)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss {float(loss.detach())} at stage {phase.stage}, "
                f"update {phase.step}: lower the learning rate or the tilt increment h"
            )
        (loss / accumulation_steps).backward()
        total += float(loss.detach()) / accumulation_steps
    total, extras = parallel.synchronise(pair.trainable_parameters(), total, extras)
    params = [p for p in pair.trainable_parameters() if p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if not math.isfinite(grad_norm):  # the step would write NaN into every weight
        raise FloatingPointError(
            f"non-finite gradient norm {grad_norm} at stage {phase.stage}, update "
            f"{phase.step}: stopped before the step, so no checkpoint or log holds its "
            "weights; lower train.learning_rate or the tilt increment h"
        )
    optimizer.step()
    _check_finite_weights(params, phase)
    if scheduler is not None:
        scheduler.step()
    pair.after_update()
    return UpdateResult(total, grad_norm, extras)


def _check_finite_weights(params: list[torch.nn.Parameter], phase: Phase) -> None:
    """Stop the run before a non-finite weight reaches a log line or a checkpoint."""
    # Under FSDP a parameter is a DTensor: each process checks the shard it holds.
    local = [getattr(p, "to_local", p.detach)().detach() for p in params]
    if local and not bool(torch.stack([torch.isfinite(t).all() for t in local]).all()):
        raise FloatingPointError(
            f"non-finite weights after update {phase.step} of stage {phase.stage}: "
            "stopped before they reached a checkpoint or a log line; lower train.learning_rate"
        )
