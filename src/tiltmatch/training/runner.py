"""Build a run from its configuration and execute it (used by ``tiltmatch train`` and the demo)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from transformers import PreTrainedModel

from tiltmatch.baselines import BaselineOptions
from tiltmatch.config import ConfigError, RunConfig, describe_validation_error
from tiltmatch.models.codecs import CharTokenizer, PromptCodec
from tiltmatch.models.denoiser import MaskedDenoiser, save_denoiser
from tiltmatch.models.loading import load_model_and_codec
from tiltmatch.objective import Objective
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Task
from tiltmatch.tasks.dataset import check_prompts
from tiltmatch.training.checkpoint import CheckpointError, checkpoint_meta, find_checkpoint
from tiltmatch.training.distributed import (
    close_process_group,
    process_context,
)
from tiltmatch.training.methods import METHODS
from tiltmatch.training.pair import CopiedPair, DenoiserPair
from tiltmatch.training.parallel import make_parallel
from tiltmatch.training.trainer import CHECKPOINT, Trainer

#: What a training run writes into its folder (the demo adds its report files).
RUN_FILES = (
    "config.yaml",
    "stages.jsonl",
    CHECKPOINT,
    "final",
    "final_metrics.json",
    "tensorboard",
)
STAGES = "stages.jsonl"


def run_files(out_dir: Path, names: Iterable[str] = RUN_FILES) -> list[str]:
    """Which of a run's files ``out_dir`` already holds (a killed save's siblings count)."""
    found = [n for n in names if (out_dir / n).exists()]
    if CHECKPOINT not in found and find_checkpoint(out_dir / CHECKPOINT) is not None:
        found.append(CHECKPOINT)
    return found


def refuse_overwrite(out_dir: Path, names: Iterable[str] = RUN_FILES, what: str = "run") -> None:
    """:class:`FileExistsError` when ``out_dir`` already holds a run (names what it holds)."""
    if found := run_files(out_dir, names):
        raise FileExistsError(
            f"{out_dir} already holds a {what} ({', '.join(found)}); pass --overwrite to "
            "replace it or choose another --out"
        )


def clear_run(out_dir: Path, names: Iterable[str] = RUN_FILES) -> None:
    """Remove a run's files from ``out_dir`` (``--overwrite``); other files stay."""
    for name in [*names, *(p.name for p in out_dir.glob(f".{CHECKPOINT}.*-*"))]:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


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
    allow = list(allow_change)
    want = requested.model_dump(mode="json")
    sources: list[tuple[str, dict[str, Any]]] = []
    meta = checkpoint_meta(out_dir / CHECKPOINT)
    if meta is None:
        raise CheckpointError(f"cannot resume: no checkpoint in {out_dir}")
    if isinstance(meta.get("config"), dict):
        sources.append((f"{CHECKPOINT}/meta.json", meta["config"]))
    saved = out_dir / "config.yaml"
    if saved.is_file():
        from tiltmatch.config import build_config

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


def truncate_stage_log(out_dir: Path, stages: int) -> None:
    """Keep the first ``stages`` lines of ``stages.jsonl`` (the stages the checkpoint holds).

    A run killed between a stage's log line and its checkpoint repeats that stage on
    resume; without this the stage would be logged twice.
    """
    path = out_dir / STAGES
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) <= stages:
        return
    tmp = path.with_name(f".{STAGES}.tmp")
    tmp.write_text("".join(lines[:stages]), encoding="utf-8")
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
    own canvases are such states, random masks are not.
    """
    from tiltmatch.models.family import family_of

    block_model = family_of(model.config).block_size is not None
    states = config.dtm.states
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
    torch.manual_seed(config.seed)
    context = process_context()
    if context.fsdp is not None and config.model.load_in_4bit:
        raise ValueError(
            "model.load_in_4bit cannot be sharded with FSDP (bitsandbytes' 4-bit weights are "
            "not DTensors): launch with configs/accelerate/ddp.yaml"
        )
    if task is None:
        task = get_task(config.task, **config.task_options)
    if loaded is None:
        model, codec = load_model_and_codec(config.model, task, seed=config.seed)
    else:
        model, codec = loaded
    check_prompts(task, codec)
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
    trainer = Trainer(config, task, codec, pair, objective, out_dir, quiet, parallel)
    return trainer, task, codec


def save_final(
    trainer: Trainer,
    codec: PromptCodec,
    folder: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """The fine-tuned student, saved as a loadable denoiser folder (or its LoRA adapter).

    ``state_dict``: the student's whole weights when the trainer holds shards
    (:meth:`Parallelism.student_weights_to_save`).
    """
    save_adapter = getattr(trainer.pair, "save_adapter", None)
    if save_adapter is not None:
        return save_adapter(folder, state_dict=state_dict)
    meta: dict[str, Any] = {
        "task": trainer.task.name,
        "mask_token_id": codec.mask_token_id,
        "pad_token_id": codec.pad_token_id,
        "eos_token_id": codec.eos_token_id,
    }
    if isinstance(codec, CharTokenizer):
        meta["alphabet"] = codec.alphabet
    return save_denoiser(folder, trainer.pair.student.model, meta, state_dict)


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
    in ``allow_change`` (:func:`check_resume_config`). A new run refuses a folder that
    already holds one unless ``overwrite``, which removes the old run's files first.
    Every refusal happens before anything is written.
    """
    out_dir = Path(out_dir)
    if resume:
        check_resume_config(out_dir, config, allow_change)
    elif not overwrite and (found := run_files(out_dir)):
        raise FileExistsError(
            f"{out_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
            "it, --overwrite to replace it, or choose another --out"
        )
    trainer, _task, codec = build_trainer(config, out_dir, quiet=quiet)
    if resume:
        trainer.load(out_dir / CHECKPOINT)
        if trainer.parallel.is_main:
            truncate_stage_log(out_dir, len(trainer.history))
    elif overwrite and trainer.parallel.is_main:
        clear_run(out_dir)
    try:
        history = trainer.train()
        final = history[-1] if history else {}
        whole = trainer.parallel.student_weights_to_save(trainer.pair)  # collective under FSDP
        if trainer.parallel.is_main:  # one writer under a multi-process launch
            save_final(trainer, codec, out_dir / "final", whole)
            (out_dir / "final_metrics.json").write_text(json.dumps(final, indent=2))
    finally:
        close_process_group()
    return {"history": history, "final": final, "trainer": trainer}
