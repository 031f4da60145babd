"""benchmarks/sampler_speed.py's tasks part on the shipped bases, at a toy size."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_benchmark


def load_script() -> ModuleType:
    return load_benchmark("sampler_speed", "tiltmatch_sampler_speed_in_test")


def test_difference_is_the_mean_gap_with_two_standard_errors() -> None:
    script = load_script()
    diff, interval = script.difference([0.5, 0.7], [0.4, 0.4])
    assert diff == pytest.approx(0.2)
    # variance of [0.5, 0.7] is 0.02 (n - 1), of the constant 0: 2 * sqrt(0.02 / 2) = 0.2
    assert interval == pytest.approx(0.2)
    assert math.isnan(script.difference([0.5], [0.4])[1])  # one seed: no spread


def test_tasks_part_reads_every_mode_against_exact_on_the_shipped_bases(tmp_path: Path) -> None:
    script = load_script()
    argv = ["tasks", "--prompts", "3", "--samples", "2", "--seeds", "2", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    rows = json.loads((tmp_path / "sampler_speed_tasks.json").read_text())["rows"]
    modes = [name for name, _ in script.TASK_MODES]
    assert [(r["task"], r["mode"]) for r in rows] == [
        (task, mode) for task in ("sudoku", "countdown") for mode in modes
    ]
    for r in rows:
        assert "assets" in r["base"]  # the shipped base, not a local pretraining
        assert 0.0 <= r["accuracy"] <= 1.0 and len(r["seeds"]) == 2
        if r["mode"] == "exact":
            assert r["difference_to_exact"] == 0.0
            assert r["forwards_per_batch"] == 8  # the recipe's 8 steps
        else:
            assert 1 <= r["forwards_per_batch"] <= 16  # at least one token per step


@pytest.mark.slow
def test_share_and_cache_parts_at_a_toy_size(tmp_path: Path) -> None:
    """The share part (default noise only) and the cache part's FLOP bound: the dual cache
    does fewer FLOPs than exact decoding, and the fraction is the speedup over that ratio."""
    script = load_script()
    argv = ["share", "cache", "--share-model", "1x64", "--skip-compatible", "--hidden", "64",
            "--layers", "1", "--cache-length", "64", "--prompt-length", "8", "--out",
            str(tmp_path)]  # fmt: skip
    assert script.main(argv) == 0
    rows = json.loads((tmp_path / "sampler_speed_share_cache.json").read_text())["rows"]
    share, cache = rows
    assert share["noise"] == "lean" and share["model"] == "1x64"
    assert 0.0 < share["sampler_share"] < 1.0
    assert cache["dual"]["flops"] < cache["exact"]["flops"]
    assert cache["flop_bound"] == pytest.approx(cache["exact"]["flops"] / cache["dual"]["flops"])
    assert cache["fraction_of_bound"] == pytest.approx(cache["speedup"] / cache["flop_bound"])
    # Both modes project the same open positions: 2 blocks of 16 steps committing 2 tokens
    # each, so 32 + 30 + ... + 2 = 272 rows per block, each 2 x 64 x V FLOPs.
    head = 2 * 2 * 272 * 64 * script.LLADA_VOCAB
    assert cache["exact"]["head_flops"] == cache["dual"]["head_flops"] == head
    assert 0.0 < cache["dual"]["head_seconds"] < cache["dual"]["seconds"]
    assert cache["body_flop_bound"] == pytest.approx(
        (cache["exact"]["flops"] - head) / (cache["dual"]["flops"] - head)
    )
