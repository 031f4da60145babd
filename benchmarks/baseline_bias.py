"""How far each reward baseline moves one DTM stage's minimiser (METHOD.md section 5).

An enumerable model: two prompts, responses of ``L = 2`` tokens over ``V = 2`` (four
outcomes), a base ``p_0`` and rewards of both signs. A stage at ``a`` with increment
``h`` weights each of a prompt's ``G`` rollouts by ``w = e^{h (r - b)}``. The stage's
loss is linear in ``w``, so its minimiser is the tilted posterior (T) built from the
*expected* weight of a sample at each outcome, ``W(x) = E[w | x]``, the expectation
running over the other ``G - 1`` rollouts of its group:

    mu*(v | z, i)  ∝  sum_{x ⊒ z, x^i = v} p_a(x) W(x)

It equals ``pi_{a+h}`` exactly when ``W(x) ∝ e^{h r(x)}``: when ``b`` does not depend on
the sample it weights. Every ``W`` here is computed by enumerating the other rollouts
(multinomially) and passing each group through the package's own code: the rollout batch,
the replay buffer's micro-batches (whole groups, or single completions carrying their
groups) and :meth:`tiltmatch.dtm.objective.DTMObjective.sample_weights`.

    python benchmarks/baseline_bias.py --out runs/baseline_bias.json

prints, for each baseline and ``G``, the largest total-variation distance between the
minimiser and ``pi_{a+h}`` over every reachable state and masked position.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tiltmatch.batch import RolloutBatch
from tiltmatch.config import DTMConfig
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.objective import Phase
from tiltmatch.tasks.base import Example
from tiltmatch.training.rollouts import PromptPool, ReplayBuffer

V, L, MASK, PROMPTS = 2, 2, 2, 2
ALL_X = list(itertools.product(range(V), repeat=L))
ALL_Z = list(itertools.product(range(V + 1), repeat=L))
A, H = 0.5, 1.0
#: the baselines compared (``self_normalise`` is DTM's other per-group statistic;
#: ``clamp_at_0`` what earlier versions did to a micro-batch of single completions)
KINDS = (
    "bound",
    "calibrated",
    "leave_one_out",
    "none",
    "mean",
    "min",
    "group_min",
    "self_normalise",
    "clamp_at_0",
)
GROUPS = (2, 3, 4, 8, 16)


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``p_0(x | c)`` ``[PROMPTS, 4]`` and rewards ``r(x, c)`` in [-1, 1], both signs."""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.softmax(torch.randn(PROMPTS, len(ALL_X), generator=g, dtype=torch.float64), 1)
    r = 2 * torch.rand(PROMPTS, len(ALL_X), generator=g, dtype=torch.float64) - 1
    return p0, r


def tilted(p0: torch.Tensor, r: torch.Tensor, beta: float) -> torch.Tensor:
    """``p_beta ∝ p_0 e^{beta r}`` per prompt."""
    w = p0 * torch.exp(beta * r)
    return w / w.sum(1, keepdim=True)


def agrees(x: tuple[int, ...], z: tuple[int, ...]) -> bool:
    """``x ⊒ z``: ``x`` agrees with every unmasked position of ``z``."""
    return all(zi in (MASK, xi) for xi, zi in zip(x, z, strict=True))


