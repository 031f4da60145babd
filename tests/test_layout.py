"""The package's layout: its modules import one another without a cycle, and the library
never reaches into ``tiltmatch.experiments``.

The import graph is read statically from the source with :mod:`ast`, so an import
inside a function counts as much as one at the top of a module (a deferred import
hides a cycle, it does not remove one). Imports under ``if TYPE_CHECKING:`` are left
out: they never run. A registry's ``"module:Class"`` strings are late binding, not
imports, and are not edges of the graph; they are checked for ``tiltmatch.experiments``
all the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tiltmatch

PACKAGE_ROOT = Path(tiltmatch.__file__).resolve().parent
#: where the experiments may be imported: the experiments themselves and the command line
EXPERIMENTS = "tiltmatch.experiments"
MAY_IMPORT_EXPERIMENTS = ("tiltmatch.experiments", "tiltmatch.cli")
_DOTTED_EXPERIMENTS = re.compile(r"^tiltmatch\.experiments(\.\w+)*(:\w+)?$")


def module_files(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module's import statements load, wherever they stand in it."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, *([base] if base else [])])
            names.add(base)
            # ``from a.b import c`` loads a.b.c when c is a module
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module -> the package modules importing it executes.

    Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``; the
    packages the importer itself lives in are already being imported, so they are
    no edges (``tasks/base.py`` importing ``tasks/extraction.py`` does not re-enter
    ``tasks/__init__``).
    """
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        own = module.split(".")
        own_packages = {".".join(own[:i]) for i in range(1, len(own) + (1 if is_package else 0))}
        targets: set[str] = set()
        for name in _imported_names(tree, module, is_package):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in files and prefix not in own_packages:
                    targets.add(prefix)
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert "tiltmatch.config" in graph and "tiltmatch.training.trainer" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_sees_function_level_and_package_imports(tmp_path: Path) -> None:
    # A fake package: a -> b at module level, b -> a inside a function: a cycle. c imports
    # d.e, whose package d/__init__ imports c: a cycle through a package's __init__. A
    # TYPE_CHECKING import and a relative one inside a package are handled as Python does.
    pkg = tmp_path / "tiltmatch"
    (pkg / "d").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from tiltmatch import b\n",
        "b.py": "def f():\n    import tiltmatch.a\n",
        "c.py": "from tiltmatch.d.e import x\n",
        "d/__init__.py": "from tiltmatch import c\n",
        "d/e.py": "from . import f\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import tiltmatch.c\nx = 1\n",
        "d/f.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["tiltmatch.b"] == {"tiltmatch.a"}
    assert graph["tiltmatch.c"] == {"tiltmatch.d", "tiltmatch.d.e"}
    assert graph["tiltmatch.d.e"] == {"tiltmatch.d.f"}  # not its own package, not c
    assert find_cycle(graph) == ["tiltmatch.a", "tiltmatch.b", "tiltmatch.a"]
    del graph["tiltmatch.b"]
    assert find_cycle(graph) == ["tiltmatch.c", "tiltmatch.d", "tiltmatch.c"]
    graph["tiltmatch.d"] = set()
    assert find_cycle(graph) is None


#: The package's rooms (its top-level modules and subpackages) in dependency order: a room may
#: import only rooms before it, so no two rooms import each other, whatever path an import
#: takes. Leaves first (settings, batch, examples, ...); then the model, the sampler, the
#: rewards and the tasks that use them, the objectives, the trainer (which composes the run
#: config from every room's section); ``config`` (the public facade), ``api``, ``experiments``
#: and ``cli`` are the entry points on top (ARCHITECTURE.md).
ROOM_ORDER = (
    "data",
    "plugins",
    "settings",
    "destination",
    "batch",
    "examples",
    "models",
    "sampling",
    "model_checks",
    "rewards",
    "tasks",
    "preflight",
    "generation",
    "objective",
    "dtm",
    "baselines",
    "training",
    "config",
    "api",
    "experiments",
    "cli",
)


