"""The baselines of METHOD.md section 8: their losses against hand-computed gradients, the
traps of the one-pass likelihood (padding, one shared prompt mask), the stage logic, option
validation, and a smoke run of the real trainer for each method."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tiltmatch.baselines import group_advantages
from tiltmatch.baselines.coupled_grpo import (
    CoupledGRPOObjective,
    coupled_masks,
    coupled_token_log_probs,
)
from tiltmatch.baselines.diffu_grpo import (
    DiffuGRPOObjective,
    DiffuGRPOOptions,
    clip_active,
    clipped_surrogate,
    grpo_token_loss,
    k3_kl,
)
from tiltmatch.baselines.espo import ESPOObjective, espo_states, stratified_mask_counts
from tiltmatch.baselines.likelihood import (
    draw_prompt_mask,
    one_pass_inputs,
    one_pass_token_log_probs,
)
from tiltmatch.baselines.rejection import RejectionObjective, RejectionOptions, best_of_group
from tiltmatch.baselines.spg import SPGObjective, block_states
from tiltmatch.baselines.wd1 import WD1Objective, WD1Options, wd1_advantages, wd1_loss, wd1_weights
from tiltmatch.batch import RolloutBatch
from tiltmatch.config import ConfigError, build_config
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.dtm.states import random_mask_states
from tiltmatch.dtm.weights import rows_of_groups, self_normalised_weights
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.objective import LossInputs, Phase
from tiltmatch.training.methods import METHODS
from tiltmatch.training.runner import make_objective, needs_reference

PAD, MASK, VOCAB = 0, 1, 7
SPEC = TinyModelSpec(
    hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64
)


# ----- helpers -----------------------------------------------------------------------------------


class TableDenoiser(nn.Module):
    """A denoiser whose logits are a free table ``[L, V]``, whatever the input.

    Its one-pass log-probability of token ``v`` at position ``k`` is
    ``log_softmax(table[k])[v]``, so gradients through the objectives have closed forms.
    """

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.mask_token_id, self.pad_token_id = MASK, PAD
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int
    ) -> torch.Tensor:
        self.calls.append((input_ids.clone(), attention_mask.clone()))
        return self.table[None].expand(input_ids.shape[0], -1, -1)

    # The package's one join of prompt and canvas, so the recorded calls show the real input.
    response_logits = MaskedDenoiser.response_logits


def make_batch(rewards: list[list[float]], length: int = 4, seed: int = 0) -> RolloutBatch:
    """Groups of completions of prompts of different lengths (so left padding appears)."""
    g = torch.Generator().manual_seed(seed)
    groups, size = len(rewards), len(rewards[0])
    n = groups * size
    width = 6
    lengths = torch.tensor([3 + (i // size) % 4 for i in range(n)])  # 3..6 real tokens
    prompt_mask = (torch.arange(width)[None, :] >= width - lengths[:, None]).long()
    prompt_ids = torch.randint(3, VOCAB, (n, width), generator=g) * prompt_mask
    responses = torch.randint(2, VOCAB, (n, length), generator=g)
    flat = torch.tensor(rewards, dtype=torch.float32).reshape(-1)
    return RolloutBatch(prompt_ids, prompt_mask, responses, flat, size)


def tiny_model(seed: int = 0) -> MaskedDenoiser:
    return MaskedDenoiser(tiny_denoiser(VOCAB, SPEC, seed=seed), MASK, PAD)


def one_hot_minus_probs(table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``d log_softmax(table[k])[o_k] / d table[k, :]`` for each row of tokens: ``[N, L, V]``."""
    probs = torch.softmax(table, dim=-1)
    return torch.nn.functional.one_hot(tokens, table.shape[-1]).to(table.dtype) - probs[None]


# ----- advantages and the diffu-GRPO loss -------------------------------------------------------


def test_group_advantages_are_centred_not_scaled() -> None:
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.2, 0.2, 0.2, 0.6]])
    adv = group_advantages(rewards)
    expected = torch.tensor([[-0.5, 0.5, 0.5, -0.5], [-0.1, -0.1, -0.1, 0.3]])
    torch.testing.assert_close(adv, expected)


