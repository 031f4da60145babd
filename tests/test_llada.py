"""LLaDA checkpoints as bidirectional ``LlamaForCausalLM`` models (tiltmatch.models.llada).

The traps aimed at: a wrong key mapping (gate vs. up projection), a RoPE
convention that differs from LLaDA's, attention turning causal, padding leaking
into real positions, and special ids hard-coded instead of read from the files.
The reference forward below is written from LLaDA's block equations on the
LLaDA-format weights, in float64, without transformers.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark
from llada_fixture import (
    EMBEDDING_SIZE,
    HONEST_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TinyLLaDA,
    llada_config,
    random_llada_state_dict,
    write_tiny_llada,
)
from safetensors.torch import save_file
from transformers import LlamaForCausalLM

from tiltmatch.models.codecs import PromptCodec
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.llada import (
    LLADA_8B_INSTRUCT_CONFIG,
    LLaDACodec,
    LLaDASpecialIds,
    convert_llada,
    convert_llada_state_dict,
    llada_config_to_llama,
    load_llada,
    read_special_ids,
)

# --------------------------------------------------------------------------- reference


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(t: torch.Tensor, theta: float, interleaved: bool = False) -> torch.Tensor:
    """LLaDA's RoPE on ``t`` [heads, T, hd] at positions 0..T-1.

    LLaDA: angles ``cat(freqs, freqs)``; ``rotate_half`` views the head as
    (2, hd/2) and returns ``cat(-second, first)``. ``interleaved=True`` is the
    GPT-J/Meta convention (pairs of adjacent dims), used only to show that the
    test can tell the two apart.
    """
    _, n, hd = t.shape
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    freqs = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
    if interleaved:
        pairs = t.view(*t.shape[:-1], hd // 2, 2)
        x1, x2 = pairs.unbind(-1)
        cos, sin = freqs.cos(), freqs.sin()
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)
    angles = torch.cat((freqs, freqs), dim=-1)
    first, second = t.view(*t.shape[:-1], 2, hd // 2).unbind(-2)
    rotated = torch.cat((-second, first), dim=-1)
    return t * angles.cos() + rotated * angles.sin()


def reference_logits(
    sd: dict[str, torch.Tensor], cfg: dict, ids: list[int], interleaved_rope: bool = False
) -> torch.Tensor:
    """LLaDA's forward on one unpadded row: [T, V] logits in float64."""
    w = {k.removeprefix("model.transformer."): v.double() for k, v in sd.items()}
    d, nh, eps = cfg["d_model"], cfg["n_heads"], cfg["rms_norm_eps"]
    nkv, hd = cfg["n_kv_heads"], d // nh
    x = w["wte.weight"][torch.tensor(ids)]
    n = x.shape[0]
    for i in range(cfg["n_layers"]):
        b = f"blocks.{i}."
        h = _rms_norm(x, w[b + "attn_norm.weight"], eps)
        q = (h @ w[b + "q_proj.weight"].T).view(n, nh, hd).transpose(0, 1)
        k = (h @ w[b + "k_proj.weight"].T).view(n, nkv, hd).transpose(0, 1)
        v = (h @ w[b + "v_proj.weight"].T).view(n, nkv, hd).transpose(0, 1)
        q = _rope(q, cfg["rope_theta"], interleaved_rope)
        k = _rope(k, cfg["rope_theta"], interleaved_rope)
        # LLaDA repeats each kv head for consecutive query heads (repeat_interleave).
        k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)  # no mask at all
        x = x + (att @ v).transpose(0, 1).reshape(n, d) @ w[b + "attn_out.weight"].T
        h = _rms_norm(x, w[b + "ff_norm.weight"], eps)
        gated = F.silu(h @ w[b + "ff_proj.weight"].T) * (h @ w[b + "up_proj.weight"].T)
        x = x + gated @ w[b + "ff_out.weight"].T
    x = _rms_norm(x, w["ln_f.weight"], eps)
    out = w["wte.weight"] if cfg["weight_tying"] else w["ff_out.weight"]
    return x @ out.T


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyLLaDA:
    return write_tiny_llada(tmp_path_factory.mktemp("llada") / "ckpt")


@pytest.fixture(scope="module")
def loaded(tiny: TinyLLaDA):
    return load_llada(tiny.folder, dtype=torch.float32)


ROWS = [[3, 4, 5, 6, 7], [9, 5, 6, 7, 8, 3, 4, 11], [12, 3, 10]]
TOL = 1e-5


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return ids, mask


# --------------------------------------------------------------------------- config & keys