def room_of(module: str) -> str:
    """The room of a dotted module name: its first component under ``tiltmatch``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def room_edges(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """Room -> room imports, each with one module-level example (the package root aside: it
    only re-exports, lazily)."""
    edges: dict[tuple[str, str], str] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = room_of(module), room_of(target)
            if a and b and a != b:
                edges.setdefault((a, b), f"{module} -> {target}")
    return edges


def backward_edges(graph: dict[str, set[str]], order: tuple[str, ...]) -> list[str]:
    """Every room import that goes against ``order`` (or names a room ``order`` lacks)."""
    rank = {room: k for k, room in enumerate(order)}
    bad = []
    for (a, b), example in sorted(room_edges(graph).items()):
        if a not in rank or b not in rank:
            bad.append(f"{a} -> {b}: a room missing from ROOM_ORDER ({example})")
        elif rank[a] < rank[b]:
            bad.append(f"{a} -> {b} ({example})")
    return bad


def test_rooms_import_one_way() -> None:
    graph = import_graph()
    rooms = {room_of(m) for m in graph} - {""}
    assert rooms == set(ROOM_ORDER), (
        f"rooms without a place in ROOM_ORDER: {rooms ^ set(ROOM_ORDER)}"
    )
    bad = backward_edges(graph, ROOM_ORDER)
    assert not bad, "rooms importing against the data flow:\n" + "\n".join(bad)
    room_graph: dict[str, set[str]] = {}
    for a, b in room_edges(graph):
        room_graph.setdefault(a, set()).add(b)
    assert find_cycle(room_graph) is None


def test_the_room_check_fails_on_a_room_cycle() -> None:
    # models.x -> tasks.y at module level and tasks.z -> models.w inside a function: no module
    # cycle, but the two rooms import each other, which the order check must refuse.
    graph = {
        "tiltmatch.models.x": {"tiltmatch.tasks.y"},
        "tiltmatch.tasks.y": set(),
        "tiltmatch.tasks.z": {"tiltmatch.models.w"},
        "tiltmatch.models.w": set(),
    }
    assert find_cycle(graph) is None
    assert backward_edges(graph, ("models", "tasks")) == [
        "models -> tasks (tiltmatch.models.x -> tiltmatch.tasks.y)"
    ]
    assert backward_edges(graph, ("tasks", "models")) == [
        "tasks -> models (tiltmatch.tasks.z -> tiltmatch.models.w)"
    ]
    assert "a room missing" in backward_edges(graph, ("models",))[0]


def _experiment_references(path: Path, module: str) -> list[str]:
    """What in ``path`` loads ``tiltmatch.experiments``: imports, and registry strings."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = [
        f"import {name}"
        for name in _imported_names(tree, module, path.name == "__init__.py")
        if name == EXPERIMENTS or name.startswith(EXPERIMENTS + ".")
    ]
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and _DOTTED_EXPERIMENTS.match(node.value):
            found.append(repr(node.value))
    return sorted(set(found))


def test_the_library_never_imports_the_experiments() -> None:
    offenders = {}
    for module, path in module_files().items():
        if any(module == m or module.startswith(m + ".") for m in MAY_IMPORT_EXPERIMENTS):
            continue
        if refs := _experiment_references(path, module):
            offenders[module] = refs
    assert not offenders, f"the library reaches into {EXPERIMENTS}: {offenders}"
    # and the check sees what it looks for: the command line does import the experiments
    cli = module_files()["tiltmatch.cli"]
    assert _experiment_references(cli, "tiltmatch.cli")


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_one_dtype_table_round_trips(name: str) -> None:
    import torch

    from tiltmatch.config import ModelConfig
    from tiltmatch.models.dtypes import dtype_name, torch_dtype

    assert torch_dtype(name) is getattr(torch, name)
    assert dtype_name(torch_dtype(name)) == name
    assert ModelConfig(dtype=name).dtype == name  # the config accepts exactly the table's names


def test_unknown_dtype_is_one_clear_error() -> None:
    import torch

    from tiltmatch.config import ConfigError, build_config
    from tiltmatch.models.dtypes import dtype_name, torch_dtype

    with pytest.raises(ValueError, match="unknown dtype 'int8'; known: float32, bfloat16"):
        torch_dtype("int8")
    with pytest.raises(ValueError, match="not one of float32, bfloat16, float16"):
        dtype_name(torch.float64)
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        build_config(overrides=["model.dtype=float64"])