def test_grpo_gradient_matches_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    n, length, eps, beta = 6, 5, 0.5, 0.04
    logp_old = -torch.rand(n, length, generator=g, dtype=torch.float64) * 2
    # Ratios spread over both sides of the clip range, none on its edges.
    ratio = torch.tensor([0.3, 0.7, 1.0, 1.2, 1.7, 2.5], dtype=torch.float64)
    ratio = ratio[torch.randint(0, 6, (n, length), generator=g)]
    logp = (logp_old + ratio.log()).requires_grad_(True)
    logp_ref = -torch.rand(n, length, generator=g, dtype=torch.float64) * 2
    adv = torch.tensor([0.5, -0.5, 0.25, -0.25, 0.0, 1.0], dtype=torch.float64)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[0, 3:] = False  # a shorter completion: its tokens weigh more in its own mean
    mask[2, 1:] = False
    loss, stats = grpo_token_loss(logp, logp_old, logp_ref, adv, mask, eps, beta)
    loss.backward()

    a = adv[:, None].expand(n, length)
    unclipped = ~clip_active(ratio, a, eps)
    d_surrogate = torch.where(unclipped, ratio * a, torch.zeros_like(ratio))
    d_kl = 1.0 - torch.exp(logp_ref - logp.detach())
    count = mask.sum(1, keepdim=True).double()
    expected = -(d_surrogate - beta * d_kl) * mask / (count * n)
    torch.testing.assert_close(logp.grad, expected)
    # the value, too: surrogate minus KL, averaged per sequence then over sequences
    surr = torch.minimum(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
    kl = torch.exp(logp_ref - logp.detach()) - (logp_ref - logp.detach()) - 1
    per_seq = ((surr - beta * kl) * mask).sum(1) / count.squeeze(1)
    torch.testing.assert_close(loss.detach(), -per_seq.mean())
    assert 0.0 < stats["clip_fraction"] < 1.0


@pytest.mark.parametrize("advantage", [1.0, -1.0])
def test_clipping_engages_exactly_outside_the_range_with_the_sign_of_a(advantage: float) -> None:
    eps = 0.5
    ratio = torch.tensor([0.3, 0.49, 0.51, 1.0, 1.49, 1.51, 2.0], dtype=torch.float64)
    logp = ratio.log()[None].clone().requires_grad_(True)
    adv = torch.tensor([advantage], dtype=torch.float64)
    mask = torch.ones_like(logp, dtype=torch.bool)
    loss, _ = grpo_token_loss(logp, torch.zeros_like(logp), None, adv, mask, eps, 0.0)
    loss.backward()
    assert logp.grad is not None
    # an increase is capped above 1 + eps only, a decrease below 1 - eps only
    flat = ratio > 1 + eps if advantage > 0 else ratio < 1 - eps
    assert torch.equal(clip_active(ratio, adv, eps), flat)
    assert torch.all(logp.grad[0][flat] == 0)
    torch.testing.assert_close(
        logp.grad[0][~flat], -(ratio * advantage)[~flat] / ratio.numel(), rtol=1e-12, atol=0
    )
    value = clipped_surrogate(ratio, adv, eps)
    capped = ratio.clamp(1 - eps, 1 + eps) * advantage
    torch.testing.assert_close(value[flat], capped[flat])
    torch.testing.assert_close(value[~flat], (ratio * advantage)[~flat])


def test_k3_kl_is_zero_with_zero_gradient_at_the_reference() -> None:
    ref = torch.tensor([-0.1, -1.0, -3.0], dtype=torch.float64)
    cur = ref.clone().requires_grad_(True)
    kl = k3_kl(cur, ref)
    kl.sum().backward()
    assert torch.all(kl == 0) and cur.grad is not None and torch.all(cur.grad == 0)
    # elsewhere positive, with gradient 1 - e^(ref - cur)
    cur2 = (ref + torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)).requires_grad_(True)
    kl2 = k3_kl(cur2, ref)
    kl2.sum().backward()
    assert torch.all(kl2 > 0)
    torch.testing.assert_close(cur2.grad, 1.0 - torch.exp(ref - cur2.detach()))


# ----- wd1 ---------------------------------------------------------------------------------------


def test_wd1_weights_sum_to_zero_and_gradient_matches_closed_form() -> None:
    rewards = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.3, 0.9]], dtype=torch.float64)
    adv = wd1_advantages(rewards)
    w = wd1_weights(adv)
    torch.testing.assert_close(w.sum(1), torch.zeros(3, dtype=torch.float64))
    # A = (0.5, -0.5): softmax(-A) - softmax(A) = (sig(-1) - sig(1), sig(1) - sig(-1))
    s = 1 / (1 + math.exp(-1.0))
    torch.testing.assert_close(w[0], torch.tensor([1 - 2 * s, 2 * s - 1], dtype=torch.float64))
    logp = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logp.requires_grad_(True)
    loss = wd1_loss(logp, adv)
    loss.backward()
    torch.testing.assert_close(logp.grad, w / 3)
    torch.testing.assert_close(loss.detach(), (w * logp.detach()).sum(1).mean())
    assert w[0, 0] < 0 < w[0, 1]  # descending raises the better sample's likelihood


def test_wd1_normalised_advantages_follow_the_published_variant() -> None:
    rewards = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.4, 0.4, 0.4, 0.4]])
    adv = wd1_advantages(rewards, normalise=True)
    torch.testing.assert_close(adv[0], group_advantages(rewards)[0] / rewards[0].std())
    assert torch.all(adv[1] == 0)  # a flat group stays at zero instead of 0 / 0


def test_constant_reward_groups_give_zero_gradient() -> None:
    rewards = torch.tensor([[0.7, 0.7, 0.7], [0.0, 0.0, 0.0]], dtype=torch.float64)
    adv = group_advantages(rewards)
    assert torch.all(adv == 0)
    logp = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    old = (logp.detach() + 0.3 * torch.randn(6, 4, dtype=torch.float64)).clone()
    mask = torch.ones(6, 4, dtype=torch.bool)
    loss, _ = grpo_token_loss(logp, old, None, adv.reshape(-1), mask, 0.5, 0.0)
    loss.backward()
    assert logp.grad is not None and torch.all(logp.grad == 0)
    seq = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    wd1_loss(seq, wd1_advantages(rewards)).backward()
    assert seq.grad is not None and torch.all(seq.grad == 0)


