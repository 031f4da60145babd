"""Tilt weights, baselines, ESS and the annealing schedules (METHOD.md sections 5 and 6)."""

from __future__ import annotations

import math

import pytest
import torch

from tiltmatch.config import DTMConfig
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.dtm.schedule import (
    AdaptiveESSSchedule,
    FixedSchedule,
    GeometricSchedule,
    NoAnnealing,
)
from tiltmatch.dtm.weights import (
    effective_sample_size,
    effective_sample_size_at,
    log_tilt_weights,
    reward_baseline,
    rows_of_groups,
    self_normalised_weights,
    tilt_weights,
)

REWARDS = torch.tensor([[0.0, 0.5, 1.0, 1.0], [0.2, 0.2, 0.9, 0.1], [1.0, 1.0, 1.0, 1.0]])
ROWS, GROUPS = rows_of_groups(REWARDS)


def baseline_of(kind: str, fixed: float | None = None) -> torch.Tensor:
    """The baseline of every row of REWARDS, as [P, G]."""
    return reward_baseline(ROWS, GROUPS, kind, fixed).view_as(REWARDS)  # type: ignore[arg-type]


def test_tilt_weights_are_exp_h_r_minus_b() -> None:
    w = tilt_weights(REWARDS, 2.0)
    assert torch.allclose(w, torch.exp(2.0 * REWARDS))
    w_min = tilt_weights(REWARDS, 2.0, baseline_of("min"))
    assert (w_min >= 1.0).all()  # the min baseline keeps every w_h >= 1
    assert torch.allclose(w_min, torch.exp(2.0 * (REWARDS - REWARDS.min(1, keepdim=True).values)))
    w_mean = tilt_weights(REWARDS, 2.0, baseline_of("mean"))
    # A per-prompt baseline rescales each prompt's weights by a constant: ratios are kept.
    assert torch.allclose(w_mean / w_mean[:, :1], w / w[:, :1])