def test_config_maps_every_setting(tiny: TinyLLaDA) -> None:
    c = llada_config_to_llama(tiny.config)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (32, 2, 4)
    assert (c.num_key_value_heads, c.intermediate_size, c.vocab_size) == (2, 48, EMBEDDING_SIZE)
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert c.rms_norm_eps == 1e-5
    assert c.is_causal is False and c.tie_word_embeddings is False and c.hidden_act == "silu"
    assert not c.attention_bias and not c.mlp_bias
    assert c.pad_token_id is None  # never the embedding's padding_idx: LLaDA's EOS row trains


def test_published_8b_config_gives_the_published_size() -> None:
    # The architecture keys of LLaDA-8B-Instruct's config.json. On the meta device
    # (nothing allocated) its parameter count in bfloat16 must equal the
    # total_size of the official model.safetensors.index.json: 16031162368 bytes.
    published = llada_config() | {
        "d_model": 4096,
        "n_layers": 32,
        "n_heads": 32,
        "n_kv_heads": 32,
        "mlp_hidden_size": 12288,
        "embedding_size": 126464,
        "vocab_size": 126464,
        "rope_theta": 500000.0,
        "max_sequence_length": 4096,
        "mask_token_id": 126336,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
    }
    config = llada_config_to_llama(published)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert 2 * sum(p.numel() for p in model.parameters()) == 16031162368


def _benchmark(name: str) -> ModuleType:
    """A benchmark script, imported under a name of this file's own."""
    return load_benchmark(name, f"tiltmatch_{name}_in_test_llada")


def test_8b_instruct_constant_is_the_one_8b_config() -> None:
    c = llada_config_to_llama(LLADA_8B_INSTRUCT_CONFIG)
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size) == (32, 4096, 126464)
    assert c.is_causal is False
    # The benchmarks build the 8B shape from this constant, not from copies of it.
    assert _benchmark("capacity_plan").LLADA_8B == LLADA_8B_INSTRUCT_CONFIG
    assert _benchmark("gpu_check").MODELS["llada-8b"].llada_config() == LLADA_8B_INSTRUCT_CONFIG


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("include_bias", True),
        ("include_qkv_bias", True),
        ("bias_for_layer_norm", True),
        ("activation_type", "swiglu"),
        ("activation_type", "gelu"),
        ("block_type", "sequential"),
        ("layer_norm_type", "default"),
        ("alibi", True),
        ("rope", False),
        ("scale_logits", True),
        ("input_emb_norm", True),
        ("attention_layer_norm", True),
        ("block_group_size", 2),
        ("residual_dropout", 0.1),
    ],
)
def test_config_rejects_unsupported_setting(key: str, value: object) -> None:
    cfg = llada_config() | {key: value}
    with pytest.raises(ValueError, match=key):
        llada_config_to_llama(cfg)


def test_config_missing_flag_takes_lladas_default() -> None:
    # LLaDA's ModelConfig defaults block_type to "sequential": a file without it is not Llama.
    cfg = llada_config()
    del cfg["block_type"]
    with pytest.raises(ValueError, match="block_type"):
        llada_config_to_llama(cfg)


def test_state_dict_rename_and_unknown_key() -> None:
    sd = random_llada_state_dict(llada_config())
    out = convert_llada_state_dict(sd)
    p = "model.transformer.blocks.1."
    assert out["model.layers.1.mlp.gate_proj.weight"] is sd[p + "ff_proj.weight"]
    assert out["model.layers.1.mlp.up_proj.weight"] is sd[p + "up_proj.weight"]
    assert out["model.layers.1.mlp.down_proj.weight"] is sd[p + "ff_out.weight"]
    assert out["model.layers.1.self_attn.o_proj.weight"] is sd[p + "attn_out.weight"]
    assert out["lm_head.weight"] is sd["model.transformer.ff_out.weight"]
    assert out["model.norm.weight"] is sd["model.transformer.ln_f.weight"]
    assert len(out) == len(sd)
    for bad in ["model.transformer.blocks.0.q_proj.bias", "model.transformer.wpe.weight", "x"]:
        with pytest.raises(ValueError, match=re.escape(bad)):
            convert_llada_state_dict(sd | {bad: torch.zeros(1)})


# --------------------------------------------------------------------------- forward


