"""The maze ablation of METHOD.md section 7: annealing x control variate x states, several seeds.

Every variant is c-DTM on the maze from the same base model with the demo's
configuration (``configs/demo_maze.yaml``) shrunk to the ablation's size; only
the ablated fields change:

- annealing: ``none`` (one stage straight to ``a_end``), ``fixed`` (constant ``h``),
  ``adaptive`` (largest ``h <= h_max`` with mean ESS >= ``rho``);
- control variate: ``c`` = 0 (plain weighted cross-entropy) or 1;
- states: ``random`` masking or ``sar`` (semi-autoregressive aligned); also
  ``trajectory`` (the sampler's own visited states) with ``--states trajectory``.

Across training (after every stage) it records the held-out reward, the TV
distance to the exact tilted target ``p_a`` at the ``a`` reached (and its
noise floor, via :class:`tiltmatch.experiments.maze_probe.MazeTargetProbe`), the distinct
optimal paths per maze and the gradient-norm variance of the stage. ``none``
gets as many updates in its single stage as ``fixed`` has in all of its
stages, so every variant trains for about the same number of updates.

Writes ``ablation.json`` (every run with its per-stage history),
``ablation.md`` (the table) and ``ablation.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SCHEDULES: tuple[str, ...] = ("none", "fixed", "adaptive")
CONTROL_VARIATES: tuple[float, ...] = (0.0, 1.0)
STATES: tuple[str, ...] = ("random", "sar", "trajectory")
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
    max_stages: int = 12


SIZES: dict[str, AblationSize] = {
    "micro": AblationSize("micro", 1, 4.0, 2.0, 4.0, 2, 4, 2, 2, 3e-4, 4, 1, 2, 8, max_stages=4),
    # The demo's learning rate (3e-4, decaying to 1e-4 within each stage).
    "small": AblationSize("small", 3, 10.0, 2.5, 5.0, 12, 16, 8, 8, 3e-4, 32, 2, 4, 64),
    "default": AblationSize("default", 3, 10.0, 2.0, 4.0, 40, 32, 8, 8, 3e-4, 64, 4, 8, 200),
}


def variant_name(schedule: str, c: float, states: str) -> str:
    """A variant's short name, e.g. ``fixed/c1/random``."""
    return f"{schedule}/c{c:g}/{states}"


def overrides_of(
    size: AblationSize, schedule: str, c: float, states: str, seed: int, base: str | None
) -> list[str]:
    """``--set`` overrides of the demo configuration for one ablation run."""
    steps = size.steps_per_h
    if schedule == "none":  # the same number of updates as the fixed schedule, in one stage
        steps *= max(round(size.a_end / size.h), 1)
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
        f"train.max_stages={size.max_stages}",
        "train.checkpoint_every=1000000",
        f"eval.examples={size.eval_examples}",
        f"eval.samples_per_example={size.eval_samples}",
        "eval.every_stage=true",
    ]
    if base is None:  # micro: a fresh one-layer model
        out += [
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=2",
            "model.intermediate_size=64",
        ]
    else:
        out.append(f"model.base={base}")
    return out


def run_variant(
    size: AblationSize,
    schedule: str,
    c: float,
    states: str,
    seed: int,
    base: str | None,
    folder: Path,
) -> dict[str, Any]:
    """Train one variant and return its record with the per-stage history."""
    from tiltmatch.config import build_config
    from tiltmatch.experiments.demo import demo_config_path
    from tiltmatch.experiments.maze_probe import MazeTargetProbe
    from tiltmatch.training.runner import build_trainer

    torch.set_num_threads(1)
    config = build_config(demo_config_path(), overrides_of(size, schedule, c, states, seed, base))
    started = time.time()
    trainer, task, _ = build_trainer(config, folder, quiet=True)
    trainer.checkpointing = False  # no resume here: skip checkpoint writes
    mazes = task.examples("test", size.target_mazes, seed=4242)
    with torch.no_grad():
        probe = MazeTargetProbe(trainer, mazes, size.target_samples, 1.0, seed)
        base_eval = trainer.evaluate()
    trainer.stage_callbacks.append(probe.stage_callback)
    history = trainer.train()
    with torch.no_grad():
        final = probe.measure(size.a_end, seed=seed + 5)
    reached = history[-1]["a_after"] if history else 0.0
    keys = (
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
        "grad_norm",
        "grad_norm_var",
        "loss",
        "rollouts",
        "updates",
        "wall_seconds",
    )
    return {
        "variant": variant_name(schedule, c, states),
        "schedule": schedule,
        "c": c,
        "states": states,
        "seed": seed,
        "a_reached": reached,
        "base_reward": base_eval["reward"],
        "final_reward": history[-1]["eval_reward"],
        "final_accuracy": history[-1]["eval_accuracy"],
        "tv_to_target": final["tv_to_target"],
        "tv_noise_floor": final["tv_noise_floor"],
        "tv_ratio": final["tv_to_target"] / max(final["tv_noise_floor"], 1e-12),
        "distinct_optimal_paths": final["distinct_optimal_model"],
        "distinct_optimal_paths_base": final["distinct_optimal_base"],
        "grad_norm_var_mean": statistics.fmean(r["grad_norm_var"] for r in history),
        "rollouts": history[-1]["rollouts"],
        "updates": history[-1]["updates"],
        "stages": len(history),
        "seconds": time.time() - started,
        "history": [{k: r.get(k) for k in keys} for r in history],
    }


