"""Smoke test of benchmarks/gpu_check.py on a CPU with the tiny model (not the GPU check itself)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_benchmark

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # PEFT reads a renamed flag

TINY = ["--model", "tiny", "--gen-length", "16", "--steps", "8", "--block-length", "8"]


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    return load_benchmark("gpu_check", "tiltmatch_gpu_check")


def test_tiny_check_measures_every_part(
    gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gpu_check.json"
    argv = [*TINY, "--device", "cpu", "--batch", "4", "--lora-r", "4", "--out", str(out)]
    argv += ["--parts", "abcde"]
    assert gpu_check.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["device_type"] == "cpu"
    assert set(record["versions"]) >= {"torch", "transformers", "peft"}
    settings = record["settings"]
    assert (settings["batch"], settings["group"], settings["prompts"]) == (4, 2, 2)
    assert settings["prompt_lengths"] == [64, 128]  # mixed lengths: left padding is exercised
    assert settings["lora"]["r"] == 4 and settings["gradient_checkpointing"] is True
    parts = record["parts"]
    assert set(parts) == {"a", "b", "c", "d", "e"}
    modes = parts.pop("d")["modes"]
    assert [name for name, _ in gpu_check.SAMPLER_MODES] == list(modes)
    for mode in modes.values():
        assert mode["seconds"] > 0 and mode["peak_memory_gib"] is None
    sar = parts["e"]  # c-DTM with SAR states, projected and full logits: the same loss
    assert sar["loss"] == pytest.approx(sar["full_logits"]["loss"], rel=1e-5)
    for part in parts.values():
        assert part["seconds"] > 0 and part["tokens_per_second"] > 0
        assert part["peak_memory_gib"] is None  # not measured on a CPU
    sampler = parts["a"]  # through the bare base; the rollout path under "teacher"
    for run in (sampler, sampler["teacher"]):
        assert run["seconds"] > 0 and run["tokens_per_second"] > 0
        assert run["generated_tokens"] == 4 * 16 and run["all_positions_unmasked"]
    dtm, grpo = parts["b"], parts["c"]
    assert dtm["objective"] == "DTMObjective" and dtm["stage"]["h"] > 0
    # The c-DTM update moved the student adapter only.
    assert dtm["student_changed"] and not dtm["teacher_changed"] and not dtm["base_changed"]
    assert grpo["objective"] == "DiffuGRPOObjective" and grpo["student_changed"]
    assert not grpo["teacher_changed"] and not grpo["base_changed"]
    for update in (dtm, grpo):
        assert math.isfinite(update["loss"]) and update["repeat_seconds"] > 0
    assert record["run_configs"]["diffu-grpo"]["method"] == "diffu-grpo"
    table = capsys.readouterr().out
    for row in ("(a) sampler, bare base", "(a) sampler, teacher adapter", "(b) c-DTM update"):
        assert f"| {row} |" in table
    assert "| (c) diffu-GRPO update |" in table
    assert "| (d) sampler, cached dual |" in table
    assert "| (e) c-DTM update, SAR states, full logits |" in table


def test_missing_cuda_is_one_clear_line(
    gpu_check: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main([*TINY, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err and err.startswith("gpu_check: error:")
    assert not out.exists()
    # The 8B model is refused on a CPU the same way, before anything is built.
    assert gpu_check.main(["--device", "cpu", "--out", str(out)]) == 2
    assert "--model tiny" in capsys.readouterr().err