# ----- the one-pass likelihood ------------------------------------------------------------------


def test_prompt_mask_never_masks_padding() -> None:
    batch = make_batch([[0.0] * 4] * 4)
    g = torch.Generator().manual_seed(0)
    every = draw_prompt_mask(batch.prompt_mask, 1.0, g)
    assert torch.equal(every, batch.prompt_mask.bool())  # p = 1: every real token, no padding
    many = batch.prompt_mask.repeat(200, 1)
    drawn = draw_prompt_mask(many, 0.15, g)
    assert not drawn[many == 0].any()
    rate = float(drawn[many == 1].float().mean())
    assert abs(rate - 0.15) < 0.02
    fed, canvas = one_pass_inputs(batch, every, MASK)
    pad = batch.prompt_mask == 0
    assert torch.all(fed.prompt_ids[pad] == PAD) and torch.all(fed.prompt_ids[~pad] == MASK)
    assert torch.equal(fed.prompt_mask, batch.prompt_mask)
    assert torch.all(canvas == MASK)


def test_one_pass_log_probs_read_the_completion_tokens() -> None:
    batch = make_batch([[0.0, 1.0], [1.0, 1.0]])
    table = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3))
    model = TableDenoiser(table)
    none = torch.zeros_like(batch.prompt_mask, dtype=torch.bool)
    logp = one_pass_token_log_probs(model, batch, none, MASK)  # type: ignore[arg-type]
    expected = torch.log_softmax(table, -1).gather(1, batch.responses.T).T
    torch.testing.assert_close(logp, expected)
    ids, attention = model.calls[0]
    assert torch.all(ids[:, -4:] == MASK)  # the whole completion is masked
    assert torch.equal(attention[:, :6], batch.prompt_mask)


def test_current_old_and_reference_passes_share_one_prompt_mask() -> None:
    batch = make_batch([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0]])
    student, teacher, reference = (tiny_model(0) for _ in range(3))
    calls: dict[str, list[torch.Tensor]] = {"student": [], "teacher": [], "reference": []}
    for name, model in (("student", student), ("teacher", teacher), ("reference", reference)):
        model.register_forward_pre_hook(
            lambda _m, args, name=name: calls[name].append(args[0].clone())
        )
    options = DiffuGRPOOptions(p_mask_prompt=0.5)
    objective = DiffuGRPOObjective(options, MASK)
    g = torch.Generator().manual_seed(0)
    loss, stats = objective.loss(LossInputs(student, teacher, batch, Phase(), g, reference))
    assert [len(v) for v in calls.values()] == [1, 1, 1]
    ids = calls["student"][0]
    assert torch.equal(ids, calls["teacher"][0]) and torch.equal(ids, calls["reference"][0])
    prompt = ids[:, : batch.prompt_ids.shape[1]]
    masked = prompt == MASK
    assert masked.any() and not masked[batch.prompt_mask == 0].any()
    # identical models: ratio 1, no clipping, no KL; the loss is -mean(A) = 0 per group
    assert stats["clip_fraction"] == 0.0 and stats["kl"] == 0.0
    assert abs(stats["ratio_mean"] - 1.0) < 1e-6
    assert torch.isfinite(loss)
    # a new micro-batch draws a new mask
    objective.loss(LossInputs(student, teacher, batch, Phase(), g, reference))
    assert not torch.equal(calls["student"][1], ids)


def test_grpo_objective_gradient_through_a_table_denoiser() -> None:
    rewards = [[1.0, 0.0, 0.5], [0.2, 0.2, 0.8]]
    batch = make_batch(rewards)
    g = torch.Generator().manual_seed(5)
    table = torch.randn(4, VOCAB, generator=g, dtype=torch.float64)
    ref_table = torch.randn(4, VOCAB, generator=g, dtype=torch.float64)
    student, teacher, reference = (
        TableDenoiser(table),
        TableDenoiser(table),
        TableDenoiser(ref_table),
    )
    beta = 0.04
    objective = DiffuGRPOObjective(DiffuGRPOOptions(beta_kl=beta), MASK)
    inputs = LossInputs(student, teacher, batch, Phase(), g, reference)  # type: ignore[arg-type]
    loss, _ = objective.loss(inputs)
    loss.backward()
    # At ratio 1 nothing is clipped: d loss / d logp_nk = -(A_n - beta (1 - e^(ref - cur))) / (L N)
    n, length = batch.responses.shape
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float64)).reshape(-1, 1)
    cur = torch.log_softmax(table, -1).gather(1, batch.responses.T).T
    ref = torch.log_softmax(ref_table, -1).gather(1, batch.responses.T).T
    d_logp = -(adv - beta * (1 - torch.exp(ref - cur))) / (length * n)
    expected = (d_logp[..., None] * one_hot_minus_probs(table, batch.responses)).sum(0)
    torch.testing.assert_close(student.table.grad, expected)


