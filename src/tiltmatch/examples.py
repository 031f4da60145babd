"""What a task hands the rest of a run: one prompt with its data, and the one check of a
reward's value (METHOD.md section 1: a reward is a finite real number; a built-in task's is
also in [0, 1]).

A leaf of the package: the tasks make :class:`Example` objects, the rewards stage scores
responses to them, and both check a reward's value with :func:`reward_number`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One prompt of a task.

    ``prompt`` is the text the model is conditioned on, already formatted by the
    task. ``reference`` is the gold answer where there is one. ``data`` holds the
    task's own fields (a maze's grid, a puzzle, the numbers and the target).
    ``uid`` identifies the example (used to group rollouts by prompt).
    """

    prompt: str
    reference: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    uid: str = ""


class RewardError(ValueError):
    """A reward function raised, or returned something outside its contract (a finite number;
    a built-in task's reward also in [0, 1])."""


def reward_number(
    value: Any, who: str, where: str, bounds: tuple[float, float] | None = None
) -> float:
    """``value`` as a finite float (inside ``bounds`` when given), or one :class:`RewardError`:
    ``"<who> returned <value>, not a number<where>"`` (``who`` names the reward, ``where`` the
    row or example it scored)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RewardError(f"{who} returned {value!r}, not a number{where}") from None
    if bounds is None:
        if not math.isfinite(number):
            raise RewardError(f"{who} returned {number!r}, not a finite number{where}")
    elif not (math.isfinite(number) and bounds[0] <= number <= bounds[1]):
        low, high = bounds
        raise RewardError(
            f"{who} returned {number!r}, not a finite number in [{low:g}, {high:g}]{where}"
        )
    return number
