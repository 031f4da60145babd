"""The demo end to end at a toy size: the report's files and keys (not its numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiltmatch.experiments.demo import TINY_OVERRIDES, run_demo

REQUIRED = (
    "base_reward",
    "final_reward",
    "tv_to_target",
    "tv_noise_floor",
    "distinct_optimal_paths_base",
    "distinct_optimal_paths_final",
    "train_tv_to_target",
    "train_tv_noise_floor",
    "train_goal",
    "wall_seconds",
    "config",
)


def test_demo_writes_report_and_plots(tmp_path: Path) -> None:
    overrides = list(TINY_OVERRIDES)  # the demo's own installation-check size
    report = run_demo(
        tmp_path,
        overrides=overrides,
        quiet=True,
        target_mazes=2,
        target_samples=16,
        train_mazes=3,
        train_samples=16,
    )
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in REQUIRED:
        assert key in saved, key
    assert saved["config"]["dtm"]["a_end"] == 2.0
    assert [r["a_after"] for r in saved["history"]] == [1.0, 2.0]
    for r in saved["history"]:
        assert math.isfinite(r["tv_to_target"]) and 0.0 <= r["tv_to_target"] <= 1.0
        assert 0.0 <= r["train_tv_to_target"] <= 1.0 and r["train_tv_noise_floor"] >= 0.0
    # The training mazes are prompts the trainer did train on: the first stage's buffer
    # (4 prompts x 2 completions) holds all three of them.
    assert len(saved["train_rollouts_per_maze"]) == 3
    assert all(n >= 2 for n in saved["train_rollouts_per_maze"])
    assert saved["history"][0]["train_mazes_trained_on"] == 3
    assert 0.0 <= report["final_reward"] <= 1.0
    # The thread count is pinned (results differ bit for bit between counts) and recorded.
    from tiltmatch.experiments.demo import DEMO_THREADS

    assert saved["numerics"]["threads"] == DEMO_THREADS
    assert saved["numerics"]["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX")
    assert saved["numerics"]["packages"]["transformers"]  # the versions that decide rounding
    for name in ("report.md", "stages.png", "maze.png", "config.yaml", "final/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "stages.png").stat().st_size > 1000
    text = (tmp_path / "report.md").read_text()
    assert "TV / floor" in text and "On the training mazes" in text and "Generalisation" in text


def test_training_maze_probe_leaves_the_held_out_figures_alone(tmp_path: Path) -> None:
    # The probe's draws have their own generators: with or without training-maze samples
    # (a different number of them), training and the held-out measurements are identical.
    overrides = [
        "dtm.a_end=2",
        "dtm.h=1",
        "dtm.steps_per_h=2",
        "train.buffer_prompts=4",
        "train.prompts_per_batch=2",
        "train.num_generations=2",
        "train.refresh_prompts=2",
        "train.refresh_every=1",
        "train.train_examples=16",
        "eval.examples=4",
        "eval.samples_per_example=2",
    ]
    runs = [
        run_demo(
            tmp_path / f"r{n}",
            overrides=overrides,
            quiet=True,
            target_mazes=2,
            target_samples=8,
            train_mazes=n,
            train_samples=4 * n,
        )
        for n in (1, 3)
    ]
    keys = ("loss", "grad_norm", "eval_reward", "tv_to_target", "tv_noise_floor", "reward_mean")
    first, second = ([{k: r[k] for k in keys} for r in run["history"]] for run in runs)
    assert first == second
    assert runs[0]["final_reward"] == runs[1]["final_reward"]
