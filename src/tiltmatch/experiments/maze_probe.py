"""The one maze exact-target probe of the experiments (METHOD.md section 7).

It draws two independent base samples on a fixed set of mazes before training
(the first estimates the tilted target ``p_a ∝ p_0 e^{a r}``, the second sets
the noise floor of the TV estimator) and then measures any model against
``p_a``: at one ``a`` (:meth:`MazeTargetProbe.measure`), at every stage end
(:meth:`MazeTargetProbe.stage_callback`), or against the nearest point of the
annealing path (:meth:`MazeTargetProbe.path_report`).

Every draw goes through :func:`tiltmatch.training.evaluation.sample_texts`, which
seeds its own generator: a probe never touches the trainer's generator, so adding
one (e.g. on training mazes beside the held-out one) leaves training unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from tiltmatch.dtm.exact_target import TargetReport, mean_report
from tiltmatch.experiments.maze_target import maze_target_report
from tiltmatch.tasks.base import Example
from tiltmatch.tasks.maze.task import MazeTask
from tiltmatch.training.evaluation import sample_texts

#: inverse temperatures on which a model's distance to the annealing path is measured
BETA_GRID: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)


class MazeTargetProbe:
    """A model's distance to the tilted base ``p_a`` on fixed mazes.

    ``base`` is the denoiser the target is estimated from (default: the trainer's
    teacher, which is the base model before training starts); it is sampled with
    seeds ``seed + 1`` and ``seed + 2``. ``prefix`` names the keys the stage
    callback adds to a stage record (``""`` for held-out mazes, ``"train_"`` for
    training mazes), so two probes can report side by side.
    """

    def __init__(
        self,
        trainer: Any,
        mazes: Sequence[Example],
        samples: int,
        temperature: float,
        seed: int,
        base: Any = None,
        prefix: str = "",
    ) -> None:
        if not isinstance(trainer.task, MazeTask):
            raise ValueError("the exact-target probe measures maze runs only")
        self.trainer = trainer
        self.task: MazeTask = trainer.task
        self.mazes = list(mazes)
        self.samples = samples
        self.temperature = temperature
        self.seed = seed
        self.prefix = prefix
        self.last: dict[str, Any] = {}
        #: the stage callback's inverse temperature; None: the stage's ``a`` (DTM). A
        #: baseline has no ``a``: it is measured against a fixed ``p_beta``.
        self.beta: float | None = None
        #: wall and CPU seconds spent sampling (what the probe costs its run)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        #: completions the trainer sampled on each probe maze (see count_training_rollouts)
        self.rollouts = [0] * len(self.mazes)
        base = base if base is not None else trainer.pair.teacher
        self.base_a = self.sample(base, seed + 1)
        self.base_b = self.sample(base, seed + 2)

    def sample(self, denoiser: Any, seed: int) -> list[list[str]]:
        """``samples`` decoded responses per maze from ``denoiser``, drawn with ``seed``."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return sample_texts(
                self.trainer.eval_worker,
                denoiser,
                self.mazes,
                self.samples,
                self.temperature,
                seed,
            )
        finally:
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu

    def count_training_rollouts(self) -> None:
        """Count, per probe maze, the completions the trainer samples on it for training.

        Wraps the trainer's rollout fill (it only counts: the batch is returned as is),
        so a probe on training mazes can say how much data each maze had.
        """
        fill = self.trainer._fill
        index = {ex.prompt: i for i, ex in enumerate(self.mazes)}
        group = self.trainer.config.train.num_generations

        def counted(examples: list[Example]) -> Any:
            for ex in examples:
                if ex.prompt in index:
                    self.rollouts[index[ex.prompt]] += group
            return fill(examples)

        self.trainer._fill = counted

    def reports(self, beta: float, samples: list[list[str]]) -> list[TargetReport]:
        """One :class:`TargetReport` per maze for the model draws ``samples`` at ``beta``."""
        return [
            maze_target_report(self.task, ex, a, b, m, beta)
            for ex, a, b, m in zip(self.mazes, self.base_a, self.base_b, samples, strict=True)
        ]

    def measure(
        self,
        beta: float,
        denoiser: Any = None,
        seed: int | None = None,
        samples: list[list[str]] | None = None,
    ) -> dict[str, Any]:
        """Mean over mazes of the target report at inverse temperature ``beta``.

        The model's samples are drawn from ``denoiser`` (default: the student) with
        ``seed`` (default ``seed + 3``), or given as ``samples`` to score the same
        draws against another ``beta``. The draws are returned under ``"samples"``.
        """
        model = samples
        if model is None:
            seed = seed if seed is not None else self.seed + 3
            model = self.sample(denoiser or self.trainer.pair.student, seed)
        out: dict[str, Any] = mean_report(self.reports(beta, model))
        out["samples"] = model
        return out

    def path_report(self, beta: float, samples: list[list[str]]) -> dict[str, float]:
        """TV to ``p_beta`` and to the nearest ``p_b`` of :data:`BETA_GRID`, with floors.

        The nearest ``p_b`` says whether a model is anywhere on the annealing path
        (a collapsed model is far from all of them, whatever its reward).
        """
        target = mean_report(self.reports(beta, samples))
        nearest_beta, nearest = min(
            ((b, mean_report(self.reports(b, samples))) for b in BETA_GRID),
            key=lambda item: item[1]["tv_to_target"],
        )
        return {
            "tv_to_target": target["tv_to_target"],
            "tv_noise_floor": target["tv_noise_floor"],
            "tv_ratio": target["tv_to_target"] / max(target["tv_noise_floor"], 1e-12),
            "target_expected_reward": target["expected_reward_target"],
            "model_expected_reward": target["expected_reward_model"],
            "tv_to_path": nearest["tv_to_target"],
            "tv_to_path_beta": nearest_beta,
            "tv_to_path_noise_floor": nearest["tv_noise_floor"],
            "distinct_optimal_paths_target_mazes": target["distinct_optimal_model"],
            "distinct_optimal_paths_base_target_mazes": target["distinct_optimal_base"],
        }

    def stage_seed(self, stage: int) -> int:
        """The seed of the model draw at the end of ``stage`` (a fixed function of it)."""
        return self.seed + 100 + stage

    def stage_callback(self, trainer: Any, record: dict[str, Any]) -> None:
        """Adds the TV to ``p_a`` at the stage's new ``a``, its floor and ``p_a``'s reward.

        With a non-empty prefix (a probe on training mazes) it also adds the model's
        expected reward and distinct shortest paths on those mazes.
        """
        beta = trainer.phase.a if self.beta is None else self.beta
        result = self.measure(beta, seed=self.stage_seed(trainer.phase.stage))
        self.last = result
        p = self.prefix
        record[f"{p}tv_to_target"] = result["tv_to_target"]
        record[f"{p}tv_noise_floor"] = result["tv_noise_floor"]
        record[f"{p}target_expected_reward"] = result["expected_reward_target"]
        if p:
            record[f"{p}expected_reward"] = result["expected_reward_model"]
            record[f"{p}distinct_optimal_paths"] = result["distinct_optimal_model"]
            record[f"{p}distinct_optimal_paths_base"] = result["distinct_optimal_base"]
            record[f"{p}rollouts_on_mazes"] = sum(self.rollouts)
            # The nearest point of the annealing path (no new draws: the same samples).
            path = self.path_report(beta, result["samples"])
            record[f"{p}tv_to_path"] = path["tv_to_path"]
            record[f"{p}tv_to_path_beta"] = path["tv_to_path_beta"]
            record[f"{p}tv_to_path_noise_floor"] = path["tv_to_path_noise_floor"]
            record[f"{p}mazes_trained_on"] = sum(1 for n in self.rollouts if n > 0)
