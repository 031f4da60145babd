"""How the run's settings are read and checked: a strict section base, the one error, YAML.

A leaf of the package: every room defines its own section of the run config on
:class:`StrictSection` (``models/config.py``, ``sampling/config.py``, ``dtm/config.py``,
``training/config.py``), and :mod:`tiltmatch.training.config` composes them. Unknown fields,
booleans where numbers belong and non-finite numbers are refused by name; YAML is read
safely (no tags, no alias bombs, bounded size).
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names every offending field."""


class StrictSection(BaseModel):
    # allow_inf_nan=False: an infinite or NaN number is never a meaningful setting (dtm.a_end=inf
    # would anneal forever, a NaN beta poisons every update), so it is refused by name.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


#: Largest prompt pool or held-out set a config may ask for: generating more synthetic examples
#: than this takes long enough to look like a hang, and no recipe here needs as many.
MAX_EXAMPLES = 1_000_000


#: Seeds must fit torch.manual_seed (a 64-bit integer); non-negative so every RNG takes them.
MAX_SEED = 2**63 - 1


#: A config file larger than this is not a config (1 MiB).
MAX_CONFIG_BYTES = 1 << 20


#: Nodes a YAML document may expand to through aliases: an alias bomb of a few hundred bytes
#: expands to billions; real configs have a few hundred nodes.
MAX_YAML_NODES = 100_000


def describe_validation_error(err: ValidationError, unknown: str = "unknown field") -> list[str]:
    """One line per problem, naming the field: ``  dtm.hh: unknown field``."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: {unknown}")
        elif not where:  # a check across sections: its message names the fields itself
            lines.append("  " + str(e["msg"]).removeprefix("Value error, "))
        else:
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return lines


def validation_reasons(err: ValidationError) -> str:
    """A model's own checks failed: their messages, ``; ``-joined on one line (no field
    paths, no pydantic boilerplate), for a refusal that names what is wrong."""
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in err.errors())


def describe_config_error(err: ValidationError) -> str:
    lines = describe_validation_error(err)
    if len(lines) == 1:  # one problem: one line, naming the field
        return "invalid configuration: " + lines[0].strip()
    return "invalid configuration:\n" + "\n".join(lines)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Nodes ``node`` stands for once every alias is expanded, counted up to ``limit``.

    An alias is the same node object reused, so sizes are memoised by identity: the count
    costs one visit per distinct node however many times aliases repeat it.
    """
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        sizes[key] = limit + 1  # a recursive alias expands without end
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        sizes[key] = min(total, limit + 1)
        return sizes[key]

    return size(node)


def safe_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` with its alias expansion bounded.

    PyYAML expands aliases (``*a``) while constructing: a 500-byte "billion laughs"
    document becomes gigabytes. The document is composed first (aliases still shared), its
    expanded size counted, and refused above :data:`MAX_YAML_NODES` naming ``source``.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply") from None
    if node is None:
        return None
    if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(
            f"{source}: YAML aliases expand to more than {MAX_YAML_NODES} nodes "
            "(an alias bomb?); write the values out"
        )
    return yaml.safe_load(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"dtm.h=2"`` -> (["dtm", "h"], 2); the value is read as YAML (numbers, bools, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.path=value")
    try:
        value = safe_yaml(raw, f"override {key.strip()!r}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def parse_task_options(items: list[str]) -> dict[str, Any]:
    """``["size=5", "wall_density=0.1"]`` -> ``{"size": 5, "wall_density": 0.1}`` (YAML values)."""
    out: dict[str, Any] = {}
    for item in items:
        keys, value = parse_override(item)
        out[".".join(keys)] = value
    return out


def _numeric_kinds(annotation: Any) -> tuple[bool, bool]:
    """(takes a number, takes a boolean) for a field annotation (unions looked into)."""
    members = typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else ()
    kinds = members or (annotation,)
    number = any(k in (int, float) for k in kinds)
    return number, any(k is bool for k in kinds)


_UNIONS = (typing.Union, types.UnionType)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    members = typing.get_args(annotation) if typing.get_origin(annotation) in _UNIONS else ()
    for kind in members or (annotation,):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None


def _not_finite(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        return not math.isfinite(float(value))
    except (ValueError, OverflowError):
        return False  # not a number at all, or an int beyond floats: pydantic's checks say so


def _any_not_finite(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_any_not_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_any_not_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def numeric_problems(model: type[BaseModel], data: Any, prefix: str = "") -> list[str]:
    """One line per number field of ``model`` (nested sections included) that ``data`` fills
    with a boolean (``num_generations: true`` is not 1) or a NaN / infinite value; free
    mappings (``task_options``) may hold no NaN or infinity either. Pydantic alone would
    read ``true`` as 1 and, outside this module's models, take ``inf``."""
    if not isinstance(data, dict):
        return []
    lines = []
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        value, where = data[name], f"{prefix}{name}"
        nested = _model_of(field.annotation)
        number, boolean = _numeric_kinds(field.annotation)
        element = typing.get_args(field.annotation)
        if nested is not None and isinstance(value, dict):
            lines += numeric_problems(nested, value, f"{where}.")
        elif number and not boolean and isinstance(value, bool):
            lines.append(f"  {where}: a boolean ({str(value).lower()}) is not a number")
        elif number and _not_finite(value):
            lines.append(f"  {where}: Input should be a finite number (got {value!r})")
        elif float in element and isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    lines.append(f"  {where}.{i}: a boolean ({str(item).lower()}) is not a number")
                elif _not_finite(item):
                    lines.append(f"  {where}.{i}: Input should be a finite number (got {item!r})")
        elif typing.get_origin(field.annotation) is dict and _any_not_finite(value):
            lines.append(f"  {where}: NaN and infinity are not settings (got {value!r})")
    return lines


def read_config_file(path: Path) -> Any:
    """The YAML document of a config file; missing, huge, binary or hostile files refused."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is {size} bytes; a config is at most {MAX_CONFIG_BYTES}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from None
    try:
        return safe_yaml(text, f"config file {path}")
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: what and where."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def merge_settings(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = merge_settings(out[k], v) if nested else v
    return out
