"""The DTM loss (METHOD.md sections 4 and 5).

One stage of DTM is a weighted cross-entropy on the model's own samples::

    L^c_h = E[ lambda * sum_{i in S} H( target_c(. | z, i), mu_theta(. | z, i) ) ]
    target_c = c * mu_ref(. | z, i) + (w_h - c) * e_{x^i}

with ``H(p, q) = -sum_v p_v log q_v``. ``c = 0`` is the plain weighted
cross-entropy of section 4 (and, with ``w = 1``, ordinary masked-diffusion
training); ``c = 1`` uses the frozen teacher's posterior as control variate.
Whatever ``c``, the minimiser is the tilted posterior (T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tiltmatch.dtm.states import States


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation."""

    clamp_rate: float  # fraction of covered positions whose target had a negative coefficient
    positions: int  # number of covered positions


def ctilt_target(
    teacher_probs: torch.Tensor,
    tokens: torch.Tensor,
    weights: torch.Tensor,
    c: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_c = c mu_ref + (w - c) e_x`` at ``N`` positions, clamped at zero.

    ``teacher_probs``: ``[N, V]`` frozen teacher posterior ``mu_ref``; ``tokens``:
    ``[N]`` clean tokens ``x^i``; ``weights``: ``[N]`` sample weights ``w_h``.
    Returns the target ``[N, V]`` and a bool ``[N]`` saying where the clamp fired.
    With rewards >= 0, ``b = 0`` and ``0 <= c <= 1`` no coefficient is negative;
    any other ``b`` or ``c`` can make one negative, and it is clamped (section 5).
    """
    target = c * teacher_probs
    weights = weights.to(target.dtype)
    coeff = weights - c
    target = target.scatter_add(1, tokens[:, None], coeff[:, None])
    negative = target < 0
    fired = negative.any(dim=1)
    return target.clamp(min=0.0), fired


def covered(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits ``[N, V]`` at the ``N`` covered positions: as given when already ``[N, V]``,
    else gathered from ``[B, L, V]``."""
    if logits.dim() == 2:
        if logits.shape[0] != int(mask.sum()):
            raise ValueError(
                f"{logits.shape[0]} rows of logits for {int(mask.sum())} covered positions"
            )
        return logits
    return logits[mask]


def dtm_loss(
    student_logits: torch.Tensor,
    x: torch.Tensor,
    states: States,
    weights: torch.Tensor,
    c: float = 1.0,
    teacher_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The c-DTM loss of a batch.

    ``student_logits``, ``teacher_logits``: ``[B, L, V]`` on the response, or ``[N, V]``
    at the covered positions only (``states.loss_mask``, row-major), which is what the
    objective computes (METHOD.md section 6: logits only where the loss reads them);
    ``x``: ``[B, L]`` clean responses; ``states``: which positions and with what
    weight; ``weights``: ``[B]`` per-sample tilt weights ``w_h``. The loss is the
    sum over covered positions of ``position_weight * H(target, mu_theta)``,
    averaged over the batch.
    """
    mask = states.loss_mask
    if not mask.any():
        zero = student_logits.sum() * 0.0
        return zero, LossStats(clamp_rate=0.0, positions=0)
    # Half precision is upcast to float32; float64 (the exactness tests) stays float64.
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    logp = F.log_softmax(covered(student_logits, mask).to(dtype), dim=-1)  # [N, V]
    tokens = x[mask]
    w = weights[:, None].expand_as(mask)[mask].to(dtype)
    pos_w = states.position_weight[mask].to(dtype)
    if c == 0.0:
        # Plain weighted cross-entropy: only the one-hot part of the target.
        per_pos = -w * logp.gather(1, tokens[:, None]).squeeze(1)
        fired = w < 0
    else:
        if teacher_logits is None:
            raise ValueError("c != 0 needs the teacher's logits (the frozen stage reference)")
        teacher_probs = F.softmax(covered(teacher_logits, mask).to(dtype), dim=-1)
        target, fired = ctilt_target(teacher_probs, tokens, w, c)
        per_pos = -(target * logp).sum(-1)
    loss = (pos_w * per_pos).sum() / x.shape[0]
    stats = LossStats(clamp_rate=float(fired.float().mean()), positions=int(mask.sum()))
    return loss, stats
