"""The default sampler makes no tensor of rows x L x V (issue 23).

At LLaDA's vocabulary a per-step tensor of every response position by every vocabulary
entry is gigabytes (float64 noise for 240 rows of 256 tokens: 62 GB). The default sampler
(``noise: lean``) projects, draws and scores only the open positions of the active block, so
no intermediate of one ``generate`` call may hold ``rows * L * V`` elements, in any mode or
family; the largest vocabulary-sized one is the open positions of one block.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.sampling.draws import gumbel_max
from tiltmatch.sampling.sampler import SamplingConfig, generate

VOCAB, MASK, PAD, EOS = 3000, 1, 0, 2
ROWS, LENGTH, BLOCK = 4, 32, 8
PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]


class LargestTensor(TorchDispatchMode):
    """The largest number of elements any operator returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0
        self.shape: tuple[int, ...] = ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape = t.numel(), tuple(t.shape)
        return out


def _denoiser(family: str) -> MaskedDenoiser:
    spec = TinyModelSpec(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, family=family
    )
    return MaskedDenoiser(tiny_denoiser(VOCAB, spec, seed=0), MASK, PAD).eval()


def test_the_detector_sees_a_full_width_draw() -> None:
    """What the test below guards against: the earlier default's draw on a GPU, a float64
    uniform per response position and vocabulary entry."""
    logits = torch.zeros(ROWS, LENGTH, VOCAB)
    with LargestTensor() as largest:
        gumbel_max(logits, 1.0, torch.Generator())
    assert largest.numel >= ROWS * LENGTH * VOCAB


CASES = [
    ("llada", {}),
    ("llada", {"remasking": "random"}),
    ("llada", {"temperature": 0.7}),
    ("llada", {"mode": "cached", "cache": "dual"}),
    ("llada", {"mode": "cached", "cache": "prefix", "refresh_every": 2}),
    ("llada", {"mode": "parallel", "threshold": 0.5}),
    ("llada", {"mode": "cached+parallel"}),
    ("dream", {}),
    ("block_diffusion", {}),
    ("block_diffusion", {"mode": "parallel", "temperature": 0.5}),
]


@pytest.mark.parametrize(("family", "fields"), CASES, ids=lambda c: str(c))
def test_default_sampler_makes_no_rows_by_length_by_vocabulary_tensor(family, fields) -> None:
    denoiser = _denoiser(family)
    config = SamplingConfig(**{"steps": 16, "block_length": BLOCK, **fields})
    assert config.noise == "lean"  # the default
    with LargestTensor() as largest:
        out = generate(denoiser, PROMPTS, LENGTH, config, torch.Generator().manual_seed(0))
    assert (out.responses != MASK).all()
    assert largest.numel < ROWS * LENGTH * VOCAB, largest.shape
    # The largest vocabulary-sized tensor covers the open positions of one block at most
    # (the block decoder's blocks are the model's own, of 4).
    assert largest.numel <= ROWS * BLOCK * VOCAB * (2 if family == "dream" else 1), largest.shape


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_block_decoder_lean_at_temperature_zero_is_its_argmax(temperature) -> None:
    """The block decoder's lean draw reads the logits of the open columns only: at T = 0 it
    commits what the compatible draw over the whole block commits; at T = 1 it still fills
    every position with an allowed token."""
    denoiser = _denoiser("block_diffusion")
    lean = SamplingConfig(steps=16, block_length=BLOCK, temperature=temperature)
    compatible = lean.model_copy(update={"noise": "compatible"})
    a = generate(denoiser, PROMPTS, LENGTH, lean, torch.Generator().manual_seed(0)).responses
    b = generate(denoiser, PROMPTS, LENGTH, compatible, torch.Generator().manual_seed(0)).responses
    assert not (a == MASK).any()
    if temperature == 0.0:
        assert torch.equal(a, b)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_block_decoder_lean_draw_is_softmax_over_temperature(temperature) -> None:
    """The block decoder's convention: tokens from ``softmax(logits / T)`` and, as their
    confidence, their probability under it; the lean draw on the open columns keeps both."""
    from types import SimpleNamespace

    from tiltmatch.sampling.families import BlockDecoding, BlockSampler

    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5]])
    open_ = torch.tensor([[False, True]])
    generator = torch.Generator().manual_seed(0)
    block = SimpleNamespace(
        job=SimpleNamespace(banned=[3], generator=generator),
        decoding=BlockDecoding(1, temperature=temperature, noise="lean"),
        run=lambda at=None: logits.clone(),
    )
    target = torch.softmax(logits[0].double().masked_fill(torch.arange(5) == 3, -torch.inf)
                           / temperature, -1)  # fmt: skip
    counts = torch.zeros(5)
    for _ in range(4000):
        tokens, confidence = BlockSampler._propose(block, open_)  # type: ignore[arg-type]
        token = int(tokens[0, 1])
        counts[token] += 1
        assert confidence[0, 1] == pytest.approx(float(target[token]), rel=1e-6)
        assert confidence[0, 0] == 0.0  # a closed column is never scored
    assert counts[3] == 0
    assert torch.allclose(counts / counts.sum(), target.float(), atol=0.03)
