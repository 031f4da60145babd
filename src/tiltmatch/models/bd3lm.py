"""BD3-LM (kuleshov-group/bd3lms; ``kuleshov-group/bd3lm-owt-block_size{4,8,16}``): MDLM's
DiT with block-causal attention, in this package's own implementation.

The released Hugging Face files (``models/hf/modeling_bd3lm.py``,
``configuration_bd3lm.py``) were read for facts; nothing of them is run or copied. The
network is MDLM's DiT under the same module names (``backbone.vocab_embed.embedding``,
``backbone.sigma_map.mlp``, the persistent ``backbone.rotary_emb.inv_freq``,
``backbone.blocks.N.{norm1, attn_qkv, attn_out, norm2, mlp.0, mlp.2, adaLN_modulation}``,
``backbone.output_layer.{norm_final, linear, adaLN_modulation}``), so this module builds on
:mod:`tiltmatch.models.mdlm`'s classes and adds only what differs:

- attention: at inference (the released ``sample_mode``) the sequence is cut into blocks of
  the config's ``block_size`` counted from position 0, and a query sees the keys of its own
  block and of every earlier one (the clean-clean quarter of the training mask,
  ``block_diff_mask``, sliced to the sequence). Training runs the noisy and the clean
  sequence side by side (``cross_attn``: noisy block ``b`` sees its own noisy block and the
  clean blocks before it); a decoding state of clean finished blocks and a partly masked
  active one gets the same active-block logits from the one-stream block-causal forward,
  which is what the released sampler (and this package) runs. The mask is the family hook
  ``block_causal`` (:mod:`tiltmatch.models.family`): a 2-D padding mask given to
  :class:`BD3LMDenoiser` directly is turned into it, blocks counted over real tokens.
- ``adaln: false`` (a released option): no time embedder and no modulation anywhere; each
  block is ``x + attn_out(attention(norm1(x)))`` then ``x + mlp(norm2(x))`` and the output
  ``linear(norm_final(x))``. Written here as MDLM's blocks with an identity modulation
  (shift 0, scale 0, gate 1) that holds no weights (:class:`IdentityModulation`).
- ``var_min: true``: two stored scalar buffers, ``sampling_eps_min`` and
  ``sampling_eps_max`` (the clipped noise schedule found in training). Loaded and saved so
  that the release loads strictly; nothing reads them here.
- SUBS, the time embedding and the GPT-2 tokenizer (50257 tokens, the mask the id after)
  are MDLM's. ``time_conditioning: false`` as released: ``sigma`` is replaced by 0, so the
  network is a function of the partly masked sequence alone. A time-conditioned BD3-LM is
  refused: its ``t`` is the active block's, which the adapter does not know.
- Every sequence starts with ``<|endoftext|>`` (``ignore_bos``: the released sampler sets
  position 0 to it and training never masks it), so an empty prompt is that one token
  (:class:`BD3LMCodec`), and the first block holds it and ``block_size - 1`` response tokens.

Refused by name: ``causal: true`` (the autoregressive baseline), ``cross_attn: false`` (no
block mask at all), ``time_conditioning: true``. ``attn_backend`` (``flex`` or ``sdpa``)
changes only how the released code evaluates the same mask and is not read.

Decoding is the package's block decoder (``FAMILY.decoders``; docs/families.md says which
settings give the released sampler's law). Public names: :data:`FAMILY`,
:class:`BD3LMConfig`, :class:`BD3LMDenoiser`, :class:`BD3LMCodec`, :func:`bd3lm_config`,
:func:`load_bd3lm`, :data:`LORA_TARGETS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from tiltmatch.models.denoiser import TinyModelSpec
from tiltmatch.models.family import block_causal_mask
from tiltmatch.models.mdlm import (
    LORA_TARGETS,
    DDiTBlock,
    DDiTFinalLayer,
    MDLMBackbone,
    MDLMCodec,
    MDLMConfig,
    MDLMDenoiser,
    load_dit_folder,
)
from tiltmatch.models.registry import BLOCK_SIZE_KEY, FAMILY_KEY, FamilySpec

__all__ = [
    "FAMILY",
    "LORA_TARGETS",
    "BD3LMCodec",
    "BD3LMConfig",
    "BD3LMDenoiser",
    "bd3lm_config",
    "load_bd3lm",
]

NAME = "bd3lm"
#: the ``model_type`` of this package's BD3-LM classes (the release's is "bd3lm")
MODEL_TYPE = "tiltmatch_bd3lm"
RELEASED_MODEL_TYPES = ("bd3lm",)
RELEASED_ARCHITECTURES = ("BD3LM",)
_REQUIRED = ("vocab_size", "hidden_dim", "cond_dim", "n_blocks", "n_heads", "block_size")
#: why DTM's trajectory states are refused (docs/families.md, "BD3-LM")
TRAJECTORY_REFUSAL = (
    "a trajectory state's later blocks are read by the network given a partly masked "
    "active block, which BD3-LM never saw in training (its noisy blocks see clean ones "
    "only), so the teacher there is not the sampler's posterior: use dtm.states=block"
)


class BD3LMConfig(MDLMConfig):
    """The settings of :class:`BD3LMDenoiser`: MDLM's under the release's key names, plus
    ``block_size`` (also recorded as ``dllm_block_size``), ``adaln`` and ``var_min``."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        block_size: int = 4,
        adaln: bool = True,
        var_min: bool = True,
        sampling_eps_min: float = 1e-3,
        sampling_eps_max: float = 0.999,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("time_conditioning"):
            raise ValueError(
                "BD3-LM with time_conditioning: true is not supported (its noise level is the "
                "active block's, which the denoiser is not told)"
            )
        if int(block_size) < 1:
            raise ValueError(f"BD3-LM block_size {block_size} must be >= 1")
        self.block_size = int(block_size)
        self.adaln = bool(adaln)
        self.var_min = bool(var_min)
        self.sampling_eps_min = float(sampling_eps_min)
        self.sampling_eps_max = float(sampling_eps_max)
        kwargs[BLOCK_SIZE_KEY] = self.block_size
        kwargs.setdefault(FAMILY_KEY, NAME)
        super().__init__(**kwargs)


