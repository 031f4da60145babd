"""Build a run from its configuration and execute it (used by ``tiltmatch train`` and the demo)."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import PreTrainedModel

from tiltmatch.baselines import BaselineOptions
from tiltmatch.destination import PENDING, Destination, pending_holder
from tiltmatch.generation.card import model_card
from tiltmatch.model_checks import check_finite_weights, check_model_meta, check_sampler_family
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.loading import load_model_and_codec, resolve_model_path
from tiltmatch.objective import Objective
from tiltmatch.preflight import (
    Heartbeat,
    preflight_run,
    preflight_run_before_load,
    training_copies,
)
from tiltmatch.settings import ConfigError, describe_validation_error, numeric_problems
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Task
from tiltmatch.tasks.dataset import check_prompts
from tiltmatch.training.callbacks import ProgressHeartbeat, TrainerCallback
from tiltmatch.training.checkpoint import CheckpointError, checkpoint_meta, find_checkpoint
from tiltmatch.training.config import RENAMED, RunConfig, base_record, fit_sampler_geometry
from tiltmatch.training.distributed import (
    close_process_group,
    process_context,
    world_size_from_env,
)
from tiltmatch.training.methods import METHODS
from tiltmatch.training.pair import CopiedPair, DenoiserPair
from tiltmatch.training.parallel import make_parallel
from tiltmatch.training.plan import report_progress
from tiltmatch.training.saved_model import card_facts, save_final
from tiltmatch.training.trainer import CHECKPOINT, Trainer

__all__ = ["build_trainer", "card_facts", "run_training", "save_final"]

STAGES = "stages.jsonl"
#: what a refusal to write into a non-empty run folder suggests
RUN_HINT = (
    "pass --resume to continue it, --overwrite to replace it (the old folder is kept aside "
    "until the new run's first checkpoint), or choose another --out"
)


def config_sources(config: RunConfig) -> list[Path]:
    """The files and folders a run reads (its base model, datasets, reward files and
    models): its destination may be none of them, nor hold one."""
    found: list[Path] = []
    if config.model.base is not None and not config.model.base.startswith("shipped:"):
        found.append(Path(config.model.base))

    def add(value: Any) -> None:
        if isinstance(value, str) and any(c in value for c in "/.~"):
            for candidate in (value, value.rpartition(":")[0]):  # file.py:function
                if candidate and Path(candidate).expanduser().exists():
                    found.append(Path(candidate).expanduser())
        elif isinstance(value, dict):
            for item in value.values():
                add(item)
        elif isinstance(value, list | tuple):
            for item in value:
                add(item)

    add([config.train.train_split, config.eval.split, config.task, config.task_options])
    return found


def run_destination(
    out_dir: Path, config: RunConfig, overwrite: bool = False, writer: bool = True
) -> Destination:
    """The :class:`~tiltmatch.destination.Destination` of a new run in ``out_dir``."""
    return Destination(
        out_dir,
        what="run",
        overwrite=overwrite,
        sources=config_sources(config),
        hint=RUN_HINT,
        writer=writer,
    )


def check_resumable(out_dir: Path) -> None:
    """Refuse ``--resume`` on a folder without a checkpoint, saying why there is none."""
    holder = pending_holder(out_dir)
    if holder is not None:
        raise CheckpointError(f"cannot resume {out_dir}: another tiltmatch process is writing it")
    if find_checkpoint(out_dir / CHECKPOINT) is not None:
        check_stage_log(out_dir / STAGES)
        return
    if (out_dir / PENDING).exists():
        raise CheckpointError(
            f"nothing to resume in {out_dir}: its run stopped before its first checkpoint; "
            "start it again without --resume (the folder is reused)"
        )
    raise CheckpointError(f"cannot resume: no checkpoint in {out_dir}")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Dotted fields whose values differ between two dumped configs, sorted."""
    a, b = _flatten(stored), _flatten(requested)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _allowed(field: str, allow: Iterable[str]) -> bool:
    return any(field == name or field.startswith(name + ".") for name in allow)


