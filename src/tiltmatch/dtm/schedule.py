"""Annealing schedules: how far each stage moves along ``a in [0, a_end]`` (METHOD.md section 6).

A schedule is asked, at the start of each stage, for the increment ``h`` given
the current ``a`` and the stage's rollout rewards ``[P, G]``. Every schedule
lands exactly on ``a_end`` (the last step is clipped).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tiltmatch.dtm.weights import effective_sample_size_at


class TiltSchedule(ABC):
    """Chooses tilt increments ``h`` until ``a`` reaches ``a_end``."""

    def __init__(self, a_end: float) -> None:
        if a_end <= 0:
            raise ValueError(f"a_end must be positive, got {a_end}")
        self.a_end = float(a_end)

    def done(self, a: float) -> bool:
        """Whether the annealing path is complete."""
        return a >= self.a_end - 1e-9

    def next_h(self, a: float, rewards: torch.Tensor, stage: int) -> float:
        """The increment of stage ``stage`` starting at ``a``, clipped to land on ``a_end``."""
        return min(self._proposal(a, rewards, stage), self.a_end - a)

    @abstractmethod
    def _proposal(self, a: float, rewards: torch.Tensor, stage: int) -> float: ...


class FixedSchedule(TiltSchedule):
    """Constant ``h`` until ``a_end``."""

    def __init__(self, h: float, a_end: float) -> None:
        super().__init__(a_end)
        if h <= 0:
            raise ValueError(f"h must be positive, got {h}")
        self.h = float(h)

    def _proposal(self, a: float, rewards: torch.Tensor, stage: int) -> float:
        return self.h


class GeometricSchedule(TiltSchedule):
    """``h_k = h_0 ratio^k``: small first steps while the model is far from the target."""

    def __init__(self, h: float, ratio: float, a_end: float) -> None:
        super().__init__(a_end)
        if h <= 0 or ratio <= 0:
            raise ValueError(f"h and ratio must be positive, got h={h}, ratio={ratio}")
        self.h, self.ratio = float(h), float(ratio)

    def _proposal(self, a: float, rewards: torch.Tensor, stage: int) -> float:
        return self.h * self.ratio**stage


class NoAnnealing(TiltSchedule):
    """One stage straight to ``a_end``: the ablation that shows why annealing matters."""

    def _proposal(self, a: float, rewards: torch.Tensor, stage: int) -> float:
        return self.a_end - a


class AdaptiveESSSchedule(TiltSchedule):
    """The largest ``h <= h_max`` whose mean per-prompt ESS is at least ``rho`` (bisection).

    ESS of ``e^{h r}`` falls monotonically in ``h`` (its log-derivative is
    ``2 (E_h[r] - E_{2h}[r]) <= 0``), so bisection finds the boundary; the
    spread of the weights is held fixed by construction. Needs ``G >= 2``.
    """

    def __init__(self, rho: float, h_max: float, a_end: float, iterations: int = 40) -> None:
        super().__init__(a_end)
        if not 0.0 < rho < 1.0:
            raise ValueError(f"ESS target rho must be in (0, 1), got {rho}")
        if h_max <= 0:
            raise ValueError(f"h_max must be positive, got {h_max}")
        self.rho, self.h_max, self.iterations = float(rho), float(h_max), iterations

    def mean_ess(self, rewards: torch.Tensor, h: float) -> float:
        """Mean over prompts of the normalised ESS at increment ``h``."""
        return float(effective_sample_size_at(rewards.double(), h).mean())

    def _proposal(self, a: float, rewards: torch.Tensor, stage: int) -> float:
        if rewards.dim() != 2 or rewards.shape[1] < 2:
            raise ValueError("the adaptive ESS schedule needs rewards [P, G] with G >= 2")
        hi = min(self.h_max, self.a_end - a)
        if self.mean_ess(rewards, hi) >= self.rho:
            return hi
        lo = 0.0
        for _ in range(self.iterations):
            mid = 0.5 * (lo + hi)
            if self.mean_ess(rewards, mid) >= self.rho:
                lo = mid
            else:
                hi = mid
        # Guard against a degenerate group structure making no progress at all.
        return max(lo, 1e-3 * self.h_max)