def _fmt(values: list[float], spec: str = ".3f") -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:{spec}} ± {std:{spec}}"


def table(records: list[dict[str, Any]]) -> str:
    """Markdown table: one row per variant, mean ± std over seeds."""
    lines = [
        "| variant | a reached | stages | held-out reward (base) | TV to p_a_end | noise floor "
        "| TV / floor | distinct optimal paths (base) | grad-norm var | rollouts | updates |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == name]

        def col(k: str, rs: list[dict[str, Any]] = rs) -> list[float]:
            return [float(r[k]) for r in rs]

        lines.append(
            f"| {name} | {_fmt(col('a_reached'), '.1f')} | {_fmt(col('stages'), '.1f')} "
            f"| {_fmt(col('final_reward'))} ({statistics.fmean(col('base_reward')):.3f}) "
            f"| {_fmt(col('tv_to_target'))} | {_fmt(col('tv_noise_floor'))} "
            f"| {_fmt(col('tv_ratio'), '.2f')} | {_fmt(col('distinct_optimal_paths'), '.2f')} "
            f"({statistics.fmean(col('distinct_optimal_paths_base')):.2f}) "
            f"| {_fmt(col('grad_norm_var_mean'), '.3g')} | {statistics.fmean(col('rollouts')):.0f} "
            f"| {statistics.fmean(col('updates')):.0f} |"
        )
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], path: Path) -> None:
    """Reward, TV / floor and gradient-norm variance against ``a``, seed means per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == name]
        n = min(len(r["history"]) for r in rs)
        a = [statistics.fmean(r["history"][i]["a_after"] for r in rs) for i in range(n)]
        for ax, key in zip(axes, ("eval_reward", "tv_ratio", "grad_norm_var"), strict=True):
            if key == "tv_ratio":
                ys = [
                    statistics.fmean(
                        h["tv_to_target"] / max(h["tv_noise_floor"], 1e-12)
                        for h in (r["history"][i] for r in rs)
                    )
                    for i in range(n)
                ]
            else:
                ys = [statistics.fmean(r["history"][i][key] for r in rs) for i in range(n)]
            ax.plot(a, ys, "o-", ms=3, label=name)
    for ax, label in zip(
        axes,
        ("held-out reward", "TV(model, p_a) / noise floor", "gradient-norm variance (per stage)"),
        strict=True,
    ):
        ax.set_xlabel("a reached")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].axhline(2.0, color="k", ls=":", lw=1)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    """Run the ablation grid (cached per run) and write JSON, Markdown and a plot."""
    p = argparse.ArgumentParser(prog="maze_ablation", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--seeds", type=int)
    p.add_argument("--learning-rate", type=float, help="override the size's learning rate")
    p.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    p.add_argument("--c", nargs="+", type=float, default=list(CONTROL_VARIATES))
    p.add_argument("--states", nargs="+", choices=STATES, default=list(DEFAULT_STATES))
    p.add_argument("--base", help="maze base model folder (default: shipped, else runs/bases)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
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
    records = []
    for seed, schedule, c, states in itertools.product(
        range(size.seeds), args.schedules, args.c, args.states
    ):
        folder = out / "runs" / size.name / variant_name(schedule, c, states) / f"seed{seed}"
        result = folder / "result.json"
        if result.is_file():
            records.append(json.loads(result.read_text()))
            continue
        record = run_variant(size, schedule, c, states, seed, base, folder)
        result.write_text(json.dumps(record, indent=2))
        records.append(record)
        if not args.quiet:
            print(
                f"{record['variant']} seed {seed}: reward {record['final_reward']:.3f} "
                f"TV/floor {record['tv_ratio']:.2f} ({record['seconds']:.0f} s)",
                flush=True,
            )
    records.sort(key=lambda r: (SCHEDULES.index(r["schedule"]), r["c"], r["states"], r["seed"]))
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    (out / "ablation.json").write_text(json.dumps(records, indent=2))
    text = (
        f"Command: `python benchmarks/maze_ablation.py {' '.join(argv)}`  \n"
        f"Date: {date}; wall time {(time.time() - started) / 60:.1f} min; base `{base}`  \n"
        f"Size: {dataclasses.asdict(size)}\n\n{table(records)}\n"
    )
    (out / "ablation.md").write_text(text)
    plot(records, out / "ablation.png")
    if not args.quiet:
        print(text)
    return 0


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
