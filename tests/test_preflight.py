"""Bound before you allocate (issue 24): the resource preflight refuses, with one line naming the
settings and the estimate, every size knob whose memory would exceed the machine (here a stated
cap, ``$TILTMATCH_MEMORY_LIMIT``, so the tests mean the same on every machine), before anything
is allocated or written; and it leaves ordinary sizes alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES
from hostile import refusal, set_args
from test_api import tiny_args, word_rows

from tiltmatch import DTMTrainer, preflight
from tiltmatch.config import build_config
from tiltmatch.preflight import (
    MEMORY_LIMIT_ENV,
    Heartbeat,
    ModelShape,
    ResourceError,
    forward_need,
    model_need,
    parse_bytes,
    refuse_over,
)

TINY = set_args(TINY_OVERRIDES)
CAP = "2GiB"
LIMIT = f"${MEMORY_LIMIT_ENV} allows 2 GiB: lower these settings"


@pytest.fixture(autouse=True)
def _memory_cap(monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, CAP)


def _train(tmp_path, *overrides: str) -> list[str]:
    return ["train", "--out", str(tmp_path / "run"), "--quiet", *TINY, *set_args(list(overrides))]


@pytest.mark.parametrize(
    ("override", "start"),
    [
        (
            "train.num_generations=100000",
            "train.prompts_per_batch=2 x train.num_generations=100000: one update's activations "
            "(200000 completions x 24 tokens x 1 layer(s)) would take about 12.1 GiB of memory",
        ),
        (
            "model.hidden_size=4000000",
            "model.hidden_size=4000000, model.num_layers=1, model.intermediate_size=64: the model "
            "(6.4e+13 parameters x 5 copies) would take about 1.14 PiB of memory",
        ),
        (
            "model.num_layers=100000",
            "model.hidden_size=32, model.num_layers=100000, model.intermediate_size=64: the model",
        ),
        (
            "train.buffer_prompts=1000000",
            "train.buffer_prompts=1000000 x train.num_generations=2: the replay buffer (2000000 "
            "rows) would take about",
        ),
        (
            "eval.samples_per_example=10000000",
            "eval.examples=4 x eval.samples_per_example=10000000: the held-out responses "
            "(40000000 rows)",
        ),
    ],
)
def test_train_refuses_each_size_knob_naming_it(override, start, tmp_path, capsys) -> None:
    line = refusal(_train(tmp_path, override), capsys)
    assert line.startswith(start), line
    assert line.endswith(LIMIT)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("knob", ["sampler.steps", "eval.sampler.steps"])
def test_sampler_steps_beyond_the_response_are_refused(knob, tmp_path, capsys) -> None:
    override = f"{knob}=1000000000"
    if knob.startswith("eval."):
        override = "eval.sampler={steps: 1000000000, block_length: 8}"
    line = refusal(_train(tmp_path, override), capsys)
    assert line == (
        f"{knob}=1000000000 exceeds the 8-token response: a step commits at least one token, "
        "so at most 8 steps do any work"
    )
    assert not (tmp_path / "run").exists()


def test_task_size_beyond_the_model_positions_is_refused_before_the_pool(tmp_path, capsys):
    started = time.monotonic()
    line = refusal(_train(tmp_path, "task_options={size: 30}"), capsys)
    assert line == (
        "task maze (task_options size=30): a prompt of 900 tokens plus a 8-token response needs "
        "908 positions; the model has 256 (max_position_embeddings)"
    )
    assert time.monotonic() - started < 10  # one maze was built, not the pool of 16
    assert not (tmp_path / "run").exists()


def test_a_task_whose_one_example_takes_too_long_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "EXAMPLE_SECONDS", 0.5)
    started = time.monotonic()
    line = refusal(_train(tmp_path, "task_options={size: 500}"), capsys)
    assert line == (
        "task maze (task_options size=500): building one example took longer than 0.5 s; the "
        "20 examples the run needs would take hours"
    )
    assert time.monotonic() - started < 10
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("flags", "start"),
    [
        (
            ["--limit", "10", "--samples", "100000000"],
            "--samples 100000000 x 10 examples: the responses (1000000000 rows) would take about",
        ),
        (
            ["--limit", "10", "--samples", "100000", "--batch-size", "1000000"],
            "--batch-size 1000000: one sampling forward (1000000 rows x 24 tokens) would take",
        ),
    ],
)
def test_eval_refuses_samples_and_batch_size_naming_them(flags, start, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--model", "shipped:maze", "--task", "maze", "--out", str(out), *flags]
    line = refusal(argv, capsys)
    assert line.startswith(start), line
    assert line.endswith(LIMIT)
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "start"),
    [
        (["--batch-size", "10000000"], "--batch-size 10000000: one update's activations"),
        (
            ["--hidden-size", "4000000"],
            "--hidden-size 4000000, --num-layers 4, --intermediate-size 12000000: the model",
        ),
        (["--num-layers", "100000"], "--hidden-size 128, --num-layers 100000, "),
        (["--train-examples", "1000000"], "--train-examples 1000000: the training examples"),
    ],
)
def test_pretrain_refuses_each_size_naming_it(flags, start, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1GiB")
    out = tmp_path / "base"
    line = refusal(["pretrain", "--out", str(out), "--steps", "1", *flags], capsys)
    assert line.startswith(start), line
    assert not out.exists()


def test_demo_refuses_an_absurd_size_before_writing(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--tiny", "--out", str(out), "--set", "train.num_generations=10000000"]
    line = refusal(argv, capsys)
    assert line.startswith("train.prompts_per_batch=2 x train.num_generations=10000000: ")
    assert not out.exists()


def test_the_api_refuses_an_absurd_size_at_construction(tmp_path) -> None:
    with pytest.raises(ResourceError, match=r"train\.num_generations=1000000: "):
        DTMTrainer(
            reward_funcs=lambda prompts, completions, **c: [1.0] * len(completions),
            train_dataset=word_rows(),
            args=tiny_args(
                tmp_path / "r", num_generations=1_000_000, per_device_train_batch_size=1_000_000
            ),
        )
    assert not (tmp_path / "r").exists()


def test_ordinary_sizes_pass(tmp_path, capsys) -> None:
    """The tiny run, and the LLaDA-8B published evaluation (batch 64, 512 tokens, float32
    weights, temperature 0) on an 80 GiB GPU: no false refusal."""
    from tiltmatch.training.runner import build_trainer

    build_trainer(build_config(overrides=TINY_OVERRIDES), tmp_path / "run", quiet=True)
    llada = ModelShape(126464, 4096, 32, 32, 12288, 4096)
    needs = [
        model_need(llada, "--model llada", 4.0, 1.0),
        forward_need("one sampling forward", "--batch-size 64", 64, 300 + 512, 64 * 32, llada, 4),
    ]
    gpu = (80 * 2**30, "GPU 0 has")
    budget = preflight.memory_budget
    try:
        preflight.memory_budget = lambda device="cpu": gpu  # type: ignore[assignment]
        refuse_over(needs)
        needs[1] = forward_need("one forward", "--batch-size 1024", 1024, 812, 1024 * 32, llada, 4)
        with pytest.raises(ResourceError, match="--batch-size 1024: one forward"):
            refuse_over(needs)
    finally:
        preflight.memory_budget = budget  # type: ignore[assignment]


def test_llada_countdown_recipe_rollouts_need_lean_noise_on_an_80_gib_gpu(monkeypatch) -> None:
    """What the preflight found in the recipes: on a GPU the compatible noise draws float64
    uniforms for rows x length x vocabulary (240 x 256 x 126464: 58 GiB) at every step; the
    lean noise (same distribution, now the default) fits an 80 GiB GPU, and an H200's 139 GiB
    takes either."""
    from tiltmatch.preflight import run_needs

    recipe = Path(__file__).resolve().parents[1] / "configs" / "llada" / "countdown.yaml"
    config = build_config(recipe, ["sampler.noise=compatible"])
    llada = ModelShape(126464, 4096, 32, 32, 12288, 4096)

    def needs(cfg):
        return [
            model_need(llada, "model.base", 0.5, 1.0),
            *run_needs(cfg, llada, 456, 256, 2, True),
        ]

    monkeypatch.setattr(preflight, "memory_budget", lambda device="cpu": (80 * 2**30, "GPU 0 has"))
    with pytest.raises(ResourceError) as err:
        refuse_over(needs(config), "cuda")
    assert str(err.value).startswith(
        "train.buffer_prompts=40 x train.num_generations=6 with sampler.noise=compatible on a "
        "GPU: the sampler's float64 noise (240 rows x 256 positions x 126464 tokens) would take "
        "about 57.9 GiB of memory"
    )
    assert str(err.value).endswith(
        ": set sampler.noise=lean (the same distribution, noise "
        "drawn at the open positions only) or lower these settings"
    )
    lean = build_config(recipe)  # the recipe as written: lean noise, the default
    assert lean.sampler.noise == "lean"
    refuse_over(needs(lean), "cuda")
    monkeypatch.setattr(preflight, "memory_budget", lambda device="cpu": (139 * 2**30, "GPU"))
    refuse_over(needs(config), "cuda")


def test_memory_limit_reads_sizes_and_refuses_garbage(monkeypatch) -> None:
    assert parse_bytes("8GiB") == 8 * 2**30 and parse_bytes("500 MB") == 500 * 10**6
    assert parse_bytes("1e9") == 10**9
    for text in ("lots", "-1GiB", "0"):
        with pytest.raises(ResourceError, match="is not a size such as 8GiB"):
            parse_bytes(text)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1TiB")  # above the machine's: the machine's counts
    assert preflight.memory_budget()[1] == "this machine has"


def test_heartbeat_shows_progress_within_seconds(capsys) -> None:
    with Heartbeat("building the pool", delay=0.2):
        time.sleep(1.5)
    err = capsys.readouterr().err
    assert "building the pool" in err
    with Heartbeat("quick", delay=0.5):
        pass
    assert "quick" not in capsys.readouterr().err  # nothing for a phase that ends at once
