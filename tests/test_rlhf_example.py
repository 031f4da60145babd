"""The RLHF example end to end at its quick size: TRL's RewardTrainer, then DTM against it."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rlhf.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_the_rlhf_example_trains_a_reward_model_then_dtm_and_reports_both(tmp_path):
    pytest.importorskip("trl")
    out = tmp_path / "rlhf"
    done = run("--size", "quick", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["preference_pairs"]["train"] > 0 and report["preference_pairs"]["validation"] > 0
    rm = report["reward_model"]
    assert math.isfinite(rm["train_loss"]) and rm["score_std_on_base_samples"] > 0
    assert 0.0 <= rm["pair_accuracy_validation"] <= 1.0
    # The reward model is a real transformers folder and the tuned policy was saved.
    assert (out / "reward-model" / "model.safetensors").is_file()
    assert (out / "reward-model" / "config.json").is_file()
    assert list((out / "dtm").rglob("*.safetensors"))
    assert report["dtm"]["updates"] == 2 * 10
    before, after = report["held_out"]["before"], report["held_out"]["after"]
    for figures in (before, after):
        assert set(figures) == {
            "reward_model_score",
            "true_reward",
            "shortest_path_rate",
            "valid_path_rate",
            "distinct_shortest_paths_per_maze",
        }
        assert all(math.isfinite(v) for v in figures.values())
    # DTM against the reward model moves the policy: the after-figures are not the base's.
    assert after != before
    # A finished run is never overwritten; a folder that is not a model is refused.
    again = run("--size", "quick", "--out", str(out))
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    bad = run("--size", "quick", "--reward-model", str(tmp_path), "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "not a model folder" in bad.stderr
