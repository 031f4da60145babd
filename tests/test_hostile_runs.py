"""Hostile resumes and faults of a run (issue 8, cases 2, 3, 8-10): a resume under another
config, corrupt checkpoint pieces, a diverging run, a full or read-only disk, stray save
folders, a kill between the stage log and its checkpoint, prompts longer than the model."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hostile import folder_state, refusal, set_args
from safetensors.torch import load_file

from tiltmatch.cli import main
from tiltmatch.config import build_config
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.sampling.sampler import SamplingConfig, generate
from tiltmatch.training import checkpoint as ckpt
from tiltmatch.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tiltmatch.training.runner import build_trainer, run_training
from tiltmatch.training.trainer import Trainer

# --- a tiny interrupted run, made once ------------------------------------------------------


def _interrupted_run(folder: Path, overrides: list[str]) -> Path:
    """A run killed after 6 of its 8 updates: config.yaml, stages.jsonl (stage 0) and a
    checkpoint at update 6, no final model."""
    config = build_config(overrides=overrides)
    trainer, _, _ = build_trainer(config, folder, quiet=True)
    trainer.train(max_updates=6)  # checkpoints every 2 updates, stage 0 ends at update 4
    assert not (folder / "final").exists()
    return folder


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, list[str]]:
    from conftest import TINY_OVERRIDES

    overrides = list(TINY_OVERRIDES)
    return _interrupted_run(tmp_path_factory.mktemp("runs") / "run", overrides), overrides


@pytest.fixture
def run(interrupted, tmp_path) -> Path:
    """A fresh copy of the interrupted run for one test to break."""
    folder = tmp_path / "run"
    shutil.copytree(interrupted[0], folder)
    return folder


def _state(folder: Path) -> dict[str, str]:
    """The run's own files (TensorBoard event files are named by time and host: left out)."""
    return {k: v for k, v in folder_state(folder).items() if not k.startswith("tensorboard")}


# --- case 2: a resume under another config is refused, listing the fields ------------------


def test_resume_with_changed_fields_is_refused_listing_them(run, capsys) -> None:
    before = _state(run)
    argv = ["train", "--out", str(run), "--resume"]
    line = refusal([*argv, "--set", "dtm.h=5", "--set", "train.learning_rate=0.01"], capsys)
    assert line == (
        f"cannot resume {run}: the config differs from its checkpoint/meta.json in 2 field(s): "
        "dtm.h 2.0 -> 5.0, train.learning_rate 0.0003 -> 0.01; pass --allow-change FIELD for "
        "each change you mean, or start a new run"
    )
    assert _state(run) == before  # config.yaml not rewritten, nothing else touched
    # Naming one of the two is not enough.
    line = refusal(
        [*argv, "--set", "dtm.h=5", "--set", "train.learning_rate=0.01", "--allow-change", "dtm.h"],
        capsys,
    )
    assert "in 1 field(s): train.learning_rate 0.0003 -> 0.01;" in line
    assert _state(run) == before


def test_resume_with_a_named_change_goes_on(run, capsys) -> None:
    argv = ["train", "--out", str(run), "--resume", "--quiet"]
    argv += ["--set", "train.checkpoint_every=3", "--allow-change", "train.checkpoint_every"]
    assert main(argv) == 0
    capsys.readouterr()
    assert (run / "final" / "model.safetensors").is_file()
    assert build_config(run / "config.yaml").train.checkpoint_every == 3  # the change is recorded


def test_checkpoint_of_another_run_is_refused(interrupted, run, tmp_path, capsys) -> None:
    # Same shapes, another seed: its weights would load without complaint.
    other = _interrupted_run(tmp_path / "other", [*interrupted[1], "seed=1"])
    shutil.rmtree(run / "checkpoint")
    shutil.copytree(other / "checkpoint", run / "checkpoint")
    before = _state(run)
    line = refusal(["train", "--out", str(run), "--resume"], capsys)
    assert line.startswith(
        f"cannot resume {run}: the config differs from its checkpoint/meta.json in 1 field(s): "
        "seed 1 -> 0;"
    )
    assert _state(run) == before


