"""Negative rewards without bias: the reward baseline of METHOD.md section 5.

On an enumerable model with rewards of both signs, one DTM stage's minimiser is computed
from the package's own weights (rollout batches, the replay buffer's micro-batches, the
objective), with the expected weight of each outcome taken over every multiset of the
other rollouts of its group (``benchmarks/baseline_bias.py``):

- with the default baseline (``auto``: a declared lower bound, else a calibration sample
  drawn before training) the minimiser fitted by L-BFGS on the exact expected c-DTM loss is
  the tilted posterior (T) to 1e-6, for c = 0 and c = 1, for whole-group and
  single-completion micro-batches;
- every baseline computed from the very rewards it weights moves it by O(1/G);
- a micro-batch of single completions never computes a group statistic on fewer rows
  than the group.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import load_benchmark

from tiltmatch.config import DTMConfig
from tiltmatch.dtm import objective as dtm_objective
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.dtm.states import States
from tiltmatch.dtm.weights import rows_of_groups
from tiltmatch.objective import LossInputs, Phase

bias = load_benchmark("baseline_bias", "baseline_bias_for_tests")
TIMES = (0.25, 0.6, 1.0)  # a full-support omega on a grid


def exact_batch(p_a: torch.Tensor, weights: torch.Tensor):
    """Every (prompt, x, t, mask) with its probability: the exact expected loss as one batch
    whose row weights are the expected tilt weights ``W(c, x)``."""
    xs, zs, cs, ws, pws = [], [], [], [], []
    for c, (xi, x) in itertools.product(range(bias.PROMPTS), enumerate(bias.ALL_X)):
        for t, bits in itertools.product(TIMES, itertools.product([0, 1], repeat=bias.L)):
            q = float(torch.prod(torch.tensor([t if b else 1 - t for b in bits])))
            prob = float(p_a[c, xi]) * q / len(TIMES)
            xs.append(x)
            zs.append(tuple(bias.MASK if b else v for b, v in zip(bits, x, strict=True)))
            cs.append(c)
            ws.append(float(weights[c, xi]))
            pws.append([prob / t if b else 0.0 for b in bits])
    pw = torch.tensor(pws, dtype=torch.float64)
    states = States(z=torch.tensor(zs), loss_mask=pw > 0, position_weight=pw * len(xs))
    return torch.tensor(xs), states, torch.tensor(cs), torch.tensor(ws, dtype=torch.float64)


def fit(x, states, prompts, w, c: float, teacher: torch.Tensor | None) -> torch.Tensor:
    """The tabular denoiser (one logit vector per prompt, state, position) minimising the
    c-DTM loss; returns its posteriors ``[PROMPTS, |Z|, L, V]`` and the clamp rate."""
    index = {z: k for k, z in enumerate(bias.ALL_Z)}
    idx = torch.tensor([index[tuple(z)] for z in states.z.tolist()])
    shape = (bias.PROMPTS, len(bias.ALL_Z), bias.L, bias.V)
    table = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    teacher_logits = None if teacher is None else teacher[prompts, idx]
    opt = torch.optim.LBFGS(
        [table], max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16,
        line_search_fn="strong_wolfe", history_size=50,
    )  # fmt: skip
    clamp = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss, stats = dtm_loss(table[prompts, idx], x, states, w, c, teacher_logits)
        clamp.append(stats.clamp_rate)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return torch.softmax(table.detach(), -1), max(clamp)


@pytest.mark.parametrize("shape", ["prompts", "completions"])
@pytest.mark.parametrize("c", [0.0, 1.0])
@pytest.mark.parametrize("declared", [None, -1.0])
def test_default_baseline_stage_minimiser_is_the_tilted_posterior(
    shape: str, c: float, declared: float | None
) -> None:
    p0, r = bias.problem()
    assert float(r.min()) < 0 < float(r.max())  # rewards of both signs
    p_a = bias.tilted(p0, r, bias.A)
    target = bias.posterior(bias.tilted(p0, r, bias.A + bias.H))
    calibration = bias.calibration_sample(p0, r)
    weights_of = bias.objective_weights("auto", calibration, bound=declared)
    group = 4
    big_w = bias.expected_weights(weights_of, p_a, r, group, shape)
    # auto: the declared bound, else the calibration sample's lowest reward (here the lowest
    # reward there is, so every w >= 1 and c = 1 never needs the clamp).
    b = declared if declared is not None else float(r.min())
    assert torch.allclose(big_w, p_a.new_ones(1) * torch.exp(bias.H * (r - b)), rtol=1e-12)
    teacher = bias.posterior(p_a).nan_to_num(1.0 / bias.V).log() if c else None
    fitted, clamp = fit(*exact_batch(p_a, big_w), c, teacher)
    assert clamp == 0.0
    covered = ~target.isnan()
    # every masked position of every state, each with its V entries
    assert int(covered.sum()) == bias.PROMPTS * bias.L * (bias.V + 1) ** (bias.L - 1) * bias.V
    assert float((fitted - target)[covered].abs().max()) < 1e-6


def test_biased_baselines_move_the_minimiser_by_order_one_over_g(capsys) -> None:
    groups = (2, 4, 8)
    table = bias.bias_table(groups=groups)
    with capsys.disabled():
        print("\nmax TV(stage minimiser, pi_(a+h)) by baseline and G:")
        for kind, row in table.items():
            print(f"  {kind:>15}: " + "  ".join(f"G={g} {row[g]:.2e}" for g in groups))
    for kind in ("bound", "calibrated", "leave_one_out", "none"):
        assert max(table[kind].values()) < 1e-12, kind
    for kind in ("mean", "min", "group_min", "self_normalise"):
        row = table[kind]
        assert row[2] > 0.02, kind  # the bias is real ...
        assert row[2] > row[4] > row[8], kind  # ... and shrinks with the group ...
        assert row[8] < 0.6 * row[2], kind  # ... roughly as 1/G
    # Clamping at 0 (what a group of one computed before) does not even shrink with G.
    assert min(table["clamp_at_0"].values()) > 0.05
    # Single completions carry their groups: the same bias table, to the last digit.
    assert bias.bias_table(groups=(3,), shape="completions")["min"] == pytest.approx(
        bias.bias_table(groups=(3,))["min"], abs=1e-15
    )


class _Student:
    """A stand-in denoiser: zero logits over a small vocabulary at every response position."""

    family = type("F", (), {"block_size": None})()

    def response_logits(self, prompt_ids, prompt_mask, z, logits_at=None):
        return torch.zeros(int(logits_at.sum()), 5)


@pytest.mark.parametrize(
    "config",
    [
        DTMConfig(baseline="mean"),
        DTMConfig(baseline="min"),
        DTMConfig(baseline="leave_one_out"),
        DTMConfig(baseline="group_min"),
        DTMConfig(self_normalise=True),
    ],
    ids=["mean", "min", "leave_one_out", "group_min", "self_normalise"],
)
def test_completion_micro_batches_read_whole_groups(config, monkeypatch) -> None:
    """The loss of a micro-batch of single completions weights each row as its whole group
    would: no group statistic is computed on the micro-batch's own rows."""
    g = torch.Generator().manual_seed(0)
    groups, size = 4, 4
    rewards = torch.randn(groups, size, generator=g)
    rows = torch.arange(groups * size)
    ids = torch.ones(groups * size, 1, dtype=torch.long)
    # Each row's response names its (group, member): tokens 0..3, the mask is 4.
    responses = torch.stack([rows // size, rows % size], 1)
    batch = bias.RolloutBatch(ids, torch.ones_like(ids), responses, rewards.reshape(-1), size)
    whole = DTMObjective(config, mask_token_id=4).sample_weights(*rows_of_groups(rewards), 1.3)
    objective, phase = DTMObjective(config, mask_token_id=4), Phase(h=1.3)
    seen: list[torch.Tensor] = []

    def spy(student_logits, x, states, weights, c, teacher_logits=None):
        seen.append(weights)
        return dtm_loss(student_logits, x, states, weights, c, teacher_logits)

    monkeypatch.setattr(dtm_objective, "dtm_loss", spy)
    micro = bias.micro_batches(batch, "completions")
    owners = [set(mb.responses[:, 0].tolist()) for mb in micro]
    assert any(len([o for o in owners if k in o]) > 1 for k in range(groups))  # groups cut
    for mb in micro:
        with pytest.raises(ValueError, match="not whole groups"):
            _ = mb.grouped_rewards
        inputs = LossInputs(_Student(), _Student(), mb, phase, g)  # type: ignore[arg-type]
        objective.loss(inputs)
        flat = mb.responses[:, 0] * size + mb.responses[:, 1]
        assert torch.allclose(seen[-1], whole[flat], rtol=1e-6), config