def test_wd1_objective_gradient_through_a_table_denoiser() -> None:
    rewards = [[1.0, 0.0, 0.5], [0.2, 0.2, 0.8]]
    batch = make_batch(rewards)
    table = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    student = TableDenoiser(table)
    objective = WD1Objective(WD1Options(), MASK)
    g = torch.Generator().manual_seed(0)
    loss, _ = objective.loss(LossInputs(student, student, batch, Phase(), g))  # type: ignore[arg-type]
    loss.backward()
    assert len(student.calls) == 1  # no old-policy or reference pass
    w = wd1_weights(group_advantages(torch.tensor(rewards, dtype=torch.float64))).reshape(-1)
    per_row = w[:, None, None] / len(rewards)  # sequence log-prob = sum of token log-probs
    expected = (per_row * one_hot_minus_probs(table, batch.responses)).sum(0)
    torch.testing.assert_close(student.table.grad, expected)


# ----- rejection sampling ------------------------------------------------------------------------


def test_rejection_keeps_only_group_maxima() -> None:
    rewards = torch.tensor([[0.1, 0.9, 0.4, 0.9], [0.0, 0.0, 0.0, 0.0], [0.3, 0.2, 0.1, 0.0]])
    kept = best_of_group(rewards)
    expected = torch.tensor(
        [[False, True, False, True], [True, True, True, True], [True, False, False, False]]
    )
    assert torch.equal(kept, expected)
    thresholded = best_of_group(rewards, min_reward=0.3)
    assert torch.equal(thresholded, expected & torch.tensor([[True], [False], [True]]))


def test_rejection_is_the_large_h_limit_of_self_normalised_dtm_weights() -> None:
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 4, (16, 6), generator=g).float() / 3  # many ties
    kept = best_of_group(rewards)
    w = self_normalised_weights(*rows_of_groups(rewards), h=1e4).view_as(rewards)
    assert torch.equal(w > 1e-6, kept)
    k = kept.sum(1, keepdim=True).float()
    torch.testing.assert_close(w, kept.float() * rewards.shape[1] / k)


def test_rejection_loss_is_dtm_loss_with_zero_one_weights() -> None:
    batch = make_batch([[0.1, 0.9, 0.9], [0.5, 0.2, 0.0]])
    student = tiny_model(1)
    objective = RejectionObjective(RejectionOptions(), MASK)
    g = torch.Generator().manual_seed(4)
    loss, stats = objective.loss(LossInputs(student, student, batch, Phase(), g))
    # the same states, drawn on the whole batch, and the weights 1 (kept) / 0 (the rest)
    states = random_mask_states(batch.responses, MASK, torch.Generator().manual_seed(4))
    logits = student.response_logits(batch.prompt_ids, batch.prompt_mask, states.z)
    kept = best_of_group(batch.grouped_rewards).reshape(-1).float()
    expected, _ = dtm_loss(logits, batch.responses, states, kept, c=0.0)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert stats["kept_fraction"] == pytest.approx(0.5)
    # Nothing kept: the loss is 0, and still through one student forward (collective under
    # FSDP), so every parameter gets a zero gradient rather than none.
    none_kept = RejectionObjective(RejectionOptions(min_reward=1.0), MASK)
    zero, _ = none_kept.loss(LossInputs(student, student, batch, Phase(), torch.Generator()))
    assert float(zero.detach()) == 0.0
    zero.backward()
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None and not g.any() for g in grads)


# ----- SPG, ESPO, coupled-GRPO: the states they draw (losses: test_baseline_parity.py) --------


def test_spg_block_states_follow_the_block_wise_rule() -> None:
    batch = make_batch([[0.0] * 4] * 50, length=12)  # 200 rows, prompts with left padding
    rows, num_t, block, p = 200, 2, 4, 0.15
    # The same draws with p = 0 show the structure alone: the first block with a masked
    # position is the active one.
    _, bare = block_states(
        batch.prompt_mask, 12, num_t, block, 0.0, torch.Generator().manual_seed(0)
    )
    prompt, masked = block_states(
        batch.prompt_mask, 12, num_t, block, p, torch.Generator().manual_seed(0)
    )
    assert prompt.shape == (rows, num_t, 6) and masked.shape == (rows, num_t, 12)
    blocks = bare.view(rows, num_t, 3, block)
    active = blocks.any(-1).float().argmax(-1)  # [rows, num_t]
    block_of = torch.arange(12) // block
    later = block_of[None, None, :] > active[..., None]
    before = block_of[None, None, :] < active[..., None]
    assert torch.all(bare[later]) and not bare[before].any()
    in_active = blocks.gather(2, active[..., None, None].expand(-1, -1, 1, block)).sum((-1, -2))
    assert in_active.min() >= 1 and in_active.max() <= block
    assert torch.all(active[:, 0] != active[:, 1])  # a row's states take distinct blocks
    # p > 0 adds masks only before the active block (rate p), and on real prompt tokens only
    assert torch.equal(masked & ~before, bare)
    assert abs(float(masked[before].float().mean()) - p) < 0.04
    real = batch.prompt_mask[:, None, :].expand_as(prompt).bool()
    assert not prompt[~real].any() and abs(float(prompt[real].float().mean()) - p) < 0.03


