"""One training run as the experiments measure it: the shape the demo, the ablation and the
benchmark share.

Each of them builds a run configuration, then a :class:`MeasuredRun`: the trainer
(:func:`~tiltmatch.training.runner.build_trainer`) at a fixed intra-op thread count, with a
:class:`~tiltmatch.training.callbacks.PhaseTimer` on it from the start. It measures the
base model (held-out evaluation, probes: every probe draw has a generator of its own, so
none changes training), trains with its probes registered as callbacks
(:meth:`MeasuredRun.train`), measures the trained model and writes its record. What differs
between the experiments is only what they measure and record.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tiltmatch.training.callbacks import PhaseTimer, TrainerCallback

if TYPE_CHECKING:  # the runner (transformers) is imported when a run is built, not before
    from tiltmatch.destination import Destination
    from tiltmatch.training.config import RunConfig


class MeasuredRun:
    """A trainer built from ``config`` into ``folder``, timed, ready to be measured.

    ``threads``: intra-op threads (results differ bit for bit between counts; the
    benchmark and the ablation use 1, the demo its own :data:`DEMO_THREADS
    <tiltmatch.experiments.demo.DEMO_THREADS>`); ``checkpointing``: write checkpoints while
    training (off where a run is never resumed).
    """

    def __init__(
        self,
        config: RunConfig,
        folder: Path,
        threads: int = 1,
        quiet: bool = True,
        checkpointing: bool = False,
    ) -> None:
        from tiltmatch.training.runner import build_trainer

        self.started = time.time()
        torch.set_num_threads(threads)
        self.config = config
        self.trainer, self.task, self.codec = build_trainer(config, folder, quiet=quiet)
        self.trainer.checkpointing = checkpointing
        #: seconds spent sampling rollouts, updating and evaluating, from the start
        self.timer = self.trainer.add_callback(PhaseTimer())
        self.history: list[dict[str, Any]] = []
        #: training seconds, held-out evaluations excluded (set by :meth:`train`)
        self.train_seconds = 0.0
        self._train_started = 0.0
        self._evaluating_before = 0.0

    def train(
        self, callbacks: Iterable[TrainerCallback] = (), destination: Destination | None = None
    ) -> list[dict[str, Any]]:
        """Train to the end with ``callbacks`` registered (probes, curves); returns the stage
        history. ``destination``: the run's folder, committed at its first checkpoint."""
        from tiltmatch.training.runner import committed_at_first_checkpoint

        for callback in callbacks:
            self.trainer.add_callback(callback)
        self._train_started = time.perf_counter()
        self._evaluating_before = self.timer.seconds["evaluate"]
        with committed_at_first_checkpoint(self.trainer, destination):
            self.history = self.trainer.train()
        self.train_seconds = self.training_seconds()
        return self.history

    def training_seconds(self) -> float:
        """Seconds since :meth:`train` began, less the held-out evaluations since then."""
        evaluating = self.timer.seconds["evaluate"] - self._evaluating_before
        return time.perf_counter() - self._train_started - evaluating

    @property
    def rollout_seconds(self) -> float:
        """Seconds spent sampling the training rollouts so far."""
        return self.timer.seconds["rollouts"]

    @property
    def eval_seconds(self) -> float:
        """Seconds spent in held-out evaluations so far (the base model's included)."""
        return self.timer.seconds["evaluate"]

    def wall_seconds(self) -> float:
        """Seconds since the run began to be built."""
        return time.time() - self.started


class RolloutGrid:
    """Rollout counts at which to measure a run (the benchmark's evaluation points, the
    ablation's probe points for the baselines): a stage end is due when the rollouts
    consumed reach the next point not yet reached."""

    def __init__(self, points: Sequence[int]) -> None:
        self.points = list(points)

    def crossed(self, rollouts: int) -> bool:
        """Whether ``rollouts`` reaches the next point; every point it reaches is used up."""
        due = bool(self.points) and rollouts >= self.points[0]
        while self.points and rollouts >= self.points[0]:
            self.points.pop(0)
        return due


def eval_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The held-out metrics of a stage record (its ``eval_`` keys, the prefix dropped)."""
    return {k[len("eval_") :]: v for k, v in record.items() if k.startswith("eval_")}
