"""What a fine-tuning method is to the trainer: a loss on rollouts, and a notion of stages.

DTM and every baseline share the trainer, the sampler, the rollouts and the
buffer; they differ only in their :class:`Objective`. A stage is the span of
updates between teacher refreshes: for DTM one tilt increment ``h``
(METHOD.md section 6), for the baselines one batch of rollouts with its inner
updates.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser


@dataclass
class Phase:
    """Where the run is: stage index, update within the stage, and the annealing state."""

    stage: int = 0
    step: int = 0  # optimiser updates done in this stage
    begun: bool = False  # whether the current stage's rollouts and h are set
    a: float = 0.0  # current inverse temperature on the annealing path
    h: float = 0.0  # this stage's tilt increment
    updates: int = 0  # optimiser updates in the whole run
    rollouts: int = 0  # completions sampled in the whole run
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for checkpoints."""
        return asdict(self)


@dataclass(frozen=True)
class LossInputs:
    """What an objective's loss sees for one micro-batch.

    ``student`` is trained; ``teacher`` is the stage's frozen ``mu_ref``, which also
    sampled ``batch`` (METHOD.md section 6); ``reference`` is the frozen base model,
    present only when the objective ``needs_reference``. ``generator`` is the
    trainer's, for any randomness the loss draws (masked states, prompt masks).
    """

    student: MaskedDenoiser
    teacher: MaskedDenoiser
    batch: RolloutBatch
    phase: Phase
    generator: torch.Generator
    reference: MaskedDenoiser | None = None


class Objective(ABC):
    """A fine-tuning method's loss and stage logic."""

    name: str = "objective"
    #: the trainer keeps a frozen copy of the base model when this is True (KL terms)
    needs_reference: bool = False
    #: DTM resets the optimiser moments and restarts the LR schedule at every phase boundary
    #: (METHOD.md section 6); the baselines keep one optimiser for the whole run.
    reset_optimizer_each_stage: bool = True
    #: the rollouts must carry the states the sampler visited (DTM's trajectory states,
    #: METHOD.md section 6); recording them costs memory, so only an objective that
    #: reads them asks
    records_trajectories: bool = False

    def prepare(
        self,
        phase: Phase,
        reward_lower_bound: float | None,
        calibration: Callable[[], torch.Tensor],
    ) -> dict[str, float]:
        """Called once, before the first stage's rollouts: fix what must be fixed before the
        samples it weights are drawn (DTM's reward baseline, METHOD.md section 5).

        ``reward_lower_bound``: the reward's declared lower bound in training units (after
        ``train.reward_scale``), if any; ``calibration()`` draws and scores a calibration
        sample of the base model (rewards ``[P, G]``) with a generator of its own, only
        when called. Whatever is fixed is kept in ``phase.extra`` (checkpointed). Returns
        stats to log.
        """
        return {}

    @abstractmethod
    def steps_in_stage(self) -> int:
        """Optimiser updates per stage."""

    @abstractmethod
    def begin_stage(self, phase: Phase, rewards: torch.Tensor) -> dict[str, float]:
        """Called once the stage's rollouts exist (rewards ``[P, G]``); returns stats to log."""

    def end_stage(self, phase: Phase) -> None:
        """Called after the stage's last update, before the teacher is refreshed."""
        return None

    @abstractmethod
    def finished(self, phase: Phase) -> bool:
        """Whether the run is complete (checked at stage boundaries)."""

    @abstractmethod
    def loss(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch and its diagnostics."""
