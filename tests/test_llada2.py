"""LLaDA2 (mixture-of-experts block diffusion) through the family registry.

The released format (``tests/llada2_fixture.py``) loads strictly into the package's own
implementation; its logits equal an independent forward written here from the released
modeling code's equations (partial RoPE, q/k norms, fused qkv, group-limited sigmoid
routing with the expert bias, shared expert, block-causal mask over real-token
positions), with and without left padding; the block decoder reproduces the released
``generate`` (threshold decoding) token for token at temperature 0; DTM runs on it end to
end through ``tiltmatch train``. The comparison with the released modeling file itself is
``benchmarks/family_parity.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from llada2_fixture import write_tiny_llada2
from safetensors.torch import load_file, save_file

from tiltmatch.models.denoiser import MaskedDenoiser, ModelLoadError, TinyModelSpec, tiny_denoiser
from tiltmatch.models.family import decoder_layer_classes, family_of, lora_target_modules
from tiltmatch.models.llada2 import LORA_TARGETS, LLaDA2MoeDenoiser, llada2_config
from tiltmatch.models.loading import checkpoint_family, load_model_folder
from tiltmatch.sampling.config import SamplingConfig
from tiltmatch.sampling.sampler import generate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    fam = write_tiny_llada2(tmp_path_factory.mktemp("llada2") / "ckpt")
    model, codec = load_model_folder(fam.folder)
    return fam, model, codec


# --------------------------------------------------------------------------- reference forward


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _partial_rope(x: torch.Tensor, pos: torch.Tensor, theta: float, rot: int) -> torch.Tensor:
    """Rotate the first ``rot`` dims of each head (contiguous halves); the rest pass."""
    inv = theta ** (-torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    ang = pos[..., None].float() * inv
    cos, sin = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
    a, b, rest = x[..., : rot // 2], x[..., rot // 2 : rot], x[..., rot:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def _mlp(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    gate, up = x @ sd[p + "gate_proj.weight"].T, x @ sd[p + "up_proj.weight"].T
    return (torch.nn.functional.silu(gate) * up) @ sd[p + "down_proj.weight"].T


def _route(cfg: dict, sd: dict, p: str, token: torch.Tensor) -> list[tuple[int, float]]:
    """One token's experts and weights, written as the release describes the routing."""
    scores = torch.sigmoid(sd[p + "mlp.gate.weight"] @ token).tolist()
    biased = [s + float(b) for s, b in zip(scores, sd[p + "mlp.gate.expert_bias"], strict=True)]
    size = cfg["num_experts"] // cfg["n_group"]
    groups = [sorted(biased[g * size : (g + 1) * size])[-2:] for g in range(cfg["n_group"])]
    ranked_groups = sorted(range(cfg["n_group"]), key=lambda g: -sum(groups[g]))
    eligible = [
        e for g in ranked_groups[: cfg["topk_group"]] for e in range(g * size, g * size + size)
    ]
    chosen = sorted(eligible, key=lambda e: -biased[e])[: cfg["num_experts_per_tok"]]
    total = sum(scores[e] for e in chosen)
    return [(e, scores[e] / total * cfg["routed_scaling_factor"]) for e in chosen]