def test_allow_change_without_resume_is_refused(tmp_path, capsys) -> None:
    line = refusal(["train", "--out", str(tmp_path), "--allow-change", "dtm.h"], capsys)
    assert line == "--allow-change applies to --resume only"


# --- case 3: a run folder is never overwritten without --overwrite -------------------------


def test_new_run_into_an_existing_run_is_refused(run, interrupted, capsys) -> None:
    before = _state(run)
    line = refusal(["train", "--out", str(run), *set_args(interrupted[1])], capsys)
    assert line == (
        f"{run} is not empty (holds checkpoint, config.yaml, stages.jsonl, tensorboard); pass "
        "--resume to continue it, --overwrite to replace it (the old folder is kept aside until "
        "the new run's first checkpoint), or choose another --out"
    )
    assert _state(run) == before


def test_a_folder_with_a_run_config_but_no_marker_is_not_overwritten(tmp_path, capsys) -> None:
    # A config.yaml without the pending marker: a folder no tiltmatch writer of this version
    # started (or a run of an earlier version killed before its first checkpoint).
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")
    line = refusal(["train", "--out", str(out)], capsys)
    assert line.startswith(f"{out} is not empty (holds config.yaml); pass --resume")


# --- case 9: corrupt checkpoint pieces name the file -----------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


CORRUPTIONS = {
    "truncated rng": (
        lambda c: _truncate(c / "rng.pt"),
        "checkpoint file {c}/rng.pt is unreadable",
    ),
    "garbage optimizer": (
        lambda c: (c / "optimizer.pt").write_bytes(os.urandom(300)),
        "checkpoint file {c}/optimizer.pt is unreadable",
    ),
    "wrong optimizer": (
        lambda c: torch.save({"state": 3}, c / "optimizer.pt"),
        "checkpoint {c} does not fit this run",
    ),
    "bad meta JSON": (
        lambda c: (c / "meta.json").write_text('{"phase": '),
        "checkpoint file {c}/meta.json is unreadable",
    ),
    "missing buffer": (lambda c: (c / "buffer.pt").unlink(), "checkpoint {c} lacks buffer.pt"),
    "missing teacher": (
        lambda c: (c / "teacher.safetensors").unlink(),
        "checkpoint {c} lacks teacher.safetensors",
    ),
    "truncated student": (
        lambda c: _truncate(c / "student.safetensors"),
        "checkpoint file {c}/student.safetensors is unreadable",
    ),
    "missing meta": (lambda c: (c / "meta.json").unlink(), "checkpoint {c} is incomplete"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_checkpoint_piece_is_named(corruption, run, capsys) -> None:
    corrupt, message = CORRUPTIONS[corruption]
    corrupt(run / "checkpoint")
    before = _state(run)
    line = refusal(["train", "--out", str(run), "--resume"], capsys)
    assert line.startswith(message.format(c=run / "checkpoint")), line
    assert _state(run) == before


# --- case 8: a diverging run stops before it writes anything ---------------------------------


def test_absurd_learning_rate_is_refused_by_name(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    line = refusal(["train", "--out", str(out), "--set", "train.learning_rate=1e30"], capsys)
    assert line == (
        "invalid configuration: train.learning_rate: Input should be less than or equal to 1 "
        "(got '1e30')"
    )
    assert not out.exists()


def _checkpoint_is_finite(out: Path) -> dict:
    tensors, _, meta = load_checkpoint(out / "checkpoint")
    for group in tensors.values():
        assert all(bool(torch.isfinite(t).all()) for t in group.values())
    return meta


def test_non_finite_weights_stop_the_run_before_anything_is_written(
    tmp_path, tiny_overrides, monkeypatch, capsys
) -> None:
    """An optimiser step that leaves a NaN weight (the third, update 2 counted from 0) stops
    the run before the checkpoint of update 4 and before stage 0's log line."""
    step = torch.optim.AdamW.step
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned)
    out = tmp_path / "run"
    line = refusal(["train", "--out", str(out), "--quiet", *set_args(tiny_overrides)], capsys)
    assert line == (
        "non-finite weights after update 2 of stage 0: stopped before they reached a "
        "checkpoint or a log line; lower train.learning_rate"
    )
    assert _checkpoint_is_finite(out)["phase"]["updates"] == 2
    assert not (out / "stages.jsonl").exists() and not (out / "final").exists()


def test_non_finite_loss_stops_the_run(tmp_path, tiny_overrides, monkeypatch, capsys) -> None:
    from tiltmatch.dtm.objective import DTMObjective

    loss = DTMObjective.loss

    def nan_at_stage_1(self, inputs):
        value, extras = loss(self, inputs)
        return (value * float("nan"), extras) if inputs.phase.stage == 1 else (value, extras)

    monkeypatch.setattr(DTMObjective, "loss", nan_at_stage_1)
    out = tmp_path / "run"
    line = refusal(["train", "--out", str(out), "--quiet", *set_args(tiny_overrides)], capsys)
    assert line == (
        "non-finite loss nan at stage 1, update 0: lower the learning rate or the tilt increment h"
    )
    assert _checkpoint_is_finite(out)["phase"]["stage"] == 1


# --- case 9: a full or read-only disk is one line, and the previous checkpoint survives --------


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(run, monkeypatch, capsys) -> None:
    before = folder_state(run / "checkpoint")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_file", full)
    line = refusal(["train", "--out", str(run), "--resume", "--quiet"], capsys)
    assert line.startswith(f"cannot write checkpoint {run / 'checkpoint'} (OSError: ")
    assert "No space left on device" in line and line.endswith("the previous checkpoint is intact")
    assert folder_state(run / "checkpoint") == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".checkpoint.")]


