"""Helpers of the hostile-input suite (tests/test_hostile_*.py): run the CLI in-process, read
its one error line, and fingerprint a folder so a test can assert that nothing changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tiltmatch.cli import main


def folder_state(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (folders as ``<dir>``)."""
    if not folder.exists():
        return {}
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
    return out


def refusal(argv: list[str], capsys) -> str:
    """Run ``tiltmatch ARGV`` in-process; assert exit code 2, no traceback, and exactly one
    error line; return that line without its ``tiltmatch CMD: error:`` prefix."""
    code = main(argv)
    captured = capsys.readouterr()
    output = captured.err + captured.out
    assert code == 2, output
    assert "Traceback" not in output
    prefix = f"tiltmatch {argv[0]}: error: "
    lines = [line for line in captured.err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, captured.err
    return lines[0][len(prefix) :]


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for o in overrides for arg in ("--set", o)]
