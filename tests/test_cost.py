"""Silent cost (issue 22, item 4): a run says its plan before it starts and its progress
with the time left while it runs; ``pretrain`` says what it will take; ``tiltmatch --help``
and ``--version`` import neither torch nor transformers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiltmatch
from tiltmatch.cli import main
from tiltmatch.config import build_config
from tiltmatch.training import plan as plan_module
from tiltmatch.training.plan import StageProgress, pretrain_estimate, run_plan

SRC = Path(tiltmatch.__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["train", "--help"],
        ["generate", "--help"],
        ["convert-llada", "--help"],
    ],
)
def test_help_and_version_import_neither_torch_nor_transformers(argv) -> None:
    script = (
        "import sys\n"
        "from tiltmatch.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout
    if argv == ["--version"]:
        assert f"tiltmatch {tiltmatch.__version__}" in done.stdout


def test_importing_the_cli_does_not_import_transformers() -> None:
    script = (
        "import sys, tiltmatch.cli; print('transformers' in sys.modules, 'torch' in sys.modules)"
    )
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_the_plan_counts_stages_updates_and_samples() -> None:
    fixed = run_plan(build_config(overrides=["dtm.a_end=10", "dtm.h=2"]), 60)
    assert (fixed.min_stages, fixed.max_stages, fixed.max_updates) == (5, 5, 300)
    # buffer of 32 prompts, then (60 - 1) // 20 = 2 refreshes of 8, all x G = 8
    assert fixed.completions_per_stage == (32 + 2 * 8) * 8
    assert fixed.eval_samples == 64 * 4
    assert fixed.describe().startswith(
        "5 stages x 60 updates = 300 updates (dtm.a_end 10 / dtm.h 2)"
    )
    clipped = run_plan(build_config(overrides=["dtm.a_end=5", "dtm.h=2"]), 60)
    assert clipped.max_stages == 3  # 2, 2, then 1 to land on a_end
    adaptive = run_plan(build_config(overrides=["dtm.schedule=adaptive", "dtm.h_max=4"]), 60)
    assert (adaptive.min_stages, adaptive.max_stages) == (3, 100)
    assert "3-100 stages" in adaptive.describe()
    geometric = build_config(overrides=["dtm.schedule=geometric", "dtm.h=1", "dtm.a_end=7"])
    assert run_plan(geometric, 10).max_stages == 4  # 1 + 1.5 + 2.25 = 4.75, then clipped to 7
    baseline = build_config(overrides=["method=wd1", "method_options={total_stages: 4}"])
    assert run_plan(baseline, 1).max_updates == 4


def test_stage_progress_says_the_updates_done_and_the_time_left(monkeypatch) -> None:
    lines: list[str] = []
    clock = iter([100.0, 160.0, 220.0])
    monkeypatch.setattr(plan_module.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(StageProgress, "_write", staticmethod(lines.append))
    progress = StageProgress(run_plan(build_config(), 60), "dtm on maze")
    progress.stage_begins(0, 0)
    progress.stage_begins(1, 60)
    progress.stage_begins(2, 120)
    assert lines[0].startswith("dtm on maze: 5 stages x 60 updates = 300 updates")
    assert lines[1] == "dtm on maze: stage 2: 60/300 updates, 1m00s, about 4m00s left"
    assert lines[2] == "dtm on maze: stage 3: 120/300 updates, 2m00s, about 3m00s left"


def test_a_run_prints_its_plan_and_progress(tmp_path, capsys, tiny_overrides) -> None:
    argv = ["train", "--out", str(tmp_path / "r"), "--set", "train.report_to=none"]
    for override in [*tiny_overrides, "dtm.a_end=4", "dtm.h=2", "dtm.steps_per_h=2"]:
        argv += ["--set", override]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "dtm on maze: 2 stages x 2 updates = 4 updates (dtm.a_end 4 / dtm.h 2)" in err
    assert "dtm on maze: stage 2: 2/4 updates" in err and "left" in err


def test_pretrain_says_what_it_will_take(tmp_path, capsys) -> None:
    from tiltmatch.models.denoiser import TinyModelSpec
    from tiltmatch.tasks import get_task

    line = pretrain_estimate(get_task("maze"), TinyModelSpec(128, 4, 4, 384), 3000, 128)
    assert line is not None and line.startswith("pretrain maze: 3000 steps x 128 sequences")
    assert "on a 2-core CPU (scaled from the shipped maze base: 29m00s for 6000 steps" in line
    argv = ["pretrain", "--task", "maze", "--out", str(tmp_path / "b"), "--steps", "2"]
    argv += ["--batch-size", "2", "--hidden-size", "16", "--num-heads", "2", "--num-layers", "1"]
    assert main([*argv, "--train-examples", "8"]) == 0
    assert "pretrain maze: 2 steps x 2 sequences" in capsys.readouterr().err