def posterior(p: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``[PROMPTS, |Z|, L, V]``: ``P(x^i = v | x ⊒ z)`` under ``p * weight`` (NaN where
    ``z^i`` is not masked)."""
    mass_all = p if weight is None else p * weight
    out = torch.full((PROMPTS, len(ALL_Z), L, V), float("nan"), dtype=torch.float64)
    for k, z in enumerate(ALL_Z):
        mass = mass_all * torch.tensor([agrees(x, z) for x in ALL_X])
        for i in range(L):
            if z[i] != MASK:
                continue
            for v in range(V):
                sel = torch.tensor([x[i] == v for x in ALL_X])
                out[:, k, i, v] = (mass * sel).sum(1) / mass.sum(1)
    return out


def others(group: int, p: torch.Tensor) -> Iterator[tuple[list[int], float]]:
    """Every multiset of the other ``group - 1`` rollouts, with its multinomial probability."""
    n, probs = group - 1, p.tolist()
    for cuts in itertools.combinations(range(n + len(probs) - 1), len(probs) - 1):
        bounds = [-1, *cuts, n + len(probs) - 1]
        counts = [bounds[k + 1] - bounds[k] - 1 for k in range(len(probs))]
        log_prob = math.lgamma(n + 1) + sum(
            k * math.log(q) - math.lgamma(k + 1) for k, q in zip(counts, probs, strict=True)
        )
        yield [x for x, k in enumerate(counts) for _ in range(k)], math.exp(log_prob)


def enumerated_groups(p_a: torch.Tensor, r: torch.Tensor, group: int):
    """Every (prompt, outcome of member 0, multiset of the others) as one rollout batch of
    whole groups, with each group's probability given member 0 (``[n_groups]``) and its
    (prompt, outcome) index."""
    rewards, probs, owner = [], [], []
    for c in range(PROMPTS):
        for x in range(len(ALL_X)):
            for rest, prob in others(group, p_a[c]):
                rewards.append([float(r[c, x])] + [float(r[c, y]) for y in rest])
                probs.append(prob)
                owner.append((c, x))
    n = len(rewards)
    rows = torch.arange(n * group)
    responses = torch.stack([rows // group, rows % group], 1)  # (group index, member)
    ids = torch.ones(n * group, 1, dtype=torch.long)
    flat = torch.tensor(rewards, dtype=torch.float64).reshape(-1)
    batch = RolloutBatch(ids, torch.ones_like(ids), responses, flat, group)
    return batch, torch.tensor(probs, dtype=torch.float64), owner


def micro_batches(batch: RolloutBatch, shape: str) -> list[RolloutBatch]:
    """The rows as the trainer's micro-batches: whole groups, or single completions drawn
    across groups from a replay buffer (``train.micro_batch``)."""
    if shape == "prompts":
        return [batch]
    pool = PromptPool([Example(prompt="p", uid="0")], seed=0)
    buffer = ReplayBuffer(pool, batch.rewards.shape[0] // batch.group_size, batch.group_size, 0)
    buffer.data = batch
    held = batch.rewards.shape[0]
    # A few micro-batches of rows drawn across the whole buffer: every group is cut apart.
    count = next(k for k in (7, 5, 3, 2, 1) if held % k == 0)
    return buffer.sample_completions(held // count, count, torch.Generator().manual_seed(0))


WeightsOf = Callable[[RolloutBatch], torch.Tensor]


def expected_weights(
    weights_of: WeightsOf, p_a: torch.Tensor, r: torch.Tensor, group: int, shape: str
):
    """``W(c, x) = E[w | x]`` ``[PROMPTS, 4]``: each micro-batch row's weight (from
    ``weights_of``) at member 0 of its group, averaged over the others' multisets."""
    batch, probs, owner = enumerated_groups(p_a, r, group)
    w = torch.zeros(batch.rewards.shape[0], dtype=torch.float64)
    for mb in micro_batches(batch, shape):
        rows = mb.responses[:, 0] * group + mb.responses[:, 1]
        w[rows] = weights_of(mb).double()
    first = w.view(-1, group)[:, 0] * probs
    out = torch.zeros(PROMPTS, len(ALL_X), dtype=torch.float64)
    for k, (c, x) in enumerate(owner):
        out[c, x] += first[k]
    return out


def objective_weights(
    kind: str, calibration: torch.Tensor | None, bound: float | None
) -> WeightsOf:
    """The DTM objective's own per-row weights for a baseline kind, prepared as the trainer
    prepares it (a declared bound, or a calibration sample of the base). ``clamp_at_0`` is
    what earlier versions computed on a micro-batch of single completions (the group-minimum
    shift on a group of one: ``e^{h max(r, 0)}``), for comparison."""
    if kind == "clamp_at_0":
        return lambda mb: torch.exp(H * mb.rewards.clamp(min=0.0))
    normalise = kind == "self_normalise"
    config = DTMConfig(h=H, baseline="none" if normalise else kind, self_normalise=normalise)
    objective, phase = DTMObjective(config, mask_token_id=MASK), Phase()
    objective.prepare(phase, bound, lambda: calibration)
    return lambda mb: objective.sample_weights(mb.rewards, mb.group_rewards(), H, phase)


def calibration_sample(p0: torch.Tensor, r: torch.Tensor, count: int = 512, seed: int = 1):
    """Rewards ``[PROMPTS, count]`` of base samples drawn apart from every rollout."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.stack(
        [torch.multinomial(p0[c], count, True, generator=g) for c in range(PROMPTS)]
    )
    return r.gather(1, draws)


def max_tv(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest total-variation distance over every (prompt, state, masked position)."""
    return float((0.5 * (a - b).abs().sum(-1)).nan_to_num(0.0).max())


def bias_table(
    seed: int = 0, shape: str = "prompts", groups: tuple[int, ...] = GROUPS
) -> dict[str, dict[int, float]]:
    """``{kind: {G: max TV(minimiser, pi_{a+h})}}`` on :func:`problem` ``(seed)``."""
    p0, r = problem(seed)
    p_a, target = tilted(p0, r, A), posterior(tilted(p0, r, A + H))
    calibration = calibration_sample(p0, r)
    table: dict[str, dict[int, float]] = {}
    for kind in KINDS:
        weights_of = objective_weights(kind, calibration, bound=-1.0)
        table[kind] = {}
        for group in groups:
            big_w = expected_weights(weights_of, p_a, r, group, shape)
            table[kind][group] = max_tv(posterior(p_a, big_w), target)
    return table


def main(argv: list[str] | None = None) -> int:
    """Print the table for whole-group and single-completion micro-batches; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/baseline_bias.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    for shape in ("prompts", "completions"):
        table = bias_table(args.seed, shape)
        result[shape] = table
        print(f"\nmicro_batch={shape}: max TV(stage minimiser, pi_(a+h)), a={A}, h={H}")
        print("| baseline | " + " | ".join(f"G={g}" for g in GROUPS) + " |")
        print("| --- |" + " --- |" * len(GROUPS))
        for kind, row in table.items():
            print(
                f"| {kind} | "
                + " | ".join(f"{row.get(g, float('nan')):.2e}" for g in GROUPS)
                + " |"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
