"""Large-model loading options of ``model:`` in the run config: the base's dtype and 4-bit NF4.

A 4-bit base is quantised by bitsandbytes while it is loaded (an optional
dependency, CUDA only); an unquantised base is cast to ``model.dtype`` once
loaded. Only adapters are trained on a 4-bit base (the config refuses
``load_in_4bit`` without ``lora``), see :mod:`tiltmatch.training.lora`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from transformers import PreTrainedModel

from tiltmatch.models.config import ModelConfig
from tiltmatch.models.dtypes import torch_dtype
from tiltmatch.models.registry import family_names, family_spec


def bitsandbytes_available() -> bool:
    """Whether the optional bitsandbytes package (4-bit bases) is importable."""
    return importlib.util.find_spec("bitsandbytes") is not None


def load_4bit_base(
    path: str | Path,
    compute_dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cuda",
) -> PreTrainedModel:
    """A Llama / Qwen2 / Qwen3-format checkpoint (``tiltmatch convert-llada``, or a saved
    Dream / block diffusion denoiser) with NF4 weights.

    Linear layers are quantised to 4-bit NF4 (double quantisation) by
    bitsandbytes at load time and compute in ``compute_dtype``; transformers
    leaves the output projection unquantised. Attention is made bidirectional
    (``is_causal=False``) whatever the folder's config says, as
    :func:`tiltmatch.models.llada.load_llada` does. LLaDA's own checkpoint format is not
    read here: convert it once first.
    """
    if not bitsandbytes_available():
        raise ImportError(
            "model.load_in_4bit needs the bitsandbytes package (and a CUDA GPU), which is not "
            "installed: pip install bitsandbytes, or set model.load_in_4bit=false"
        )
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    native = sorted({family_spec(name).architecture for name in family_names()})
    if model_type not in native:
        raise ValueError(
            f"{folder} holds a {model_type!r} checkpoint; a 4-bit base is loaded from a "
            f"transformers-format folder ({' / '.join(native)}): run 'tiltmatch convert-llada "
            f"{folder} DST' once for LLaDA, or save a Dream / SDAR model with save_pretrained"
        )
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    config.is_causal = False  # every denoiser family's attention is non-causal (models.family)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        config=config,
        quantization_config=quantization,
        dtype=compute_dtype,
        device_map={"": str(torch.device(device))},
    )
    model.eval()
    return model


def prepare_base_model(model: PreTrainedModel, config: ModelConfig) -> PreTrainedModel:
    """Apply ``model.dtype`` to an already loaded (unquantised) base; returns it."""
    if config.load_in_4bit:
        raise ValueError("a 4-bit base is quantised while loading: use load_4bit_base")
    # In place (modules cast their own tensors); transformers' decorated .to confuses mypy.
    model.to(dtype=torch_dtype(config.dtype))  # type: ignore[call-arg]
    return model
