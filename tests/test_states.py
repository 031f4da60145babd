"""States of the loss: random masking (antithetic), SAR-aligned blocks, trajectories."""

from __future__ import annotations

import torch

from tiltmatch.dtm.states import antithetic_times, random_mask_states, sar_states, trajectory_states

MASK = 1


def test_antithetic_times_cover_the_unit_interval_evenly() -> None:
    t = antithetic_times(8, torch.Generator().manual_seed(0))
    assert ((t > 0) & (t <= 1)).all()
    gaps = t.sort().values.diff()
    assert torch.allclose(gaps, torch.full_like(gaps, 1 / 8), atol=1e-6)


def test_random_masking_weights_are_inverse_t_over_length() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(3, 10, (64, 16), generator=g)
    s = random_mask_states(x, MASK, g, inverse_t_weight=True)
    assert torch.equal(s.loss_mask, s.z == MASK)
    assert torch.equal(s.z[~s.loss_mask], x[~s.loss_mask])
    assert (s.position_weight[~s.loss_mask] == 0).all()
    # Expected masked fraction is E[t] = 1/2; with weights 1/t the expected weight mass is 1.
    frac = s.loss_mask.float().mean()
    assert 0.35 < float(frac) < 0.65
    mass = s.position_weight.sum(1).mean()
    assert 0.6 < float(mass) < 1.4
    flat = random_mask_states(x, MASK, g, inverse_t_weight=False)
    covered = flat.position_weight[flat.loss_mask]
    assert torch.allclose(covered, torch.full_like(covered, 1 / 16))


def test_sar_states_structure() -> None:
    g = torch.Generator().manual_seed(1)
    block, length = 4, 16
    x = torch.randint(3, 10, (500, length), generator=g)
    s = sar_states(x, MASK, block, g)
    masked = s.z == MASK
    for row in range(x.shape[0]):
        m = masked[row].view(-1, block)
        counts = m.sum(1)
        full = (counts == block).nonzero().flatten().tolist()
        partial = ((counts > 0) & (counts < block)).nonzero().flatten().tolist()
        active = s.loss_mask[row].view(-1, block).any(1).nonzero().flatten().tolist()
        assert len(active) == 1
        a = active[0]
        # blocks after the active one are fully masked; blocks before it are clean
        assert all(b > a for b in full if b != a)
        assert partial in ([], [a])
        assert (counts[:a] == 0).all() and (counts[a + 1 :] == block).all()
        # the loss covers exactly the masked positions of the active block, normalised
        assert torch.equal(s.loss_mask[row].view(-1, block)[a], m[a])
        assert torch.isclose(s.position_weight[row].sum(), torch.tensor(1.0))
    # n ~ U{1..L}: every masked count appears
    assert set(masked.sum(1).tolist()) == set(range(1, length + 1))


def test_trajectory_states_pick_a_visited_canvas() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.tensor([[5, 6, 7, 8]])
    visited = torch.tensor([[[MASK] * 4], [[5, MASK, MASK, 8]], [[5, 6, MASK, 8]]])
    seen = set()
    for _ in range(30):
        s = trajectory_states(x, visited, MASK, g)
        seen.add(tuple(s.z[0].tolist()))
        assert torch.equal(s.loss_mask, s.z == MASK)
        assert torch.isclose(s.position_weight.sum(), torch.tensor(1.0))
    assert seen == {tuple(v[0].tolist()) for v in visited}
