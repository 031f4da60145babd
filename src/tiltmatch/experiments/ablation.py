"""The maze ablation of METHOD.md section 7: annealing x control variate x states, several seeds.

Every variant is c-DTM on the maze from the same base model with the demo's
configuration (``configs/demo_maze.yaml``) shrunk to the ablation's size; only
the ablated fields change:

- annealing: ``none`` (one stage straight to ``a_end``), ``fixed`` (constant ``h``),
  ``adaptive`` (largest ``h <= h_max`` with mean ESS >= ``rho``);
- control variate: ``c`` = 0 (plain weighted cross-entropy) or 1;
- states: ``random`` masking or ``sar`` (semi-autoregressive aligned); also
  ``trajectory`` (the sampler's own visited states) with ``--states trajectory``.

The training prompts are a fixed set of ``train_mazes`` mazes, and the ruler is
the exact tilted target on exactly those mazes: each stage's minimiser is the
tilted posterior at the states the sampler visits for the prompts it trains on
(METHOD.md sections 4 and 6), so this is where DTM's claim can be checked. After
every stage it records, on the training mazes, the TV to ``p_a`` at the ``a``
reached with its noise floor, the TV to the nearest ``p_b`` of the annealing path,
the expected reward and the distinct shortest paths kept
(:class:`tiltmatch.experiments.maze_probe.MazeTargetProbe`); and, as
generalisation, the held-out reward and the TV to ``p_a`` on held-out mazes; and
the gradient-norm variance of the stage. ``none`` gets as many updates in its
single stage as ``fixed`` has in all of its stages.

With ``--baselines`` the baselines (diffu-GRPO, wd1, rejection sampling) train on
the same mazes from the same base with fixed/c1's rollout budget, probed at the
same rollout counts; :func:`matched_reward` then compares every method at matched
expected reward: its TV to the nearest ``p_b`` and its distinct shortest paths
(which methods stay on the tilt path and which collapse).

:func:`paired_comparisons` reads what removing annealing or the control variate (or
changing the states) costs, paired per seed with a t interval, claiming a difference only
where the interval excludes 0.

Writes ``ablation.json`` (every run with its per-stage history), ``paired.json`` (the
paired comparisons), ``ablation.md`` (the tables) and ``ablation.png`` (one figure: TV
to ``p_a`` per stage for every variant, seed mean with the min-max band, per state
sampler; expected reward; and the baselines at matched reward) into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiltmatch.experiments.measured_run import MeasuredRun, RolloutGrid

SCHEDULES: tuple[str, ...] = ("none", "fixed", "adaptive")
CONTROL_VARIATES: tuple[float, ...] = (0.0, 1.0)
STATES: tuple[str, ...] = ("random", "sar", "trajectory")
#: the baselines of METHOD.md section 8, run with ``--baselines``
BASELINES: tuple[str, ...] = ("diffu-grpo", "wd1", "rejection")
#: the states of METHOD.md section 7's ablation (trajectory states on request)
DEFAULT_STATES: tuple[str, ...] = ("random", "sar")


@dataclass(frozen=True)
class AblationSize:
    """How big the ablation is."""

    name: str
    seeds: int
    a_end: float
    h: float
    h_max: float
    steps_per_h: int
    buffer_prompts: int
    num_generations: int
    prompts_per_batch: int
    learning_rate: float
    eval_examples: int
    eval_samples: int
    target_mazes: int
    target_samples: int
    train_mazes: int = 8  # the training prompts: a fixed set, probed at every stage
    train_samples: int = 100  # samples per training maze per model for the probe
    max_stages: int = 12


SIZES: dict[str, AblationSize] = {
    "micro": AblationSize(
        "micro", 1, 4.0, 2.0, 4.0, 2, 4, 2, 2, 3e-4, 4, 1, 2, 8, 2, 8, max_stages=4
    ),
    # The demo's learning rate (3e-4, decaying to 1e-4 within each stage). The buffer holds
    # every training maze twice (small) or four times (default) per stage.
    "small": AblationSize("small", 3, 10.0, 2.5, 5.0, 12, 16, 8, 8, 3e-4, 32, 2, 4, 64, 8, 100),
    "default": AblationSize(
        "default", 3, 10.0, 2.0, 4.0, 40, 32, 8, 8, 3e-4, 64, 4, 8, 200, 8, 200
    ),
}


def fixed_stages(size: AblationSize) -> int:
    """Stages of the fixed schedule from 0 to ``a_end`` (the last step clipped)."""
    return max(math.ceil(size.a_end / size.h - 1e-9), 1)


def fixed_budget(size: AblationSize) -> int:
    """Completions fixed-h DTM samples: per stage a buffer rebuild and its refreshes."""
    steps = size.steps_per_h
    every = max(steps // 2, 1)
    refreshes = (steps - 1) // every
    per_stage = size.buffer_prompts + (size.buffer_prompts // 4) * refreshes
    return fixed_stages(size) * per_stage * size.num_generations


def variant_name(schedule: str, c: float, states: str) -> str:
    """A variant's short name, e.g. ``fixed/c1/random``."""
    return f"{schedule}/c{c:g}/{states}"


