"""The Python API, in TRL's idiom: ``DTMConfig`` + ``DTMTrainer`` (and the baselines' trainers).

::

    from tiltmatch import DTMConfig, DTMTrainer

    def brevity(prompts, completions, **columns):
        return [-len(c) / 10 for c in completions]

    args = DTMConfig(output_dir="runs/mine", num_generations=4, max_completion_length=16)
    trainer = DTMTrainer(model="shipped:maze", reward_funcs=brevity,
                         train_dataset="prompts.jsonl", args=args)
    trainer.train()
    trainer.save_model()        # runs/mine/final: safetensors (or the LoRA adapter) + README.md

Everything is built from the same pieces as ``tiltmatch train`` (one validated
:class:`~tiltmatch.config.RunConfig` underneath, :func:`tiltmatch.training.runner.build_trainer`,
the same trainer, checkpoints and logs), so a run made here is a run like any other.
Names are TRL's where they mean the same thing (``num_generations``, ``learning_rate``,
``per_device_train_batch_size`` = completions per micro-batch, ``max_completion_length``,
``reward_weights``, ``report_to``, ``output_dir``); DTM's own settings keep METHOD.md's
symbols (``a_end``, ``h``, ``steps_per_h``, ``c``, ``rho``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tiltmatch.config import ConfigError, LoRAConfig, RunConfig, TrainConfig, build_config
from tiltmatch.destination import Destination
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.rewards import RewardFunction, make_reward
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Task
from tiltmatch.tasks.dataset import DatasetTask
from tiltmatch.training.config import base_record, fit_sampler_geometry, speak_names

#: the training arguments that set one run-config field each: argument -> config path
API_PATHS: dict[str, str] = {
    "diffusion_steps": "sampler.steps",
    "block_length": "sampler.block_length",
    "remasking": "sampler.remasking",
    "temperature": "sampler.temperature",
    **{
        name: f"dtm.{name}"
        for name in [
            "a_end",
            "h",
            "schedule",
            "steps_per_h",
            "c",
            "baseline",
            "reward_lower_bound",
            "rho",
            "h_max",
            "states",
            "teacher_update",
        ]
    },
    **{
        name: f"train.{name}"
        for name in [
            "learning_rate",
            "final_learning_rate",
            "weight_decay",
            "max_grad_norm",
            "num_generations",
            "gradient_accumulation_steps",
            "buffer_prompts",
            "refresh_prompts",
            "refresh_every",
            "reward_scale",
            "max_stages",
            "report_to",
        ]
    },
    "warmup_ratio": "train.warmup_fraction",
    "max_prompts": "train.train_examples",
    "save_steps": "train.checkpoint_every",
    "eval_prompts": "eval.examples",
    "eval_samples_per_prompt": "eval.samples_per_example",
    "eval_temperature": "eval.temperature",
    "eval_every_stage": "eval.every_stage",
}
#: how the API names a run-config setting in its errors (config path -> argument)
API_NAMES: dict[str, str] = {
    **{path: name for name, path in API_PATHS.items()},
    "task_options.response_length": "max_completion_length",
    "train.prompts_per_batch": "per_device_train_batch_size / num_generations",
    "train.adam_betas": "(adam_beta1, adam_beta2)",
}


@dataclass
class DTMConfig:
    """Training arguments (TRL's ``GRPOConfig`` idiom). ``None`` means tiltmatch's default
    (the matching field of :class:`~tiltmatch.config.RunConfig`).

    ``per_device_train_batch_size`` counts completions, as in TRL: it must be a multiple
    of ``num_generations`` (whole groups of a prompt's completions per micro-batch).
    ``run_overrides`` sets any other RunConfig field by its dotted name
    (``{"dtm.sar_block_length": 8}``).
    """

    output_dir: str = "runs/dtm"
    method: str = "dtm"
    seed: int = 0
    # optimisation
    learning_rate: float | None = None
    final_learning_rate: float | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    max_grad_norm: float | None = None
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    # rollouts
    num_generations: int | None = None
    max_completion_length: int = 32
    temperature: float | None = None
    diffusion_steps: int | None = None
    block_length: int | None = None
    remasking: str | None = None
    buffer_prompts: int | None = None
    refresh_prompts: int | None = None
    refresh_every: int | None = None
    max_prompts: int | None = None
    # rewards
    reward_weights: list[float] | None = None
    reward_scale: float | None = None
    reward_device: str = "cpu"
    # DTM (METHOD.md sections 4-6)
    a_end: float | None = None
    h: float | None = None
    schedule: str | None = None
    steps_per_h: int | None = None
    c: float | None = None
    baseline: str | None = None
    reward_lower_bound: float | None = None
    rho: float | None = None
    h_max: float | None = None
    states: str | None = None
    teacher_update: str | None = None
    max_stages: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    # evaluation, logging, checkpoints
    eval_prompts: int | None = None
    eval_samples_per_prompt: int | None = None
    eval_temperature: float | None = None
    eval_every_stage: bool | None = None
    save_steps: int | None = None
    #: replace an ``output_dir`` holding anything but this run's own files (TRL's name); the
    #: old folder is kept aside until the new run's first checkpoint
    overwrite_output_dir: bool = False
    report_to: str | list[str] = "tensorboard"
    disable_tqdm: bool = False
    # the model
    alphabet: str | None = None
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)
    run_overrides: dict[str, Any] = field(default_factory=dict)

    def to_run_config(
        self,
        task: str = "dataset",
        task_options: dict[str, Any] | None = None,
        base: str | None = None,
        lora: LoRAConfig | None = None,
    ) -> RunConfig:
        """The validated :class:`RunConfig` these arguments stand for."""
        length = self.max_completion_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"max_completion_length must be an integer >= 1, got {length!r}")
        generations = self.num_generations or TrainConfig().num_generations
        prompts_per_batch = None
        if self.per_device_train_batch_size is not None:
            if self.per_device_train_batch_size % generations:
                raise ConfigError(
                    f"per_device_train_batch_size {self.per_device_train_batch_size} is not a "
                    f"multiple of num_generations {generations} (micro-batches hold whole groups)"
                )
            prompts_per_batch = self.per_device_train_batch_size // generations
        betas = None
        if self.adam_beta1 is not None or self.adam_beta2 is not None:
            default = TrainConfig().adam_betas
            betas = [self.adam_beta1 or default[0], self.adam_beta2 or default[1]]
        sections: dict[str, dict[str, Any]] = {"model": {"base": base, **self.model_init_kwargs}}
        for name, path in API_PATHS.items():
            section, _, leaf = path.partition(".")
            sections.setdefault(section, {})[leaf] = getattr(self, name)
        sections["train"]["prompts_per_batch"] = prompts_per_batch
        sections["train"]["adam_betas"] = betas
        data: dict[str, Any] = {
            "task": task,
            "task_options": task_options or {},
            "method": self.method,
            "method_options": dict(self.method_options),
            "seed": self.seed,
        }
        for name, values in sections.items():
            data[name] = {k: v for k, v in values.items() if v is not None}
        if lora is not None:
            data["lora"] = lora.model_dump()
        overrides = [f"{k}={json.dumps(v)}" for k, v in self.run_overrides.items()]
        try:  # the run config's errors, in the arguments' names
            config = build_config(None, overrides, base=data)
            if task == "dataset":  # the response length is max_completion_length: check it now
                fit_sampler_geometry(config, length, base_record(config))
        except ConfigError as err:
            raise ConfigError(speak_names(str(err), API_NAMES)) from None
        return config


@dataclass
class TrainOutput:
    """What :meth:`DTMTrainer.train` returns (TRL's shape, plus the per-stage history)."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


def _lora_config(peft_config: Any) -> LoRAConfig | None:
    """Our :class:`LoRAConfig` from one, a dict, or a ``peft.LoraConfig``."""
    if peft_config is None or isinstance(peft_config, LoRAConfig):
        return peft_config
    if isinstance(peft_config, dict):
        return LoRAConfig.model_validate(peft_config)
    fields = {
        "r": getattr(peft_config, "r", None),
        "alpha": getattr(peft_config, "lora_alpha", None),
        "dropout": getattr(peft_config, "lora_dropout", None),
        "target_modules": getattr(peft_config, "target_modules", None),
    }
    if isinstance(fields["target_modules"], set):
        fields["target_modules"] = sorted(fields["target_modules"])
    return LoRAConfig.model_validate({k: v for k, v in fields.items() if v is not None})


def _describe_reward(reward: RewardFunction) -> list[str]:
    functions = getattr(reward, "functions", [reward])
    return [f"{type(f).__name__} {f.name!r}" for f in functions]


class DTMTrainer:
    """Fine-tune a masked diffusion model on a prompt dataset with DTM (METHOD.md 4-6).

    ``model``: a model folder (``save_pretrained`` layout: a tiltmatch denoiser or a
    LLaDA/Llama-format checkpoint), ``"shipped:maze"``, a loaded bidirectional
    ``PreTrainedModel`` with its codec as ``processing_class``, or None for a fresh tiny
    character-level model over ``args.alphabet`` (default: the prompts' characters).
    ``reward_funcs``: one or a list of functions ``f(prompts, completions, **columns)``,
    ``"file.py:fn"`` references, reward model folders or loaded reward models
    (with their tokenizers in ``reward_processing_classes``), weighted by
    ``args.reward_weights``. ``train_dataset`` / ``eval_dataset``: a ``datasets.Dataset``,
    a list of rows, a JSONL/CSV/Parquet path or a hub name, with a ``prompt`` column.
    Or ``task``: a built-in task name, ``module:Class``, or a :class:`Task`, with its own
    prompts and reward (then no ``reward_funcs``).
    """

    method = "dtm"

    def __init__(
        self,
        model: Any = None,
        reward_funcs: Any = None,
        args: DTMConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: PromptCodec | None = None,
        reward_processing_classes: Any = None,
        peft_config: Any = None,
        task: str | Task | None = None,
    ) -> None:
        from tiltmatch.training.runner import build_trainer

        self.args = args if args is not None else DTMConfig()
        if type(self) is not DTMTrainer or self.args.method == "dtm":
            self.args.method = self.method
        args = self.args
        reward = None
        if reward_funcs is not None:
            tokenizers = reward_processing_classes
            if tokenizers is not None and not isinstance(tokenizers, list | tuple):
                tokenizers = [tokenizers]
            reward = make_reward(
                reward_funcs,
                args.reward_weights,
                args.reward_device,
                dict(enumerate(tokenizers)) if tokenizers is not None else None,
            )
        elif args.reward_weights is not None:
            raise ConfigError("reward_weights given without reward_funcs")
        task_obj = self._task(task, reward, train_dataset, eval_dataset)
        base, loaded = None, None
        if model is None:
            if isinstance(task_obj, DatasetTask) and task_obj.alphabet is None:
                task_obj.alphabet = args.alphabet or task_obj.prompt_alphabet()  # type: ignore[misc]
        elif isinstance(model, str | Path):
            base = str(model)
        else:
            if processing_class is None or not isinstance(processing_class, PromptCodec):
                raise ValueError(
                    "a loaded model needs its codec as processing_class (a "
                    "tiltmatch.models.codecs.CharTokenizer, or LLaDACodec.from_pretrained(folder))"
                )
            loaded = (model, processing_class)
        self.output_dir = Path(args.output_dir)
        try:  # the run config's errors, in the arguments' names
            self.config = args.to_run_config(
                task_obj.name if task is not None else "dataset",
                self._task_options(task_obj, task),
                base,
                _lora_config(peft_config),
            )
            self.trainer, self.task, self.codec = build_trainer(
                self.config, self.output_dir, quiet=args.disable_tqdm, task=task_obj, loaded=loaded
            )
        except ConfigError as err:
            raise ConfigError(speak_names(str(err), API_NAMES)) from None
        self.reward = self.trainer.eval_worker.reward  # in its own units (no reward_scale)
        self.train_output: TrainOutput | None = None

    def _task(self, task: Any, reward: RewardFunction | None, train: Any, eval_: Any) -> Task:
        args = self.args
        if task is not None:
            if train is not None:
                raise ValueError("pass either task or train_dataset, not both")
            if reward is not None:
                raise ValueError(
                    "a task brings its own reward: pass reward_funcs with a train_dataset "
                    "instead (a Dataset of the task's prompts)"
                )
            return get_task(task) if isinstance(task, str) else task
        if train is None:
            raise ValueError("train_dataset is required (a Dataset, a JSONL/CSV/Parquet path)")
        if reward is None:
            raise ValueError("reward_funcs is required with a train_dataset")
        return DatasetTask(
            train=train,
            eval=eval_,
            rewards=reward,
            response_length=args.max_completion_length,
            alphabet=args.alphabet,
        )

    def _task_options(self, task_obj: Task, task: Any) -> dict[str, Any]:
        """A JSON-able description of the task for the resolved config and the model card."""
        if isinstance(task, str):
            return {}
        if isinstance(task_obj, DatasetTask):
            return {
                "train": task_obj.train_label,
                "eval": task_obj.eval_label,
                "rewards": _describe_reward(task_obj.reward_fn),
                "reward_weights": self.args.reward_weights,
                "response_length": task_obj.response_length,
                "alphabet": task_obj.alphabet,
            }
        return {"task": f"{type(task_obj).__module__}:{type(task_obj).__name__}"}

    # -- TRL's verbs ----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: bool | str | None = None) -> TrainOutput:
        """Train to the end of the annealing path (or the baseline's budget).

        A folder that already holds anything is continued only with
        ``resume_from_checkpoint`` (True: ``output_dir/checkpoint``; or a path) and replaced
        only with ``args.overwrite_output_dir`` (the old folder kept aside until the new
        run's first checkpoint, and put back if the run fails before it).
        """
        from tiltmatch.training.runner import committed_at_first_checkpoint, run_destination
        from tiltmatch.training.trainer import CHECKPOINT

        destination = None
        if resume_from_checkpoint:
            checkpoint = self.output_dir / CHECKPOINT
            path = checkpoint if resume_from_checkpoint is True else Path(resume_from_checkpoint)
            self.trainer.load(path)
        else:
            destination = run_destination(
                self.output_dir,
                self.config,
                self.args.overwrite_output_dir,
                writer=self.trainer.parallel.is_main,
            )
            destination.hint = (
                "pass resume_from_checkpoint=True to continue it, set overwrite_output_dir=True "
                "to replace it, or choose another output_dir"
            )
            destination.check()
        with committed_at_first_checkpoint(self.trainer, destination):
            history = self.trainer.train()
        final = dict(history[-1]) if history else {}
        if self.trainer.parallel.is_main:
            (self.output_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
        self.train_output = TrainOutput(
            global_step=self.trainer.phase.updates,
            training_loss=float(final.get("loss", float("nan"))),
            metrics=final,
            history=history,
        )
        return self.train_output

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current student (``eval_`` prefixed, as in the run log)."""
        return {f"eval_{k}": v for k, v in self.trainer.evaluate().items()}

    def save_model(self, output_dir: str | Path | None = None, overwrite: bool = False) -> Path:
        """Save the student (safetensors, or the LoRA adapter) with a model card README.md.

        Default folder: ``output_dir/final``. Written to a temporary sibling and renamed
        into place; an existing folder is replaced only with ``overwrite=True``.
        """
        from tiltmatch.training.runner import save_final

        folder = Path(output_dir) if output_dir is not None else self.output_dir / "final"
        parallel = self.trainer.parallel
        destination = Destination(
            folder,
            "model",
            overwrite,
            staged=True,  # written beside it, renamed into place once complete
            hint="pass overwrite=True to replace it (the old folder is kept until the new "
            "model is written) or choose another folder",
            writer=parallel.is_main,
        )
        destination.check()
        whole = parallel.student_weights_to_save(self.trainer.pair)  # collective (FSDP)
        if not parallel.is_main:  # one writer under a multi-process launch
            return folder
        with destination as staging:
            save_final(self.trainer, self.codec, staging, whole)
            (staging / "README.md").write_text(self.model_card(folder), encoding="utf-8")
        return folder

    def model_card(self, folder: str | Path | None = None) -> str:
        """A README.md (Hugging Face's layout): metadata, the data, the rewards, how to
        sample from ``folder`` (default: ``output_dir/final``), the metrics, the config."""
        from tiltmatch.generation.card import model_card
        from tiltmatch.training.runner import card_facts

        where = Path(folder) if folder is not None else self.output_dir / "final"
        metrics = self.train_output.metrics if self.train_output is not None else {}
        return model_card(card_facts(self.trainer, where, metrics, asdict(self.args)))


class DiffuGRPOTrainer(DTMTrainer):
    """diffu-GRPO (d1) with the same data, rewards and machinery (``args.method_options``)."""

    method = "diffu-grpo"


class WD1Trainer(DTMTrainer):
    """wd1 (weighted policy optimisation) with the same data, rewards and machinery."""

    method = "wd1"


class RejectionTrainer(DTMTrainer):
    """Rejection-sampling fine-tuning (best of each group) with the same machinery."""

    method = "rejection"


class SPGTrainer(DTMTrainer):
    """SPG (sandwiched policy gradient) with the same data, rewards and machinery."""

    method = "spg"


class ESPOTrainer(DTMTrainer):
    """ESPO (ELBO-based sequence-level policy optimisation) with the same machinery."""

    method = "espo"


class CoupledGRPOTrainer(DTMTrainer):
    """coupled-GRPO (DiffuCoder) with the same data, rewards and machinery."""

    method = "coupled-grpo"


__all__ = [
    "CoupledGRPOTrainer",
    "DTMConfig",
    "DTMTrainer",
    "DiffuGRPOTrainer",
    "ESPOTrainer",
    "RejectionTrainer",
    "SPGTrainer",
    "TrainOutput",
    "WD1Trainer",
]
