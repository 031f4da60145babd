"""The trainer: orchestration only (METHOD.md section 6).

Per stage: rebuild the replay buffer from the teacher, let the objective choose
its increment, reset the optimiser and the learning-rate schedule, run the
stage's updates (refreshing part of the buffer every few), then advance the
annealing state, refresh the teacher, evaluate, log and checkpoint. All
randomness flows from one ``torch.Generator`` whose state is checkpointed, so
a resumed run ends with exactly the parameters of an uninterrupted one.

What happens around its rollouts, updates, evaluations, stage ends and checkpoints
(timing, probes, progress) is a :class:`~tiltmatch.training.callbacks.TrainerCallback`
registered with :meth:`Trainer.add_callback`.

The trainer is the loop only: one optimiser update is
:func:`~tiltmatch.training.update.optimizer_update`, and what differs on
several processes (buffers per rank, averaged gradients, sharded weights,
checkpoints, evaluation) is the :class:`~tiltmatch.training.parallel.Parallelism`
it is given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from tiltmatch.batch import RolloutBatch
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.objective import Objective, Phase
from tiltmatch.rewards import scaled, task_reward_function
from tiltmatch.sampling.sampler import SamplingConfig
from tiltmatch.tasks.base import Example, Task
from tiltmatch.training.callbacks import TrainerCallback
from tiltmatch.training.checkpoint import CheckpointError, load_checkpoint
from tiltmatch.training.config import RunConfig
from tiltmatch.training.evaluation import evaluate
from tiltmatch.training.pair import DenoiserPair
from tiltmatch.training.parallel import Parallelism, SingleProcess
from tiltmatch.training.plan import run_plan
from tiltmatch.training.rollouts import PromptPool, ReplayBuffer, RolloutWorker
from tiltmatch.training.update import optimizer_update

CHECKPOINT = "checkpoint"
_Callback = TypeVar("_Callback", bound=TrainerCallback)


def stage_lr_lambda(total: int, warmup: float, decay: float, final_ratio: float):
    """Per-stage learning-rate factor: linear warmup, constant, linear decay to ``final_ratio``."""
    warm = max(round(warmup * total), 0)
    dec = max(round(decay * total), 0)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if dec and step >= total - dec:
            frac = (step - (total - dec) + 1) / dec
            return 1.0 + (final_ratio - 1.0) * min(frac, 1.0)
        return 1.0

    return factor


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The random state a resumed run needs: the trainer's generator (rollouts, states),
    torch's CPU generator and, on a GPU, the current device's (dropout)."""
    state: dict[str, Any] = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    """Undo :func:`rng_state` (the CUDA part only where it was saved and a GPU is here)."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Trainer:
    """Runs an :class:`Objective` on a task with a student/teacher pair.

    ``parallel``: how the run spreads over processes (default: one process).
    """

    def __init__(
        self,
        config: RunConfig,
        task: Task,
        codec: PromptCodec,
        pair: DenoiserPair,
        objective: Objective,
        out_dir: str | Path,
        quiet: bool = False,
        parallel: Parallelism | None = None,
    ) -> None:
        self.config, self.task, self.codec = config, task, codec
        self.pair, self.objective = pair, objective
        self.parallel = parallel or SingleProcess()
        self.out_dir = Path(out_dir)
        self.quiet = quiet or not self.parallel.is_main
        tc = config.train
        sampling = SamplingConfig(**config.sampler.model_dump())
        record = objective.records_trajectories
        reward = task_reward_function(task)
        # Training rollouts are scored in training units (train.reward_scale, the Sudoku
        # recipe's "2 x cell accuracy"); held-out evaluation in the reward's own.
        self.worker = RolloutWorker(
            task,
            codec,
            task.response_length,
            sampling,
            record,
            reward=scaled(reward, tc.reward_scale),
        )
        #: held-out evaluation's worker: the rollouts' sampler unless ``eval.sampler`` is set
        eval_sampling = sampling
        if config.eval.sampler is not None:
            eval_sampling = SamplingConfig(**config.eval.sampler.model_dump())
        self.eval_worker = RolloutWorker(
            task, codec, task.response_length, eval_sampling, reward=reward
        )
        examples = task.examples(tc.train_split, tc.train_examples, config.seed)
        self.pool = PromptPool(self.parallel.training_share(examples), config.seed)
        self.buffer = ReplayBuffer(
            self.pool, tc.buffer_prompts, tc.num_generations, codec.pad_token_id
        )
        self.eval_examples: list[Example] = task.examples(
            config.eval.split, config.eval.examples, 12345
        )
        self.parallel.prepare(pair, config.seed)
        # All training randomness comes from one generator on the model's device (the
        # sampler's Gumbel noise is drawn where the logits are; under FSDP, where the weights
        # went once sharded); its state is checkpointed. Each process has its own.
        device = next(pair.student.parameters()).device
        seed = self.parallel.process_seed(config.seed)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.phase = Phase()
        self.history: list[dict[str, Any]] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._stage_stats: dict[str, float] = {}
        self._stage_started = time.time()
        self._wall_offset = 0.0
        self._run_started = time.time()
        self.log: Any = None
        #: what happens around rollouts, updates, evaluations, stage ends and checkpoints,
        #: called in this order (:meth:`add_callback`; :mod:`tiltmatch.training.callbacks`)
        self.callbacks: list[TrainerCallback] = []
        #: write checkpoints during :meth:`train` (off for throwaway benchmark runs)
        self.checkpointing = True
        #: write config.yaml when the log opens; a resume writes it after its first
        #: checkpoint instead, so a resume that fails before leaves the stored config alone
        self.config_at_open = True

    # -- callbacks ----------------------------------------------------------------------------

    def add_callback(self, callback: _Callback) -> _Callback:
        """Register ``callback`` (called after those registered before it); returns it."""
        self.callbacks.append(callback)
        return callback

    def _notify(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback, in the order they were added."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # -- pieces -------------------------------------------------------------------------------

    def _new_optimizer(self) -> None:
        """Fresh AdamW moments and a restarted LR schedule (each phase boundary)."""
        tc = self.config.train
        self.optimizer = torch.optim.AdamW(
            list(self.pair.trainable_parameters()),
            lr=tc.learning_rate,
            betas=tc.adam_betas,
            weight_decay=tc.weight_decay,
        )
        ratio = tc.final_learning_rate / tc.learning_rate
        if self.objective.reset_optimizer_each_stage:
            factor = stage_lr_lambda(
                self.objective.steps_in_stage(), tc.warmup_fraction, tc.decay_fraction, ratio
            )
        else:
            # One optimiser for the whole run (the baselines): a constant learning rate.
            factor = _constant
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def teacher_rollouts(self, examples: Sequence[Example]) -> RolloutBatch:
        """Scored rollouts of the teacher (the current stage's ``p_a``) for the buffer, drawn
        with the trainer's generator, between the callbacks' ``on_rollouts_begin`` and
        ``on_rollouts_end``."""
        self._notify("on_rollouts_begin", examples)
        batch = None
        try:
            batch = self._scored_rollouts(examples, self.generator)
            return batch
        finally:  # the end hooks run even when sampling raised (a timer stops)
            self._notify("on_rollouts_end", examples, batch)

    def _scored_rollouts(
        self, examples: Sequence[Example], generator: torch.Generator
    ) -> RolloutBatch:
        """``num_generations`` scored completions of each example from the teacher."""
        return self.worker.rollout(
            self.pair.teacher, examples, self.config.train.num_generations, generator
        )

    def _prepare(self) -> None:
        """Let the objective fix what must precede every rollout it weights (DTM's reward
        baseline, METHOD.md section 5), once per run; kept in the checkpointed phase."""
        tc, declared = self.config.train, self.config.dtm.reward_lower_bound
        # In training units: a declared bound times train.reward_scale, as the rewards are.
        bound = self.worker.reward.lower_bound if declared is None else declared * tc.reward_scale

        def calibration() -> torch.Tensor:
            # The base model's own samples of training prompts, with a generator of their own:
            # the training rollouts and every draw after them are as without calibration.
            device = self.generator.device
            own = torch.Generator(device=device).manual_seed(self.config.seed + 314_159)
            count = min(self.config.dtm.calibration_prompts, len(self.pool.examples))
            picked = torch.randperm(len(self.pool.examples), generator=own, device=device)
            examples = [self.pool.examples[i] for i in picked[:count].tolist()]
            self.phase.rollouts += count * tc.num_generations * self.parallel.world_size
            return self.parallel.all_rewards(self._scored_rollouts(examples, own).grouped_rewards)

        self.objective.prepare(self.phase, bound, calibration)
        self.phase.extra["prepared"] = True

    def _begin_stage(self) -> None:
        if not self.phase.extra.get("prepared"):
            self._prepare()
        self._notify("on_stage_begin")
        self._stage_started = time.time()
        # Every process fills a buffer of its own: the job made world_size times as many.
        self.phase.rollouts += self.buffer.rebuild(self.teacher_rollouts) * self.parallel.world_size
        assert self.buffer.data is not None
        # h and the stage statistics come from every process's rollouts.
        rewards = self.parallel.all_rewards(self.buffer.data.grouped_rewards)
        stats = self.objective.begin_stage(self.phase, rewards)
        stats["reward_mean"] = float(rewards.mean())
        stats["reward_std"] = float(rewards.std()) if rewards.numel() > 1 else 0.0
        self._stage_stats = stats
        if self.optimizer is None or self.objective.reset_optimizer_each_stage:
            self._new_optimizer()
        self.phase.begun = True
        self.phase.extra["losses"] = []
        self.phase.extra["grad_norms"] = []
        self.phase.extra["clamp_rates"] = []

    def _update(self) -> None:
        """One optimiser update (between the callbacks' ``on_update_begin`` and
        ``on_update_end``), then a partial buffer refresh every ``train.refresh_every``."""
        self._notify("on_update_begin")
        metrics = None
        try:
            metrics = self._optimizer_update()
        finally:
            self._notify("on_update_end", metrics)
        tc = self.config.train
        if (
            self.phase.step % tc.refresh_every == 0
            and self.phase.step < self.objective.steps_in_stage()
        ):
            made = self.buffer.refresh(tc.refresh_prompts, self.teacher_rollouts)
            self.phase.rollouts += made * self.parallel.world_size

    def _optimizer_update(self) -> dict[str, float]:
        """One update of the student, counted and logged; returns its loss, gradient norm,
        learning rate and the objective's extras."""
        tc = self.config.train
        assert self.optimizer is not None and self.scheduler is not None
        step = optimizer_update(
            self.objective,
            self.pair,
            self.optimizer,
            self._micro_batches().__next__,  # train.micro_batch (METHOD.md section 6)
            self.phase,
            self.generator,
            tc.max_grad_norm,
            tc.gradient_accumulation_steps,
            self.scheduler,
            self.parallel,
        )
        total, grad_norm, extras = step.loss, step.grad_norm, step.extras
        self.phase.step += 1
        self.phase.updates += 1
        self.phase.extra["losses"].append(total)
        self.phase.extra["grad_norms"].append(grad_norm)
        self.phase.extra["clamp_rates"].append(float(extras.get("clamp_rate", 0.0)))
        lr = float(self.scheduler.get_last_lr()[0])
        metrics = {"loss": total, "grad_norm": grad_norm, "lr": lr, **extras}
        if self.log is not None:
            self.log.scalars("update", metrics, self.phase.updates)
        return metrics

    def _micro_batches(self) -> Iterator[RolloutBatch]:
        """The micro-batches of one update (``train.micro_batch``, METHOD.md section 6).

        "prompts": each is drawn when it is needed (the generator's draws interleave with
        the loss's, as they always have); "completions": the whole window is drawn at once.
        """
        tc = self.config.train
        if tc.micro_batch == "completions":
            assert tc.per_device_train_batch_size is not None  # the config ensures it
            yield from self.buffer.sample_completions(
                tc.per_device_train_batch_size, tc.gradient_accumulation_steps, self.generator
            )
            return
        for _ in range(tc.gradient_accumulation_steps):
            yield self.buffer.sample(tc.prompts_per_batch, self.generator)

    def _end_stage(self) -> None:
        self.objective.end_stage(self.phase)
        self.pair.refresh_teacher()
        losses = self.phase.extra["losses"]
        norms = self.phase.extra["grad_norms"]
        record: dict[str, Any] = {
            "stage": self.phase.stage,
            **self._stage_stats,
            "a_after": self.phase.a,
            "loss": sum(losses) / max(len(losses), 1),
            "grad_norm": sum(norms) / max(len(norms), 1),
            "grad_norm_var": _variance(norms),
            "clamp_rate": sum(self.phase.extra["clamp_rates"]) / max(len(losses), 1),
            "updates": self.phase.updates,
            "rollouts": self.phase.rollouts,
            "stage_seconds": time.time() - self._stage_started,
        }
        if self.config.eval.every_stage or self.objective.finished(self.phase):
            metrics = self.evaluate()
            record.update({f"eval_{k}": v for k, v in metrics.items()})
        self._notify("on_stage_end", record)
        record["wall_seconds"] = self.wall_seconds()
        self.history.append(record)
        if self.log is not None:
            self.log.stage(record)
        self.phase.stage += 1
        self.phase.step = 0
        self.phase.begun = False
        self.phase.h = 0.0

    def evaluate(self, denoiser=None) -> dict[str, float]:
        """Held-out metrics of the student (or ``denoiser``), with a fixed private seed.

        Collective under data parallelism: every process must call it (the loop does,
        at stage ends). Between the callbacks' ``on_evaluate_begin`` and ``on_evaluate``.
        """
        ec = self.config.eval
        self._notify("on_evaluate_begin")
        metrics = None
        try:
            metrics = evaluate(
                self.eval_worker,
                denoiser or self.pair.student,
                self.eval_examples,
                ec.samples_per_example,
                ec.temperature,
                seed=self.config.seed + 777,
                spread=self.parallel.sample_shares,
            )
            return metrics
        finally:
            self._notify("on_evaluate", metrics)

    def wall_seconds(self) -> float:
        """Training wall time, continued across resumes."""
        return self._wall_offset + (time.time() - self._run_started)

    def done(self) -> bool:
        """Whether training is complete."""
        if self.phase.begun:
            return False
        return (
            self.objective.finished(self.phase) or self.phase.stage >= self.config.train.max_stages
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def save(self) -> Path:
        """Write the full training state atomically to ``out_dir/checkpoint`` (collective
        under data parallelism)."""
        # This process's own state, and the state every process holds alike.
        own = {"buffer": self.buffer.state_dict(), "rng": rng_state(self.generator)}
        shared: dict[str, Any] = {}
        if self.optimizer is not None and self.scheduler is not None:
            shared["optimizer"] = self.optimizer.state_dict()
            shared["scheduler"] = self.scheduler.state_dict()
        meta = {
            "phase": self.phase.to_dict(),
            "stage_stats": self._stage_stats,
            "history": self.history,
            "wall_seconds": self.wall_seconds(),
            "config": self.config.model_dump(mode="json"),
        }
        path = self.out_dir / CHECKPOINT
        written = self.parallel.write_checkpoint(path, self.pair.state_dict(), own, shared, meta)
        self._notify("on_save", written)
        return written

    def load(self, path: str | Path | None = None) -> None:
        """Restore the training state from a checkpoint folder (default ``out_dir/checkpoint``)."""
        path = Path(path or self.out_dir / CHECKPOINT)
        tensors, objects, meta = load_checkpoint(path)
        _check_pieces(path, tensors, set(self.pair.state_dict()), objects, meta)
        try:
            self._restore(tensors, objects, meta)
        except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as err:
            # A piece of the right name but the wrong content (another run's optimizer, a
            # truncated buffer, a phase from another version): say which checkpoint.
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({type(err).__name__}: "
                f"{' '.join(str(err).split())[:300]})"
            ) from None

    def _restore(
        self, tensors: dict[str, Any], objects: dict[str, Any], meta: dict[str, Any]
    ) -> None:
        own = self.parallel.own_state(objects)  # this process's buffer and RNG
        self.pair.load_state_dict(self.parallel.localise_weights(tensors, self.pair))
        self.buffer.load_state_dict(own["buffer"])
        restore_rng_state(own["rng"], self.generator)
        self.phase = Phase(**meta["phase"])
        self._stage_stats = meta["stage_stats"]
        self.history = meta["history"]
        self._wall_offset = float(meta["wall_seconds"])
        self._run_started = time.time()
        if "optimizer" in objects:
            self._new_optimizer()
            assert self.optimizer is not None and self.scheduler is not None
            state = self.parallel.localise_optimizer_state(objects["optimizer"], self.optimizer)
            self.optimizer.load_state_dict(state)
            self.scheduler.load_state_dict(objects["scheduler"])

    # -- the loop ---------------------------------------------------------------------------------

    def train(self, max_updates: int | None = None) -> list[dict[str, Any]]:
        """Train until the objective is finished (or ``max_updates`` updates in total).

        Returns the per-stage history. Checkpoints are written every
        ``checkpoint_every`` updates and at every stage end.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = self._open_log() if self.parallel.is_main else None
        steps = self.objective.steps_in_stage()
        bar = tqdm(  # with the run's total (its plan), so the bar shows the time left
            desc=f"{self.objective.name} on {self.task.name}",
            unit="upd",
            disable=self.quiet,
            initial=self.phase.updates,
            total=run_plan(self.config, steps).max_updates,
        )
        try:
            while not self.done():
                if max_updates is not None and self.phase.updates >= max_updates:
                    break
                if not self.phase.begun:
                    self._begin_stage()
                    bar.set_postfix(
                        stage=self.phase.stage, a=f"{self.phase.a:.3g}", h=f"{self.phase.h:.3g}"
                    )
                self._update()
                bar.update(1)
                if self.phase.step >= steps:
                    self._end_stage()
                    if self.checkpointing:
                        self.save()
                elif (
                    self.checkpointing
                    and self.phase.updates % self.config.train.checkpoint_every == 0
                ):
                    self.save()
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
        return self.history

    def write_config(self) -> None:
        """The resolved config, as ``config.yaml`` beside the run's outputs."""
        (self.out_dir / "config.yaml").write_text(self.config.to_yaml())

    def _open_log(self) -> Any:
        """The run log, with the resolved config beside it (written by the main process)."""
        from tiltmatch.training.runlog import RunLog

        if self.config_at_open:
            self.write_config()
        config = self.config.model_dump(mode="json")
        return RunLog(
            self.out_dir, quiet=self.quiet, report_to=self.config.train.report_to, config=config
        )


def _check_pieces(
    path: Path,
    tensors: dict[str, Any],
    groups: set[str],
    objects: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Every piece :meth:`Trainer.save` writes is there, and no weight group it does not."""
    if missing := sorted(groups - tensors.keys()):
        raise CheckpointError(f"checkpoint {path} lacks {missing[0]}.safetensors")
    if extra := sorted(tensors.keys() - groups):
        raise CheckpointError(
            f"checkpoint {path} holds {extra[0]}.safetensors, which this run has no model for"
        )
    for name in ("buffer", "rng"):
        if name not in objects:
            raise CheckpointError(f"checkpoint {path} lacks {name}.pt")
    if ("optimizer" in objects) != ("scheduler" in objects):
        raise CheckpointError(f"checkpoint {path} has one of optimizer.pt/scheduler.pt only")
    for key in ("phase", "stage_stats", "history", "wall_seconds"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path}: meta.json lacks {key!r}")


def _constant(step: int) -> float:
    return 1.0


def _variance(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return var if math.isfinite(var) else float("nan")
