"""Recovery edges (issue 22, item 8): ``train --dataset``'s errors speak its flags, a reward
asking for a column the dataset lacks is told which exist, a run that failed on its first
reward batch can simply be run again, and README's reward-model line runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_rewards import tiny_reward_model

from tiltmatch.cli import main
from tiltmatch.tasks import get_task

SIZES = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "train.num_generations=2",
    "train.prompts_per_batch=2",
    "train.buffer_prompts=2",
    "train.refresh_prompts=1",
    "train.refresh_every=1",
    "dtm.a_end=2",
    "dtm.steps_per_h=2",
    "eval.examples=2",
    "eval.samples_per_example=1",
    "train.report_to=none",
]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def words(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {w}:", "word": w}) + "\n" for w in "ab"))
    return path


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_dataset_errors_speak_the_commands_flags(tmp_path: Path, capsys) -> None:
    (tmp_path / "r.py").write_text(
        "def f(prompts, completions, **c):\n    return [0.0] * len(completions)\n"
    )
    argv = ["train", "--dataset", str(words(tmp_path)), "--reward", f"{tmp_path}/r.py:f"]
    argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "give --model FOLDER (or, for a fresh character-level model, --alphabet auto)" in line
    assert "model.base" not in line
    assert main([*argv, "--alphabet", "auto", "--reward-weight", "1", "--reward-weight", "2"]) == 2
    assert "2 --reward-weight values for 1 reward functions" in error_line(capsys)


def test_a_missing_column_names_the_columns_there_are(tmp_path: Path, capsys) -> None:
    (tmp_path / "r.py").write_text(
        "def f(prompts, completions, answer, **c):\n    return [0.0] * len(completions)\n"
    )
    argv = ["train", "--dataset", str(words(tmp_path)), "--reward", f"{tmp_path}/r.py:f"]
    argv += ["--alphabet", "auto", "--out", str(tmp_path / "run"), "--quiet", *sets(SIZES)]
    assert main(argv) == 2
    line = error_line(capsys)
    assert "missing 1 required positional argument: 'answer'" in line
    assert line.endswith("the dataset's columns, passed by name: word")
    # the run failed on its first reward batch: fixed, it is simply run again (no --overwrite)
    (tmp_path / "fixed.py").write_text(
        "def f(prompts, completions, word, **c):\n    return [0.0] * len(completions)\n"
    )
    argv[argv.index(f"{tmp_path}/r.py:f")] = f"{tmp_path}/fixed.py:f"
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_the_readmes_reward_model_line_runs(tmp_path: Path, capsys) -> None:
    # README: maze prompts (written the way it shows) for the maze model, scored by a reward
    # model over the maze's characters (make rlhf trains one).
    mazes = tmp_path / "mazes.jsonl"
    examples = get_task("maze").examples("train", 4)
    mazes.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in examples))
    tiny_reward_model(tmp_path / "reward-model", alphabet=get_task("maze").alphabet)
    argv = ["train", "--dataset", str(mazes), "--reward-model", str(tmp_path / "reward-model")]
    argv += ["--model", "shipped:maze", "--out", str(tmp_path / "run"), "--quiet"]
    sizes = [s for s in SIZES if not s.startswith("model.")]
    assert main([*argv, *sets(sizes)]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "final" / "README.md").is_file()


@pytest.mark.parametrize("model", ["shipped:maze"])
def test_word_prompts_for_the_maze_model_are_refused_naming_the_row(tmp_path, capsys, model):
    # what README's earlier line did: the maze model cannot read words
    (tmp_path / "r.py").write_text(
        "def f(prompts, completions, **c):\n    return [0.0] * len(completions)\n"
    )
    argv = ["train", "--dataset", str(words(tmp_path)), "--reward", f"{tmp_path}/r.py:f"]
    assert main([*argv, "--model", model, "--out", str(tmp_path / "run"), *sets(SIZES[4:])]) == 2
    line = error_line(capsys)
    assert "prompts.jsonl:0: the model's tokenizer cannot encode this prompt" in line
