"""Sampler strategies as registered strategies (tiltmatch.sampling.registry).

The traps: a setting that is silently ignored (a block diffusion model asked for threshold
decoding and decoded otherwise, ``threshold`` written next to ``mode: exact``), a mode that
fails at its first forward instead of at config check (Dream with a cache), and a new
strategy that needs edits all over the package. Every (model family x sampler mode x
setting) combination below either runs and changes the output where the setting is read
(or leaves it alone where it is documented inert), or is refused by the run config's
validation with one line naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from family_fixture import write_tiny_dream, write_tiny_sdar

from tiltmatch.config import ConfigError, build_config
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.registry import SAMPLERS, register_sampler, sampler_class, strategy_for
from tiltmatch.sampling.remasking import ConfidenceRule, commit_positions
from tiltmatch.sampling.sampler import generate
from tiltmatch.sampling.strategies import ExactSampler

VOCAB, PAD, MASK, EOS, LENGTH = 16, 0, 1, 2, 8
FAMILIES = ("llada", "dream", "block_diffusion")
MODES = ("exact", "cached", "parallel", "cached+parallel")
#: the sampler section every case starts from: two semi-AR blocks, so that caches and early
#: finishing have something to act on
BASE = {"steps": 8, "block_length": 4, "temperature": 1.0}
#: one non-default value per setting, chosen where it must show in a tiny model's samples
SETTINGS: dict[str, dict[str, object]] = {
    "none": {},
    "steps": {"steps": 4},
    "block_length": {"block_length": 8},
    "remasking": {"remasking": "random"},
    "temperature": {"temperature": 0.0},
    "noise": {"noise": "compatible"},
    "early_finish": {"early_finish": True},
    "cache": {"cache": "prefix"},
    "refresh_every": {"refresh_every": 1},
    "threshold": {"threshold": 1e-9},
    "factor": {"factor": 1e9},
    "batch_rows": {"batch_rows": 5},
}

R, C, I = "refused", "changes", "inert"  # noqa: E741 - a table's legend
_COMMON = {
    "exact": dict(steps=C, block_length=C, remasking=C, temperature=C, noise=C, early_finish=C,
                  cache=R, refresh_every=R, threshold=R, factor=R, batch_rows=C),
    "cached": dict(steps=C, block_length=C, remasking=C, temperature=C, noise=C, early_finish=C,
                   cache=C, refresh_every=C, threshold=R, factor=R, batch_rows=C),
    "parallel": dict(steps=I, block_length=C, remasking=R, temperature=C, noise=C, early_finish=C,
                     cache=R, refresh_every=R, threshold=C, factor=C, batch_rows=C),
    "cached+parallel": dict(steps=I, block_length=C, remasking=R, temperature=C, noise=C,
                            early_finish=C, cache=C, refresh_every=C, threshold=C, factor=C,
                            batch_rows=C),
}  # fmt: skip
_BLOCK = {
    "exact": dict(steps=C, block_length=I, remasking=C, temperature=C, noise=C, early_finish=C,
                  cache=R, refresh_every=R, threshold=R, factor=R, batch_rows=C),
    "parallel": dict(steps=C, block_length=I, remasking=R, temperature=C, noise=C, early_finish=C,
                     cache=R, refresh_every=R, threshold=C, factor=C, batch_rows=C),
}  # fmt: skip


def expected(family: str, mode: str, setting: str) -> str:
    """What must happen, written out by hand (not read from the registry)."""
    if family == "dream" and mode.startswith("cached"):
        return R  # a shifted head cannot read a cached window
    if family == "block_diffusion":
        table = _BLOCK.get(mode)
        return R if table is None else ("runs" if setting == "none" else table[setting])
    return "runs" if setting == "none" else _COMMON[mode][setting]


@pytest.fixture(scope="module")
def denoisers() -> dict[str, MaskedDenoiser]:
    """A tiny model of each family, its weights scaled up so that its attention is sharp
    enough for a stale cache to move its draws (at initialisation it hardly would)."""
    out = {}
    for family in FAMILIES:
        spec = TinyModelSpec(32, 2, 2, 64, family=family, block_size=4)
        model = tiny_denoiser(VOCAB, spec, seed=5)
        with torch.no_grad():
            for weight in model.parameters():
                weight.mul_(3.0)
        out[family] = MaskedDenoiser(model, MASK, PAD).eval()
    return out


PROMPTS = [
    torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    for n in (1, 2, 3, 4, 5, 6, 7, 2, 3, 5, 1, 4, 6, 3, 2, 5)
]


def _overrides(family: str, mode: str, fields: dict[str, object]) -> list[str]:
    sets = [f"sampler.{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in fields.items()]
    return [f"model.family={family}", f"sampler.mode={mode}", *sets]


def _sample(denoiser: MaskedDenoiser, sampler: SamplingConfig, ending: bool) -> torch.Tensor:
    # ``ending``: only end-of-text and one other token may be drawn, so that rows end early.
    forbidden = [t for t in range(VOCAB) if t not in (MASK, EOS, 5)] if ending else [PAD]
    out = generate(
        denoiser,
        PROMPTS,
        LENGTH,
        sampler,
        torch.Generator().manual_seed(11),
        forbidden_token_ids=forbidden,
        eos_token_id=EOS,
    )
    assert not bool((out.responses == MASK).any())
    return out.responses


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_mode_and_setting_runs_as_it_should_or_is_refused(
    denoisers, family, mode, setting
) -> None:
    outcome = expected(family, mode, setting)
    changed = {**BASE, **SETTINGS[setting]}
    if outcome == R:
        with pytest.raises(ConfigError) as refused:
            build_config(overrides=_overrides(family, mode, changed))
        message = str(refused.value)
        assert "\n" not in message and ("mode" in message or setting in message)
        return
    base = build_config(overrides=_overrides(family, mode, BASE)).sampler
    config = build_config(overrides=_overrides(family, mode, changed)).sampler
    ending = setting == "early_finish"
    before, after = (
        _sample(denoisers[family], base, ending),
        _sample(denoisers[family], config, ending),
    )
    if outcome == C:
        assert not torch.equal(before, after), f"{setting} changed nothing"
    else:  # "runs" (no setting changed) or "inert" (documented as not read by this mode)
        assert torch.equal(before, after)


def test_generate_refuses_what_the_config_check_refuses(denoisers) -> None:
    """A library caller that builds the denoiser itself meets the same refusals at the first
    call, before any forward (no fallback to another decoding)."""
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"cannot decode a Dream model.*shifted head"):
        generate(denoisers["dream"], PROMPTS, LENGTH, SamplingConfig(mode="cached"), g)
    with pytest.raises(ValueError, match=r"its own decoder, which honours modes exact, parallel"):
        generate(denoisers["block_diffusion"], PROMPTS, LENGTH, SamplingConfig(mode="cached"), g)
    with pytest.raises(ValueError, match=r"threshold=0\.5 has no effect with mode 'exact'"):
        SamplingConfig(threshold=0.5)
    assert SamplingConfig(threshold=0.9).mode == "exact"  # the default, written out, passes


def test_trajectory_states_need_a_fixed_number_of_steps() -> None:
    with pytest.raises(ConfigError, match=r"dtm\.states=trajectory .* sampler\.mode='parallel'"):
        build_config(overrides=["sampler.mode=parallel", "dtm.states=trajectory"])
    # The block decoder's threshold decoding keeps its schedule's step count: recordable.
    config = build_config(
        overrides=[
            "model.family=block_diffusion",
            "sampler.mode=parallel",
            "dtm.states=trajectory",
        ]
    )
    assert strategy_for("block_diffusion", config.sampler).fixed_steps


# --------------------------------------------------------------------------- the block decoder


def test_remasking_rule_is_sdar_low_confidence_dynamic() -> None:
    inf = float("inf")
    score = torch.tensor([[0.95, 0.5, -inf, 0.92], [0.3, 0.2, 0.1, -inf], [0.99, 0.97, 0.1, 0.2]])
    rule = ConfidenceRule(threshold=0.9)
    # Quota 1: every position above the threshold, at least the single most confident.
    assert commit_positions(score.double(), 1, rule).tolist() == [
        [True, False, False, True],
        [True, False, False, False],
        [True, True, False, False],
    ]
    # Quota 2: the rule's positions only where they are at least two, else the top two.
    assert commit_positions(score.double(), 2, rule).tolist() == [
        [True, False, False, True],
        [True, True, False, False],
        [True, True, False, False],
    ]
    # No rule: exactly the quota, never a closed (-inf) position.
    assert commit_positions(score.double(), 3, None)[1].tolist() == [True, True, True, False]


def test_block_threshold_decoding_commits_every_confident_token(denoisers, monkeypatch) -> None:
    """mode=parallel on a block diffusion model is threshold decoding: above-threshold tokens
    are committed together (a near-zero threshold: one forward per block, plus the cache's),
    a threshold above 1 commits the schedule's quota (equal to mode exact)."""
    denoiser = denoisers["block_diffusion"]
    calls: list[int] = []
    original = MaskedDenoiser.forward
    monkeypatch.setattr(
        MaskedDenoiser,
        "forward",
        lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1],
    )
    prompts = [[3, 4, 5, 6]] * 3  # offset 0: two blocks of four
    everything = SamplingConfig(mode="parallel", steps=LENGTH, threshold=1e-9, temperature=0.0)
    out = generate(denoiser, prompts, LENGTH, everything, torch.Generator())
    assert not bool((out.responses == MASK).any())
    assert len(calls) == 1 + 2 * 2  # prefill, then per block one step and the cache's forward
    never = everything.model_copy(update={"threshold": 2.0})
    exact = SamplingConfig(steps=LENGTH, temperature=0.0)
    g = torch.Generator
    assert torch.equal(
        generate(denoiser, PROMPTS, LENGTH, never, g().manual_seed(0)).responses,
        generate(denoiser, PROMPTS, LENGTH, exact, g().manual_seed(0)).responses,
    )


