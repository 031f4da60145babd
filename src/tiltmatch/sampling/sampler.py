"""The sampler: from an all-mask response to a clean one (METHOD.md section 1).

Batched over prompts of different lengths (left padding, see ``models/denoiser.py``).
The response of length ``L`` is decoded in semi-autoregressive blocks of
``block_length``; within a block, each step unmasks a number of tokens given by
the linear schedule, chosen by lowest-confidence-first or at random. Sampling
at temperature ``T`` is Gumbel-max, ``argmax(logits + T * Gumbel)``, computed in
float64: in low precision the Gumbel noise of unlikely tokens rounds away and
sampling silently becomes less random.

Lean logits: only the masked positions of the active block can be committed, so
only they are projected onto the vocabulary, converted to float64, given Gumbel
noise and a softmax; every other position costs nothing per step. With
``noise="compatible"`` (the default) the generator still advances exactly as it
did when noise was drawn for every response position, so the same generator
gives the same tokens as earlier versions (the maze's exact-target checks and the
recorded benchmark figures were made with them); ``noise="lean"`` draws noise
only where it is used.

The modes of :class:`~tiltmatch.sampling.config.SamplingConfig` (``exact``,
``cached``, ``parallel``, ``cached+parallel``) and ``early_finish`` are
approximations of ``p_theta`` except ``exact``: docs/sampling.md says what each does
to the distribution DTM's target is defined by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.registry import family_spec
from tiltmatch.sampling.config import Remasking, SamplingConfig

__all__ = [
    "Remasking",
    "SampleOutput",
    "SamplingConfig",
    "generate",
    "gumbel_max",
    "left_pad",
    "tokens_per_step",
]

#: uniforms drawn per call when the generator is only advanced (compatible noise on the CPU)
_SKIP_CHUNK = 1 << 20


@dataclass
class SampleOutput:
    """Responses ``[B, L]`` and, when recorded, the canvases before each step ``[S, B, L]``."""

    responses: torch.Tensor
    visited: torch.Tensor | None = None


#: decoders of the model families that cannot take the common sampler, by decoder name
#: (a family's spec names them: ``FamilySpec.decoders``; ``tiltmatch.sampling.families``
#: registers them and the package imports it)
FAMILY_DECODERS: dict[str, Callable[..., SampleOutput]] = {}


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids ``[B, P]`` and their attention mask."""
    if not prompts:
        raise ValueError("no prompts to pad")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        if len(p):
            ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
    return ids, mask


def tokens_per_step(masked: int, steps: int) -> list[int]:
    """The linear schedule: ``masked`` tokens spread as evenly as possible over ``steps``."""
    base, extra = divmod(masked, steps)
    return [base + (1 if j < extra else 0) for j in range(steps)]


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


@torch.no_grad()
def generate(
    denoiser: MaskedDenoiser,
    prompts: Sequence[Sequence[int]],
    response_length: int,
    config: SamplingConfig,
    generator: torch.Generator,
    record_states: bool = False,
    forbidden_token_ids: Sequence[int] = (),
    eos_token_id: int | None = None,
) -> SampleOutput:
    """Generate one response per prompt.

    ``forbidden_token_ids`` are never produced (the mask token always is, and
    the caller may add padding or other specials). ``eos_token_id``: the
    end-of-text token, needed by ``config.early_finish``. A model family that needs
    its own decoding (block diffusion) is handed to its decoder in
    :data:`FAMILY_DECODERS` (registered by :mod:`tiltmatch.sampling.families`).
    """
    decoders = family_spec(denoiser.family.name).decoders
    if decoders:
        name = decoders.get(config.mode) or next(iter(decoders.values()))
        decode = FAMILY_DECODERS.get(name)
        if decode is None:  # never silently decode a block model by the common order
            raise RuntimeError(f"no decoder {name!r} registered for {denoiser.family.name!r}")
        return decode(
            denoiser,
            prompts,
            response_length,
            config,
            generator,
            record_states,
            forbidden_token_ids,
        )
    if response_length % config.block_length:
        raise ValueError(
            f"response length {response_length} is not a multiple of block length "
            f"{config.block_length}"
        )
    num_blocks = response_length // config.block_length
    if not config.parallel and config.steps % num_blocks:
        raise ValueError(f"steps {config.steps} is not a multiple of the {num_blocks} blocks")
    if prompts and hasattr(denoiser, "check_positions"):
        denoiser.check_positions(max(len(p) for p in prompts), response_length)
    if record_states and config.parallel:
        raise ValueError(
            f"recording the visited canvases needs a fixed number of steps; mode "
            f"{config.mode!r} decides it from the confidences"
        )
    if config.early_finish and eos_token_id is None:
        raise ValueError("early_finish needs the end-of-text token id (eos_token_id)")
    device = next(denoiser.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, denoiser.pad_token_id, device)
    batch = prompt_ids.shape[0]
    response = torch.full((batch, response_length), denoiser.mask_token_id, device=device)
    banned = sorted({denoiser.mask_token_id, *forbidden_token_ids})
    visited: list[torch.Tensor] | None = [] if record_states else None
    was_training = denoiser.training
    denoiser.eval()
    with denoiser.session():  # e.g. a LoRA teacher's adapter stays selected throughout
        _denoise(
            denoiser, prompt_ids, prompt_mask, response, banned, visited, config, generator,
            eos_token_id,
        )  # fmt: skip
    denoiser.train(was_training)
    out_visited = torch.stack(visited) if visited is not None else None
    return SampleOutput(responses=response, visited=out_visited)


