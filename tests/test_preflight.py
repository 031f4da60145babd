"""Bound before you allocate (issue 24): the resource preflight refuses, with one line naming the
settings and the estimate, every size knob whose memory would exceed the machine (here a stated
cap, ``$TILTMATCH_MEMORY_LIMIT``, so the tests mean the same on every machine), before anything
is allocated or written; and it leaves ordinary sizes alone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
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
    format_bytes,
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


LLADA_8B = ModelShape(126464, 4096, 32, 32, 12288, 4096)
COUNTDOWN = Path(__file__).resolve().parents[1] / "configs" / "llada" / "countdown.yaml"


def _countdown_needs(*overrides: str) -> list:
    """The Countdown recipe's needs on a GPU at LLaDA-8B's shape (4-bit weights, bf16
    activations, prompts of 200 tokens)."""
    from tiltmatch.preflight import run_needs

    config = build_config(COUNTDOWN, list(overrides))
    return [
        model_need(LLADA_8B, "model.base", 0.5, 1.0),
        *run_needs(config, LLADA_8B, 456, 256, 2, True),
    ]


def test_cached_sampler_keys_and_values_are_counted_and_batch_rows_bounds_them(monkeypatch) -> None:
    """A cached mode holds every layer's keys and values for prompt + response of every row
    of a generate call (240 x 456 x 32 x 2 x 4096 x 2 bytes: 53.4 GiB at the recipe's
    rebuild); the preflight counts them, names the mode, and ``sampler.batch_rows`` (the
    rows of one call) brings them under an 80 GiB GPU."""
    monkeypatch.setattr(preflight, "memory_budget", lambda device="cpu": (80 * 2**30, "GPU 0 has"))
    refuse_over(_countdown_needs(), "cuda")  # exact decoding: no cache
    needs = _countdown_needs("sampler.mode=cached", "sampler.cache=dual")
    cache = [n for n in needs if "cached keys and values" in n.what]
    rollouts = "train.buffer_prompts=40 x train.num_generations=6 with sampler.mode=cached"
    held = "eval.examples=256 x eval.samples_per_example=1 with sampler.mode=cached"
    assert [(n.phase, n.knobs) for n in cache] == [("sampling", rollouts), ("evaluation", held)]
    assert "(240 rows x 456 tokens x 32 layer(s))" in cache[0].what
    assert format_bytes(cache[0].nbytes) == "53.4 GiB"
    with pytest.raises(ResourceError) as err:  # evaluation's 256 rows are the larger call
        refuse_over(needs, "cuda")
    assert str(err.value).startswith(
        f"{held}: the sampler's cached keys and values (256 rows x 456 tokens x 32 layer(s)) "
        "would take about 57 GiB of memory"
    )
    assert str(err.value).endswith(
        "set sampler.batch_rows (the rows one generate call decodes at once; about 228 MiB a "
        "row here) or lower these settings"
    )
    bounded = _countdown_needs("sampler.mode=cached", "sampler.batch_rows=120")
    cache = [n for n in bounded if "cached keys and values" in n.what]
    assert all("(120 rows x 456 tokens x 32 layer(s))" in n.what for n in cache)
    assert [n.knobs for n in cache] == ["sampler.batch_rows=120 with sampler.mode=cached"] * 2
    refuse_over(bounded, "cuda")


def test_batch_rows_sizes_the_forward_and_the_evaluation_reads_its_own_sampler(monkeypatch) -> None:
    """The rows of the sizing forward are the rows a worker hands ``generate``
    (``rows_per_call``); held-out evaluation is sized by ``eval.sampler`` when it is set, its
    cache and its noise named by their own section."""
    from tiltmatch.preflight import run_needs

    config = build_config(COUNTDOWN, ["sampler.batch_rows=16"])
    needs = run_needs(config, LLADA_8B, 456, 256, 2, True)
    forwards = {n.phase: n for n in needs if "forward" in n.what}
    assert "(16 rows x 456 tokens)" in forwards["sampling"].what
    assert forwards["sampling"].knobs == "sampler.batch_rows=16"
    assert "(16 rows x 456 tokens)" in forwards["evaluation"].what  # eval uses sampler's rows
    config = build_config(
        COUNTDOWN,
        ["eval.sampler.mode=cached", "eval.sampler.noise=compatible", "eval.temperature=0.5"],
    )
    needs = run_needs(config, LLADA_8B, 456, 256, 2, True)
    evaluation = [n for n in needs if n.phase == "evaluation"]
    held = "eval.examples=256 x eval.samples_per_example=1"
    assert [n.knobs for n in evaluation] == [
        held,
        f"{held} with eval.sampler.noise=compatible on a GPU",
        f"{held} with eval.sampler.mode=cached",
    ]
    assert evaluation[2].fix.startswith("set eval.sampler.batch_rows")
    assert not any("cached" in n.knobs for n in needs if n.phase == "sampling")
    monkeypatch.setattr(preflight, "memory_budget", lambda device="cpu": (80 * 2**30, "GPU 0 has"))
    with pytest.raises(ResourceError, match=rf"^{held} with eval\.sampler\.noise=compatible"):
        refuse_over([model_need(LLADA_8B, "model.base", 0.5, 1.0), *needs], "cuda")


def test_the_preflight_sizes_the_rows_the_worker_samples(monkeypatch) -> None:
    """``rows_per_call`` is what :class:`RolloutWorker` does: the calls it makes to
    ``generate`` have that many rows, with and without ``batch_rows``."""
    from tiltmatch.sampling.config import SamplingConfig, rows_per_call
    from tiltmatch.training import rollouts

    calls: list[int] = []

    class Out:
        visited = None

        def __init__(self, rows: int, length: int) -> None:
            self.responses = torch.zeros(rows, length, dtype=torch.long)

    def fake_generate(denoiser, prompts, length, *args, **kwargs) -> Out:
        calls.append(len(prompts))
        return Out(len(prompts), length)

    monkeypatch.setattr(rollouts, "generate", fake_generate)

    class Codec:
        pad_token_id, eos_token_id = 0, 1

    for batch_rows, total in ((None, 600), (None, 40), (7, 30)):
        sampling = SamplingConfig(batch_rows=batch_rows)
        worker = rollouts.RolloutWorker(None, Codec(), 4, sampling, reward=lambda r, e: r)  # type: ignore[arg-type]
        calls.clear()
        worker.sample(None, [[2]] * total, None)  # type: ignore[arg-type]
        assert calls[0] == min(rows_per_call(sampling), total)
        assert sum(calls) == total


def test_eval_counts_a_cached_sampler_and_only_the_noise_it_draws(monkeypatch) -> None:
    """``tiltmatch eval`` sizes its sampler as the run's preflight does: a cached mode's keys
    and values are counted (and refused over the GPU, naming ``--batch-size``), and lean
    noise, the default, adds no float64 draw of rows x L x V on a GPU (it used to be counted
    whatever the noise setting, refusing runs that fit)."""
    from types import SimpleNamespace

    from tiltmatch.sampling.config import SamplingConfig
    from tiltmatch.tasks.base import Example
    from tiltmatch.training.model_eval import Protocol, preflight_eval

    config = {
        "vocab_size": 126464,
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 12288,
    }
    weight = torch.empty(1, dtype=torch.bfloat16, device="meta")  # off the CPU, as on a GPU
    denoiser = SimpleNamespace(
        model=SimpleNamespace(config=config), parameters=lambda: iter([weight])
    )
    codec = SimpleNamespace(encode_prompt=lambda prompt: [5] * 200)
    examples = [Example(prompt="p")] * 256
    args = SimpleNamespace(samples=1, batch_size=256, model="llada")
    monkeypatch.setattr(preflight, "memory_budget", lambda device="cpu": (80 * 2**30, "GPU 0 has"))

    def check(**sampler: object) -> None:
        protocol = Protocol(256, SamplingConfig(block_length=32, steps=128, **sampler))
        preflight_eval(args, denoiser, codec, examples, protocol)  # type: ignore[arg-type]

    check(temperature=1.0)  # lean noise: fits (compatible noise's draw alone is 62 GiB)
    with pytest.raises(
        ResourceError,
        match=r"^--batch-size 256 with sampler\.noise=compatible on a GPU: the sampler.s float64",
    ):
        check(temperature=1.0, noise="compatible")
    with pytest.raises(ResourceError) as err:
        check(mode="cached", cache="dual")
    assert str(err.value).startswith(
        "--batch-size 256 with --sampler cached: the sampler's cached keys and values (256 rows "
        "x 456 tokens x 32 layer(s)) would take about 57 GiB"
    )
    assert str(err.value).endswith(": lower --batch-size")
    args.batch_size = 64
    check(mode="cached", cache="dual")


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
