"""The one registry of fine-tuning methods: DTM and its baselines (METHOD.md section 8).

A method is registered here once, by name: the run config accepts exactly these
names (``config.method``), the benchmark runs and labels them, and
:func:`tiltmatch.training.runner.make_objective` builds the named method's
:class:`~tiltmatch.objective.Objective`. Classes are named as ``module:Class``
and imported only when a run uses them, as the task registry does, so this
module imports nothing of the package and the config can read it.

Adding a baseline: a module under ``baselines/`` with its options model and
objective, then one entry below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Method:
    """One registered method.

    ``objective``: its :class:`~tiltmatch.objective.Objective` class as ``module:Class``.
    ``options``: the pydantic model of its ``method_options`` as ``module:Class``;
    ``None`` for DTM, whose settings are the run config's own ``dtm`` section.
    ``label``: its name in tables and plots.
    ``min_generations``: the fewest completions per prompt (``train.num_generations``) its
    loss learns from: a group-relative advantage of a group of one is 0 (nothing is
    learned), a leave-one-out baseline has no others.
    ``stage_schedule``: whether each stage starts a fresh AdamW and the per-stage learning
    rate schedule (``warmup_ratio``, ``decay_fraction``, ``final_learning_rate``; DTM, METHOD.md
    section 6) or one AdamW at the constant ``learning_rate`` runs the whole run (the
    baselines, as their authors' trainers do); the objective's
    ``reset_optimizer_each_stage`` says the same (a test holds them equal).
    """

    objective: str
    options: str | None
    label: str
    min_generations: int = 2
    stage_schedule: bool = False

    def objective_class(self) -> type[Any]:
        """The objective class, imported now."""
        return _resolve(self.objective)

    def options_class(self) -> type[Any] | None:
        """The options model, imported now (``None`` for DTM)."""
        return None if self.options is None else _resolve(self.options)


METHODS: dict[str, Method] = {
    "dtm": Method(
        "tiltmatch.dtm.objective:DTMObjective",
        None,
        "DTM",
        min_generations=1,
        stage_schedule=True,
    ),
    "diffu-grpo": Method(
        "tiltmatch.baselines.diffu_grpo:DiffuGRPOObjective",
        "tiltmatch.baselines.diffu_grpo:DiffuGRPOOptions",
        "diffu-GRPO",
    ),
    "wd1": Method(
        "tiltmatch.baselines.wd1:WD1Objective", "tiltmatch.baselines.wd1:WD1Options", "wd1"
    ),
    "rejection": Method(
        "tiltmatch.baselines.rejection:RejectionObjective",
        "tiltmatch.baselines.rejection:RejectionOptions",
        "rejection FT",
        min_generations=1,
    ),
    "spg": Method(
        "tiltmatch.baselines.spg:SPGObjective", "tiltmatch.baselines.spg:SPGOptions", "SPG"
    ),
    "espo": Method(
        "tiltmatch.baselines.espo:ESPOObjective", "tiltmatch.baselines.espo:ESPOOptions", "ESPO"
    ),
    "coupled-grpo": Method(
        "tiltmatch.baselines.coupled_grpo:CoupledGRPOObjective",
        "tiltmatch.baselines.coupled_grpo:CoupledGRPOOptions",
        "coupled-GRPO",
    ),
}


def check_method_name(name: str) -> str:
    """``name`` if it is registered, else a ``ValueError`` that lists the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return name


def _resolve(path: str) -> type[Any]:
    module_name, _, attribute = path.partition(":")
    found: type[Any] = getattr(importlib.import_module(module_name), attribute)
    return found
