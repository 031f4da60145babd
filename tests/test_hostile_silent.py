"""No silent result (issue 24): the inputs that used to end in exit 0 with something meaningless,
a traceback or a vague line are now refusals naming the input, or correct results. One test per
case of the issue's list; each refusal is exit code 2 and one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES
from hostile import folder_state, refusal, set_args
from safetensors.torch import load_file, save_file
from test_api import tiny_args, word_rows, write_jsonl
from test_hostile_destinations import DATASET_RUN, _dataset_files, _interrupted_dataset_run

from tiltmatch import DTMArguments, DTMTrainer
from tiltmatch.cli import main
from tiltmatch.config import ConfigError, build_config
from tiltmatch.data import DatasetError, read_jsonl
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.models.denoiser import ModelLoadError, TinyModelSpec, tiny_denoiser
from tiltmatch.models.loading import shipped_model_dir
from tiltmatch.rewards import CallableReward, RewardModel, RewardModelError, char_level_tokenizer
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example, RewardError
from tiltmatch.tasks.dataset import DatasetTask

TINY = set_args(TINY_OVERRIDES)


def _out_run(tmp_path: Path) -> list[str]:
    return ["train", "--out", str(tmp_path / "run"), "--quiet"]


# --- numbers: booleans and non-finite values are never settings -----------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.num_generations=true", "train.num_generations: a boolean (true) is not a number"),
        ("sampler.steps=false", "sampler.steps: a boolean (false) is not a number"),
        ("sampler.temperature=.inf", "sampler.temperature: Input should be a finite number"),
        ("sampler.threshold=.nan", "sampler.threshold: Input should be a finite number"),
        ("eval.sampler={temperature: .inf}", "eval.sampler.temperature: Input should be a finite"),
        ("lora={r: true}", "lora.r: a boolean (true) is not a number"),
        ("train.adam_beta1=true", "train.adam_beta1: a boolean (true) is not a number"),
        ("task_options={wall_density: .nan}", "task_options: NaN and infinity are not settings"),
    ],
)
def test_booleans_and_non_finite_numbers_are_refused_everywhere(
    override, message, tmp_path, capsys
) -> None:
    line = refusal([*_out_run(tmp_path), *TINY, "--set", override], capsys)
    assert line.startswith("invalid configuration: " + message), line
    assert not (tmp_path / "run").exists()


def test_method_options_refuse_booleans_by_name(tmp_path, capsys) -> None:
    dtm_free = set_args([o for o in TINY_OVERRIDES if not o.startswith("dtm.")])
    argv = [*_out_run(tmp_path), *dtm_free, "--set", "method=wd1"]
    assert main([*argv, "--set", "method_options.num_iterations=true"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "tiltmatch train: error: invalid method_options for method 'wd1':",
        "  method_options.num_iterations: a boolean (true) is not a number",
    ]
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_booleans_infinities_and_empty_lengths(tmp_path) -> None:
    for changes, message in (
        # the run config's refusals, in the arguments' own names (issue 22)
        ({"num_generations": True}, "configuration: num_generations: a boolean"),
        ({"temperature": float("inf")}, "configuration: temperature: Input should be a finite"),
        ({"max_completion_length": 0}, "max_completion_length must be an integer >= 1, got 0"),
        ({"max_completion_length": -8}, "max_completion_length must be an integer >= 1, got -8"),
    ):
        args = tiny_args(tmp_path / "r", **changes)
        with pytest.raises(ConfigError, match=message):
            args.to_run_config(task_options={"train": word_rows()})
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("length", [0, -4])
def test_zero_or_negative_response_lengths_are_named(length, tmp_path, capsys) -> None:
    # gsm8k's response_length option takes any integer: the commands check what they get.
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("task=")]
    argv = [*_out_run(tmp_path), "--task", "gsm8k", *set_args(overrides)]
    line = refusal([*argv, "--set", f"task_options.response_length={length}"], capsys)
    assert line == (
        f"task_options.response_length: task gsm8k needs responses of at least 1 token, "
        f"got {length}"
    )
    argv = ["eval", "--model", "shipped:maze", "--task", "gsm8k", "--limit", "1"]
    line = refusal([*argv, "--task-option", f"response_length={length}"], capsys)
    assert line == (
        f"task gsm8k: the response length must be at least 1 token, got {length} (its "
        "response_length option, or --gen-length)"
    )
    assert not (tmp_path / "run").exists()


def test_a_dataset_task_refuses_an_empty_response(tmp_path, capsys) -> None:
    data, rewards = _dataset_files(tmp_path)
    argv = [*_out_run(tmp_path), "--dataset", str(data), "--reward", f"{rewards}:good"]
    argv += ["--alphabet", "auto", "--set", "task_options.response_length=0"]
    assert refusal(argv, capsys) == "response_length must be at least 1, got 0"
    with pytest.raises(ValueError, match="response_length must be an integer"):
        DatasetTask(train=word_rows(), rewards=lambda prompts, completions: [], response_length=2.5)


# --- counts of the benchmark ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seeds", "0"], "--seeds must be at least 1, got 0"),
        (["--seeds", "-2"], "--seeds must be at least 1, got -2"),
        (["--base-steps", "0"], "--base-steps must be at least 1, got 0"),
        (["--budget", "0"], "--budget must be at least 1, got 0"),
        (["--learning-rates", "nan"], "--learning-rates must be finite numbers in (0, 1], got nan"),
        (["--learning-rates", "3e-4", "inf"], "--learning-rates must be finite numbers in (0, 1]"),
    ],
)
def test_bench_counts_are_checked_before_anything_is_written(flags, message, tmp_path, capsys):
    out = tmp_path / "bench"
    assert refusal(["bench", "--out", str(out), *flags], capsys).startswith(message)
    assert not out.exists()


# --- rewards: return types, sys.exit, reward models -------------------------------------------


def _examples(n: int) -> list[Example]:
    return [Example(prompt=f"p{i}", uid=f"u{i}") for i in range(n)]


@pytest.mark.parametrize(
    ("returned", "kind"),
    [({"a": 1.0, "b": 0.0}, "dict"), ("10", "str"), ({1.0, 2.0}, "set"), (b"\x01\x02", "bytes")],
)
def test_a_reward_returning_a_mapping_or_text_is_an_error(returned, kind) -> None:
    reward = CallableReward(lambda prompts, completions: returned, name="keyed")
    with pytest.raises(RewardError, match=rf"'keyed' returned a {kind}, not a list of numbers"):
        reward(["x", "y"], _examples(2))


@pytest.mark.parametrize("code", [0, 3, None])
def test_sys_exit_in_a_reward_is_a_reward_error(code) -> None:
    def quits(prompts, completions):
        raise SystemExit(code)

    with pytest.raises(RewardError, match=rf"'quits' called sys.exit\({code!r}\)"):
        CallableReward(quits)(["x"], _examples(1))


@pytest.mark.parametrize("code", [0, 3])
def test_sys_exit_from_the_cli_reward_is_exit_2_naming_it(code, tmp_path, capsys) -> None:
    data, _ = _dataset_files(tmp_path)
    rewards = tmp_path / "quitting.py"
    rewards.write_text(f"import sys\ndef quits(prompts, completions, **c):\n    sys.exit({code})\n")
    argv = [*_out_run(tmp_path), "--dataset", str(data), "--reward", f"{rewards}:quits"]
    line = refusal([*argv, "--alphabet", "auto", *set_args(DATASET_RUN)], capsys)
    assert line.startswith(f"reward function 'quits' called sys.exit({code})")
    assert not (tmp_path / "run").exists()


def test_sys_exit_while_importing_a_reward_file_names_it(tmp_path, capsys) -> None:
    data, _ = _dataset_files(tmp_path)
    rewards = tmp_path / "exits.py"
    rewards.write_text("import sys\nsys.exit(0)\n")
    argv = [*_out_run(tmp_path), "--dataset", str(data), "--reward", f"{rewards}:fn"]
    line = refusal([*argv, "--alphabet", "auto"], capsys)
    assert line == (
        f"reward function '{rewards}:fn' cannot be loaded: importing {rewards} called sys.exit(0)"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("raise RuntimeError('no GPU here')", "BadTask(...) raised RuntimeError: no GPU here"),
        ("import sys; sys.exit(4)", "BadTask(...) called sys.exit(4)"),
    ],
)
def test_a_task_plugin_whose_constructor_fails_is_named(body, message, tmp_path, capsys) -> None:
    plugin = tmp_path / "mytask.py"
    plugin.write_text(
        "from tiltmatch.tasks.base import Task\n"
        "class BadTask(Task):\n"
        f"    def __init__(self, **options):\n        {body}\n"
        "    def examples(self, split, n=None, seed=0):\n        return []\n"
        "    def reward(self, response, example):\n        return 0.0\n"
    )
    line = refusal([*_out_run(tmp_path), "--task", f"{plugin}:BadTask"], capsys)
    assert line == f"task '{plugin}:BadTask' could not be built: {message}"


def _causal_lm_folder(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_level_tokenizer("abcdefgh ")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_causal_lm_given_as_reward_model_is_refused(tmp_path, capsys) -> None:
    folder = _causal_lm_folder(tmp_path / "lm")
    with pytest.raises(RewardModelError, match=r"has no weights for 'score\.weight'"):
        RewardModel(folder)
    data, _ = _dataset_files(tmp_path)
    argv = [*_out_run(tmp_path), "--dataset", str(data), "--reward-model", str(folder)]
    line = refusal(argv, capsys)
    assert line.startswith(f"reward model {str(folder)!r}: its checkpoint has no weights for")
    assert not (tmp_path / "run").exists()


def test_a_truncated_reward_model_file_is_one_line(tmp_path) -> None:
    from test_rewards import tiny_reward_model

    folder = tmp_path / "rm"
    tiny_reward_model(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(RewardModelError, match=r"cannot be loaded \("):
        RewardModel(folder)


# --- models whose weights or metadata are damaged --------------------------------------------


def _nan_model(tmp_path: Path) -> Path:
    folder = tmp_path / "nan-model"
    shutil.copytree(shipped_model_dir("maze"), folder)
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def test_a_model_with_nan_weights_is_refused_at_load(tmp_path, capsys) -> None:
    folder = _nan_model(tmp_path)
    message = f"the model in {folder}: tensor 'model.norm.weight' holds 1 non-finite value(s)"
    before = folder_state(tmp_path)
    argv = ["eval", "--model", str(folder), "--task", "maze", "--limit", "1"]
    assert refusal([*argv, "--out", str(tmp_path / "e")], capsys).startswith(message)
    line = refusal([*_out_run(tmp_path), *TINY, "--set", f"model.base={folder}"], capsys)
    assert line.startswith(message)
    assert folder_state(tmp_path) == before


def test_the_api_refuses_a_loaded_model_with_nan_weights(tmp_path) -> None:
    codec = CharTokenizer("".join(sorted(set("".join(r["prompt"] for r in word_rows())))))
    spec = TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = tiny_denoiser(codec.vocab_size, spec)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ModelLoadError, match=r"the given model: tensor .* non-finite"):
        DTMTrainer(
            model=model,
            processing_class=codec,
            reward_funcs=lambda prompts, completions, **c: [1.0] * len(completions),
            train_dataset=word_rows(),
            args=tiny_args(tmp_path / "r", model_init_kwargs={}),
        )


@pytest.mark.parametrize("alphabet", [123, ["#", "."], "", None])
def test_a_non_string_alphabet_in_tiltmatch_json_is_named(alphabet, tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    shutil.copytree(shipped_model_dir("maze"), folder)
    meta = json.loads((folder / "tiltmatch.json").read_text())
    meta["alphabet"] = alphabet
    (folder / "tiltmatch.json").write_text(json.dumps(meta))
    line = refusal(["eval", "--model", str(folder), "--task", "maze", "--limit", "1"], capsys)
    assert line.startswith(f"{folder / 'tiltmatch.json'}: 'alphabet' must be a non-empty string")


def test_dream_with_the_cached_sampler_is_refused(tmp_path, capsys) -> None:
    argv = [*_out_run(tmp_path), *TINY, "--set", "model.family=dream"]
    line = refusal([*argv, "--set", "sampler.mode=cached"], capsys)
    assert "cached" in line and "Dream" in line
    assert not (tmp_path / "run").exists()


# --- evaluation on zero examples ---------------------------------------------------------------


def test_an_evaluation_on_zero_examples_is_an_error(tmp_path, capsys) -> None:
    headerless = tmp_path / "puzzles.csv"
    headerless.write_text("4100020000300002,4123234134121234\n")  # one row and no header
    out = tmp_path / "eval"
    argv = ["eval", "--model", "shipped:maze", "--task", "sudoku", "--split", str(headerless)]
    line = refusal([*argv, "--out", str(out)], capsys)
    assert line == (
        f"task sudoku: split {str(headerless)!r} has no examples to evaluate (an empty file, or "
        "a CSV without its header row?)"
    )
    assert not out.exists()


# --- files named in every message ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe garbage", "is not UTF-8 text"),
        (b'{"stage": 0}\nnot json at all\n', "line 2: not a JSON object"),
        (b"[1, 2]\n", "line 1: not a JSON object"),
    ],
)
def test_a_garbage_stage_log_on_resume_names_the_file(content, message, tmp_path, capsys) -> None:
    data, rewards = _dataset_files(tmp_path)
    out = tmp_path / "run"
    _interrupted_dataset_run(out, data, rewards)
    (out / "stages.jsonl").write_bytes(content)
    before = folder_state(out)
    line = refusal(["train", "--out", str(out), "--resume"], capsys)
    assert line.startswith(f"run log {out / 'stages.jsonl'}") and message in line, line
    assert folder_state(out) == before


def test_a_5000_digit_countdown_number_is_named_as_too_long(tmp_path) -> None:
    path = tmp_path / "countdown.jsonl"
    path.write_text(json.dumps({"input": "1,2," + "9" * 5000, "output": "6"}) + "\n")
    with pytest.raises(DatasetError) as err:
        get_task("countdown").examples(str(path))
    assert str(err.value) == (
        f"{path}, row 1: field 'input' has a 5000-digit number; countdown numbers have at most "
        "18 digits"
    )


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_jsonl_strings_may_hold_any_line_separator_of_unicode(separator, tmp_path) -> None:
    rows = [{"prompt": f"say{separator}cat:", "word": "cat"}, {"prompt": "say dog:", "word": "d"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert separator in path.read_text("utf-8")  # written raw, as JSON allows
    assert read_jsonl(path) == rows
    task = DatasetTask(train=str(path), rewards=lambda prompts, completions, **c: [0.0])
    assert [e.prompt for e in task.examples("train")] == [r["prompt"] for r in rows]


def test_jsonl_with_windows_line_ends_still_reads(tmp_path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", word_rows())
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    assert read_jsonl(path) == word_rows()


def test_a_broken_jsonl_row_names_the_file_and_the_line(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DatasetError, match=rf"^{path}:2: not valid JSON \("):
        read_jsonl(path)


def test_tiny_config_still_builds(tmp_path) -> None:
    """The refusals above leave an ordinary config alone (a guard against over-refusing)."""
    config = build_config(overrides=TINY_OVERRIDES)
    assert config.train.num_generations == 2 and config.sampler.temperature == 1.0
    assert DTMArguments(output_dir=str(tmp_path)).to_run_config(task_options={}).seed == 0
