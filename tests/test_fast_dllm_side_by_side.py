"""benchmarks/fast_dllm_side_by_side.py without Fast-dLLM's code: a path that is not a
Fast-dLLM checkout is one line and exit status 2 (the code is never vendored; the side by
side itself runs against a checkout the user gives)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_benchmark


def test_a_folder_that_is_not_fast_dllm_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = load_benchmark("fast_dllm_side_by_side", "tiltmatch_fast_dllm_side_by_side")
    assert script.main(["--fast-dllm", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not Fast-dLLM" in err
    assert set(script.MODES) == {"no cache", "prefix cache", "dual cache"}
