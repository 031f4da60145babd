"""BD3-LM (MDLM's DiT with block-causal attention) through the family registry.

The released format (``tests/bd3lm_fixture.py``) loads strictly into the package's own
class; its logits equal a forward written here from the released
``models/hf/modeling_bd3lm.py`` (inference mode: the clean-clean quarter of
``block_diff_mask`` sliced to the sequence), with and without adaLN, with and without left
padding; a later block never changes an earlier position's logits; the block decoder with
its cache of finished blocks equals full recomputation step by step; the sampler modes and
DTM states it cannot honour are refused by name; DTM runs prompt-free with a reward model
through ``tiltmatch train``. ``benchmarks/bd3lm_parity.py`` runs the released file itself.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from bd3lm_fixture import STORED_EPS, write_tiny_bd3lm
from safetensors.torch import save_file

from tiltmatch.models.bd3lm import LORA_TARGETS, BD3LMCodec, BD3LMDenoiser
from tiltmatch.models.denoiser import (
    MaskedDenoiser,
    TinyModelSpec,
    load_denoiser,
    save_denoiser,
    tiny_denoiser,
)
from tiltmatch.models.family import decoder_layer_classes, family_of, lora_target_modules
from tiltmatch.models.loading import checkpoint_family, load_model_folder
from tiltmatch.models.mdlm import NEG_INFINITY
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.sampler import generate

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
BLOCK = 4


@pytest.fixture(scope="module", params=[True, False], ids=["adaln", "no-adaln"])
def tiny(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bd3lm") / "ckpt"
    fam = write_tiny_bd3lm(folder, block_size=BLOCK, adaln=request.param)
    model, codec = load_model_folder(fam.folder)
    return fam, model, codec


# --------------------------------------------------------------------------- released equations


def _layer_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w


def _conditioning(sd: dict, rows: int) -> torch.Tensor:
    """``silu(sigma_map(0))``: sigma is zeroed without time conditioning (as released)."""
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half).float() / half)
    args = torch.zeros(rows)[:, None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    h = emb @ sd["backbone.sigma_map.mlp.0.weight"].T + sd["backbone.sigma_map.mlp.0.bias"]
    h = torch.nn.functional.silu(h)
    h = h @ sd["backbone.sigma_map.mlp.2.weight"].T + sd["backbone.sigma_map.mlp.2.bias"]
    return torch.nn.functional.silu(h)


def released_mask(n: int, block: int, length: int) -> torch.Tensor:
    """The released training mask over ``[x_t, x_0]`` (``2n`` columns; block diagonal,
    offset block-causal, block-causal), and the sampling forward's slice of it: the
    clean-clean quarter, rows and columns ``n .. n + length``."""
    q, k = torch.arange(2 * n)[:, None], torch.arange(2 * n)[None, :]
    q0, k0 = q >= n, k >= n
    bq = torch.where(q0, (q - n) // block, q // block)
    bk = torch.where(k0, (k - n) // block, k // block)
    diagonal = (bq == bk) & (q0 == k0)
    offset = (bq > bk) & k0 & ~q0
    causal = (bq >= bk) & k0 & q0
    return (diagonal | offset | causal)[n : n + length, n : n + length]


def released_logits(fam, ids: torch.Tensor) -> torch.Tensor:
    """The DiT's logits ``[B, T, V]`` of unpadded rows in the released inference forward
    (``sample_mode``, no KV cache), float32."""
    cfg, sd = fam.config, fam.state_dict
    rows, t = ids.shape
    d, heads = cfg["hidden_dim"], cfg["n_heads"]
    hd = d // heads
    adaln = cfg["adaln"]
    mask = released_mask(cfg["model_length"], cfg["block_size"], t)
    ang = torch.arange(t).float()[:, None] * 10000 ** (-torch.arange(0, hd, 2).float() / hd)
    cos, sin = torch.cos(torch.cat([ang, ang], -1)), torch.sin(torch.cat([ang, ang], -1))

    def rope(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, hd]; rotate_half as released
        rot = torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
        return x * cos[None, :, None] + rot * sin[None, :, None]

    c = _conditioning(sd, rows) if adaln else None
    x = sd["backbone.vocab_embed.embedding"][ids]
    for i in range(cfg["n_blocks"]):
        p = f"backbone.blocks.{i}."
        if adaln:
            mods = c @ sd[p + "adaLN_modulation.weight"].T + sd[p + "adaLN_modulation.bias"]
            sh1, sc1, g1, sh2, sc2, g2 = mods[:, None].chunk(6, dim=2)
        else:
            sh1 = sc1 = sh2 = sc2 = torch.zeros(1)
            g1 = g2 = torch.ones(1)
        h = _layer_norm(x, sd[p + "norm1.weight"]) * (1 + sc1) + sh1
        qkv = (h @ sd[p + "attn_qkv.weight"].T).view(rows, t, 3, heads, hd)
        q, k, v = rope(qkv[:, :, 0]), rope(qkv[:, :, 1]), qkv[:, :, 2]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~mask, -math.inf)
        att = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v).reshape(rows, t, d)
        x = x + g1 * (att @ sd[p + "attn_out.weight"].T)
        h = _layer_norm(x, sd[p + "norm2.weight"]) * (1 + sc2) + sh2
        h = h @ sd[p + "mlp.0.weight"].T + sd[p + "mlp.0.bias"]
        h = torch.nn.functional.gelu(h, approximate="tanh")
        x = x + g2 * (h @ sd[p + "mlp.2.weight"].T + sd[p + "mlp.2.bias"])
    o = "backbone.output_layer."
    h = _layer_norm(x, sd[o + "norm_final.weight"])
    if adaln:
        mods = c @ sd[o + "adaLN_modulation.weight"].T + sd[o + "adaLN_modulation.bias"]
        shift, scale = mods[:, None].chunk(2, dim=2)
        h = h * (1 + scale) + shift
    return h @ sd[o + "linear.weight"].T + sd[o + "linear.bias"]


def _batch(lengths: list[int], response: int, vocab: int, mask_id: int, seed: int = 0):
    """Left-padded rows of random prompt tokens and a half-masked response."""
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
    assert isinstance(model, BD3LMDenoiser) and isinstance(codec, BD3LMCodec)
    assert checkpoint_family(fam.config) == "bd3lm"
    assert family_of(model.config).name == "bd3lm"
    assert family_of(model.config).block_size == BLOCK
    assert codec.mask_token_id == fam.specials["mask"] == fam.config["vocab_size"] - 1
    state = model.state_dict()
    assert set(state) == set(fam.state_dict)
    for key, tensor in fam.state_dict.items():
        assert torch.equal(state[key], tensor), key
    assert float(model.sampling_eps_min) == pytest.approx(STORED_EPS["sampling_eps_min"])
    # Strict: a folder missing one stored tensor is refused, naming it.
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in fam.folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    for dropped in ("backbone.blocks.1.attn_out.weight", "sampling_eps_max"):
        partial = {k: v for k, v in fam.state_dict.items() if k != dropped}
        save_file(partial, str(bad / "model.safetensors"))
        with pytest.raises(ValueError, match=re.escape(dropped)):
            load_model_folder(bad)
    # adaln decides which tensors belong: the other variant's file does not load.
    config = json.loads((fam.folder / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "adaln": not config["adaln"]}))
    save_file(dict(fam.state_dict), str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"adaLN_modulation|sigma_map"):
        load_model_folder(bad)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"causal": True}, "autoregressive"),
        ({"cross_attn": False}, "cross_attn"),
        ({"time_conditioning": True}, "time_conditioning"),
        ({"block_size": None}, "block_size"),
    ],
)
def test_settings_this_forward_does_not_compute_are_refused(tmp_path: Path, setting, message):
    fam = write_tiny_bd3lm(tmp_path / "ckpt")
    config = json.loads((fam.folder / "config.json").read_text())
    (fam.folder / "config.json").write_text(json.dumps({**config, **setting}))
    with pytest.raises(ValueError, match=message):
        load_model_folder(fam.folder)


@pytest.mark.parametrize("lengths", [[13], [13, 6, 9]], ids=["unpadded", "left-padded"])
def test_logits_equal_the_released_equations(tiny, lengths) -> None:
    """Each row against the released forward of its real tokens alone: left padding moves
    no block boundary and no position."""
    fam, model, codec = tiny
    response = 11
    ids, real = _batch(lengths, response, codec.vocab_size, codec.mask_token_id)
    with torch.no_grad():  # a 2-D padding mask: the class makes it block-causal itself
        raw = model(
            ids, attention_mask=real, position_ids=MaskedDenoiser.position_ids(real), raw=True
        ).logits
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    with torch.no_grad():
        logp = denoiser(ids, real, response)
    for row, n in enumerate(lengths):
        own = ids[row : row + 1, -(n + response) :]
        ref = released_logits(fam, own)[0]
        torch.testing.assert_close(raw[row, -(n + response) :], ref, atol=1e-5, rtol=1e-5)
        expected = ref[-response:].clone()  # SUBS (diffusion.py) at the masked columns
        expected[..., codec.mask_token_id] += NEG_INFINITY
        expected = expected.log_softmax(-1)
        masked = own[0, -response:] == codec.mask_token_id
        assert masked.any() and (~masked).any()
        torch.testing.assert_close(logp[row][masked], expected[masked], atol=1e-5, rtol=1e-5)
        carried = logp[row][~masked].exp().gather(-1, own[0, -response:][~masked][:, None])
        torch.testing.assert_close(carried, torch.ones_like(carried))


def test_attention_is_block_causal(tiny) -> None:
    """A later block's tokens change no earlier position; a token changes the other positions
    of its own block (bidirectional inside) and of later blocks. Blocks count from the first
    real token, so a left-padded row behaves as its unpadded self."""
    _fam, model, codec = tiny
    g = torch.Generator().manual_seed(3)
    for pad in (0, 3):
        ids = torch.randint(0, codec.vocab_size - 1, (1, pad + 4 * BLOCK), generator=g)
        real = torch.ones_like(ids)
        real[:, :pad] = 0
        changed = ids.clone()
        at = pad + 2 * BLOCK + 1  # a token of block 2 (counted from the first real token)
        changed[0, at] = (changed[0, at] + 1) % (codec.vocab_size - 1)
        with torch.no_grad():
            a = model(ids, attention_mask=real, raw=True).logits[0]
            b = model(changed, attention_mask=real, raw=True).logits[0]
        moved = (a - b).abs().amax(-1) > 1e-6
        earlier = torch.arange(ids.shape[1]) < pad + 2 * BLOCK
        assert not bool(moved[earlier].any()), pad
        later = ~earlier & (torch.arange(ids.shape[1]) != at)
        assert bool(moved[later].all()), pad


# --------------------------------------------------------------------------- decoding


def full_recompute_decode(model, prompt: list[int], length: int, mask_id: int) -> list[int]:
    """Greedy block decoding written out: whole blocks from the first prompt token (the last
    one filled with extra masks to its boundary, decoded too and dropped, as the released
    sampler decodes whole blocks), one token per step, the most confident masked position
    of the active block, every step a whole forward of prompt + canvas (no cache)."""
    start = len(prompt)
    canvas = torch.full((1, length + (-(start + length)) % BLOCK), mask_id)
    ids = torch.tensor([prompt])
    for lo in range(start - start % BLOCK, start + canvas.shape[1], BLOCK):
        cols = torch.arange(max(lo, start), lo + BLOCK) - start
        for _ in range(len(cols)):
            with torch.no_grad():
                logp = model(torch.cat([ids, canvas], 1)).logits[0, start:]
            conf, tok = logp.softmax(-1).max(-1)
            open_ = canvas[0, cols] == mask_id
            j = int(cols[open_][conf[cols][open_].argmax()])
            canvas[0, j] = tok[j]
    return canvas[0, :length].tolist()


def test_the_block_decoder_equals_full_recomputation(tiny) -> None:
    """The block decoder (its KV cache of finished blocks) against the written-out decoding,
    unconditional (the empty prompt is ``<|endoftext|>``) and prompted, left-padded together."""
    _fam, model, codec = tiny
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    prompts = [codec.encode_prompt(""), codec.encode_prompt("ab tab ab")]
    assert prompts[0] == [codec.eos_token_id] and len(prompts[1]) % BLOCK != 1
    length = 14
    greedy = SamplingConfig(steps=length, block_length=length, temperature=0.0)
    out = generate(denoiser, prompts, length, greedy, torch.Generator().manual_seed(0))
    for row, prompt in enumerate(prompts):
        ref = full_recompute_decode(model, prompt, length, codec.mask_token_id)
        assert out.responses[row].tolist() == ref, row
    sampled = SamplingConfig(steps=length, block_length=length, remasking="random")
    free = generate(denoiser, prompts, length, sampled, torch.Generator().manual_seed(1))
    assert not bool((free.responses == codec.mask_token_id).any())


def test_sampler_modes_and_states_it_cannot_honour_are_refused(tiny, tmp_path: Path) -> None:
    from tiltmatch.config import ConfigError, build_config
    from tiltmatch.training.runner import check_family_states

    fam, model, _codec = tiny
    for mode in ("exact", "parallel"):
        build_config(overrides=[f"model.base={fam.folder}", f"sampler.mode={mode}"])
    for mode in ("cached", "cached+parallel", "ancestral"):
        with pytest.raises(ConfigError, match=re.escape(f"'{mode}' cannot decode a BD3-LM")):
            build_config(overrides=[f"model.base={fam.folder}", f"sampler.mode={mode}"])
    for states, message in (("trajectory", "never saw in training"), ("random", "block")):
        config = build_config(overrides=["model.family=bd3lm", f"dtm.states={states}"])
        with pytest.raises(ValueError, match=message):
            check_family_states(config, model)
    check_family_states(build_config(overrides=["dtm.states=block"]), model)


# --------------------------------------------------------------------------- training


def test_a_tiny_model_saves_reloads_and_adapts(tmp_path: Path) -> None:
    """``model.family=bd3lm`` builds a tiny one; it saves and reloads strictly with its family
    and block size; LoRA and activation checkpointing see its DiT blocks."""
    from tiltmatch.config import LoRAConfig
    from tiltmatch.training.lora import LoRAPair

    spec = TinyModelSpec(32, 2, 4, 64, family="bd3lm", block_size=2)
    model = tiny_denoiser(20, spec, seed=0)
    assert family_of(model.config).block_size == 2
    assert lora_target_modules(model) == list(LORA_TARGETS)
    assert decoder_layer_classes(model) == ("DDiTBlock",)
    save_denoiser(tmp_path / "saved", model, {"alphabet": "abc"})
    again, _meta = load_denoiser(tmp_path / "saved")
    assert isinstance(again, BD3LMDenoiser) and family_of(again.config).block_size == 2
    ids = torch.randint(3, 20, (2, 11), generator=torch.Generator().manual_seed(0))
    ids[:, -4:] = 1
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
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
        mask = torch.ones_like(ids)
        loss = pair.student(ids, mask, 4).logsumexp(-1).mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    assert grads[0].abs().sum() > 0


def test_tiltmatch_train_runs_prompt_free_dtm_on_block_states(tmp_path: Path, capsys) -> None:
    from test_mdlm import write_reward_classifier

    from tiltmatch.cli import main

    fam = write_tiny_bd3lm(tmp_path / "ckpt", adaln=True)
    reward = tmp_path / "reward-model"
    write_reward_classifier(reward, fam.folder)
    out = tmp_path / "run"
    sets = [
        f"task_options.rewards=[{reward}]", "task_options.samples=4",
        "task_options.eval_samples=2", "task_options.response_length=15",
        "sampler.steps=15", "sampler.block_length=15", "sampler.remasking=random",
        "dtm.states=block", "dtm.schedule=adaptive", "dtm.h_max=2", "dtm.a_end=2",
        "dtm.steps_per_h=2", "dtm.baseline=calibrated",
        "train.num_generations=2", "train.prompts_per_batch=2", "train.buffer_prompts=2",
        "train.refresh_prompts=1", "train.refresh_every=2", "train.train_examples=4",
        "train.save_steps=2", "eval.examples=2", "eval.samples_per_example=1",
    ]  # fmt: skip
    args = ["train", "--model", str(fam.folder), "--task", "unconditional", "--out", str(out)]
    code = main([*args, "--quiet", *[a for s in sets for a in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in stages)
    assert stages[0]["reward_std"] > 0  # a learned reward: the weights are not all equal
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["dllm_family"] == "bd3lm" and saved["dllm_block_size"] == BLOCK
    trained, _meta = load_denoiser(out / "final")  # strictly, as the trainer saved it
    assert isinstance(trained, BD3LMDenoiser)
    state = trained.state_dict()
    assert set(state) == set(fam.state_dict)  # the release's tensor names, kept
    assert any(not torch.equal(fam.state_dict[k], v) for k, v in state.items())


def test_the_recipe_validates_against_a_release(tiny) -> None:
    from tiltmatch.config import build_config

    fam, _model, _codec = tiny
    path = Path(__file__).resolve().parents[1] / "configs" / "bd3lm" / "owt_reward.yaml"
    config = build_config(path, [f"model.base={fam.folder}"])  # the family's sampler check
    assert config.task == "unconditional" and config.dtm.states == "block"
    assert config.sampler.mode == "exact" and config.sampler.remasking == "random"
    # the trained length: <|endoftext|> and 1023 tokens, one token per step
    assert config.task_options["response_length"] + 1 == 1024 == config.sampler.steps + 1
