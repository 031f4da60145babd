"""The time plan (benchmarks/time_plan.py): the run's schedule as the trainer makes it, and the
script's code path on a toy model and a shrunk recipe."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from conftest import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "llada"


@pytest.fixture(scope="module")
def time_plan() -> ModuleType:
    return load_benchmark("time_plan", "tiltmatch_time_plan")


def test_countdown_schedule_is_the_published_one(time_plan: ModuleType) -> None:
    """17 stages (16 of h = 6, the last clipped to a_end = 100) of 1200 updates; each stage
    rebuilds 40 x 6 rollouts and refreshes 10 x 6 every 25 updates (47 times: not after the
    stage's last update); evaluation of 256 problems after every stage."""
    work = time_plan.schedule(time_plan.load_recipe(RECIPES / "countdown.yaml"))
    assert (work["stages"], work["updates"]) == (17, 17 * 1200)
    assert work["rollouts"] == 17 * (240 + 47 * 60)
    assert work["evaluation_rollouts"] == 17 * 256
    gsm = time_plan.schedule(time_plan.load_recipe(RECIPES / "gsm8k.yaml"))
    assert gsm["stages_bound"] == "at least" and gsm["evaluations"] == 1  # adaptive h, one eval
    spg = time_plan.schedule(time_plan.load_recipe(RECIPES / "spg_countdown.yaml"))
    options = time_plan.load_recipe(RECIPES / "spg_countdown.yaml").method_options
    # max_rollouts counts every process: stages x 8 processes x 12 completions reach it
    assert (spg["stages"] - 1) * 8 * 12 < options["max_rollouts"] <= spg["stages"] * 8 * 12


def test_script_on_a_shrunk_recipe(
    time_plan: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = yaml.safe_load((RECIPES / "countdown.yaml").read_text())
    raw["task_options"]["response_length"] = 32
    raw["sampler"].update(steps=8, block_length=8)
    raw["dtm"]["sar_block_length"] = 8
    (tmp_path / "countdown.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "plan.json"
    argv = ["--tiny", "--folder", str(tmp_path), "--out", str(out)]
    assert time_plan.main(argv) == 0
    record = json.loads(out.read_text())
    (entry,) = record["recipes"]
    modes = entry["modes"]
    assert set(modes) == {"exact", "cached prefix", "cached dual"}
    exact = modes["exact"]
    assert modes["cached dual"]["tflop_per_rollout"] < exact["tflop_per_rollout"]
    for m in modes.values():
        assert m["hours_1_gpu"] == pytest.approx(8 * m["hours_8_gpus"], rel=1e-9)
        assert sum(m["share"].values()) == pytest.approx(1.0)
        assert m["hours_1_gpu_as_written"] < m["hours_1_gpu"]
    assert "Published Countdown run" in capsys.readouterr().out


def test_unknown_recipe_is_one_line(
    time_plan: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert time_plan.main(["--tiny", "--recipes", "nope"]) == 2
    assert "unknown recipe(s) ['nope']" in capsys.readouterr().err
