"""What a run will cost, said before it starts and while it runs.

:func:`run_plan` counts a run's work from its config alone: the stages of the annealing path
(METHOD.md section 6: ``a_end / h`` of them with a fixed ``h``; a range with the adaptive
schedule, whose ``h`` the rewards choose), the optimiser updates (``steps_per_h`` per stage),
the completions sampled and the held-out evaluations. :class:`StageProgress` prints the plan
when training starts and, at each later stage, the updates done against the total, the time
taken and the time left at the rate so far.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from tiltmatch.training.callbacks import TrainerCallback
from tiltmatch.training.config import RunConfig


@dataclass(frozen=True)
class RunPlan:
    """A run's work: stages (a range where the schedule decides), updates per stage, and
    the sampling each stage does."""

    min_stages: int
    max_stages: int
    updates_per_stage: int
    completions_per_stage: int
    eval_samples: int
    how: str

    @property
    def max_updates(self) -> int:
        """Optimiser updates of the longest run the plan allows."""
        return self.max_stages * self.updates_per_stage

    def describe(self) -> str:
        """One line: stages x updates, completions, evaluations."""
        stages = (
            str(self.max_stages)
            if self.min_stages == self.max_stages
            else f"{self.min_stages}-{self.max_stages}"
        )
        updates = (
            str(self.max_updates)
            if self.min_stages == self.max_stages
            else f"{self.min_stages * self.updates_per_stage}-{self.max_updates}"
        )
        evaluation = f", a held-out evaluation of {self.eval_samples} samples per stage"
        return (
            f"{stages} stages x {self.updates_per_stage} updates = {updates} updates ({self.how}), "
            f"about {self.completions_per_stage} completions sampled per stage"
            + (evaluation if self.eval_samples else "")
        )


def _dtm_stages(config: RunConfig) -> tuple[int, int, str]:
    """(fewest, most) stages of DTM's annealing path, and how they are counted."""
    dtm, cap = config.dtm, config.train.max_stages
    if dtm.schedule == "fixed":
        stages = math.ceil(dtm.a_end / dtm.h - 1e-9)
        return min(stages, cap), min(stages, cap), f"dtm.a_end {dtm.a_end:g} / dtm.h {dtm.h:g}"
    if dtm.schedule == "none":
        return 1, 1, "dtm.schedule none: one stage"
    if dtm.schedule == "geometric":
        a, stages = 0.0, 0
        while a < dtm.a_end - 1e-9 and stages < cap:
            a += dtm.h * dtm.geometric_ratio**stages
            stages += 1
        return stages, stages, f"dtm.h {dtm.h:g} x {dtm.geometric_ratio:g}^k up to {dtm.a_end:g}"
    fewest = min(math.ceil(dtm.a_end / dtm.h_max - 1e-9), cap)
    return fewest, cap, "dtm.schedule adaptive: the rewards choose h <= dtm.h_max"


def run_plan(config: RunConfig, updates_per_stage: int) -> RunPlan:
    """The plan of ``config`` (``updates_per_stage``: the objective's ``steps_in_stage``)."""
    train = config.train
    if config.method == "dtm":
        fewest, most, how = _dtm_stages(config)
    else:
        total = config.method_options.get("total_stages")
        if isinstance(total, int) and total >= 1:
            fewest = most = min(total, train.max_stages)
            how = "method_options.total_stages"
        else:
            fewest, most, how = 1, train.max_stages, "up to train.max_stages"
    refreshes = max(0, (updates_per_stage - 1) // train.refresh_every)
    completions = (train.buffer_prompts + refreshes * train.refresh_prompts) * train.num_generations
    samples = config.eval.examples * config.eval.samples_per_example
    return RunPlan(
        fewest,
        most,
        updates_per_stage,
        completions,
        samples if config.eval.every_stage else 0,
        how,
    )


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class StageProgress(TrainerCallback):
    """Prints the plan when the first stage begins, and at every later stage the updates
    done of the total, the time taken and the time left (to standard error, above any
    progress bar)."""

    def __init__(self, plan: RunPlan, name: str) -> None:
        self.plan, self.name = plan, name
        self._start: tuple[float, int] | None = None

    def stage_begins(self, stage: int, updates: int) -> None:
        """Report at the start of stage ``stage`` (0-based) after ``updates`` updates."""
        now = time.monotonic()
        if self._start is None:
            self._start = (now, updates)
            self._write(f"{self.name}: {self.plan.describe()}")
            return
        began, first = self._start
        done = updates - first
        total = self.plan.max_updates
        line = f"{self.name}: stage {stage + 1}: {updates}/{total} updates, {_clock(now - began)}"
        if done > 0:
            left = (total - updates) * (now - began) / done
            bound = " at most" if self.plan.min_stages != self.plan.max_stages else ""
            line += f", about{bound} {_clock(left)} left"
        self._write(line)

    def on_stage_begin(self, trainer: Any) -> None:
        """The trainer's hook: report at each stage's start."""
        self.stage_begins(trainer.phase.stage, trainer.phase.updates)

    @staticmethod
    def _write(line: str) -> None:
        tqdm.write(line, file=sys.stderr)


def report_progress(trainer: Any) -> StageProgress:
    """Have ``trainer`` report its plan and its progress at each stage's start (a
    :class:`~tiltmatch.training.callbacks.TrainerCallback` added to it)."""
    plan = run_plan(trainer.config, trainer.objective.steps_in_stage())
    progress = StageProgress(plan, f"{trainer.objective.name} on {trainer.task.name}")
    trainer.add_callback(progress)
    return progress


#: the shipped base whose recorded pretraining times the estimate (its tiltmatch.json)
REFERENCE_BASE = "maze"


def _tokens(task: Any) -> int:
    """Tokens of one of ``task``'s sequences: its first training prompt and its response."""
    example = task.examples("train", 1, 0)[0]
    return len(example.prompt) + int(task.response_length)


def pretrain_estimate(task: Any, spec: Any, steps: int, batch_size: int) -> str | None:
    """One line saying what a ``tiltmatch pretrain`` run will take: its steps x sequences x
    tokens x parameters, scaled from the shipped maze base's recorded pretraining (the
    time it took on the 2-core CPU it was made on). None where that record is unreadable."""
    import json

    from tiltmatch.models.folders import shipped_model_dir
    from tiltmatch.preflight import ModelShape
    from tiltmatch.tasks import get_task

    try:
        folder = shipped_model_dir(REFERENCE_BASE)
        made = json.loads((folder / "tiltmatch.json").read_text(encoding="utf-8"))["pretrain"]
        seconds, ref_steps = float(made["seconds"]), int(made["steps"])
        ref_batch, ref_parameters = int(made["batch_size"]), int(made["parameters"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    vocab = len(task.alphabet or "") + 3  # the character tokenizer's pad, mask and end ids
    parameters = ModelShape(
        vocab, spec.hidden_size, spec.num_layers, spec.num_heads, spec.intermediate_size
    ).parameters
    work = steps * batch_size * parameters * _tokens(task)
    reference = ref_steps * ref_batch * ref_parameters * _tokens(get_task(REFERENCE_BASE))
    estimate = seconds * work / reference
    return (
        f"pretrain {task.name}: {steps} steps x {batch_size} sequences of {_tokens(task)} "
        f"tokens, {parameters / 1e6:.2f}M parameters: about {_clock(estimate)} on a 2-core CPU "
        f"(scaled from the shipped {REFERENCE_BASE} base: {_clock(seconds)} for {ref_steps} "
        f"steps x {ref_batch}); the bar below shows this machine's ETA"
    )
