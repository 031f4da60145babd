"""The trainer's hook (tiltmatch.training.callbacks): every phase seen in order, training alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_OVERRIDES

from tiltmatch.config import build_config
from tiltmatch.training.callbacks import PhaseTimer, ProgressHeartbeat, TrainerCallback
from tiltmatch.training.plan import StageProgress
from tiltmatch.training.runner import build_trainer
from tiltmatch.training.trainer import Trainer


class Recorder(TrainerCallback):
    """Writes down every hook call; adds one key to each stage record."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_rollouts_begin(self, trainer: Trainer, examples: Any) -> None:
        self.events.append(("rollouts_begin", len(examples)))

    def on_rollouts_end(self, trainer: Trainer, examples: Any, batch: Any) -> None:
        rows = None if batch is None else batch.responses.shape[0]
        self.events.append(("rollouts_end", len(examples), rows))

    def on_update_begin(self, trainer: Trainer) -> None:
        self.events.append(("update_begin", trainer.phase.updates))

    def on_update_end(self, trainer: Trainer, metrics: Any) -> None:
        self.events.append(("update_end", trainer.phase.updates, metrics))

    def on_evaluate_begin(self, trainer: Trainer) -> None:
        self.events.append(("evaluate_begin",))

    def on_evaluate(self, trainer: Trainer, metrics: Any) -> None:
        self.events.append(("evaluate", metrics))

    def on_stage_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record["seen_by_callback"] = record["stage"]
        self.events.append(("stage_end", record["stage"]))

    def on_save(self, trainer: Trainer, path: Path) -> None:
        self.events.append(("save", trainer.phase.updates))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]


def test_callbacks_see_every_phase_and_leave_training_alone(tmp_path: Path) -> None:
    config = build_config(overrides=TINY_OVERRIDES)
    plain, _, _ = build_trainer(config, tmp_path / "plain", quiet=True)
    plain.train()
    trainer, _, _ = build_trainer(config, tmp_path / "hooked", quiet=True)
    recorder, timer = trainer.add_callback(Recorder()), trainer.add_callback(PhaseTimer())
    history = trainer.train()
    # Observers only: the same weights, bit for bit, and the same stage figures.
    for name, tensor in plain.pair.student.state_dict().items():
        assert torch.equal(tensor, trainer.pair.student.state_dict()[name]), name
    drop = {"wall_seconds", "stage_seconds", "seen_by_callback"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in history] == [
        {k: v for k, v in r.items() if k not in drop} for r in plain.history
    ]
    # Rollouts: each begin closed by its end, with G completions per example; together they
    # are every rollout the trainer counted (2 stages x (rebuild of 4 + refresh of 2) x G 2).
    group = config.train.num_generations
    begins, ends = recorder.named("rollouts_begin"), recorder.named("rollouts_end")
    assert [e[1] for e in begins] == [e[1] for e in ends] == [4, 2, 4, 2]
    assert all(rows == n * group for _, n, rows in ends)
    assert sum(rows for *_, rows in ends) == trainer.phase.rollouts == 24
    # Updates: 8, each between its begin and end, with the loss the stage record averages.
    updates = recorder.named("update_end")
    assert [e[1] for e in updates] == list(range(1, 9))
    assert [e[1] for e in recorder.named("update_begin")] == list(range(8))
    losses = [e[2]["loss"] for e in updates]
    assert history[0]["loss"] == pytest.approx(sum(losses[:4]) / 4)
    assert {"loss", "grad_norm", "lr"} <= set(updates[0][2])
    # A refresh comes after the update it follows has ended (updates 2 and 6).
    order = [e[0] for e in recorder.events]
    second_end = next(i for i, e in enumerate(recorder.events) if e[:2] == ("update_end", 2))
    assert order[second_end + 1] == "rollouts_begin"
    # Evaluations: each stage record's eval_ figures are what on_evaluate saw.
    evaluated = [e[1] for e in recorder.named("evaluate")]
    records = [r for r in history if "eval_reward" in r]
    assert evaluated == [{k[5:]: v for k, v in r.items() if k.startswith("eval_")} for r in records]
    assert order.index("evaluate") < order.index("stage_end")
    # Stage ends, after the stage's evaluation, and the key a callback adds is logged.
    assert recorder.named("stage_end") == [("stage_end", 0), ("stage_end", 1)]
    logged = [
        json.loads(line) for line in (tmp_path / "hooked" / "stages.jsonl").read_text().splitlines()
    ]
    assert [r["seen_by_callback"] for r in logged] == [0, 1]
    # Saves: checkpoint_every=2 over 8 updates.
    assert [e[1] for e in recorder.named("save")] == [2, 4, 6, 8]
    # The timer counted the same phases.
    assert timer.calls == {"rollouts": 4, "update": 8, "evaluate": len(evaluated)}
    assert all(seconds > 0 for seconds in timer.seconds.values())


class FailingWorker:
    """A rollout worker whose sampling fails."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward

    def rollout(self, *args: Any) -> Any:
        raise RuntimeError("the sampler broke")


def test_end_hooks_run_when_a_phase_raises(tmp_path: Path, monkeypatch) -> None:
    trainer, _, _ = build_trainer(build_config(overrides=TINY_OVERRIDES), tmp_path, quiet=True)
    recorder, timer = trainer.add_callback(Recorder()), trainer.add_callback(PhaseTimer())
    heartbeat = trainer.add_callback(ProgressHeartbeat())
    threads = threading.active_count()
    trainer.worker = FailingWorker(trainer.worker.reward)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="the sampler broke"):
        trainer.train()
    assert recorder.events == [("rollouts_begin", 4), ("rollouts_end", 4, None)]
    assert timer.calls["rollouts"] == 1
    # The progress bar's thread was stopped, not left beating.
    assert heartbeat._beat is None and threading.active_count() == threads

    # An evaluation that raises closes its hooks too.
    def broken_metrics(texts: Any, examples: Any) -> Any:
        raise RuntimeError("the metric broke")

    monkeypatch.setattr(trainer.task, "metrics", broken_metrics)
    with pytest.raises(RuntimeError, match="the metric broke"):
        trainer.evaluate()
    assert recorder.events[-2:] == [("evaluate_begin",), ("evaluate", None)]
    assert heartbeat._beat is None and threading.active_count() == threads


def test_the_runner_shows_progress_through_the_hook(tmp_path: Path) -> None:
    config = build_config(overrides=TINY_OVERRIDES)
    loud, _, _ = build_trainer(config, tmp_path / "loud", quiet=False)
    quiet, _, _ = build_trainer(config, tmp_path / "quiet", quiet=True)
    # elapsed-time bars, and the run's plan with the time left at each stage's start
    assert [type(c) for c in loud.callbacks] == [ProgressHeartbeat, StageProgress]
    assert quiet.callbacks == []
