"""One typed, validated run configuration (YAML file and/or ``--set`` overrides).

Unknown fields and out-of-range values are rejected with a message that names
them. Names follow TRL's GRPO vocabulary where they mean the same thing
(``num_generations``, ``learning_rate``, ``gradient_accumulation_steps``,
``max_grad_norm``); the DTM fields follow METHOD.md's symbols (``c``, ``h``,
``a_end``, ``steps_per_h``, ``rho``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tiltmatch.dtm.options import Baseline
from tiltmatch.models.dtypes import DTypeName
from tiltmatch.models.folders import base_family
from tiltmatch.models.registry import DEFAULT_FAMILY, check_family_name
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.registry import strategy_for
from tiltmatch.training.methods import check_method_name

Tracker = Literal["tensorboard", "wandb", "trackio", "none", "all"]


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending field."""


class _Strict(BaseModel):
    # allow_inf_nan=False: an infinite or NaN number is never a meaningful setting (dtm.a_end=inf
    # would anneal forever, a NaN beta poisons every update), so it is refused by name.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


#: Largest prompt pool or held-out set a config may ask for: generating more synthetic examples
#: than this takes long enough to look like a hang, and no recipe here needs as many.
MAX_EXAMPLES = 1_000_000
#: Seeds must fit torch.manual_seed (a 64-bit integer); non-negative so every RNG takes them.
MAX_SEED = 2**63 - 1
#: A config file larger than this is not a config (1 MiB).
MAX_CONFIG_BYTES = 1 << 20
#: Nodes a YAML document may expand to through aliases: an alias bomb of a few hundred bytes
#: expands to billions; real configs have a few hundred nodes.
MAX_YAML_NODES = 100_000


class ModelConfig(_Strict):
    """The denoiser: a base checkpoint folder, or a tiny model built from these sizes."""

    base: str | None = Field(
        None, description="folder of a base denoiser (save_pretrained layout), or 'shipped:maze'"
    )
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=8)
    family: str = Field(
        DEFAULT_FAMILY,
        description="architecture of a tiny model built from these sizes (a base folder's "
        "family is read from its files): a name in tiltmatch.models.registry.FAMILIES",
    )
    block_size: int = Field(4, ge=1, description="block size of a tiny block diffusion model")
    # Large-model settings (LLaDA-8B; METHOD.md section 6 recipes), read by
    # tiltmatch.models.quantisation and tiltmatch.training.lora.
    dtype: DTypeName = Field(
        "float32", description="dtype of the base weights (bfloat16 for LLaDA-8B)"
    )
    load_in_4bit: bool = Field(
        False, description="NF4 base via bitsandbytes (needs lora and a Llama-format folder)"
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward (non-reentrant) to save memory"
    )

    @field_validator("family")
    @classmethod
    def _registered_family(cls, name: str) -> str:
        return check_family_name(name)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        return self


class LoRAConfig(_Strict):
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


# The sampler's own configuration is the run config's ``sampler:`` section: one definition.
SamplerConfig = SamplingConfig


class DTMConfig(_Strict):
    """Discrete Tilt Matching (METHOD.md sections 4-6)."""

    c: float = Field(1.0, description="control-variate constant; 0 = plain weighted CE")
    baseline: Baseline = Field(
        "auto",
        description="reward baseline b in w_h = exp(h (r - b)) (METHOD.md section 5). Exact: "
        "auto (bound when the reward declares a lower bound, as every built-in task does, "
        "else calibrated), none (b = 0), bound (the declared lower bound), calibrated (the "
        "lowest reward of a calibration sample of the base model, drawn before training), "
        "leave_one_out (mean of the other G - 1 rewards of the prompt). BIASED, for "
        "comparison only (the minimiser moves by O(1/G)): mean, min (of the same G rewards), "
        "group_min (each group shifted up by its minimum where negative)",
    )
    reward_lower_bound: float | None = Field(
        None,
        description="a lower bound of the reward, in the reward's own units (before "
        "train.reward_scale), declared for baseline auto / bound; none: the reward's own "
        "declaration (a task's 0), if any",
    )
    calibration_prompts: int = Field(
        32,
        ge=1,
        le=MAX_EXAMPLES,
        description="baseline calibrated: training prompts (x num_generations completions) "
        "the base model samples before training to fix b",
    )
    self_normalise: bool = Field(
        False, description="w_j = G softmax_j(h r_j) per prompt group: BIASED by O(1/G)"
    )
    first_order: bool = Field(False, description="use w_h - 1 ~ h (r - b) (comparison only)")
    # "block": block diffusion models only (the model's blocks; docs/families.md)
    states: Literal["random", "sar", "trajectory", "block"] = "random"
    sar_block_length: int = Field(4, ge=1)
    inverse_t_weight: bool = True
    schedule: Literal["fixed", "geometric", "adaptive", "none"] = "fixed"
    h: float = Field(2.0, gt=0)
    geometric_ratio: float = Field(1.5, gt=0)
    h_max: float = Field(4.0, gt=0)
    rho: float = Field(0.5, gt=0, lt=1)
    a_end: float = Field(10.0, gt=0)
    steps_per_h: int = Field(60, ge=1)
    teacher_update: Literal["student", "ema"] = "student"
    ema_decay: float = Field(0.95, ge=0, lt=1)
    ema_student: bool = Field(
        False,
        description="with teacher_update=ema: at a phase boundary the student takes the EMA "
        "weights too (the published Countdown recipe), not only the teacher",
    )


