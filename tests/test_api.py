"""The Python API (DTMArguments / DTMTrainer), the dataset task, the CLI's dataset flags,
tasks from outside the package and the experiment trackers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_rewards import tiny_reward_model

from tiltmatch import DTMArguments, DTMTrainer
from tiltmatch.api import DiffuGRPOTrainer
from tiltmatch.cli import main
from tiltmatch.config import ConfigError
from tiltmatch.data import DatasetError
from tiltmatch.models.denoiser import load_denoiser
from tiltmatch.tasks import UnknownTaskError, get_task
from tiltmatch.tasks.base import RewardError
from tiltmatch.tasks.dataset import DatasetTask

WORDS = ["cat", "dog", "owl", "bee"]
TINY_MODEL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}


def tiny_args(out: Path, **changes) -> DTMArguments:
    """A run of 2 stages x 2 updates on 4 prompts x 2 completions of 4 tokens."""
    fields = dict(
        output_dir=str(out),
        max_completion_length=4,
        block_length=4,
        diffusion_steps=4,
        num_generations=2,
        per_device_train_batch_size=4,
        buffer_prompts=2,
        refresh_prompts=1,
        refresh_every=1,
        a_end=4.0,
        h=2.0,
        steps_per_h=2,
        eval_examples=2,
        eval_samples_per_example=1,
        save_steps=1,
        report_to="none",
        disable_tqdm=True,
        model_init_kwargs=TINY_MODEL,
    )
    fields.update(changes)
    return DTMArguments(**fields)


#: tiny_args' DTM knobs, unset for a baseline trainer (the config refuses them there)
BASELINE_LEAVES_UNSET: dict = {"a_end": None, "h": None, "steps_per_h": None}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def word_rows() -> list[dict]:
    return [{"prompt": f"say {w}:", "word": w} for w in WORDS]


def letters_of_word(prompts, completions, word, **columns):
    return [
        sum(ch in w for ch in c) / len(c) if c else 0.0
        for c, w in zip(completions, word, strict=True)
    ]


def test_newcomer_script_trains_on_jsonl_with_a_reward_function(tmp_path):
    data = write_jsonl(tmp_path / "prompts.jsonl", word_rows())
    calls = []

    def reward(prompts, completions, word, **columns):
        calls.append(len(completions))
        assert prompts[0].startswith("say ") and word[0] in WORDS
        return letters_of_word(prompts, completions, word)

    trainer = DTMTrainer(
        reward_funcs=reward, train_dataset=str(data), args=tiny_args(tmp_path / "r")
    )
    out = trainer.train()
    assert out.global_step == 4 and len(out.history) == 2
    assert out.history[-1]["a_after"] == pytest.approx(4.0)
    # Batched: first the baseline's calibration sample (the 4 prompts x 2 completions; the
    # reward declares no lower bound), then whole buffers (2 x 2) or refreshes.
    assert calls[0] == 8 and all(n >= 2 for n in calls) and max(calls[1:]) == 4
    assert out.history[0]["reward_baseline"] >= 0.0  # letters_of_word is in [0, 1]
    folder = trainer.save_model()
    model, meta = load_denoiser(folder)
    assert meta["alphabet"] == "".join(sorted(set("".join(r["prompt"] for r in word_rows()))))
    card = (folder / "README.md").read_text()
    assert "prompts.jsonl" in card and "reward" in card and "eval_reward" in card
    assert "first 2 training prompts" in card  # no eval set: the card says it is not held out
    assert "steps_per_h: 2" in card
    # TRL's place: the run's output_dir, beside its checkpoint and logs; saved again, the
    # model files are replaced (as TRL does), the run's own files kept
    assert folder == tmp_path / "r" and (folder / "checkpoint").is_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "stages.jsonl").is_file()
    assert trainer.save_model() == folder
    assert not [p for p in folder.iterdir() if p.name.startswith(".model")]
    # The saved weights are the student's.
    student = trainer.trainer.pair.student.model.state_dict()
    assert all(torch.equal(v, student[k]) for k, v in model.state_dict().items())


def test_the_same_with_a_learned_reward_model(tmp_path):
    alphabet = "".join(sorted(set("".join(r["prompt"] for r in word_rows()))))
    tiny_reward_model(tmp_path / "rm", alphabet=alphabet)
    rows = word_rows()
    trainer = DTMTrainer(
        reward_funcs=str(tmp_path / "rm"),
        train_dataset=rows,
        eval_dataset=rows[:2],
        args=tiny_args(tmp_path / "r"),
    )
    out = trainer.train()
    assert len(out.history) == 2 and torch.isfinite(torch.tensor(out.metrics["eval_reward"]))
    # Rewards in the buffer are the reward model's scores of prompt + completion.
    buffer = trainer.trainer.buffer.data
    assert buffer is not None
    texts = trainer.trainer.worker.decode(buffer.responses)
    examples = [trainer.trainer.pool.examples[i] for i in trainer.trainer.buffer.slots]
    rows_ex = [e for e in examples for _ in range(2)]
    assert torch.allclose(buffer.rewards, trainer.reward(texts, rows_ex))
    assert "held out" not in (trainer.save_model() / "README.md").read_text()


def test_several_rewards_with_weights_and_a_baseline_trainer(tmp_path):
    def length(prompts, completions, **columns):
        return [float(len(c)) for c in completions]

    # A baseline reads no DTM knob: the tiny run's a_end, h and steps_per_h left unset.
    args = tiny_args(
        tmp_path / "r",
        reward_weights=[1.0, -0.5],
        max_stages=2,
        **BASELINE_LEAVES_UNSET,
    )
    trainer = DiffuGRPOTrainer(
        reward_funcs=[letters_of_word, length], train_dataset=word_rows(), args=args
    )
    assert trainer.config.method == "diffu-grpo"
    metrics = trainer.evaluate()
    assert {"eval_reward", "eval_reward_letters_of_word", "eval_reward_length"} <= set(metrics)
    want = metrics["eval_reward_letters_of_word"] - 0.5 * metrics["eval_reward_length"]
    assert metrics["eval_reward"] == pytest.approx(want, abs=1e-5)
    assert len(trainer.train().history) == 2


def test_config_names_map_to_the_run_config(tmp_path):
    args = tiny_args(tmp_path, learning_rate=1e-4, adam_beta2=0.95, run_overrides={"seed": 3})
    config = args.to_run_config()
    assert config.train.prompts_per_batch == 2 and config.train.num_generations == 2
    assert config.train.learning_rate == 1e-4
    assert (config.train.adam_beta1, config.train.adam_beta2) == (0.9, 0.95)
    assert config.dtm.steps_per_h == 2 and config.seed == 3 and config.train.report_to == ["none"]
    with pytest.raises(ConfigError, match="not a multiple of num_generations"):
        tiny_args(tmp_path, per_device_train_batch_size=3).to_run_config()
    with pytest.raises(ConfigError, match="block_length 4 does not divide max_completion_length 6"):
        tiny_args(tmp_path, max_completion_length=6).to_run_config()
    with pytest.raises(ConfigError, match=r"dtm\.hh: unknown field"):
        tiny_args(tmp_path, run_overrides={"dtm.hh": 1}).to_run_config()


# -- datasets -------------------------------------------------------------------------------------


def test_dataset_sources_and_formats(tmp_path):
    import datasets

    rows = word_rows()
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,word\n" + "".join(f"{r['prompt']},{r['word']}\n" for r in rows))
    parquet = tmp_path / "p.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    for source in (datasets.Dataset.from_list(rows), str(csv), str(parquet), rows):
        task = DatasetTask(train=source, rewards=letters_of_word)
        got = task.examples("train")
        assert [e.prompt for e in got] == [r["prompt"] for r in rows]
        assert [e.data["word"] for e in got] == WORDS
    chat = [
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
    ]
    (example,) = DatasetTask(train=chat, rewards=letters_of_word).examples("train")
    assert example.prompt == "be brief\n\nhi" and example.data["prompt"] == chat[0]["prompt"]


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([{"prompt": "a"}, {"text": "b"}], "row 1: no 'prompt' column (columns: ['text'])"),
        ([{"prompt": "a"}, {"prompt": 5}], "row 1: 'prompt' must be text or a non-empty list"),
        ([{"prompt": [{"role": "user"}]}], "row 0: message 0 of the prompt is not a"),
        (
            [{"prompt": [{"role": "assistant", "content": "x"}]}],
            "row 0: message 0 has role 'assistant'",
        ),
        ([{"prompt": ""}], "row 0: the prompt is empty"),
        ([], "has no rows"),
    ],
)
def test_bad_rows_name_the_row(rows, needle):
    with pytest.raises(DatasetError) as err:
        DatasetTask(train=rows, rewards=letters_of_word)
    assert needle in str(err.value)


def test_bad_files_and_datasets_are_clear(tmp_path, monkeypatch):
    import datasets

    with pytest.raises(DatasetError, match="dataset file not found"):
        DatasetTask(train=str(tmp_path / "none.jsonl"), rewards=letters_of_word)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl:2: not valid JSON"):
        DatasetTask(train=str(bad), rewards=letters_of_word)
    with pytest.raises(DatasetError, match="no 'prompt' column"):
        DatasetTask(train=datasets.Dataset.from_list([{"text": "a"}]), rewards=letters_of_word)
    split = datasets.DatasetDict({"train": datasets.Dataset.from_list(word_rows())})
    with pytest.raises(DatasetError, match="pass one split"):
        DatasetTask(train=split, rewards=letters_of_word)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="could not be loaded from the hub"):
        DatasetTask(train="someone/some-prompts", rewards=letters_of_word)


def test_a_prompt_the_models_tokenizer_cannot_encode_names_the_row(tmp_path):
    rows = [{"prompt": "S...G..#....#..."}, {"prompt": "hello"}]  # the maze model's alphabet
    with pytest.raises(DatasetError, match=r"rows:1: the model's tokenizer cannot encode"):
        DTMTrainer(
            model="shipped:maze",
            reward_funcs=letters_of_word,
            train_dataset=rows,
            args=tiny_args(
                tmp_path,
                max_completion_length=16,
                block_length=8,
                diffusion_steps=8,
                model_init_kwargs={},
            ),
        )


# -- negative rewards (METHOD.md section 5) -------------------------------------------------------


def signed_letters(prompts, completions, word, **columns):
    """letters_of_word shifted to both signs, as a reward model's scores are."""
    return [v - 0.5 for v in letters_of_word(prompts, completions, word)]


