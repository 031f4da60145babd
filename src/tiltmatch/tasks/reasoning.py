"""Shared pieces of the published reasoning format (d1 / DTM) for the math tasks.

GSM8K and MATH-500 use one response format: the model reasons inside
``<reasoning>...</reasoning>``, then gives the final answer inside
``<answer>...</answer>``, the answer itself wrapped in ``\\boxed{}``. This module
holds the instruction that asks for it, the formatter of a response in it (for
demonstrations), and the dataset plumbing both tasks share: a split name is
either ``"test"`` (the shipped copy under :func:`~tiltmatch.data.shared_data_dir`),
a local JSONL path, or a Hugging Face hub dataset name.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tiltmatch.data import DatasetError, read_jsonl, shared_data_dir

# The instruction is the user message text; the model's codec applies the chat
# template later. Worded for this project, in the structure the published
# recipes use (format first, then the problem), so results stay comparable.
REASONING_INSTRUCTION = (
    "You are an expert at mathematics. Solve the problem below, thinking it through "
    "step by step before you commit to an answer. Put the final answer inside \\boxed{}. "
    "Write your response in exactly this layout:\n"
    "<reasoning>\n"
    "your step-by-step working\n"
    "</reasoning>\n"
    "<answer>\n"
    "\\boxed{your final answer}\n"
    "</answer>"
)


def reasoning_prompt(question: str) -> str:
    """The user message for ``question``: the format instruction, a blank line, the problem."""
    return f"{REASONING_INSTRUCTION}\n\n{question.strip()}"


def reasoning_response(reasoning: str, answer: str) -> str:
    """A response in the published format, with ``answer`` placed in ``\\boxed{}``."""
    return (
        f"<reasoning>\n{reasoning.strip()}\n</reasoning>\n<answer>\n\\boxed{{{answer}}}\n</answer>"
    )


def subset_indices(n_rows: int, n: int | None, seed: int) -> list[int]:
    """Row indices to use: all in file order when ``n`` is None, else a seeded subset.

    The subset is the first ``n`` of one seeded permutation, returned in file
    order, so a smaller ``n`` with the same seed is a subset of a larger one and
    the same arguments always give the same rows.
    """
    if n is None or n >= n_rows:
        return list(range(n_rows))
    if n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return sorted(order[:n])


def _looks_like_path(source: str) -> bool:
    # A hub name is "owner/name"; a string that only makes sense as a file (a
    # JSON extension, an absolute or home-relative path) is never sent to the
    # hub, so a typo in a path fails as "file not found", not as a network error.
    return source.startswith(("/", "./", "../", "~")) or source.endswith((".jsonl", ".json"))


def load_hub_rows(
    name: str, config: str | None, split: str, required: Sequence[str]
) -> list[dict[str, Any]]:
    """Rows of a Hugging Face hub dataset, each checked for the ``required`` fields.

    Raises :class:`~tiltmatch.data.DatasetError` when ``datasets`` is missing,
    when loading fails (offline, unknown name, unknown split), or when a row
    lacks a field.
    """
    where = f"hub dataset {name!r}" + (f" (config {config!r})" if config else "")
    where += f" split {split!r}"
    try:
        import datasets
    except ImportError as err:
        raise DatasetError(
            f"{where}: loading from the hub needs the 'datasets' package "
            "(pip install 'tiltmatch[llm]'); or pass a local JSONL path"
        ) from err
    args = (name, config) if config else (name,)
    try:
        dataset = datasets.load_dataset(*args, split=split)
    except Exception as err:  # offline, unknown name or split: all mean "cannot load it"
        raise DatasetError(
            f"could not load {where} ({type(err).__name__}: {err}). It is not an existing "
            "file either; without network access pass a local JSONL path, or 'test' for "
            "the shipped copy of the test set"
        ) from err
    rows = []
    for i, row in enumerate(dataset):
        row = dict(row)
        missing = [f for f in required if row.get(f) is None]
        if missing:
            raise DatasetError(f"{where} row {i}: row has no field {', '.join(map(repr, missing))}")
        rows.append(row)
    return rows


def load_rows(
    source: str,
    *,
    shared_file: str,
    hub_name: str,
    hub_config: str | None,
    required: Sequence[str],
) -> tuple[list[dict[str, Any]], str]:
    """Rows of a math task's dataset, and a short label of where they came from.

    ``source`` is ``"test"`` (``shared_data_dir() / shared_file``), an existing
    local JSONL path, or a hub dataset name, optionally ``"name:split"`` (split
    ``test`` by default). The hub is tried only when ``source`` names no existing
    file. ``hub_name`` and ``hub_config`` are the task's own hub dataset: its
    config is used when ``source`` names that dataset.
    """
    if source == "test":
        return read_jsonl(shared_data_dir() / shared_file, required=required), "test"
    path = Path(source).expanduser()
    if path.is_file() or _looks_like_path(source):
        return read_jsonl(path, required=required), path.name
    name, _, split = source.partition(":")
    config = hub_config if name == hub_name else None
    return load_hub_rows(name, config, split or "test", required), f"{name}:{split or 'test'}"