def _moe(cfg: dict, sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for e, w in _route(cfg, sd, p, flat[n]):
            out[n] += w * _mlp(sd, p + f"mlp.experts.{e}.", flat[n])
    return out.view_as(x) + _mlp(sd, p + "mlp.shared_experts.", x)


def reference_logits(fam, ids: torch.Tensor, real: torch.Tensor, block: int = 32) -> torch.Tensor:
    """Logits ``[B, T, V]`` from the release's equations (float32); positions and blocks
    count real tokens; padded query rows are left unconstrained (never read)."""
    cfg, sd = fam.config, fam.state_dict
    heads, kv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    rot = int(hd * cfg["partial_rotary_factor"])
    eps, theta = cfg["rms_norm_eps"], float(cfg["rope_theta"])
    b, t = ids.shape
    pos = (real.cumsum(-1) - 1).clamp(min=0)
    blk = pos // block
    key_ok = real.bool()[:, None, :] & (blk[:, None, :] <= blk[:, :, None])
    h = sd["model.word_embeddings.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        x = _rms(h, sd[p + "input_layernorm.weight"], eps)
        qkv = (x @ sd[p + "attention.query_key_value.weight"].T).view(b, t, heads + 2 * kv, hd)
        q, k, v = qkv[:, :, :heads], qkv[:, :, heads : heads + kv], qkv[:, :, heads + kv :]
        q = _rms(q, sd[p + "attention.query_layernorm.weight"], eps).transpose(1, 2)
        k = _rms(k, sd[p + "attention.key_layernorm.weight"], eps).transpose(1, 2)
        q, k = _partial_rope(q, pos, theta, rot), _partial_rope(k, pos, theta, rot)
        k = k.repeat_interleave(heads // kv, dim=1)
        v = v.transpose(1, 2).repeat_interleave(heads // kv, dim=1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(hd)).masked_fill(~key_ok[:, None], -math.inf)
        scores = torch.where(torch.isinf(scores).all(-1, keepdim=True), 0.0, scores)
        att = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, t, heads * hd)
        h = h + att @ sd[p + "attention.dense.weight"].T
        x = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        dense = layer < cfg["first_k_dense_replace"]
        h = h + (_mlp(sd, p + "mlp.", x) if dense else _moe(cfg, sd, p, x))
    return _rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T


def _batch(lengths: list[int], response: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width + response, dtype=torch.long)
    real = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n :] = torch.randint(0, vocab, (n + response,), generator=g)
        real[r, width - n :] = 1
    return ids, real


# --------------------------------------------------------------------------- format and forward


def test_the_released_format_loads_strictly_into_the_own_class(tiny, tmp_path: Path) -> None:
    fam, model, codec = tiny
    assert isinstance(model, LLaDA2MoeDenoiser) and model.config.is_causal is False
    assert checkpoint_family(fam.config) == "llada2"
    assert codec.mask_token_id == fam.mask_id and codec.eos_token_id == fam.eos_id
    assert codec.special_ids.eot_token_id == fam.specials["<|role_end|>"]
    assert family_of(model.config).block_size == 32  # the released decoder's blocks
    state = model.state_dict()
    assert set(state) == set(fam.state_dict)
    for key, tensor in fam.state_dict.items():
        assert torch.equal(state[key], tensor), key
    prompt = codec.encode_prompt("hi")
    assert codec.tokenizer.decode(prompt).startswith("<role>SYSTEM</role>")
    assert codec.tokenizer.decode(prompt).endswith("<role>ASSISTANT</role>")
    # Strict: a missing tensor, an unexpected one and a wrong-shaped one are each refused.
    shard = sorted(fam.folder.glob("model-0000*.safetensors"))[-1]
    for damage, message in (("drop", "lacks"), ("extra", "unexpected"), ("shape", "shape|size")):
        bad = tmp_path / damage
        bad.mkdir()
        for f in fam.folder.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        part = load_file(str(shard))
        key = sorted(part)[0]
        if damage == "drop":
            part.pop(key)
            index = json.loads((bad / "model.safetensors.index.json").read_text())
            index["weight_map"].pop(key)
            (bad / "model.safetensors.index.json").write_text(json.dumps(index))
        elif damage == "extra":
            part["model.layers.0.mlp.gate.expert_bias"] = torch.zeros(8)
        else:
            part[key] = torch.zeros(*part[key].shape[:-1], part[key].shape[-1] + 1)
        save_file(part, str(bad / shard.name))
        with pytest.raises((ValueError, ModelLoadError, RuntimeError), match=message):
            load_model_folder(bad)


@pytest.mark.parametrize("lengths", [[40], [37, 29, 44]])
def test_logits_equal_the_reference_forward(tiny, lengths) -> None:
    fam, model, _codec = tiny
    denoiser = MaskedDenoiser(model, fam.mask_id, fam.eos_id)
    response = 12
    ids, real = _batch(lengths, response, fam.config["vocab_size"])
    ours = denoiser(ids, real, response)
    ref = reference_logits(fam, ids, real)[:, -response:]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # Left padding changes nothing of a row's logits (positions and blocks count real tokens).
    if len(lengths) > 1:
        for row, n in enumerate(lengths):
            alone = denoiser(
                ids[row : row + 1, -(n + response) :],
                real[row : row + 1, -(n + response) :],
                response,
            )
            torch.testing.assert_close(alone[0], ours[row], atol=1e-5, rtol=1e-5)


def test_routing_and_blocks_are_real(tiny) -> None:
    """The traps: the group limit, the expert bias and the block mask each change logits."""
    fam, model, _codec = tiny
    cfg = fam.config
    gate = fam.state_dict["model.layers.1.mlp.gate.weight"]
    bias = fam.state_dict["model.layers.1.mlp.gate.expert_bias"]
    tokens = torch.randn(200, cfg["hidden_size"], generator=torch.Generator().manual_seed(0))
    scores = torch.sigmoid(tokens @ gate.T)
    plain = (scores + bias).topk(cfg["num_experts_per_tok"]).indices.sort().values
    router = model.model.layers[1].mlp.gate
    chosen = router(tokens)[0].sort().values
    assert (plain != chosen).any(dim=1).float().mean() > 0.1  # the group limit decides
    unbiased = scores.topk(cfg["num_experts_per_tok"]).indices.sort().values
    assert (unbiased != plain).any(dim=1).any()  # the bias decides too
    # The block mask: a token in a later block changes nothing before its block.
    denoiser = MaskedDenoiser(model, fam.mask_id, fam.eos_id)
    ids, real = _batch([40], 30, cfg["vocab_size"])
    base = denoiser(ids, real, 30)
    ids[0, -1] = (ids[0, -1] + 1) % cfg["vocab_size"]
    moved = denoiser(ids, real, 30)
    first_block = 32 - 40  # response columns of the first block
    assert torch.equal(base[0, :first_block], moved[0, :first_block])
    assert not torch.equal(base[0, first_block:], moved[0, first_block:])


# --------------------------------------------------------------------------- the released generate


def released_generate(model, prompt, gen_length, threshold, mask_id, eos_id, block=32, steps=32):
    """``LLaDA2MoeModelLM.generate`` at temperature 0 for one prompt (written from the
    release): blocks of ``block`` counted from column 0, the whole prefix recomputed every
    step under the block mask, the linear quota per step, every masked token above
    ``threshold`` when they are at least the quota; stops after a block holding EOS and
    returns the response up to its first EOS (included)."""
    steps = min(steps, gen_length)
    p = len(prompt)
    num_blocks = -(-(p + gen_length) // block)
    total = num_blocks * block
    tri = torch.tril(torch.ones(num_blocks, num_blocks, dtype=torch.bool))
    allowed = tri.repeat_interleave(block, 0).repeat_interleave(block, 1)[None, None]
    x = torch.full((1, total), mask_id)
    x[0, :p] = torch.tensor(prompt)
    base, rem = divmod(block, steps)
    schedule = [base + (1 if j < rem else 0) for j in range(steps)]
    for k in range(p // block, num_blocks):
        end = (k + 1) * block
        for step in range(steps):
            active = x[0, end - block : end] == mask_id
            if not active.any():
                break
            out = model(
                x[:, :end],
                attention_mask=allowed[..., :end, :end],
                position_ids=torch.arange(end)[None],
            )
            probs = torch.softmax(out.logits[0, -block:].float(), -1)
            x0_p, x0 = probs.max(-1)
            confidence = torch.where(active, x0_p, -torch.inf)
            high = confidence > threshold
            if int(high.sum()) >= schedule[step]:
                transfer = high
            else:
                transfer = torch.zeros_like(high)
                transfer[confidence.topk(min(schedule[step], int(active.sum()))).indices] = True
            x[0, end - block : end][transfer] = x0[transfer]
        if (x[0, p:end] == eos_id).any():
            break
    out = x[0, p : p + gen_length].tolist()
    return out[: out.index(eos_id) + 1] if eos_id in out else out


@pytest.mark.parametrize(("threshold", "head_scale"), [(0.95, 1.0), (0.95, 12.0), (0.6, 12.0)])
def test_block_decoder_reproduces_the_released_generate(
    tmp_path: Path, threshold, head_scale
) -> None:
    fam = write_tiny_llada2(tmp_path / "ckpt", seed=3, head_scale=head_scale)
    model, codec = load_model_folder(fam.folder)
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 250, (n,), generator=g).tolist() for n in (5, 37, 20)]
    length = 40
    config = SamplingConfig(mode="parallel", steps=length, threshold=threshold, temperature=0.0)
    ours = generate(denoiser, prompts, length, config, torch.Generator().manual_seed(0))
    committed_at_once = 0
    for row, prompt in enumerate(prompts):
        ref = released_generate(model, prompt, length, threshold, fam.mask_id, fam.eos_id)
        assert ours.responses[row, : len(ref)].tolist() == ref, row
    # With a sharp head, several tokens clear the threshold in one step: record it by
    # decoding again with recorded canvases (the exact mode commits one per step).
    exact = SamplingConfig(mode="exact", steps=length, temperature=0.0)
    one_by_one = generate(denoiser, prompts, length, exact, torch.Generator().manual_seed(0))
    committed_at_once = int((ours.responses != one_by_one.responses).sum())
    if head_scale > 1.0:
        assert committed_at_once > 0  # threshold decoding decided something


# --------------------------------------------------------------------------- training


def test_lora_targets_and_fsdp_units(tiny) -> None:
    from tiltmatch.config import LoRAConfig
    from tiltmatch.training.lora import LoRAPair

    _fam, model, _codec = tiny
    assert lora_target_modules(model) == list(LORA_TARGETS)
    assert decoder_layer_classes(model) == ("LLaDA2DecoderLayer",)
    settings = LoRAConfig(r=2, alpha=4, dropout=0.0, target_modules=list(LORA_TARGETS))
    pair = LoRAPair(model, 1, 0, settings)
    adapted = {
        n.rsplit(".lora_A", 1)[0] for n, _ in pair.peft_model.named_parameters() if ".lora_A." in n
    }
    assert any(n.endswith("attention.query_key_value") for n in adapted)
    assert any(n.endswith("mlp.shared_experts.down_proj") for n in adapted)
    assert any(n.endswith("layers.0.mlp.gate_proj") for n in adapted)
    assert not any(".experts." in n for n in adapted)  # routed experts stay frozen


def test_lora_pair_with_checkpointing_matches_without() -> None:
    from tiltmatch.config import LoRAConfig
    from tiltmatch.training.lora import LoRAPair

    spec = TinyModelSpec(32, 2, 4, 48, family="llada2", block_size=4)
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


def test_tiltmatch_train_runs_dtm_on_the_tiny_release(tiny, tmp_path: Path, capsys) -> None:
    from tiltmatch.cli import main

    fam, _model, _codec = tiny
    out = tmp_path / "run"
    sets = [
        "task_options.response_length=8",
        "sampler.mode=parallel", "sampler.steps=8", "sampler.threshold=0.95",
        "sampler.temperature=0.0", "dtm.states=block",
        "dtm.h=2", "dtm.a_end=2", "dtm.steps_per_h=2",
        "train.num_generations=2", "train.prompts_per_batch=2", "train.buffer_prompts=2",
        "train.refresh_prompts=1", "train.refresh_every=2", "train.train_examples=8",
        "train.checkpoint_every=2", "eval.examples=2", "eval.samples_per_example=1",
    ]  # fmt: skip
    args = ["train", "--model", str(fam.folder), "--task", "maze", "--out", str(out), "--quiet"]
    code = main([*args, *[a for s in sets for a in ("--set", s)]])
    assert code == 0, capsys.readouterr().err
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages[-1]["updates"] == 2 and stages[-1]["a_after"] == 2.0
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in stages)
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["dllm_family"] == "llada2" and saved["dllm_block_size"] == 32


def test_released_settings_it_cannot_carry_are_refused() -> None:
    cfg = {"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    moe = {**cfg, "num_experts": 4, "n_group": 2, "topk_group": 1, "moe_intermediate_size": 4}
    assert llada2_config(moe).num_experts == 4
    for key, value in (
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
        ("score_function", "softmax"),
        ("norm_topk_prob", False),
        ("use_sliding_window", True),
    ):
        with pytest.raises(ValueError, match=key):
            llada2_config({**moe, key: value})
    with pytest.raises(ValueError, match="n_group"):
        llada2_config({**moe, "n_group": 3})
    with pytest.raises(ValueError, match="'hidden_size'"):
        llada2_config({k: v for k, v in moe.items() if k != "hidden_size"})


def test_recipes_decode_as_released_and_validate_against_a_release(tiny) -> None:
    from tiltmatch.config import build_config

    fam, _model, _codec = tiny
    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "llada2").glob("*.yaml"))
    assert [p.stem for p in paths] == ["countdown", "sudoku"]
    for path in paths:
        config = build_config(path, [f"model.base={fam.folder}"])  # the family's decoder check
        length = config.task_options["response_length"]
        for sampler in (config.sampler, config.eval.sampler):
            assert sampler is not None and sampler.mode == "parallel"
            assert sampler.threshold == 0.95 and sampler.steps == length  # 32 per block
        assert config.dtm.states == "block"
        assert config.lora is not None and config.lora.target_modules == list(LORA_TARGETS)