def test_negative_rewards_take_a_calibrated_baseline_and_resume_exactly(tmp_path):
    """A reward that declares no bound: b is the lowest reward of the base model's calibration
    sample, fixed before the first rollout, logged each stage, and part of the checkpoint (a
    killed run resumes to exactly the parameters of an uninterrupted one)."""
    full = DTMTrainer(
        reward_funcs=signed_letters, train_dataset=word_rows(), args=tiny_args(tmp_path / "f")
    )
    history = full.train().history
    b = history[0]["reward_baseline"]
    assert b < 0 and all(r["reward_baseline"] == b for r in history)
    assert all(0.0 <= r["below_baseline"] <= 1.0 for r in history)
    assert full.trainer.phase.extra["baseline"] == "calibrated"
    killed = DTMTrainer(
        reward_funcs=signed_letters, train_dataset=word_rows(), args=tiny_args(tmp_path / "k")
    )
    killed.trainer.train(max_updates=1)  # stopped inside the first stage, after a checkpoint
    resumed = DTMTrainer(
        reward_funcs=signed_letters, train_dataset=word_rows(), args=tiny_args(tmp_path / "k")
    )
    assert resumed.train(resume_from_checkpoint=True).history[-1]["reward_baseline"] == b
    pairs = zip(
        full.trainer.pair.student.parameters(),
        resumed.trainer.pair.student.parameters(),
        strict=True,
    )
    assert all(torch.equal(p, q) for p, q in pairs)
    # A declared bound replaces the calibration: b is that bound (in training units).
    declared = DTMTrainer(
        reward_funcs=signed_letters,
        train_dataset=word_rows(),
        args=tiny_args(tmp_path / "d", reward_lower_bound=-0.5, reward_scale=2.0),
    )
    assert declared.train().history[0]["reward_baseline"] == -1.0


