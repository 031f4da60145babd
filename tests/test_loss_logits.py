"""Logits only where the loss reads them (METHOD.md section 6).

c-DTM's loss reads the student's and the teacher's posteriors at the covered positions of
its states only (with SAR states, at most one block per row), so the objective projects
onto the vocabulary there alone. These tests fail if it ever projects a position the loss
does not read, and check the loss and its gradient against the full ``[B, L, V]`` logits.
"""

from __future__ import annotations

import pytest
import torch
from test_baselines import MASK, make_batch, tiny_model

from tiltmatch.config import DTMConfig
from tiltmatch.dtm import objective as dtm_objective
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.objective import LossInputs, Phase

REWARDS = [[0.1, 0.9, 0.4], [0.5, 0.2, 1.0]]


class Recorder(torch.nn.Module):
    """A denoiser that records the positions it was asked for and the logits it gave."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner, self.family, self.calls = inner, inner.family, []

    def response_logits(self, prompt_ids, prompt_mask, canvas, cache=None, logits_at=None):
        out = self.inner.response_logits(prompt_ids, prompt_mask, canvas, logits_at=logits_at)
        self.calls.append((logits_at, tuple(out.shape)))
        return out


@pytest.mark.parametrize("states", ["random", "sar", "trajectory"])
@pytest.mark.parametrize("c", [0.0, 1.0])
def test_c_dtm_projects_only_the_covered_positions(states: str, c: float, monkeypatch) -> None:
    batch = make_batch(REWARDS, length=8)
    if states == "trajectory":  # canvases of a 4-step random-order decode
        steps = [batch.responses.clone() for _ in range(4)]
        for k, canvas in enumerate(steps):
            canvas[:, 2 * k :] = MASK
        batch.visited = torch.stack(steps)
    config = DTMConfig(c=c, states=states, sar_block_length=4)
    objective = DTMObjective(config, mask_token_id=MASK)
    phase = Phase(h=1.0, extra={"baseline": "none"})
    student, teacher = Recorder(tiny_model(0)), Recorder(tiny_model(1))
    read = []

    def spy(student_logits, x, states_, weights, c_, teacher_logits=None):
        read.append(states_.loss_mask)
        return dtm_loss(student_logits, x, states_, weights, c_, teacher_logits)

    monkeypatch.setattr(dtm_objective, "dtm_loss", spy)
    inputs = LossInputs(student, teacher, batch, phase, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
    objective.loss(inputs)
    covered = read[0]
    assert int(covered.sum()) < covered.numel()  # the states leave positions unread
    for model in (student, teacher) if c else (student,):
        (asked, shape), *more = model.calls
        assert not more
        assert torch.equal(asked, covered)  # exactly the positions the loss reads
        assert shape == (int(covered.sum()), 7)
    assert not teacher.calls or c  # c = 0 needs no teacher forward at all


@pytest.mark.parametrize("c", [0.0, 1.0])
def test_loss_and_gradient_equal_the_full_logits(c: float) -> None:
    batch = make_batch(REWARDS, length=8)
    objective = DTMObjective(DTMConfig(c=c, states="sar", sar_block_length=4), MASK)
    phase = Phase(h=1.5, extra={"baseline": "none"})
    student, teacher = tiny_model(0), tiny_model(1)
    inputs = LossInputs(student, teacher, batch, phase, torch.Generator().manual_seed(5))
    loss, _ = objective.loss(inputs)
    loss.backward()
    lean = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    # Today's path: the full [B, L, V] logits of the same states, then the covered ones.
    states = objective.states(batch, torch.Generator().manual_seed(5))
    full = student.response_logits(batch.prompt_ids, batch.prompt_mask, states.z)
    with torch.no_grad():
        full_teacher = teacher.response_logits(batch.prompt_ids, batch.prompt_mask, states.z)
    w = torch.exp(1.5 * batch.rewards)
    reference, _ = dtm_loss(full, batch.responses, states, w, c, full_teacher)
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    for p, g in zip(student.parameters(), lean, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
