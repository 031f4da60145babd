"""What a saved model folder says about how it was trained to be sampled: its record.

Every model folder tiltmatch writes (``tiltmatch train``'s ``final/``, the API's
``save_model()``, the shipped bases) records, beside the weights, the task it was trained on,
that task's options (the response length among them) and the sampler its evaluation used.
:func:`read_record` reads it back, so that sampling from the folder
(:mod:`tiltmatch.generation.pretrained`, ``tiltmatch generate``) and evaluating it
(``tiltmatch eval``) use the model's own settings unless told otherwise. No torch here: the
run config and the command line read it.

Where the record lives: the ``"generation"`` block of ``tiltmatch.json``; for the shipped
bases, which predate it, their ``base_metrics.json`` (the recipe's task options and sampler).
A folder with neither (a released LLaDA checkpoint) has an empty record.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tiltmatch.generation.geometry import Geometry, derive_geometry, geometry_problem
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.settings import ConfigError, validation_reasons

#: the model folder's own metadata file (tiltmatch.models.denoiser.DENOISER_META)
META_FILE = "tiltmatch.json"
#: the shipped bases' recipe and measurements (tiltmatch.experiments.base_models)
BASE_METRICS_FILE = "base_metrics.json"
#: the key of the record in ``tiltmatch.json``
RECORD_KEY = "generation"
#: the response length of a model that records none (the published protocol's shortest)
FALLBACK_LENGTH = 128
#: the published protocol (blocks of 32, two tokens per step, low-confidence remasking at
#: temperature 0): the sampler of a model that records none
PUBLISHED_BLOCK = 32
PUBLISHED_SAMPLER = {"remasking": "low_confidence", "temperature": 0.0}
#: how :meth:`GenerationRecord.sampling` names the length, block length and steps
PYTHON_NAMES = ("max_new_tokens", "block_length", "steps")


@dataclass(frozen=True)
class GenerationRecord:
    """How a saved model was trained to be sampled (every field may be unknown).

    ``sampler`` holds :class:`~tiltmatch.sampling.config.SamplingConfig` fields (the sampler
    held-out evaluation used, with its temperature), ``response_length`` the response
    length those settings were for.
    """

    task: str | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    response_length: int | None = None
    sampler: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Whether the folder recorded nothing about its sampling."""
        return self.response_length is None and not self.sampler and not self.task_options

    def length(self, max_new_tokens: int | None = None) -> int:
        """The response length: ``max_new_tokens``, else the recorded one, else 128."""
        length = max_new_tokens if max_new_tokens is not None else self.response_length
        length = FALLBACK_LENGTH if length is None else length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ConfigError(f"max_new_tokens must be an integer >= 1, got {length!r}")
        return length

    def sampling(
        self,
        length: int,
        settings: Mapping[str, Any] | None = None,
        names: tuple[str, str, str] = PYTHON_NAMES,
    ) -> SamplingConfig:
        """The sampler for ``length`` response tokens: the recorded one (else the published
        protocol), ``settings`` (:class:`SamplingConfig` fields) over it, an unset block
        length and step count derived from the length (:func:`derive_geometry`). A misspelt
        setting is refused with the nearest field named; a geometry that cannot sample the
        length with the values that would (``names``: the caller's names for them)."""
        settings = dict(settings or {})
        known = list(SamplingConfig.model_fields)
        for name in settings:
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(known)}"
                raise ConfigError(f"unknown sampler setting {name!r} ({hint})")
        recorded = {k: v for k, v in self.sampler.items() if k in known}
        block, steps = recorded.get("block_length"), recorded.get("steps")
        if isinstance(block, int) and isinstance(steps, int) and block > 0 and steps > 0:
            preferred, at = Geometry(block, steps), self.response_length
        else:
            preferred, at = Geometry(PUBLISHED_BLOCK, max(1, length // 2)), None
            recorded = {**PUBLISHED_SAMPLER, **recorded}
        geometry = derive_geometry(
            length, settings.pop("block_length", None), settings.pop("steps", None), preferred, at
        )
        if problem := geometry_problem(length, geometry, names):
            raise ConfigError(problem)
        values = {**recorded, **settings}
        values.update(block_length=geometry.block_length, steps=geometry.steps)
        try:
            return SamplingConfig(**values)
        except ValidationError as err:
            raise ConfigError(validation_reasons(err)) from None

    def to_json(self) -> dict[str, Any]:
        """The ``"generation"`` block of ``tiltmatch.json``."""
        return {
            "task": self.task,
            "task_options": dict(self.task_options),
            "response_length": self.response_length,
            "sampler": dict(self.sampler),
        }


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or an empty one when the file is absent or unreadable
    (the model's loader names a damaged ``tiltmatch.json``; a record is only advice)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _length(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def read_record(folder: str | Path) -> GenerationRecord:
    """The record of a model folder (:class:`GenerationRecord`; empty when it has none)."""
    folder = Path(folder)
    meta = _json_object(folder / META_FILE)
    block = meta.get(RECORD_KEY)
    if isinstance(block, Mapping):
        return GenerationRecord(
            task=block.get("task") if isinstance(block.get("task"), str) else None,
            task_options=_mapping(block.get("task_options")),
            response_length=_length(block.get("response_length")),
            sampler=_mapping(block.get("sampler")),
        )
    base = _json_object(folder / BASE_METRICS_FILE)
    task = base.get("task", meta.get("task"))
    resolved = _mapping(base.get("resolved_task_options"))
    options = _mapping(base.get("task_options"))
    return GenerationRecord(
        task=task if isinstance(task, str) else None,
        task_options=options,
        response_length=_length(options.get("response_length", resolved.get("response_length"))),
        sampler=_mapping(base.get("sampler")),
    )