# -- nothing lost on a bad reward -----------------------------------------------------------------


def test_a_reward_that_fails_mid_run_loses_nothing(tmp_path):
    state = {"calls": 0}

    def flaky(prompts, completions, word, **columns):
        state["calls"] += 1
        if state["calls"] == 6:  # after the first stage's checkpoint
            return [float("nan")] * len(completions)
        return letters_of_word(prompts, completions, word)

    out = tmp_path / "r"
    trainer = DTMTrainer(reward_funcs=flaky, train_dataset=word_rows(), args=tiny_args(out))
    with pytest.raises(RewardError, match=r"'flaky' returned nan, not a finite number, at row 0"):
        trainer.train()
    assert (out / "checkpoint" / "meta.json").is_file()
    with pytest.raises(FileExistsError, match="resume_from_checkpoint"):
        DTMTrainer(reward_funcs=flaky, train_dataset=word_rows(), args=tiny_args(out)).train()
    # The fixed reward resumes from the last checkpoint and finishes the run.
    resumed = DTMTrainer(
        reward_funcs=letters_of_word, train_dataset=word_rows(), args=tiny_args(out)
    ).train(resume_from_checkpoint=True)
    assert resumed.global_step == 4 and resumed.history[-1]["a_after"] == pytest.approx(4.0)