class IdentityModulation(nn.Module):
    """``adaln: false``: the modulation of a block (shift, scale, gate, twice) or of the output
    layer (shift, scale) with no weights: every shift and scale 0, every gate 1, so
    ``modulate`` is the identity and the residuals are added unscaled, as released."""

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.dim, self.chunks = dim, chunks

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """``[N, chunks * dim]`` for conditioning ``[N, ...]``: zeros, gates (every third
        chunk) ones."""
        out = c.new_zeros(c.shape[0], self.chunks, self.dim)
        out[:, 2::3] = 1.0
        return out.flatten(1)


class NoConditioning(nn.Module):
    """``adaln: false``: no time embedder; the conditioning is a placeholder ``[B, 1]`` of
    zeros that :class:`IdentityModulation` reads only for its shape."""

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """Zeros ``[B, 1]``."""
        return torch.zeros(sigma.shape[0], 1, device=sigma.device)


def strip_modulation(backbone: MDLMBackbone) -> None:
    """Turn MDLM's backbone into the release's ``adaln: false`` one: the time embedder and
    every ``adaLN_modulation`` removed (they are not stored), identities in their place."""
    dim = backbone.config.hidden_dim
    backbone.sigma_map = NoConditioning()  # type: ignore[assignment]
    for module in backbone.modules():
        if isinstance(module, DDiTBlock):
            module.adaLN_modulation = IdentityModulation(dim, 6)  # type: ignore[assignment]
        elif isinstance(module, DDiTFinalLayer):
            module.adaLN_modulation = IdentityModulation(dim, 2)  # type: ignore[assignment]


class BD3LMDenoiser(MDLMDenoiser):
    """BD3-LM: MDLM's DiT and SUBS with block-causal attention over blocks of
    ``config.block_size``.

    Takes what every family's class takes (``input_ids``, a 2-D padding mask or a 4-D
    boolean one, ``position_ids``, a transformers ``Cache``, ``logits_to_keep``) and returns
    SUBS log-probabilities as :class:`MDLMDenoiser` does. A 2-D mask (or none) is made
    block-causal here, blocks and (unless given) positions counted over its real tokens, so
    a direct call is the released inference forward; the adapter hands over the 4-D mask
    and the positions itself.
    """

    config_class = BD3LMConfig  # type: ignore[assignment]  # MDLMConfig, narrowed

    def __init__(self, config: BD3LMConfig) -> None:
        super().__init__(config)
        if not config.adaln:
            strip_modulation(self.backbone)
        if config.var_min:
            self.register_buffer("sampling_eps_min", torch.tensor(config.sampling_eps_min))
            self.register_buffer("sampling_eps_max", torch.tensor(config.sampling_eps_max))

    def block_mask(
        self, attention_mask: torch.Tensor | None, input_ids: torch.Tensor, held: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The boolean ``[B, 1, T, held + T]`` block-causal mask of the forward's queries
        (the last ``T`` columns) from a 2-D padding mask over all ``held + T`` keys (none:
        every key real), and the queries' positions counted over real tokens."""
        rows, width = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(rows, held + width, device=input_ids.device)
        if attention_mask.shape[1] != held + width:
            raise ValueError(
                f"the 2-D attention mask must cover the {held} cached and {width} new columns"
            )
        real = attention_mask.bool()
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        config = self.config
        assert isinstance(config, BD3LMConfig)
        mask = block_causal_mask(real, positions, config.block_size)
        return mask[:, :, -width:, :], positions[:, -width:]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        sigma: torch.Tensor | None = None,
        raw: bool = False,
        past_key_values: Cache | None = None,
    ) -> CausalLMOutputWithPast:
        """SUBS log-probabilities (``raw``: the DiT's logits) of the kept columns, under the
        block-causal mask."""
        held_by = cache if cache is not None else past_key_values
        if attention_mask is None or attention_mask.dim() == 2:
            held = held_by.get_seq_length() if held_by is not None else 0
            attention_mask, real_positions = self.block_mask(attention_mask, input_ids, held)
            position_ids = real_positions if position_ids is None else position_ids
        return super().forward(
            input_ids,
            attention_mask,
            position_ids,
            cache,
            use_cache,
            logits_to_keep,
            sigma,
            raw,
            past_key_values,
        )