def baseline_overrides(size: AblationSize, method: str, seed: int, base: str | None) -> list[str]:
    """``--set`` overrides for a baseline on the ablation's training mazes.

    One batch of ``prompts_per_batch`` prompts per stage until fixed-h DTM's budget
    (:func:`fixed_budget`) is spent; the method's own options otherwise (METHOD.md
    section 8), at the ablation's learning rate.
    """
    out = [
        f"seed={seed}",
        f"method={method}",
        f"method_options.max_rollouts={fixed_budget(size)}",
        f"train.learning_rate={size.learning_rate}",
        # The demo's per-stage schedule is DTM's; a baseline keeps one constant LR.
        f"train.final_learning_rate={size.learning_rate}",
        "train.warmup_ratio=0",
        "train.decay_fraction=0",
        f"train.buffer_prompts={size.prompts_per_batch}",
        f"train.num_generations={size.num_generations}",
        f"train.prompts_per_batch={size.prompts_per_batch}",
        "train.refresh_prompts=0",
        "train.refresh_every=1000000",
        f"train.train_examples={size.train_mazes}",
        "train.max_stages=1000000",
        "train.save_steps=1000000",
        f"eval.examples={size.eval_examples}",
        f"eval.samples_per_example={size.eval_samples}",
        "eval.every_stage=false",
    ]
    return out + _model_overrides(base)


def _model_overrides(base: str | None) -> list[str]:
    if base is None:  # micro: a fresh one-layer model
        return [
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=2",
            "model.intermediate_size=64",
        ]
    return [f"model.base={base}"]


def overrides_of(
    size: AblationSize, schedule: str, c: float, states: str, seed: int, base: str | None
) -> list[str]:
    """``--set`` overrides of the demo configuration for one ablation run."""
    steps = size.steps_per_h
    if schedule == "none":  # the same number of updates as the fixed schedule, in one stage
        steps *= fixed_stages(size)
    out = [
        f"seed={seed}",
        f"dtm.schedule={schedule}",
        f"dtm.c={c}",
        f"dtm.states={states}",
        f"dtm.h={size.h}",
        f"dtm.h_max={size.h_max}",
        f"dtm.a_end={size.a_end}",
        f"dtm.steps_per_h={steps}",
        f"train.learning_rate={size.learning_rate}",
        f"train.final_learning_rate={size.learning_rate / 3}",
        f"train.buffer_prompts={size.buffer_prompts}",
        f"train.num_generations={size.num_generations}",
        f"train.prompts_per_batch={size.prompts_per_batch}",
        f"train.refresh_prompts={size.buffer_prompts // 4}",
        f"train.refresh_every={max(steps // 2, 1)}",
        f"train.train_examples={size.train_mazes}",
        f"train.max_stages={size.max_stages}",
        "train.save_steps=1000000",
        f"eval.examples={size.eval_examples}",
        f"eval.samples_per_example={size.eval_samples}",
        "eval.every_stage=true",
    ]
    return out + _model_overrides(base)


