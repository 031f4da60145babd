"""The side-by-side benchmark: DTM and its baselines on every task at one rollout budget.

For each task (maze, sudoku, countdown) and method (dtm and every baseline of
the method registry: diffu-grpo, wd1, rejection, spg, espo, coupled-grpo) the
benchmark runs the same small learning-rate sweep on seed 0,
keeps each method's best learning rate (by its final held-out accuracy) and
runs the remaining seeds there. Every run starts from the same base model,
samples the same number of completions (``budget`` rollouts) and is evaluated
on the same held-out prompts at the same points along the budget, so the
methods differ only in their loss (METHOD.md section 8).

Rollout budget: a baseline stops once ``method_options.max_rollouts`` completions
have been sampled (one buffer of ``prompts_per_batch`` prompts per stage). DTM
runs ``dtm_stages`` fixed-``h`` stages up to ``a_end``; its buffer of ``P``
prompts x ``G`` completions is rebuilt at each stage and never refreshed in
between, with ``P = budget / (stages G)``, so it also samples exactly ``budget``
completions (checked after every run).

Per run: held-out accuracy and reward against rollouts consumed and against
seconds of training (evaluation excluded); final held-out accuracy; distinct
correct answers per prompt; seconds per update and per rollout; peak resident
memory (``ru_maxrss`` of the run's forked process, which starts from the
parent's footprint). On the maze also the total-variation distance of the
model's path distribution to the exact tilted target ``p_beta`` at
``beta = a_end`` and to the nearest ``p_beta`` on a grid of ``beta`` (the
annealing path), each against the estimator's noise floor (METHOD.md section 7).

Writes into ``--out``: ``results.json`` (one record per task x method x seed at
the selected learning rate, each with its curve), ``sweep.json`` (every sweep
run), ``summary.json``, ``report.md`` (tables, command, machine, date) and the
plots ``accuracy_vs_rollouts.png`` and ``accuracy_vs_seconds.png``. Finished
runs are cached under ``--out/runs`` and reused when the benchmark is rerun with the
same run configuration, size and base-model weights (anything else reruns them).

    tiltmatch bench --quick --out runs/bench-quick
    python benchmarks/side_by_side.py --out runs/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import multiprocessing as mp
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiltmatch.destination import Destination
from tiltmatch.experiments.measured_run import MeasuredRun, RolloutGrid, eval_metrics
from tiltmatch.training import methods as registry
from tiltmatch.training.callbacks import TrainerCallback

TASKS: tuple[str, ...] = ("maze", "sudoku", "countdown")
METHODS: tuple[str, ...] = tuple(registry.METHODS)  # the one registry's names
#: the metric reported as held-out accuracy, per task
ACCURACY_METRIC: dict[str, str] = {
    "maze": "accuracy",  # fraction of sampled paths that are shortest paths
    "sudoku": "cell_accuracy",  # blank cells right (the d1 / DTM papers' Sudoku accuracy)
    "countdown": "accuracy",  # fraction of expressions that hit the target
}
CORRECT = 1.0 - 1e-9  # a response is "correct" when its reward is the task's maximum, 1


@dataclass(frozen=True)
class BenchSize:
    """How big the benchmark is: seeds, rollout budget, sweep and evaluation sizes."""

    name: str
    seeds: int
    budget: int  # completions sampled per run, every method
    num_generations: int  # G, completions per prompt
    prompts_per_batch: int  # prompts per update, every method
    dtm_stages: int  # fixed-h DTM stages from a = 0 to a_end
    dtm_steps_per_h: int  # DTM updates per stage
    learning_rates: tuple[float, ...]  # the sweep, the same for every method
    eval_examples: int
    eval_samples: int
    diversity_examples: int
    diversity_samples: int
    target_mazes: int
    target_samples: int
    train_examples: int = 2000
    a_end: float = 10.0
    fresh_models: bool = False  # micro: untrained tiny models instead of the base models


SIZES: dict[str, BenchSize] = {
    # The smoke test: the machinery only, untrained one-layer models, seconds per run.
    "micro": BenchSize(
        name="micro",
        seeds=1,
        budget=16,
        num_generations=2,
        prompts_per_batch=2,
        dtm_stages=2,
        dtm_steps_per_h=2,
        learning_rates=(3e-4,),
        eval_examples=4,
        eval_samples=1,
        diversity_examples=2,
        diversity_samples=2,
        target_mazes=2,
        target_samples=8,
        train_examples=32,
        fresh_models=True,
    ),
    "quick": BenchSize(
        name="quick",
        seeds=3,
        budget=256,
        num_generations=8,
        prompts_per_batch=4,
        dtm_stages=4,
        dtm_steps_per_h=6,
        learning_rates=(3e-5, 1e-4, 3e-4),
        eval_examples=32,
        eval_samples=4,
        diversity_examples=8,
        diversity_samples=8,
        target_mazes=4,
        target_samples=64,
    ),
    "default": BenchSize(
        name="default",
        seeds=3,
        budget=1280,
        num_generations=8,
        prompts_per_batch=8,
        dtm_stages=5,
        dtm_steps_per_h=16,
        learning_rates=(1e-5, 3e-5, 1e-4, 3e-4),
        eval_examples=64,
        eval_samples=4,
        diversity_examples=16,
        diversity_samples=16,
        target_mazes=6,
        target_samples=160,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """One run of the benchmark: a task, a method, a learning rate and a seed."""

    task: str
    method: str
    learning_rate: float
    seed: int

    @property
    def key(self) -> str:
        """The run's folder name below ``runs/``."""
        return f"{self.task}/{self.method}/lr{self.learning_rate:g}/seed{self.seed}"


@dataclass
class TaskSetup:
    """What every run of one task shares: task options, base model folder, sampler."""

    task: str
    task_options: dict[str, Any]
    base: str | None
    sampler: dict[str, Any]
    base_heldout: dict[str, float] = field(default_factory=dict)
    max_train_examples: int | None = None  # distinct training prompts the task can generate
    family: str = "llada"  # the base's model family (tiltmatch.models.family)
    #: held-out evaluation's sampler when the rollouts use another (``--rollout-sampler``)
    eval_sampler: dict[str, Any] | None = None


# ----- configuration -----------------------------------------------------------------------


def task_setups(
    tasks: Sequence[str],
    size: BenchSize,
    bases: Path,
    quiet: bool = True,
    family: str | None = None,
    base_steps: int | None = None,
) -> dict[str, TaskSetup]:
    """Task options, base model and sampler of each task (pretraining missing bases).

    ``family``: pretrain every base (the maze's too, by its fallback recipe) with
    that family's architecture (``docs/families.md``); None keeps the default
    bases (the shipped maze base). ``base_steps``: pretraining steps of every
    base instead of its recipe's (a smaller, cheaper benchmark; cached apart).
    """
    arch = family or "llada"
    from tiltmatch.config import build_config
    from tiltmatch.experiments import base_models as recipes
    from tiltmatch.experiments.demo import demo_config_path
    from tiltmatch.models.loading import shipped_model_dir

    demo = build_config(demo_config_path())
    out: dict[str, TaskSetup] = {}
    for name in tasks:
        recipe = recipes.RECIPES[name]
        if name == "maze":
            # The shipped base and the demo's task options and sampler; the recipe's fallback
            # base only while the package does not ship one.
            options, sampler = dict(demo.task_options), demo.sampler.model_dump()
            shipped = shipped_model_dir("maze")
            if size.fresh_models:
                base = None
            elif family is None and base_steps is None and (shipped / "config.json").is_file():
                base = str(shipped)
            else:
                base = str(recipes.ensure_base("maze", bases, quiet, arch, base_steps))
        else:
            # The shipped base of the recipe (the same weights on every machine) while its
            # recorded task options still match the task's; else the recipe's cache.
            options, sampler = dict(recipe.task_options), dict(recipe.sampler)
            packaged = recipes.shipped_base(name) if family is None and base_steps is None else None
            if size.fresh_models:
                base = None
            elif packaged is not None:
                base = str(packaged)
            else:
                base = str(recipes.ensure_base(name, bases, quiet, arch, base_steps))
        heldout: dict[str, float] = {}
        if base is not None and (Path(base) / recipes.METRICS_FILE).is_file():
            heldout = json.loads((Path(base) / recipes.METRICS_FILE).read_text())["heldout"]
        # Small tasks (single-digit countdown) cannot generate many distinct prompts: the RL
        # pool is then capped at the SFT pool's size.
        cap = None if name == "maze" else recipe.pretrain.train_examples
        out[name] = TaskSetup(name, options, base, sampler, heldout, cap, arch)
    return out


def dtm_prompts_per_stage(size: BenchSize) -> int:
    """DTM's buffer prompts ``P`` so that ``stages x P x G`` equals the rollout budget."""
    per_stage, rest = divmod(size.budget, size.dtm_stages * size.num_generations)
    if rest or per_stage < size.prompts_per_batch:
        raise ValueError(
            f"budget {size.budget} is not stages {size.dtm_stages} x G {size.num_generations} "
            f"x P with P >= prompts_per_batch {size.prompts_per_batch}"
        )
    return per_stage


def check_budget(size: BenchSize) -> None:
    """Both ways of spending ``budget`` rollouts must come out even (else ValueError)."""
    dtm_prompts_per_stage(size)
    g, ppb = size.num_generations, size.prompts_per_batch
    if size.budget % (ppb * g):
        raise ValueError(f"budget {size.budget} is not a multiple of {ppb} prompts x G {g}")


def dtm_states_for(family: str) -> str:
    """DTM's states for a base of ``family``: a block diffusion model matches states
    inside its active block (docs/families.md); the others random masks."""
    return "block" if family == "block_diffusion" else "random"


