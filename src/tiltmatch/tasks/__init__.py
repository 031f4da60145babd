"""Task plugins and their registry.

Adding a task: write a module with a :class:`~tiltmatch.tasks.base.Task`
subclass, then add one line to ``REGISTRY`` naming it. Modules are imported
lazily, so a task's optional dependencies are needed only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from tiltmatch.tasks.base import Example, RewardError, Task

REGISTRY: dict[str, str] = {
    "maze": "tiltmatch.tasks.maze.task:MazeTask",
    "sudoku": "tiltmatch.tasks.sudoku:SudokuTask",
    "countdown": "tiltmatch.tasks.countdown:CountdownTask",
    "gsm8k": "tiltmatch.tasks.gsm8k:GSM8KTask",
    "math500": "tiltmatch.tasks.math500:Math500Task",
}


class UnknownTaskError(KeyError):
    """A task name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_task(name: str, **options: Any) -> Task:
    """Build the task registered as ``name`` with its options."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {known}")
    module_name, _, cls_name = REGISTRY[name].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for task {name!r}: {err}") from None


__all__ = ["REGISTRY", "Example", "RewardError", "Task", "UnknownTaskError", "get_task"]