class TrainConfig(_Strict):
    """Optimisation, rollouts and the replay buffer."""

    # AdamW moves each weight by about the learning rate per step: above 1 no recipe makes
    # sense, and 1e30 turns every weight into 1e30 on the first update.
    learning_rate: float = Field(3e-4, gt=0, le=1)
    final_learning_rate: float = Field(1e-4, ge=0, le=1)
    warmup_fraction: float = Field(0.05, ge=0, le=1)
    decay_fraction: float = Field(0.1, ge=0, le=1)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    reward_scale: float = Field(
        1.0, gt=0, description="factor on task rewards before weighting (Sudoku recipe: 2)"
    )
    num_generations: int = Field(8, ge=1, description="completions per prompt, G")
    # Under data parallelism (tiltmatch.training.parallel) the batch and buffer sizes are per
    # process, like TRL's per_device_* sizes: the global batch is world_size times larger.
    prompts_per_batch: int = Field(8, ge=1, description="prompts per micro-batch (per process)")
    # METHOD.md section 6: the published recipes' micro-batch is single completions drawn
    # without replacement from the buffer across the accumulation window ("completions");
    # "prompts" draws whole groups of G completions per prompt (the small benchmarks' way).
    micro_batch: Literal["prompts", "completions"] = Field(
        "prompts", description="what a micro-batch is made of: whole prompt groups or completions"
    )
    per_device_train_batch_size: int | None = Field(
        None,
        ge=1,
        description="completions per micro-batch (per process) when micro_batch="
        "completions (TRL's name)",
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
    checkpoint_every: int = Field(50, ge=1, description="updates between checkpoints")
    report_to: list[Tracker] = Field(
        default_factory=lambda: list[Tracker](["tensorboard"]),
        description="experiment trackers (TRL's name): tensorboard, wandb, trackio, all or none",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, value: Any) -> Any:
        # "wandb" or "tensorboard,wandb" (a YAML or --set string) reads as a list.
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        # AdamW needs 0 <= beta < 1 for both moments (beta = 1 never forgets, > 1 diverges).
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each beta must be in [0, 1), got {list(betas)}")
        return betas

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
        elif self.per_device_train_batch_size is not None:
            raise ValueError(
                "per_device_train_batch_size is read only with micro_batch=completions "
                "(with micro_batch=prompts a micro-batch is prompts_per_batch whole groups)"
            )
        return self


class EvalConfig(_Strict):
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


class RunConfig(_Strict):
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
        if self.dtm.baseline == "leave_one_out" and self.train.num_generations < 2:
            raise ValueError("dtm.baseline=leave_one_out needs train.num_generations >= 2")
        if self.dtm.ema_student and self.dtm.teacher_update != "ema":
            raise ValueError("dtm.ema_student needs dtm.teacher_update=ema")
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

    def to_yaml(self) -> str:
        """The resolved configuration as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def describe_validation_error(err: ValidationError, unknown: str = "unknown field") -> list[str]:
    """One line per problem, naming the field: ``  dtm.hh: unknown field``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: {unknown}")
        elif not where:  # a check across sections: its message names the fields itself
            lines.append("  " + str(e["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return lines


def validation_reasons(err: ValidationError) -> str:
    """A model's own checks failed: their messages, ``; ``-joined on one line (no field
    paths, no pydantic boilerplate), for a refusal that names what is wrong."""
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())


def _describe(err: ValidationError) -> str:
    lines = describe_validation_error(err)
    if len(lines) == 1:  # one problem: one line, naming the field
        return "invalid configuration: " + lines[0].strip()
    return "invalid configuration:\n" + "\n".join(lines)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes ``node`` stands for once every alias is expanded, counted up to ``limit``.

    An alias is the same node object reused, so sizes are memoised by identity: the count
    costs one visit per distinct node however many times aliases repeat it.
    """
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        sizes[key] = limit + 1  # a recursive alias expands without end
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(node)


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` with its alias expansion bounded.

    PyYAML expands aliases (``*a``) while constructing: a 500-byte "billion laughs"
    document becomes gigabytes. The document is composed first (aliases still shared), its
    expanded size counted, and refused above :data:`MAX_YAML_NODES` naming ``source``.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    if node is None:
        return None
    if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(
            f"{source}: YAML aliases expand to more than {MAX_YAML_NODES} nodes "
            "(an alias bomb?); write the values out"
        )
    return yaml.safe_load(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"dtm.h=2"`` -> (["dtm", "h"], 2); the value is read as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = safe_yaml(raw, f"override {key.strip()!r}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def parse_task_options(items: list[str]) -> dict[str, Any]:
    """``["size=5", "wall_density=0.1"]`` -> ``{"size": 5, "wall_density": 0.1}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        keys, value = parse_override(item)
        out[".".join(keys)] = value
    return out


def build_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """A validated :class:`RunConfig` from defaults, a base dict, a YAML file and overrides."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        loaded = _read_config_file(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping, not {type(loaded).__name__}"
            )
        data = _merge(data, loaded)
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def _read_config_file(path: Path) -> Any:
    """The YAML document of a config file; missing, huge, binary or hostile files refused."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
    try:
        return safe_yaml(text, f"config file {path}")
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
