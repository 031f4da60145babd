"""Sampler traps: every position unmasked, commitments final, padding invariance, float64 Gumbel."""

from __future__ import annotations

import itertools

import pytest
import torch

from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.sampling.sampler import (
    SamplingConfig,
    generate,
    gumbel_max,
    left_pad,
    tokens_per_step,
)

SPEC = TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
VOCAB, MASK, PAD = 16, 1, 0


@pytest.fixture(scope="module")
def denoiser() -> MaskedDenoiser:
    return MaskedDenoiser(tiny_denoiser(VOCAB, SPEC, seed=3), MASK, PAD).eval()


PROMPTS = [[5, 6, 7, 8, 9], [3, 4], [10, 11, 12]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize(("steps", "block"), [(8, 8), (8, 4), (4, 4)])
def test_all_positions_unmasked_and_commitments_final(denoiser, remasking, steps, block) -> None:
    g = torch.Generator().manual_seed(0)
    cfg = SamplingConfig(steps=steps, block_length=block, remasking=remasking, temperature=1.0)
    out = generate(denoiser, PROMPTS, 8, cfg, g, record_states=True, forbidden_token_ids=[PAD])
    assert not (out.responses == MASK).any()
    assert not (out.responses == PAD).any()
    visited = out.visited
    assert visited is not None and visited.shape == (steps, len(PROMPTS), 8)
    assert (visited[0] == MASK).all()  # starts from the all-mask response
    canvases = torch.cat([visited, out.responses[None]])
    for before, after in itertools.pairwise(canvases):
        committed = before != MASK
        assert torch.equal(before[committed], after[committed])  # never changes once set
    # Blocks are decoded left to right: nothing right of the active block is committed early.
    for s in range(steps):
        block_idx = s // (steps // (8 // block))
        right = visited[s][:, (block_idx + 1) * block :]
        assert (right == MASK).all()


def test_linear_schedule_counts() -> None:
    assert tokens_per_step(8, 3) == [3, 3, 2]
    assert sum(tokens_per_step(32, 16)) == 32
    assert tokens_per_step(2, 4) == [1, 1, 0, 0]


def test_results_do_not_depend_on_batch_padding(denoiser) -> None:
    """A prompt's greedy response is the same alone and in a batch padded for longer prompts."""
    cfg = SamplingConfig(steps=8, block_length=4, temperature=0.0)
    alone = generate(denoiser, [PROMPTS[1]], 8, cfg, torch.Generator().manual_seed(0))
    batched = generate(denoiser, PROMPTS, 8, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(alone.responses[0], batched.responses[1])
    longer = [[2] * 9 + [5, 6, 7, 8, 9]]
    batched2 = generate(denoiser, [*longer, PROMPTS[1]], 8, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(alone.responses[0], batched2.responses[1])


def test_logits_invariant_to_left_padding(denoiser) -> None:
    ids, mask = left_pad([[5, 6, 7, MASK, MASK], [4, MASK, MASK]], PAD)
    with torch.no_grad():
        both = denoiser(ids, mask, 2)
        single = denoiser(torch.tensor([[4, MASK, MASK]]), torch.ones(1, 3, dtype=torch.long), 2)
    assert torch.allclose(both[1], single[0], atol=1e-5)


def test_padding_never_makes_attention_causal(denoiser) -> None:
    """With padding present, an earlier position still sees a later token."""
    ids, mask = left_pad([[5, 6, 7, 8], [4, 9, 10]], PAD)
    changed = ids.clone()
    changed[1, -1] = 12
    with torch.no_grad():
        a = denoiser(ids, mask, 3)
        b = denoiser(changed, mask, 3)
    assert (a[1, 0] - b[1, 0]).abs().max() > 1e-4


def test_gumbel_max_is_float64_and_matches_softmax() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log().float().expand(40_000, 4)
    draws = gumbel_max(logits, 1.0, g)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert torch.allclose(freq, probs.double(), atol=0.01)
    # The noise is drawn in float64: the same generator state reproduces it only in float64.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x = torch.zeros(1000, 2, dtype=torch.float32)
    picked = gumbel_max(x, 1.0, g1)
    u = torch.rand((1000, 2), generator=g2, dtype=torch.float64)
    assert torch.equal(picked, (-torch.log(-torch.log(u))).argmax(-1))
    # Temperature scales the noise: T = 0 is argmax, a large T is nearly uniform.
    assert torch.equal(gumbel_max(logits[:5], 0.0, g), torch.full((5,), 3))
    hot = gumbel_max(logits, 100.0, g)
    assert (torch.bincount(hot, minlength=4).double() / hot.numel() - 0.25).abs().max() < 0.02


def test_bad_block_configuration_is_rejected(denoiser) -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="multiple of block length"):
        generate(denoiser, PROMPTS, 8, SamplingConfig(steps=8, block_length=3), g)
    with pytest.raises(ValueError, match="multiple of the 2 blocks"):
        generate(denoiser, PROMPTS, 8, SamplingConfig(steps=5, block_length=4), g)
