"""Hostile input without training (issue 8, cases 1, 3-5, 7-9): model folders, configs, data
files and model output. Every refusal is exit code 2 with one line naming the input, and the
folders it touches are byte-for-byte unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hostile import folder_state, refusal, set_args
from llada_fixture import write_tiny_llada
from safetensors.torch import load_file, save_file

from tiltmatch.config import MAX_YAML_NODES, ConfigError, build_config
from tiltmatch.data import DatasetError, read_jsonl
from tiltmatch.models.denoiser import ModelLoadError, load_denoiser
from tiltmatch.models.llada import load_llada
from tiltmatch.models.loading import shipped_model_dir
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example
from tiltmatch.tasks.countdown import CountdownTask, solve

# --- case 1 and 9: strict loading of a model folder ------------------------------------------


def _rewrite_weights(folder: Path, change) -> None:
    sd = load_file(str(folder / "model.safetensors"))
    change(sd)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _drop(folder: Path) -> None:
    _rewrite_weights(folder, lambda sd: sd.pop("model.layers.0.self_attn.q_proj.weight"))


def _extra(folder: Path) -> None:
    _rewrite_weights(folder, lambda sd: sd.update({"model.layers.9.extra": torch.zeros(2)}))


def _more_layers(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (folder / "config.json").write_text(json.dumps(config))


def _wrong_shape(folder: Path) -> None:
    _rewrite_weights(folder, lambda sd: sd.update({"model.norm.weight": torch.ones(3)}))


def _truncated(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _garbage(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\x07not a safetensors file" * 50)


def _empty(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"")


def _bad_config_json(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def _bad_meta_json(folder: Path) -> None:
    (folder / "tiltmatch.json").write_bytes(b"\xff\xfe{\x00")


BROKEN_MODELS = {
    "missing tensor": (_drop, "lacks tensor 'model.layers.0.self_attn.q_proj.weight'"),
    "unexpected tensor": (_extra, "holds unexpected tensor 'model.layers.9.extra'"),
    "config claims more layers": (_more_layers, "lacks tensor 'model.layers.4."),
    "shape mismatch": (_wrong_shape, "tensor 'model.norm.weight' has shape [3]"),
    "truncated safetensors": (_truncated, "is not a readable safetensors file"),
    "garbage safetensors": (_garbage, "is not a readable safetensors file"),
    "empty safetensors": (_empty, "is not a readable safetensors file"),
    "bad config.json": (_bad_config_json, "config.json is unreadable"),
    "bad tiltmatch.json": (_bad_meta_json, "tiltmatch.json is not valid JSON"),
}


@pytest.fixture
def broken_model(request, tmp_path) -> tuple[Path, str]:
    breaker, message = BROKEN_MODELS[request.param]
    folder = tmp_path / "model"
    shutil.copytree(shipped_model_dir("maze"), folder)
    breaker(folder)
    return folder, message


@pytest.mark.parametrize("broken_model", list(BROKEN_MODELS), indirect=True)
def test_eval_refuses_a_broken_model_folder(broken_model, tmp_path, capsys) -> None:
    folder, message = broken_model
    before = folder_state(tmp_path)
    line = refusal(["eval", "--model", str(folder), "--task", "maze", "--limit", "1"], capsys)
    assert message in line
    assert folder_state(tmp_path) == before


@pytest.mark.parametrize("broken_model", list(BROKEN_MODELS), indirect=True)
def test_train_refuses_a_broken_base(broken_model, tmp_path, tiny_overrides, capsys) -> None:
    folder, message = broken_model
    out = tmp_path / "run"
    before = folder_state(tmp_path)
    argv = ["train", "--out", str(out), *set_args([*tiny_overrides, f"model.base={folder}"])]
    assert message in refusal(argv, capsys)
    assert folder_state(tmp_path) == before  # no run folder, no config.yaml


def test_load_denoiser_is_strict(tmp_path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(shipped_model_dir("maze"), folder)
    load_denoiser(folder)  # the intact folder loads
    _more_layers(folder)
    with pytest.raises(ModelLoadError, match=r"lacks tensor 'model\.layers\.4\..* and 8 more"):
        load_denoiser(folder)


def test_llada_folder_with_a_missing_or_wrong_tensor_is_refused(tmp_path) -> None:
    tiny = write_tiny_llada(tmp_path / "ok", single_file=True)
    load_llada(tiny.folder, dtype=torch.float32)
    name = "model.transformer.ln_f.weight"
    sd = {k: v for k, v in tiny.state_dict.items() if k != name}
    save_file(sd, str(tiny.folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lacks weight"):
        load_llada(tiny.folder, dtype=torch.float32)
    sd[name] = torch.ones(3)
    save_file(sd, str(tiny.folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        load_llada(tiny.folder, dtype=torch.float32)
    _truncated(tiny.folder)
    with pytest.raises(ModelLoadError, match="cannot load the weights"):
        load_llada(tiny.folder, dtype=torch.float32)


# --- case 3: no overwrite without --overwrite ------------------------------------------------


def test_pretrain_refuses_an_existing_model(tmp_path, capsys) -> None:
    folder = tmp_path / "base"
    shutil.copytree(shipped_model_dir("maze"), folder)
    before = folder_state(tmp_path)
    line = refusal(["pretrain", "--task", "maze", "--out", str(folder), "--steps", "1"], capsys)
    assert line == (
        f"{folder} is not empty (holds config.json, generation_config.json, model.safetensors, "
        "tiltmatch.json); pass --overwrite to replace it (the old folder is kept aside until the "
        "new model is written) or choose another destination"
    )
    assert folder_state(tmp_path) == before


def test_pretrain_overwrite_replaces_the_model(tmp_path, capsys) -> None:
    from tiltmatch.cli import main

    folder = tmp_path / "base"
    shutil.copytree(shipped_model_dir("maze"), folder)
    (folder / "notes.txt").write_text("mine")
    old = (folder / "model.safetensors").read_bytes()
    argv = ["pretrain", "--task", "maze", "--out", str(folder), "--overwrite", "--quiet"]
    argv += ["--steps", "1", "--batch-size", "2", "--hidden-size", "16", "--num-layers", "1"]
    argv += ["--num-heads", "2", "--train-examples", "4"]
    assert main(argv) == 0
    capsys.readouterr()
    assert (folder / "model.safetensors").read_bytes() != old
    assert not (folder / "notes.txt").exists()  # the folder is replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # nothing left aside
    load_denoiser(folder)


def test_demo_refuses_an_existing_run(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "stages.jsonl").write_text('{"stage": 0}\n')
    before = folder_state(tmp_path)
    line = refusal(["demo", "--out", str(out)], capsys)
    assert line == (
        f"{out} is not empty (holds report.json, stages.jsonl); pass --overwrite to replace it "
        "(the old folder is kept aside until the new demo run is written) or choose another "
        "destination"
    )
    assert folder_state(tmp_path) == before


def test_convert_llada_refuses_a_non_empty_destination(tmp_path, capsys) -> None:
    tiny = write_tiny_llada(tmp_path / "src", single_file=True)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "config.json").write_text("{}")
    before = folder_state(tmp_path)
    line = refusal(["convert-llada", str(tiny.folder), str(dst), "--dtype", "float32"], capsys)
    assert line == (
        f"{dst} is not empty (holds config.json); pass --overwrite to replace it (the old folder "
        "is kept aside until the new converted model is written) or choose another destination"
    )
    assert folder_state(tmp_path) == before


def test_convert_llada_overwrite_replaces_the_folder(tmp_path, capsys) -> None:
    from tiltmatch.cli import main

    tiny = write_tiny_llada(tmp_path / "src", single_file=True)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    argv = ["convert-llada", str(tiny.folder), str(dst), "--dtype", "float32", "--overwrite"]
    assert main(argv) == 0
    capsys.readouterr()
    assert not (dst / "stale.txt").exists()
    load_llada(dst, dtype=torch.float32)
    assert not list(tmp_path.glob(".dst.*"))  # no temporary folder left


# --- case 4: the countdown solver is bounded; negative numbers are refused -----------------


def _countdown_file(tmp_path: Path, rows: list[dict]) -> Path:
    path = tmp_path / "countdown.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_countdown_rows_with_many_numbers_load_without_solving(tmp_path) -> None:
    # 6 and 9 numbers: enumerating every expression would take hours per row.
    path = _countdown_file(
        tmp_path,
        [{"input": "1,2,3,4,5,6", "output": "21"}, {"input": "1,2,3,4,5,6,7,8,9", "output": "45"}],
    )
    examples = CountdownTask().examples(str(path))
    assert [e.reference for e in examples] == [None, None]
    task = CountdownTask(response_length=32)
    assert task.checked_reward("1+2+3+4+5+6", examples[0]) == 1.0
    assert task.checked_reward("1+2+3+4+5*6", examples[0]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at most 4 numbers, got 6"):
        solve((1, 2, 3, 4, 5, 6), 21)
    # Three and four numbers are still solved.
    small = CountdownTask().examples(
        str(_countdown_file(tmp_path, [{"input": "2,3,4,5", "output": "1"}]))
    )
    assert small[0].reference is not None


def test_countdown_negative_number_is_refused(tmp_path, tiny_overrides, capsys) -> None:
    path = _countdown_file(
        tmp_path, [{"input": "1,2,3", "output": "6"}, {"input": "4,-5,6", "output": "5"}]
    )
    with pytest.raises(DatasetError, match=r"row 2: field 'input' has negative number -5"):
        CountdownTask().examples(str(path))
    out = tmp_path / "run"
    overrides = [o for o in tiny_overrides if not o.startswith("task=")]
    argv = ["train", "--out", str(out), "--task", "countdown"]
    argv += set_args([*overrides, f"train.train_split={path}", "train.train_examples=2"])
    before = folder_state(tmp_path)
    line = refusal(argv, capsys)
    assert line == (
        f"{path}, row 2: field 'input' has negative number -5; countdown numbers are non-negative"
    )
    assert folder_state(tmp_path) == before


# --- case 5: a reward never raises on model output -----------------------------------------

HOSTILE_RESPONSES = [
    "9" * 400,  # float() overflows
    "9" * 5000,  # beyond Python's int-string limit
    "<answer>" + "1" * 5000 + "</answer>",
    "\\boxed{" + "9" * 400 + "}",
    "\\frac{1}{" + "0" * 400 + "}",
    "1/0",
    "-" * 10_000,
    "1," * 3000 + "000",
    "\x00\ufffd\u202e<answer>((((((((</answer>",
    "(" * 2000 + "1" + ")" * 2000,
    "",
]


@pytest.mark.parametrize("response", HOSTILE_RESPONSES, ids=lambda r: repr(r[:12]))
def test_gsm8k_reward_never_raises(response) -> None:
    task = get_task("gsm8k")
    example = Example(prompt="q", reference="42", uid="gsm8k/x")
    assert task.checked_reward(response, example) == 0.0
    assert task.checked_reward(response + " so the answer is 42", example) in (0.0, 1.0)


@pytest.mark.parametrize(
    ("name", "options"),
    [("countdown", {}), ("countdown", {"format": "chat"}), ("maze", {}), ("sudoku", {})],
)
def test_synthetic_rewards_never_raise(name, options) -> None:
    task = get_task(name, **options)
    example = task.examples("test", 1, seed=0)[0]
    for response in HOSTILE_RESPONSES:
        assert 0.0 <= task.checked_reward(response, example) <= 1.0


# --- case 7: a YAML alias bomb is refused at once, naming the file -------------------------

BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_yaml_alias_bomb_is_refused(tmp_path, capsys) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 600  # expands to 9^9 = 387 million strings
    line = refusal(["train", "--out", str(tmp_path / "r"), "--config", str(bomb)], capsys)
    assert line == (
        f"config file {bomb}: YAML aliases expand to more than {MAX_YAML_NODES} nodes "
        "(an alias bomb?); write the values out"
    )
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="override 'task_options': YAML aliases expand"):
        value = BOMB.replace("\n", ", ").rstrip(", ")
        build_config(overrides=[f"task_options={{{value}}}"])
    # A recursive alias cannot be expanded at all.
    (tmp_path / "loop.yaml").write_text("a: &a [*a]\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml"):
        build_config(tmp_path / "loop.yaml")
    # Ordinary anchors still work.
    (tmp_path / "ok.yaml").write_text("train: &t {learning_rate: 0.001}\neval: {examples: 3}\n")
    assert build_config(tmp_path / "ok.yaml").train.learning_rate == 0.001


def test_config_file_that_is_not_text_is_named(tmp_path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\n", encoding="utf-16")
    line = refusal(["train", "--out", str(tmp_path / "r"), "--config", str(path)], capsys)
    assert line.startswith(f"config file {path} is not UTF-8 text")


# --- case 8: config fields that cannot mean anything are refused by name --------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dtm.a_end=.inf", "dtm.a_end: Input should be a finite number (got inf)"),
        ("dtm.h=.nan", "dtm.h: Input should be a finite number"),
        ("train.learning_rate=.inf", "train.learning_rate: Input should be a finite number"),
        ("train.adam_beta1=.nan", "train.adam_beta1: Input should be a finite number"),
        ("train.adam_beta2=2", "train.adam_beta2: Input should be less than 1"),
        ("seed=1.0e+23", "seed: "),
        ("seed=100000000000000000000000", "seed: Input should be less than or equal to"),
        ("seed=-1", "seed: Input should be greater than or equal to 0"),
        (
            "train.train_examples=1000000000",
            "train.train_examples: Input should be less than or equal to 1000000",
        ),
        ("eval.examples=1000000000", "eval.examples: Input should be less than or equal to"),
    ],
)
def test_meaningless_config_values_are_refused_by_name(override, message, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    line = refusal(["train", "--out", str(out), "--set", override], capsys)
    assert line.startswith("invalid configuration: " + message), line
    assert not out.exists()


def test_seed_flag_out_of_range_is_named(tmp_path, capsys) -> None:
    line = refusal(["train", "--out", str(tmp_path / "r"), "--seed", str(10**23)], capsys)
    assert line.startswith("invalid configuration: seed: Input should be less than or equal to")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train-examples", "1000000000"], "--train-examples must be in 1..1000000"),
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
    ],
)
def test_pretrain_sizes_are_checked(flags, message, tmp_path, capsys) -> None:
    line = refusal(["pretrain", "--out", str(tmp_path / "b"), *flags], capsys)
    assert line == message or line.startswith(message)
    assert not (tmp_path / "b").exists()


# --- case 9: data files that are not UTF-8 JSON lines name the file -------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"input": "1,2,3", "output": "6"}\n'.encode("utf-16"),
            "is UTF-16 text; save it as UTF-8",
        ),
        (bytes(range(256)) * 4, "is not UTF-8 text (byte 128: invalid start byte)"),
        (b'{"input": "1,2,3", "output": "6"}\n\x00\x00\x00', "holds NUL bytes"),
    ],
    ids=["utf-16", "binary", "nul"],
)
def test_data_file_that_is_not_text_is_named(content, message, tmp_path, tiny_overrides, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=r"rows\.jsonl"):
        read_jsonl(path)
    overrides = [o for o in tiny_overrides if not o.startswith("task=")]
    argv = ["train", "--out", str(tmp_path / "r"), "--task", "countdown"]
    argv += set_args([*overrides, f"train.train_split={path}"])
    line = refusal(argv, capsys)
    assert line.startswith(f"dataset file {path} ") and message in line
    assert not (tmp_path / "r").exists()


def test_utf8_bom_is_harmless(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"input": "1,2,3", "output": "6"}\n')
    assert read_jsonl(path) == [{"input": "1,2,3", "output": "6"}]


# --- the real entry point: the same one line, first on stderr, nothing else ---------------


@pytest.mark.slow
def test_the_command_prints_one_line_and_no_traceback(tmp_path) -> None:
    import os
    import subprocess
    import sys

    folder = tmp_path / "model"
    shutil.copytree(shipped_model_dir("maze"), folder)
    _more_layers(folder)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for argv, start in (
        (
            ["eval", "--model", str(folder), "--task", "maze", "--limit", "1"],
            f"the model in {folder} lacks",
        ),
        (["train", "--out", str(tmp_path / "r"), "--config", str(bomb)], f"config file {bomb}"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "tiltmatch.cli", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"tiltmatch {argv[0]}: error: " + done.stderr.split(": error: ", 1)[1].rstrip("\n")
        ]
        assert done.stderr.split(": error: ", 1)[1].startswith(start)
        assert "Traceback" not in done.stderr + done.stdout
