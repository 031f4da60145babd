"""The trainer: stages and annealing bookkeeping, resume equals uninterrupted, reward errors."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from tiltmatch.config import DTMConfig, build_config
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.tasks.base import RewardError
from tiltmatch.tasks.maze.task import MazeTask
from tiltmatch.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tiltmatch.training.pair import CopiedPair
from tiltmatch.training.pretrain import char_codec_for
from tiltmatch.training.trainer import Trainer, stage_lr_lambda


def make_trainer(
    overrides: list[str],
    out: Path,
    task: MazeTask | None = None,
    dtm: DTMConfig | None = None,
) -> Trainer:
    """A tiny DTM trainer; ``dtm``: the objective's settings when not the config's own."""
    config = build_config(overrides=overrides)
    task = task or MazeTask()
    codec = char_codec_for(task)
    spec = TinyModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model = tiny_denoiser(codec.vocab_size, spec, seed=config.seed)
    student = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
    ema = config.dtm.ema_decay if config.dtm.teacher_update == "ema" else None
    pair = CopiedPair(student, ema_decay=ema)
    objective = DTMObjective(dtm or config.dtm, codec.mask_token_id)
    return Trainer(config, task, codec, pair, objective, out, quiet=True)


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.pair.student.state_dict().items()}


def test_stages_walk_the_annealing_path(tiny_overrides, tmp_path) -> None:
    trainer = make_trainer([*tiny_overrides, "dtm.h=1.5"], tmp_path)
    before = params(trainer)
    history = trainer.train()
    assert [r["h"] for r in history] == [1.5, 1.5, 1.0]  # last step clipped onto a_end = 4
    assert trainer.phase.a == pytest.approx(4.0)
    assert trainer.phase.updates == 12
    for key in (
        "a",
        "h",
        "ess",
        "reward_mean",
        "reward_std",
        "loss",
        "grad_norm",
        "clamp_rate",
        "eval_reward",
        "wall_seconds",
    ):
        assert all(math.isfinite(r[key]) for r in history), key
    # Rollouts: a full buffer per stage plus one refresh (every 2 updates, not at the end).
    assert history[-1]["rollouts"] == 3 * (4 * 2 + 2 * 2 * 1)
    after = params(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # The teacher was refreshed from the student at the last stage boundary.
    for k, v in trainer.pair.teacher.state_dict().items():
        assert torch.equal(v, after[k])
    assert (tmp_path / "config.yaml").is_file()
    assert (tmp_path / "stages.jsonl").read_text().count("\n") == 3
    assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("kill_after", [3, 5], ids=["mid-stage", "next-stage"])
@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["dtm.states=sar", "dtm.sar_block_length=4", "dtm.teacher_update=ema"],
        ["dtm.states=trajectory", "dtm.schedule=adaptive", "dtm.c=0", "dtm.baseline=mean"],
    ],
    ids=["random", "sar-ema", "trajectory-adaptive"],
)
def test_resume_equals_uninterrupted_run(tiny_overrides, tmp_path, extra, kill_after) -> None:
    overrides = [*tiny_overrides, *extra]
    full = make_trainer(overrides, tmp_path / "full")
    full.train()
    expected = params(full)

    killed = make_trainer(overrides, tmp_path / "killed")
    # Dies one update after a checkpoint (every 2 updates): mid-stage, or early in stage 2.
    killed.train(max_updates=kill_after)
    resumed = make_trainer(overrides, tmp_path / "killed")
    resumed.load()
    assert resumed.phase.updates == kill_after - 1
    resumed.train()
    got = params(resumed)
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
    assert [r["eval_reward"] for r in resumed.history] == [r["eval_reward"] for r in full.history]


@pytest.mark.parametrize(
    ("configured", "objective_states"), [("random", "trajectory"), ("trajectory", "random")]
)
def test_the_objective_not_the_config_decides_what_rollouts_record(
    tiny_overrides, tmp_path, configured, objective_states
) -> None:
    """The trainer records the sampler's visited states when the objective asks (DTM's
    trajectory states), whatever ``config.dtm`` says."""
    overrides = [*tiny_overrides, f"dtm.states={configured}"]
    dtm = build_config(overrides=[*tiny_overrides, f"dtm.states={objective_states}"]).dtm
    trainer = make_trainer(overrides, tmp_path, dtm=dtm)
    trainer.train(max_updates=1)  # trajectory states without recorded ones would raise
    assert trainer.buffer.data is not None
    assert (trainer.buffer.data.visited is not None) == (objective_states == "trajectory")


def test_checkpoint_is_atomic_and_missing_one_is_named(tmp_path) -> None:
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"m": {"w": torch.ones(2)}}, {"o": {"x": torch.zeros(1)}}, {"k": 1})
    save_checkpoint(path, {"m": {"w": torch.full((2,), 2.0)}}, {}, {"k": 2})
    tensors, _objects, meta = load_checkpoint(path)
    assert meta == {"k": 2, "sequence": 2} and torch.equal(tensors["m"]["w"], torch.full((2,), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path / "broken")


class NaNMaze(MazeTask):
    def reward(self, response, example):
        return float("nan")


class RaisingMaze(MazeTask):
    def reward(self, response, example):
        raise KeyError("no such cell")


@pytest.mark.parametrize(
    ("task", "message"),
    [(NaNMaze(), "returned nan"), (RaisingMaze(), "raised KeyError")],
)
def test_bad_reward_functions_give_clear_errors(tiny_overrides, tmp_path, task, message) -> None:
    trainer = make_trainer(tiny_overrides, tmp_path, task=task)
    with pytest.raises(RewardError, match=message) as info:
        trainer.train()
    assert "example" in str(info.value) and "maze" in str(info.value)


def test_stage_learning_rate_schedule() -> None:
    f = stage_lr_lambda(total=20, warmup=0.1, decay=0.2, final_ratio=0.25)
    values = [f(s) for s in range(20)]
    assert values[0] == pytest.approx(0.5) and values[1] == 1.0
    assert values[10] == 1.0
    assert values[-1] == pytest.approx(0.25)
    assert all(a >= b for a, b in itertools.pairwise(values[15:]))


def test_rng_state_carries_the_gpu_generator_where_there_is_one(monkeypatch) -> None:
    from tiltmatch.training.trainer import restore_rng_state, rng_state

    generator = torch.Generator().manual_seed(3)
    assert "cuda" not in rng_state(generator) or torch.cuda.is_available()
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu_state = torch.tensor([7, 8], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: gpu_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    state = rng_state(generator)
    expected = torch.rand(2, generator=generator)
    restore_rng_state(state, generator)
    assert torch.equal(torch.rand(2, generator=generator), expected)
    assert len(restored) == 1 and restored[0].tolist() == [7, 8]  # dropout's GPU stream too


def test_eval_sampler_evaluates_apart_from_the_rollouts(tiny_overrides, tmp_path) -> None:
    # The rollouts draw with an approximate sampler; held-out evaluation with eval.sampler
    # (here the exact one) must be exactly the evaluation of a run sampling exactly.
    sampler = ["sampler.remasking=low_confidence", "sampler.block_length=4", "sampler.steps=4"]
    exact = make_trainer([*tiny_overrides, *sampler], tmp_path / "exact")
    fast = make_trainer(
        [
            *tiny_overrides,
            *sampler,
            "sampler.mode=cached+parallel",
            'eval.sampler={"remasking": "low_confidence", "block_length": 4, "steps": 4}',
        ],
        tmp_path / "fast",
    )
    assert fast.worker.sampling.mode == "cached+parallel"
    assert fast.eval_worker.sampling.mode == "exact"
    # no eval.sampler: the rollouts' sampler (a worker of its own, scoring in the reward's units)
    assert exact.eval_worker.sampling == exact.worker.sampling

    def evaluated_texts(trainer: Trainer) -> list[str]:
        seen: list[str] = []
        metrics = trainer.task.metrics
        trainer.task.metrics = lambda texts, examples: (
            seen.extend(texts)
            or metrics(  # type: ignore[method-assign]
                texts, examples
            )
        )
        with torch.no_grad():
            trainer.evaluate()
        trainer.task.metrics = metrics  # type: ignore[method-assign]
        return seen

    reference = evaluated_texts(exact)
    assert evaluated_texts(fast) == reference  # same weights (same seed), same draws
    fast.eval_worker = fast.worker
    assert evaluated_texts(fast) != reference  # the approximate sampler draws otherwise
