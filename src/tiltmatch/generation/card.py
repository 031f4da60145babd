"""The model card (``README.md``) of a saved model folder, in Hugging Face's layout.

YAML metadata first (``library_name``, ``base_model``, ``datasets``, ``tags``,
``pipeline_tag``), then what was trained on what, how to sample from the folder (the one-call
load and generate, and the command), the final metrics and the resolved configuration.
``tiltmatch train`` and the API's ``save_model()`` write the same card.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tiltmatch.generation.record import GenerationRecord
from tiltmatch.tasks.dataset import DatasetTask

if TYPE_CHECKING:
    from tiltmatch.training.config import RunConfig


@dataclass
class CardFacts:
    """What a card reports about one trained model (gathered by the trainer's owner)."""

    config: RunConfig
    record: GenerationRecord
    #: the folder a user loads (where the card will be, not a staging folder)
    folder: Path
    task: Any
    #: the model's own parameters (a LoRA base's, adapters left out)
    parameters: int
    #: the parameters training changed (all of them, or the student adapter's)
    trained_parameters: int
    rollouts: int
    updates: int
    training_prompts: int
    eval_prompts: int
    example_prompt: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: the API's training arguments (None from ``tiltmatch train``)
    arguments: dict[str, Any] | None = None


def _plain(value: Any) -> Any:
    """A YAML-safe copy (anything unusual as its repr)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _metadata(facts: CardFacts) -> list[str]:
    config = facts.config
    meta: dict[str, Any] = {"library_name": "tiltmatch"}
    if config.model.base is not None:
        meta["base_model"] = config.model.base
    if datasets := _hub_datasets(facts):
        meta["datasets"] = datasets
    meta["tags"] = ["tiltmatch", "masked-diffusion", config.method]
    meta["pipeline_tag"] = "text-generation"
    return ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]


def _hub_datasets(facts: CardFacts) -> list[str]:
    """The hub names the training and evaluation prompts came from (a local file or an
    in-memory dataset has none to name)."""
    task = facts.task
    if not isinstance(task, DatasetTask):
        return []
    return [name for name in (task.train_hub_name, task.eval_hub_name) if name]


def _data_lines(facts: CardFacts) -> list[str]:
    config, task = facts.config, facts.task
    options = config.task_options
    if not isinstance(task, DatasetTask):
        return [f"- task: `{config.task}` {config.task_options or ''}"]
    weights = options.get("reward_weights")
    return [
        f"- training prompts: {options.get('train')} ({len(task.train_examples)} rows, "
        f"{facts.training_prompts} used)",
        "- evaluation prompts: "
        + (
            f"{options.get('eval')} ({facts.eval_prompts} used)"
            if not task.evaluates_on_training_prompts
            else f"none given: the first {facts.eval_prompts} training prompts (the eval "
            "metrics are not held out)"
        ),
        f"- rewards: {', '.join(options.get('rewards', []))}"
        + (f", weights {weights}" if weights else ""),
    ]


def usage_lines(folder: Path, record: GenerationRecord, example: str | None) -> list[str]:
    """How to sample from ``folder``: Python and the command line, with the recorded
    defaults said."""
    prompt = example if example is not None else "your prompt"
    sampler = record.sampler
    return [
        "## How to sample",
        "",
        "```python",
        "import tiltmatch",
        "",
        f"model = tiltmatch.load_pretrained({str(folder)!r})",
        f"print(model.generate([{prompt!r}], num_return_sequences=4))",
        "```",
        "",
        "```bash",
        f"tiltmatch generate --model {shlex.quote(str(folder))} --prompt {shlex.quote(prompt)}",
        "```",
        "",
        f"Defaults (recorded in `tiltmatch.json`): {record.response_length} response tokens, "
        f"{sampler.get('steps')} steps in blocks of {sampler.get('block_length')}, "
        f"{sampler.get('remasking')} remasking, temperature {sampler.get('temperature')}, "
        f"sampler mode `{sampler.get('mode', 'exact')}`: the sampler the metrics below were "
        "measured with. Any of them can be set per call (`max_new_tokens=`, `steps=`, "
        "`temperature=`, ...; `tiltmatch generate --help`). This is a masked diffusion "
        "model: transformers' `generate()` decodes left to right and does not sample it.",
        "",
    ]


def _config_dump(config: RunConfig) -> dict[str, Any]:
    """The resolved config; a loaded base's sizes are its own, so the tiny-model sizes
    (unused) are left out."""
    data = config.model_dump(mode="json")
    if config.model.base is not None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "block_size"):
            data["model"].pop(key, None)
    return data


def _title(folder: Path) -> str:
    """The run's name: the folder's, or its parent's for a run's ``final/``."""
    resolved = folder.resolve()
    return resolved.parent.name if resolved.name == "final" else resolved.name


def model_card(facts: CardFacts) -> str:
    """The README.md of a saved model."""
    config = facts.config
    method = config.method
    lines = [
        *_metadata(facts),
        f"# {_title(facts.folder)}",
        "",
        f"Fine-tuned with tiltmatch's `{method}` "
        f"({'Discrete Tilt Matching' if method == 'dtm' else 'a baseline'}) on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}: "
        + (f"base `{config.model.base}`" if config.model.base else "a fresh model")
        + f", {facts.parameters:,} parameters"
        + (
            f", {facts.trained_parameters:,} of them trained (LoRA adapters)."
            if config.lora is not None
            else ", all trained."
        ),
        "",
        "## Data",
        "",
        *_data_lines(facts),
        f"- rollouts sampled: {facts.rollouts}; optimiser updates: {facts.updates}",
        "",
        *usage_lines(facts.folder, facts.record, facts.example_prompt),
        "## Final metrics",
        "",
    ]
    if facts.metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [
            f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in facts.metrics.items()
        ]
    else:
        lines.append("(not trained yet)")
    lines += ["", "## Configuration", "", "```yaml"]
    lines += [yaml.safe_dump(_config_dump(config), sort_keys=False).rstrip(), "```", ""]
    if facts.arguments is not None:
        lines += ["Training arguments:", "", "```yaml"]
        lines += [yaml.safe_dump(_plain(facts.arguments), sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