# --------------------------------------------------------------------------- the release


def bd3lm_config(cfg: Mapping[str, Any]) -> BD3LMConfig:
    """The :class:`BD3LMConfig` of a released (or saved) ``config.json`` dict; a missing size
    and a setting this forward does not compute are refused by name."""
    for key in _REQUIRED:
        if cfg.get(key) is None:
            raise ValueError(f"BD3-LM config has no {key!r}: it is required to build the model")
    if cfg.get("causal"):
        raise ValueError(
            "BD3-LM config causal: true is the autoregressive baseline, not a diffusion model"
        )
    if cfg.get("cross_attn", True) is False:
        raise ValueError(
            "BD3-LM config cross_attn: false has no block-causal mask (an MDLM in BD3-LM's "
            "format): not supported"
        )
    hidden, heads = int(cfg["hidden_dim"]), int(cfg["n_heads"])
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"BD3-LM config: hidden_dim {hidden} must split into {heads} even heads")
    extras = {k: cfg[k] for k in ("mask_token_id", "eos_token_id") if cfg.get(k) is not None}
    return BD3LMConfig(
        block_size=int(cfg["block_size"]),
        adaln=bool(cfg.get("adaln", True)),
        var_min=bool(cfg.get("var_min", True)),
        sampling_eps_min=float(cfg.get("sampling_eps_min", 1e-3)),
        sampling_eps_max=float(cfg.get("sampling_eps_max", 0.999)),
        vocab_size=int(cfg["vocab_size"]),
        model_length=int(cfg.get("model_length") or 1024),
        hidden_dim=hidden,
        cond_dim=int(cfg["cond_dim"]),
        n_blocks=int(cfg["n_blocks"]),
        n_heads=heads,
        dropout=float(cfg.get("dropout", 0.1)),
        time_conditioning=bool(cfg.get("time_conditioning", False)),
        **extras,
    )


class BD3LMCodec(MDLMCodec):
    """MDLM's GPT-2 codec, except that every prompt starts with ``<|endoftext|>``, the empty
    one too: BD3-LM's sequences begin with it (the released sampler's position 0)."""

    def encode_prompt(self, prompt: str) -> list[int]:
        """``<|endoftext|>`` and the prompt's tokens (none for an empty prompt)."""
        tokens: Sequence[int] = self.tokenizer.encode(prompt, add_special_tokens=False)
        return [self.eos_token_id, *tokens] if prompt else [self.eos_token_id]


def load_bd3lm(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[BD3LMDenoiser, BD3LMCodec]:
    """A BD3-LM folder (released, or saved from this class) as model and codec
    (:func:`~tiltmatch.models.mdlm.load_dit_folder`)."""
    return load_dit_folder(
        path,
        "a BD3-LM",
        FAMILY,
        lambda cfg: BD3LMDenoiser(bd3lm_config(cfg)),
        BD3LMCodec,
        dtype,
        device,
    )


def load_bd3lm_folder(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[BD3LMDenoiser, BD3LMCodec]:
    """``FAMILY.load``: :func:`load_bd3lm` on the CPU."""
    return load_bd3lm(path, dtype=dtype)


def tiny_bd3lm_config(vocab_size: int, spec: TinyModelSpec) -> BD3LMConfig:
    """A tiny BD3-LM (``FAMILY.tiny_config``): adaLN and the clipping buffers as released,
    blocks of ``spec.block_size``, the character tokenizer's mask id 1."""
    return BD3LMConfig(
        block_size=spec.block_size,
        vocab_size=vocab_size,
        model_length=spec.max_positions,
        hidden_dim=spec.hidden_size,
        cond_dim=max(2, spec.hidden_size // 4),
        n_blocks=spec.num_layers,
        n_heads=spec.num_heads,
        dropout=0.0,
        mask_token_id=1,
    )


AutoConfig.register(MODEL_TYPE, BD3LMConfig, exist_ok=True)
AutoModelForCausalLM.register(BD3LMConfig, BD3LMDenoiser, exist_ok=True)

#: BD3-LM in the family registry: MDLM's DiT, block-causal, decoded by the block decoder
FAMILY = FamilySpec(
    name=NAME,
    label="BD3-LM (block diffusion DiT)",
    architecture=MODEL_TYPE,
    model_class=BD3LMDenoiser,
    load=load_bd3lm_folder,
    tiny_config=tiny_bd3lm_config,
    block_causal=True,
    model_types=RELEASED_MODEL_TYPES,
    architectures=RELEASED_ARCHITECTURES,
    decoders={"exact": "block", "parallel": "block+parallel"},
    refuses_states={"trajectory": TRAJECTORY_REFUSAL},
    lora_targets=LORA_TARGETS,
)