def check_resume_config(
    out_dir: Path, requested: RunConfig, allow_change: Iterable[str] = ()
) -> None:
    """Refuse to resume ``out_dir`` under a config other than the one it was started with.

    The stored config is the checkpoint's (meta.json: what its weights were trained under)
    and ``config.yaml``; every field that differs from ``requested`` must be named in
    ``allow_change`` (a field, or a whole section such as ``train``). Nothing is written.
    """
    allow = [renamed for name in allow_change for renamed in current_names(name)]
    want = requested.model_dump(mode="json")
    sources: list[tuple[str, dict[str, Any]]] = []
    meta = checkpoint_meta(out_dir / CHECKPOINT)
    if meta is None:
        raise CheckpointError(f"cannot resume: no checkpoint in {out_dir}")
    if isinstance(meta.get("config"), dict):
        sources.append((f"{CHECKPOINT}/meta.json", _current_fields(meta["config"])))
    saved = out_dir / "config.yaml"
    if saved.is_file():
        from tiltmatch.training.config import build_config

        sources.append(("config.yaml", build_config(saved).model_dump(mode="json")))
    for source, stored in sources:
        changed = [f for f in config_differences(stored, want) if not _allowed(f, allow)]
        if changed:
            old, new = _flatten(stored), _flatten(want)
            listed = ", ".join(
                f"{f} {old.get(f, '<absent>')!r} -> {new.get(f, '<absent>')!r}" for f in changed
            )
            raise ConfigError(
                f"cannot resume {out_dir}: the config differs from its {source} in "
                f"{len(changed)} field(s): {listed}; pass --allow-change FIELD for each change "
                "you mean, or start a new run"
            )


def current_names(name: str) -> list[str]:
    """A config field's current names (a field renamed since, ``train.checkpoint_every``,
    is ``train.save_steps``; ``train.adam_betas`` is both betas)."""
    return RENAMED[name].split(", ") if name in RENAMED else [name]


def _current_fields(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's dumped config with fields renamed since under their current names (a
    run checkpointed before a rename resumes without a spurious difference)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return RunConfig.model_validate(stored).model_dump(mode="json")
    except ValidationError:
        return stored  # compared as it is: its differences are listed


def _stage_lines(path: Path) -> list[str]:
    """The records of a run log, split on newlines only (a JSON string may hold U+2028)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(
            f"run log {path} is not UTF-8 text (byte {err.start}: {err.reason}); it is "
            "damaged: move it aside to resume"
        ) from None
    return text.split("\n")


def check_stage_log(path: Path) -> None:
    """A resume reads and cuts ``stages.jsonl``: refuse one that is not a JSON-lines log."""
    if not path.is_file():
        return
    for lineno, line in enumerate(_stage_lines(path), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            record = err
        if not isinstance(record, dict):
            raise CheckpointError(
                f"run log {path}, line {lineno}: not a JSON object (the file is damaged: "
                "move it aside to resume)"
            )


def truncate_stage_log(out_dir: Path, stages: int) -> None:
    """Keep the first ``stages`` records of ``stages.jsonl`` (the stages the checkpoint holds).

    A run killed between a stage's log line and its checkpoint repeats that stage on
    resume; without this the stage would be logged twice.
    """
    path = out_dir / STAGES
    if not path.is_file():
        return
    lines = [line for line in _stage_lines(path) if line.strip()]
    if len(lines) <= stages:
        return
    tmp = path.with_name(f".{STAGES}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines[:stages]), encoding="utf-8")
    os.replace(tmp, path)


def method_options(config: RunConfig) -> BaselineOptions | None:
    """The validated ``method_options`` of ``config.method``; None for DTM (its settings are
    the ``dtm`` section). Unknown names and out-of-range values are one :class:`ConfigError`
    naming them, checked by the baseline's own options model."""
    method = METHODS[config.method]  # the name was checked against the registry by the config
    options = method.options_class()
    if options is None:
        if config.method_options:
            names = ", ".join(sorted(config.method_options))
            raise ConfigError(
                f"method {config.method!r} takes no method_options (got {names}); set its "
                "options in the 'dtm' section"
            )
        return None
    if problems := numeric_problems(options, config.method_options, "method_options."):
        head = f"invalid method_options for method {config.method!r}:"
        raise ConfigError("\n".join([head, *problems]))
    try:
        validated: BaselineOptions = options.model_validate(config.method_options)
    except ValidationError as err:
        known = ", ".join(options.model_fields)
        lines = describe_validation_error(err, unknown=f"unknown option (known: {known})")
        raise ConfigError(
            "\n".join([f"invalid method_options for method {config.method!r}:", *lines])
        ) from None
    return validated


