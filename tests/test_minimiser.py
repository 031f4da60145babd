"""The exact-minimiser test of METHOD.md section 7.

A tabular denoiser over an enumerable space (V = 3 tokens, L = 3, two
prompts) is fitted by minimising the c-DTM loss, as computed by
``tiltmatch.dtm.loss.dtm_loss``, on (a) its exact expectation, by enumerating every
(prompt, x, state) triple with its probability, and (b) Monte Carlo samples.
The fitted posteriors must equal the tilted posteriors (T) computed directly
from ``p_{a+h} ∝ p_0 e^{(a+h) r}``: to 1e-6 exactly, within Monte Carlo error
from samples.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tiltmatch.dtm.loss import ctilt_target, dtm_loss
from tiltmatch.dtm.states import States, random_mask_states

V, L, MASK = 3, 3, 3  # tokens 0..2, the mask is id 3
PROMPTS = 2
TIMES = torch.tensor([0.2, 0.45, 0.7, 1.0], dtype=torch.float64)  # a full-support omega on a grid
ALL_X = list(itertools.product(range(V), repeat=L))
ALL_Z = list(itertools.product(range(V + 1), repeat=L))
Z_INDEX = {z: k for k, z in enumerate(ALL_Z)}


def problem(seed: int = 0):
    """Base distributions p_0(x | c) and rewards r(x, c) in [0, 1] for two prompts."""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.softmax(1.0 * torch.randn(PROMPTS, len(ALL_X), generator=g, dtype=torch.float64), 1)
    r = torch.rand(PROMPTS, len(ALL_X), generator=g, dtype=torch.float64)
    return p0, r


def tilted(p0: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """p_beta ∝ p_0 e^{beta r} per prompt."""
    w = p0 * torch.exp(beta * r)
    return w / w.sum(1, keepdim=True)


def agrees(x: tuple[int, ...], z: tuple[int, ...]) -> bool:
    return all(zi in (MASK, xi) for xi, zi in zip(x, z, strict=True))


def posterior_table(p: torch.Tensor) -> torch.Tensor:
    """pi(v | z, i) for every prompt, state and position: [PROMPTS, |Z|, L, V]."""
    out = torch.full((PROMPTS, len(ALL_Z), L, V), float("nan"), dtype=torch.float64)
    for k, z in enumerate(ALL_Z):
        comp = torch.tensor([agrees(x, z) for x in ALL_X])
        for c in range(PROMPTS):
            mass = p[c] * comp
            for i in range(L):
                if z[i] != MASK:
                    continue
                for v in range(V):
                    sel = torch.tensor([x[i] == v for x in ALL_X])
                    out[c, k, i, v] = (mass * sel).sum() / mass.sum()
    return out


def exact_batch(p_a: torch.Tensor, r: torch.Tensor, h: float, baseline: torch.Tensor):
    """Every (prompt, x, t, state) with its probability, as one weighted batch."""
    rows_x, rows_z, rows_c, rows_w, rows_pw = [], [], [], [], []
    for c in range(PROMPTS):
        for xi, x in enumerate(ALL_X):
            px = float(p_a[c, xi])
            w = float(torch.exp(h * (r[c, xi] - baseline[c])))
            for t in TIMES.tolist():
                for mask_bits in itertools.product([0, 1], repeat=L):
                    q = 1.0
                    for b in mask_bits:
                        q *= t if b else 1 - t
                    z = tuple(MASK if b else xv for b, xv in zip(mask_bits, x, strict=True))
                    prob = px * q / len(TIMES) / PROMPTS
                    rows_x.append(x)
                    rows_z.append(z)
                    rows_c.append(c)
                    rows_w.append(w)
                    # lambda(t) = 1/t, as in the masked-diffusion ELBO
                    rows_pw.append([prob / t if b else 0.0 for b in mask_bits])
    x = torch.tensor(rows_x)
    z = torch.tensor(rows_z)
    pw = torch.tensor(rows_pw, dtype=torch.float64)
    states = States(z=z, loss_mask=pw > 0, position_weight=pw * len(rows_x))
    return x, states, torch.tensor(rows_c), torch.tensor(rows_w, dtype=torch.float64)


def state_index(z: torch.Tensor) -> torch.Tensor:
    """Row index of each state in ALL_Z."""
    return torch.tensor([Z_INDEX[tuple(row)] for row in z.tolist()])


def logits_of(table: torch.Tensor, prompts: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Tabular denoiser: one free logit vector per (prompt, state, position)."""
    return table[prompts, idx]


