"""A tiny random checkpoint in LLaDA2's exact released format (inclusionAI/LLaDA2.0-mini).

``config.json`` with the release's own keys (``model_type`` "llada2_moe", architectures
``LLaDA2MoeModelLM``, ``auto_map`` pointing at remote code that is never run, the MoE and
routing settings, partial RoPE, q/k norms), safetensors shards under the release's key
names (fused ``query_key_value``, ``dense``, ``word_embeddings``, experts as a list of
MLPs, ``gate.weight`` and the ``gate.expert_bias`` buffer, ``shared_experts``) with
``model.safetensors.index.json``, a ``generation_config.json``, and a fast tokenizer
(``tokenizer.json`` byte-level BPE, ``tokenizer_config.json`` with the role-tagged chat
template and the special tokens ``<|endoftext|>``, ``<|mask|>``, ``<|role_end|>``).
Layer 0 is dense (``first_k_dense_replace`` 1), layer 1 a mixture of 8 experts in 4
groups. ``head_dim`` is not ``hidden / heads`` and the special ids are not the release's,
so passing tests prove both are read from the files. The expert bias is random with both
signs, so the group-limited top-k and its ``-inf`` masking decide real choices.

Used by ``tests/test_llada2.py`` and ``benchmarks/family_parity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from family_fixture import BASE, MERGES, TinyFamily, _write_shards

CHAT_TEMPLATE = (
    "<role>SYSTEM</role>detailed thinking off<|role_end|>"
    "{% for message in messages %}{% if message['role'] == 'user' %}<role>HUMAN</role>"
    "{% else %}<role>ASSISTANT</role>{% endif %}{{ message['content'] }}<|role_end|>"
    "{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<role>", "</role>", "<|role_end|>", "<|mask|>"]


def write_fast_tokenizer(folder: Path) -> dict[str, int]:
    """A byte-level BPE ``tokenizer.json`` with LLaDA2's special tokens; returns their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(BASE)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    table = {t: tok.token_to_id(t) for t in SPECIALS}
    tok_cfg = {
        "bos_token": "<|startoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return table


def llada2_release_config(vocab_size: int, eos: int) -> dict:
    """The LLaDA2.0-mini ``config.json`` key set, at toy sizes."""
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
            "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
            "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
        },
        "dtype": "bfloat16",
        "embedding_dropout": 0.0,
        "first_k_dense_replace": 1,
        "head_dim": 16,  # != hidden / heads: proves head_dim is read
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "model_type": "llada2_moe",
        "moe_intermediate_size": 12,
        "moe_router_enable_expert_bias": True,
        "n_group": 4,
        "norm_head": False,
        "norm_softmax": False,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts": 8,
        "num_experts_per_tok": 3,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "num_shared_experts": 1,
        "output_dropout": 0.0,
        "output_router_logits": False,
        "pad_token_id": eos,
        "partial_rotary_factor": 0.5,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 600.0,  # not the release's 600000: proves the value is read
        "rotary_dim": 8,
        "routed_scaling_factor": 2.5,
        "router_dtype": "fp32",
        "score_function": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 2,
        "transformers_version": "4.56.1",
        "use_bias": False,
        "use_cache": False,
        "use_qk_norm": True,
        "use_qkv_bias": False,
        "use_rmsnorm": True,
        "using_split_qkv_in_self_attention": False,
        "vocab_size": vocab_size,
    }


def _random_llada2(cfg: dict, seed: int, head_scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, vocab, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def lin(o: int, i: int) -> torch.Tensor:
        return torch.randn(o, i, generator=g) / i**0.5

    def norm(n: int) -> torch.Tensor:
        return 1.0 + 0.2 * torch.randn(n, generator=g)

    def mlp(prefix: str, inter: int) -> dict[str, torch.Tensor]:
        return {
            prefix + "gate_proj.weight": lin(inter, d),
            prefix + "up_proj.weight": lin(inter, d),
            prefix + "down_proj.weight": lin(d, inter),
        }

    sd = {
        "model.word_embeddings.weight": torch.randn(vocab, d, generator=g),
        "model.norm.weight": norm(d),
        "lm_head.weight": head_scale * lin(vocab, d),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd |= {
            p + "input_layernorm.weight": norm(d),
            p + "post_attention_layernorm.weight": norm(d),
            p + "attention.query_key_value.weight": lin((heads + 2 * kv) * hd, d),
            p + "attention.query_layernorm.weight": norm(hd),
            p + "attention.key_layernorm.weight": norm(hd),
            p + "attention.dense.weight": lin(d, heads * hd),
        }
        if i < cfg["first_k_dense_replace"]:
            sd |= mlp(p + "mlp.", cfg["intermediate_size"])
            continue
        inter, experts = cfg["moe_intermediate_size"], cfg["num_experts"]
        for e in range(experts):
            sd |= mlp(p + f"mlp.experts.{e}.", inter)
        sd |= mlp(p + "mlp.shared_experts.", inter * cfg["num_shared_experts"])
        sd[p + "mlp.gate.weight"] = 2.0 * lin(experts, d)
        sd[p + "mlp.gate.expert_bias"] = 0.3 * torch.randn(experts, generator=g)
    return sd


def write_tiny_llada2(folder: Path, seed: int = 0, head_scale: float = 1.0) -> TinyFamily:
    """A LLaDA2.0-mini-format checkpoint with random weights (``head_scale`` sharpens the
    output head: large values make confident predictions, for threshold decoding)."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = write_fast_tokenizer(folder)
    eos, mask = specials["<|endoftext|>"], specials["<|mask|>"]
    cfg = llada2_release_config(len(BASE) + len(MERGES) + len(SPECIALS) + 6, eos)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = {"bos_token_id": specials["<|startoftext|>"], "eos_token_id": eos, "pad_token_id": eos}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2))
    sd = _random_llada2(cfg, seed, head_scale)
    # The release's generate does not ban the mask token: a zero output row keeps a random
    # model from predicting it, as a trained one never does.
    sd["lm_head.weight"][mask] = 0.0
    _write_shards(folder, sd)
    return TinyFamily(folder, cfg, sd, specials | {"mask": mask})