def make_objective(config: RunConfig, mask_token_id: int) -> Objective:
    """The :class:`Objective` of ``config.method`` (DTM or a baseline), options validated.

    Everything else (learning rate, rollouts, buffer, sampler, evaluation) comes from
    the shared sections of the config: the methods differ only in their loss (METHOD.md
    section 8).
    """
    options = method_options(config)
    objective = METHODS[config.method].objective_class()
    made: Objective = objective(config.dtm if options is None else options, mask_token_id)
    return made


def needs_reference(config: RunConfig) -> bool:
    """Whether the run needs a frozen copy of the base model (diffu-GRPO's KL term)."""
    # The mask id plays no part in this decision; any id builds the objective.
    return make_objective(config, mask_token_id=0).needs_reference


def make_pair(config: RunConfig, model: PreTrainedModel, codec: PromptCodec) -> DenoiserPair:
    """Student/teacher pair: two LoRA adapters on one frozen base when ``config.lora`` is
    set (METHOD.md section 6's recipes), else full copies (small models)."""
    if config.lora is not None:
        from tiltmatch.training.lora import LoRAPair

        return LoRAPair.from_config(config, model, codec.mask_token_id, codec.pad_token_id)
    student = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
    ema = config.dtm.ema_decay if config.dtm.teacher_update == "ema" else None
    return CopiedPair(
        student,
        ema_decay=ema,
        keep_reference=needs_reference(config),
        ema_student=config.dtm.ema_student,
    )


def check_family_states(config: RunConfig, model: PreTrainedModel) -> None:
    """Refuse DTM states a block diffusion model cannot match (docs/families.md).

    A block-causal denoiser can represent the tilted posterior only at states
    whose later blocks are fully masked: block states and the block sampler's
    own canvases are such states, random masks are not. A family's spec may refuse
    more (``FamilySpec.refuses_states``: BD3-LM takes block states only).
    """
    from tiltmatch.models.family import family_of
    from tiltmatch.models.registry import family_spec

    family = family_of(model.config)
    block_model = family.block_size is not None
    states = config.dtm.states
    spec = family_spec(family.name)
    if config.method == "dtm" and states in spec.refuses_states:
        raise ValueError(
            f"dtm.states={states!r} with a {spec.label} model: {spec.refuses_states[states]} "
            "(see docs/families.md)"
        )
    if config.method == "dtm" and block_model and states not in ("block", "trajectory"):
        raise ValueError(
            f"dtm.states={states!r} with a block diffusion model: use dtm.states=block "
            "or trajectory (states whose later blocks are masked; see docs/families.md)"
        )
    if config.method == "dtm" and not block_model and states == "block":
        raise ValueError("dtm.states=block is for block diffusion models (model.family)")