def test_spg_active_block_count_is_uniform_and_blocks_cycle_when_too_few() -> None:
    g = torch.Generator().manual_seed(1)
    prompt_mask = torch.ones(4000, 2, dtype=torch.long)
    _, masked = block_states(prompt_mask, 4, 1, 4, 0.0, g)  # one block: the count is all
    counts = torch.bincount(masked.sum(-1).view(-1), minlength=5)
    assert counts[0] == 0 and torch.all((counts[1:] - 1000).abs() < 120)  # U{1..4}
    # a ragged last block (L = 6, B = 4: blocks of 4 and 2) and more states than blocks
    _, ragged = block_states(torch.ones(500, 2, dtype=torch.long), 6, 3, 4, 0.0, g)
    first_active = ragged[..., :4].any(-1)  # else block 0 is clean and block 1 active
    assert torch.all(ragged[..., 4:][first_active])  # block 1 is after the active block 0
    second = ragged[..., 4:].sum(-1)[~first_active]
    assert second.min() == 1 and second.max() == 2  # the short block's U{1..2}
    # 3 states over 2 blocks: the first two take both blocks, the third either
    assert torch.all(first_active[:, 0] != first_active[:, 1])


def test_espo_mask_counts_are_stratified_and_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    length, rows = 8, 3
    seen = torch.zeros(length + 1)
    for _ in range(3000):
        counts = stratified_mask_counts(rows, length, g)
        gaps = (counts.roll(-1) - counts) % (length + 1)
        assert set(gaps[:-1].tolist()) <= {3}  # (L + 1) / rows apart, modulo L + 1
        seen += torch.bincount(counts, minlength=length + 1)
    assert torch.all((seen / seen.sum() - 1 / (length + 1)).abs() < 0.01)
    masked, counts = espo_states(50, length, g)
    assert torch.equal(masked.sum(1), counts)


def test_coupled_masks_draw_one_ratio_per_micro_batch() -> None:
    g = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(400):
        masked, t = coupled_masks(20, 50, 0.2, 0.8, g)
        ratios.append(float(t))
        assert abs(float(masked.float().mean()) - float(t)) < 0.08
    assert 0.2 <= min(ratios) < 0.25 and 0.75 < max(ratios) <= 0.8


def test_coupled_token_log_probs_read_each_position_once_besides_the_full_mask() -> None:
    batch = make_batch([[0.0, 1.0]])
    table = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3))
    model = TableDenoiser(table)  # logits ignore the input: every pass reads the same table
    masked = torch.tensor([[True, False, True, False], [False, False, True, True]])
    t = torch.tensor(0.25)
    logp = coupled_token_log_probs(model, batch, masked, t, MASK)  # type: ignore[arg-type]
    base = torch.log_softmax(table, -1).gather(1, batch.responses.T).T
    expected = (base + torch.where(masked, base / 0.25, base / 0.75)) / 2
    torch.testing.assert_close(logp, expected)
    inputs = [ids[:, -4:] for ids, _ in model.calls]
    assert torch.all(inputs[0] == MASK)  # the whole completion masked
    assert torch.equal(inputs[1] == MASK, masked) and torch.equal(inputs[2] == MASK, ~masked)


def test_new_baselines_refuse_groups_of_one_and_ignored_options() -> None:
    for method in ("espo", "coupled-grpo"):
        objective = make_objective(build_config(overrides=[f"method={method}"]), MASK)
        with pytest.raises(ValueError, match="at least 2 completions per prompt"):
            objective.begin_stage(Phase(), torch.zeros(4, 1))
    with pytest.raises(ConfigError, match="mix_weight is read only with negative_bound=mix"):
        make_objective(
            build_config(
                overrides=[
                    "method=spg",
                    "method_options.negative_bound=eubo",
                    "method_options.mix_weight=0.3",
                ]
            ),
            MASK,
        )
    with pytest.raises(ConfigError, match="eubo_beta is read only"):
        make_objective(
            build_config(
                overrides=[
                    "method=spg",
                    "method_options.negative_bound=elbo",
                    "method_options.eubo_beta=2",
                ]
            ),
            MASK,
        )
    with pytest.raises(ConfigError, match=r"min_mask_ratio 0\.9 exceeds max_mask_ratio"):
        make_objective(
            build_config(overrides=["method=coupled-grpo", "method_options.min_mask_ratio=0.9"]),
            MASK,
        )
    with pytest.raises(ConfigError, match="eubo_beta: Input should be greater than or equal to 1"):
        make_objective(build_config(overrides=["method=spg", "method_options.eubo_beta=0.5"]), 1)