# --------------------------------------------------------------------------- a new strategy


class LeftToRightSampler(ExactSampler):
    """Commits the leftmost masked positions of the block, the schedule's count per step."""

    name = "left-to-right"

    def choose(self, score: torch.Tensor, quota: torch.Tensor | int) -> torch.Tensor:
        columns = torch.arange(score.shape[1], dtype=torch.float64, device=score.device)
        order = torch.where(torch.isfinite(score), -columns, torch.full_like(score, -torch.inf))
        return commit_positions(order, quota)


@pytest.fixture
def left_to_right() -> Iterator[type[LeftToRightSampler]]:
    register_sampler(LeftToRightSampler)
    yield LeftToRightSampler
    SAMPLERS.pop(LeftToRightSampler.name)


def test_a_strategy_registered_alone_runs_through_tiltmatch_eval(
    left_to_right, denoisers, tmp_path: Path, capsys
) -> None:
    from tiltmatch.cli import main

    assert sampler_class("left-to-right") is left_to_right
    config = SamplingConfig(mode="left-to-right", steps=8, block_length=4)
    out = generate(denoisers["llada"], PROMPTS, LENGTH, config, torch.Generator(), True)
    assert out.visited is not None
    for canvas in out.visited:  # the committed positions are always a prefix of each block
        for lo in (0, 4):
            committed = (canvas[:, lo : lo + 4] != MASK).long()
            assert bool((committed[:, 1:] <= committed[:, :-1]).all())
    runs = {}
    for mode in ("exact", "left-to-right"):
        dest = tmp_path / mode
        args = ["eval", "--model", "shipped:maze", "--task", "maze", "--limit", "4"]
        code = main([*args, "--sampler", mode, "--temperature", "1", "--out", str(dest)])
        assert code == 0, capsys.readouterr().err
        assert json.loads((dest / "metrics.json").read_text())["sampler"] == mode
        runs[mode] = (dest / "outputs.jsonl").read_text()
    assert runs["exact"] != runs["left-to-right"]


# --------------------------------------------------------------------------- tiltmatch eval


@pytest.mark.parametrize(
    ("writer", "mode", "refused"),
    [
        (write_tiny_dream, "cached", r"--sampler='cached' cannot decode a Dream model"),
        (write_tiny_sdar, "cached+parallel", r"cannot decode a block diffusion .*exact, parallel"),
        (write_tiny_sdar, "parallel", None),
    ],
)
def test_eval_refuses_a_sampler_the_checkpoints_family_cannot_honour(
    tmp_path: Path, capsys, writer, mode, refused
) -> None:
    from tiltmatch.cli import main

    fam = writer(tmp_path / "ckpt")
    args = ["eval", "--model", str(fam.folder), "--task", "maze", "--limit", "1"]
    args += ["--gen-length", "8", "--block-length", "4", "--steps", "8", "--sampler", mode]
    code = main([*args, "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    if refused is None:
        assert code == 0, err
        return
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(refused, err), err
