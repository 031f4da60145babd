"""Token draws: from the denoiser's logits to a token and its confidence (METHOD.md section 1).

Sampling at temperature ``T`` is Gumbel-max, ``argmax(logits + T * Gumbel)``, computed in
float64 (:func:`gumbel_max`): in low precision the Gumbel noise of unlikely tokens rounds
away and sampling silently becomes less random.

The common sampler's strategies draw with :func:`propose` on the still-masked positions of
the active block alone (lean logits). ``noise="lean"`` (the default) draws by an inverse
CDF only where a token can be committed (:func:`_lean_draw`): nothing of size rows x L x V
is ever made. ``noise="compatible"`` reproduces earlier versions token for token (the demo,
the benchmark, the ablation, the sampler benchmarks and the shipped bases' recipes pin it:
their recorded figures were made with it): the open positions are converted to float64 and
given Gumbel noise and a softmax, and the generator advances exactly as it did when noise
was drawn for every response position (:func:`_uniforms`). On the CPU the rest of that draw
is stepped over; on a GPU it is made, a float64 tensor of rows x L x V per step (2.1 GB at 8
rows of 256 tokens over LLaDA's 126,464 entries): the same distribution as lean, at that
memory cost.
"""

from __future__ import annotations

import torch

from tiltmatch.sampling.config import SamplingConfig

#: uniforms drawn per call when the generator is only advanced (compatible noise on the CPU)
_SKIP_CHUNK = 1 << 20


