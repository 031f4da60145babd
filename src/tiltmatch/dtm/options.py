"""The names of DTM's choices, without torch (the run config reads them; METHOD.md section 5).

:mod:`tiltmatch.dtm.weights` says what each reward baseline computes and why the exact
ones are exact.
"""

from __future__ import annotations

from typing import Literal, get_args

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
