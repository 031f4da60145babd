"""Tiny random checkpoints in Dream's and SDAR's exact released formats, and reference forwards.

The folders mirror the releases (Dream-org/Dream-v0-Instruct-7B, JetLM/SDAR-1.7B-Chat):
``config.json`` with the release's own keys (``model_type`` "Dream" / "sdar",
``auto_map`` pointing at remote code that is never run), safetensors shards
under Qwen2 / Qwen3 key names with ``model.safetensors.index.json``, a
``generation_config.json``, and byte-level BPE tokenizer files (``vocab.json``,
``merges.txt``, ``tokenizer_config.json`` with the special tokens and a
Qwen-style chat template; Dream's names its remote ``DreamTokenizer`` class).
The special ids are not the releases' (nor 0/1/2), so passing tests prove that
the ids are read from the files.

``reference_logits`` is an independent forward written from the equations of
the Qwen2 / Qwen3 transformer (RMSNorm, RoPE on contiguous halves, grouped
kv heads, SiLU-gated MLP), with Dream's shifted read-out or SDAR's block-causal
attention, on the raw state dict.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte-to-character table (the base alphabet of a byte-level BPE)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = [], 0
    table = {}
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    chars = [table[b] for b in range(256)]
    return chars


BASE = _bytes_to_unicode()
MERGES = [("a", "b"), ("Ġ", "t")]
N_REGULAR = len(BASE) + len(MERGES)


@dataclass(frozen=True)
class TinyFamily:
    """A written checkpoint: folder, config dict, state dict and special ids."""

    folder: Path
    config: dict
    state_dict: dict[str, torch.Tensor]
    specials: dict[str, int]

    @property
    def mask_id(self) -> int:
        return self.specials["mask"]

    @property
    def eos_id(self) -> int:
        return self.specials["<|endoftext|>"]


def _special_table(mask_token: str) -> dict[str, int]:
    names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", mask_token]
    return {name: N_REGULAR + i for i, name in enumerate(names)}


def write_tokenizer(folder: Path, mask_token: str, tokenizer_class: str) -> dict[str, int]:
    """Byte-level BPE files with Qwen's special tokens; returns their ids."""
    vocab = {c: i for i, c in enumerate(BASE)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    table = _special_table(mask_token)
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in table.items()
    }
    tok_cfg: dict = {
        "added_tokens_decoder": added,
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": tokenizer_class,
        "unk_token": None,
    }
    if tokenizer_class == "DreamTokenizer":  # Dream ships its tokenizer as remote code
        tok_cfg["auto_map"] = {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}
        tok_cfg["mask_token"] = mask_token
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return table