#: the stage-record keys an ablation run keeps in its history
HISTORY_KEYS: tuple[str, ...] = (
    "stage",
    "a",
    "h",
    "a_after",
    "ess",
    "eval_reward",
    "eval_accuracy",
    "eval_distinct_optimal_paths",
    "tv_to_target",
    "tv_noise_floor",
    "train_tv_to_target",
    "train_tv_noise_floor",
    "train_expected_reward",
    "train_target_expected_reward",
    "train_distinct_optimal_paths",
    "train_distinct_optimal_paths_base",
    "train_tv_to_path",
    "train_tv_to_path_beta",
    "train_tv_to_path_noise_floor",
    "train_rollouts_on_mazes",
    "grad_norm",
    "grad_norm_var",
    "loss",
    "rollouts",
    "updates",
    "wall_seconds",
)


def run_variant(
    size: AblationSize,
    schedule: str,
    c: float,
    states: str,
    seed: int,
    base: str | None,
    folder: Path,
    method: str = "dtm",
) -> dict[str, Any]:
    """Train one variant (or, with ``method``, one baseline) and return its record."""
    from tiltmatch.config import build_config
    from tiltmatch.experiments.demo import demo_config_path
    from tiltmatch.experiments.maze_probe import MazeTargetProbe, training_maze_probe
    from tiltmatch.settings import read_config_file

    is_dtm = method == "dtm"
    overrides = (
        overrides_of(size, schedule, c, states, seed, base)
        if is_dtm
        else baseline_overrides(size, method, seed, base)
    )
    if is_dtm:
        config = build_config(demo_config_path(), overrides)
    else:  # the demo's settings less its dtm section, which a baseline does not read
        demo = read_config_file(demo_config_path())
        config = build_config(None, overrides, base={k: v for k, v in demo.items() if k != "dtm"})
    run = MeasuredRun(config, folder)
    trainer = run.trainer
    mazes = run.task.examples("test", size.target_mazes, seed=4242)
    with torch.no_grad():
        probe = MazeTargetProbe(trainer, mazes, size.target_samples, 1.0, seed)
        # every training maze
        train_probe = training_maze_probe(
            trainer, trainer.pool.examples, size.train_samples, 1.0, seed
        )
        base_eval = trainer.evaluate()
        at0 = train_probe.measure(0.0, samples=train_probe.base_b)
    if not is_dtm:
        # A baseline's stage is one batch: probe where its rollouts cross fixed-h DTM's
        # stage boundaries, so every method is measured at the same rollout counts, against
        # the target DTM anneals to (a baseline has no a).
        stages = fixed_stages(size)
        train_probe.due = RolloutGrid(
            [fixed_budget(size) * (i + 1) // stages for i in range(stages)]
        )
        train_probe.beta = size.a_end
    history = run.train([probe, train_probe] if is_dtm else [train_probe])
    with torch.no_grad():
        final = probe.measure(size.a_end, seed=seed + 5)
    name = variant_name(schedule, c, states) if is_dtm else f"baseline/{method}"
    return {
        "variant": name,
        "method": method,
        "schedule": schedule if is_dtm else "-",
        "c": c if is_dtm else None,
        "states": states if is_dtm else "-",
        "seed": seed,
        **variant_figures(run, base_eval, final, train_probe, at0),
        "probe_seconds": probe.seconds + train_probe.seconds,
        "history": [{k: r.get(k) for k in HISTORY_KEYS} for r in history],
    }


def variant_figures(
    run: MeasuredRun,
    base_eval: dict[str, float],
    final: dict[str, Any],
    train_probe: Any,
    at0: dict[str, Any],
) -> dict[str, Any]:
    """A run's figures: held-out reward and TV to ``p_{a_end}`` (``final``), and on the
    training mazes the last probed stage against the base (``at0``)."""
    history = run.history
    probed = [r for r in history if "train_tv_to_target" in r]
    last = probed[-1] if probed else {}
    nan = float("nan")
    return {
        "a_reached": history[-1]["a_after"] if history else 0.0,
        "base_reward": base_eval["reward"],
        "final_reward": history[-1]["eval_reward"],
        "final_accuracy": history[-1]["eval_accuracy"],
        "tv_to_target": final["tv_to_target"],
        "tv_noise_floor": final["tv_noise_floor"],
        "tv_ratio": final["tv_to_target"] / max(final["tv_noise_floor"], 1e-12),
        "distinct_optimal_paths": final["distinct_optimal_model"],
        "distinct_optimal_paths_base": final["distinct_optimal_base"],
        "train_mazes": len(train_probe.mazes),
        "train_base_reward": at0["expected_reward_base"],
        "train_floor_at_0": at0["tv_noise_floor"],
        "train_tv_to_target": last.get("train_tv_to_target", nan),
        "train_tv_noise_floor": last.get("train_tv_noise_floor", nan),
        "train_tv_ratio": last.get("train_tv_to_target", nan)
        / max(last.get("train_tv_noise_floor", nan), 1e-12),
        "train_max_tv_ratio": max(
            (r["train_tv_to_target"] / max(r["train_tv_noise_floor"], 1e-12) for r in probed),
            default=nan,
        ),
        "train_expected_reward": last.get("train_expected_reward", nan),
        "train_target_expected_reward": last.get("train_target_expected_reward", nan),
        "train_distinct_optimal_paths": last.get("train_distinct_optimal_paths", nan),
        "train_distinct_optimal_paths_base": at0["distinct_optimal_base"],
        "train_tv_to_path": last.get("train_tv_to_path", nan),
        "train_tv_to_path_beta": last.get("train_tv_to_path_beta", nan),
        "grad_norm_var_mean": statistics.fmean(r["grad_norm_var"] for r in history),
        "rollouts": history[-1]["rollouts"],
        "updates": history[-1]["updates"],
        "stages": len(history),
        "seconds": run.wall_seconds(),
    }


def _fmt(values: list[float], spec: str = ".3f") -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:{spec}} ± {std:{spec}}"


def _variants(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in records))


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table: one row per variant, mean ± std over seeds, at the end of training.

    The training-maze columns are the ruler (the mazes every stage trained on); the
    held-out columns are generalisation.
    """
    lines = [
        "| variant | a reached | stages | train: TV to p_a_end | train: floor | train: TV / "
        "floor (largest over stages) | train: E[r] model / p_a_end (base) | train: distinct "
        "shortest (base) | train: TV to nearest p_b (b) | held-out reward (base) | held-out "
        "TV / floor | grad-norm var | rollouts | updates |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in _variants(records):
        rs = [r for r in records if r["variant"] == name]

        def col(k: str, rs: list[dict[str, Any]] = rs) -> list[float]:
            return [float(r[k]) for r in rs]

        def mean(k: str, rs: list[dict[str, Any]] = rs) -> float:
            return statistics.fmean(float(r[k]) for r in rs)

        betas = "/".join(f"{b:g}" for b in col("train_tv_to_path_beta"))
        lines.append(
            f"| {name} | {_fmt(col('a_reached'), '.1f')} | {_fmt(col('stages'), '.1f')} "
            f"| {_fmt(col('train_tv_to_target'))} | {_fmt(col('train_tv_noise_floor'))} "
            f"| {_fmt(col('train_tv_ratio'), '.2f')} ({mean('train_max_tv_ratio'):.2f}) "
            f"| {_fmt(col('train_expected_reward'))} / {mean('train_target_expected_reward'):.3f} "
            f"({mean('train_base_reward'):.3f}) "
            f"| {_fmt(col('train_distinct_optimal_paths'), '.2f')} "
            f"({mean('train_distinct_optimal_paths_base'):.2f}) "
            f"| {_fmt(col('train_tv_to_path'))} ({betas}) "
            f"| {_fmt(col('final_reward'))} ({mean('base_reward'):.3f}) "
            f"| {_fmt(col('tv_ratio'), '.2f')} | {_fmt(col('grad_norm_var_mean'), '.3g')} "
            f"| {mean('rollouts'):.0f} | {mean('updates'):.0f} |"
        )
    return "\n".join(lines)


def matched_reward(records: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Every method at the expected reward the ``reference`` variant ends at, per seed.

    For each seed and variant, the probed point (a stage end on the training mazes)
    whose expected reward is nearest the reference's final one; there, the TV to the
    nearest ``p_b`` of the annealing path and the distinct shortest paths. A method
    that never comes near the reference's reward shows it in ``reward_gap``.
    """
    refs = {r["seed"]: r for r in records if r["variant"] == reference}
    out = []
    for r in records:
        if r["seed"] not in refs:
            continue
        level = refs[r["seed"]]["train_expected_reward"]
        points = [h for h in r["history"] if h.get("train_expected_reward") is not None]
        if not points:
            continue
        best = min(points, key=lambda h: abs(h["train_expected_reward"] - level))
        out.append(
            {
                "variant": r["variant"],
                "seed": r["seed"],
                "reference_reward": level,
                "reward": best["train_expected_reward"],
                "reward_gap": best["train_expected_reward"] - level,
                "rollouts": best["rollouts"],
                "tv_to_path": best["train_tv_to_path"],
                "tv_to_path_beta": best["train_tv_to_path_beta"],
                "tv_to_path_noise_floor": best["train_tv_to_path_noise_floor"],
                "distinct_optimal_paths": best["train_distinct_optimal_paths"],
                "distinct_optimal_paths_base": best["train_distinct_optimal_paths_base"],
            }
        )
    return out


def matched_table(rows: list[dict[str, Any]], reference: str) -> str:
    """Markdown: the methods at matched expected reward on the training mazes."""
    lines = [
        f"At matched expected reward on the training mazes (each run's stage end nearest "
        f"{reference}'s final reward of the same seed):",
        "",
        "| variant | E[r] at the point (reference) | rollouts | TV to nearest p_b (b) | floor "
        "| distinct shortest (base) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == name]

        def col(k: str, rs: list[dict[str, Any]] = rs) -> list[float]:
            return [float(r[k]) for r in rs]

        betas = "/".join(f"{b:g}" for b in col("tv_to_path_beta"))
        lines.append(
            f"| {name} | {_fmt(col('reward'))} ({statistics.fmean(col('reference_reward')):.3f}) "
            f"| {statistics.fmean(col('rollouts')):.0f} | {_fmt(col('tv_to_path'))} ({betas}) "
            f"| {statistics.fmean(col('tv_to_path_noise_floor')):.3f} "
            f"| {_fmt(col('distinct_optimal_paths'), '.2f')} "
            f"({statistics.fmean(col('distinct_optimal_paths_base')):.2f}) |"
        )
    return "\n".join(lines)


#: what a paired comparison reads: (record key, column title, True when higher is better);
#: the gradient-norm variance spans orders of magnitude, so it is compared as log10
PAIRED_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("train_tv_ratio", "train: TV / floor", False),
    ("train_expected_reward", "train: E[r]", True),
    ("final_reward", "held-out reward", True),
    ("grad_norm_var_mean", "log10 grad-norm var", False),
)


def _paired_value(record: dict[str, Any], key: str) -> float:
    value = float(record[key])
    return math.log10(max(value, 1e-30)) if key == "grad_norm_var_mean" else value


def paired_comparisons(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What removing annealing or the control variate, or changing the states, costs, per
    seed: ``A - B`` on the same seeds (the same base, mazes and prompt order), with a 95%
    Student-t interval over seeds and a verdict only where it excludes 0.

    Pairs: c = 1 against c = 0 (every schedule and state sampler), each schedule against
    ``none`` and adaptive against fixed (c = 1, every state sampler), each state sampler
    against random (fixed, c = 1), and fixed/c1/random against every baseline.
    """
    from tiltmatch.experiments.paired import t_interval, verdict

    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], {})[r["seed"]] = r
    pairs: list[tuple[str, str, str]] = []
    states = list(dict.fromkeys(r["states"] for r in records if r["method"] == "dtm"))
    for st in states:
        for schedule in SCHEDULES:
            a, b = variant_name(schedule, 1.0, st), variant_name(schedule, 0.0, st)
            pairs.append(("control variate", a, b))
    for st in states:
        none = variant_name("none", 1.0, st)
        for a, b in (
            (variant_name("fixed", 1.0, st), none),
            (variant_name("adaptive", 1.0, st), none),
            (variant_name("adaptive", 1.0, st), variant_name("fixed", 1.0, st)),
        ):
            pairs.append(("annealing", a, b))
    reference = variant_name("fixed", 1.0, "random")
    for st in states:
        if st != "random":
            pairs.append(("states", variant_name("fixed", 1.0, st), reference))
    for method in BASELINES:
        pairs.append(("baseline", reference, f"baseline/{method}"))
    rows = []
    for what, a, b in pairs:
        seeds = sorted(set(by_variant.get(a, {})) & set(by_variant.get(b, {})))
        if len(seeds) < 2:  # one seed has no spread: no interval, no row
            continue
        row: dict[str, Any] = {"what": what, "a": a, "b": b, "seeds": len(seeds)}
        for key, _title, higher in PAIRED_METRICS:
            if key == "grad_norm_var_mean" and what == "baseline":
                continue  # a baseline's one update per batch has no within-stage variance
            diffs = [
                _paired_value(by_variant[a][s], key) - _paired_value(by_variant[b][s], key)
                for s in seeds
            ]
            mean, low, high = t_interval(diffs)
            better = verdict(low, high) if higher else verdict(-high, -low)
            row[key] = {"mean": mean, "low": low, "high": high, "a_better": better}
        rows.append(row)
    return rows


def paired_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: the paired comparisons, ``A - B`` [95% t interval] and who is better."""
    words = {">": "A better", "<": "B better", "~": "not separated"}
    head = " | ".join(f"{title}: A - B [95% t]" for _k, title, _h in PAIRED_METRICS)
    lines = [
        "Paired comparisons (A - B per seed, the same seeds; a verdict only where the "
        "interval excludes 0; lower TV / floor and higher reward are better):",
        "",
        f"| comparison | A | B | seeds | {head} |",
        "| --- | --- | --- | --- |" + " --- |" * len(PAIRED_METRICS),
    ]
    for row in rows:
        cells = []
        for key, _title, _h in PAIRED_METRICS:
            if key not in row:
                cells.append("n/a")
                continue
            d = row[key]
            cells.append(
                f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {words[d['a_better']]}"
            )
        lines.append(
            f"| {row['what']} | {row['a']} | {row['b']} | {row['seeds']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _curve(rs: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], ...]:
    """Seed mean and min..max of ``y`` at each probed point, starting from the base."""
    runs = [[h for h in r["history"] if h.get(y) is not None] for r in rs]
    n = min(len(h) for h in runs)
    xs, mean, low, high = [], [], [], []
    for i in range(n):
        vals = [h[i][y] for h in runs]
        xs.append(statistics.fmean(h[i][x] for h in runs))
        mean.append(statistics.fmean(vals))
        low.append(min(vals))
        high.append(max(vals))
    return xs, mean, low, high


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """One figure: per state sampler, TV to p_a on the training mazes against the a reached
    (seed mean, band = min..max over seeds, the floor dotted) and the expected reward;
    with baselines, a last column of every method's TV to the nearest p_b against its
    expected reward (the matched-reward view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtm = [r for r in records if r["method"] == "dtm"]
    others = [r for r in records if r["method"] != "dtm"]
    states = list(dict.fromkeys(r["states"] for r in dtm))
    cols = len(states) + (1 if others else 0)
    fig, axes = plt.subplots(2, cols, figsize=(5.2 * cols, 8), squeeze=False)
    for j, st in enumerate(states):
        group = [r for r in dtm if r["states"] == st]
        for k, name in enumerate(_variants(group)):
            rs = [r for r in group if r["variant"] == name]
            color = f"C{k}"
            for row, (y, floor) in enumerate(
                (("train_tv_to_target", "train_tv_noise_floor"), ("train_expected_reward", None))
            ):
                ax = axes[row][j]
                xs, mean, low, high = _curve(rs, "a_after", y)
                start = (
                    statistics.fmean(r["train_floor_at_0"] for r in rs)
                    if floor
                    else statistics.fmean(r["train_base_reward"] for r in rs)
                )
                ax.plot([0.0, *xs], [start, *mean], "o-", ms=3, color=color, label=name)
                ax.fill_between(xs, low, high, color=color, alpha=0.12)
        # The floor and p_a's reward along a, from the variant with the most stages.
        rs = max(
            ([r for r in group if r["variant"] == n] for n in _variants(group)),
            key=lambda runs: min(len(r["history"]) for r in runs),
        )
        f0 = statistics.fmean(r["train_floor_at_0"] for r in rs)
        fx, fmean, _, _ = _curve(rs, "a_after", "train_tv_noise_floor")
        axes[0][j].plot([0.0, *fx], [f0, *fmean], "k:", lw=1, label="noise floor")
        axes[0][j].plot(
            [0.0, *fx], [2 * f0, *(2 * f for f in fmean)], "k--", lw=0.8, label="2x floor"
        )
        tx, tmean, _, _ = _curve(rs, "a_after", "train_target_expected_reward")
        r0 = statistics.fmean(r["train_base_reward"] for r in rs)
        axes[1][j].plot([0.0, *tx], [r0, *tmean], "k--", lw=1, label="p_a (exact target)")
        axes[0][j].set_title(f"{st} states: TV(model, p_a), training mazes")
        axes[1][j].set_title(f"{st} states: expected reward, training mazes")
        for row in (0, 1):
            axes[row][j].set_xlabel("a reached")
            axes[row][j].grid(alpha=0.3)
            axes[row][j].legend(fontsize=6)
    if others:
        ax_tv, ax_div = axes[0][cols - 1], axes[1][cols - 1]
        ref = [r for r in dtm if r["schedule"] == "fixed" and r["c"] == 1.0]
        for k, name in enumerate(_variants(others + ref)):
            rs = [r for r in others + ref if r["variant"] == name]
            xs, _, _, _ = _curve(rs, "train_expected_reward", "train_expected_reward")
            _, tv, _, _ = _curve(rs, "train_expected_reward", "train_tv_to_path")
            _, div, _, _ = _curve(rs, "train_expected_reward", "train_distinct_optimal_paths")
            ax_tv.plot(xs, tv, "o-", ms=3, color=f"C{k}", label=name)
            ax_div.plot(xs, div, "o-", ms=3, color=f"C{k}", label=name)
        ax_tv.set_title("TV to the nearest p_b vs expected reward (training mazes)")
        ax_div.set_title("distinct shortest paths vs expected reward (training mazes)")
        for ax in (ax_tv, ax_div):
            ax.set_xlabel("expected reward on the training mazes")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maze_ablation", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--seeds", type=int)
    p.add_argument("--learning-rate", type=float, help="override the size's learning rate")
    p.add_argument(
        "--schedules",
        nargs="*",
        choices=SCHEDULES,
        default=list(SCHEDULES),
        help="DTM schedules to run (none named: baselines only)",
    )
    p.add_argument("--c", nargs="+", type=float, default=list(CONTROL_VARIATES))
    p.add_argument("--states", nargs="+", choices=STATES, default=list(DEFAULT_STATES))
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=BASELINES,
        help="also run these baselines on the same training mazes (all three if none named)",
    )
    p.add_argument("--base", help="maze base model folder (default: shipped, else runs/bases)")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Run the ablation grid (cached per run) and write JSON, Markdown and a plot."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(1)
    size = SIZES[args.size]
    if args.seeds is not None:
        size = dataclasses.replace(size, seeds=args.seeds)
    if args.learning_rate is not None:
        size = dataclasses.replace(size, learning_rate=args.learning_rate)
    base = None if size.name == "micro" else (args.base or _maze_base())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    baselines = [] if args.baselines is None else (args.baselines or list(BASELINES))
    jobs: list[tuple[str, str, float, str, int]] = [
        ("dtm", schedule, c, states, seed)
        for seed, schedule, c, states in itertools.product(
            range(size.seeds), args.schedules, args.c, args.states
        )
    ]
    jobs += [(m, "-", 1.0, "-", seed) for seed in range(size.seeds) for m in baselines]
    records = [cached_variant(size, job, base, out, args.quiet) for job in jobs]
    records.sort(key=_grid_order)
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    (out / "ablation.json").write_text(json.dumps(records, indent=2))
    text = (
        f"Command: `python benchmarks/maze_ablation.py {' '.join(argv)}`  \n"
        f"Date: {date}; wall time {(time.time() - started) / 60:.1f} min; base `{base}`  \n"
        f"Size: {dataclasses.asdict(size)}; fixed-h budget {fixed_budget(size)} rollouts\n\n"
        f"{table(records)}\n"
    )
    reference = variant_name("fixed", max(args.c), args.states[0])
    if baselines and any(r["variant"] == reference for r in records):
        text += "\n" + matched_table(matched_reward(records, reference), reference) + "\n"
    comparisons = paired_comparisons(records)
    if comparisons:
        (out / "paired.json").write_text(json.dumps(comparisons, indent=2))
        text += "\n" + paired_table(comparisons) + "\n"
    (out / "ablation.md").write_text(text)
    plot(records, out / "ablation.png")
    if not args.quiet:
        print(text)
    return 0


def cached_variant(
    size: AblationSize,
    job: tuple[str, str, float, str, int],
    base: str | None,
    out: Path,
    quiet: bool,
) -> dict[str, Any]:
    """One run of the grid (``job``: method, schedule, c, states, seed), read from
    ``out/runs`` when it was run with the same overrides, else run (from an empty folder)."""
    method, schedule, c, states, seed = job
    name = variant_name(schedule, c, states) if method == "dtm" else f"baseline/{method}"
    folder = out / "runs" / size.name / name / f"seed{seed}"
    result = folder / "result.json"
    overrides = (
        overrides_of(size, schedule, c, states, seed, base)
        if method == "dtm"
        else baseline_overrides(size, method, seed, base)
    )
    if result.is_file():
        cached: dict[str, Any] = json.loads(result.read_text())
        if cached.get("overrides") == overrides:
            return cached
        shutil.rmtree(folder)  # an older protocol's run: rerun it from an empty folder
    record = run_variant(size, schedule, c, states, seed, base, folder, method)
    record["overrides"] = overrides
    result.write_text(json.dumps(record, indent=2))
    if not quiet:
        print(
            f"{record['variant']} seed {seed}: train TV/floor {record['train_tv_ratio']:.2f} "
            f"train E[r] {record['train_expected_reward']:.3f} held-out reward "
            f"{record['final_reward']:.3f} ({record['seconds']:.0f} s)",
            flush=True,
        )
    return record


def _grid_order(r: dict[str, Any]) -> tuple[Any, ...]:
    """DTM variants first (schedule, c, states, seed), then the baselines."""
    if r["method"] != "dtm":
        return (1, BASELINES.index(r["method"]), 0.0, "", r["seed"])
    return (0, SCHEDULES.index(r["schedule"]), r["c"], r["states"], r["seed"])


def _maze_base() -> str:
    from tiltmatch.models.loading import shipped_model_dir

    shipped = shipped_model_dir("maze")
    if (shipped / "config.json").is_file():
        return str(shipped)
    fallback = Path("runs/bases/maze")
    if (fallback / "config.json").is_file():
        return str(fallback)
    raise FileNotFoundError(
        "no maze base model: ship src/tiltmatch/assets/maze-base, or build the fallback with "
        "'python benchmarks/base_models.py --task maze', or pass --base"
    )
