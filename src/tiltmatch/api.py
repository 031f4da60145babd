"""The Python API, in TRL's idiom: ``DTMArguments`` + ``DTMTrainer`` (and the baselines' trainers).

::

    from tiltmatch import DTMArguments, DTMTrainer

    def brevity(prompts, completions, **columns):
        return [-len(c) / 10 for c in completions]

    args = DTMArguments(output_dir="runs/mine", num_generations=4, max_completion_length=16)
    trainer = DTMTrainer(model="shipped:maze", reward_funcs=brevity,
                         train_dataset="prompts.jsonl", args=args)
    trainer.train()
    trainer.save_model()        # runs/mine: safetensors (or the LoRA adapter) + README.md
    model = tiltmatch.load_pretrained("runs/mine")
    model.generate(["a prompt"], num_return_sequences=4)

Everything is built from the same pieces as ``tiltmatch train`` (one validated
:class:`~tiltmatch.config.RunConfig` underneath, :func:`tiltmatch.training.runner.build_trainer`,
the same trainer, checkpoints and logs), so a run made here is a run like any other.
Each argument is the run-config field of the same name (one vocabulary: ``tiltmatch config
--list`` shows both), TRL's where TRL has the knob (``num_generations``, ``learning_rate``,
``warmup_ratio``, ``save_steps``, ``logging_steps``, ``per_device_train_batch_size`` =
completions per micro-batch, ``max_completion_length``, ``reward_weights``, ``report_to``,
``output_dir``); DTM's own settings keep METHOD.md's symbols (``a_end``, ``h``,
``steps_per_h``, ``c``, ``rho``). ``DTMConfig`` is the earlier name of ``DTMArguments``.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tiltmatch.config import ConfigError, LoRAConfig, RunConfig, build_config
from tiltmatch.destination import Destination
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.rewards import RewardFunction, make_reward
from tiltmatch.settings import validation_reasons
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Task
from tiltmatch.tasks.dataset import DatasetTask
from tiltmatch.training.config import (
    NOT_HERE,
    EvalConfig,
    base_record,
    fit_sampler_geometry,
    speak_names,
)

#: the run-config section of each training argument that sets one field of it by the same
#: name (TRL's where TRL has the knob): ``learning_rate`` is ``train.learning_rate``
SECTION_OF: dict[str, str] = {
    **dict.fromkeys(["block_length", "remasking", "temperature"], "sampler"),
    **dict.fromkeys(
        [
            "a_end",
            "h",
            "schedule",
            "steps_per_h",
            "c",
            "baseline",
            "reward_lower_bound",
            "calibration_prompts",
            "rho",
            "h_max",
            "states",
            "sar_block_length",
            "teacher_update",
            "ema_decay",
            "ema_student",
        ],
        "dtm",
    ),
    **dict.fromkeys(
        [
            "learning_rate",
            "final_learning_rate",
            "warmup_ratio",
            "decay_fraction",
            "weight_decay",
            "adam_beta1",
            "adam_beta2",
            "max_grad_norm",
            "num_generations",
            "per_device_train_batch_size",
            "micro_batch",
            "gradient_accumulation_steps",
            "buffer_prompts",
            "refresh_prompts",
            "refresh_every",
            "train_examples",
            "train_split",
            "reward_scale",
            "max_stages",
            "save_steps",
            "logging_steps",
            "report_to",
        ],
        "train",
    ),
}
#: the arguments whose run-config name differs: argument -> config path (the two knobs whose
#: config name is no TRL / d1 name an argument list would take)
OTHER_PATHS: dict[str, str] = {
    "diffusion_steps": "sampler.steps",
    "max_completion_length": "task_options.response_length",
    **{f"eval_{name}": f"eval.{name}" for name in EvalConfig.model_fields if name != "sampler"},
}
#: every argument that is one run-config field: argument -> config path
API_PATHS: dict[str, str] = {
    **{name: f"{section}.{name}" for name, section in SECTION_OF.items()},
    **OTHER_PATHS,
}
#: earlier argument names, read for one release (with a DeprecationWarning): old -> new
RENAMED_ARGUMENTS: dict[str, str] = {
    "max_prompts": "train_examples",
    "eval_prompts": "eval_examples",
    "eval_samples_per_prompt": "eval_samples_per_example",
}
#: how the API names a run-config setting in its errors (config path -> argument)
API_NAMES: dict[str, str] = {path: name for name, path in API_PATHS.items()}


@dataclass
class DTMArguments:
    """Training arguments (TRL's ``GRPOConfig`` idiom). ``None`` means the run config's
    default (:class:`~tiltmatch.config.RunConfig`; ``tiltmatch config --list`` shows each).

    Each argument is the run-config field of the same name (``learning_rate`` is
    ``train.learning_rate``, ``a_end`` is ``dtm.a_end``, ``eval_examples`` is
    ``eval.examples``), TRL's name where TRL has the knob; two differ, for a TRL/d1 user's
    sake: ``max_completion_length`` (``task_options.response_length``) and ``diffusion_steps``
    (``sampler.steps``). ``per_device_train_batch_size`` counts completions per micro-batch,
    as in TRL (with ``micro_batch="prompts"``, a multiple of ``num_generations``).
    ``run_overrides`` sets any other field by its dotted name (``{"dtm.first_order": True}``).
    """

    output_dir: str = "runs/dtm"
    method: str = "dtm"
    seed: int = 0
    # optimisation
    learning_rate: float | None = None
    final_learning_rate: float | None = None
    warmup_ratio: float | None = None
    decay_fraction: float | None = None
    weight_decay: float | None = None
    adam_beta1: float | None = None
    adam_beta2: float | None = None
    max_grad_norm: float | None = None
    per_device_train_batch_size: int | None = None
    micro_batch: str | None = None
    gradient_accumulation_steps: int | None = None
    # rollouts
    num_generations: int | None = None
    max_completion_length: int | None = None
    temperature: float | None = None
    diffusion_steps: int | None = None
    block_length: int | None = None
    remasking: str | None = None
    buffer_prompts: int | None = None
    refresh_prompts: int | None = None
    refresh_every: int | None = None
    train_examples: int | None = None
    train_split: str | None = None
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
    calibration_prompts: int | None = None
    rho: float | None = None
    h_max: float | None = None
    states: str | None = None
    sar_block_length: int | None = None
    teacher_update: str | None = None
    ema_decay: float | None = None
    ema_student: bool | None = None
    max_stages: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    # evaluation, logging, checkpoints
    eval_examples: int | None = None
    eval_split: str | None = None
    eval_samples_per_example: int | None = None
    eval_temperature: float | None = None
    eval_every_stage: bool | None = None
    save_steps: int | None = None
    logging_steps: int | None = None
    #: replace an ``output_dir`` holding anything but this run's own files (TRL's name); the
    #: old folder is kept aside until the new run's first checkpoint
    overwrite_output_dir: bool = False
    report_to: str | list[str] = "tensorboard"
    disable_tqdm: bool = False
    # the model
    alphabet: str | None = None
    model_init_kwargs: dict[str, Any] = field(default_factory=dict)
    run_overrides: dict[str, Any] = field(default_factory=dict)
    # earlier names (RENAMED_ARGUMENTS), read for one release
    max_prompts: int | None = None
    eval_prompts: int | None = None
    eval_samples_per_prompt: int | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> DTMArguments:
        # A misspelt or TRL-only argument is one line naming the nearest known one (the
        # dataclass's own TypeError would only say "unexpected keyword argument").
        known = [f.name for f in fields(cls)]
        for name in kwargs:
            if name in known:
                continue
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else "tiltmatch config --list shows them"
            if f"train.{name}" in NOT_HERE:
                hint = NOT_HERE[f"train.{name}"]
            raise ConfigError(f"{cls.__name__}: unknown argument {name!r} ({hint})")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for old, new in RENAMED_ARGUMENTS.items():  # earlier names, moved (one release)
            value = getattr(self, old)
            if value is None:
                continue
            if getattr(self, new) is not None:
                raise ConfigError(f"{old} is the earlier name of {new}: set only one")
            warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)
            setattr(self, new, value)
            setattr(self, old, None)

    def to_run_config(
        self,
        task: str = "dataset",
        task_options: dict[str, Any] | None = None,
        base: str | None = None,
        lora: LoRAConfig | None = None,
    ) -> RunConfig:
        """The validated :class:`RunConfig` these arguments stand for."""
        length = self.max_completion_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)):
            raise ConfigError(f"max_completion_length must be an integer >= 1, got {length!r}")
        if length is not None and length < 1:
            raise ConfigError(f"max_completion_length must be an integer >= 1, got {length!r}")
        sections: dict[str, dict[str, Any]] = {"model": {"base": base, **self.model_init_kwargs}}
        for name, path in API_PATHS.items():
            section, _, leaf = path.partition(".")
            if section != "task_options":
                sections.setdefault(section, {})[leaf] = getattr(self, name)
        options = dict(task_options or {})
        if length is not None and task != "dataset":  # a built-in task's own option
            options["response_length"] = length
        data: dict[str, Any] = {
            "task": task,
            "task_options": options,
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
                response = options.get("response_length", length or DatasetTask.DEFAULT_LENGTH)
                fit_sampler_geometry(config, response, base_record(config))
        except ConfigError as err:
            raise ConfigError(speak_names(str(err), API_NAMES)) from None
        return config


def __getattr__(name: str) -> Any:
    # DTMConfig: the earlier name of DTMArguments, for one release (tiltmatch.config.DTMConfig
    # is the run config's dtm: section, a different thing).
    if name == "DTMConfig":
        warnings.warn(
            "tiltmatch.DTMConfig is deprecated: use tiltmatch.DTMArguments (the same class); "
            "tiltmatch.config.DTMConfig is the run config's dtm: section",
            DeprecationWarning,
            stacklevel=2,
        )
        return DTMArguments
    raise AttributeError(f"module 'tiltmatch.api' has no attribute {name!r}")


@dataclass
class TrainOutput:
    """What :meth:`DTMTrainer.train` returns (TRL's shape, plus the per-stage history)."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any]
    history: list[dict[str, Any]]


#: the ``model:`` fields that size a fresh tiny model (unused with a base)
TINY_SIZES = {"hidden_size", "num_layers", "num_heads", "intermediate_size", "family", "block_size"}
#: ``peft.LoraConfig`` fields the LoRA pair honours, by the ``lora:`` section's names
PEFT_FIELDS = {
    "r": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target_modules",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
}
#: fields whose value is what the pair does anyway: these values are accepted, others refused
PEFT_AS_IS: dict[str, tuple[Any, ...]] = {
    "task_type": (None, "CAUSAL_LM"),
    "bias": ("none",),
    "inference_mode": (False,),
}


def _lora_config(peft_config: Any) -> LoRAConfig | None:
    """Our :class:`LoRAConfig` from one, a dict, or a ``peft.LoraConfig``: every field of the
    latter honoured (:data:`PEFT_FIELDS`) or, set to anything but its default, refused by name
    (the pair's student and teacher are two adapters whose LoRA weights it copies and
    averages: modules_to_save, trainable biases and the rest would not follow)."""
    if peft_config is None or isinstance(peft_config, LoRAConfig):
        return peft_config
    if isinstance(peft_config, dict):
        try:
            return LoRAConfig.model_validate(peft_config)
        except ValidationError as err:
            raise ConfigError(f"peft_config: {validation_reasons(err)}") from None
    if not is_dataclass(peft_config):
        raise ConfigError(
            f"peft_config must be a peft.LoraConfig, a dict or a LoRAConfig, got "
            f"{type(peft_config).__name__}"
        )
    kind: Any = type(peft_config)
    default = kind()
    values: dict[str, Any] = {}
    for item in fields(peft_config):
        name, value = item.name, getattr(peft_config, item.name)
        if name in PEFT_FIELDS:
            if value is not None:
                values[PEFT_FIELDS[name]] = sorted(value) if isinstance(value, set) else value
        elif name in PEFT_AS_IS:
            if value not in PEFT_AS_IS[name] and value != getattr(default, name):
                raise ConfigError(
                    f"peft_config.{name}={value!r} is not supported (tiltmatch's LoRA pair "
                    f"takes {' or '.join(repr(v) for v in PEFT_AS_IS[name])})"
                )
        elif value != getattr(default, name):
            raise ConfigError(
                f"peft_config.{name}={value!r} is not supported by tiltmatch's LoRA pair (its "
                "student and teacher are two adapters whose LoRA weights it copies); it "
                f"honours {', '.join(PEFT_FIELDS)}"
            )
    if isinstance(values.get("target_modules"), str):
        values["target_modules"] = [values["target_modules"]]
    # PEFT's own default for Llama, Qwen2 and Qwen3 (every family here): the query and value
    # projections (the lora: section's own default adapts every projection).
    values.setdefault("target_modules", ["q_proj", "v_proj"])
    try:
        return LoRAConfig.model_validate(values)
    except ValidationError as err:
        raise ConfigError(f"peft_config: {validation_reasons(err)}") from None


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
        args: DTMArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: PromptCodec | None = None,
        reward_processing_classes: Any = None,
        peft_config: Any = None,
        task: str | Task | None = None,
    ) -> None:
        from tiltmatch.training.runner import build_trainer

        self.args = args if args is not None else DTMArguments()
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
        if model is not None and (sizes := sorted(set(args.model_init_kwargs) & TINY_SIZES)):
            raise ConfigError(
                f"model_init_kwargs {', '.join(sizes)} size a fresh model; the model given "
                "brings its own (leave them out, or pass model=None)"
            )
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
            response_length=(
                args.max_completion_length
                if args.max_completion_length is not None
                else DatasetTask.DEFAULT_LENGTH
            ),
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
        """Save the student (safetensors, or the LoRA adapter) with its record and a model
        card README.md; ``tiltmatch.load_pretrained`` reloads the folder.

        Default folder: ``args.output_dir``, as in TRL: the model files go beside the run's
        checkpoint and logs (written into a staged folder first, then moved in file by file,
        replacing an earlier save's). Another folder is written to a temporary sibling and
        renamed into place; an existing one is replaced only with ``overwrite=True``.
        """
        from tiltmatch.training.runner import save_final

        run_folder = output_dir is None and self._run_folder_is_mine()
        folder = Path(output_dir) if output_dir is not None else self.output_dir
        parallel = self.trainer.parallel
        staging_path = folder / ".model" if run_folder else folder
        destination = Destination(
            staging_path,
            "model",
            overwrite or run_folder,  # a stopped save's staging folder is this run's own
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
        if run_folder:  # into the run's folder, beside its checkpoint and logs
            for item in sorted(staging_path.iterdir()):
                os.replace(item, folder / item.name)
            staging_path.rmdir()
        return folder

    def _run_folder_is_mine(self) -> bool:
        """Whether ``output_dir`` is this trainer's run folder (it trained or resumed there)."""
        from tiltmatch.training.trainer import CHECKPOINT

        trained = self.train_output is not None or self.trainer.phase.updates > 0
        return trained and (self.output_dir / CHECKPOINT).is_dir()

    def model_card(self, folder: str | Path | None = None) -> str:
        """A README.md (Hugging Face's layout): metadata, the data, the rewards, how to
        sample from ``folder`` (default: ``output_dir``), the metrics, the config."""
        from tiltmatch.generation.card import model_card
        from tiltmatch.training.runner import card_facts

        where = Path(folder) if folder is not None else self.output_dir
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
    "DTMArguments",
    "DTMTrainer",
    "DiffuGRPOTrainer",
    "ESPOTrainer",
    "RejectionTrainer",
    "SPGTrainer",
    "TrainOutput",
    "WD1Trainer",
]