def test_methods_declare_what_they_need_and_the_config_refuses_the_rest() -> None:
    # The registry's view of each method is its objective's.
    for name, method in METHODS.items():
        objective = method.objective_class()
        assert objective.reset_optimizer_each_stage == method.stage_schedule, name
    for name, method in METHODS.items():
        if method.min_generations < 2:
            build_config(overrides=[f"method={name}", "train.num_generations=1"])
            continue
        with pytest.raises(ConfigError, match=f"method {name} needs train.num_generations >= 2"):
            build_config(overrides=[f"method={name}", "train.num_generations=1"])
    # A baseline's constant learning rate is written out; a schedule it would not follow is
    # refused at config check, naming the field.
    spg = build_config(overrides=["method=spg", "train.learning_rate=0.002"])
    assert (spg.train.final_learning_rate, spg.train.warmup_ratio, spg.train.decay_fraction) == (
        0.002,
        0.0,
        0.0,
    )
    assert build_config(overrides=["method=dtm"]).train.final_learning_rate == 1e-4
    for setting in (
        "train.final_learning_rate=1e-5",
        "train.warmup_ratio=0.1",
        "train.decay_fraction=0.2",
    ):
        field = setting.split("=")[0]
        with pytest.raises(ConfigError, match=rf"{field}=.* is not read by method wd1"):
            build_config(overrides=["method=wd1", setting])
    build_config(overrides=["method=wd1", "train.warmup_ratio=0", "train.final_learning_rate=3e-4"])
    # The dtm section is DTM's alone: a value set there is refused for a baseline.
    for setting in ("dtm.h=3", "dtm.c=0.5", "dtm.teacher_update=ema", "dtm.baseline=none"):
        field = setting.split("=")[0]
        with pytest.raises(ConfigError, match=rf"{field}=.* is read by method dtm only"):
            build_config(overrides=["method=spg", setting])
    build_config(overrides=["method=dtm", "dtm.h=2", "dtm.c=0.5"])
    # The resolved config of a baseline run reads back as itself (a resume checks it).
    again = build_config(overrides=["method=espo"])
    assert type(again).model_validate(again.model_dump()) == again


def test_new_baselines_defaults_are_the_published_ones() -> None:
    spg = make_objective(build_config(overrides=["method=spg"]), MASK)
    assert isinstance(spg, SPGObjective) and spg.steps_in_stage() == 4
    o = spg.options
    assert (o.negative_bound, o.mix_weight, o.eubo_beta, o.num_t) == ("mix", 0.5, 1.5, 2)
    assert (o.block_length, o.p_mask_prompt) == (32, 0.15)
    espo = make_objective(build_config(overrides=["method=espo"]), MASK)
    assert isinstance(espo, ESPOObjective) and espo.steps_in_stage() == 8
    e = espo.options
    assert (e.num_mc, e.coupled, e.clip_epsilon, e.beta_kl) == (2, True, 0.2, 0.01)
    coupled = make_objective(build_config(overrides=["method=coupled-grpo"]), MASK)
    assert isinstance(coupled, CoupledGRPOObjective) and coupled.steps_in_stage() == 2
    c = coupled.options
    assert (c.clip_epsilon, c.beta_kl, c.min_mask_ratio, c.max_mask_ratio) == (0.5, 0.01, 0.2, 0.8)
    # the base model is kept only for a KL term; SPG has none
    assert needs_reference(build_config(overrides=["method=espo"]))
    assert needs_reference(build_config(overrides=["method=coupled-grpo"]))
    assert not needs_reference(build_config(overrides=["method=spg"]))
    for method in ("espo", "coupled-grpo"):
        no_kl = build_config(overrides=[f"method={method}", "method_options.beta_kl=0"])
        assert not needs_reference(no_kl)


# ----- stages and options ------------------------------------------------------------------------


def test_finished_by_stage_count_or_rollout_budget() -> None:
    objective = WD1Objective(WD1Options(total_stages=2), MASK)
    assert not objective.finished(Phase(stage=1))
    assert objective.finished(Phase(stage=1, begun=True))  # asked at the end of stage 1
    assert objective.finished(Phase(stage=2))
    budget = RejectionObjective(RejectionOptions(max_rollouts=100), MASK)
    assert not budget.finished(Phase(stage=5, rollouts=99))
    assert budget.finished(Phase(stage=1, rollouts=100))
    assert not WD1Objective(WD1Options(), MASK).finished(Phase(stage=10**6))