def test_unwritable_output_is_one_line(tmp_path, tiny_overrides, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    line = refusal(["train", "--out", str(blocker / "run"), *set_args(tiny_overrides)], capsys)
    assert line.startswith("Not a directory: "), line
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_folder_is_one_line(run, capsys) -> None:
    before = _state(run)
    os.chmod(run, 0o555)
    try:
        line = refusal(["train", "--out", str(run), "--resume", "--quiet"], capsys)
    finally:
        os.chmod(run, 0o755)
    assert "Permission denied" in line
    assert _state(run) == before


def test_permission_denied_while_writing_is_one_line(run, monkeypatch, capsys) -> None:
    # As root (CI containers) a chmod does not stop writes: refuse the write itself. A resume
    # writes config.yaml only after its first checkpoint, so the checkpoint's write fails first.
    before = _state(run)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(run / "meta.json"))

    monkeypatch.setattr(Path, "write_text", denied)
    line = refusal(["train", "--out", str(run), "--resume", "--quiet"], capsys)
    assert line.startswith(f"cannot write checkpoint {run / 'checkpoint'} (PermissionError: ")
    assert "Permission denied" in line and line.endswith("the previous checkpoint is intact")
    after = _state(run)
    assert after["config.yaml"] == before["config.yaml"]
    assert {k: v for k, v in after.items() if k.startswith("checkpoint")} == {
        k: v for k, v in before.items() if k.startswith("checkpoint")
    }


# --- case 10: stray save folders, the newest complete one, no stage logged twice -----------


def _save(path: Path, value: float) -> None:
    save_checkpoint(path, {"m": {"w": torch.full((2,), value)}}, {}, {"value": value})


