"""Build a run from its configuration and execute it (used by ``tiltmatch train`` and the demo)."""

from __future__ import annotations

import json
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
from tiltmatch.training.distributed import (
    DistributedContext,
    close_process_group,
    process_context,
)
from tiltmatch.training.methods import METHODS
from tiltmatch.training.pair import CopiedPair, DenoiserPair
from tiltmatch.training.parallel import make_parallel
from tiltmatch.training.trainer import CHECKPOINT, Trainer


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
    return CopiedPair(student, ema_decay=ema, keep_reference=needs_reference(config))


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


def make_trainer(
    config: RunConfig,
    task: Task,
    codec: PromptCodec,
    pair: DenoiserPair,
    objective: Objective,
    out_dir: str | Path,
    quiet: bool = False,
    context: DistributedContext | None = None,
) -> Trainer:
    """The trainer for this process, with the parallelism of its launch (``context``,
    default: read from the environment): one process, data-parallel or sharded."""
    parallel = make_parallel(context or process_context())
    return Trainer(config, task, codec, pair, objective, out_dir, quiet, parallel)


def build_trainer(
    config: RunConfig, out_dir: Path, quiet: bool = False
) -> tuple[Trainer, Task, PromptCodec]:
    """Task, model, codec, pair, objective and trainer of a configuration."""
    torch.manual_seed(config.seed)
    context = process_context()
    if context.fsdp is not None and config.model.load_in_4bit:
        raise ValueError(
            "model.load_in_4bit cannot be sharded with FSDP (bitsandbytes' 4-bit weights are "
            "not DTensors): launch with configs/accelerate/ddp.yaml"
        )
    task = get_task(config.task, **config.task_options)
    model, codec = load_model_and_codec(config.model, task, seed=config.seed)
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
    trainer = make_trainer(config, task, codec, pair, objective, out_dir, quiet, context)
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
    config: RunConfig, out_dir: str | Path, resume: bool = False, quiet: bool = False
) -> dict[str, Any]:
    """Train (or resume) a run in ``out_dir``; returns its history and final metrics."""
    out_dir = Path(out_dir)
    trainer, _task, codec = build_trainer(config, out_dir, quiet=quiet)
    if resume:
        trainer.load(out_dir / CHECKPOINT)
    elif (out_dir / CHECKPOINT).exists():
        raise FileExistsError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
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
