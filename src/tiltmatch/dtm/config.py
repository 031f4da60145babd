"""The ``dtm:`` section of the run config (METHOD.md sections 4-6), and the names of DTM's
choices. Without torch: the run config reads it.

:mod:`tiltmatch.dtm.weights` says what each reward baseline computes and why the exact
ones are exact.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from tiltmatch.settings import MAX_EXAMPLES, StrictSection

#: every reward baseline ``dtm.baseline`` can name (``auto`` resolves to ``bound`` or
#: ``calibrated``: :func:`tiltmatch.dtm.weights.resolve_baseline`)
Baseline = Literal[
    "auto", "none", "bound", "calibrated", "leave_one_out", "mean", "min", "group_min"
]
BASELINES: tuple[str, ...] = get_args(Baseline)
#: baselines independent of the sample they weight: the minimiser is exact (section 5)
EXACT_BASELINES: tuple[str, ...] = ("none", "bound", "calibrated", "leave_one_out")
#: baselines computed from the very rewards they weight: an O(1/G) bias (section 5)
BIASED_BASELINES: tuple[str, ...] = ("mean", "min", "group_min")
#: baselines that are one number fixed before training (``dtm.baseline`` resolves to it)
FIXED_BASELINES: tuple[str, ...] = ("bound", "calibrated")


class DTMConfig(StrictSection):
    """Discrete Tilt Matching (METHOD.md sections 4-6)."""

    c: float = Field(1.0, description="control-variate constant; 0 = plain weighted CE")
    baseline: Baseline = Field(
        "auto",
        description="reward baseline b in w_h = exp(h (r - b)) (METHOD.md section 5). Exact: "
        "auto (bound when the reward declares a lower bound, as every built-in task does, "
        "else calibrated), none (b = 0), bound (the declared lower bound), calibrated (the "
        "lowest reward of a calibration sample of the base model, drawn before training), "
        "leave_one_out (mean of the other G - 1 rewards of the prompt). BIASED, for "
        "comparison only (the minimiser moves by O(1/G)): mean, min (of the same G rewards), "
        "group_min (each group shifted up by its minimum where negative)",
    )
    reward_lower_bound: float | None = Field(
        None,
        description="a lower bound of the reward, in the reward's own units (before "
        "train.reward_scale), declared for baseline auto / bound; none: the reward's own "
        "declaration (a task's 0), if any",
    )
    calibration_prompts: int = Field(
        32,
        ge=1,
        le=MAX_EXAMPLES,
        description="baseline calibrated: training prompts (x num_generations completions) "
        "the base model samples before training to fix b",
    )
    self_normalise: bool = Field(
        False, description="w_j = G softmax_j(h r_j) per prompt group: BIASED by O(1/G)"
    )
    first_order: bool = Field(False, description="use w_h - 1 ~ h (r - b) (comparison only)")
    # "block": block diffusion models only (the model's blocks; docs/families.md)
    states: Literal["random", "sar", "trajectory", "block"] = "random"
    sar_block_length: int = Field(4, ge=1)
    inverse_t_weight: bool = True
    schedule: Literal["fixed", "geometric", "adaptive", "none"] = "fixed"
    h: float = Field(2.0, gt=0)
    geometric_ratio: float = Field(1.5, gt=0)
    h_max: float = Field(4.0, gt=0)
    rho: float = Field(0.5, gt=0, lt=1)
    a_end: float = Field(10.0, gt=0)
    steps_per_h: int = Field(60, ge=1)
    teacher_update: Literal["student", "ema"] = "student"
    ema_decay: float = Field(0.95, ge=0, lt=1)
    ema_student: bool = Field(
        False,
        description="with teacher_update=ema: at a phase boundary the student takes the EMA "
        "weights too (the published Countdown recipe), not only the teacher",
    )