def test_logits_match_llada_reference(tiny: TinyLLaDA, loaded) -> None:
    model, _, _ = loaded
    assert model.config.is_causal is False and not model.training
    for row in ROWS:
        ref = reference_logits(tiny.state_dict, tiny.config, row)
        with torch.no_grad():
            got = model(input_ids=torch.tensor([row])).logits[0].double()
        assert got.shape == (len(row), EMBEDDING_SIZE)
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    # The test can tell RoPE conventions apart: the interleaved one is far off.
    wrong = reference_logits(tiny.state_dict, tiny.config, ROWS[1], interleaved_rope=True)
    ref = reference_logits(tiny.state_dict, tiny.config, ROWS[1])
    assert (wrong - ref).abs().max() > 1e-2


def test_left_padding_through_masked_denoiser(tiny: TinyLLaDA, loaded) -> None:
    model, _, ids = loaded
    denoiser = MaskedDenoiser(model, ids.mask_token_id, ids.pad_token_id)
    batch, mask = _left_pad(ROWS, ids.pad_token_id)
    assert not bool(mask.all())  # padding is present
    width = batch.shape[1]
    with torch.no_grad():
        every = denoiser(batch, mask, response_length=width).double()
        last3 = denoiser(batch, mask, response_length=3).double()
    for r, row in enumerate(ROWS):
        ref = reference_logits(tiny.state_dict, tiny.config, row)
        torch.testing.assert_close(every[r, width - len(row) :], ref, atol=TOL, rtol=0)
        torch.testing.assert_close(last3[r], ref[-3:], atol=TOL, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_attention_stays_bidirectional(loaded, padded: bool) -> None:
    model, _, ids = loaded
    denoiser = MaskedDenoiser(model, ids.mask_token_id, ids.pad_token_id)
    rows = ROWS if padded else [ROWS[1]]
    batch, mask = _left_pad(rows, ids.pad_token_id)
    changed = batch.clone()
    changed[:, -1] = ids.mask_token_id  # the last token of every row
    r = 0  # ROWS[0] is padded in the padded batch
    first = batch.shape[1] - len(rows[r])  # its first real column
    with torch.no_grad():
        a = denoiser(batch, mask, response_length=batch.shape[1])[r, first]
        b = denoiser(changed, mask, response_length=batch.shape[1])[r, first]
    assert (a - b).abs().max() > 1e-3


def test_weight_tying_and_single_file(tmp_path: Path) -> None:
    tiny = write_tiny_llada(tmp_path / "tied", weight_tying=True, single_file=True, seed=1)
    model, _, _ = load_llada(tiny.folder, dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    row = ROWS[1]
    with torch.no_grad():
        got = model(input_ids=torch.tensor([row])).logits[0].double()
    torch.testing.assert_close(
        got, reference_logits(tiny.state_dict, tiny.config, row), atol=TOL, rtol=0
    )


def test_dtype_and_no_meta_tensors(tiny: TinyLLaDA) -> None:
    model, _, _ = load_llada(tiny.folder)  # default bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tensors = [*model.parameters(), *model.buffers()]
    assert not any(t.is_meta for t in tensors)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ROWS[0]])).logits
    assert torch.isfinite(out).all()


# --------------------------------------------------------------------------- conversion


def test_convert_round_trip(tiny: TinyLLaDA, loaded, tmp_path: Path) -> None:
    dst = convert_llada(tiny.folder, tmp_path / "llama", dtype=torch.float32, max_shard_size="20KB")
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["is_causal"] is False
    assert (dst / "model.safetensors.index.json").is_file()  # sharded
    saved_ids = json.loads((dst / "tiltmatch.json").read_text())
    assert saved_ids["mask_token_id"] == tiny.mask_id and saved_ids["eot_token_id"] == tiny.eot_id

    model, tok, ids = load_llada(dst, dtype=torch.float32)
    original, original_tok, original_ids = loaded
    assert ids == original_ids
    batch, mask = _left_pad(ROWS, ids.pad_token_id)
    with torch.no_grad():
        a = MaskedDenoiser(model, ids.mask_token_id, ids.pad_token_id)(batch, mask, 4)
        b = MaskedDenoiser(original, ids.mask_token_id, ids.pad_token_id)(batch, mask, 4)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    text = "what is the answer"
    assert tok.encode(text) == original_tok.encode(text)
    with pytest.raises(FileExistsError):
        convert_llada(tiny.folder, dst)


def test_convert_cli_parser(tiny: TinyLLaDA, tmp_path: Path) -> None:
    from tiltmatch.cli import main

    dst = tmp_path / "cli"
    assert main(["convert-llada", str(tiny.folder), str(dst), "--dtype", "float32"]) == 0
    assert (dst / "tiltmatch.json").is_file()


# --------------------------------------------------------------------------- errors


