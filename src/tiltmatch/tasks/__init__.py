"""Task plugins and their registry.

A task is named in a config's ``task`` field by one of:

- a registered name (``REGISTRY`` below, e.g. ``maze``; ``dataset`` is the generic task
  over a prompt dataset with the user's reward functions, :mod:`tiltmatch.tasks.dataset`);
- an entry point of the ``tiltmatch.tasks`` group declared by an installed package
  (``[project.entry-points."tiltmatch.tasks"] mytask = "mypkg.tasks:MyTask"``);
- a ``module:Class`` or ``path/to/file.py:Class`` reference to a
  :class:`~tiltmatch.tasks.base.Task` subclass.

So nobody edits the installed package to add a task. Modules are imported lazily, so a
task's optional dependencies are needed only when it is used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from tiltmatch.tasks.base import Example, RewardError, Task

REGISTRY: dict[str, str] = {
    "maze": "tiltmatch.tasks.maze.task:MazeTask",
    "sudoku": "tiltmatch.tasks.sudoku:SudokuTask",
    "countdown": "tiltmatch.tasks.countdown:CountdownTask",
    "gsm8k": "tiltmatch.tasks.gsm8k:GSM8KTask",
    "math500": "tiltmatch.tasks.math500:Math500Task",
    "dataset": "tiltmatch.tasks.dataset:DatasetTask",
    "unconditional": "tiltmatch.tasks.unconditional:UnconditionalTask",
}

#: the entry-point group through which installed packages add tasks
ENTRY_POINT_GROUP = "tiltmatch.tasks"


class UnknownTaskError(KeyError):
    """A task name that is not in the registry, not an entry point, not an importable path."""

    def __str__(self) -> str:
        return str(self.args[0])


def _entry_point_tasks() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass ``name`` stands for (see the module docstring)."""
    from tiltmatch.plugins import PluginError, is_reference, load_object

    if name in REGISTRY:
        module_name, _, cls_name = REGISTRY[name].partition(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
    elif name in (found := _entry_point_tasks()):
        try:
            cls = found[name].load()
        except Exception as err:  # an installed plugin's import may raise anything
            raise UnknownTaskError(
                f"task {name!r} (entry point {found[name].value!r}) cannot be loaded: "
                f"{type(err).__name__}: {err}"
            ) from err
    elif is_reference(name):
        try:
            cls = load_object(name, what="task")
        except PluginError as err:
            raise UnknownTaskError(str(err)) from None
    else:
        known = ", ".join(sorted({*REGISTRY, *found}))
        raise UnknownTaskError(
            f"unknown task {name!r}; known tasks: {known} (or a 'module:Class' / "
            "'file.py:Class' path to a Task subclass)"
        )
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UnknownTaskError(f"task {name!r} is {cls!r}, not a tiltmatch Task subclass")
    return cls


def get_task(name: str, **options: Any) -> Task:
    """Build the task ``name`` (registered, entry point, or ``module:Class``) with its options."""
    cls = task_class(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"bad options for task {name!r}: {err}") from None
    except ValueError:
        raise  # the task's own message about its options or data
    except Exception as err:  # a plugin's constructor may raise anything: say which task
        text = " ".join(str(err).split())[:300]
        raise ValueError(
            f"task {name!r} could not be built: {cls.__name__}(...) raised "
            f"{type(err).__name__}: {text}"
        ) from err
    except SystemExit as exit_:  # sys.exit() in a plugin must not end the command
        raise ValueError(
            f"task {name!r} could not be built: {cls.__name__}(...) called sys.exit({exit_.code!r})"
        ) from None


__all__ = [
    "ENTRY_POINT_GROUP",
    "REGISTRY",
    "Example",
    "RewardError",
    "Task",
    "UnknownTaskError",
    "get_task",
    "task_class",
]
