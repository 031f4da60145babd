"""Bad input of every kind gets a clear error naming the problem: config, CLI, tasks, data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiltmatch.cli import main
from tiltmatch.config import ConfigError, build_config
from tiltmatch.data import DatasetError, read_jsonl
from tiltmatch.tasks import UnknownTaskError, get_task


def test_defaults_validate_and_overrides_apply() -> None:
    config = build_config(overrides=["dtm.h=3", "train.learning_rate=1e-3", "seed=7"])
    assert config.dtm.h == 3.0 and config.train.learning_rate == 1e-3 and config.seed == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dtm.hh=1"], "dtm.hh: unknown field"),
        (["dtm.h=-1"], "dtm.h: Input should be greater than 0"),
        (["dtm.states=diagonal"], "dtm.states"),
        (["train.prompts_per_batch=100"], "exceeds buffer_prompts"),
        (["model.hidden_size=30"], "not divisible by num_heads"),
        (["colour=blue"], "colour: unknown field"),
        (["dtm=3"], "dtm"),
        (["novalue"], "not of the form key.path=value"),
        (["method=grpo"], "method: .*unknown method 'grpo'; known methods: dtm, diffu-grpo, wd1"),
    ],
)
def test_bad_overrides_are_named(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=overrides)


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("dtm: {h: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("dtm:\n  c: 1\n  steps_per_hh: 3\ntrain:\n  lr: 1\n")
    with pytest.raises(ConfigError) as info:
        build_config(tmp_path / "typo.yaml")
    assert "dtm.steps_per_hh: unknown field" in str(info.value)
    assert "train.lr: unknown field" in str(info.value)


def test_unknown_task_and_bad_task_options() -> None:
    with pytest.raises(UnknownTaskError, match="unknown task 'chess'; known tasks: countdown"):
        get_task("chess")
    with pytest.raises(ValueError, match="size"):
        get_task("maze", size=1)


def test_dataset_row_without_its_field(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"}\n')
    with pytest.raises(DatasetError, match=r"rows.jsonl:2: row has no field 'answer'"):
        read_jsonl(path, required=("question", "answer"))
    path.write_text("{not json}\n")
    with pytest.raises(DatasetError, match="not valid JSON"):
        read_jsonl(path)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--out", "{tmp}/r", "--task", "chess"], "unknown task 'chess'"),
        (["train", "--out", "{tmp}/r", "--set", "dtm.hh=1"], "dtm.hh: unknown field"),
        (["train", "--out", "{tmp}/r", "--config", "{tmp}/none.yaml"], "config file not found"),
        (["train", "--out", "{tmp}/r", "--resume"], "cannot resume: no checkpoint in"),
        (["eval", "--model", "{tmp}/nomodel", "--task", "maze"], "model folder not found"),
        (["eval", "--model", "shipped:chess", "--task", "maze"], "no shipped base model"),
        (
            ["train", "--out", "{tmp}/r", "--set", "method=wd1", "--set", "method_options.mu=3"],
            "mu",
        ),
    ],
)
def test_cli_errors_are_one_clear_line(argv, message, tmp_path, capsys) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, output = run_cli(argv, capsys)
    assert code == 2
    assert message in output
    assert "Traceback" not in output


def test_every_command_has_help(capsys) -> None:
    for command in ("demo", "pretrain", "train", "eval", "convert-llada", "bench"):
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert "usage: tiltmatch" in capsys.readouterr().out


def _train_argv(out: Path, overrides: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "tiltmatch.cli", "train", "--out", str(out), "--quiet"]
    for o in overrides:
        argv += ["--set", o]
    return argv


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_parameters(tiny_overrides, tmp_path) -> None:
    """A run killed with SIGKILL and resumed with --resume ends as an uninterrupted one."""
    overrides = [*tiny_overrides, "dtm.a_end=6", "dtm.steps_per_h=6", "train.save_steps=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        _train_argv(tmp_path / "full", overrides), check=True, env=env, capture_output=True
    )
    victim = subprocess.Popen(
        _train_argv(tmp_path / "killed", overrides),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    meta = tmp_path / "killed" / "checkpoint" / "meta.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if meta.is_file() and json.loads(meta.read_text())["phase"]["updates"] >= 4:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "final").exists()  # it really died before the end
    resumed = subprocess.run(
        [*_train_argv(tmp_path / "killed", []), "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
