"""Local data files: where the shared evaluation sets live, and strict readers.

Readers name the file, the row and the missing field when a row is malformed,
so a bad dataset fails loudly instead of training on garbage.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA_ENV = "TILTMATCH_DATA_DIR"


class DatasetError(ValueError):
    """A dataset file that is missing, unreadable, or has a row without a required field."""


#: the evaluation sets and METHOD.md shipped inside the package (and so in the wheel)
PACKAGED_DATA = Path(__file__).resolve().parent / "assets" / "data"
PACKAGED_METHOD = Path(__file__).resolve().parent / "assets" / "METHOD.md"


def shared_data_dir() -> Path:
    """The folder of the shipped evaluation sets.

    ``$TILTMATCH_DATA_DIR`` if set; else the copy shipped in the package
    (``tiltmatch/assets/data``, also in an installed wheel); else the first
    ``shared/data`` found beside the current directory or the package's checkout, walking up.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    if PACKAGED_DATA.is_dir():
        return PACKAGED_DATA
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in (start, *start.parents):
            for candidate in (parent / "shared" / "data", parent.parent / "shared" / "data"):
                if candidate.is_dir():
                    return candidate
    raise DatasetError(
        f"cannot find the shared data folder: set ${DATA_ENV} to the folder holding "
        "gsm8k/, math500/, countdown/ and sudoku/"
    )


def _check_fields(row: dict[str, Any], required: Sequence[str], where: str) -> dict[str, Any]:
    missing = [f for f in required if f not in row or row[f] is None]
    if missing:
        raise DatasetError(f"{where}: row has no field {', '.join(map(repr, missing))}")
    return row


_BOMS = {b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16", b"\xef\xbb\xbf": "UTF-8 with a BOM"}


def _read_text(path: Path) -> str:
    """A data file's text: UTF-8 only, with a message naming the file for anything else."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read dataset file {path}: {err.strerror}") from None
    for bom, name in _BOMS.items():
        if data.startswith(bom) and name != "UTF-8 with a BOM":
            raise DatasetError(f"dataset file {path} is {name} text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless: drop it
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"dataset file {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
            "is it a binary file?"
        ) from None
    if "\x00" in text:
        raise DatasetError(f"dataset file {path} holds NUL bytes: it is not a text file")
    return text


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; each must be an object with the ``required`` fields."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    rows = []
    # One decoding of the whole file, so that a bad byte anywhere names the file. Records end
    # at "\n" only: str.splitlines() would also split at U+2028, U+0085 and friends, which a
    # JSON string may hold as they are.
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        rows.append(_check_fields(row, required, where))
    return rows


def read_csv(path: str | Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a CSV file with a header; each must have the ``required`` columns filled."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    return [
        _check_fields(
            {k: v for k, v in row.items() if v not in ("", None)}, required, f"{path}:{i}"
        )
        for i, row in enumerate(reader, 2)
    ]