def test_make_objective_dispatches_and_validates_options() -> None:
    grpo = make_objective(build_config(overrides=["method=diffu-grpo"]), MASK)
    assert isinstance(grpo, DiffuGRPOObjective) and grpo.steps_in_stage() == 4
    assert grpo.options.clip_epsilon == 0.5 and grpo.options.beta_kl == 0.04
    assert grpo.options.p_mask_prompt == 0.15
    assert make_objective(build_config(overrides=["method=wd1"]), MASK).steps_in_stage() == 1
    rejection = make_objective(build_config(overrides=["method=rejection"]), MASK)
    assert isinstance(rejection, RejectionObjective) and rejection.steps_in_stage() == 1
    assert isinstance(make_objective(build_config(), MASK), DTMObjective)
    assert needs_reference(build_config(overrides=["method=diffu-grpo"]))
    no_kl = build_config(overrides=["method=diffu-grpo", "method_options.beta_kl=0"])
    assert not needs_reference(no_kl)
    for method in ("dtm", "wd1", "rejection"):
        assert not needs_reference(build_config(overrides=[f"method={method}"]))

    with pytest.raises(ConfigError, match=r"clip_eps: unknown option .*clip_epsilon"):
        make_objective(
            build_config(overrides=["method=diffu-grpo", "method_options.clip_eps=1"]), 1
        )
    with pytest.raises(ConfigError, match="p_mask_prompt: Input should be less than 1"):
        make_objective(build_config(overrides=["method=wd1", "method_options.p_mask_prompt=1"]), 1)
    with pytest.raises(ConfigError, match="num_iterations"):
        make_objective(
            build_config(overrides=["method=rejection", "method_options.num_iterations=0"]), 1
        )
    with pytest.raises(ConfigError, match="'dtm' takes no method_options"):
        make_objective(build_config(overrides=["method_options.beta_kl=0.1"]), 1)


def test_the_method_registry_is_the_one_list_of_methods() -> None:
    # every registered name is a valid config.method and builds its registered classes
    for name, method in METHODS.items():
        objective = make_objective(build_config(overrides=[f"method={name}"]), MASK)
        assert type(objective) is method.objective_class()
        options = method.options_class()
        assert options is None or type(objective.options) is options
    # the benchmark offers (and by default runs) exactly the registered methods, with labels
    from tiltmatch.experiments import bench

    assert bench.parse_args([]).methods == list(METHODS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "grpo"])
    assert {name: bench._LABELS[name] for name in METHODS} == {
        name: method.label for name, method in METHODS.items()
    }


# ----- smoke: the real trainer, two tiny stages per method ---------------------------------------


@pytest.mark.parametrize(
    "method", ["diffu-grpo", "wd1", "rejection", "spg", "espo", "coupled-grpo"]
)
def test_trainer_runs_two_stages_of_each_baseline(method: str, tmp_path) -> None:
    from tiltmatch.tasks import get_task
    from tiltmatch.training.pair import CopiedPair
    from tiltmatch.training.pretrain import char_codec_for
    from tiltmatch.training.trainer import Trainer

    task = get_task("maze")
    # An untrained model never finds a valid path, so every group would be flat and the
    # group-relative baselines would (rightly) not move; a dense reward (fraction of moves)
    # gives them a signal.
    moves = set("UDLR")
    task.reward = lambda response, example: sum(ch in moves for ch in response) / 12  # type: ignore[method-assign]
    codec = char_codec_for(task)
    config = build_config(
        overrides=[
            f"method={method}",
            "method_options.total_stages=2",
            "method_options.num_iterations=2",
            "train.buffer_prompts=2",
            "train.prompts_per_batch=2",
            "train.num_generations=3",
            "train.train_examples=4",
            "train.refresh_prompts=0",
            "train.learning_rate=0.01",
            "train.final_learning_rate=0.01",
            "eval.examples=2",
            "eval.samples_per_example=1",
            "eval.every_stage=false",
            "sampler.steps=4",
        ]
    )
    model = MaskedDenoiser(
        tiny_denoiser(codec.vocab_size, SPEC, seed=0), codec.mask_token_id, codec.pad_token_id
    )
    before = [p.detach().clone() for p in model.parameters()]
    pair = CopiedPair(model, keep_reference=needs_reference(config))
    objective = make_objective(config, codec.mask_token_id)
    trainer = Trainer(config, task, codec, pair, objective, tmp_path, quiet=True)
    history = trainer.train()
    assert len(history) == 2 and trainer.phase.updates == 4
    # One AdamW for the whole run (the authors' trainers): its moments saw all 4 updates,
    # not only the last stage's 2, and the learning rate never moved.
    assert trainer.optimizer is not None
    steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {4.0}
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01
    assert all(math.isfinite(r["loss"]) for r in history)
    assert "eval_reward" in history[-1]  # the last stage is known to be the last
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert changed


# ----- the baselines' LLaDA recipes (configs/llada/<method>_<task>.yaml) ------------------------

