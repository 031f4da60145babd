"""A tiny random checkpoint in LLaDA-8B-Instruct's exact on-disk format, for tests.

The files mirror the official ones: ``config.json`` with LLaDA's own keys,
safetensors shards of ``model.transformer.*`` weights with
``model.safetensors.index.json``, and a fast tokenizer (``tokenizer.json`` +
``tokenizer_config.json``) with LLaDA's special tokens and its chat template,
which appends the assistant header whatever ``add_generation_prompt`` says.
The special ids are deliberately not LLaDA's (nor 0, 1, 2), so a test passing
on this checkpoint proves that nothing is hard-coded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

# The official template, verbatim in behaviour: BOS, one header + content + <|eot_id|>
# per message, then the assistant header, unconditionally.
LLADA_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)

# A Llama-3-style template that honours add_generation_prompt, to check the codec
# never appends the header twice whichever kind it meets.
HONEST_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

WORDS = ["[UNK]", "user", "assistant", "hello", "world", "the", "answer", "is", "42", "what"]
# Non-default ids: neither LLaDA's (126080...) nor the 0/1/2 of CharTokenizer.
SPECIAL_TOKENS = {
    "<|startoftext|>": 23,
    "<|endoftext|>": 27,
    "<|start_header_id|>": 24,
    "<|end_header_id|>": 25,
    "<|eot_id|>": 29,
    "<|mdm_mask|>": 31,
    "<|reserved_token_0|>": 26,
    "<|reserved_token_1|>": 28,
    "<|reserved_token_2|>": 30,
}
EMBEDDING_SIZE = 40  # > tokenizer length, as LLaDA's 126464 > 126349


@dataclass(frozen=True)
class TinyLLaDA:
    """A written checkpoint: its folder, config dict and LLaDA-format state dict."""

    folder: Path
    config: dict
    state_dict: dict[str, torch.Tensor]

    @property
    def mask_id(self) -> int:
        return SPECIAL_TOKENS["<|mdm_mask|>"]

    @property
    def eos_id(self) -> int:
        return SPECIAL_TOKENS["<|endoftext|>"]

    @property
    def eot_id(self) -> int:
        return SPECIAL_TOKENS["<|eot_id|>"]

    @property
    def bos_id(self) -> int:
        return SPECIAL_TOKENS["<|startoftext|>"]


def llada_config(weight_tying: bool = False) -> dict:
    """A tiny config.json with the key set of LLaDA-8B-Instruct's own file."""
    eos = SPECIAL_TOKENS["<|endoftext|>"]
    return {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 32,
        "embedding_dropout": 0.0,
        "embedding_size": EMBEDDING_SIZE,
        "eos_token_id": eos,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": SPECIAL_TOKENS["<|mdm_mask|>"],
        "max_sequence_length": 512,  # GSM8K prompts with the chat template are ~110 tokens
        "mlp_hidden_size": 48,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 2,  # grouped kv heads, to check the head-to-kv-head assignment too
        "n_layers": 2,
        "pad_token_id": eos,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 10000.0,  # not LLaDA's 500000: proves the value is read
        "scale_logits": False,
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": EMBEDDING_SIZE,
        "weight_tying": weight_tying,
    }


def random_llada_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under LLaDA's key names, scaled so logits are O(1)."""
    g = torch.Generator().manual_seed(seed)
    d, hidden, vocab = config["d_model"], config["mlp_hidden_size"], config["embedding_size"]
    kv = config["n_kv_heads"] * (d // config["n_heads"])

    def linear(out_dim: int, in_dim: int) -> torch.Tensor:
        return torch.randn(out_dim, in_dim, generator=g) / in_dim**0.5

    def norm() -> torch.Tensor:
        return 1.0 + 0.2 * torch.randn(d, generator=g)

    p = "model.transformer."
    sd = {p + "wte.weight": torch.randn(vocab, d, generator=g), p + "ln_f.weight": norm()}
    if not config["weight_tying"]:
        sd[p + "ff_out.weight"] = linear(vocab, d)
    for i in range(config["n_layers"]):
        b = f"{p}blocks.{i}."
        sd |= {
            b + "attn_norm.weight": norm(),
            b + "q_proj.weight": linear(d, d),
            b + "k_proj.weight": linear(kv, d),
            b + "v_proj.weight": linear(kv, d),
            b + "attn_out.weight": linear(d, d),
            b + "ff_norm.weight": norm(),
            b + "ff_proj.weight": linear(hidden, d),
            b + "up_proj.weight": linear(hidden, d),
            b + "ff_out.weight": linear(d, hidden),
        }
    return sd


def write_tokenizer(folder: Path, chat_template: str = LLADA_CHAT_TEMPLATE) -> None:
    """A word-level fast tokenizer with LLaDA's special tokens at the fixture's ids."""
    vocab = {w: i for i, w in enumerate(WORDS)}
    for i in range(len(WORDS), min(SPECIAL_TOKENS.values())):
        vocab[f"w{i}"] = i
    vocab |= SPECIAL_TOKENS
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t in sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.__getitem__)
        ]
    )
    tok.save(str(folder / "tokenizer.json"))
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in SPECIAL_TOKENS.items()
    }
    tokenizer_config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<|startoftext|>",
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "tokenizer_class": "PreTrainedTokenizerFast",
        "trust_remote_code": True,  # present in the official file; must be ignored
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))


def write_tiny_llada(
    folder: Path,
    *,
    weight_tying: bool = False,
    single_file: bool = False,
    seed: int = 0,
    extra: dict[str, torch.Tensor] | None = None,
    chat_template: str = LLADA_CHAT_TEMPLATE,
) -> TinyLLaDA:
    """Write a tiny LLaDA checkpoint to ``folder``: two shards + index, or one file."""
    folder.mkdir(parents=True, exist_ok=True)
    config = llada_config(weight_tying)
    sd = random_llada_state_dict(config, seed)
    stored = sd | (extra or {})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "bos_token_id": SPECIAL_TOKENS["<|startoftext|>"],
                "eos_token_id": config["eos_token_id"],
                "pad_token_id": config["pad_token_id"],
            }
        )
    )
    write_tokenizer(folder, chat_template)
    meta = {"format": "pt"}
    if single_file:
        save_file(stored, str(folder / "model.safetensors"), metadata=meta)
    else:
        # Interleaved like the official six shards: a block's weights span files.
        names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
        weight_map = {k: names[i % 2] for i, k in enumerate(sorted(stored))}
        for name in names:
            part = {k: v.contiguous() for k, v in stored.items() if weight_map[k] == name}
            save_file(part, str(folder / name), metadata=meta)
        total = sum(v.numel() * v.element_size() for v in stored.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return TinyLLaDA(folder, config, sd)