def _denoise(
    denoiser: MaskedDenoiser,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response: torch.Tensor,
    banned: list[int],
    visited: list[torch.Tensor] | None,
    config: SamplingConfig,
    generator: torch.Generator,
    eos_token_id: int | None,
) -> None:
    """Unmask ``response`` in place, block by block (the loop of :func:`generate`)."""
    batch, response_length = response.shape
    num_blocks = response_length // config.block_length
    schedule = tokens_per_step(config.block_length, max(config.steps // num_blocks, 1))
    positions = denoiser.position_ids(torch.cat([prompt_mask, torch.ones_like(response)], 1))
    alive = torch.ones(batch, dtype=torch.bool, device=response.device)
    for block in range(num_blocks):
        lo, hi = block * config.block_length, (block + 1) * config.block_length
        if config.early_finish and block > 0:
            assert eos_token_id is not None  # checked by generate
            done = alive & _ended(response[:, :lo], eos_token_id)
            response[done, lo:] = eos_token_id
            alive &= ~done
            if not alive.any():
                return
        # Rows still running this block (all of them unless some finished early).
        rows = None if bool(alive.all()) else alive.nonzero().squeeze(1)
        canvas = response if rows is None else response[rows]
        forward = _BlockForward(
            denoiser,
            prompt_ids if rows is None else prompt_ids[rows],
            canvas,
            prompt_mask if rows is None else prompt_mask[rows],
            positions if rows is None else positions[rows],
            lo,
            hi,
            config,
        )
        step = 0
        while True:
            open_ = canvas[:, lo:hi] == denoiser.mask_token_id
            if config.parallel:
                running = open_.any(dim=1)
                if not running.any():
                    break
                if not running.all():  # rows done with the block leave the forwards
                    keep = running.nonzero().squeeze(1)
                    rows = keep if rows is None else rows[keep]
                    canvas, open_ = canvas[keep], open_[keep]
                    forward.keep_rows(keep, canvas)
                count = 0
            else:
                if step == len(schedule):
                    break
                count = schedule[step]
            if visited is not None:
                visited.append(response.clone())
            if config.parallel or count:
                logits = forward(step, open_)
                candidates, confidence = _propose(
                    logits, open_, lo, response_length, banned, config, generator
                )
                if config.parallel:
                    commit = _parallel_commit(confidence, config)
                    canvas[commit] = candidates[commit]
                else:
                    chosen = confidence.topk(count, dim=1).indices
                    canvas.scatter_(1, chosen, candidates.gather(1, chosen))
                if rows is not None:
                    response[rows] = canvas
            step += 1


class _BlockForward:
    """The denoiser's logits ``[n_open, V]`` at the open positions of the active block.

    Only the still-masked positions of the block can be committed, so only they
    are projected onto the vocabulary (the projection is most of a shallow,
    wide-vocabulary model's forward). Exact and parallel modes: one full forward
    of prompt + response per step. Cached modes: a full forward at the block's
    first step (and every ``refresh_every`` steps) also fills a transformers
    ``DynamicCache``; it then keeps the keys and values of the prefix (prompt and
    finished blocks) or, for the dual cache, of everything outside the block, and
    later steps run only the block (dual) or the block and the suffix (prefix)
    against it. Attention is bidirectional, so the order of cached keys does not
    matter; positions are passed explicitly and padding stays in the attention
    mask, so a cached row's results still do not depend on its batch's padding.
    """

    def __init__(
        self,
        denoiser: MaskedDenoiser,
        prompt_ids: torch.Tensor,
        canvas: torch.Tensor,
        prompt_mask: torch.Tensor,
        positions: torch.Tensor,
        lo: int,
        hi: int,
        config: SamplingConfig,
    ) -> None:
        self.denoiser, self.prompt_ids, self.canvas = denoiser, prompt_ids, canvas
        self.prompt_mask, self.positions = prompt_mask, positions
        self.lo, self.hi, self.config = lo, hi, config
        self.cache: DynamicCache | None = None
        self.kept = 0

    def keep_rows(self, keep: torch.Tensor, canvas: torch.Tensor) -> None:
        """Go on with the rows ``keep`` only; ``canvas`` is their canvas from now on."""
        self.prompt_ids, self.canvas = self.prompt_ids[keep], canvas
        self.prompt_mask, self.positions = self.prompt_mask[keep], self.positions[keep]
        if self.cache is not None:
            for layer in self.cache.layers:
                assert isinstance(layer, DynamicLayer)  # checked by _keep_columns
                keys, values = layer.keys, layer.values
                assert keys is not None and values is not None
                layer.keys, layer.values = keys[keep], values[keep]

    def __call__(self, step: int, open_: torch.Tensor) -> torch.Tensor:
        """Logits at ``open_`` ``[B, block]`` (row-major), after ``step`` steps of the block."""
        config, canvas, width = self.config, self.canvas, self.prompt_ids.shape[1]
        wanted = torch.zeros_like(canvas, dtype=torch.bool)
        wanted[:, self.lo : self.hi] = open_
        if not config.cached:
            return self.denoiser.response_logits(
                self.prompt_ids, self.prompt_mask, canvas, logits_at=wanted
            )
        every = config.refresh_every
        if self.cache is None or (every is not None and step % every == 0):
            cache = DynamicCache()
            logits = self.denoiser.response_logits(
                self.prompt_ids, self.prompt_mask, canvas, cache=cache, logits_at=wanted
            )
            start, stop = width + self.lo, width + self.hi
            _keep_columns(cache, start, stop if config.cache == "dual" else None)
            self.cache, self.kept = cache, cache.get_seq_length()
            return logits
        # The block (dual) or block + suffix (prefix) against the cached columns; the
        # attention mask lists the cached columns first, then these (every response
        # column is attended to, so only the prompt's padding is masked).
        stop = self.hi if config.cache == "dual" else canvas.shape[1]
        attention = torch.cat([self.prompt_mask, torch.ones_like(canvas)], 1)
        logits = self.denoiser(
            canvas[:, self.lo : stop],
            attention,
            stop - self.lo,
            cache=self.cache,
            position_ids=self.positions[:, width + self.lo : width + stop],
            logits_at=wanted[:, self.lo : stop],
        )
        _keep_columns(self.cache, self.kept, None)  # drop this step's columns again
        return logits


def _keep_columns(cache: DynamicCache, start: int, stop: int | None) -> None:
    """Keep the cached columns before ``start`` and, when ``stop`` is given, from ``stop`` on."""
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer) or layer.keys is None or layer.values is None:
            raise TypeError(f"the sampler's cache needs full-attention layers, not {layer!r}")
        keys, values = layer.keys, layer.values
        if stop is None:
            layer.keys, layer.values = keys[..., :start, :], values[..., :start, :]
        else:
            layer.keys = torch.cat([keys[..., :start, :], keys[..., stop:, :]], dim=-2)
            layer.values = torch.cat([values[..., :start, :], values[..., stop:, :]], dim=-2)


def _propose(
    logits: torch.Tensor,
    open_: torch.Tensor,
    lo: int,
    length: int,
    banned: list[int],
    config: SamplingConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate tokens and their confidences ``[B, L]`` (``-inf`` where nothing may be committed).

    ``logits``: ``[n_open, V]`` at ``open_``, the still-masked positions ``[B, block]``
    of the block starting at column ``lo`` of a response of ``length`` (row-major).
    Vocabulary work is done on the open positions alone.
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
    weights = shifted.exp() if temperature == 1.0 else shifted.div(temperature).exp_()
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


def _parallel_commit(confidence: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Which open positions a parallel step commits ``[B, L]`` (at least one per open row).

    Threshold rule: every position whose confidence exceeds ``threshold``.
    Factor rule: the ``n`` most confident while the ``n``-th has confidence
    ``>= 1 - factor / (n + 1)``. The fallback is the single most confident
    position, chosen as the exact sampler's one-token step chooses it.
    """
    open_ = torch.isfinite(confidence)
    if config.factor is None:
        commit = open_ & (confidence > config.threshold)
    else:
        ranked, order = confidence.sort(dim=1, descending=True)
        n = torch.arange(1, confidence.shape[1] + 1, device=confidence.device)
        passes = ranked >= 1.0 - config.factor / (n + 1)
        leading = passes.long().cumprod(dim=1).sum(dim=1, keepdim=True)
        commit = torch.zeros_like(open_)
        commit.scatter_(1, order, (n - 1)[None] < leading)
        commit &= open_
    best = confidence.topk(1, dim=1).indices
    has_open = open_.any(dim=1, keepdim=True)
    commit.scatter_(1, best, commit.gather(1, best) | has_open)
    return commit


def _ended(decoded: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Rows ``[B]`` whose decoded part holds end-of-text, and only end-of-text from its first."""
    is_eos = decoded == eos_token_id
    first = is_eos.long().argmax(dim=1, keepdim=True)
    columns = torch.arange(decoded.shape[1], device=decoded.device)[None]
    return is_eos.any(dim=1) & (is_eos | (columns < first)).all(dim=1)
