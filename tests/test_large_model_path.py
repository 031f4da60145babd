"""The LLaDA-8B path's holes (issue 22, item 5): a 4-bit base without bitsandbytes or a GPU is
one line, not a traceback; evaluation and sampling default to the accelerator when one is
visible; a multi-GPU launch on a machine without the GPUs is refused, not run as CPU
processes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from tiltmatch.cli import main
from tiltmatch.config import ConfigError
from tiltmatch.generation.pretrained import default_device
from tiltmatch.models import quantisation
from tiltmatch.training.model_eval import eval_device
from tiltmatch.training.runner import check_launch_devices

FOUR_BIT = ["--set", "model.base=shipped:maze", "--set", "model.load_in_4bit=true"]
FOUR_BIT += ["--set", "lora={r: 4, alpha: 8}"]


def one_line_refusal(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_four_bit_without_bitsandbytes_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(quantisation, "bitsandbytes_available", lambda: False)
    line = one_line_refusal(["train", "--out", str(tmp_path / "r"), *FOUR_BIT], capsys)
    assert line.startswith("tiltmatch train: error: model.load_in_4bit needs bitsandbytes")
    assert "pip install 'tiltmatch[quant]'" in line
    assert not (tmp_path / "r").exists()


def test_four_bit_without_a_gpu_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(quantisation, "bitsandbytes_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_refusal(["train", "--out", str(tmp_path / "r"), *FOUR_BIT], capsys)
    assert "model.load_in_4bit needs a CUDA GPU" in line


def test_a_missing_optional_package_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import tiltmatch.cli as cli

    def needs_a_package(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'peft'", name="peft")

    monkeypatch.setattr(cli, "cmd_train", needs_a_package)
    line = one_line_refusal(["train", "--out", str(tmp_path / "r")], capsys)
    assert line.startswith("tiltmatch train: error: No module named 'peft': an optional")


def test_the_device_defaults_to_the_accelerator(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    assert eval_device(argparse.Namespace(device=None)) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    assert eval_device(argparse.Namespace(device="cpu")) == torch.device("cpu")


def test_a_multi_gpu_launch_without_the_gpus_is_refused(tmp_path: Path, capsys, monkeypatch):
    # What `accelerate launch --config_file configs/accelerate/ddp.yaml` exports (its
    # multi-GPU launcher sets ACCELERATE_MIXED_PRECISION and no ACCELERATE_USE_CPU).
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_refusal(["train", "--out", str(tmp_path / "r")], capsys)
    assert "the launch starts 8 GPU processes on this machine" in line
    assert "0 CUDA device(s) are visible" in line and "accelerate launch --cpu" in line
    assert not (tmp_path / "r").exists()
    # CPU processes asked for (accelerate launch --cpu, or torchrun) are not refused
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    check_launch_devices()
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    check_launch_devices()
    with pytest.raises(ConfigError):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
        check_launch_devices()


@pytest.mark.parametrize(
    ("recipe", "sizes"),
    [
        (
            "countdown",
            {"gradient_accumulation_steps": 64, "buffer_prompts": 320, "refresh_prompts": 80},
        ),
        (
            "sudoku",
            {"gradient_accumulation_steps": 128, "buffer_prompts": 640, "refresh_prompts": 160},
        ),
    ],
)
def test_the_one_gpu_sizing_keeps_the_published_global_sizes(recipe, sizes) -> None:
    # README, "On one GPU": one process with 8 times the accumulation and the buffer does
    # per update what the 8 processes of the published runs do together.
    from tiltmatch.config import build_config

    root = Path(__file__).resolve().parents[1] / "configs" / "llada"
    eight = build_config(root / f"{recipe}.yaml").train
    one = build_config(root / f"{recipe}.yaml", [f"train.{k}={v}" for k, v in sizes.items()]).train
    for name, value in sizes.items():
        assert value == 8 * getattr(eight, name), name
    assert one.per_device_train_batch_size == eight.per_device_train_batch_size
