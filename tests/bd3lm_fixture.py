"""A tiny random checkpoint in BD3-LM's exact released format
(kuleshov-group/bd3lm-owt-block_size{4,8,16}, written by the release's ``push_to_hf.py``).

``config.json`` with the keys ``BD3LMConfig`` saves (``model_type`` "bd3lm", architectures
``BD3LM``, ``auto_map`` pointing at remote code that is never run, ``block_size``,
``adaln``, ``cross_attn``, ``causal``, ``attn_backend``, ``var_min``,
``sampling_eps_min`` / ``_max``, MDLM's sizes), one ``model.safetensors`` under the
release's key names (MDLM's DiT under ``backbone.*``; without ``sigma_map`` and the
``adaLN_modulation`` layers when ``adaln`` is false) plus the two stored scalars
``sampling_eps_min`` and ``sampling_eps_max`` (given values other than the config's, as
training's clipped-schedule search leaves them), and GPT-2-style tokenizer files (the
release names GPT-2's; the mask is the id after it).

Used by ``tests/test_bd3lm.py`` and ``benchmarks/bd3lm_parity.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from family_fixture import TinyFamily
from mdlm_fixture import _random_mdlm, write_gpt2_tokenizer
from safetensors.torch import save_file

#: the stored clipping scalars (the config keeps the defaults, as the release's does)
STORED_EPS = {"sampling_eps_min": 0.3, "sampling_eps_max": 0.8}


def bd3lm_release_config(vocab_size: int, block_size: int, adaln: bool) -> dict:
    """The released ``config.json`` key set, at toy sizes."""
    repo = f"kuleshov-group/bd3lm-owt-block_size{block_size}"
    return {
        "_name_or_path": repo,
        "adaln": adaln,
        "architectures": ["BD3LM"],
        "attn_backend": "flex",
        "auto_map": {
            "AutoConfig": f"{repo}--configuration_bd3lm.BD3LMConfig",
            "AutoModelForMaskedLM": f"{repo}--modeling_bd3lm.BD3LM",
        },
        "block_size": block_size,
        "causal": False,
        "cond_dim": 12,
        "cross_attn": True,
        "dropout": 0.1,
        "hidden_dim": 32,
        "model_length": 48,
        "model_type": "bd3lm",
        "n_blocks": 2,
        "n_heads": 4,
        "return_dict": False,
        "sampling_eps_max": 0.999,
        "sampling_eps_min": 0.001,
        "time_conditioning": False,
        "torch_dtype": "float32",
        "transformers_version": "4.49.0",
        "var_min": True,
        "vocab_size": vocab_size,
    }


def write_tiny_bd3lm(
    folder: Path, seed: int = 0, block_size: int = 4, adaln: bool = True
) -> TinyFamily:
    """A bd3lm-owt-format checkpoint with random weights (one ``model.safetensors``)."""
    folder.mkdir(parents=True, exist_ok=True)
    specials = write_gpt2_tokenizer(folder)
    cfg = bd3lm_release_config(specials["mask"] + 1, block_size, adaln)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    sd = _random_mdlm(cfg, seed)
    if not adaln:
        sd = {k: v for k, v in sd.items() if "adaLN_modulation" not in k and "sigma_map" not in k}
    sd |= {k: torch.tensor(v) for k, v in STORED_EPS.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return TinyFamily(folder, cfg, sd, specials)
