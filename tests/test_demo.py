"""The demo end to end at a toy size: the report's files and keys (not its numbers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiltmatch.experiments.demo import run_demo

REQUIRED = (
    "base_reward",
    "final_reward",
    "tv_to_target",
    "tv_noise_floor",
    "distinct_optimal_paths_base",
    "distinct_optimal_paths_final",
    "wall_seconds",
    "config",
)


def test_demo_writes_report_and_plots(tmp_path: Path) -> None:
    overrides = [
        "dtm.a_end=2",
        "dtm.h=1",
        "dtm.steps_per_h=3",
        "train.buffer_prompts=4",
        "train.prompts_per_batch=2",
        "train.num_generations=2",
        "train.refresh_prompts=2",
        "train.refresh_every=2",
        "train.train_examples=16",
        "eval.examples=4",
        "eval.samples_per_example=2",
    ]
    report = run_demo(tmp_path, overrides=overrides, quiet=True, target_mazes=2, target_samples=16)
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in REQUIRED:
        assert key in saved, key
    assert saved["config"]["dtm"]["a_end"] == 2.0
    assert [r["a_after"] for r in saved["history"]] == [1.0, 2.0]
    for r in saved["history"]:
        assert math.isfinite(r["tv_to_target"]) and 0.0 <= r["tv_to_target"] <= 1.0
    assert 0.0 <= report["final_reward"] <= 1.0
    # The thread count is pinned (results differ bit for bit between counts) and recorded.
    from tiltmatch.experiments.demo import DEMO_THREADS

    assert saved["numerics"]["threads"] == DEMO_THREADS
    assert saved["numerics"]["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX")
    for name in ("report.md", "stages.png", "maze.png", "config.yaml", "final/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "stages.png").stat().st_size > 1000
    assert "TV / floor" in (tmp_path / "report.md").read_text()