def test_missing_folder_and_files(tiny: TinyLLaDA, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_llada(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape("config.json")):
        load_llada(empty)


def _copy(tiny: TinyLLaDA, dst: Path) -> Path:
    dst.mkdir()
    for f in tiny.folder.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_missing_shard_and_bad_index(tiny: TinyLLaDA, tmp_path: Path) -> None:
    folder = _copy(tiny, tmp_path / "noshard")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("model-00002-of-00002.safetensors")):
        load_llada(folder)
    folder = _copy(tiny, tmp_path / "badindex")
    (folder / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape("model.safetensors.index.json")):
        load_llada(folder)
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(ValueError, match="weight_map"):
        load_llada(folder)


def test_unknown_and_missing_weights(tmp_path: Path) -> None:
    bad = "model.transformer.blocks.0.q_proj.bias"
    tiny = write_tiny_llada(tmp_path / "extra", extra={bad: torch.zeros(32)})
    with pytest.raises(ValueError, match=re.escape(bad)):
        load_llada(tiny.folder)
    tiny = write_tiny_llada(tmp_path / "short", single_file=True)
    sd = dict(tiny.state_dict)
    del sd["model.transformer.blocks.1.up_proj.weight"]
    save_file(sd, str(tiny.folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_llada(tiny.folder)


def test_hub_id_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="GSAI-ML/LLaDA-8B-Instruct"):
        load_llada("GSAI-ML/LLaDA-8B-Instruct")


# --------------------------------------------------------------------------- ids & codec


def test_special_ids_read_from_files(tiny: TinyLLaDA, loaded) -> None:
    _, _, ids = loaded
    assert ids == LLaDASpecialIds(
        mask_token_id=tiny.mask_id,
        eos_token_id=tiny.eos_id,
        pad_token_id=tiny.eos_id,
        eot_token_id=tiny.eot_id,
        bos_token_id=tiny.bos_id,
    )
    assert read_special_ids(tiny.folder) == ids


def test_other_tiltmatch_json_is_passed_over(tiny: TinyLLaDA, tmp_path: Path) -> None:
    # tiltmatch.json written by other code (no special ids in it) must not hide the files'.
    folder = _copy(tiny, tmp_path / "othermeta")
    (folder / "tiltmatch.json").write_text(json.dumps({"task": "maze"}))
    assert read_special_ids(folder) == read_special_ids(tiny.folder)
    (folder / "tiltmatch.json").write_text(
        json.dumps({"mask_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})
    )
    assert read_special_ids(folder).mask_token_id == 1  # an explicit record wins


def test_mask_id_must_agree_with_tokenizer(tiny: TinyLLaDA, tmp_path: Path) -> None:
    folder = _copy(tiny, tmp_path / "disagree")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["mask_token_id"] = SPECIAL_TOKENS["<|reserved_token_0|>"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mask_token_id"):
        read_special_ids(folder)


def test_codec_encodes_one_user_turn_and_one_header(tiny: TinyLLaDA, tmp_path: Path) -> None:
    codec = LLaDACodec.from_pretrained(tiny.folder)
    assert isinstance(codec, PromptCodec)
    assert (codec.mask_token_id, codec.eos_token_id, codec.pad_token_id) == (
        tiny.mask_id,
        tiny.eos_id,
        tiny.eos_id,
    )
    assert codec.vocab_size == EMBEDDING_SIZE
    s = SPECIAL_TOKENS
    header = [s["<|start_header_id|>"], 2, s["<|end_header_id|>"]]  # 2 = "assistant"
    expected = [s["<|startoftext|>"], s["<|start_header_id|>"], 1, s["<|end_header_id|>"]]
    expected += [9, 7, 5, 6, s["<|eot_id|>"], *header]  # "what is the answer"
    assert codec.encode_prompt("  what is the answer ") == expected
    # A template that honours add_generation_prompt gives the same ids.
    honest = write_tiny_llada(tmp_path / "honest", chat_template=HONEST_CHAT_TEMPLATE)
    assert LLaDACodec.from_pretrained(honest.folder).encode_prompt("what is the answer") == expected


def test_codec_decode_cuts_at_end_of_turn_and_eos(tiny: TinyLLaDA) -> None:
    codec = LLaDACodec.from_pretrained(tiny.folder)
    hello, world, the = 3, 4, 5
    assert codec.decode_response([hello, world, tiny.eot_id, the, tiny.eos_id]) == "hello world"
    assert codec.decode_response([the, tiny.eos_id, hello]) == "the"
    assert codec.decode_response([hello, tiny.mask_id, world]) == "hello world"  # mask skipped
    assert codec.decode_response([]) == ""