def fit(x, states, prompts, w, c, teacher_table=None, iters=200, restarts=10) -> torch.Tensor:
    """Minimise the c-DTM loss over the table with L-BFGS (convex in the logits)."""
    table = torch.zeros(PROMPTS, len(ALL_Z), L, V, dtype=torch.float64, requires_grad=True)
    idx = state_index(states.z)
    teacher_logits = None
    if teacher_table is not None:
        teacher_logits = logits_of(teacher_table, prompts, idx)
    opt = torch.optim.LBFGS(
        [table],
        lr=1,
        max_iter=iters,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
        history_size=50,
    )

    def closure():
        opt.zero_grad()
        loss, _ = dtm_loss(logits_of(table, prompts, idx), x, states, w, c, teacher_logits)
        loss.backward()
        return loss

    previous = None
    for _ in range(restarts):
        current = float(opt.step(closure).detach())
        if previous is not None and abs(previous - current) <= 1e-15 * abs(current):
            break
        previous = current
    return torch.softmax(table.detach(), -1)


def reached(states: States, prompts: torch.Tensor) -> torch.Tensor:
    """Bool [PROMPTS, |Z|, L]: which (prompt, state, position) the loss covers."""
    out = torch.zeros(PROMPTS, len(ALL_Z), L, dtype=torch.bool)
    for row, (c, z) in enumerate(zip(prompts.tolist(), states.z.tolist(), strict=True)):
        out[c, Z_INDEX[tuple(z)]] |= states.loss_mask[row]
    return out


A, H = 1.5, 2.0


@pytest.mark.parametrize(
    ("c", "baseline_kind"),
    [(0.0, "none"), (1.0, "none"), (0.0, "mean"), (1.0, "min"), (2.0, "shift")],
)
def test_exact_expectation_minimiser_is_tilted_posterior(c: float, baseline_kind: str) -> None:
    p0, r = problem()
    p_a, p_next = tilted(p0, r, A), tilted(p0, r, A + H)
    if baseline_kind == "none":
        b = torch.zeros(PROMPTS, dtype=torch.float64)
    elif baseline_kind == "mean":
        b = (p_a * r).sum(1)
    elif baseline_kind == "min":
        b = r.min(1).values  # keeps w_h >= 1, so with c = 1 no coefficient is negative
    else:
        # c = 2 needs w_h >= 2 for every target coefficient to stay non-negative (section 5):
        # a per-prompt baseline of min(r) - ln(2)/h gives exactly that.
        b = r.min(1).values - torch.log(torch.tensor(2.0, dtype=torch.float64)) / H
    x, states, prompts, w = exact_batch(p_a, r, H, b)
    teacher = posterior_table(p_a).nan_to_num(1.0 / V).log()
    fitted = fit(x, states, prompts, w, c, teacher_table=teacher if c else None)
    target = posterior_table(p_next)
    cover = reached(states, prompts)
    err = (fitted - target).abs()[cover]
    assert int(cover.sum()) == PROMPTS * L * (V + 1) ** (L - 1)  # every masked position
    assert float(err.max()) < 1e-6


def test_untilted_stage_would_fail_the_check() -> None:
    """Sanity of the check itself: the stage's own posterior pi_a is far from pi_{a+h}."""
    p0, r = problem()
    diff = (posterior_table(tilted(p0, r, A)) - posterior_table(tilted(p0, r, A + H))).abs()
    assert float(diff.nan_to_num(0).max()) > 0.05


