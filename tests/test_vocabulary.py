"""One config vocabulary (issue 22, item 3): the API's arguments are the run config's field
names (TRL's where TRL has the knob), earlier names still read for one release, a misspelt
name answered with the nearest one, every field listed by ``tiltmatch config --list``."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from test_api import letters_of_word, tiny_args, word_rows

import tiltmatch
from tiltmatch import DTMArguments
from tiltmatch.api import API_PATHS, OTHER_PATHS
from tiltmatch.cli import main
from tiltmatch.config import ConfigError, build_config
from tiltmatch.training.config import config_fields
from tiltmatch.training.runlog import RunLog
from tiltmatch.training.runner import _current_fields


def test_every_argument_is_the_config_field_of_its_name() -> None:
    paths = {path for path, _, _ in config_fields()}
    for name, path in API_PATHS.items():
        assert path in paths or path.startswith("task_options."), path
        leaf = path.rpartition(".")[2]
        # the same name, but for the eval section's prefix and the two documented exceptions
        assert name in (leaf, f"eval_{leaf}") or name in OTHER_PATHS, name
    assert set(OTHER_PATHS) - {f"eval_{p.partition('.')[2]}" for p in OTHER_PATHS.values()} == {
        "diffusion_steps",
        "max_completion_length",
    }


def test_arguments_reach_their_fields(tmp_path: Path) -> None:
    args = tiny_args(
        tmp_path,
        warmup_ratio=0.2,
        save_steps=7,
        logging_steps=3,
        adam_beta1=0.8,
        train_examples=9,
        eval_examples=3,
        eval_samples_per_example=2,
        ema_decay=0.5,
        teacher_update="ema",
    )
    config = args.to_run_config()
    assert (config.train.warmup_ratio, config.train.save_steps) == (0.2, 7)
    assert (config.train.logging_steps, config.train.adam_beta1) == (3, 0.8)
    assert (config.train.train_examples, config.eval.examples) == (9, 3)
    assert (config.eval.samples_per_example, config.dtm.ema_decay) == (2, 0.5)
    # per_device_train_batch_size: completions per micro-batch, in the API and the YAML alike
    assert config.train.per_device_train_batch_size == 4 and config.train.prompts_per_batch == 2
    same = build_config(
        overrides=["train.num_generations=2", "train.per_device_train_batch_size=4"]
    )
    assert same.train.prompts_per_batch == 2


def test_earlier_names_are_read_for_one_release(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"train\.warmup_fraction is deprecated"):
        config = build_config(overrides=["train.warmup_fraction=0.2"])
    with pytest.warns(DeprecationWarning, match=r"train\.checkpoint_every is deprecated"):
        config = build_config(overrides=["train.warmup_ratio=0.2", "train.checkpoint_every=5"])
    assert (config.train.warmup_ratio, config.train.save_steps) == (0.2, 5)
    assert config.train.warmup_fraction == 0.2 and config.train.checkpoint_every == 5
    with pytest.warns(DeprecationWarning):
        betas = build_config(overrides=["train.adam_betas=[0.8, 0.95]"]).train
    assert (betas.adam_beta1, betas.adam_beta2, betas.adam_betas) == (0.8, 0.95, (0.8, 0.95))
    # both names in one file is refused; an override of either name replaces the file's value
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  warmup_fraction: 0.2\n  warmup_ratio: 0.1\n")
    with pytest.raises(ConfigError, match=r"earlier name of train\.warmup_ratio: set only one"):
        build_config(both)
    old = tmp_path / "old.yaml"
    old.write_text("train:\n  checkpoint_every: 100\n  adam_betas: [0.8, 0.95]\n")
    with pytest.warns(DeprecationWarning):
        assert build_config(old, ["train.save_steps=7"]).train.save_steps == 7
        assert build_config(old, ["train.checkpoint_every=3"]).train.save_steps == 3
        assert build_config(old, ["train.adam_beta1=0.5"]).train.adam_betas == (0.5, 0.95)
    with pytest.warns(DeprecationWarning, match="eval_prompts is deprecated: use eval_examples"):
        args = DTMArguments(eval_prompts=3)
    assert args.eval_examples == 3 and args.eval_prompts is None
    with pytest.warns(DeprecationWarning, match="use tiltmatch.DTMArguments"):
        assert tiltmatch.DTMConfig is DTMArguments
    # a run checkpointed under the earlier names resumes without a spurious difference
    stored = build_config().model_dump(mode="json")
    train = stored["train"]
    train["checkpoint_every"] = train.pop("save_steps")
    train["adam_betas"] = [train.pop("adam_beta1"), train.pop("adam_beta2")]
    assert _current_fields(stored) == build_config().model_dump(mode="json")


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("dtm.hh=1", "dtm.hh: unknown field (did you mean dtm.h?)"),
        ("train.learnig_rate=1e-4", "(did you mean train.learning_rate?)"),
        ("train.max_steps=100", "a run's length is its annealing path"),
        ("sampler.diffusion_steps=8", "the sampler's steps are sampler.steps"),
    ],
)
def test_a_misspelt_key_names_the_nearest_field(override, hint, tmp_path, capsys) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(overrides=[override])
    assert hint in str(caught.value)
    assert main(["train", "--out", str(tmp_path / "r"), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and hint in err


def test_a_misspelt_argument_names_the_nearest_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown argument 'learnig_rate' \(did you mean"):
        DTMArguments(learnig_rate=1e-4)
    with pytest.raises(ConfigError, match=r"'max_steps' \(a run's length is its annealing path"):
        DTMArguments(max_steps=10)


def test_logging_steps_thins_the_per_update_records(tmp_path: Path) -> None:
    log = RunLog(tmp_path, report_to="none", config={"train": {"logging_steps": 3}})
    written: list[int] = []
    log.writer = type("Writer", (), {"add_scalar": lambda _s, _k, _v, step: written.append(step)})()
    for step in range(1, 8):
        log.scalars("update", {"loss": 1.0}, step)
    log.scalars("stage", {"loss": 1.0}, 8)  # stage records: always
    assert written == [3, 6, 8]


def test_logging_steps_in_a_run(tmp_path: Path) -> None:
    from tiltmatch import DTMTrainer

    args = tiny_args(tmp_path / "r", logging_steps=2, report_to="tensorboard")
    trainer = DTMTrainer(reward_funcs=letters_of_word, train_dataset=word_rows(), args=args)
    assert trainer.config.train.logging_steps == 2
    trainer.train()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("update/loss")]
    assert steps == [2, 4]  # 4 updates, every second one logged


def test_config_list_shows_every_field_with_its_api_name(capsys) -> None:
    assert main(["config", "--list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert {path for path, _, _ in config_fields()} <= set(rows)
    assert "warmup_ratio" in rows["train.warmup_ratio"].split()
    assert "earlier name: train.warmup_fraction" in rows["train.warmup_ratio"]
    assert "diffusion_steps" in rows["sampler.steps"].split()
    assert "eval_samples_per_example" in rows["eval.samples_per_example"].split()
    assert main(["config", "--set", "dtm.h=3", "--set", "train.warmup_ratio=0.2"]) == 0
    resolved = capsys.readouterr().out
    assert "  h: 3.0\n" in resolved and "  warmup_ratio: 0.2\n" in resolved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["config", "--list", "--set", "dtm.h=3"]) == 2