def gumbel_max(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Token ids drawn from ``softmax(logits / T)`` by Gumbel-max, in float64.

    ``uniform``: the float64 uniforms to turn into Gumbel noise (shaped like
    ``logits``; overwritten); drawn from ``generator`` when not given.
    """
    logits = logits.double()
    if temperature <= 0:
        return logits.argmax(-1)
    if uniform is None:
        uniform = torch.rand(
            logits.shape, generator=generator, dtype=torch.float64, device=logits.device
        )
    # -log(-log u), in place (``uniform`` is scratch); the same float64 operations as
    # ``logits + T * gumbel``, so the same tokens win. T = 1 multiplies nothing.
    scores = uniform.clamp_(min=1e-300).log_().neg_().log_().neg_()
    if temperature != 1.0:
        scores.mul_(temperature)
    return scores.add_(logits).argmax(-1)


def propose(
    logits: torch.Tensor,
    open_: torch.Tensor,
    lo: int,
    length: int,
    banned: list[int],
    config: SamplingConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate tokens and their scores ``[B, L]`` (``-inf`` where nothing may be committed).

    ``logits``: ``[n_open, V]`` at ``open_``, the still-masked positions ``[B, block]``
    of the block starting at column ``lo`` of a response of ``length`` (row-major).
    Vocabulary work is done on the open positions alone. The score is the drawn token's
    probability under ``softmax(logits)`` (low-confidence remasking) or a uniform draw
    made after the token noise over every response position (random remasking); the
    remasking rule turns it into the committed positions
    (:func:`tiltmatch.sampling.remasking.commit_positions`).
    """
    batch, vocab = open_.shape[0], logits.shape[-1]
    device = logits.device
    rows, cols = open_.nonzero(as_tuple=True)  # row-major: the order noise is drawn in
    chosen = logits.float()
    chosen[:, banned] = -torch.inf
    if config.noise == "lean":
        picked, confident = _lean_draw(chosen, config.temperature, generator)
    else:
        # Compatible: the float64 Gumbel-max and softmax of earlier versions, on the open
        # positions only; the float64 values are those the full-width computation had
        # there, so the same tokens and positions win.
        wide = chosen.double()
        uniform = None
        if config.temperature > 0:
            uniform = _uniforms(generator, batch, length, vocab, lo, open_)
        picked = gumbel_max(wide, config.temperature, generator, uniform)
        confident = None
        if config.remasking == "low_confidence":
            probs = torch.softmax(wide, dim=-1)
            confident = probs.gather(-1, picked[:, None]).squeeze(-1)
    candidates = torch.zeros((batch, length), dtype=torch.long, device=device)
    candidates[rows, cols + lo] = picked
    confidence = torch.full((batch, length), -torch.inf, dtype=torch.float64, device=device)
    if config.remasking == "low_confidence":
        assert confident is not None
        confidence[rows, cols + lo] = confident
    elif config.remasking == "random":
        # Drawn after the token noise, over every response position, as before.
        order = torch.rand((batch, length), generator=generator, dtype=torch.float64, device=device)
        confidence[rows, cols + lo] = order[rows, cols + lo]
    else:
        raise ValueError(f"unknown remasking {config.remasking!r}")
    return candidates, confidence


def _lean_draw(
    logits: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[N]`` from ``softmax(logits / T)``; their probabilities under ``softmax(logits)``.

    ``logits``: float32 ``[N, V]`` (consumed). Inverse CDF with two float64 uniforms
    per row: one picks a chunk of the vocabulary by its mass, one a token in it.
    ``exp(l - max)`` is exact to float32's relative precision for every token however
    unlikely, and nothing small is added to anything large in float32 (chunk masses
    are float32 sums of at most ``chunk`` weights, the running sums float64), so a
    token of probability 1e-12 keeps its share: the reason the Gumbel draw of
    ``noise="compatible"`` is float64, kept here at a few passes over the logits.
    """
    rows, vocab = logits.shape
    device = logits.device
    shifted = logits.sub_(logits.max(dim=-1, keepdim=True).values)
    if temperature <= 0:
        picked = shifted.argmax(dim=-1)  # float32 -> float64 is exact: the same argmax
        return picked, _probability(shifted, picked)
    # In place at T = 1 (``shifted`` is not read again): a fresh rows x V tensor per step
    # costs more in page faults than the exp itself (BENCHMARKS.md, the sampler's share).
    weights = shifted.exp_() if temperature == 1.0 else shifted.div(temperature).exp_()
    chunk = _chunk_size(vocab)
    masses = weights.view(rows, vocab // chunk, chunk).sum(dim=-1).double()
    at = _search(masses, generator)
    inside = weights.view(rows, vocab // chunk, chunk)[torch.arange(rows, device=device), at]
    picked = at * chunk + _search(inside.double(), generator)
    if temperature == 1.0:
        total = masses.sum(dim=-1)
        return picked, weights.gather(-1, picked[:, None]).squeeze(-1).double() / total
    return picked, _probability(shifted, picked)


def _probability(shifted: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
    """``softmax(shifted)`` at ``picked`` (float64), for ``shifted`` = logits - their max."""
    total = shifted.exp().sum(dim=-1, dtype=torch.float64)
    return shifted.gather(-1, picked[:, None]).squeeze(-1).double().exp() / total


def _chunk_size(vocab: int) -> int:
    """A divisor of ``vocab`` near 256 (the whole vocabulary when it is small or has none)."""
    if vocab <= 4096:
        return vocab
    for size in range(256, 1025):
        if vocab % size == 0:
            return size
    return vocab


def _search(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of float64 ``weights`` ``[N, K]``, drawn in proportion to them."""
    cdf = weights.cumsum(dim=-1)
    u = torch.rand((cdf.shape[0], 1), generator=generator, dtype=torch.float64, device=cdf.device)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    picked.clamp_(max=cdf.shape[-1] - 1)
    # u * total can round up to the total: never hand out an index of weight 0.
    empty = weights.gather(-1, picked[:, None]).squeeze(-1) == 0
    if bool(empty.any()):
        picked[empty] = weights[empty].argmax(dim=-1)
    return picked


def _uniforms(
    generator: torch.Generator,
    batch: int,
    length: int,
    vocab: int,
    lo: int,
    open_: torch.Tensor,
) -> torch.Tensor:
    """Float64 uniforms ``[n_open, V]`` for the open positions of the block at ``lo``.

    The values a draw of shape ``[B, L, V]`` (one per response position and token,
    as earlier versions made) has at these positions, leaving the generator where
    that draw left it (``noise="compatible"``). The CPU generator fills tensors
    element by element, so the block's rows are drawn and the rest is only stepped
    over (no logarithms, no memory kept); other generators fill in a
    device-specific order, so there the whole draw is made and indexed.
    """
    rows, cols = open_.nonzero(as_tuple=True)
    device, block = open_.device, open_.shape[1]
    if generator.device.type != "cpu":
        full = torch.rand(
            (batch, length, vocab), generator=generator, dtype=torch.float64, device=device
        )
        return full[rows, cols + lo]
    drawn = torch.empty((batch, block, vocab), dtype=torch.float64)
    rest = max(lo, length - lo - block, 1) * vocab
    scratch = torch.empty(min(_SKIP_CHUNK, rest), dtype=torch.float64)
    for b in range(batch):
        _advance(generator, lo * vocab, scratch)
        drawn[b].uniform_(generator=generator)
        _advance(generator, (length - lo - block) * vocab, scratch)
    return drawn[rows, cols].to(device)


def _advance(generator: torch.Generator, count: int, scratch: torch.Tensor) -> None:
    """Step ``generator`` over ``count`` float64 uniforms without keeping them."""
    while count > 0:
        n = min(count, scratch.numel())
        scratch[:n].uniform_(generator=generator)
        count -= n