def test_baseline_kinds_per_row_from_the_whole_group() -> None:
    assert baseline_of("none").abs().sum() == 0
    assert torch.equal(baseline_of("bound", -0.5), torch.full((3, 4), -0.5))
    assert torch.equal(baseline_of("calibrated", 0.25), torch.full((3, 4), 0.25))
    # leave-one-out: the mean of the other G - 1 rewards of the row's group
    loo = baseline_of("leave_one_out")
    assert torch.allclose(loo[0], torch.tensor([2.5, 2.0, 1.5, 1.5]) / 3)
    assert torch.allclose(loo[2], torch.ones(4))
    assert torch.allclose(baseline_of("mean"), REWARDS.mean(1, keepdim=True).expand(3, 4))
    # group_min: shifts only groups whose minimum is negative (these are not)
    assert baseline_of("group_min").abs().sum() == 0
    negative = torch.tensor([[-1.0, 2.0], [0.5, 1.0]])
    rows, groups = rows_of_groups(negative)
    assert reward_baseline(rows, groups, "group_min").tolist() == [-1.0, -1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown baseline"):
        reward_baseline(ROWS, GROUPS, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fixed before training"):
        reward_baseline(ROWS, GROUPS, "calibrated")
    with pytest.raises(ValueError, match="G >= 2"):
        reward_baseline(ROWS, GROUPS[:, :1], "leave_one_out")


def test_large_h_stays_finite_in_log_space() -> None:
    # At h = 1e4, exp(h (r - b)) is inf in float32 and float64 alike: only the log-space
    # paths stay finite. log w_h is h (r - b) exactly, never log(exp(...)).
    h = 1e4
    naive = torch.exp(h * (REWARDS.double() - REWARDS.double().min(1, keepdim=True).values))
    assert not torch.isfinite(naive).all()  # the regime this test is about
    log_w = log_tilt_weights(REWARDS, h, baseline_of("min"))
    assert torch.equal(log_w, h * (REWARDS - REWARDS.min(1, keepdim=True).values))
    # The self-normalised weights are a softmax (max subtracted): finite, G per group.
    w = self_normalised_weights(ROWS, GROUPS, h).view_as(REWARDS)
    assert torch.isfinite(w).all()
    assert torch.allclose(w.sum(1), torch.full((3,), 4.0))
    # Plain tilt weights overflow there: the DTM objective refuses them with a clear error
    # instead of training on inf weights, and accepts the same h self-normalised.
    plain = DTMObjective(DTMConfig(baseline="min"), mask_token_id=0)
    with pytest.raises(FloatingPointError, match="overflow at h = 10000"):
        plain.sample_weights(ROWS, GROUPS, h)
    normalised = DTMObjective(DTMConfig(self_normalise=True), mask_token_id=0)
    assert torch.isfinite(normalised.sample_weights(ROWS, GROUPS, h)).all()
    # The ESS is computed from log-weights with the max subtracted: finite at any h.
    ess = effective_sample_size_at(REWARDS, 1e4)
    assert torch.isfinite(ess).all()
    assert float(ess[0]) == pytest.approx(0.5)


def test_self_normalised_weights_invariant_to_shifting_rewards() -> None:
    w = self_normalised_weights(ROWS, GROUPS, 3.0).view_as(REWARDS)
    shifted = rows_of_groups(REWARDS + torch.tensor([[5.0], [-2.0], [0.3]]))
    assert torch.allclose(w, self_normalised_weights(*shifted, 3.0).view_as(REWARDS), atol=1e-6)
    assert torch.allclose(w.sum(1), torch.full((3,), 4.0))
    # It is G softmax_j(h r_j) per group.
    assert torch.allclose(w, 4 * torch.softmax(3.0 * REWARDS, 1))


def test_self_normalised_large_h_keeps_only_group_maxima() -> None:
    w = self_normalised_weights(*rows_of_groups(REWARDS[:2]), 1e4).view(2, 4)
    assert torch.allclose(w[0], torch.tensor([0.0, 0.0, 2.0, 2.0]))
    assert torch.allclose(w[1], torch.tensor([0.0, 0.0, 4.0, 0.0]))


def test_effective_sample_size_bounds() -> None:
    assert torch.allclose(effective_sample_size(torch.ones(2, 5)), torch.ones(2))
    one_hot = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert math.isclose(float(effective_sample_size(one_hot)), 0.25)
    # A per-prompt baseline cancels in the ESS.
    assert torch.allclose(
        effective_sample_size(tilt_weights(REWARDS, 2.0, baseline_of("mean"))),
        effective_sample_size(tilt_weights(REWARDS, 2.0)),
    )


def test_fixed_schedule_clips_the_last_step_onto_a_end() -> None:
    s = FixedSchedule(h=3.0, a_end=10.0)
    a, hs = 0.0, []
    while not s.done(a):
        h = s.next_h(a, REWARDS, len(hs))
        hs.append(h)
        a += h
    assert hs == [3.0, 3.0, 3.0, 1.0]
    assert a == pytest.approx(10.0)


def test_geometric_and_none() -> None:
    g = GeometricSchedule(h=1.0, ratio=2.0, a_end=100.0)
    assert [g.next_h(0.0, REWARDS, k) for k in range(3)] == [1.0, 2.0, 4.0]
    assert NoAnnealing(a_end=7.0).next_h(0.0, REWARDS, 0) == 7.0


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.8])
def test_adaptive_ess_meets_its_target(rho: float) -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(32, 8, generator=g)
    s = AdaptiveESSSchedule(rho=rho, h_max=50.0, a_end=1000.0)
    h = s.next_h(0.0, rewards, 0)
    assert 0 < h < 50.0
    assert s.mean_ess(rewards, h) == pytest.approx(rho, abs=1e-6)
    # ...and it is the largest such h: a little more falls below the target.
    assert s.mean_ess(rewards, h * 1.01) < rho


def test_adaptive_ess_takes_h_max_when_weights_are_flat_and_needs_groups() -> None:
    s = AdaptiveESSSchedule(rho=0.5, h_max=4.0, a_end=10.0)
    assert s.next_h(0.0, torch.ones(4, 6), 0) == 4.0
    assert s.next_h(8.0, torch.ones(4, 6), 0) == 2.0
    with pytest.raises(ValueError, match="G >= 2"):
        s.next_h(0.0, torch.rand(4, 1), 0)


def test_schedule_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="rho"):
        AdaptiveESSSchedule(rho=1.5, h_max=1.0, a_end=1.0)
    with pytest.raises(ValueError, match="h must be positive"):
        FixedSchedule(h=0.0, a_end=1.0)
    with pytest.raises(ValueError, match="a_end"):
        FixedSchedule(h=1.0, a_end=0.0)
