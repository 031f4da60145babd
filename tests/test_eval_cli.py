"""``tiltmatch eval`` end to end: a LLaDA-format checkpoint on GSM8K, a char model on mazes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


# -- bad arguments: one line, exit 2, nothing loaded or written (issue 8, case 6) --------------


@pytest.mark.parametrize(
    ("extra", "first_line"),
    [
        (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0, got -1.0"),
        (["--samples", "0"], "--samples must be at least 1, got 0"),
        (["--gen-length", "0"], "--gen-length must be at least 1, got 0"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--limit", "0"], "--limit must be at least 1, got 0"),
        (["--gen-length", "100000"], "--gen-length 100000 exceeds the model's"),
        (["--steps", "3"], "--steps 3 is not a multiple of the"),
        (["--device", "cuda"], "--device cuda: "),
        (["--device", "toaster"], "--device 'toaster' is not a device name"),
    ],
)
def test_eval_refuses_bad_arguments(tmp_path: Path, capsys, extra: list[str], first_line: str):
    out = tmp_path / "eval"
    argv = ["eval", "--model", "shipped:maze", "--task", "maze", "--out", str(out), *extra]
    if extra[0] == "--steps" and extra[1] == "3":
        argv += ["--gen-length", "8", "--block-length", "4"]  # 2 blocks
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    # One line says what is wrong (a model already being loaded may have shown its progress bar).
    lines = [line for line in err.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("tiltmatch eval: error: ") and first_line in lines[0], err
    assert not out.exists()


def test_eval_device_cuda_names_the_missing_support(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    code = main(["eval", "--model", "shipped:maze", "--task", "maze", "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    want = "no CUDA support" if not torch.backends.cuda.is_built() else "no CUDA device"
    assert want in err


def test_eval_uses_the_published_protocol_by_default(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--model", "shipped:maze", "--task", "maze", "--limit", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    length = metrics["gen_length"]
    assert metrics["block_length"] == min(32, length)
    assert metrics["steps"] == max(length // 2, 1)
    assert metrics["temperature"] == 0.0 and metrics["remasking"] == "low_confidence"
    # A second run into the same folder needs --overwrite.
    capsys.readouterr()
    assert main(["eval", "--model", "shipped:maze", "--task", "maze", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def _suite_model(tmp_path: Path) -> Path:
    ckpt = write_tiny_llada(tmp_path / "llada")
    config = json.loads((ckpt.folder / "config.json").read_text())
    config["max_sequence_length"] = 4096  # room for 3-shot prompts + 512 tokens, as LLaDA-8B
    (ckpt.folder / "config.json").write_text(json.dumps(config))
    return ckpt.folder


def _run_suite(tmp_path: Path, capsys, extra: list[str]) -> tuple[Path, dict, str]:
    model = _suite_model(tmp_path)
    out = tmp_path / "suite"
    argv = ["eval", "--suite", "published", "--model", str(model), "--limit", "1", *extra]
    code = main([*argv, "--batch-size", "1", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # Not twice into the same folder without --overwrite.
    assert main([*argv, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    return out, json.loads((out / "suite.json").read_text()), printed.out


def _check_table(out: Path, table: dict, printed: str, steps) -> None:
    assert table["tasks"] == ["sudoku", "countdown", "gsm8k", "math500"]
    assert table["lengths"] == [128, 256, 512]
    for task in table["tasks"]:
        for length in ("128", "256", "512"):
            cell = table["cells"][task][length]
            assert cell["gen_length"] == int(length) and cell["block_length"] == 32
            assert cell["steps"] == steps(int(length)) and cell["temperature"] == 0.0
            assert cell["remasking"] == "low_confidence" and cell["examples"] == 1
            assert (out / f"{task}-{length}" / "outputs.jsonl").is_file()
            assert 0.0 <= table["accuracy_percent"][task][length] <= 100.0
    assert table["cells"]["sudoku"]["128"]["split"] == "test_split_new"
    assert table["cells"]["countdown"]["128"]["split"] == "published"
    # The tasks x lengths table is printed, in the published layout, and written.
    header = "| task (metric) | 128 | 256 | 512 | published DTM (LLaDA-8B) |"
    assert header in printed
    assert "| sudoku (cell_accuracy) |" in printed and "99.2 @256, 99.4 @512" in printed
    assert "| countdown (accuracy) |" in printed and "81.3 @256, 78.9 @512" in printed
    assert "| gsm8k (accuracy) |" in printed and "83.2 (best)" in printed
    assert (out / "suite.md").read_text().splitlines()[0] == header


@needs_shared_data("countdown/test.jsonl")
@needs_shared_data("sudoku/test_split_new.csv")
@needs_shared_data("gsm8k/test.jsonl")
@needs_shared_data("math500/test.jsonl")
def test_eval_suite_published_end_to_end(tmp_path: Path, capsys) -> None:
    """All four tasks x 128 / 256 / 512 on a tiny LLaDA checkpoint, 16 sampler steps a cell
    (fast); the default steps (gen_length / 2) run in the slow test below."""
    out, table, printed = _run_suite(tmp_path, capsys, ["--steps", "16"])
    _check_table(out, table, printed, lambda length: 16)


@pytest.mark.slow
@needs_shared_data("countdown/test.jsonl")
@needs_shared_data("sudoku/test_split_new.csv")
@needs_shared_data("gsm8k/test.jsonl")
@needs_shared_data("math500/test.jsonl")
def test_eval_suite_published_protocol_defaults(tmp_path: Path, capsys) -> None:
    out, table, printed = _run_suite(tmp_path, capsys, [])
    _check_table(out, table, printed, lambda length: length // 2)


def test_eval_suite_argument_errors(tmp_path: Path, capsys) -> None:
    cases = [
        (["--suite", "published", "--task", "gsm8k"], "exclude each other"),
        (["--suite", "published", "--gen-length", "64"], "with --suite use --lengths"),
        (["--suite", "published", "--tasks", "maze"], "not in the published suite"),
        (["--suite", "published"], "--suite needs --out"),
        ([], "give --task NAME, or --suite published"),
    ]
    for extra, message in cases:
        code = main(["eval", "--model", str(tmp_path), *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


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


def test_eval_uses_the_models_recorded_task_options_and_sampler(tmp_path: Path, capsys) -> None:
    # The shipped countdown base records its recipe (format char, numbers up to 9, 12 tokens)
    # and its sampler: eval takes them unless a flag says otherwise (issue 22: under the
    # published defaults, on the published chat-format split, it scored 0.0).
    out = tmp_path / "eval"
    argv = ["eval", "--model", "shipped:countdown", "--task", "countdown", "--limit", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task_options"]["format"] == "char" and metrics["split"] == "test"
    assert metrics["task_options"]["max_number"] == 9 and metrics["gen_length"] == 12
    assert (metrics["block_length"], metrics["steps"], metrics["temperature"]) == (12, 8, 1.0)
    flags = ["--temperature", "0", "--gen-length", "6", "--out", str(tmp_path / "b")]
    assert main([*argv, "--task-option", "max_number=5", *flags]) == 0
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["task_options"]["max_number"] == 5 and metrics["temperature"] == 0.0
    assert (metrics["gen_length"], metrics["block_length"], metrics["steps"]) == (6, 6, 4)
    capsys.readouterr()
    assert main([*argv, "--block-length", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tiltmatch eval: error: --block-length 5 does not divide --gen-length 12")