# -- the CLI --------------------------------------------------------------------------------------


REWARD_FILE = """
def letters(prompts, completions, word, **columns):
    pairs = zip(completions, word, strict=True)
    return [sum(ch in w for ch in c) / len(c) if c else 0.0 for c, w in pairs]

def broken(prompts, completions, **columns):
    raise RuntimeError("no score")
"""

TINY_SET = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "sampler.steps=4",
    "sampler.block_length=4",
    "task_options.response_length=4",
    "dtm.a_end=2",
    "dtm.steps_per_h=2",
    "train.num_generations=2",
    "train.prompts_per_batch=2",
    "train.buffer_prompts=2",
    "train.refresh_prompts=1",
    "train.report_to=none",
    "eval.examples=2",
    "eval.samples_per_example=1",
]


def _cli(args: list[str]) -> list[str]:
    return [args[0], *(a for s in TINY_SET for a in ("--set", s)), *args[1:], "--quiet"]


def test_cli_trains_on_a_dataset_with_a_reward_file(tmp_path, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", word_rows())
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--dataset", str(data)]
    argv += ["--reward", f"{tmp_path / 'rewards.py'}:letters", "--alphabet", "auto"]
    assert main(_cli(argv)) == 0
    assert (out / "final" / "model.safetensors").is_file()
    saved = (out / "config.yaml").read_text()
    assert "task: dataset" in saved and "rewards.py:letters" in saved
    # The saved config names the reward file, so --resume rebuilds the same run.
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0


@pytest.mark.parametrize(
    ("reward", "needle"),
    [
        ("rewards.py:nope", "has no 'nope'"),
        ("missing.py:letters", "no such file"),
        ("rewards.py:broken", "'broken' raised RuntimeError: no score"),
    ],
)
def test_cli_bad_rewards_are_one_line_exit_2(tmp_path, capsys, reward, needle):
    data = write_jsonl(tmp_path / "p.jsonl", word_rows())
    (tmp_path / "rewards.py").write_text(REWARD_FILE)
    argv = ["train", "--out", str(tmp_path / "run"), "--dataset", str(data)]
    argv += ["--reward", str(tmp_path / reward), "--alphabet", "auto"]
    assert main(_cli(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("tiltmatch train:")


def test_cli_dataset_flags_are_checked(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--dataset", "x.jsonl"]) == 2
    assert "needs at least one --reward" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r"), "--reward", "f.py:g"]) == 2
    assert "need --dataset" in capsys.readouterr().err


# -- tasks from outside the package ---------------------------------------------------------------


TASK_FILE = """
from tiltmatch.tasks.base import Example, Task

class Echo(Task):
    name = "echo"
    alphabet = "ab"
    response_length = 4

    def examples(self, split, n=None, seed=0):
        return [Example(prompt="ab", uid=f"{split}{i}") for i in range(n or 4)]

    def reward(self, response, example):
        return response.count("a") / 4
"""


def test_a_task_from_a_file_or_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(TASK_FILE)
    task = get_task(f"{tmp_path / 'my_tasks.py'}:Echo")
    assert task.name == "echo" and task.reward("aaab", task.examples("train")[0]) == 0.75
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(get_task("my_tasks:Echo")).__name__ == "Echo"
    with pytest.raises(UnknownTaskError, match="not a tiltmatch Task subclass"):
        get_task("json:dumps")
    with pytest.raises(UnknownTaskError, match="cannot import module 'nowhere_xyz'"):
        get_task("nowhere_xyz:Task")
    with pytest.raises(UnknownTaskError, match=r"unknown task 'mze'.*module:Class"):
        get_task("mze")
    trainer = DTMTrainer(task=f"{tmp_path / 'my_tasks.py'}:Echo", args=tiny_args(tmp_path / "r"))
    assert trainer.train().global_step == 4


# -- trackers -------------------------------------------------------------------------------------


TRACKER_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from test_api import tiny_args, word_rows, letters_of_word
from tiltmatch import DTMTrainer
args = tiny_args({out!r}, report_to={report_to!r})
DTMTrainer(reward_funcs=letters_of_word, train_dataset=word_rows(), args=args).train()
"""


@pytest.mark.slow
def test_report_to_tensorboard_wandb_and_trackio_offline(tmp_path):
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    out = tmp_path / "run"
    script = TRACKER_SCRIPT.format(
        tests=str(Path(__file__).parent), out=str(out), report_to="tensorboard,wandb,trackio"
    )
    env = {
        **__import__("os").environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "TRACKIO_DIR": str(tmp_path / "trackio"),
    }
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True)
    assert any((out / "tensorboard").iterdir())
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    db = sqlite3.connect(tmp_path / "trackio" / "tiltmatch.db")
    logged = [json.loads(m) for (m,) in db.execute("select metrics from metrics")]
    keys = set().union(*logged)
    assert {"update/loss", "stage/loss", "stage/eval_reward", "stage/ess"} <= keys


def test_report_to_none_writes_no_tracker_files(tmp_path):
    out = tmp_path / "r"
    DTMTrainer(reward_funcs=letters_of_word, train_dataset=word_rows(), args=tiny_args(out)).train()
    assert not (out / "tensorboard").exists() and (out / "stages.jsonl").is_file()
    with pytest.raises(ValueError, match="report_to"):
        tiny_args(out, report_to="mlflow").to_run_config()


def test_a_task_from_an_installed_packages_entry_point(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    import tiltmatch.tasks as tasks

    (tmp_path / "plugin_tasks.py").write_text(TASK_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [EntryPoint(name="echo", value="plugin_tasks:Echo", group=tasks.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        tasks, "entry_points", lambda group: found if group == tasks.ENTRY_POINT_GROUP else []
    )
    assert type(get_task("echo")).__name__ == "Echo"
    with pytest.raises(UnknownTaskError, match="known tasks: countdown, dataset, echo"):
        get_task("ech")