def run_config_dict(setup: TaskSetup, spec: RunSpec, size: BenchSize) -> dict[str, Any]:
    """The :class:`~tiltmatch.config.RunConfig` fields of one run."""
    check_budget(size)
    g, ppb = size.num_generations, size.prompts_per_batch
    model: dict[str, Any] = {"base": setup.base}
    if setup.base is None:  # micro: a fresh one-layer model
        model.update(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        model["family"] = setup.family
    is_dtm = spec.method == "dtm"
    method_options: dict[str, Any] = {} if is_dtm else {"max_rollouts": size.budget}
    evaluation: dict[str, Any] = {
        "examples": size.eval_examples,
        "samples_per_example": size.eval_samples,
        "temperature": 1.0,
        "every_stage": False,
    }
    if setup.eval_sampler is not None:
        evaluation["sampler"] = setup.eval_sampler
    return {
        "task": setup.task,
        "task_options": setup.task_options,
        "method": spec.method,
        "method_options": method_options,
        "seed": spec.seed,
        "model": model,
        "sampler": setup.sampler,
        # The dtm section is DTM's alone (a baseline refuses one).
        "dtm": {
            "c": 1.0,
            "states": dtm_states_for(setup.family),
            "schedule": "fixed",
            "h": size.a_end / size.dtm_stages,
            "a_end": size.a_end,
            "steps_per_h": size.dtm_steps_per_h,
        }
        if is_dtm
        else {},
        "train": {
            "learning_rate": spec.learning_rate,
            # DTM decays each stage's LR to a third; a baseline keeps one constant LR.
            **({"final_learning_rate": spec.learning_rate / 3} if is_dtm else {}),
            "num_generations": g,
            "prompts_per_batch": ppb,
            # A baseline samples one batch of prompts per stage; DTM fills a buffer per stage.
            "buffer_prompts": dtm_prompts_per_stage(size) if is_dtm else ppb,
            "refresh_prompts": 0,
            "refresh_every": 10**6,
            "train_examples": min(size.train_examples, setup.max_train_examples or 10**9),
            "max_stages": 10**6,
            "save_steps": 10**6,
        },
        "eval": evaluation,
    }


# ----- one run ------------------------------------------------------------------------------


def distinct_correct(
    task: Any, texts: Sequence[Sequence[str]], examples: Sequence[Any]
) -> tuple[float, float]:
    """(mean distinct correct responses per prompt, mean fraction correct) over prompts."""
    distinct, correct = [], []
    for group, example in zip(texts, examples, strict=True):
        good = [t for t in group if task.reward(t, example) >= CORRECT]
        distinct.append(len(set(good)))
        correct.append(len(good) / max(len(group), 1))
    n = max(len(distinct), 1)
    return sum(distinct) / n, sum(correct) / n


def run_one(setup: TaskSetup, spec: RunSpec, size: BenchSize, folder: Path) -> dict[str, Any]:
    """Train one run and return its record (called in a forked process)."""
    from tiltmatch.config import build_config
    from tiltmatch.experiments.maze_probe import MazeTargetProbe

    run = MeasuredRun(build_config(base=run_config_dict(setup, spec, size)), folder)
    trainer = run.trainer
    metric = ACCURACY_METRIC[setup.task]
    diversity = Diversity(run, size, spec.seed)
    with torch.no_grad():
        probe = None
        if setup.task == "maze":  # the same target mazes for every seed; the base before training
            mazes = run.task.examples("test", size.target_mazes, seed=4242)
            probe = MazeTargetProbe(
                trainer, mazes, size.target_samples, 1.0, spec.seed, base=trainer.pair.student
            )
        base_distinct = diversity.measure()
        curve = HeldOutCurve(run, metric, size, trainer.evaluate())
    history = run.train([curve])
    curve.finish(history[-1])
    if history[-1]["rollouts"] != size.budget:
        raise RuntimeError(
            f"{spec.key} sampled {history[-1]['rollouts']} completions, not the budget "
            f"{size.budget}"
        )
    with torch.no_grad():
        distinct = diversity.measure()
        per_prompt = per_prompt_accuracy(run, metric)
        maze = {}
        if probe is not None:
            draws = probe.sample(trainer.pair.student, spec.seed + 3)
            maze = probe.path_report(size.a_end, draws)
    costs = run_costs(run)
    last, base = curve.points[-1], curve.points[0]
    return {
        "task": spec.task,
        "method": spec.method,
        "seed": spec.seed,
        "learning_rate": spec.learning_rate,
        "rollouts": costs.pop("rollouts"),
        "updates": costs.pop("updates"),
        "heldout_accuracy": last["heldout_accuracy"],
        "heldout_reward": last["reward"],
        "per_prompt_accuracy": per_prompt,
        "base_heldout_accuracy": base["heldout_accuracy"],
        "accuracy_metric": metric,
        "final_metrics": last["metrics"],
        "distinct_correct_per_prompt": distinct,
        "base_distinct_correct_per_prompt": base_distinct,
        **maze,
        **costs,
        "curve": curve.points,
        "config": run.config.model_dump(mode="json"),
    }


class Diversity:
    """Distinct correct responses per held-out prompt, on the first ``diversity_examples``
    prompts with ``diversity_samples`` draws each (always the same seed)."""

    def __init__(self, run: MeasuredRun, size: BenchSize, seed: int) -> None:
        self.run, self.samples, self.seed = run, size.diversity_samples, seed + 55
        self.examples = run.trainer.eval_examples[: size.diversity_examples]

    def measure(self) -> float:
        """The student's mean distinct correct responses per prompt."""
        from tiltmatch.training.evaluation import sample_texts

        trainer = self.run.trainer
        texts = sample_texts(
            trainer.eval_worker, trainer.pair.student, self.examples, self.samples, 1.0, self.seed
        )
        return distinct_correct(self.run.task, texts, self.examples)[0]


class HeldOutCurve(TrainerCallback):
    """Held-out accuracy and reward along the rollout budget: the base model's, then one
    point where the rollouts consumed cross the next point of the grid every method shares
    (``budget`` split in ``dtm_stages``), and the last stage's."""

    def __init__(
        self, run: MeasuredRun, metric: str, size: BenchSize, base_metrics: dict[str, float]
    ) -> None:
        self.run, self.metric = run, metric
        stages = size.dtm_stages
        self.grid = RolloutGrid([size.budget * (i + 1) // stages for i in range(stages)])
        self.points: list[dict[str, Any]] = [_point(0, 0, 0.0, 0.0, base_metrics, metric)]

    def on_stage_end(self, trainer: Any, record: dict[str, Any]) -> None:
        due = self.grid.crossed(record["rollouts"])
        if not (due or trainer.objective.finished(trainer.phase)):
            return
        if "eval_reward" not in record:
            record.update({f"eval_{k}": v for k, v in trainer.evaluate().items()})
        seconds = self.run.training_seconds()
        self._add(record, seconds)

    def finish(self, final: dict[str, Any]) -> None:
        """The last stage's point, if the grid did not end there (``train`` evaluated it)."""
        if self.points[-1]["rollouts"] != final["rollouts"]:
            self._add(final, self.run.train_seconds)

    def _add(self, record: dict[str, Any], seconds: float) -> None:
        metrics = eval_metrics(record)
        self.points.append(
            _point(
                record["rollouts"],
                record["updates"],
                seconds,
                self.run.rollout_seconds,
                metrics,
                self.metric,
            )
        )


def per_prompt_accuracy(run: MeasuredRun, metric: str) -> list[float]:
    """The final evaluation again, per held-out prompt (the trainer's evaluation seed, so
    the same draws): what the paired bootstrap over prompts resamples."""
    from tiltmatch.training.evaluation import sample_texts

    trainer, ec = run.trainer, run.config.eval
    texts = sample_texts(
        trainer.eval_worker,
        trainer.pair.student,
        trainer.eval_examples,
        ec.samples_per_example,
        ec.temperature,
        run.config.seed + 777,
    )
    return [
        float(run.task.metrics(group, [example] * len(group))[metric])
        for group, example in zip(texts, trainer.eval_examples, strict=True)
    ]


def run_costs(run: MeasuredRun) -> dict[str, Any]:
    """What a run cost: seconds (training without evaluation, rollouts, evaluation), per
    update and per rollout; rollouts, updates, stages; the mean gradient norm."""
    history = run.history
    final = history[-1]
    updates, rollout_seconds = final["updates"], run.rollout_seconds
    norms = [r["grad_norm"] for r in history]
    return {
        "rollouts": final["rollouts"],
        "updates": updates,
        "train_seconds": run.train_seconds,
        "rollout_seconds": rollout_seconds,
        "eval_seconds": run.eval_seconds,
        "seconds_per_update": max(run.train_seconds - rollout_seconds, 0.0) / max(updates, 1),
        "seconds_per_rollout": rollout_seconds / max(final["rollouts"], 1),
        "grad_norm_mean": sum(norms) / max(len(norms), 1),
        "stages": len(history),
    }


def _point(
    rollouts: int,
    updates: int,
    seconds: float,
    rollout_seconds: float,
    metrics: dict[str, float],
    metric: str,
) -> dict[str, Any]:
    return {
        "rollouts": int(rollouts),
        "updates": int(updates),
        "train_seconds": seconds,
        "rollout_seconds": rollout_seconds,
        "heldout_accuracy": float(metrics[metric]),
        "reward": float(metrics["reward"]),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def _child(setup: TaskSetup, spec: RunSpec, size: BenchSize, folder: Path, conn: Any) -> None:
    try:
        record = run_one(setup, spec, size, folder)
        record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conn.send(("ok", record))
    except BaseException:  # report any failure to the parent, which names the run
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def run_isolated(
    setup: TaskSetup, spec: RunSpec, size: BenchSize, folder: Path, isolate: bool = True
) -> dict[str, Any]:
    """:func:`run_one` in a forked process (a fresh peak-memory count, nothing leaks)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not isolate:
        record = run_one(setup, spec, size, folder)
        record["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return record
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(setup, spec, size, folder, child))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        status, payload = "error", f"process died (exit code {proc.exitcode})"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"benchmark run {spec.key} failed:\n{payload}")
    return payload


def run_cache_key(setup: TaskSetup, spec: RunSpec, size: BenchSize) -> str:
    """What a cached run must match to be reused: its run config, size and base weights.

    The size's seed count is left out: one run does not depend on how many seeds the
    benchmark has, so ``--seeds 5`` after ``--seeds 3`` runs only the new seeds.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(run_config_dict(setup, spec, size), sort_keys=True).encode())
    shape = {k: v for k, v in dataclasses.asdict(size).items() if k != "seeds"}
    digest.update(json.dumps(shape, sort_keys=True).encode())
    if setup.base is not None:
        digest.update(weights_digest(setup.base))
    return digest.hexdigest()


@functools.cache
def weights_digest(folder: str) -> bytes:
    """SHA-256 over a model folder's safetensors files (read once per benchmark process)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


def cached_run(
    setup: TaskSetup, spec: RunSpec, size: BenchSize, out: Path, isolate: bool, log: Callable
) -> dict[str, Any]:
    """A run's record from ``out/runs/<key>/result.json``, running it first if absent."""
    folder = out / "runs" / size.name / spec.key
    result = folder / "result.json"
    key = run_cache_key(setup, spec, size)
    if result.is_file():
        cached = json.loads(result.read_text())
        if cached.get("cache_key") == key:
            return cached
        log(f"  {spec.key}: cached result is stale (config or base model changed); rerunning")
        shutil.rmtree(folder)
    started = time.time()
    record = run_isolated(setup, spec, size, folder, isolate)
    record["wall_seconds"] = time.time() - started
    record["cache_key"] = key
    result.write_text(json.dumps(record, indent=2))
    log(
        f"  {spec.key}: acc {record['heldout_accuracy']:.3f} "
        f"(base {record['base_heldout_accuracy']:.3f}) in {record['wall_seconds']:.0f} s"
    )
    return record


# ----- aggregation --------------------------------------------------------------------------


def mean_curve(records: Sequence[dict[str, Any]], key: str = "rollouts") -> list[dict[str, float]]:
    """Mean, min and max held-out accuracy over seeds at each curve point (shared grid)."""
    curves = [r["curve"] for r in records]
    n = min(len(c) for c in curves)
    out = []
    for i in range(n):
        accs = [c[i]["heldout_accuracy"] for c in curves]
        out.append(
            {
                "x": statistics.fmean(c[i][key] for c in curves),
                "mean": statistics.fmean(accs),
                "low": min(accs),
                "high": max(accs),
            }
        )
    return out


def rollouts_to_reach(curve: Sequence[dict[str, float]], level: float) -> float | None:
    """First rollout count at which a mean curve reaches ``level`` (linear between points)."""
    for prev, cur in itertools.pairwise(curve):
        if cur["mean"] >= level:
            if prev["mean"] >= level:
                return prev["x"]
            frac = (level - prev["mean"]) / (cur["mean"] - prev["mean"])
            return prev["x"] + frac * (cur["x"] - prev["x"])
    return curve[0]["x"] if curve and curve[0]["mean"] >= level else None


def _stats(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {
        "mean": statistics.fmean(vals),
        "std": std,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def summarise(
    results: Sequence[dict[str, Any]], sweep: Sequence[dict[str, Any]], size: BenchSize
) -> dict[str, Any]:
    """Per task and method: final accuracy over seeds, costs, diversity; the goal check."""
    summary: dict[str, Any] = {"tasks": {}}
    for task in dict.fromkeys(r["task"] for r in results):
        rows: dict[str, Any] = {}
        for method in dict.fromkeys(r["method"] for r in results if r["task"] == task):
            recs = [r for r in results if r["task"] == task and r["method"] == method]
            row: dict[str, Any] = {
                "learning_rate": recs[0]["learning_rate"],
                "sweep": {
                    f"{s['learning_rate']:g}": s["heldout_accuracy"]
                    for s in sweep
                    if s["task"] == task and s["method"] == method
                },
                "curve": mean_curve(recs),
                "curve_seconds": mean_curve(recs, "train_seconds"),
            }
            for key in (
                "heldout_accuracy",
                "heldout_reward",
                "base_heldout_accuracy",
                "distinct_correct_per_prompt",
                "base_distinct_correct_per_prompt",
                "train_seconds",
                "seconds_per_update",
                "seconds_per_rollout",
                "peak_rss_mb",
                "tv_to_target",
                "tv_noise_floor",
                "tv_ratio",
                "tv_to_path",
                "tv_to_path_noise_floor",
                "model_expected_reward",
                "target_expected_reward",
                "distinct_optimal_paths_target_mazes",
            ):
                if key in recs[0]:
                    row[key] = _stats([r[key] for r in recs])
            rows[method] = row
        recs = [r for r in results if r["task"] == task]
        summary["tasks"][task] = {
            "methods": rows,
            "goal": _goal(rows, size),
            "comparisons": comparisons(recs),
            "paired_goal": paired_goal(recs, size),
        }
    return summary


def _by_seed(records: Sequence[dict[str, Any]], method: str) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in records if r["method"] == method}


def compare(records: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Method ``a`` minus method ``b`` in final held-out accuracy, paired on their seeds.

    A t interval over seeds, and a two-level paired bootstrap over seeds and held-out
    prompts where every run recorded its per-prompt accuracy. ``verdict`` is ``">"``
    or ``"<"`` only where *both* intervals exclude 0, else ``"~"`` (not separated).
    """
    from tiltmatch.experiments import paired

    ra, rb = _by_seed(records, a), _by_seed(records, b)
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        raise ValueError(f"methods {a} and {b} share no seed")
    diffs = [ra[s]["heldout_accuracy"] - rb[s]["heldout_accuracy"] for s in seeds]
    mean, t_low, t_high = paired.t_interval(diffs)
    out: dict[str, Any] = {
        "a": a,
        "b": b,
        "seeds": seeds,
        "per_seed": diffs,
        "mean": mean,
        "t_interval": [t_low, t_high],
    }
    lows, highs = [t_low], [t_high]
    if all("per_prompt_accuracy" in r[s] for r in (ra, rb) for s in seeds):
        _, b_low, b_high = paired.paired_bootstrap(
            [ra[s]["per_prompt_accuracy"] for s in seeds],
            [rb[s]["per_prompt_accuracy"] for s in seeds],
        )
        out["bootstrap_interval"] = [b_low, b_high]
        lows.append(b_low)
        highs.append(b_high)
    both = {paired.verdict(lo, hi) for lo, hi in zip(lows, highs, strict=True)}
    out["verdict"] = both.pop() if len(both) == 1 else "~"
    return out


def comparisons(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pair of methods of one task (in the order they ran), paired on seeds."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    return [compare(records, a, b) for a, b in itertools.combinations(methods, 2)]


def paired_goal(records: Sequence[dict[str, Any]], size: BenchSize) -> dict[str, Any]:
    """The goal per seed: DTM against the best baseline (by mean final accuracy) of the seed.

    Per seed ``s``: the rollouts DTM's curve needs to reach the baseline's final accuracy
    of seed ``s`` (infinite when it never does), as a fraction of the budget, with a
    bootstrap interval over seeds of its median; and the final-accuracy difference with
    its paired intervals (:func:`compare`).
    """
    from tiltmatch.experiments import paired

    methods = list(dict.fromkeys(r["method"] for r in records))
    baselines = [m for m in methods if m != "dtm"]
    if "dtm" not in methods or not baselines:
        return {}

    def mean_acc(m: str) -> float:
        return statistics.fmean(r["heldout_accuracy"] for r in records if r["method"] == m)

    best = max(baselines, key=mean_acc)
    dtm, base = _by_seed(records, "dtm"), _by_seed(records, best)
    seeds = sorted(set(dtm) & set(base))
    fractions = []
    for s in seeds:
        curve = [{"x": p["rollouts"], "mean": p["heldout_accuracy"]} for p in dtm[s]["curve"]]
        reach = rollouts_to_reach(curve, base[s]["heldout_accuracy"])
        fractions.append(math.inf if reach is None else reach / size.budget)
    median, low, high = paired.bootstrap_seeds(fractions)
    final = compare(records, "dtm", best)
    return {
        "best_baseline": best,
        "seeds": seeds,
        "fraction_of_budget_to_match": fractions,
        "fraction_median": median,
        "fraction_interval": [low, high],
        "half_budget_holds": high <= 0.5,
        "half_budget_fails": low > 0.5,
        "final_difference": final,
    }


def _goal(rows: dict[str, Any], size: BenchSize) -> dict[str, Any]:
    """The issue's goal, measured: DTM vs the best baseline (by final held-out accuracy)."""
    baselines = {m: r for m, r in rows.items() if m != "dtm"}
    if "dtm" not in rows or not baselines:
        return {}
    best = max(baselines, key=lambda m: baselines[m]["heldout_accuracy"]["mean"])
    level = baselines[best]["heldout_accuracy"]["mean"]
    dtm = rows["dtm"]
    reach = rollouts_to_reach(dtm["curve"], level)
    base = dtm["base_heldout_accuracy"]["mean"]
    out: dict[str, Any] = {
        "base_accuracy": base,
        "best_baseline_above_base": level > base,
        "best_baseline": best,
        "best_baseline_accuracy": level,
        "best_baseline_rollouts": size.budget,
        "dtm_accuracy": dtm["heldout_accuracy"]["mean"],
        "dtm_rollouts_to_reach": reach,
        "reaches_with_half": reach is not None and reach <= size.budget / 2,
        "ends_at_least_as_high": dtm["heldout_accuracy"]["mean"] >= level,
    }
    if "tv_ratio" in dtm:
        out["dtm_tv_ratio"] = dtm["tv_ratio"]["mean"]
        out["dtm_within_2x_floor"] = dtm["tv_ratio"]["mean"] <= 2.0
        out["baseline_tv_ratio"] = {m: r["tv_ratio"]["mean"] for m, r in baselines.items()}
    return out


# ----- reporting ----------------------------------------------------------------------------

_LABELS = {name: method.label for name, method in registry.METHODS.items()}


def plot(summary: dict[str, Any], out: Path) -> list[str]:
    """Accuracy vs rollouts and vs training seconds: one panel per task, a seed band per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for key, xlabel, name in (
        ("curve", "rollouts consumed (completions sampled)", "accuracy_vs_rollouts.png"),
        ("curve_seconds", "training seconds (evaluation excluded)", "accuracy_vs_seconds.png"),
    ):
        tasks = list(summary["tasks"])
        fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            for method, row in summary["tasks"][task]["methods"].items():
                c = row[key]
                x = [p["x"] for p in c]
                (line,) = ax.plot(
                    x, [p["mean"] for p in c], "o-", ms=3, label=_LABELS.get(method, method)
                )
                ax.fill_between(
                    x,
                    [p["low"] for p in c],
                    [p["high"] for p in c],
                    color=line.get_color(),
                    alpha=0.15,
                )
            ax.set_title(f"{task} ({ACCURACY_METRIC[task]})")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("held-out accuracy")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle("mean over seeds, band = min..max over seeds")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _fmt(stat: dict[str, float] | None, spec: str = ".3f") -> str:
    if not stat or stat.get("n", 0) == 0:
        return "-"
    return f"{stat['mean']:{spec}} ± {stat['std']:{spec}}"


def machine_line() -> str:
    """The machine the benchmark ran on, in words."""
    import os

    cores = os.cpu_count()
    gpu = "GPU" if torch.cuda.is_available() else "no GPU"
    return (
        f"{cores}-core CPU ({platform.processor() or platform.machine()}), {gpu}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s)"
    )


def _interval(bounds: Sequence[float] | None) -> str:
    if not bounds:
        return "-"
    return f"[{bounds[0]:+.3f}, {bounds[1]:+.3f}]"


def _comparison_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Paired differences in final held-out accuracy, and the rankings they support."""
    lines = [
        f"Paired differences in final held-out accuracy (A - B over seeds "
        f"{', '.join(str(s) for s in rows[0]['seeds'])}; 95% intervals; a ranking is claimed "
        "only where both intervals exclude 0):",
        "",
        "| A - B | mean | per seed | t interval (seeds) | bootstrap (seeds x prompts) | ranking |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        a, b = _LABELS.get(row["a"], row["a"]), _LABELS.get(row["b"], row["b"])
        ranking = {">": f"{a} > {b}", "<": f"{b} > {a}", "~": "not separated"}[row["verdict"]]
        lines.append(
            f"| {a} - {b} | {row['mean']:+.3f} | "
            f"{' '.join(f'{d:+.3f}' for d in row['per_seed'])} | "
            f"{_interval(row['t_interval'])} | {_interval(row.get('bootstrap_interval'))} | "
            f"{ranking} |"
        )
    return lines


def _paired_goal_line(pg: dict[str, Any]) -> str:
    fractions = " ".join(
        "never" if math.isinf(f) else f"{f:.2f}" for f in pg["fraction_of_budget_to_match"]
    )
    low, high = pg["fraction_interval"]

    def text(x: float) -> str:
        return "never" if math.isinf(x) else f"{x:.2f}"

    holds = "yes" if pg["half_budget_holds"] else ("no" if pg["half_budget_fails"] else "undecided")
    final = pg["final_difference"]
    return (
        f"Per seed (paired): DTM reaches {pg['best_baseline']}'s final accuracy of the same seed "
        f"at {fractions} of the budget (median {text(pg['fraction_median'])}, 95% bootstrap "
        f"interval [{text(low)}, {text(high)}]; at most half: {holds}); final accuracy DTM - "
        f"{pg['best_baseline']} {final['mean']:+.3f}, t {_interval(final['t_interval'])}, "
        f"bootstrap {_interval(final.get('bootstrap_interval'))}."
    )


def report_markdown(
    summary: dict[str, Any], size: BenchSize, command: str, date: str, seconds: float
) -> str:
    """The benchmark's tables as Markdown (pasted into BENCHMARKS.md)."""
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Date: {date}; total wall time {seconds / 60:.1f} min  ",
        f"Size `{size.name}`: {size.seeds} seeds, {size.budget} rollouts per run "
        f"(G = {size.num_generations}, {size.prompts_per_batch} prompts per update), "
        f"learning-rate sweep {', '.join(f'{lr:g}' for lr in size.learning_rates)} on seed 0; "
        f"DTM: {size.dtm_stages} stages x {size.dtm_steps_per_h} updates, a_end = {size.a_end:g}, "
        f"c = 1, {summary.get('dtm_states', 'random')} states; held-out: "
        f"{size.eval_examples} prompts x {size.eval_samples} "
        f"samples at temperature 1.",
        "",
    ]
    for task, block in summary["tasks"].items():
        lines += _task_table(task, block)
        lines += _goal_lines(block)
        if block.get("comparisons"):
            lines += ["", *_comparison_table(block["comparisons"])]
        lines.append("")
    lines += [
        "![accuracy vs rollouts](accuracy_vs_rollouts.png)",
        "",
        "![accuracy vs seconds](accuracy_vs_seconds.png)",
        "",
    ]
    return "\n".join(lines)


def _task_table(task: str, block: dict[str, Any]) -> list[str]:
    """One task's table: a row per method at its selected learning rate (seed means)."""
    maze = task == "maze"
    lines = [
        f"#### {task} (held-out accuracy = `{ACCURACY_METRIC[task]}`)",
        "",
        "| method | best lr | sweep (seed 0: lr -> acc) | final acc | reward | base acc "
        "| distinct correct / prompt (base) | s / update | ms / rollout | peak RSS MB |"
        + (" TV to p_beta (floor) | TV to nearest p_b | E[r] model / target |" if maze else ""),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        + (" --- | --- | --- |" if maze else ""),
    ]
    for method, row in block["methods"].items():
        sweep = ", ".join(f"{lr}: {acc:.3f}" for lr, acc in row["sweep"].items())
        ms = row["seconds_per_rollout"]
        ms_text = f"{1000 * ms['mean']:.1f}" if ms.get("n") else "-"
        cells = [
            _LABELS.get(method, method),
            f"{row['learning_rate']:g}",
            sweep,
            _fmt(row["heldout_accuracy"]),
            _fmt(row["heldout_reward"]),
            _fmt(row["base_heldout_accuracy"]),
            f"{_fmt(row['distinct_correct_per_prompt'], '.2f')} "
            f"({_fmt(row['base_distinct_correct_per_prompt'], '.2f')})",
            _fmt(row["seconds_per_update"]),
            ms_text,
            f"{row['peak_rss_mb']['mean']:.0f}",
        ]
        if maze:
            cells += [
                f"{_fmt(row['tv_to_target'])} ({row['tv_noise_floor']['mean']:.3f})",
                f"{_fmt(row['tv_to_path'])} ({row['tv_to_path_noise_floor']['mean']:.3f})",
                f"{row['model_expected_reward']['mean']:.3f} / "
                f"{row['target_expected_reward']['mean']:.3f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _goal_lines(block: dict[str, Any]) -> list[str]:
    """The goal check of one task (DTM against the best baseline), if it has one."""
    goal = block["goal"]
    if not goal:
        return []
    reach = goal["dtm_rollouts_to_reach"]
    reach_text = "never" if reach is None else f"{reach:.0f} rollouts"
    lines = [
        "",
        f"Goal check: best baseline {goal['best_baseline']} ends at "
        f"{goal['best_baseline_accuracy']:.3f} after {goal['best_baseline_rollouts']} "
        f"rollouts; DTM's mean curve reaches that level at {reach_text} "
        f"(half budget: {'yes' if goal['reaches_with_half'] else 'no'}) and ends at "
        f"{goal['dtm_accuracy']:.3f} (at least as high: "
        f"{'yes' if goal['ends_at_least_as_high'] else 'no'}).",
    ]
    if not goal["best_baseline_above_base"]:
        lines.append(
            f"No baseline ends above the base model ({goal['base_accuracy']:.3f}): "
            "reaching the best baseline's level is trivial here, not a win."
        )
    pg = block.get("paired_goal") or {}
    if pg:
        lines.append(_paired_goal_line(pg))
    if "dtm_tv_ratio" in goal:
        others = ", ".join(f"{m} {v:.2f}" for m, v in goal["baseline_tv_ratio"].items())
        lines.append(
            f"Maze TV / noise floor at beta = a_end: DTM {goal['dtm_tv_ratio']:.2f} "
            f"(within 2x: {'yes' if goal['dtm_within_2x_floor'] else 'no'}); {others}."
        )
    return lines


# ----- the command --------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The benchmark's command line."""
    p = argparse.ArgumentParser(
        prog="tiltmatch bench", description="Side-by-side benchmark of DTM and its baselines."
    )
    p.add_argument("--out", default="runs/bench", help="output folder (results.json, plots)")
    p.add_argument("--quick", action="store_true", help="the quick size (about 10 minutes)")
    p.add_argument("--size", choices=sorted(SIZES), help="quick, default or micro (smoke test)")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--seeds", type=int, help="number of seeds (overrides the size's)")
    p.add_argument("--bases", default="runs/bases", help="cache of the pretrained base models")
    p.add_argument(
        "--remasking",
        choices=("random", "low_confidence"),
        help="sample every task with this remasking (default: each task's own sampler)",
    )
    p.add_argument(
        "--rollout-sampler",
        choices=("exact", "cached", "parallel", "cached+parallel"),
        help="draw the training rollouts with this sampler mode (docs/sampling.md); held-out "
        "evaluation keeps each task's own sampler, so runs compare on one ruler",
    )
    p.add_argument(
        "--budget", type=int, help="rollouts per run (overrides the size's; a diagnostic)"
    )
    p.add_argument(
        "--learning-rates",
        type=float,
        nargs="+",
        help="the learning-rate sweep (overrides the size's; a diagnostic)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="run in this process (no per-run fork; peak memory is cumulative)",
    )
    p.add_argument(
        "--family",
        choices=("llada", "dream", "block_diffusion"),
        help="pretrain every base (the maze's by its recipe) with this model family",
    )
    p.add_argument(
        "--base-steps", type=int, help="pretraining steps of every base (default: its recipe's)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out that holds anything but this benchmark's own results (the old "
        "folder is kept aside until the first new result is written)",
    )
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


#: marks a folder as a benchmark's own: rerun with the same --out, its cached runs are reused
BENCH_MARKER = ".tiltmatch-bench"


def check_args(args: argparse.Namespace) -> None:
    """Refuse counts and rates that cannot mean anything (ValueError naming the flag)."""
    for flag, value in (
        ("--seeds", args.seeds),
        ("--budget", args.budget),
        ("--base-steps", args.base_steps),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    for rate in args.learning_rates or ():
        if not (math.isfinite(rate) and 0 < rate <= 1):
            raise ValueError(f"--learning-rates must be finite numbers in (0, 1], got {rate}")


def _run_all(
    args: argparse.Namespace,
    setups: dict[str, TaskSetup],
    size: BenchSize,
    out: Path,
    isolate: bool,
    destination: Destination,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every task x method: the learning-rate sweep on seed 0, then the other seeds at the
    best rate. The destination is committed with the first result."""
    sweep: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []

    def run(spec: RunSpec) -> dict[str, Any]:
        record = cached_run(setups[spec.task], spec, size, out, isolate, log)
        destination.commit()
        return record

    for task in args.tasks:
        log(f"{task}: base {setups[task].base or '(fresh model)'}")
        for method in args.methods:
            tried = [run(RunSpec(task, method, lr, 0)) for lr in size.learning_rates]
            sweep += tried
            best = max(tried, key=lambda r: (r["heldout_accuracy"], r["heldout_reward"]))
            results.append(best)
            for seed in range(1, size.seeds):
                results.append(run(RunSpec(task, method, best["learning_rate"], seed)))
    return sweep, results


def main(argv: list[str]) -> int:
    """Run the benchmark; returns the exit code."""
    args = parse_args(argv)
    check_args(args)
    destination = Destination(
        args.out,
        what="benchmark",
        overwrite=args.overwrite,
        sources=[Path(args.bases)],
        reuse_marker=BENCH_MARKER,
    )
    destination.check()
    torch.set_num_threads(1)
    size = SIZES[args.size or ("quick" if args.quick else "default")]
    if args.seeds is not None:
        size = dataclasses.replace(size, seeds=args.seeds)
    if args.budget is not None:  # a size of its own: its runs are cached apart
        name = f"{size.name}-budget{args.budget}"
        size = dataclasses.replace(size, name=name, budget=args.budget)
        check_budget(size)  # now, not at the first run
    if args.learning_rates:
        size = dataclasses.replace(size, learning_rates=tuple(args.learning_rates))
    out = destination.path

    def log(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    started = time.time()
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    command = "tiltmatch bench " + " ".join(argv)
    setups = task_setups(
        args.tasks, size, Path(args.bases), args.quiet, args.family, args.base_steps
    )
    if args.remasking is not None:
        for setup in setups.values():
            setup.sampler = {**setup.sampler, "remasking": args.remasking}
    if args.rollout_sampler is not None:
        from pydantic import ValidationError

        from tiltmatch.config import validation_reasons
        from tiltmatch.sampling.config import SamplingConfig

        for setup in setups.values():
            rollout = {**setup.sampler, "mode": args.rollout_sampler}
            try:
                SamplingConfig(**rollout)
            except ValidationError as err:  # e.g. parallel decoding with random remasking
                print(
                    f"tiltmatch bench: --rollout-sampler {args.rollout_sampler} cannot sample "
                    f"{setup.task} ({validation_reasons(err)})",
                    file=sys.stderr,
                )
                return 2
            setup.eval_sampler, setup.sampler = dict(setup.sampler), rollout
    isolate = not args.no_isolate
    with destination:  # an old folder goes once the first new run has its result
        sweep, results = _run_all(args, setups, size, out, isolate, destination, log)
    slim = [{k: v for k, v in r.items() if k != "config"} for r in sweep]
    (out / "sweep.json").write_text(json.dumps(slim, indent=2))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    summary = summarise(results, sweep, size)
    summary["size"] = dataclasses.asdict(size)
    summary["bases"] = {t: {"base": s.base, "heldout": s.base_heldout} for t, s in setups.items()}
    if args.family is not None:  # the model family of every base, and DTM's states for it
        summary["family"] = args.family
        summary["dtm_states"] = dtm_states_for(args.family)
    seconds = time.time() - started
    summary.update(command=command, date=date, machine=machine_line(), wall_seconds=seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(summary, out)
    (out / "report.md").write_text(report_markdown(summary, size, command, date, seconds))
    log(f"wrote {out / 'results.json'}, {out / 'report.md'} ({seconds / 60:.1f} min)")
    return 0