def test_sampled_loss_minimiser_within_monte_carlo_error() -> None:
    """From samples x ~ p_a and random masks, the minimiser matches (T) within MC error."""
    p0, r = problem(seed=1)
    p_a, p_next = tilted(p0, r, A), tilted(p0, r, A + H)
    g = torch.Generator().manual_seed(0)
    n = 40_000
    prompts = torch.randint(0, PROMPTS, (n,), generator=g)
    draws = torch.stack([torch.multinomial(p_a[c], 1, generator=g)[0] for c in range(PROMPTS)])
    idx = torch.empty(n, dtype=torch.long)
    for c in range(PROMPTS):
        sel = prompts == c
        idx[sel] = torch.multinomial(p_a[c], int(sel.sum()), replacement=True, generator=g)
    del draws
    x = torch.tensor(ALL_X)[idx]
    w = torch.exp(H * r[prompts, idx])
    states = random_mask_states(x, MASK, g, inverse_t_weight=True)
    states = States(states.z, states.loss_mask, states.position_weight.double())
    teacher = posterior_table(p_a).nan_to_num(1.0 / V).log()
    fitted = fit(x, states, prompts, w, 1.0, teacher_table=teacher, iters=100, restarts=3)
    target = posterior_table(p_next)
    # Compare where states are visited often enough for a meaningful Monte Carlo estimate.
    counts = torch.zeros(PROMPTS, len(ALL_Z), L)
    for c, z, m in zip(prompts.tolist(), states.z.tolist(), states.loss_mask.tolist(), strict=True):
        counts[c, Z_INDEX[tuple(z)]] += torch.tensor(m, dtype=torch.float32)
    well = counts >= 400
    assert int(well.sum()) >= 30
    # A weighted ratio estimate from n visits has standard error of order 1/sqrt(n) here
    # (weights within [1, e^h]): allow 3/sqrt(n) per entry.
    bound = 3.0 / counts[well].sqrt()
    err = (fitted - target).abs().max(-1).values[well]
    assert bool((err < bound).all()), float((err / bound).max())
    # ...while the untilted posterior breaks the same bound: the check has power.
    stale = (posterior_table(p_a) - target).abs().max(-1).values[well]
    assert float((stale / bound).max()) > 1.5


def test_ctilt_target_clamps_and_reports() -> None:
    probs = torch.tensor([[0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    tokens = torch.tensor([0, 1])
    # c = 1, w = 0.5: coefficient of x is 0.2 + 0.5 - 1 < 0 for the first row only.
    target, fired = ctilt_target(probs, tokens, torch.tensor([0.5, 0.5]), c=1.0)
    assert fired.tolist() == [True, False]
    assert torch.all(target >= 0)
    assert torch.allclose(target[1], torch.tensor([0.5, 0.0], dtype=torch.float64))
    # With w >= c nothing fires and the target sums to w.
    target, fired = ctilt_target(probs, tokens, torch.tensor([1.5, 3.0]), c=1.0)
    assert not fired.any()
    assert torch.allclose(target.sum(1), torch.tensor([1.5, 3.0], dtype=torch.float64))


def test_mean_baseline_with_c1_clamps_and_reports_it() -> None:
    """The trap of section 5: b = mean makes some w_h < 1, so c = 1 targets need the clamp."""
    p0, r = problem()
    p_a = tilted(p0, r, A)
    x, states, prompts, w = exact_batch(p_a, r, H, (p_a * r).sum(1))
    teacher = posterior_table(p_a).nan_to_num(1.0 / V).log()
    logits = torch.zeros(len(x), L, V, dtype=torch.float64)
    idx = state_index(states.z)
    _, stats = dtm_loss(logits, x, states, w, 1.0, logits_of(teacher, prompts, idx))
    assert stats.clamp_rate > 0.01
    _, stats = dtm_loss(logits, x, states, w, 0.0)
    assert stats.clamp_rate == 0.0
