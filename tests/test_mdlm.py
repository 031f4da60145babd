"""MDLM (the DiT with adaptive layer norm, SUBS) through the family registry.

The released format (``tests/mdlm_fixture.py``) loads strictly into the package's own
implementation; its logits equal an independent forward written here from the released
``models/dit.py`` and ``diffusion.py`` (the released files themselves are compared in
``benchmarks/family_parity.py``, on the CPU through a shim of flash-attn's two kernels,
whose semantics are pinned here), with and without left padding;
the SUBS posterior puts no mass on the mask and carries visible tokens over; the noise
level enters as released (zero without time conditioning); generation runs unconditioned
and prompted; DTM runs prompt-free with a reward model through ``tiltmatch train``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark
from mdlm_fixture import write_tiny_mdlm

from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.models.family import decoder_layer_classes, family_of, lora_target_modules
from tiltmatch.models.loading import checkpoint_family, load_model_folder
from tiltmatch.models.mdlm import LORA_TARGETS, NEG_INFINITY, MDLMCodec, MDLMDenoiser
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.sampler import generate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    fam = write_tiny_mdlm(tmp_path_factory.mktemp("mdlm") / "ckpt")
    model, codec = load_model_folder(fam.folder)
    return fam, model, codec


# --------------------------------------------------------------------------- reference forward


def _layer_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w


def _timestep(sd: dict, sigma: torch.Tensor) -> torch.Tensor:
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half).float() / half)
    emb = torch.cat([torch.cos(sigma[:, None] * freqs), torch.sin(sigma[:, None] * freqs)], -1)
    h = emb @ sd["backbone.sigma_map.mlp.0.weight"].T + sd["backbone.sigma_map.mlp.0.bias"]
    h = torch.nn.functional.silu(h)
    return h @ sd["backbone.sigma_map.mlp.2.weight"].T + sd["backbone.sigma_map.mlp.2.bias"]


def _rotary(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary on the whole head (flash-attn's non-interleaved layout)."""
    d = x.shape[-1]
    ang = pos[..., None].float() * 10000 ** (-torch.arange(0, d, 2).float() / d)
    cos, sin = torch.cos(ang)[:, :, None], torch.sin(ang)[:, :, None]  # [B, T, 1, d/2]
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def reference_logits(fam, ids: torch.Tensor, real: torch.Tensor, sigma: torch.Tensor):
    """The DiT's logits ``[B, T, V]`` from the released equations (float32); keys are the
    real tokens, positions count real tokens (the release's columns, for an unpadded row)."""
    cfg, sd = fam.config, fam.state_dict
    heads = cfg["n_heads"]
    b, t = ids.shape
    d = cfg["hidden_dim"]
    pos = (real.cumsum(-1) - 1).clamp(min=0)
    if not cfg["time_conditioning"]:
        sigma = torch.zeros_like(sigma)
    c = torch.nn.functional.silu(_timestep(sd, sigma))
    x = sd["backbone.vocab_embed.embedding"][ids]
    for i in range(cfg["n_blocks"]):
        p = f"backbone.blocks.{i}."
        mods = c @ sd[p + "adaLN_modulation.weight"].T + sd[p + "adaLN_modulation.bias"]
        sh1, sc1, g1, sh2, sc2, g2 = mods[:, None].chunk(6, dim=2)
        h = _layer_norm(x, sd[p + "norm1.weight"]) * (1 + sc1) + sh1
        qkv = (h @ sd[p + "attn_qkv.weight"].T).view(b, t, 3, heads, d // heads)
        q, k, v = _rotary(qkv[:, :, 0], pos), _rotary(qkv[:, :, 1], pos), qkv[:, :, 2]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
        scores = scores.masked_fill(~real.bool()[:, None, None, :], -math.inf)
        att = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(b, t, d)
        x = x + g1 * (att @ sd[p + "attn_out.weight"].T)
        h = _layer_norm(x, sd[p + "norm2.weight"]) * (1 + sc2) + sh2
        h = h @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"]
        h = torch.nn.functional.gelu(h, approximate="tanh")
        x = x + g2 * (h @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"])
    o = "backbone.output_layer."
    shift, scale = (c @ sd[o + "adaLN_modulation.weight"].T + sd[o + "adaLN_modulation.bias"])[
        :, None
    ].chunk(2, dim=2)
    h = _layer_norm(x, sd[o + "norm_final.weight"]) * (1 + scale) + shift
    return h @ sd[o + "linear.weight"].T + sd[o + "linear.bias"]


def _batch(lengths: list[int], response: int, vocab: int, mask_id: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width + response, dtype=torch.long)
    real = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n :] = torch.randint(0, vocab - 1, (n + response,), generator=g)
        real[r, width - n :] = 1
    masked = torch.rand(ids.shape, generator=g) < 0.5
    masked[:, :width] = False
    ids[masked] = mask_id
    return ids, real


# --------------------------------------------------------------------------- format and forward


def test_the_released_format_loads_strictly_into_the_own_class(tiny, tmp_path: Path) -> None:
    fam, model, codec = tiny
    assert isinstance(model, MDLMDenoiser) and isinstance(codec, MDLMCodec)
    assert checkpoint_family(fam.config) == "mdlm" and family_of(model.config).name == "mdlm"
    assert codec.mask_token_id == fam.specials["mask"] == fam.config["vocab_size"] - 1
    assert codec.eos_token_id == fam.specials["<|endoftext|>"]
    state = model.state_dict()
    assert set(state) == set(fam.state_dict)
    for key, tensor in fam.state_dict.items():
        assert torch.equal(state[key], tensor), key
    # Strict: a folder missing the rotary buffer, or without GPT-2's tokenizer, is refused.
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in fam.folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    partial = {k: v for k, v in fam.state_dict.items() if "rotary" not in k}
    save_file(partial, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"rotary_emb\.inv_freq"):
        load_model_folder(bad)
    (bad / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="GPT-2's tokenizer"):
        load_model_folder(bad)


@pytest.mark.parametrize("lengths", [[12], [9, 4, 12]])
def test_logits_equal_the_reference_forward(tiny, lengths) -> None:
    fam, model, codec = tiny
    response = 10
    ids, real = _batch(lengths, response, codec.vocab_size, codec.mask_token_id)
    with torch.no_grad():
        raw = model(
            ids, attention_mask=real, position_ids=MaskedDenoiser.position_ids(real), raw=True
        )
    ref = reference_logits(fam, ids, real, torch.zeros(len(lengths)))
    keep = real.bool()
    torch.testing.assert_close(raw.logits[keep], ref[keep], atol=1e-5, rtol=1e-5)
    # Through the adapter: the SUBS posterior of the response columns.
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    with torch.no_grad():
        logp = denoiser(ids, real, response)
    expected = ref[:, -response:].clone()
    expected[..., codec.mask_token_id] += NEG_INFINITY
    expected = expected.log_softmax(-1)
    masked = ids[:, -response:] == codec.mask_token_id
    torch.testing.assert_close(logp[masked], expected[masked], atol=1e-5, rtol=1e-5)
    # SUBS: no mass on the mask; a visible token carries over with probability 1.
    probs = logp.softmax(-1)
    assert float(probs[..., codec.mask_token_id].max()) < 1e-30
    visible = ~masked
    carried = probs[visible].gather(-1, ids[:, -response:][visible][:, None])
    torch.testing.assert_close(carried, torch.ones_like(carried))
    if len(lengths) > 1:  # left padding changes no real row
        for row, n in enumerate(lengths):
            cols = slice(-(n + response), None)
            with torch.no_grad():
                alone = denoiser(ids[row : row + 1, cols], real[row : row + 1, cols], response)
            torch.testing.assert_close(
                alone[0][masked[row]], logp[row][masked[row]], atol=1e-5, rtol=1e-5
            )


def test_noise_level_enters_as_released(tmp_path: Path) -> None:
    """Without time conditioning sigma is replaced by 0 (any given value is ignored, as
    released); with it, the default is the loglinear level at the row's masked fraction."""
    from tiltmatch.models.mdlm import loglinear_sigma

    for conditioned in (False, True):
        fam = write_tiny_mdlm(tmp_path / f"tc{conditioned}", time_conditioning=conditioned)
        model, codec = load_model_folder(fam.folder)
        ids, real = _batch([8, 8], 8, codec.vocab_size, codec.mask_token_id, seed=2)
        fraction = (ids == codec.mask_token_id).float().mean(-1)
        with torch.no_grad():
            default = model(ids, raw=True).logits
            given = model(ids, sigma=torch.full((2,), 3.0), raw=True).logits
        ref = reference_logits(fam, ids, real, loglinear_sigma(fraction))
        torch.testing.assert_close(default, ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(default, given) != conditioned  # sigma read only when conditioned


# --------------------------------------------------------------------------- flash-attn shim


@pytest.fixture(scope="module")
def shim():
    """benchmarks/flash_attn_shim.py: what family_parity.py runs the released DiT with."""
    return load_benchmark("flash_attn_shim", "tiltmatch_flash_attn_shim_in_test")


def test_the_flash_attn_shim_attends_within_each_packed_sequence(shim) -> None:
    """Varlen packed attention = plain bidirectional softmax attention per sequence (scale
    ``d ** -0.5`` unless given); settings the released DiT never passes are refused."""
    g = torch.Generator().manual_seed(0)
    lengths, heads, d = [5, 3, 7], 2, 8
    qkv = torch.randn(sum(lengths), 3, heads, d, generator=g)
    cu = torch.tensor([0, 5, 8, 15], dtype=torch.int32)
    for scale in (None, 0.3):
        out = shim.flash_attn_varlen_qkvpacked_func(qkv, cu, max(lengths), 0.0, scale)
        assert out.shape == (15, heads, d)
        for a, b in itertools.pairwise(cu.tolist()):
            q, k, v = (qkv[a:b, i].transpose(0, 1) for i in range(3))  # [heads, n, d]
            w = torch.softmax(q @ k.transpose(1, 2) * (scale or d**-0.5), dim=-1)
            torch.testing.assert_close(out[a:b], (w @ v).transpose(0, 1))
    for bad in ({"causal": True}, {"dropout_p": 0.1}, {"window_size": (4, 4)}):
        with pytest.raises(NotImplementedError, match=next(iter(bad))):
            shim.flash_attn_varlen_qkvpacked_func(qkv, cu, 7, **bad)
    with pytest.raises(ValueError, match="tile"):
        shim.flash_attn_varlen_qkvpacked_func(qkv, cu[:-1], 7)


@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_the_flash_attn_shim_rotates_q_and_k_in_place(shim, rotary_dim) -> None:
    """Rotary as a complex rotation of the pairs ``(x_j, x_{j + rotary_dim / 2})`` of the
    queries and keys (flash-attn's non-interleaved layout), the first ``rotary_dim``
    features only, in place; the values untouched."""
    g = torch.Generator().manual_seed(1)
    b, t, heads, d = 2, 6, 2, 8
    qkv = torch.randn(b, t, 3, heads, d, generator=g)
    before = qkv.clone()
    half = rotary_dim // 2
    angle = torch.arange(t).float()[:, None] * 10000 ** (-torch.arange(half).float() / half)
    out = shim.apply_rotary_emb_qkv_(qkv, angle.cos(), angle.sin())
    assert out is qkv
    turn = torch.polar(torch.ones_like(angle), angle)[:, None]  # [t, 1, half]
    for i in (0, 1):
        x = before[:, :, i]
        pairs = torch.complex(x[..., :half], x[..., half:rotary_dim]) * turn
        torch.testing.assert_close(qkv[:, :, i, ..., :half], pairs.real)
        torch.testing.assert_close(qkv[:, :, i, ..., half:rotary_dim], pairs.imag)
        assert torch.equal(qkv[:, :, i, ..., rotary_dim:], x[..., rotary_dim:])
    assert torch.equal(qkv[:, :, 2], before[:, :, 2])


def test_the_flash_attn_shim_installs_under_flash_attns_names(shim) -> None:
    """``import flash_attn.layers.rotary`` and ``flash_attn.flash_attn_interface`` resolve to
    the shim (as the released dit.py reaches them); an installed flash-attn is not shadowed."""
    assert not any(name in sys.modules for name in shim.MODULES)
    try:
        shim.install()
        import flash_attn.layers.rotary

        assert flash_attn.layers.rotary.apply_rotary_emb_qkv_ is shim.apply_rotary_emb_qkv_
        varlen = flash_attn.flash_attn_interface.flash_attn_varlen_qkvpacked_func
        assert varlen is shim.flash_attn_varlen_qkvpacked_func
        with pytest.raises(RuntimeError, match="already imported"):
            shim.install()
    finally:
        for name in shim.MODULES:
            sys.modules.pop(name, None)


# --------------------------------------------------------------------------- generation


def test_unconditional_and_prompted_generation(tiny) -> None:
    _fam, model, codec = tiny
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    config = SamplingConfig(steps=8, block_length=16, temperature=1.0, remasking="random")
    free = generate(denoiser, [[], []], 16, config, torch.Generator().manual_seed(0))
    assert free.responses.shape == (2, 16) and not (free.responses == codec.mask_token_id).any()
    prompt = codec.encode_prompt("ab t")
    assert prompt[0] == codec.eos_token_id  # a document's start, as MDLM's rows are wrapped
    greedy = SamplingConfig(steps=16, block_length=16, temperature=0.0)
    out = generate(denoiser, [prompt], 16, greedy, torch.Generator().manual_seed(0))
    # Greedy, lowest-confidence-first, one token per step: written out step by step.
    canvas = torch.full((1, 16), codec.mask_token_id)
    ids = torch.tensor([prompt])
    for _step in range(16):
        with torch.no_grad():
            logp = denoiser(torch.cat([ids, canvas], 1), torch.ones(1, len(prompt) + 16), 16)
        conf, tok = logp.softmax(-1).max(-1)
        conf[canvas != codec.mask_token_id] = -1
        j = int(conf[0].argmax())
        canvas[0, j] = tok[0, j]
    assert out.responses.tolist() == canvas.tolist()
    text = codec.decode_response(
        [codec.eos_token_id, *codec.tokenizer.encode("ab"), codec.eos_token_id, 5]
    )
    assert text == "ab"  # one document: the leading end-of-text skipped, cut at the next


def released_sample(model, rows: int, length: int, steps: int, mask_id: int, g) -> torch.Tensor:
    """MDLM's ``_sample`` with the ``ddpm_cache`` predictor and ``noise_removal``, written
    from the release (loglinear schedule: move chance t; the posterior ``forward(x).exp()``
    reused while x does not change; ``torch.rand_like`` drawn from ``g``)."""
    eps = 1e-5
    model.eval()  # the release samples in eval mode (no dropout)
    x = torch.full((rows, length), mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)
    dt = (1 - eps) / steps
    p_x0 = None
    for i in range(steps):
        t = timesteps[i] * torch.ones(rows, 1)
        move_t, move_s = t[:, :, None], (t - dt)[:, :, None]
        if p_x0 is None:
            p_x0 = model(x).logits.exp()
        q_xs = p_x0 * (move_t - move_s)
        q_xs[:, :, mask_id] = move_s[:, :, 0]
        gumbel_norm = 1e-10 - (torch.rand(q_xs.shape, generator=g) + 1e-10).log()
        _x = (q_xs / gumbel_norm).argmax(dim=-1)
        copy_flag = (x != mask_id).to(x.dtype)
        x_next = copy_flag * x + (1 - copy_flag) * _x
        if not torch.allclose(x_next, x):
            p_x0 = None
        x = x_next
    return model(x).logits.argmax(dim=-1)


@pytest.mark.parametrize("steps", [4, 16, 40])
def test_ancestral_sampler_reproduces_the_released_sample(tiny, steps) -> None:
    """Unconditional generation (empty prompts) from the same uniforms: token for token."""
    _fam, model, codec = tiny
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    config = SamplingConfig(mode="ancestral", steps=steps)
    with torch.no_grad():
        ours = generate(denoiser, [[], [], []], 24, config, torch.Generator().manual_seed(7))
        ref = released_sample(
            model, 3, 24, steps, codec.mask_token_id, torch.Generator().manual_seed(7)
        )
    assert ours.responses.tolist() == ref.tolist()
    # a step commits a random number of positions (binomial), not a fixed quota
    out = generate(denoiser, [[]], 24, config, torch.Generator().manual_seed(7), record_states=True)
    assert out.visited is not None and out.visited.shape == (steps, 1, 24)
    if steps == 16:
        per_step = (out.visited[1:] != out.visited[:-1]).sum((1, 2))
        assert len(set(per_step.tolist())) > 1


def test_sampler_modes_for_mdlm_and_llada2() -> None:
    """MDLM takes every common mode and MDLM's ancestral one; LLaDA2 only its block
    decoder's (exact, parallel): the cached and ancestral modes are refused by name."""
    from tiltmatch.config import ConfigError, build_config

    for mode in ("exact", "cached", "parallel", "cached+parallel", "ancestral"):
        build_config(overrides=["model.family=mdlm", f"sampler.mode={mode}"])
    for mode in ("exact", "parallel"):
        build_config(overrides=["model.family=llada2", f"sampler.mode={mode}"])
    for mode in ("cached", "cached+parallel", "ancestral"):
        with pytest.raises(
            ConfigError, match=re.escape(f"sampler.mode='{mode}' cannot decode a LLaDA2")
        ):
            build_config(overrides=["model.family=llada2", f"sampler.mode={mode}"])
    with pytest.raises(ConfigError, match="threshold"):
        build_config(
            overrides=["model.family=mdlm", "sampler.mode=ancestral", "sampler.threshold=0.5"]
        )


# --------------------------------------------------------------------------- training


def test_lora_targets_checkpointing_and_fsdp_units(tiny) -> None:
    from tiltmatch.config import LoRAConfig
    from tiltmatch.training.lora import LoRAPair

    _fam, model, _codec = tiny
    assert lora_target_modules(model) == list(LORA_TARGETS)
    assert decoder_layer_classes(model) == ("DDiTBlock",)
    spec = TinyModelSpec(32, 2, 4, 64, family="mdlm")
    ids = torch.randint(3, 20, (2, 11), generator=torch.Generator().manual_seed(0))
    ids[:, -4:] = 1
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    grads = []
    for checkpointing in (False, True):
        settings = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=list(LORA_TARGETS))
        pair = LoRAPair(
            tiny_denoiser(20, spec, seed=0), 1, 0, settings, gradient_checkpointing=checkpointing
        )
        params = list(pair.trainable_parameters())
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            for p in params:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        pair.student.train()
        teacher = pair.teacher(ids, mask, 4)
        loss = pair.student(ids, mask, 4).logsumexp(-1).mean() + 0 * teacher.sum()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0


def write_reward_classifier(folder: Path, tokenizer_folder: Path) -> None:
    """A tiny GPT-2 sequence classifier with one output (a stand-in sentiment model)."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(str(tokenizer_folder))
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=16, n_layer=1, n_head=2, num_labels=1,
        pad_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)


def test_tiltmatch_train_runs_prompt_free_dtm_with_a_reward_model(
    tiny, tmp_path: Path, capsys
) -> None:
    from tiltmatch.cli import main

    fam, _model, _codec = tiny
    reward = tmp_path / "reward-model"
    write_reward_classifier(reward, fam.folder)
    out = tmp_path / "run"
    sets = [
        f"task_options.rewards=[{reward}]", "task_options.samples=4",
        "task_options.eval_samples=2", "task_options.response_length=16",
        "sampler.steps=8", "sampler.block_length=16", "dtm.schedule=adaptive",
        "dtm.h_max=2", "dtm.a_end=2", "dtm.steps_per_h=2", "dtm.baseline=calibrated",
        "train.num_generations=2", "train.prompts_per_batch=2", "train.buffer_prompts=2",
        "train.refresh_prompts=1", "train.refresh_every=2", "train.train_examples=4",
        "train.checkpoint_every=2", "eval.examples=2", "eval.samples_per_example=1",
    ]  # fmt: skip
    args = ["train", "--model", str(fam.folder), "--task", "unconditional", "--out", str(out)]
    code = main([*args, "--quiet", *[a for s in sets for a in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in stages)
    assert stages[0]["reward_std"] > 0  # a learned reward: the weights are not all equal
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["dllm_family"] == "mdlm"


def test_the_prompt_free_task_refuses_a_missing_reward() -> None:
    from tiltmatch.tasks import get_task

    with pytest.raises(ValueError, match="at least one reward"):
        get_task("unconditional")
    task = get_task(
        "unconditional",
        rewards=[lambda prompts, completions, **kw: [1.0] * len(completions)],
        samples=3,
    )
    assert [e.prompt for e in task.examples("train")] == ["", "", ""]
    assert len({e.uid for e in task.examples("train")}) == 3


def test_the_recipe_validates_against_a_release(tiny) -> None:
    from tiltmatch.config import build_config

    fam, _model, _codec = tiny
    path = Path(__file__).resolve().parents[1] / "configs" / "mdlm" / "owt_reward.yaml"
    config = build_config(path, [f"model.base={fam.folder}"])  # the family's sampler check
    assert config.task == "unconditional" and config.sampler.mode == "ancestral"
    assert config.dtm.states == "random" and config.dtm.baseline == "calibrated"
    assert config.task_options["response_length"] == 1024  # MDLM's trained length
