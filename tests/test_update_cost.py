"""benchmarks/update_cost.py at a toy size: c-DTM before and after projecting only the
positions its loss reads (same loss, less memory), a baseline that reads every position
unchanged by the switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.mark.slow
def test_update_cost_at_a_toy_size(tmp_path: Path) -> None:
    script = load_benchmark("update_cost", "tiltmatch_update_cost")
    argv = ["--hidden", "64", "--layers", "1", "--lora-r", "4", "--response-length", "32",
            "--block", "8", "--repeats", "1", "--methods", "dtm", "wd1", "--out",
            str(tmp_path)]  # fmt: skip
    assert script.main(argv) == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "update_cost.json").read_text())["rows"]}
    dtm, wd1 = rows["dtm"], rows["wd1"]
    assert dtm["loss"]["projected"] == pytest.approx(dtm["loss"]["full"], rel=1e-5)
    # Full logits: 4 rows x 32 positions x 126,464 float32 logits (and their gradient) more
    # than at most 8 positions of each row.
    assert dtm["peak_mib"]["full"] - dtm["peak_mib"]["projected"] > 4 * 24 * 126464 * 4 / 2**20
    assert wd1["loss"]["projected"] == wd1["loss"]["full"]
    assert wd1["peak_mib"]["projected"] == wd1["peak_mib"]["full"]
