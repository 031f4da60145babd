"""The fine-tuned student as a folder others load: weights (or a LoRA adapter), the record of
how to sample it, and its model card, in Hugging Face's layout.

- Full fine-tuning: ``save_pretrained`` safetensors and ``config.json`` with ``tiltmatch.json``
  (special ids, a character model's alphabet, the record of
  :mod:`tiltmatch.generation.record`).
- LoRA on a base folder: the student adapter at the top of the folder (PEFT's
  ``adapter_config.json`` and ``adapter_model.safetensors``, loadable with
  ``PeftModel.from_pretrained(base, folder)``), ``base_model_name_or_path`` the base as the run
  config names it (not a path resolved on this machine), and ``tiltmatch.json`` naming the
  base and holding the record.
- LoRA on a fresh tiny model (no base folder to point at): the student merged into its base,
  saved as full weights.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from tiltmatch.generation.card import CardFacts
from tiltmatch.generation.record import RECORD_KEY, GenerationRecord
from tiltmatch.models.codecs import CharTokenizer, PromptCodec
from tiltmatch.models.denoiser import DENOISER_META, save_denoiser
from tiltmatch.tasks.base import Task
from tiltmatch.training.config import RunConfig
from tiltmatch.training.trainer import Trainer

#: PEFT's adapter config file
ADAPTER_CONFIG = "adapter_config.json"


def generation_record(config: RunConfig, task: Task) -> GenerationRecord:
    """What a saved model records of how to sample it (:mod:`tiltmatch.generation.record`):
    the task and its options, the response length, and the sampler held-out evaluation
    used (``eval.sampler``, else the rollouts' ``sampler``, at ``eval.temperature``): the
    one its model card's metrics were measured with."""
    sampler = config.evaluation_sampler().model_dump(mode="json")
    return GenerationRecord(
        task=task.name,
        task_options=dict(config.task_options),
        response_length=task.response_length,
        sampler=sampler,
    )


def _meta(trainer: Trainer, codec: PromptCodec) -> dict[str, Any]:
    """``tiltmatch.json``: the special ids, a character model's alphabet, the record."""
    meta: dict[str, Any] = {
        "task": trainer.task.name,
        "mask_token_id": codec.mask_token_id,
        "pad_token_id": codec.pad_token_id,
        "eos_token_id": codec.eos_token_id,
        RECORD_KEY: generation_record(trainer.config, trainer.task).to_json(),
    }
    if isinstance(codec, CharTokenizer):
        meta["alphabet"] = codec.alphabet
    return meta


def save_final(
    trainer: Trainer,
    codec: PromptCodec,
    folder: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """The fine-tuned student, saved as a loadable folder (see the module docstring).

    ``state_dict``: the student's whole weights (or adapter) when the trainer holds shards
    (:meth:`Parallelism.student_weights_to_save`).
    """
    meta = _meta(trainer, codec)
    pair = trainer.pair
    save_adapter = getattr(pair, "save_adapter", None)
    base = trainer.config.model.base
    if save_adapter is None:
        return save_denoiser(folder, pair.student.model, meta, state_dict)
    if base is None and state_dict is None:  # no base folder to point at: merge
        return save_denoiser(folder, merged_student(pair), meta)
    save_adapter(folder, state_dict=state_dict)
    _adapter_to_top(folder)
    if base is not None:
        meta["base"] = base
        config_file = folder / ADAPTER_CONFIG
        adapter = json.loads(config_file.read_text(encoding="utf-8"))
        adapter["base_model_name_or_path"] = base
        config_file.write_text(json.dumps(adapter, indent=2, sort_keys=True), encoding="utf-8")
    (folder / DENOISER_META).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return folder


def _adapter_to_top(folder: Path) -> None:
    """PEFT saves a named adapter under ``folder/<name>/``: move its files to the top."""
    for child in list(folder.iterdir()):
        if child.is_dir() and (child / ADAPTER_CONFIG).is_file():
            for item in child.iterdir():
                os.replace(item, folder / item.name)
            shutil.rmtree(child)


def merged_student(pair: Any) -> PreTrainedModel:
    """A copy of the LoRA pair's base with the student adapter merged into it (the pair is
    left as it is)."""
    from tiltmatch.training.lora import STUDENT, TEACHER

    model = copy.deepcopy(pair.peft_model)
    model.set_adapter(STUDENT)
    model.delete_adapter(TEACHER)
    merged = model.merge_and_unload()
    assert isinstance(merged, PreTrainedModel)
    return merged


def card_facts(
    trainer: Trainer,
    folder: Path,
    metrics: dict[str, Any] | None = None,
    arguments: dict[str, Any] | None = None,
) -> CardFacts:
    """What the model card of ``trainer``'s student, saved in ``folder``, reports."""
    examples = trainer.eval_examples
    student = trainer.pair.student.model
    trainable = sum(p.numel() for p in trainer.pair.trainable_parameters())
    return CardFacts(
        config=trainer.config,
        record=generation_record(trainer.config, trainer.task),
        folder=folder,
        task=trainer.task,
        parameters=sum(p.numel() for n, p in student.named_parameters() if "lora_" not in n),
        trained_parameters=trainable,
        rollouts=trainer.phase.rollouts,
        updates=trainer.phase.updates,
        training_prompts=len(trainer.pool.examples),
        eval_prompts=len(examples),
        example_prompt=examples[0].prompt if examples else None,
        metrics=dict(metrics or {}),
        arguments=arguments,
    )
