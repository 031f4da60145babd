"""A tiny random checkpoint in MDLM's exact released format (kuleshov-group/mdlm-owt).

``config.json`` with the release's keys (``model_type`` "mdlm", architectures ``MDLM``,
``auto_map`` pointing at remote code that is never run, ``hidden_dim``, ``cond_dim``,
``n_blocks``, ``n_heads``, ``model_length``, ``dropout``, ``time_conditioning``), one
``model.safetensors`` under the release's key names (``backbone.vocab_embed.embedding``,
``backbone.sigma_map.mlp.{0,2}``, the persistent ``backbone.rotary_emb.inv_freq``,
``backbone.blocks.N.{norm1, attn_qkv, attn_out, norm2, mlp.0, mlp.2, adaLN_modulation}``,
``backbone.output_layer.{norm_final, linear, adaLN_modulation}``), and GPT-2-style
tokenizer files (``vocab.json`` with ``<|endoftext|>`` as its last entry, ``merges.txt``,
``tokenizer_config.json``): the mask is the id after the tokenizer's last, as MDLM adds it.
The adaptive-norm weights are random (the release initialises them at zero and trains
them), so the conditioning changes every block.

Used by ``tests/test_mdlm.py`` and ``benchmarks/family_parity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from family_fixture import BASE, MERGES, TinyFamily
from safetensors.torch import save_file

END_OF_TEXT = "<|endoftext|>"


def write_gpt2_tokenizer(folder: Path) -> dict[str, int]:
    """GPT-2-style files: a byte-level BPE whose last vocabulary entry is ``<|endoftext|>``."""
    vocab = {c: i for i, c in enumerate(BASE)}
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    vocab[END_OF_TEXT] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    tok_cfg = {
        "add_prefix_space": False,
        "bos_token": END_OF_TEXT,
        "eos_token": END_OF_TEXT,
        "model_max_length": 1024,
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": END_OF_TEXT,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    return {END_OF_TEXT: vocab[END_OF_TEXT], "mask": len(vocab)}


def mdlm_release_config(vocab_size: int, time_conditioning: bool) -> dict:
    """The mdlm-owt ``config.json`` key set, at toy sizes."""
    return {
        "architectures": ["MDLM"],
        "auto_map": {
            "AutoConfig": "configuration_mdlm.MDLMConfig",
            "AutoModelForMaskedLM": "modeling_mdlm.MDLM",
        },
        "cond_dim": 12,
        "dropout": 0.1,
        "hidden_dim": 32,
        "model_length": 96,
        "model_type": "mdlm",
        "n_blocks": 2,
        "n_heads": 4,
        "return_dict": False,
        "time_conditioning": time_conditioning,
        "torch_dtype": "float32",
        "transformers_version": "4.38.2",
        "vocab_size": vocab_size,
    }


def _random_mdlm(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d, c, vocab = cfg["hidden_dim"], cfg["cond_dim"], cfg["vocab_size"]
    head = d // cfg["n_heads"]

    def lin(o: int, i: int) -> torch.Tensor:
        return torch.randn(o, i, generator=g) / i**0.5

    def vec(n: int, scale: float = 0.1) -> torch.Tensor:
        return scale * torch.randn(n, generator=g)

    p = "backbone."
    sd = {
        p + "vocab_embed.embedding": torch.randn(vocab, d, generator=g),
        p + "sigma_map.mlp.0.weight": lin(c, 256),
        p + "sigma_map.mlp.0.bias": vec(c),
        p + "sigma_map.mlp.2.weight": lin(c, c),
        p + "sigma_map.mlp.2.bias": vec(c),
        p + "rotary_emb.inv_freq": 1.0 / (10_000 ** (torch.arange(0, head, 2).float() / head)),
        p + "output_layer.norm_final.weight": 1.0 + vec(d, 0.2),
        p + "output_layer.linear.weight": lin(vocab, d),
        p + "output_layer.linear.bias": vec(vocab),
        p + "output_layer.adaLN_modulation.weight": lin(2 * d, c),
        p + "output_layer.adaLN_modulation.bias": vec(2 * d),
    }
    for i in range(cfg["n_blocks"]):
        b = p + f"blocks.{i}."
        sd |= {
            b + "norm1.weight": 1.0 + vec(d, 0.2),
            b + "attn_qkv.weight": lin(3 * d, d),
            b + "attn_out.weight": lin(d, d),
            b + "norm2.weight": 1.0 + vec(d, 0.2),
            b + "mlp.0.weight": lin(4 * d, d),
            b + "mlp.0.bias": vec(4 * d),
            b + "mlp.2.weight": lin(d, 4 * d),
            b + "mlp.2.bias": vec(d),
            b + "adaLN_modulation.weight": lin(6 * d, c),
            b + "adaLN_modulation.bias": vec(6 * d),
        }
    return sd


def write_tiny_mdlm(folder: Path, seed: int = 0, time_conditioning: bool = False) -> TinyFamily:
    """An mdlm-owt-format checkpoint with random weights (one ``model.safetensors``)."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = write_gpt2_tokenizer(folder)
    cfg = mdlm_release_config(specials["mask"] + 1, time_conditioning)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = _random_mdlm(cfg, seed)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return TinyFamily(folder, cfg, sd, specials)