LLADA_RECIPES = Path(__file__).resolve().parents[1] / "configs" / "llada"
# The authors' values, written out by hand from their scripts (the commits are in each
# recipe's header): method options, training values, rollout temperature, 4-bit base, and
# the completions per process per update (micro-batch x accumulation).
PUBLISHED_BASELINES: dict[str, tuple[dict, dict, float, bool, int]] = {
    "spg_countdown": (
        {"num_iterations": 4, "negative_bound": "mix", "mix_weight": 0.5, "eubo_beta": 1.5},
        {"learning_rate": 3e-6, "weight_decay": 0.1, "max_grad_norm": 0.2, "num_generations": 6},
        0.9,
        True,
        12,
    ),
    "spg_sudoku": (
        {"num_iterations": 4, "negative_bound": "mix", "mix_weight": 0.5, "eubo_beta": 1.0},
        {"learning_rate": 3e-6, "weight_decay": 0.1, "max_grad_norm": 0.2, "num_generations": 6},
        0.3,
        True,
        12,
    ),
    "espo_countdown": (
        {"num_iterations": 8, "num_mc": 2, "coupled": True, "clip_epsilon": 0.0, "beta_kl": 3e-3},
        {"learning_rate": 3e-6, "weight_decay": 0.01, "max_grad_norm": 0.2, "num_generations": 6},
        1.0,
        False,
        12,
    ),
    "espo_sudoku": (
        {"num_iterations": 8, "num_mc": 2, "coupled": True, "clip_epsilon": 0.2, "beta_kl": 1e-2},
        {"learning_rate": 3e-6, "weight_decay": 0.01, "max_grad_norm": 0.2, "num_generations": 6},
        1.0,
        False,
        12,
    ),
    "coupled_grpo_countdown": (
        {"num_iterations": 2, "clip_epsilon": 0.5, "beta_kl": 0.01},
        {"learning_rate": 1e-6, "weight_decay": 0.1, "max_grad_norm": 0.2, "num_generations": 10},
        1.0,
        True,
        10,
    ),
    "coupled_grpo_sudoku": (
        {"num_iterations": 2, "clip_epsilon": 0.5, "beta_kl": 0.01},
        {"learning_rate": 1e-6, "weight_decay": 0.1, "max_grad_norm": 0.2, "num_generations": 10},
        1.0,
        True,
        10,
    ),
}


def dtm_recipe_rollouts(config) -> int:
    """Completions one process samples in a DTM recipe: each fixed-h stage rebuilds the
    buffer (P x G) and refreshes R prompts every k updates before its last."""
    stages = math.ceil(config.dtm.a_end / config.dtm.h)
    tc = config.train
    refreshes = (config.dtm.steps_per_h - 1) // tc.refresh_every
    per_stage = (tc.buffer_prompts + refreshes * tc.refresh_prompts) * tc.num_generations
    return stages * per_stage


@pytest.mark.parametrize("name", sorted(PUBLISHED_BASELINES))
def test_baseline_recipes_carry_the_published_values_in_dtms_protocol(name: str) -> None:
    options, train, temperature, four_bit, per_update = PUBLISHED_BASELINES[name]
    config = build_config(LLADA_RECIPES / f"{name}.yaml")
    objective = make_objective(config, MASK)
    assert objective.name == name.rsplit("_", 1)[0].replace("_", "-")
    for key, value in options.items():
        assert getattr(objective.options, key) == value, key
    for key, value in train.items():
        assert getattr(config.train, key) == value, key
    tc = config.train
    assert config.sampler.temperature == temperature
    assert config.model.load_in_4bit is four_bit and config.model.dtype == "bfloat16"
    assert config.lora is not None and (config.lora.r, config.lora.alpha) == (128, 64.0)
    assert config.lora.dropout == 0.05 and len(config.lora.target_modules) == 7
    assert tc.micro_batch == "prompts" and (tc.adam_beta1, tc.adam_beta2) == (0.9, 0.99)
    assert tc.prompts_per_batch * tc.num_generations * tc.gradient_accumulation_steps == per_update
    # one batch of rollouts per stage, every completion of it in each update
    assert tc.buffer_prompts == tc.prompts_per_batch * tc.gradient_accumulation_steps
    assert tc.refresh_prompts == 0 and tc.final_learning_rate == tc.learning_rate
    # DTM's protocol: its recipe's task, sampler, evaluation, prompts and rollout budget
    dtm = build_config(LLADA_RECIPES / f"{config.task}.yaml")
    assert config.task_options == dtm.task_options
    sampler, dtm_sampler = config.sampler.model_dump(), dtm.sampler.model_dump()
    sampler.pop("temperature"), dtm_sampler.pop("temperature")
    assert sampler == dtm_sampler
    assert config.eval == dtm.eval and tc.train_examples == dtm.train.train_examples
    assert objective.options.max_rollouts == 8 * dtm_recipe_rollouts(dtm)


@pytest.mark.parametrize(
    ("trainer_name", "method"),
    [("SPGTrainer", "spg"), ("ESPOTrainer", "espo"), ("CoupledGRPOTrainer", "coupled-grpo")],
)
def test_trl_style_trainers_of_the_new_baselines(trainer_name: str, method: str, tmp_path) -> None:
    from test_api import BASELINE_LEAVES_UNSET, letters_of_word, tiny_args, word_rows

    import tiltmatch

    trainer_class = getattr(tiltmatch, trainer_name)  # exported like DTMTrainer
    args = tiny_args(
        tmp_path / "r",
        max_stages=2,
        method_options={"num_iterations": 1},
        **BASELINE_LEAVES_UNSET,
    )
    trainer = trainer_class(reward_funcs=letters_of_word, train_dataset=word_rows(), args=args)
    assert trainer.config.method == method
    assert trainer.config.method_options == {"num_iterations": 1}
    out = trainer.train()
    assert len(out.history) == 2 and all(math.isfinite(r["loss"]) for r in out.history)