def build_trainer(
    config: RunConfig,
    out_dir: Path,
    quiet: bool = False,
    task: Task | None = None,
    loaded: tuple[PreTrainedModel, PromptCodec] | None = None,
) -> tuple[Trainer, Task, PromptCodec]:
    """Task, model, codec, pair, objective and trainer of a configuration.

    ``task`` and ``loaded`` (a model and its codec) are given by the Python API
    (:mod:`tiltmatch.api`) when the user passes objects instead of names.
    """
    check_launch_devices()
    torch.manual_seed(config.seed)
    context = process_context()
    if context.fsdp is not None and config.model.load_in_4bit:
        raise ValueError(
            "model.load_in_4bit cannot be sharded with FSDP (bitsandbytes' 4-bit weights are "
            "not DTensors): launch with configs/accelerate/ddp.yaml"
        )
    check_quantisation(config)
    if task is None:
        task = get_task(config.task, **config.task_options)
    check_response_length(task, "task_options.response_length")
    fit_sampler_geometry(config, task.response_length, base_record(config))
    copies = training_copies(_weight_copies(config), config.lora is not None)
    if context.fsdp is not None:  # every weight, gradient and moment is sharded over the ranks
        copies /= context.world_size
    probe = preflight_run_before_load(config, task, copies)
    model, codec = _load_checked(config, task, loaded, quiet)
    check_prompts(task, codec)
    preflight_run(config, task, codec, model, probe, copies)
    if config.model.base is not None and config.model.dtype != "float32":
        from tiltmatch.models.quantisation import prepare_base_model

        model = prepare_base_model(model, config.model)
    if context.fsdp is None:
        model.to(context.device)  # type: ignore[arg-type]  # transformers' decorated .to
    # Under FSDP the pair stays on the CPU until sharded: fully_shard moves one layer at a
    # time to the GPU and shards it, so no GPU ever holds the whole student, teacher and
    # reference copies at once.
    check_family_states(config, model)
    pair = make_pair(config, model, codec)
    objective = make_objective(config, codec.mask_token_id)
    parallel = make_parallel(context)  # one process, data-parallel or sharded
    with Heartbeat(f"building the {task.name} prompt pool", quiet):
        trainer = Trainer(config, task, codec, pair, objective, out_dir, quiet, parallel)
    if not trainer.quiet:  # elapsed-time bars around the rollouts and evaluations, the plan
        trainer.add_callback(ProgressHeartbeat())
        report_progress(trainer)  # the plan, then updates done / total and the time left
    return trainer, task, codec


def check_launch_devices() -> None:
    """Refuse a multi-GPU launch (``accelerate launch`` with a ``MULTI_GPU`` or FSDP config)
    on a machine with fewer CUDA devices than the processes it starts here: it would run as
    that many CPU processes, silently. ``accelerate launch --cpu`` (or ``torchrun``) asks for
    CPU processes and is not refused."""
    world = world_size_from_env()
    launched_for_gpus = "ACCELERATE_MIXED_PRECISION" in os.environ and not os.environ.get(
        "ACCELERATE_USE_CPU"
    )
    if world <= 1 or not launched_for_gpus:
        return
    here = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < here:
        raise ConfigError(
            f"the launch starts {here} GPU processes on this machine (accelerate's multi-GPU "
            f"config, num_processes {world}) but {visible} CUDA device(s) are visible: set "
            "num_processes to the number of GPUs, or launch CPU processes with "
            "'accelerate launch --cpu'"
        )


def check_quantisation(config: RunConfig) -> None:
    """Refuse ``model.load_in_4bit`` where it cannot load: without bitsandbytes (the
    ``quant`` extra) or without a CUDA GPU (bitsandbytes' 4-bit layers run there only)."""
    if not config.model.load_in_4bit:
        return
    from tiltmatch.models.quantisation import bitsandbytes_available

    if not bitsandbytes_available():
        raise ConfigError(
            "model.load_in_4bit needs bitsandbytes: pip install 'tiltmatch[quant]' (or set "
            "model.load_in_4bit=false: a bfloat16 base with LoRA)"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            "model.load_in_4bit needs a CUDA GPU (bitsandbytes' 4-bit layers); none is "
            "visible: set model.load_in_4bit=false"
        )


def check_response_length(task: Task, setting: str) -> None:
    """Refuse a task whose responses have no tokens (a task plugin or option may allow it;
    every sampler and loss divides by it)."""
    length = task.response_length
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(
            f"{setting}: task {task.name} needs responses of at least 1 token, got {length!r}"
        )


def _weight_copies(config: RunConfig) -> int:
    """Weight copies of full fine-tuning: student and teacher, a frozen reference for
    diffu-GRPO's KL term, an EMA teacher."""
    ema = config.dtm.teacher_update == "ema"
    return 2 + int(needs_reference(config)) + int(ema)


