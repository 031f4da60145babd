"""Validate before you destroy (issue 24): every writer checks everything before it touches its
destination, refuses a non-empty folder (or a link) it did not make unless told to replace it,
never writes over its own source, and with ``--overwrite`` keeps the old folder aside until the
new one has its first checkpoint or result, putting it back when the new one fails first.

Every refusal is checked with folder hashes (``hostile.folder_state``) of the whole test folder,
so a sibling left aside would show as well as a changed file."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_OVERRIDES
from hostile import folder_state, refusal, set_args
from llada_fixture import write_tiny_llada
from test_api import tiny_args, word_rows, write_jsonl

from tiltmatch import DTMTrainer
from tiltmatch.cli import main
from tiltmatch.destination import PENDING, Destination, DestinationError
from tiltmatch.models.loading import shipped_model_dir
from tiltmatch.tasks.base import RewardError

TINY = set_args(TINY_OVERRIDES)
#: the dataset run of the CLI at a toy size (2 prompts x 2 completions of 4 tokens, 4 updates)
DATASET_RUN = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=32",
    "task_options.response_length=4",
    "sampler.steps=4",
    "sampler.block_length=4",
    "dtm.h=2",
    "dtm.a_end=4",
    "dtm.steps_per_h=2",
    "train.num_generations=2",
    "train.prompts_per_batch=2",
    "train.buffer_prompts=2",
    "train.refresh_prompts=1",
    "train.refresh_every=1",
    "train.save_steps=1",
    "train.report_to=none",
    "eval.examples=2",
    "eval.samples_per_example=1",
]

REWARDS = """
def good(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def bad(prompts, completions, **columns):
    raise RuntimeError("no score")
"""


@pytest.fixture
def old(tmp_path) -> Path:
    """A folder somebody cares about: the destination every test aims at."""
    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    (folder / "sub" / "data.bin").write_bytes(os.urandom(64))
    return folder


def _dataset_files(tmp_path: Path) -> tuple[Path, Path]:
    data = write_jsonl(tmp_path / "prompts.jsonl", word_rows())
    rewards = tmp_path / "rewards.py"
    rewards.write_text(REWARDS)
    return data, rewards


def _dataset_train(out: Path, data: Path, rewards: Path, reward: str) -> list[str]:
    argv = ["train", "--out", str(out), "--dataset", str(data), "--alphabet", "auto", "--quiet"]
    return [*argv, "--reward", f"{rewards}:{reward}", *set_args(DATASET_RUN)]


def _llada(tmp_path: Path) -> Path:
    return write_tiny_llada(tmp_path / "src", single_file=True).folder


# --- the destroy-first class: each entry point, without and with --overwrite -------------------


def _invalid(entry: str, out: Path, tmp_path: Path) -> list[str]:
    """An invocation of ``entry`` into ``out`` that fails validation (a misspelt key, a
    negative or absurd size, a missing source)."""
    o = str(out)
    return {
        "train": ["train", "--out", o, *TINY, "--set", "dtm.hh=1"],
        "train-size": ["train", "--out", o, *TINY, "--set", "train.num_generations=1000000000"],
        "pretrain": ["pretrain", "--out", o, "--intermediate-size", "-5"],
        "pretrain-size": ["pretrain", "--out", o, "--batch-size", "1000000000000"],
        "demo": ["demo", "--tiny", "--out", o, "--set", "dtm.hh=1"],
        "eval": ["eval", "--model", "shipped:maze", "--task", "maze", "--out", o, "--samples", "0"],
        "eval-size": [
            *["eval", "--model", "shipped:maze", "--task", "maze", "--out", o],
            *["--limit", "2", "--samples", "1000000000000"],
        ],
        "bench": ["bench", "--out", o, "--seeds", "0"],
        "convert-llada": ["convert-llada", str(tmp_path / "missing"), o, "--dtype", "float32"],
    }[entry]


ENTRIES = [
    "train",
    "train-size",
    "pretrain",
    "pretrain-size",
    "demo",
    "eval",
    "eval-size",
    "bench",
    "convert-llada",
]


@pytest.mark.parametrize("entry", ENTRIES)
def test_overwrite_of_a_failing_command_leaves_the_destination_untouched(
    entry, old, tmp_path, capsys
) -> None:
    before = folder_state(tmp_path)
    argv = _invalid(entry, old, tmp_path)
    refusal([*argv, "--overwrite"], capsys)
    assert folder_state(tmp_path) == before  # nothing deleted, nothing moved aside


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "{out}", *TINY],
        ["pretrain", "--out", "{out}", "--steps", "1"],
        ["demo", "--tiny", "--out", "{out}"],
        ["eval", "--model", "shipped:maze", "--task", "maze", "--limit", "1", "--out", "{out}"],
        ["bench", "--size", "micro", "--out", "{out}"],
    ],
    ids=lambda a: a[0],
)
def test_a_folder_the_writer_did_not_make_is_refused(argv, old, tmp_path, capsys) -> None:
    before = folder_state(tmp_path)
    line = refusal([a.replace("{out}", str(old)) for a in argv], capsys)
    assert line.startswith(f"{old} is not empty (holds notes.txt, sub); pass ")
    assert "--overwrite" in line
    assert folder_state(tmp_path) == before


def test_convert_llada_refuses_a_folder_it_did_not_make(old, tmp_path, capsys) -> None:
    src = _llada(tmp_path)
    before = folder_state(tmp_path)
    line = refusal(["convert-llada", str(src), str(old), "--dtype", "float32"], capsys)
    assert line.startswith(f"{old} is not empty (holds notes.txt, sub); pass --overwrite")
    assert folder_state(tmp_path) == before


def test_eval_refuses_a_folder_holding_someone_elses_outputs(tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "outputs.jsonl").write_text('{"mine": 1}\n')  # no metrics.json beside it
    before = folder_state(tmp_path)
    argv = ["eval", "--model", "shipped:maze", "--task", "maze", "--limit", "1", "--out", str(out)]
    assert refusal(argv, capsys).startswith(f"{out} is not empty (holds outputs.jsonl)")
    assert folder_state(tmp_path) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--out", "{out}", *TINY],
        ["pretrain", "--out", "{out}", "--steps", "1"],
        ["demo", "--tiny", "--out", "{out}"],
        ["eval", "--model", "shipped:maze", "--task", "maze", "--limit", "1", "--out", "{out}"],
        ["bench", "--size", "micro", "--out", "{out}"],
        ["convert-llada", "{src}", "{out}", "--dtype", "float32"],
    ],
    ids=lambda a: a[0],
)
def test_a_symbolic_link_is_refused(argv, old, tmp_path, capsys) -> None:
    link = tmp_path / "link"
    link.symlink_to(old)
    src = _llada(tmp_path) if argv[0] == "convert-llada" else None
    before = folder_state(old)
    argv = [a.replace("{out}", str(link)).replace("{src}", str(src)) for a in argv]
    line = refusal(argv, capsys)
    assert line.startswith(f"{link} is a symbolic link (to {old}); pass ")
    assert "--overwrite to replace it" in line
    assert folder_state(old) == before and link.is_symlink()


# --- a source is never its own destination --------------------------------------------------


def test_convert_llada_never_writes_over_its_source(tmp_path, capsys) -> None:
    src = _llada(tmp_path)
    before = folder_state(tmp_path)
    line = refusal(["convert-llada", str(src), str(src), "--overwrite"], capsys)
    assert line == (
        f"{src} is the source {src}: a command never writes over what it reads; choose "
        "another destination"
    )
    assert folder_state(tmp_path) == before


def test_eval_never_writes_over_the_model_it_reads(tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(shipped_model_dir("maze"), model)
    before = folder_state(tmp_path)
    argv = ["eval", "--model", str(model), "--task", "maze", "--out", str(model), "--overwrite"]
    assert refusal(argv, capsys).startswith(f"{model} is the source {model}")
    argv = ["eval", "--model", str(model), "--task", "maze", "--out", str(tmp_path), "--overwrite"]
    assert refusal(argv, capsys).startswith(f"{tmp_path} holds the source {model}")
    assert folder_state(tmp_path) == before


def test_train_never_replaces_the_folder_of_its_base_model(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(shipped_model_dir("maze"), run / "final")
    before = folder_state(tmp_path)
    argv = ["train", "--out", str(run), *TINY, "--set", f"model.base={run / 'final'}"]
    assert refusal([*argv, "--overwrite"], capsys).startswith(
        f"{run} holds the source {run / 'final'}"
    )
    assert folder_state(tmp_path) == before


# --- --overwrite keeps the old folder until the new one is safe ------------------------------


def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_first(
    old, tmp_path, capsys
) -> None:
    data, rewards = _dataset_files(tmp_path)
    before = folder_state(tmp_path)
    line = refusal([*_dataset_train(old, data, rewards, "bad"), "--overwrite"], capsys)
    assert line.startswith("reward function 'bad' raised RuntimeError: no score")
    assert folder_state(tmp_path) == before  # the old folder is back, whole, and nothing else


def test_overwrite_replaces_the_old_run_once_the_new_one_has_a_checkpoint(
    old, tmp_path, capsys
) -> None:
    data, rewards = _dataset_files(tmp_path)
    assert main([*_dataset_train(old, data, rewards, "good"), "--overwrite"]) == 0
    capsys.readouterr()
    assert not (old / "notes.txt").exists() and (old / "final" / "model.safetensors").is_file()
    assert not (old / PENDING).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "prompts.jsonl", "rewards.py"]


def test_a_killed_overwrite_leaves_the_old_folder_aside_and_says_where(
    old, tmp_path, capsys
) -> None:
    aside = tmp_path / ".out.old-999999999"  # the pid of a process that is gone
    os.replace(old, aside)
    old.mkdir()
    (old / PENDING).write_text("999999999")
    before = folder_state(tmp_path)
    line = refusal(["train", "--out", str(old), *TINY], capsys)
    assert line == (
        f"{aside} holds what --overwrite moved aside from {old} before that command was "
        f"stopped; put it back (mv {aside} {old}) or delete it"
    )
    assert folder_state(tmp_path) == before


# --- a run that stopped before its first checkpoint --------------------------------------------


def test_a_run_that_failed_before_its_first_checkpoint_leaves_nothing(tmp_path, capsys) -> None:
    data, rewards = _dataset_files(tmp_path)
    out = tmp_path / "run"
    refusal(_dataset_train(out, data, rewards, "bad"), capsys)
    assert not out.exists()
    line = refusal(["train", "--out", str(out), "--resume"], capsys)
    assert line == f"cannot resume: no checkpoint in {out}"
    assert main(_dataset_train(out, data, rewards, "good")) == 0  # no --overwrite needed
    capsys.readouterr()


def test_a_run_killed_before_its_first_checkpoint_is_rerun_without_overwrite(
    tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "config.yaml").write_text("seed: 0\n")
    (out / PENDING).write_text("999999999")  # its writer is gone: nobody holds the lock
    before = folder_state(tmp_path)
    line = refusal(["train", "--out", str(out), "--resume"], capsys)
    assert line == (
        f"nothing to resume in {out}: its run stopped before its first checkpoint; start it "
        "again without --resume (the folder is reused)"
    )
    assert folder_state(tmp_path) == before
    data, rewards = _dataset_files(tmp_path)
    assert main(_dataset_train(out, data, rewards, "good")) == 0
    capsys.readouterr()
    assert (out / "final" / "model.safetensors").is_file() and not (out / PENDING).exists()


def test_a_folder_another_process_is_writing_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with (out / PENDING).open("w") as marker:
        fcntl.flock(marker.fileno(), fcntl.LOCK_EX)
        marker.write(str(os.getpid()))
        marker.flush()
        before = folder_state(tmp_path)
        for overwrite in ([], ["--overwrite"]):
            line = refusal(["train", "--out", str(out), *TINY, *overwrite], capsys)
            assert line == (
                f"{out} is being written by another tiltmatch process (pid {os.getpid()}); "
                "wait for it or choose another destination"
            )
        assert folder_state(tmp_path) == before


def _interrupted_dataset_run(out: Path, data: Path, rewards: Path) -> None:
    from tiltmatch.config import build_config
    from tiltmatch.training.runner import build_trainer

    options = {"train": str(data), "rewards": [f"{rewards}:good"], "alphabet": "auto"}
    config = build_config(overrides=DATASET_RUN, base={"task": "dataset", "task_options": options})
    trainer, _, _ = build_trainer(config, out, quiet=True)
    trainer.train(max_updates=2)


def test_a_resume_that_fails_before_its_first_checkpoint_keeps_config_yaml(
    tmp_path, capsys
) -> None:
    data, rewards = _dataset_files(tmp_path)
    out = tmp_path / "run"
    _interrupted_dataset_run(out, data, rewards)
    before = folder_state(out)
    argv = ["train", "--out", str(out), "--resume", "--quiet", "--allow-change", "task_options"]
    argv += ["--set", f"task_options.rewards=[{rewards}:bad]"]
    assert refusal(argv, capsys).startswith("reward function 'bad' raised RuntimeError")
    after = folder_state(out)
    assert after["config.yaml"] == before["config.yaml"]  # still the config it was trained under
    checkpoint = {k: v for k, v in before.items() if k.startswith("checkpoint")}
    assert {k: v for k, v in after.items() if k.startswith("checkpoint")} == checkpoint


# --- the benchmark continues its own folder -----------------------------------------------------


def test_bench_continues_its_own_folder_and_no_other(tmp_path) -> None:
    own = Destination(tmp_path / "bench", "benchmark", reuse_marker=".tiltmatch-bench")
    with own as folder:
        (folder / "runs").mkdir()
        (folder / "runs" / "result.json").write_text("{}")
    assert (tmp_path / "bench" / ".tiltmatch-bench").is_file()
    again = Destination(tmp_path / "bench", "benchmark", reuse_marker=".tiltmatch-bench")
    again.check()  # its own cache of runs: continued without --overwrite
    with again:
        pass
    assert (tmp_path / "bench" / "runs" / "result.json").is_file()
    (tmp_path / "bench" / ".tiltmatch-bench").unlink()
    with pytest.raises(DestinationError, match="is not empty"):
        Destination(tmp_path / "bench", "benchmark", reuse_marker=".tiltmatch-bench").check()


# --- the Python API ---------------------------------------------------------------------------


def test_api_train_refuses_a_folder_it_did_not_make(old, tmp_path) -> None:
    trainer = DTMTrainer(
        reward_funcs=lambda prompts, completions, **c: [1.0] * len(completions),
        train_dataset=word_rows(),
        args=tiny_args(old),
    )
    before = folder_state(tmp_path)
    with pytest.raises(DestinationError, match="set overwrite_output_dir=True to replace it"):
        trainer.train()
    assert folder_state(tmp_path) == before


def test_api_overwrite_puts_the_old_folder_back_when_the_run_fails_first(old, tmp_path) -> None:
    def broken(prompts, completions, **columns):
        raise RuntimeError("no score")

    trainer = DTMTrainer(
        reward_funcs=broken,
        train_dataset=word_rows(),
        args=tiny_args(old, overwrite_output_dir=True),
    )
    before = folder_state(tmp_path)
    with pytest.raises(RewardError, match="'broken' raised RuntimeError"):
        trainer.train()
    assert folder_state(tmp_path) == before


def test_api_save_model_refuses_a_folder_it_did_not_make(old, tmp_path) -> None:
    trainer = DTMTrainer(
        reward_funcs=lambda prompts, completions, **c: [1.0] * len(completions),
        train_dataset=word_rows(),
        args=tiny_args(tmp_path / "run"),
    )
    before = folder_state(tmp_path)
    with pytest.raises(DestinationError, match="pass overwrite=True to replace it"):
        trainer.save_model(old)
    assert folder_state(tmp_path) == before
    folder = trainer.save_model(old, overwrite=True)
    assert (folder / "model.safetensors").is_file() and not (folder / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- the helper itself ------------------------------------------------------------------------


def test_destination_protocol_in_place_and_staged(tmp_path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "old.txt").write_text("old")
    for staged in (False, True):
        dest = Destination(target, "thing", overwrite=True, staged=staged)
        folder = dest.claim()
        (folder / "new.txt").write_text("new")
        assert (target / "old.txt").exists() == staged  # staged: untouched until the commit
        dest.abandon()
        assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    dest = Destination(target, "thing", overwrite=True, staged=True)
    with dest as folder:
        (folder / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_checkpoint_callbacks_see_every_save(tmp_path) -> None:
    from tiltmatch.config import build_config
    from tiltmatch.training.callbacks import TrainerCallback
    from tiltmatch.training.runner import build_trainer

    trainer, _, _ = build_trainer(build_config(overrides=TINY_OVERRIDES), tmp_path, quiet=True)
    seen: list[str] = []

    class SeeSaves(TrainerCallback):
        def on_save(self, trainer, path) -> None:
            seen.append(path.name)

    trainer.add_callback(SeeSaves())
    trainer.train(max_updates=4)
    assert seen == ["checkpoint", "checkpoint"]  # updates 2 and 4 (checkpoint_every=2)
    assert json.loads((tmp_path / "checkpoint" / "meta.json").read_text())["phase"]["updates"] == 4
    assert torch.isfinite(next(trainer.pair.student.parameters())).all()