def _random_qwen(cfg: dict, qkv_bias: bool, qk_norm: bool, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or d // heads

    def lin(o: int, i: int) -> torch.Tensor:
        return torch.randn(o, i, generator=g) / i**0.5

    def norm(n: int) -> torch.Tensor:
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    sd = {
        "model.embed_tokens.weight": torch.randn(vocab, d, generator=g),
        "model.norm.weight": norm(d),
        "lm_head.weight": lin(vocab, d),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd |= {
            p + "input_layernorm.weight": norm(d),
            p + "post_attention_layernorm.weight": norm(d),
            p + "self_attn.q_proj.weight": lin(heads * hd, d),
            p + "self_attn.k_proj.weight": lin(kv_heads * hd, d),
            p + "self_attn.v_proj.weight": lin(kv_heads * hd, d),
            p + "self_attn.o_proj.weight": lin(d, heads * hd),
            p + "mlp.gate_proj.weight": lin(inter, d),
            p + "mlp.up_proj.weight": lin(inter, d),
            p + "mlp.down_proj.weight": lin(d, inter),
        }
        if qkv_bias:
            sd |= {
                p + "self_attn.q_proj.bias": 0.1 * torch.randn(heads * hd, generator=g),
                p + "self_attn.k_proj.bias": 0.1 * torch.randn(kv_heads * hd, generator=g),
                p + "self_attn.v_proj.bias": 0.1 * torch.randn(kv_heads * hd, generator=g),
            }
        if qk_norm:
            sd |= {p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd)}
    return sd


def _write_shards(folder: Path, sd: dict[str, torch.Tensor]) -> None:
    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half]}
    shards["model-00002-of-00002.safetensors"] = keys[half:]
    weight_map = {}
    for name, part in shards.items():
        save_file(
            {k: sd[k].contiguous() for k in part}, str(folder / name), metadata={"format": "pt"}
        )
        weight_map |= {k: name for k in part}
    index = {
        "metadata": {"total_size": sum(t.numel() * 4 for t in sd.values())},
        "weight_map": weight_map,
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def write_tiny_dream(folder: Path, seed: int = 0) -> TinyFamily:
    """A Dream-v0-Instruct-7B-format checkpoint with random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = write_tokenizer(folder, "<|mask|>", "DreamTokenizer")
    eos, mask = specials["<|endoftext|>"], specials["<|mask|>"]
    cfg = {
        "architectures": ["DreamModel"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "bos_token_id": eos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "mask_token_id": mask,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "model_type": "Dream",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pad_token_id": eos,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 5000.0,  # not the release's 1e6: proves the value is read
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": N_REGULAR + len(specials) + 3,  # padded past the tokenizer, like 152064
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos, "mask_token_id": mask}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    sd = _random_qwen(cfg, qkv_bias=True, qk_norm=False, seed=seed)
    _write_shards(folder, sd)
    return TinyFamily(folder, cfg, sd, specials | {"mask": mask})


def write_tiny_sdar(folder: Path, seed: int = 0, block_size: int = 4) -> TinyFamily:
    """An SDAR-1.7B-Chat-format checkpoint with random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = write_tokenizer(folder, "<|MASK|>", "Qwen2Tokenizer")
    eos, mask = specials["<|endoftext|>"], specials["<|MASK|>"]
    cfg = {
        "architectures": ["SDARForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_implementation": "flex_attention",
        "bos_token_id": eos,
        "debug": False,
        "eos_token_id": eos,
        "block_size": block_size,
        "mask_token_id": mask,
        "ep_size": 1,
        "fuse_cross_entropy": True,
        "head_dim": 16,  # != hidden / heads: proves head_dim is read
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "micro_forward": False,
        "model_type": "sdar",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 7000,
        "skip_checkpoint": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.52.4",
        "use_cache": False,
        "use_deepep": False,
        "use_sliding_window": False,
        "vocab_size": N_REGULAR + len(specials) + 2,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": eos, "eos_token_id": [eos, specials["<|im_end|>"]]}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    sd = _random_qwen(cfg, qkv_bias=False, qk_norm=True, seed=seed)
    _write_shards(folder, sd)
    return TinyFamily(folder, cfg, sd, specials | {"mask": mask})


# --------------------------------------------------------------------------- reference forward


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each head's two contiguous halves by angle ``pos * theta^(-2j/d)``."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = pos[..., None].float() * inv  # [B, T, d/2]
    cos, sin = torch.cos(ang)[:, None], torch.sin(ang)[:, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference_logits(
    fam: TinyFamily, ids: torch.Tensor, real: torch.Tensor, family: str
) -> torch.Tensor:
    """Logits ``[B, T, V]`` of every column, from the equations (float32).

    ``real``: ``[B, T]`` 1 for real tokens, 0 for padding. Positions count real
    tokens. ``family``: "dream" (bidirectional over real tokens; logits of
    position ``i`` from the hidden state at ``i - 1``, the first column its own)
    or "sdar" (block-causal over real-token positions, no shift).
    """
    cfg, sd = fam.config, fam.state_dict
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    eps, theta = cfg["rms_norm_eps"], float(cfg["rope_theta"])
    b, t = ids.shape
    pos = (real.cumsum(-1) - 1).clamp(min=0)
    key_ok = real.bool()[:, None, :].expand(b, t, t)
    if family == "sdar":
        blk = pos // cfg["block_size"]
        key_ok = key_ok & (blk[:, None, :] <= blk[:, :, None])
    h = sd["model.embed_tokens.weight"][ids]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        x = _rms(h, sd[p + "input_layernorm.weight"], eps)

        def proj(name: str, n: int, x: torch.Tensor = x, p: str = p) -> torch.Tensor:
            y = x @ sd[p + f"self_attn.{name}.weight"].T
            if p + f"self_attn.{name}.bias" in sd:
                y = y + sd[p + f"self_attn.{name}.bias"]
            return y.view(b, t, n, hd).transpose(1, 2)  # [B, n, T, hd]

        q, k, v = proj("q_proj", heads), proj("k_proj", kv), proj("v_proj", kv)
        if p + "self_attn.q_norm.weight" in sd:  # Qwen3: RMSNorm of each head's q and k
            q = _rms(q, sd[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, sd[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, pos, theta), _rope(k, pos, theta)
        group = heads // kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(~key_ok[:, None], float("-inf"))
        # A padded query row with no visible key: any finite value (never read).
        scores = torch.where(torch.isinf(scores).all(-1, keepdim=True), 0.0, scores)
        att = torch.softmax(scores, -1) @ v
        h = h + att.transpose(1, 2).reshape(b, t, heads * hd) @ sd[p + "self_attn.o_proj.weight"].T
        x = _rms(h, sd[p + "post_attention_layernorm.weight"], eps)
        gate = x @ sd[p + "mlp.gate_proj.weight"].T
        up = x @ sd[p + "mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    logits = _rms(h, sd["model.norm.weight"], eps) @ sd["lm_head.weight"].T
    if family == "dream":
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits
