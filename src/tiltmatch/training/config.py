"""One typed, validated run configuration (YAML file and/or ``--set`` overrides).

The sections come from their rooms (``model:`` :mod:`tiltmatch.models.config`, ``sampler:``
:mod:`tiltmatch.sampling.config`, ``dtm:`` :mod:`tiltmatch.dtm.config`); the training
room's own (``train:``, ``eval:``, ``lora:``) are here, and :class:`RunConfig` composes them.
Unknown fields and out-of-range values are rejected with a message that names them. Names
follow TRL's GRPO vocabulary where they mean the same thing (``num_generations``,
``learning_rate``, ``gradient_accumulation_steps``, ``max_grad_norm``); the DTM fields follow
METHOD.md's symbols (``c``, ``h``, ``a_end``, ``steps_per_h``, ``rho``).
"""

from __future__ import annotations

import difflib
import re
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tiltmatch.dtm.config import DTMConfig
from tiltmatch.generation.geometry import (
    DEFAULT_GEOMETRY,
    Geometry,
    derive_geometry,
    geometry_problem,
)
from tiltmatch.generation.record import GenerationRecord, read_record
from tiltmatch.models.config import ModelConfig
from tiltmatch.models.folders import base_family, resolve_model_path
from tiltmatch.models.registry import DEFAULT_FAMILY
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.registry import SamplerRefused, strategy_for
from tiltmatch.settings import (
    MAX_EXAMPLES,
    MAX_SEED,
    ConfigError,
    StrictSection,
    describe_validation_error,
    merge_settings,
    numeric_problems,
    parse_override,
    read_config_file,
)
from tiltmatch.training.methods import METHODS, check_method_name

Tracker = Literal["tensorboard", "wandb", "trackio", "none", "all"]


class LoRAConfig(StrictSection):
    """LoRA adapters on a frozen base: student and teacher are two adapters.

    See :mod:`tiltmatch.training.lora`.
    """

    r: int = Field(128, ge=1, description="adapter rank")
    alpha: float = Field(64.0, gt=0, description="scaling numerator: updates scale by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        min_length=1,
        description="module names adapted: by default every attention and MLP projection",
    )
    use_rslora: bool = Field(
        False, description="rank-stabilised scaling: updates scale by alpha / sqrt(r) (PEFT's)"
    )
    use_dora: bool = Field(
        False, description="weight-decomposed adapters (DoRA, PEFT's): a magnitude per output"
    )


# The sampler's own configuration is the run config's ``sampler:`` section: one definition.
SamplerConfig = SamplingConfig


#: earlier names of run-config fields, still read (with a DeprecationWarning) for one release:
#: old dotted path -> the field's name now (TRL's)
RENAMED: dict[str, str] = {
    "train.warmup_fraction": "train.warmup_ratio",
    "train.checkpoint_every": "train.save_steps",
    "train.adam_betas": "train.adam_beta1, train.adam_beta2",
}


def _renamed(data: Any, section: str) -> Any:
    """``data`` (a section's raw mapping) with its earlier field names moved to the current
    ones; both names at once is refused."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old, new in RENAMED.items():
        old_section, _, old_name = old.partition(".")
        if old_section != section or old_name not in data:
            continue
        value = data.pop(old_name)
        news = [n.partition(".")[2] for n in new.split(", ")]
        if clash := [n for n in news if n in data]:
            raise ValueError(f"{old} is the earlier name of {section}.{clash[0]}: set only one")
        warnings.warn(f"{old} is deprecated: write {new}", DeprecationWarning, stacklevel=2)
        if len(news) == 1:
            data[news[0]] = value
        elif isinstance(value, list | tuple) and len(value) == len(news):
            data.update(zip(news, value, strict=True))
        else:
            raise ValueError(f"{old} must be a list of {len(news)} numbers, got {value!r}")
    return data


class TrainConfig(StrictSection):
    """Optimisation, rollouts and the replay buffer (TRL's names where TRL has the knob)."""

    # AdamW moves each weight by about the learning rate per step: above 1 no recipe makes
    # sense, and 1e30 turns every weight into 1e30 on the first update.
    learning_rate: float = Field(3e-4, gt=0, le=1)
    # The per-stage schedule is DTM's (METHOD.md section 6); a baseline keeps one constant
    # learning rate, so these three are written as that for it and other values refused.
    final_learning_rate: float = Field(
        1e-4, ge=0, le=1, description="the LR each DTM stage decays to (baselines: learning_rate)"
    )
    warmup_ratio: float = Field(
        0.05,
        ge=0,
        le=1,
        description="fraction of each DTM stage's updates warming the LR up (baselines: 0)",
    )
    decay_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="fraction of each DTM stage's updates decaying the LR (baselines: 0)",
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="AdamW's first-moment decay")
    adam_beta2: float = Field(0.99, ge=0, lt=1, description="AdamW's second-moment decay")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    reward_scale: float = Field(
        1.0, gt=0, description="factor on task rewards before weighting (Sudoku recipe: 2)"
    )
    num_generations: int = Field(8, ge=1, description="completions per prompt, G")
    # Under data parallelism (tiltmatch.training.parallel) the batch and buffer sizes are per
    # process, like TRL's per_device_* sizes: the global batch is world_size times larger.
    prompts_per_batch: int = Field(
        8,
        ge=1,
        description="prompts per micro-batch (per process) with micro_batch=prompts; set by "
        "per_device_train_batch_size / num_generations when that is given",
    )
    # METHOD.md section 6: the published recipes' micro-batch is single completions drawn
    # without replacement from the buffer across the accumulation window ("completions");
    # "prompts" draws whole groups of G completions per prompt (the small benchmarks' way).
    micro_batch: Literal["prompts", "completions"] = Field(
        "prompts", description="what a micro-batch is made of: whole prompt groups or completions"
    )
    per_device_train_batch_size: int | None = Field(
        None,
        ge=1,
        description="completions per micro-batch (per process), TRL's meaning: with "
        "micro_batch=prompts a multiple of num_generations (whole groups; none: "
        "prompts_per_batch x num_generations), with micro_batch=completions required",
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    buffer_prompts: int = Field(32, ge=1, description="prompts held in the replay buffer, P")
    refresh_prompts: int = Field(8, ge=0)
    refresh_every: int = Field(20, ge=1)
    train_examples: int = Field(
        2000, ge=1, le=MAX_EXAMPLES, description="size of the training prompt pool"
    )
    train_split: str = Field(
        "train", description="the task split (or a file / hub name) training prompts come from"
    )
    max_stages: int = Field(100, ge=1)
    save_steps: int = Field(50, ge=1, description="updates between checkpoints")
    logging_steps: int = Field(
        1,
        ge=1,
        description="updates between per-update log records (loss, grad norm, lr); every "
        "stage's record is written at its end whatever this is",
    )
    report_to: list[Tracker] = Field(
        default_factory=lambda: list[Tracker](["tensorboard"]),
        description="experiment trackers (TRL's name): tensorboard, wandb, trackio, all or none",
    )

    @property
    def adam_betas(self) -> tuple[float, float]:
        """(``adam_beta1``, ``adam_beta2``): what AdamW takes."""
        return (self.adam_beta1, self.adam_beta2)

    @property
    def warmup_fraction(self) -> float:
        """The earlier name of :attr:`warmup_ratio`."""
        return self.warmup_ratio

    @property
    def checkpoint_every(self) -> int:
        """The earlier name of :attr:`save_steps`."""
        return self.save_steps

    @model_validator(mode="before")
    @classmethod
    def _earlier_names_and_batch(cls, data: Any) -> Any:
        data = _renamed(data, "train")
        if not isinstance(data, dict):
            return data
        # per_device_train_batch_size counts completions in both micro-batch kinds (TRL's
        # meaning); with whole prompt groups it fixes the prompts per micro-batch.
        size = data.get("per_device_train_batch_size")
        if data.get("micro_batch", "prompts") == "prompts" and _is_count(size):
            group = data.get("num_generations", 8)
            if _is_count(group) and size % group:
                raise ValueError(
                    f"per_device_train_batch_size {size} is not a multiple of num_generations "
                    f"{group} (with micro_batch=prompts a micro-batch holds whole groups)"
                )
            if _is_count(group):
                prompts = data.get("prompts_per_batch")
                if prompts is not None and prompts != size // group:
                    raise ValueError(
                        f"prompts_per_batch {prompts} and per_device_train_batch_size {size} / "
                        f"num_generations {group} = {size // group} disagree: set one of them"
                    )
                data["prompts_per_batch"] = size // group
        return data

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        # "wandb" or "tensorboard,wandb" (a YAML or --set string) reads as a list.
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _fits(self) -> TrainConfig:
        if self.prompts_per_batch > self.buffer_prompts:
            raise ValueError(
                f"prompts_per_batch {self.prompts_per_batch} exceeds buffer_prompts "
                f"{self.buffer_prompts}"
            )
        if self.refresh_prompts > self.buffer_prompts:
            raise ValueError("refresh_prompts exceeds buffer_prompts")
        if self.micro_batch == "completions":
            if self.per_device_train_batch_size is None:
                raise ValueError("micro_batch=completions needs per_device_train_batch_size")
            window = self.per_device_train_batch_size * self.gradient_accumulation_steps
            held = self.buffer_prompts * self.num_generations
            if window > held:
                raise ValueError(
                    f"per_device_train_batch_size {self.per_device_train_batch_size} x "
                    f"gradient_accumulation_steps {self.gradient_accumulation_steps} = {window} "
                    f"completions exceeds the buffer's {held} (buffer_prompts x num_generations): "
                    "they are drawn without replacement"
                )
        return self


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class EvalConfig(StrictSection):
    """Held-out evaluation."""

    examples: int = Field(64, ge=1, le=MAX_EXAMPLES)
    split: str = Field("test", description="the task split (or file) held-out prompts come from")
    samples_per_example: int = Field(4, ge=1)
    temperature: float = Field(1.0, ge=0)
    every_stage: bool = True
    sampler: SamplingConfig | None = Field(
        None,
        description="held-out evaluation's sampler (its temperature is eval.temperature); "
        "none: the rollouts' sampler section. Set it to evaluate every run with the exact "
        "sampler while the rollouts use an approximate one (docs/sampling.md)",
    )


class RunConfig(StrictSection):
    """Everything a run needs; written resolved next to its outputs."""

    task: str = "maze"
    task_options: dict[str, Any] = Field(default_factory=dict)
    method: str = Field("dtm", description="a name in tiltmatch.training.methods.METHODS")
    method_options: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sampler: SamplingConfig = Field(default_factory=SamplingConfig)
    dtm: DTMConfig = Field(default_factory=DTMConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    lora: LoRAConfig | None = Field(None, description="LoRA adapters; none = full fine-tuning")

    @field_validator("method")
    @classmethod
    def _registered_method(cls, name: str) -> str:
        return check_method_name(name)

    @model_validator(mode="after")
    def _quantised_base_needs_adapters(self) -> RunConfig:
        # A 4-bit base cannot be trained itself: only adapters on top of it can.
        if self.model.load_in_4bit and self.lora is None:
            raise ValueError("model.load_in_4bit needs a lora section (adapters to train)")
        if self.model.load_in_4bit and self.model.base is None:
            raise ValueError("model.load_in_4bit needs model.base (a checkpoint folder)")
        # A micro-batch of single completions splits prompt groups. DTM's per-group statistics
        # (baselines, self-normalising) read each row's whole group, which the micro-batch
        # carries (METHOD.md section 5); the baselines' advantages and best-of-group are
        # computed on the micro-batch's own groups, so they need whole ones.
        if self.train.micro_batch == "completions" and self.method != "dtm":
            raise ValueError(
                f"train.micro_batch=completions works with method dtm only (method "
                f"{self.method} needs whole prompt groups per micro-batch)"
            )
        least = METHODS[self.method].min_generations
        if self.train.num_generations < least:
            raise ValueError(
                f"method {self.method} needs train.num_generations >= {least} (got "
                f"{self.train.num_generations}): its advantages compare a prompt's completions"
            )
        if self.dtm.baseline == "leave_one_out" and self.train.num_generations < 2:
            raise ValueError("dtm.baseline=leave_one_out needs train.num_generations >= 2")
        if self.dtm.ema_student and self.dtm.teacher_update != "ema":
            raise ValueError("dtm.ema_student needs dtm.teacher_update=ema")
        return self

    @model_validator(mode="after")
    def _method_reads_its_settings(self) -> RunConfig:
        # The dtm section is DTM's alone: a baseline refuses a value set there. A baseline
        # keeps one AdamW at a constant learning rate for the whole run (its
        # authors' trainers do): the per-stage schedule's fields are written as what it does
        # (final = learning_rate, no warmup, no decay) and a value that asks for more is
        # refused, naming it, instead of being ignored.
        if METHODS[self.method].stage_schedule:
            return self
        for name, info in DTMConfig.model_fields.items():
            value = getattr(self.dtm, name)
            if value != info.get_default(call_default_factory=True):
                raise ValueError(
                    f"dtm.{name}={value!r} is read by method dtm only, not by method "
                    f"{self.method} (its options are method_options; leave dtm.{name} unset)"
                )
        train, given = self.train, self.train.model_fields_set
        constant = {
            "final_learning_rate": train.learning_rate,
            "warmup_ratio": 0.0,
            "decay_fraction": 0.0,
        }
        for name, value in constant.items():
            if name not in given:
                setattr(train, name, value)
            elif getattr(train, name) != value:
                raise ValueError(
                    f"train.{name}={getattr(train, name)!r} is not read by method "
                    f"{self.method}: it keeps one optimiser at the constant train.learning_rate "
                    f"for the whole run (set {name} to {value!r} or leave it out)"
                )
        return self

    @model_validator(mode="after")
    def _samplers_decode_the_model(self) -> RunConfig:
        # A (family, sampler mode, setting) combination the model cannot honour is refused
        # here, naming it (tiltmatch.sampling.registry.strategy_for). A base folder's family
        # is read from its config.json when the folder is there; otherwise generate refuses
        # the same combinations before its first forward.
        family = self.model.family if self.model.base is None else base_family(self.model.base)
        if family is None:
            return self
        rollouts = strategy_for(family, self.sampler, "sampler.mode", "sampler.")
        if self.eval.sampler is not None:
            strategy_for(family, self.eval.sampler, "eval.sampler.mode", "eval.sampler.")
        if self.method == "dtm" and self.dtm.states == "trajectory" and not rollouts.fixed_steps:
            raise ValueError(
                f"dtm.states=trajectory records the sampler's canvases, which needs a fixed "
                f"number of steps; sampler.mode={self.sampler.mode!r} decides it from the "
                "confidences"
            )
        return self

    def evaluation_sampler(self) -> SamplingConfig:
        """The sampler held-out evaluation decodes with: ``eval.sampler``, else the rollouts'
        ``sampler``, at ``eval.temperature``."""
        sampler = self.eval.sampler or self.sampler
        return sampler.model_copy(update={"temperature": self.eval.temperature})

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def base_record(config: RunConfig) -> GenerationRecord | None:
    """The generation record of the run's base model folder, if it has one there."""
    if config.model.base is None:
        return None
    try:
        return read_record(resolve_model_path(config.model.base))
    except OSError:
        return None  # loading the base says what is wrong with it


def fit_sampler_geometry(
    config: RunConfig, length: int, record: GenerationRecord | None = None
) -> None:
    """Derive the unset ``block_length`` / ``steps`` of ``sampler`` (and ``eval.sampler``)
    for responses of ``length`` tokens, in place (``derive_geometry`` of
    :mod:`tiltmatch.generation.geometry`: the base model's recorded sampler, else the
    defaults, kept where they fit); refuse a set value that cannot sample that length, naming
    it and the values that would (only where the sampler reads it: a block diffusion model
    decodes its own blocks, the parallel modes choose their own steps).

    A value given in the config (or already derived: assignment marks it set) is never
    changed, so a resumed run, whose ``config.yaml`` holds every field, keeps its geometry.
    """
    preferred, preferred_length = DEFAULT_GEOMETRY, None
    if record is not None:
        block, steps = record.sampler.get("block_length"), record.sampler.get("steps")
        if isinstance(block, int) and isinstance(steps, int) and block > 0 and steps > 0:
            preferred, preferred_length = Geometry(block, steps), record.response_length
    family = config.model.family if config.model.base is None else base_family(config.model.base)
    for section, sampling in (("sampler", config.sampler), ("eval.sampler", config.eval.sampler)):
        if sampling is None:
            continue
        given = sampling.model_fields_set
        geometry = derive_geometry(
            length,
            sampling.block_length if "block_length" in given else None,
            sampling.steps if "steps" in given else None,
            preferred,
            preferred_length,
        )
        try:
            reads = strategy_for(family or DEFAULT_FAMILY, sampling, f"{section}.mode").reads
        except SamplerRefused:
            reads = frozenset()  # loading the model names the combination it cannot decode
        block = geometry.block_length if "block_length" in reads else length
        checked = Geometry(block, geometry.steps if "steps" in reads else max(1, length // block))
        names = ("task_options.response_length", f"{section}.block_length", f"{section}.steps")
        if problem := geometry_problem(length, checked, names, more_steps_than_tokens=False):
            raise ConfigError(problem)
        if "block_length" not in given:
            sampling.block_length = geometry.block_length
        if "steps" not in given:
            sampling.steps = geometry.steps


def config_fields(
    model: type[BaseModel] | None = None, prefix: str = "", seen: set[type] | None = None
) -> list[tuple[str, Any, str]]:
    """Every field of the run config (sections opened): (dotted path, default, description),
    in the order a config file lists them. An optional section (``lora``) is opened too; one
    whose fields are listed already (``eval.sampler``: a ``sampler`` section) is one row."""
    seen = set() if seen is None else seen
    out: list[tuple[str, Any, str]] = []
    for name, info in (model or RunConfig).model_fields.items():
        path = f"{prefix}{name}"
        kinds = typing.get_args(info.annotation) or (info.annotation,)
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if nested and nested[0] not in seen:  # a section: its fields
            seen.add(nested[0])
            if info.default is None:
                out.append((path, None, (info.description or "") + " (unset: none)"))
            out += config_fields(nested[0], f"{path}.", seen)
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        described = info.description or ""
        if nested:
            described += f" (a section of the same fields as {nested[0].__name__}'s)"
        out.append((path, default, described.strip()))
    return out


def speak_names(message: str, names: dict[str, str]) -> str:
    """``message`` with each setting name of ``names`` (a config path such as
    ``sampler.steps``, or a Python name) replaced by the caller's own (the API's
    ``diffusion_steps``, the command line's ``--steps``), whole names only."""
    for name in sorted(names, key=len, reverse=True):  # longer paths before their tails
        pattern = rf"(?<![\w.-]){re.escape(name)}(?![\w])"
        message = re.sub(pattern, names[name].replace("\\", "\\\\"), message)
    return message


def _current_sections(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the earlier field names of its sections moved to the current ones."""
    sections = {old.partition(".")[0] for old in RENAMED}
    out = dict(data)
    for section in sections:
        if isinstance(out.get(section), dict):
            try:
                out[section] = _renamed(out[section], section)
            except ValueError as err:
                raise ConfigError(f"invalid configuration: {section}: {err}") from None
    return out


def _current_override(keys: list[str], value: Any) -> list[tuple[list[str], Any]]:
    """An override of a field renamed since, as overrides of its current name(s), so that it
    replaces the value a config file gives that field (a resume's ``config.yaml``)."""
    old = ".".join(keys)
    if old not in RENAMED:
        return [(keys, value)]
    news = [n.split(".") for n in RENAMED[old].split(", ")]
    warnings.warn(f"{old} is deprecated: write {RENAMED[old]}", DeprecationWarning, stacklevel=3)
    if len(news) == 1:
        return [(news[0], value)]
    if not (isinstance(value, list | tuple) and len(value) == len(news)):
        raise ConfigError(f"{old} must be a list of {len(news)} numbers, got {value!r}")
    return list(zip(news, value, strict=True))


def build_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """A validated :class:`RunConfig` from defaults, a base dict, a YAML file and overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        loaded = read_config_file(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, not {type(loaded).__name__}"
            )
        data = merge_settings(data, loaded)
    data = _current_sections(data)  # a file's earlier names first, so overrides replace them
    for text in overrides or []:
        for keys, value in _current_override(*parse_override(text)):
            node = data
            for k in keys[:-1]:
                child = node.setdefault(k, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"override {text!r}: {k!r} is not a section")
                node = child
            node[keys[-1]] = value
    if problems := numeric_problems(RunConfig, data):
        if len(problems) == 1:
            raise ConfigError("invalid configuration: " + problems[0].strip())
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_with_hints(err)) from None


#: names a TRL user may reach for that the run config has no field for: what to set instead
NOT_HERE: dict[str, str] = {
    "train.max_steps": "a run's length is its annealing path: dtm.a_end / dtm.h stages of "
    "dtm.steps_per_h updates (train.max_stages caps the stages)",
    "train.num_train_epochs": "a run's length is its annealing path: dtm.a_end / dtm.h stages "
    "of dtm.steps_per_h updates",
    "train.warmup_steps": "set train.warmup_ratio (a fraction of each stage's updates)",
    "train.beta": "DTM's KL price is 1 / dtm.a_end (METHOD.md section 2); diffu-GRPO's KL "
    "weight is method_options.beta_kl",
    "train.max_completion_length": "the response length is task_options.response_length",
    "sampler.diffusion_steps": "the sampler's steps are sampler.steps",
}


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """The field names of the section at ``loc`` (a validation error's location, less its
    last part) in the run config; none where ``loc`` is a free mapping."""
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        kinds = typing.get_args(field.annotation) or (field.annotation,)
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def describe_with_hints(err: ValidationError) -> str:
    """The config's problems, one line each; an unknown field names the nearest known one
    (``dtm.hh: unknown field (did you mean dtm.h?)``) or, for a TRL name the config has no
    field for, what to set instead."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc)
        if e["type"] == "value_error" and where:  # a section's own check: its message
            lines.append(f"  {where}: " + str(e["msg"]).removeprefix("Value error, "))
            continue
        if e["type"] != "extra_forbidden":
            lines += describe_validation_error(_one_error(err, e))
            continue
        prefix = ".".join(str(p) for p in loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), _section_fields(loc[:-1]), n=1)
        if where in NOT_HERE:
            hint = f" ({NOT_HERE[where]})"
        elif near:
            hint = f" (did you mean {prefix + '.' if prefix else ''}{near[0]}?)"
        else:
            hint = " (tiltmatch config --list shows every field)"
        lines.append(f"  {where}: unknown field{hint}")
    if len(lines) == 1:
        return "invalid configuration: " + lines[0].strip()
    return "invalid configuration:\n" + "\n".join(lines)


def _one_error(err: ValidationError, error: Any) -> ValidationError:
    """A :class:`ValidationError` holding only ``error`` (described by the settings' rules)."""
    return ValidationError.from_exception_data(err.title, [error])  # type: ignore[list-item]
