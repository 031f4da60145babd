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


# -- lean logits: token for token the sampler of earlier versions ------------------------------


def _reference_generate(denoiser, prompts, length, steps, block, remasking, temperature, g):
    """The sampler before lean logits (float64 logits, noise and softmax at every position)."""
    ids, pmask = left_pad(prompts, PAD)
    response = torch.full((len(prompts), length), MASK)
    attention = torch.cat([pmask, torch.ones_like(response)], 1)
    banned = sorted({MASK, PAD})
    visited = []
    for b in range(length // block):
        lo, hi = b * block, (b + 1) * block
        for count in tokens_per_step(block, steps // (length // block)):
            visited.append(response.clone())
            if count == 0:
                continue
            logits = denoiser(torch.cat([ids, response], 1), attention, length).double()
            logits[..., banned] = -torch.inf
            if temperature <= 0:
                candidates = logits.argmax(-1)
            else:
                u = torch.rand(logits.shape, generator=g, dtype=torch.float64)
                gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
                candidates = (logits + temperature * gumbel).argmax(-1)
            if remasking == "low_confidence":
                probs = torch.softmax(logits, -1)
                confidence = probs.gather(-1, candidates[..., None]).squeeze(-1)
            else:
                confidence = torch.rand(response.shape, generator=g, dtype=torch.float64)
            open_ = response == MASK
            open_[:, :lo] = False
            open_[:, hi:] = False
            confidence = torch.where(open_, confidence, torch.full_like(confidence, -torch.inf))
            chosen = confidence.topk(count, dim=1).indices
            response.scatter_(1, chosen, candidates.gather(1, chosen))
    return response, torch.stack(visited)


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize(
    ("steps", "block", "temperature"), [(8, 4, 1.0), (16, 8, 0.7), (4, 4, 0.0)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lean_exact_sampler_equals_the_old_one_token_for_token(
    denoiser, remasking, steps, block, temperature, seed
) -> None:
    g_old, g_new = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    with torch.no_grad():
        old, old_visited = _reference_generate(
            denoiser, PROMPTS, 16, steps, block, remasking, temperature, g_old
        )
    cfg = SamplingConfig(
        steps=steps,
        block_length=block,
        remasking=remasking,
        temperature=temperature,
        noise="compatible",
    )
    new = generate(denoiser, PROMPTS, 16, cfg, g_new, record_states=True, forbidden_token_ids=[PAD])
    assert torch.equal(new.responses, old)
    assert new.visited is not None and torch.equal(new.visited, old_visited)
    # The generator is left where the full-width draw left it: later draws agree too.
    assert torch.equal(g_old.get_state(), g_new.get_state())


def _position_probs(denoiser, prompt) -> torch.Tensor:
    ids = torch.tensor([[*prompt, MASK]])
    with torch.no_grad():
        logits = denoiser(ids, torch.ones_like(ids), 1)[0, 0].double()
    logits[[MASK, PAD]] = -torch.inf
    return torch.softmax(logits, -1)


@pytest.mark.parametrize("noise", ["compatible", "lean"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_both_noises_draw_from_the_models_softmax(denoiser, noise, temperature) -> None:
    prompt = [5, 6, 7]
    cfg = SamplingConfig(steps=1, block_length=1, temperature=temperature, noise=noise)
    out = generate(
        denoiser,
        [prompt] * 6000,
        1,
        cfg,
        torch.Generator().manual_seed(0),
        forbidden_token_ids=[PAD],
    )
    freq = torch.bincount(out.responses[:, 0], minlength=VOCAB).double() / 6000
    target = _position_probs(denoiser, prompt) ** (1 / temperature)
    assert (freq - target / target.sum()).abs().max() < 0.025


def test_lean_draw_keeps_unlikely_tokens_and_the_chunked_vocabulary_exact() -> None:
    """Inverse CDF over vocabulary chunks (V > 4096): frequencies match; a 1e-12 token survives."""
    from tiltmatch.sampling.sampler import _lean_draw

    vocab = 8192
    logits = torch.full((vocab,), -40.0)
    logits[[0, 1, 2, 5000]] = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()
    picked, confidence = _lean_draw(logits.expand(20_000, vocab).clone(), 1.0, torch.Generator())
    probs = torch.softmax(logits.double(), -1)
    freq = torch.bincount(picked, minlength=vocab).double() / picked.numel()
    assert (freq - probs).abs().max() < 0.015
    assert torch.allclose(confidence, probs[picked], rtol=1e-5)
    # A token 28 nats below the rest: float32 softmax mass 1e-12, still drawn at its rate
    # when it is the only alternative to a banned (-inf) vocabulary.
    rare = torch.full((2, vocab), -torch.inf)
    rare[:, 7] = 0.0
    rare[1, 4100] = -28.0
    picked, confidence = _lean_draw(rare.clone(), 1.0, torch.Generator().manual_seed(0))
    assert picked.tolist() == [7, 7] and confidence[1] < 1.0  # probability 1 - 7e-13


# -- modes ---------------------------------------------------------------------------------------


def _modes(**fixed):
    return [
        SamplingConfig(**fixed, mode=mode, cache=cache)
        for mode in ("exact", "cached", "parallel", "cached+parallel")
        for cache in (("prefix", "dual") if "cached" in mode else ("dual",))
    ]


@pytest.mark.parametrize("noise", ["compatible", "lean"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_with_refresh_every_step_equals_exact(denoiser, noise, cache) -> None:
    fixed = dict(steps=8, block_length=4, temperature=1.0, noise=noise)
    exact = generate(
        denoiser, PROMPTS, 8, SamplingConfig(**fixed), torch.Generator().manual_seed(3)
    )
    cfg = SamplingConfig(**fixed, mode="cached", cache=cache, refresh_every=1)
    cached = generate(denoiser, PROMPTS, 8, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(exact.responses, cached.responses)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_layer_cache_is_exact(cache) -> None:
    """Layer-0 keys/values depend on a token and its position only: a one-layer model's cache
    is never stale, so the cached sampler equals the exact one (a stale cache would not)."""
    one = MaskedDenoiser(tiny_denoiser(VOCAB, TinyModelSpec(32, 1, 2, 64), seed=4), MASK, PAD)
    fixed = dict(steps=16, block_length=4, temperature=1.0)
    exact = generate(one, PROMPTS, 16, SamplingConfig(**fixed), torch.Generator().manual_seed(1))
    cfg = SamplingConfig(**fixed, mode="cached", cache=cache)
    cached = generate(one, PROMPTS, 16, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(exact.responses, cached.responses)


def test_stale_cache_logits_differ_with_depth(denoiser) -> None:
    """With two layers the dual cache is an approximation: its block logits move once the block
    has changed (a test that the cache is really reused, not recomputed)."""
    from tiltmatch.sampling.sampler import _BlockForward

    ids, pmask = left_pad(PROMPTS, PAD)
    canvas = torch.full((3, 8), MASK)
    attention = torch.cat([pmask, torch.ones_like(canvas)], 1)
    cfg = SamplingConfig(steps=8, block_length=4, mode="cached", cache="dual")
    forward = _BlockForward(
        denoiser, ids, canvas, attention, denoiser.position_ids(attention), 0, 4, cfg
    )
    open_ = torch.ones((3, 4), dtype=torch.bool)
    with torch.no_grad():
        forward(0, open_)
        canvas[:, 0] = 5  # commit a token: the suffix's cached keys are now stale
        open_[:, 0] = False
        reused = forward(1, open_)
        fresh = denoiser(torch.cat([ids, canvas], 1), attention, 8)[:, 1:4].reshape(-1, VOCAB)
    assert reused.shape == fresh.shape
    assert not torch.allclose(reused, fresh, atol=1e-6)
    assert torch.allclose(reused, fresh, atol=0.5)  # close: the approximation is mild


@pytest.mark.parametrize("cached", [False, True])
def test_parallel_threshold_above_one_is_exact_one_token_per_step(denoiser, cached) -> None:
    fixed = dict(block_length=4, temperature=1.0)
    exact = generate(
        denoiser, PROMPTS, 8, SamplingConfig(**fixed, steps=8), torch.Generator().manual_seed(2)
    )
    mode = "cached+parallel" if cached else "parallel"
    extra = {"refresh_every": 1} if cached else {}
    cfg = SamplingConfig(**fixed, mode=mode, threshold=1.5, **extra)
    par = generate(denoiser, PROMPTS, 8, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(exact.responses, par.responses)


@pytest.mark.parametrize("rule", [{"threshold": 1e-9}, {"factor": 1e9}])
def test_parallel_that_commits_everything_is_exact_one_step_per_block(denoiser, rule) -> None:
    fixed = dict(block_length=4, temperature=1.0)
    exact = generate(
        denoiser, PROMPTS, 8, SamplingConfig(**fixed, steps=2), torch.Generator().manual_seed(2)
    )
    cfg = SamplingConfig(**fixed, mode="parallel", **rule)
    par = generate(denoiser, PROMPTS, 8, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(exact.responses, par.responses)


def test_parallel_commit_rules() -> None:
    from tiltmatch.sampling.sampler import _parallel_commit

    inf = float("inf")
    conf = torch.tensor([[0.95, 0.5, -inf, 0.92], [0.3, 0.2, 0.1, -inf], [-inf] * 4])
    cfg = SamplingConfig(mode="parallel", threshold=0.9)
    assert _parallel_commit(conf.double(), cfg).tolist() == [
        [True, False, False, True],
        [True, False, False, False],  # none above: the single most confident
        [False] * 4,  # nothing open, nothing committed
    ]
    # Factor 1: the n-th most confident needs >= 1 - 1/(n+1): 0.95 >= 0.5, 0.92 >= 0.667,
    # 0.5 < 0.75 stops the run.
    cfg = SamplingConfig(mode="parallel", factor=1.0)
    assert _parallel_commit(conf.double(), cfg)[0].tolist() == [True, False, False, True]


@pytest.mark.parametrize("cfg", _modes(steps=8, block_length=4, temperature=0.0), ids=str)
def test_every_mode_is_padding_invariant(denoiser, cfg) -> None:
    """A left-padded batch gives each row what the row gives alone."""
    batched = generate(denoiser, PROMPTS, 8, cfg, torch.Generator().manual_seed(0))
    for row, prompt in enumerate(PROMPTS):
        alone = generate(denoiser, [prompt], 8, cfg, torch.Generator().manual_seed(0))
        assert torch.equal(alone.responses[0], batched.responses[row]), row


def test_early_finish_skips_the_blocks_of_ended_rows(denoiser, monkeypatch) -> None:
    from tiltmatch.sampling.sampler import _ended

    decoded = torch.tensor([[3, 2, 2, 2], [3, 2, 4, 2], [3, 4, 5, 6], [2, 2, 2, 2]])
    assert _ended(decoded, 2).tolist() == [True, False, False, True]
    eos = 2
    forbidden = [t for t in range(VOCAB) if t not in (eos, MASK)]  # only end-of-text is left
    calls = []
    original = MaskedDenoiser.forward
    monkeypatch.setattr(
        MaskedDenoiser,
        "forward",
        lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1],
    )
    cfg = SamplingConfig(steps=8, block_length=4, early_finish=True)
    out = generate(
        denoiser,
        PROMPTS,
        16,
        cfg,
        torch.Generator(),
        forbidden_token_ids=forbidden,
        eos_token_id=eos,
    )
    assert (out.responses == eos).all()
    assert len(calls) == 2  # the first block's two steps; the other three blocks never run
    # A row that has not ended keeps running while an ended one is skipped.
    calls.clear()
    free = generate(denoiser, PROMPTS, 16, cfg, torch.Generator().manual_seed(0), eos_token_id=eos)
    plain = generate(
        denoiser, PROMPTS, 16, cfg.model_copy(update={"early_finish": False}),
        torch.Generator().manual_seed(0), eos_token_id=eos,
    )  # fmt: skip
    assert torch.equal(free.responses[:, :4], plain.responses[:, :4])


def test_sampler_options_that_cannot_work_are_rejected(denoiser) -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="fixed number of steps"):
        generate(denoiser, PROMPTS, 8, SamplingConfig(mode="parallel"), g, record_states=True)
    with pytest.raises(ValueError, match="eos_token_id"):
        generate(denoiser, PROMPTS, 8, SamplingConfig(early_finish=True), g)
    with pytest.raises(ValueError, match="remasking='low_confidence'"):
        SamplingConfig(mode="parallel", remasking="random")
    with pytest.raises(ValueError, match="mode"):
        SamplingConfig(mode="fast")


def test_one_sampling_config_everywhere() -> None:
    """The run config's sampler section is the sampler's config; a temperature override in the
    rollouts keeps every other field."""
    from tiltmatch.config import RunConfig, build_config
    from tiltmatch.models.codecs import CharTokenizer
    from tiltmatch.tasks.maze.task import MazeTask
    from tiltmatch.training.rollouts import RolloutWorker

    config = build_config(overrides=["sampler.mode=cached+parallel", "sampler.threshold=0.8"])
    assert isinstance(config.sampler, SamplingConfig)
    assert RunConfig.model_validate(config.model_dump()).sampler == config.sampler
    task = MazeTask()
    worker = RolloutWorker(task, CharTokenizer(task.alphabet), 8, config.sampler)
    seen = []
    import tiltmatch.training.rollouts as rollouts

    original = rollouts.generate
    try:
        rollouts.generate = lambda *a, **k: (seen.append(a[3]), original(*a, **k))[1]
        d = MaskedDenoiser(tiny_denoiser(worker.codec.vocab_size, SPEC), 1, 0)
        d.mask_token_id, d.pad_token_id = worker.codec.mask_token_id, worker.codec.pad_token_id
        worker.sample(d, [[3, 4]], torch.Generator(), temperature=0.0)
    finally:
        rollouts.generate = original
    assert seen[0].temperature == 0.0
    assert seen[0].model_copy(update={"temperature": 1.0}) == config.sampler


@pytest.mark.parametrize("cfg", _modes(steps=8, block_length=4, temperature=1.0), ids=str)
def test_batch_rows_decodes_the_batches_in_turn(denoiser, cfg, monkeypatch) -> None:
    """``batch_rows`` bounds the rows of every forward, and equals calling ``generate`` on
    each batch in turn with the same generator (every mode reads it)."""
    prompts = [*PROMPTS, [7, 8], [9]]
    bounded = cfg.model_copy(update={"batch_rows": 2})
    widest: list[int] = []
    forward = type(denoiser).forward

    def counting(self, input_ids, *args, **kwargs):
        widest.append(input_ids.shape[0])
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(type(denoiser), "forward", counting)
    out = generate(denoiser, prompts, 8, bounded, torch.Generator().manual_seed(4))
    assert widest and max(widest) == 2
    generator = torch.Generator().manual_seed(4)
    parts = [generate(denoiser, prompts[lo : lo + 2], 8, cfg, generator) for lo in (0, 2, 4)]
    assert torch.equal(out.responses, torch.cat([p.responses for p in parts]))
    # Unbounded, one batch of five: other draws, the same shape.
    whole = generate(denoiser, prompts, 8, cfg, torch.Generator().manual_seed(4))
    assert whole.responses.shape == out.responses.shape


def test_batch_rows_keeps_the_recorded_canvases_in_row_order(denoiser) -> None:
    cfg = SamplingConfig(steps=8, block_length=4)
    bounded = cfg.model_copy(update={"batch_rows": 2})
    out = generate(
        denoiser, PROMPTS, 8, bounded, torch.Generator().manual_seed(1), record_states=True
    )
    generator = torch.Generator().manual_seed(1)
    parts = [
        generate(denoiser, PROMPTS[lo : lo + 2], 8, cfg, generator, record_states=True)
        for lo in (0, 2)
    ]
    assert out.visited is not None and out.visited.shape[:2] == (8, 3)
    assert torch.equal(out.visited, torch.cat([p.visited for p in parts], dim=1))
