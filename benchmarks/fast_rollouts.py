"""DTM with fast rollouts against DTM with exact rollouts (issue 10, measurement 3).

One ``tiltmatch bench`` run per rollout sampler mode on one task: DTM only, the same
learning rate, seeds (so the same base, training prompt order and held-out prompts),
rollouts and updates; held-out evaluation always with the task's own exact sampler
(``eval.sampler``), so every mode is read with one ruler. Per mode it reports the final
held-out accuracy, the training and rollout seconds, and per seed the training seconds at
which the run's curve first reaches the exact run's final accuracy of the same seed, as a
fraction of the exact run's training seconds ("time to match"; never reached = inf).
Differences to the exact mode are paired per seed with a 95% Student-t interval.

    python benchmarks/fast_rollouts.py --task sudoku --seeds 5 --learning-rate 1e-4 \\
        --out runs/fast-rollouts

Runs are cached by the benchmark (``--out/<mode>/runs/``): an interrupted comparison
continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from tiltmatch.experiments import bench
from tiltmatch.experiments.paired import t_interval

MODES = ("exact", "parallel", "cached", "cached+parallel")


def seconds_to_reach(curve: list[dict[str, Any]], level: float) -> float:
    """Training seconds at which a run's held-out accuracy first reaches ``level``."""
    points = [{"x": p["train_seconds"], "mean": p["heldout_accuracy"]} for p in curve]
    reached = bench.rollouts_to_reach(points, level)
    return math.inf if reached is None else reached


def run_mode(args: argparse.Namespace, mode: str) -> list[dict[str, Any]]:
    """The benchmark's DTM runs of ``mode`` (cached), sorted by seed."""
    out = Path(args.out) / mode.replace("+", "-")
    argv = ["--size", args.size, "--tasks", args.task, "--methods", "dtm"]
    argv += ["--seeds", str(args.seeds), "--learning-rates", str(args.learning_rate)]
    argv += ["--out", str(out), "--quiet"]
    if mode != "exact":
        argv += ["--rollout-sampler", mode]
    code = bench.main(argv)
    if code:
        raise SystemExit(code)
    results = json.loads((out / "results.json").read_text())
    return sorted(results, key=lambda r: r["seed"])


def interval_text(values: list[float], signed: bool = True) -> str:
    """``mean [low, high]`` of a paired difference or ratio (t interval over seeds)."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return f"{len(values) - len(finite)} of {len(values)} seeds never reach it"
    mean, low, high = t_interval(finite)
    sign = "+" if signed else ""
    return f"{mean:{sign}.4f} [{low:{sign}.4f}, {high:{sign}.4f}]"


def main(argv: list[str] | None = None) -> int:
    """Run every mode, then print and write the comparison (``fast_rollouts.{json,md}``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("sudoku", "countdown"), default="sudoku")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--size", choices=("micro", "quick", "default"), default="default")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--out", default="runs/fast-rollouts")
    args = parser.parse_args(argv)
    modes = ["exact", *[m for m in args.modes if m != "exact"]]
    runs = {mode: run_mode(args, mode) for mode in modes}
    exact = runs["exact"]
    rows = []
    for mode, records in runs.items():
        if [r["seed"] for r in records] != [r["seed"] for r in exact]:
            raise SystemExit(f"fast_rollouts: {mode} ran other seeds than exact")
        accuracy = [r["heldout_accuracy"] for r in records]
        train = [r["train_seconds"] for r in records]
        rollout = [r["rollout_seconds"] for r in records]
        fraction = [
            seconds_to_reach(r["curve"], e["heldout_accuracy"]) / e["train_seconds"]
            for r, e in zip(records, exact, strict=True)
        ]
        rows.append(
            {
                "mode": mode,
                "sampler": records[0]["config"]["sampler"],
                "accuracy": accuracy,
                "base_accuracy": statistics.fmean(r["base_heldout_accuracy"] for r in records),
                "train_seconds": train,
                "rollout_seconds": rollout,
                "time_to_match_exact": fraction,
                "accuracy_minus_exact": interval_text(
                    [a - e["heldout_accuracy"] for a, e in zip(accuracy, exact, strict=True)]
                ),
                "train_seconds_ratio": interval_text(
                    [t / e["train_seconds"] for t, e in zip(train, exact, strict=True)],
                    signed=False,
                ),
            }
        )
    lines = [
        f"DTM on {args.task} ({args.size} size, lr {args.learning_rate:g}, {args.seeds} seeds; "
        "held-out evaluation with the exact sampler in every run)",
        "",
        "| rollouts | final acc (base, seed mean) | minus exact, 95% t | train s | rollout s "
        "| train s / exact's, 95% t | time to match exact's final (per seed) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        acc = row["accuracy"]
        spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
        times = ", ".join(
            "never" if math.isinf(f) else f"{f:.2f}" for f in row["time_to_match_exact"]
        )
        lines.append(
            f"| {row['mode']} | {statistics.fmean(acc):.4f} +- {spread:.4f} "
            f"({row['base_accuracy']:.4f}) | {row['accuracy_minus_exact']} "
            f"| {statistics.fmean(row['train_seconds']):.1f} "
            f"| {statistics.fmean(row['rollout_seconds']):.1f} | {row['train_seconds_ratio']} "
            f"| {times} |"
        )
    report = "\n".join(lines)
    print(report)
    out = Path(args.out)
    record = {
        "settings": vars(args),
        "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": bench.machine_line(),
    }
    (out / "fast_rollouts.json").write_text(json.dumps(record, indent=2))
    (out / "fast_rollouts.md").write_text(report + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
