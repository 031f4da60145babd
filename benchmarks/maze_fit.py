"""Can one DTM stage reach its exact target where it has data? (METHOD.md sections 4 and 7)

Fine-tunes the shipped maze base on a handful of *training* mazes with many
rollouts each (one stage, ``h = a_end``), then compares the student's path
distribution on those same mazes with the exact tilted target
``p_h ∝ p_0 e^{h r}`` estimated from the base's own samples, and with the
noise floor of that estimate. Run once per sampler: random-order unmasking (an
exact ancestral sampler of the denoiser's posteriors) and low-confidence
remasking (mode-seeking), to show which one DTM's stage minimiser is exact for.

    python benchmarks/maze_fit.py --remasking random --out runs/maze-fit-random
    python benchmarks/maze_fit.py --remasking low_confidence --out runs/maze-fit-lowconf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tiltmatch.config import build_config
from tiltmatch.dtm.exact_target import mean_report
from tiltmatch.experiments.demo import demo_config_path
from tiltmatch.experiments.maze_target import maze_target_report
from tiltmatch.training.evaluation import sample_texts
from tiltmatch.training.runner import build_trainer


def main() -> None:
    """Parse arguments, run the fit, print and write the per-maze and mean reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--remasking", choices=["random", "low_confidence"], default="random")
    parser.add_argument("--mazes", type=int, default=4)
    parser.add_argument("--generations", type=int, default=64)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--h", type=float, default=4.0)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--samples", type=int, default=500, help="samples per maze per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/maze-fit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    overrides = [
        f"sampler.remasking={args.remasking}",
        f"train.train_examples={args.mazes}",
        f"train.buffer_prompts={args.mazes}",
        f"train.prompts_per_batch={args.mazes}",
        f"train.num_generations={args.generations}",
        "train.refresh_prompts=0",
        f"dtm.steps_per_h={args.updates}",
        f"dtm.h={args.h}",
        f"dtm.a_end={args.h}",
        f"train.learning_rate={args.learning_rate}",
        f"train.final_learning_rate={args.learning_rate}",
        "eval.examples=2",
        f"seed={args.seed}",
    ]
    config = build_config(demo_config_path(), overrides)
    started = time.time()
    trainer, task, _ = build_trainer(config, out, quiet=True)
    mazes = trainer.pool.examples
    temp = config.sampler.temperature
    base_a = sample_texts(trainer.worker, trainer.pair.teacher, mazes, args.samples, temp, 1)
    base_b = sample_texts(trainer.worker, trainer.pair.teacher, mazes, args.samples, temp, 2)
    trainer.train()
    final = sample_texts(trainer.worker, trainer.pair.student, mazes, args.samples, temp, 3)
    reports = [
        maze_target_report(task, m, a, b, f, args.h)  # type: ignore[arg-type]
        for m, a, b, f in zip(mazes, base_a, base_b, final, strict=True)
    ]
    result = {
        "args": vars(args),
        "per_maze": [r.as_dict() for r in reports],
        "mean": mean_report(reports),
        "seconds": time.time() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "maze_fit.json").write_text(json.dumps(result, indent=2))
    print(
        "| maze | E[r] base | E[r] model | E[r] target | TV to target | floor | "
        "distinct optimal base / model |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(reports):
        print(
            f"| {i} | {r.expected_reward_base:.3f} | {r.expected_reward_model:.3f} | "
            f"{r.expected_reward_target:.3f} | {r.tv_to_target:.3f} | {r.tv_noise_floor:.3f} | "
            f"{r.distinct_optimal_base} / {r.distinct_optimal_model} |"
        )
    print(f"seconds: {result['seconds']:.0f}")


if __name__ == "__main__":
    main()
