"""Shared fixtures: a tiny, fast run configuration on the maze."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tiltmatch.data import DatasetError, shared_data_dir


def needs_shared_data(relative: str) -> pytest.MarkDecorator:
    """Skip, saying why, a test that reads ``relative`` under the shared data folder
    (``../shared/data`` beside the repository, or ``$TILTMATCH_DATA_DIR``)."""
    try:
        found = (shared_data_dir() / relative).is_file()
    except DatasetError:
        found = False
    reason = f"shared data file {relative} not found (put shared/ beside the repository)"
    return pytest.mark.skipif(not found, reason=reason)


def load_benchmark(name: str, module_name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` imported as module ``module_name`` (registered in
    ``sys.modules``: dataclasses resolve their module by name); each test file passes its
    own name so two files never share or replace one module object."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


TINY_OVERRIDES = [
    "task=maze",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "sampler.steps=8",
    "sampler.block_length=8",
    "dtm.h=2",
    "dtm.a_end=4",
    "dtm.steps_per_h=4",
    "train.num_generations=2",
    "train.prompts_per_batch=2",
    "train.buffer_prompts=4",
    "train.refresh_prompts=2",
    "train.refresh_every=2",
    "train.train_examples=16",
    "train.save_steps=2",
    "eval.examples=4",
    "eval.samples_per_example=1",
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Deterministic, and fair to a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)