def test_stray_save_folders_are_removed_after_a_good_save(tmp_path) -> None:
    path = tmp_path / "checkpoint"
    _save(path, 1.0)
    for stray in (".checkpoint.tmp-deadbeef", ".checkpoint.old-cafebabe"):
        (tmp_path / stray).mkdir()
        (tmp_path / stray / "student.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "unrelated").mkdir()
    _save(path, 2.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "unrelated"]


def test_missing_checkpoint_recovers_the_newest_complete_sibling(tmp_path) -> None:
    path = tmp_path / "checkpoint"
    for value in (1.0, 2.0, 3.0):
        _save(path, value)
    assert load_checkpoint(path)[2]["sequence"] == 3
    # A crash between the two renames, after three earlier crashes: the names sort against
    # the order they were written in, and the newest by mtime is incomplete.
    folders = {}
    for name, value in (("old-ffffffff", 1.0), ("old-00000000", 3.0), ("old-88888888", 2.0)):
        src = tmp_path / f"tmp{value}"
        _save(src, value)
        meta = json.loads((src / "meta.json").read_text())
        meta["sequence"] = int(value)
        (src / "meta.json").write_text(json.dumps(meta))
        folders[name] = src
    shutil.rmtree(path)
    for name, src in folders.items():
        os.replace(src, tmp_path / f".checkpoint.{name}")
    (tmp_path / ".checkpoint.tmp-99999999").mkdir()  # a killed save: no meta.json
    (tmp_path / ".checkpoint.tmp-99999999" / "m.safetensors").write_bytes(b"partial")
    tensors, _, meta = load_checkpoint(path)
    assert meta["value"] == 3.0 and torch.equal(tensors["m"]["w"], torch.full((2,), 3.0))
    _save(path, 4.0)  # the next save continues the sequence and clears the strays
    assert load_checkpoint(path)[2]["sequence"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_kill_between_stage_log_and_save_logs_the_stage_once(tmp_path, tiny_overrides, capsys):
    out = tmp_path / "run"
    config = build_config(overrides=tiny_overrides)
    original = Trainer.save

    def killed_at_stage_end(self):
        if self.phase.stage == 1 and self.phase.step == 0:  # stage 0 just logged
            raise KeyboardInterrupt  # stands for SIGKILL: nothing after this line runs
        return original(self)

    Trainer.save = killed_at_stage_end  # type: ignore[method-assign]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(config, out, quiet=True)
    finally:
        Trainer.save = original  # type: ignore[method-assign]
    stages = [json.loads(line)["stage"] for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages == [0]  # logged, but the checkpoint still holds update 2 of stage 0
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    capsys.readouterr()
    stages = [json.loads(line)["stage"] for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages == [0, 1]


def test_prompt_longer_than_the_model_positions_is_refused() -> None:
    codec = CharTokenizer("abc")
    spec = TinyModelSpec(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    spec = TinyModelSpec(**{**spec.__dict__, "max_positions": 24})
    denoiser = MaskedDenoiser(
        tiny_denoiser(codec.vocab_size, spec), codec.mask_token_id, codec.pad_token_id
    )
    config = SamplingConfig(steps=8, block_length=8)
    generator = torch.Generator().manual_seed(0)
    generate(denoiser, [[3] * 16], 8, config, generator)  # 16 + 8 = 24 positions: fits
    with pytest.raises(ValueError, match=r"a prompt of 17 tokens plus a 8-token response needs 25"):
        generate(denoiser, [[3] * 4, [3] * 17], 8, config, generator)


def test_checkpoint_loader_reads_weights_only(tmp_path) -> None:
    """A .pt piece holding a pickled object of another type is refused, never executed."""
    path = tmp_path / "checkpoint"
    _save(path, 1.0)
    torch.save({"x": Path("/etc/passwd")}, path / "evil.pt")  # not a weights-only type
    with pytest.raises(CheckpointError, match=r"evil\.pt is unreadable"):
        load_checkpoint(path)
    assert load_file(str(path / "m.safetensors"))["w"].tolist() == [1.0, 1.0]
