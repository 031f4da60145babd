"""The trainer's hook: what happens around its rollouts, updates, evaluations, stage ends and
checkpoints (timing, probes, counting, progress), without touching training.

A :class:`TrainerCallback` is registered with :meth:`Trainer.add_callback
<tiltmatch.training.trainer.Trainer.add_callback>`; the trainer calls every registered
callback's methods, in the order they were added, at these points of the loop (METHOD.md
section 6). The names follow transformers' ``TrainerCallback`` where they mean the same
thing (``on_evaluate``, ``on_save``); a stage is DTM's annealing stage, an update one
optimiser step.

- ``on_rollouts_begin`` / ``on_rollouts_end``: around the teacher's rollouts for the replay
  buffer (a stage's rebuild, each refresh); not the reward baseline's calibration sample;
- ``on_update_begin`` / ``on_update_end``: around one optimiser update (its micro-batches,
  backward passes and step; a buffer refresh that follows it is rollouts of its own);
- ``on_evaluate_begin`` / ``on_evaluate``: around :meth:`Trainer.evaluate` (held-out metrics),
  wherever it is called from;
- ``on_stage_end``: a stage's record, after its evaluation and before it is logged; a callback
  may add keys to it (the demo adds the TV to the exact target);
- ``on_save``: after every checkpoint is written.

An end hook runs even when its phase raised (a timer stops, a progress bar closes), with
``None`` for what the phase did not return. Callbacks observe: none changes a draw, so a run
with callbacks trains to the same weights as one without.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiltmatch.batch import RolloutBatch
from tiltmatch.examples import Example
from tiltmatch.preflight import Heartbeat

if TYPE_CHECKING:
    from tiltmatch.training.trainer import Trainer


class TrainerCallback:
    """Does nothing at every point of the training loop; override the points you need."""

    def on_stage_begin(self, trainer: Trainer) -> None:
        """A stage is about to rebuild its buffer (``trainer.phase.stage``, ``.updates``)."""

    def on_rollouts_begin(self, trainer: Trainer, examples: Sequence[Example]) -> None:
        """The teacher is about to sample ``num_generations`` completions of each example."""

    def on_rollouts_end(
        self, trainer: Trainer, examples: Sequence[Example], batch: RolloutBatch | None
    ) -> None:
        """The scored rollouts of ``examples`` (None when sampling or scoring raised)."""

    def on_update_begin(self, trainer: Trainer) -> None:
        """An optimiser update is about to start (``trainer.phase.updates`` done so far)."""

    def on_update_end(self, trainer: Trainer, metrics: dict[str, float] | None) -> None:
        """The update's loss, gradient norm, learning rate and the objective's extras
        (None when it raised)."""

    def on_evaluate_begin(self, trainer: Trainer) -> None:
        """A held-out evaluation is about to start."""

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float] | None) -> None:
        """The held-out metrics (None when the evaluation raised)."""

    def on_stage_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """A stage's record, before it is logged: keys added here are logged with it."""

    def on_save(self, trainer: Trainer, path: Path) -> None:
        """A checkpoint was written to ``path``."""


#: the phases :class:`PhaseTimer` times
PHASES: tuple[str, ...] = ("rollouts", "update", "evaluate")


class PhaseTimer(TrainerCallback):
    """Wall-clock seconds (``time.perf_counter``) and calls of each phase in :data:`PHASES`:
    where a run's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(PHASES, 0)
        self._started: dict[str, float] = {}

    def _begin(self, phase: str) -> None:
        self._started[phase] = time.perf_counter()

    def _end(self, phase: str) -> None:
        self.seconds[phase] += time.perf_counter() - self._started.pop(phase)
        self.calls[phase] += 1

    def on_rollouts_begin(self, trainer: Trainer, examples: Sequence[Example]) -> None:
        self._begin("rollouts")

    def on_rollouts_end(
        self, trainer: Trainer, examples: Sequence[Example], batch: RolloutBatch | None
    ) -> None:
        self._end("rollouts")

    def on_update_begin(self, trainer: Trainer) -> None:
        self._begin("update")

    def on_update_end(self, trainer: Trainer, metrics: dict[str, float] | None) -> None:
        self._end("update")

    def on_evaluate_begin(self, trainer: Trainer) -> None:
        self._begin("evaluate")

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float] | None) -> None:
        self._end("evaluate")


class ProgressHeartbeat(TrainerCallback):
    """An elapsed-time bar (:class:`~tiltmatch.preflight.Heartbeat`) around the buffer's
    rollouts and the held-out evaluations: the phases that show nothing of their own and
    can run for minutes before the first update (a large ``num_generations``, a long
    held-out set)."""

    def __init__(self) -> None:
        self._beat: Heartbeat | None = None

    def _start(self, description: str) -> None:
        self._beat = Heartbeat(description).__enter__()

    def _stop(self) -> None:
        if self._beat is not None:
            self._beat.__exit__(None, None, None)
            self._beat = None

    def on_rollouts_begin(self, trainer: Trainer, examples: Sequence[Example]) -> None:
        self._start(f"sampling {len(examples) * trainer.config.train.num_generations} completions")

    def on_rollouts_end(
        self, trainer: Trainer, examples: Sequence[Example], batch: RolloutBatch | None
    ) -> None:
        self._stop()

    def on_evaluate_begin(self, trainer: Trainer) -> None:
        self._start("held-out evaluation")

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float] | None) -> None:
        self._stop()
