"""The exact-minimiser test (METHOD.md section 7) for a block diffusion denoiser.

A tabular *block-causal* denoiser over an enumerable space (V = 2, L = 4, blocks
of B = 2, two prompts) has one free logit vector per (prompt, visible part of
the state up to the position's own block, position): it cannot see later
blocks, like SDAR's attention. Fitted on the exact expectation of the c-DTM
loss over the block sampler's states (earlier blocks clean, the active block
partly masked, later blocks fully masked; loss on every masked position), its
posteriors must equal the tilted posteriors (T) of ``p_{a+h}`` to 1e-6
(docs/families.md). The trap: on random-mask states (later blocks partly
visible) the same denoiser's minimiser is not the tilted posterior.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.states import States

V, L, B, MASK = 2, 4, 2, 2
PROMPTS = 2
ALL_X = list(itertools.product(range(V), repeat=L))
ALL_Z = list(itertools.product(range(V + 1), repeat=L))
Z_INDEX = {z: k for k, z in enumerate(ALL_Z)}
A, H = 1.0, 2.5


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p0 = torch.softmax(1.5 * torch.randn(PROMPTS, len(ALL_X), generator=g, dtype=torch.float64), 1)
    r = torch.rand(PROMPTS, len(ALL_X), generator=g, dtype=torch.float64)
    return p0, r


def tilted(p0: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    w = p0 * torch.exp(beta * r)
    return w / w.sum(1, keepdim=True)


def posterior(p: torch.Tensor, c: int, z: tuple[int, ...], i: int) -> torch.Tensor:
    """pi(. | z, i) under p(. | c), by enumeration."""
    comp = torch.tensor([all(zj in (MASK, xj) for xj, zj in zip(x, z, strict=True)) for x in ALL_X])
    mass = p[c] * comp
    return (
        torch.stack([(mass * torch.tensor([x[i] == v for x in ALL_X])).sum() for v in range(V)])
        / mass.sum()
    )


def visible_key(z: tuple[int, ...], i: int) -> int:
    """What a block-causal denoiser sees at position i: z with every later block masked."""
    own = i // B
    return Z_INDEX[tuple(zj if j // B <= own else MASK for j, zj in enumerate(z))]


def block_states() -> list[tuple[tuple[int, ...], float]]:
    """Block-decoding mask patterns (1 = masked) with their probabilities (uniform)."""
    patterns = []
    for active in range(L // B):
        for bits in itertools.product([0, 1], repeat=B):
            if not any(bits):
                continue
            pattern = [0] * (active * B) + list(bits) + [1] * (L - (active + 1) * B)
            patterns.append(tuple(pattern))
    return [(p, 1.0 / len(patterns)) for p in patterns]


def random_states() -> list[tuple[tuple[int, ...], float]]:
    """Every non-empty mask pattern, uniformly: later blocks may be visible."""
    patterns = [p for p in itertools.product([0, 1], repeat=L) if any(p)]
    return [(p, 1.0 / len(patterns)) for p in patterns]


def exact_batch(p_a, r, patterns):
    rows_x, rows_z, rows_c, rows_w, rows_pw = [], [], [], [], []
    for c in range(PROMPTS):
        for xi, x in enumerate(ALL_X):
            w = float(torch.exp(H * r[c, xi]))
            for pattern, q in patterns:
                z = tuple(MASK if m else xv for m, xv in zip(pattern, x, strict=True))
                prob = float(p_a[c, xi]) * q / PROMPTS
                count = sum(pattern)
                rows_x.append(x)
                rows_z.append(z)
                rows_c.append(c)
                rows_w.append(w)
                rows_pw.append([prob / count if m else 0.0 for m in pattern])
    pw = torch.tensor(rows_pw, dtype=torch.float64)
    states = States(z=torch.tensor(rows_z), loss_mask=pw > 0, position_weight=pw * len(rows_x))
    return (
        torch.tensor(rows_x),
        states,
        torch.tensor(rows_c),
        torch.tensor(rows_w, dtype=torch.float64),
    )


def keys_of(states: States) -> torch.Tensor:
    """``[N, L]`` visible-key index of every (row, position)."""
    return torch.tensor([[visible_key(tuple(z), i) for i in range(L)] for z in states.z.tolist()])


def fit(x, states, prompts, w, c, teacher_logits=None) -> tuple[torch.Tensor, torch.Tensor]:
    table = torch.zeros(PROMPTS, len(ALL_Z), L, V, dtype=torch.float64, requires_grad=True)
    keys = keys_of(states)
    pos = torch.arange(L)[None].expand_as(keys)

    def logits() -> torch.Tensor:
        return table[prompts[:, None], keys, pos]

    opt = torch.optim.LBFGS(
        [table],
        lr=1,
        max_iter=300,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        line_search_fn="strong_wolfe",
        history_size=50,
    )

    def closure():
        opt.zero_grad()
        loss, _ = dtm_loss(logits(), x, states, w, c, teacher_logits)
        loss.backward()
        return loss

    for _ in range(6):
        opt.step(closure)
    return torch.softmax(table.detach(), -1), keys


@pytest.mark.parametrize("c", [0.0, 1.0])
def test_block_state_minimiser_is_the_tilted_posterior(c: float) -> None:
    p0, r = problem()
    p_a, p_next = tilted(p0, r, A), tilted(p0, r, A + H)
    x, states, prompts, w = exact_batch(p_a, r, block_states())
    teacher = None
    if c:
        # The stage's teacher at these states is pi_a (later blocks are masked in z already).
        teacher = torch.stack(
            [
                torch.stack([posterior(p_a, ci, tuple(z), i).log() for i in range(L)])
                for ci, z in zip(prompts.tolist(), states.z.tolist(), strict=True)
            ]
        )
        teacher = torch.where(states.loss_mask[..., None], teacher, torch.zeros_like(teacher))
    fitted, keys = fit(x, states, prompts, w, c, teacher)
    worst, checked = 0.0, 0
    for row in range(0, len(prompts), 7):  # a spread of the covered (prompt, state, position)
        z = tuple(states.z[row].tolist())
        for i in range(L):
            if not states.loss_mask[row, i]:
                continue
            got = fitted[prompts[row], keys[row, i], i]
            want = posterior(p_next, int(prompts[row]), z, i)
            worst = max(worst, float((got - want).abs().max()))
            checked += 1
    assert checked > 50
    assert worst < 1e-6


def test_random_states_are_not_matchable_by_a_block_causal_denoiser() -> None:
    """The trap: with later blocks visible, the block-causal minimiser misses (T)."""
    p0, r = problem()
    p_a, p_next = tilted(p0, r, A), tilted(p0, r, A + H)
    x, states, prompts, w = exact_batch(p_a, r, random_states())
    fitted, keys = fit(x, states, prompts, w, 0.0)
    worst = 0.0
    for row in range(0, len(prompts), 5):
        z = tuple(states.z[row].tolist())
        for i in range(L):
            if states.loss_mask[row, i] and any(
                zj != MASK for j, zj in enumerate(z) if j // B > i // B
            ):
                got = fitted[prompts[row], keys[row, i], i]
                worst = max(
                    worst, float((got - posterior(p_next, int(prompts[row]), z, i)).abs().max())
                )
    assert worst > 0.02
