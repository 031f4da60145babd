"""``tiltmatch eval`` end to end: a LLaDA-format checkpoint on GSM8K, a char model on mazes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import needs_shared_data
from llada_fixture import write_tiny_llada

from tiltmatch.cli import main


@needs_shared_data("gsm8k/test.jsonl")
def test_eval_llada_checkpoint_on_gsm8k(tmp_path: Path, capsys) -> None:
    ckpt = write_tiny_llada(tmp_path / "llada")
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(ckpt.folder),
            "--task",
            "gsm8k",
            "--limit",
            "3",
            "--gen-length",
            "8",
            "--block-length",
            "4",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "gsm8k" and metrics["examples"] == 3
    assert 0.0 <= metrics["accuracy"] <= 1.0
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert {"uid", "prompt", "reference", "response", "reward"} <= rows[0].keys()


def test_eval_shipped_maze_model(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            "shipped:maze",
            "--task",
            "maze",
            "--limit",
            "20",
            "--samples",
            "2",
            "--temperature",
            "1.0",
            "--remasking",
            "random",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    # The shipped base model finds valid paths on held-out mazes, but is far from perfect.
    assert 0.1 < metrics["valid"] < 0.95
    assert metrics["examples"] == 20 and metrics["samples_per_example"] == 2
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 40


def test_eval_sampler_flag(tmp_path: Path, capsys) -> None:
    """``--sampler`` picks the mode (recorded in the metrics); a mode that cannot work with the
    other flags is one line and exit 2."""
    args = ["eval", "--model", "shipped:maze", "--task", "maze", "--limit", "4"]
    code = main([*args, "--sampler", "cached+parallel", "--out", str(tmp_path / "e")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["sampler"] == "cached+parallel" and metrics["examples"] == 4
    capsys.readouterr()
    assert main([*args, "--sampler", "parallel", "--remasking", "random"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "low_confidence" in err