def _load_checked(
    config: RunConfig,
    task: Task,
    loaded: tuple[PreTrainedModel, PromptCodec] | None,
    quiet: bool,
) -> tuple[PreTrainedModel, PromptCodec]:
    """The run's model and codec (loaded, or as given), refused when damaged: a folder's
    metadata, weights that are not finite, a sampler mode the family has none of."""
    where = "the given model"
    if loaded is not None:
        model, codec = loaded
    else:
        if config.model.base is not None:
            where = f"the model in {config.model.base}"
            check_model_meta(resolve_model_path(config.model.base))
        with Heartbeat("loading the model", quiet):
            model, codec = load_model_and_codec(config.model, task, seed=config.seed)
    if config.model.base is not None or loaded is not None:
        check_finite_weights(model, where)
    check_sampler_family(model, config.sampler, "sampler.mode", "sampler.")
    if config.eval.sampler is not None:
        check_sampler_family(model, config.eval.sampler, "eval.sampler.mode", "eval.sampler.")
    return model, codec


def run_training(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    allow_change: Iterable[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or resume) a run in ``out_dir``; returns its history and final metrics.

    A resume must ask for the config the run was started with, except for the fields named
    in ``allow_change`` (:func:`check_resume_config`), and writes ``config.yaml`` only with
    its first checkpoint. A new run checks its destination (:func:`run_destination`),
    builds and checks everything else, and only then takes the folder: with ``overwrite``
    the old one is kept aside until the new run's first checkpoint and put back if the
    run fails before it. Every refusal happens before anything is written.
    """
    out_dir = Path(out_dir)
    check_launch_devices()  # before anything asks the launcher's process group
    destination = None
    if resume:
        check_resumable(out_dir)
        check_resume_config(out_dir, config, allow_change)
    else:
        destination = run_destination(out_dir, config, overwrite, writer=_is_main_process())
        destination.check()
    trainer, _task, codec = build_trainer(config, out_dir, quiet=quiet)
    if resume:
        trainer.load(out_dir / CHECKPOINT)
        if trainer.parallel.is_main:
            truncate_stage_log(out_dir, len(trainer.history))
    return train_to_end(trainer, codec, destination)


def _is_main_process() -> bool:
    return process_context().is_main


def train_to_end(
    trainer: Trainer, codec: PromptCodec, destination: Destination | None
) -> dict[str, Any]:
    """Run ``trainer`` to its end and save the final model and metrics (``tiltmatch train``).

    ``destination``: a new run's folder, taken now and committed at the first checkpoint
    (None: a resumed run, whose ``config.yaml`` is rewritten with its first checkpoint).
    """
    out_dir = trainer.out_dir
    if destination is None:
        trainer.config_at_open = False
        trainer.add_callback(WriteConfigOnce())
    try:
        with committed_at_first_checkpoint(trainer, destination):
            history = trainer.train()
            final = history[-1] if history else {}
            whole = trainer.parallel.student_weights_to_save(trainer.pair)  # collective (FSDP)
            if trainer.parallel.is_main:  # one writer under a multi-process launch
                save_final(trainer, codec, out_dir / "final", whole)
                card = model_card(card_facts(trainer, out_dir / "final", final))
                (out_dir / "final" / "README.md").write_text(card, encoding="utf-8")
                (out_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
    finally:
        close_process_group()
    return {"history": history, "final": final, "trainer": trainer}


def committed_at_first_checkpoint(
    trainer: Trainer, destination: Destination | None
) -> contextlib.AbstractContextManager[Any]:
    """``destination`` as a context (taken on entry, put back on an error before it is
    committed), committed by ``trainer``'s first checkpoint; a no-op context for None."""
    if destination is None:
        return contextlib.nullcontext()
    trainer.add_callback(CommitAtSave(destination))
    return destination


class CommitAtSave(TrainerCallback):
    """Commits a run's :class:`~tiltmatch.destination.Destination` when a checkpoint is
    written (the first commit drops the old folder kept aside; later ones do nothing)."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    def on_save(self, trainer: Trainer, path: Path) -> None:
        self.destination.commit()


class WriteConfigOnce(TrainerCallback):
    """Writes ``config.yaml`` after a resumed run's first checkpoint (main process only)."""

    def __init__(self) -> None:
        self.done = False

    def on_save(self, trainer: Trainer, path: Path) -> None:
        if not self.done and trainer.parallel.is_main:
            trainer.write_config()
        self.done = True
