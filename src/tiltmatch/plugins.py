"""Loading a user's own code by name: ``module:attr`` or ``path/to/file.py:attr``.

Reward functions and tasks may live outside the installed package. Importing
them runs the user's own code at the user's explicit request (a name on the
command line or in a config); model checkpoints and datasets are still only
ever read as data (safetensors, JSON, Arrow), never executed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """A ``module:attr`` or ``file.py:attr`` reference that cannot be loaded."""


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise PluginError(f"cannot import {path}: no such file")
    name = f"tiltmatch_user_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's module may raise anything while importing
        del sys.modules[name]
        raise PluginError(f"importing {path} raised {type(err).__name__}: {err}") from err
    except SystemExit as exit_:  # sys.exit() in a user's file must not end the command
        del sys.modules[name]
        raise PluginError(f"importing {path} called sys.exit({exit_.code!r})") from None
    return module


def load_object(reference: str, what: str = "object") -> Any:
    """The object ``reference`` names: ``pkg.module:attr`` or ``path/file.py:attr``.

    ``attr`` may be dotted (``module:Class.method``). Every failure (a missing
    file or module, an import that raises, a missing attribute) is one
    :class:`PluginError` naming the reference.
    """
    module_part, sep, attr = reference.rpartition(":")
    # A Windows drive letter ("C:\\x.py") is not a separator; neither is a missing attr.
    if not sep or not module_part or not attr or "/" in attr or "\\" in attr:
        raise PluginError(
            f"{what} {reference!r} is not of the form 'module:name' or 'path/to/file.py:name'"
        )
    if module_part.endswith(".py") or "/" in module_part or "\\" in module_part:
        module = _import_file(Path(module_part).expanduser())
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as err:
            raise PluginError(
                f"cannot import module {module_part!r} for {what} {reference!r}: {err}"
            ) from None
        except Exception as err:  # the user's module may raise anything while importing
            raise PluginError(
                f"importing module {module_part!r} raised {type(err).__name__}: {err}"
            ) from err
        except SystemExit as exit_:
            raise PluginError(
                f"importing module {module_part!r} called sys.exit({exit_.code!r})"
            ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"{what} {reference!r}: {module_part!r} has no {attr!r}") from None
    return obj


def is_reference(text: str) -> bool:
    """Whether ``text`` looks like a ``module:attr`` or ``file.py:attr`` reference."""
    module_part, sep, attr = text.rpartition(":")
    return bool(sep and module_part and attr) and not text.startswith("shipped:")
