"""MDLM (kuleshov-group/mdlm, the OpenWebText model ``kuleshov-group/mdlm-owt``): the
masked diffusion DiT with adaptive layer norm, in this package's own implementation.

transformers has no class for MDLM, and its released modeling code needs flash-attn; the
family brings its own :class:`MDLMDenoiser`, a transformers ``PreTrainedModel`` whose
module names are the release's (``backbone.vocab_embed.embedding``, ``backbone.blocks.N.
attn_qkv``, ``...adaLN_modulation``, ``backbone.output_layer.linear``, the persistent
``backbone.rotary_emb.inv_freq``), so the released safetensors load by name alone,
strictly. What the released forward (``models/dit.py`` and ``diffusion.py``) does, and what
is written here from it:

- ``c = silu(sigma_map(sigma))``: the noise level ``sigma`` through a sinusoidal embedding
  (256 frequencies, max period 10000, cos then sin) and a two-layer SiLU MLP to
  ``cond_dim``. With ``time_conditioning: false`` (the released OWT model) the released
  forward replaces ``sigma`` by 0 before embedding it, so ``c`` is a constant of the
  weights; docs/families.md says what a DTM stage feeds and why the tilt identity holds.
- ``n_blocks`` DiT blocks, each modulated by ``c``: ``(shift, scale, gate) x 2 =
  adaLN_modulation(c)``; ``x + gate_msa * attn_out(attention(modulate(norm1(x))))`` then
  ``x + gate_mlp * mlp(modulate(norm2(x)))``, ``modulate(h) = h * (1 + scale) + shift``;
  LayerNorm without bias, computed in float32, times its weight; attention over one fused
  ``attn_qkv`` (``[3, heads, head_dim]`` per position), rotary on the whole head (contiguous
  halves, base 10000, positions from 0), bidirectional, scale ``head_dim ** -0.5``; MLP
  ``Linear(4 x) -> GELU(tanh) -> Linear``, both with biases; dropout after ``attn_out`` and
  the MLP (training only).
- Output: ``linear(modulate(norm_final(x)))`` with its own ``adaLN_modulation`` (shift,
  scale) and a bias, over ``vocab_size`` = GPT-2's 50257 tokens plus the mask token (the
  last id).
- The SUBS parameterisation (``diffusion.py``): ``-1e6`` added to the mask token's logit,
  log-softmax, and at every unmasked position all mass on the token already there. The
  denoiser reads the softmax at masked positions only: MDLM's posterior over clean tokens,
  never the mask.

No cache of the released code is reproduced (it has none); the transformers ``Cache``
hooks are honoured as the other families' are (bidirectional attention, so the cached
sampler modes apply). BD3-LM (kuleshov-group/bd3lms) is these classes with a block-causal
mask: :mod:`tiltmatch.models.bd3lm`.

Released folders hold no tokenizer (MDLM uses GPT-2's by name): the folder must hold
GPT-2's tokenizer files (``vocab.json`` and ``merges.txt``, or ``tokenizer.json``).
Public names: :data:`FAMILY`, :class:`MDLMConfig`, :class:`MDLMDenoiser`,
:class:`MDLMCodec`, :func:`mdlm_config`, :func:`load_mdlm`, :data:`LORA_TARGETS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    Cache,
    DynamicCache,
    GPT2Tokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from tiltmatch.models.denoiser import TinyModelSpec
from tiltmatch.models.folders import CONFIG_FILE, read_json
from tiltmatch.models.registry import FAMILY_KEY, FamilySpec
from tiltmatch.models.released import resolve_folder, stream_weights

NAME = "mdlm"
#: the ``model_type`` of this package's MDLM classes (the release's is "mdlm")
MODEL_TYPE = "tiltmatch_mdlm"
RELEASED_MODEL_TYPES = ("mdlm",)
RELEASED_ARCHITECTURES = ("MDLM",)
#: the SUBS parameterisation's "minus infinity" (diffusion.py's ``neg_infinity``): finite,
#: so a cross-entropy against a target with no mass on the mask stays finite
NEG_INFINITY = -1_000_000.0
#: the timestep embedding's width and period (``TimestepEmbedder``)
FREQUENCY_EMBEDDING_SIZE = 256
MAX_PERIOD = 10_000
ROTARY_BASE = 10_000
#: the loglinear schedule's epsilon (noise/loglinear: sigma(t) = -log(1 - (1 - eps) t))
LOGLINEAR_EPS = 1e-3
#: LoRA targets: attention and MLP of every block. PEFT matches by suffix, so ``mlp.0`` and
#: ``mlp.2`` also adapt the time embedder's two layers (``sigma_map.mlp``): with time
#: conditioning off its input is a constant, and an adapter there learns a constant shift
#: of every block's modulation
LORA_TARGETS = ("attn_qkv", "attn_out", "mlp.0", "mlp.2")
_REQUIRED = ("vocab_size", "hidden_dim", "cond_dim", "n_blocks", "n_heads")


class MDLMConfig(PretrainedConfig):
    """The settings of :class:`MDLMDenoiser`, under the released config's key names, plus
    the package's ``is_causal`` (False), ``dllm_family`` and the mask / EOS ids."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 64,
        model_length: int = 1024,
        hidden_dim: int = 32,
        cond_dim: int = 16,
        n_blocks: int = 2,
        n_heads: int = 4,
        dropout: float = 0.1,
        time_conditioning: bool = False,
        is_causal: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.model_length = model_length
        self.hidden_dim = hidden_dim
        self.cond_dim = cond_dim
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.dropout = dropout
        self.time_conditioning = time_conditioning
        self.is_causal = is_causal
        # RoPE past the trained length runs at angles never seen: the denoiser refuses it.
        self.max_position_embeddings = model_length
        kwargs.setdefault(FAMILY_KEY, NAME)
        kwargs.setdefault("tie_word_embeddings", False)
        kwargs["pad_token_id"] = None
        super().__init__(**kwargs)

    @property
    def mask_index(self) -> int:
        """The mask token's id: the config's, else the last id (GPT-2's 50257 + 1)."""
        recorded = getattr(self, "mask_token_id", None)
        return int(recorded) if recorded is not None else self.vocab_size - 1


# --------------------------------------------------------------------------- the network


class MDLMLayerNorm(nn.Module):
    """LayerNorm without bias, in float32, then times the weight (the release's)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``x``, float32 times the weight."""
        return F.layer_norm(x.float(), [x.shape[-1]]) * self.weight[None, None, :]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift``."""
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the noise level, then ``Linear -> SiLU -> Linear``."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQUENCY_EMBEDDING_SIZE, cond_dim, bias=True),
            nn.SiLU(),
            nn.Linear(cond_dim, cond_dim, bias=True),
        )

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        """``[B, cond_dim]`` for noise levels ``[B]``."""
        half = FREQUENCY_EMBEDDING_SIZE // 2
        freqs = torch.exp(
            -math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32) / half
        ).to(sigma.device)
        args = sigma[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(embedding.to(next(self.mlp.parameters()).dtype))


class MDLMRotary(nn.Module):
    """Rotary angles of the whole head: ``inv_freq`` is a stored (persistent) buffer, as
    released; cosines and sines from the positions, in float32."""

    inv_freq: torch.Tensor

    def __init__(self, config: MDLMConfig, device: torch.device | None = None) -> None:
        super().__init__()
        dim = config.hidden_dim // config.n_heads
        steps = torch.arange(0, dim, 2, device=device).float() / dim
        self.register_buffer("inv_freq", 1.0 / (ROTARY_BASE**steps))

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``[B, T, head_dim]``."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


class DDiTBlock(GradientCheckpointingLayer):
    """One adaLN-modulated DiT block (names as released)."""

    def __init__(self, config: MDLMConfig, layer: int) -> None:
        super().__init__()
        dim = config.hidden_dim
        self.layer, self.heads, self.dropout = layer, config.n_heads, float(config.dropout)
        self.norm1 = MDLMLayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = MDLMLayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim, bias=True),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * dim, dim, bias=True),
        )
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * dim, bias=True)

    def _attention(
        self, h: torch.Tensor, rope: tuple[torch.Tensor, ...], mask: Any, cache: Cache | None
    ) -> torch.Tensor:
        b, t, dim = h.shape
        qkv = self.attn_qkv(h).view(b, t, 3, self.heads, dim // self.heads)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out.transpose(1, 2).reshape(b, t, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        c: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """The block's output ``[B, T, hidden_dim]``."""
        mods = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = modulate(self.norm1(x), shift_msa, scale_msa).to(x.dtype)
        attended = self.attn_out(self._attention(h, rope, mask, cache))
        x = x + gate_msa * F.dropout(attended, self.dropout, self.training)
        h = modulate(self.norm2(x), shift_mlp, scale_mlp).to(x.dtype)
        return x + gate_mlp * F.dropout(self.mlp(h), self.dropout, self.training)


class DDiTFinalLayer(nn.Module):
    """``linear(modulate(norm_final(x)))`` with its own shift and scale."""

    def __init__(self, config: MDLMConfig) -> None:
        super().__init__()
        self.norm_final = MDLMLayerNorm(config.hidden_dim)
        self.linear = nn.Linear(config.hidden_dim, config.vocab_size)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * config.hidden_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Logits of the columns of ``x``."""
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(x), shift, scale).to(x.dtype))


class MDLMBackbone(nn.Module):
    """The released ``DITBackbone``: embedding, time embedder, RoPE, blocks, output layer."""

    def __init__(self, config: MDLMConfig) -> None:
        super().__init__()
        self.config = config
        self.vocab_embed = MDLMEmbedding(config.vocab_size, config.hidden_dim)
        self.sigma_map = TimestepEmbedder(config.cond_dim)
        self.rotary_emb = MDLMRotary(config)
        self.blocks = nn.ModuleList(DDiTBlock(config, i) for i in range(config.n_blocks))
        self.output_layer = DDiTFinalLayer(config)

    def hidden(
        self,
        input_ids: torch.Tensor,
        sigma: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last block's output ``[B, T, hidden]`` and the conditioning ``c``."""
        x = self.vocab_embed(input_ids)
        c = F.silu(self.sigma_map(sigma)).to(x.dtype)
        rope = self.rotary_emb(positions)
        for block in self.blocks:
            x = block(x, rope, c, mask=mask, cache=cache)
        return x, c


class MDLMEmbedding(nn.Module):
    """The token embedding as released: a bare ``[vocab, hidden]`` parameter."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of the embedding."""
        return self.embedding[ids]


def key_mask(
    mask: torch.Tensor | None, queries: int, keys: int, device: torch.device
) -> torch.Tensor | None:
    """A boolean ``[B, 1, Q, K]`` mask (True: may attend) from a 2-D padding mask over the
    keys or a 4-D boolean one; None: every key."""
    if mask is None:
        return None
    if mask.dim() == 2 and mask.shape[1] == keys:
        return mask.bool().to(device)[:, None, None, :].expand(-1, 1, queries, keys)
    if mask.dim() == 4 and mask.dtype == torch.bool:
        return mask.to(device)
    raise ValueError(f"the attention mask must be 2-D over {keys} keys or a 4-D boolean mask")


class MDLMPreTrainedModel(PreTrainedModel):
    """What transformers needs of the MDLM classes: config, block class, initialisation."""

    config_class = MDLMConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DDiTBlock"]  # noqa: RUF012 - transformers reads it
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, MDLMEmbedding):
            nn.init.kaiming_uniform_(module.embedding, a=math.sqrt(5))
        elif isinstance(module, MDLMLayerNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, MDLMRotary):
            assert isinstance(self.config, MDLMConfig)
            module.inv_freq.copy_(MDLMRotary(self.config, module.inv_freq.device).inv_freq)


def loglinear_sigma(masked_fraction: torch.Tensor) -> torch.Tensor:
    """The loglinear schedule's noise level at time ``t``: ``-log(1 - (1 - eps) t)``."""
    return -torch.log1p(-(1 - LOGLINEAR_EPS) * masked_fraction)


def subs(logits: torch.Tensor, ids: torch.Tensor, mask_index: int) -> torch.Tensor:
    """MDLM's SUBS parameterisation: the mask logit at ``-1e6``, log-softmax, and each
    unmasked position's log-probabilities 0 at its own token and ``-1e6`` elsewhere."""
    logits = logits.float()
    logits[..., mask_index] += NEG_INFINITY
    logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    visible = ids != mask_index
    carried = torch.full_like(logits[visible], NEG_INFINITY)
    carried.scatter_(-1, ids[visible][..., None], 0.0)
    logits[visible] = carried
    return logits


class MDLMDenoiser(MDLMPreTrainedModel):
    """MDLM's DiT and its SUBS parameterisation: log-probabilities over clean tokens.

    ``forward(input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep,
    sigma)`` as transformers' causal LMs take them; ``attention_mask``: a 2-D padding mask
    (bidirectional) or a 4-D boolean one. ``sigma``: the noise level per row, read only by
    a time-conditioned model (``time_conditioning``); by default the loglinear schedule's
    level at the row's fraction of mask tokens among its real tokens (a function of the
    state alone; docs/families.md). ``raw=True`` returns the DiT's logits before SUBS.
    """

    def __init__(self, config: MDLMConfig) -> None:
        super().__init__(config)
        self.backbone = MDLMBackbone(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding."""
        return self.backbone.vocab_embed

    def get_decoder(self) -> MDLMBackbone:
        """The backbone (it holds RoPE)."""
        return self.backbone

    def noise_level(self, input_ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``sigma`` per row: 0 without time conditioning (as released), else the loglinear
        level at the fraction of the row's real tokens that are masks."""
        config = self.config
        assert isinstance(config, MDLMConfig)
        if not config.time_conditioning:
            return torch.zeros(input_ids.shape[0], device=input_ids.device)
        masked = ((input_ids == config.mask_index) & real).sum(-1)
        return loglinear_sigma(masked / real.sum(-1).clamp(min=1))

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
        """Log-probabilities (SUBS) of the kept columns (``logits_to_keep``)."""
        config = self.config
        assert isinstance(config, MDLMConfig)
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        held = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            columns = torch.arange(held, held + input_ids.shape[1], device=input_ids.device)
            position_ids = columns[None].expand(input_ids.shape[0], -1)
        if sigma is None:
            real = torch.ones_like(input_ids, dtype=torch.bool)
            if attention_mask is not None and attention_mask.dim() == 2:
                real = attention_mask[:, -input_ids.shape[1] :].bool()
            sigma = self.noise_level(input_ids, real)
        elif not config.time_conditioning:
            sigma = torch.zeros_like(sigma)  # the released forward's _process_sigma
        mask = key_mask(
            attention_mask, input_ids.shape[1], held + input_ids.shape[1], input_ids.device
        )
        hidden, c = self.backbone.hidden(input_ids, sigma, position_ids, mask, cache)
        kept = slice_logits_to_keep(hidden, logits_to_keep)
        if kept.dim() == 2:  # a boolean logits_to_keep flattens the kept columns
            c = c[:, None].expand(-1, hidden.shape[1], -1)[logits_to_keep]
            logits = self.backbone.output_layer(kept[:, None], c)[:, 0]
        else:
            logits = self.backbone.output_layer(kept, c)
        if raw:
            return CausalLMOutputWithPast(logits=logits)
        ids = slice_logits_to_keep(input_ids[..., None], logits_to_keep)[..., 0]
        return CausalLMOutputWithPast(logits=subs(logits, ids, config.mask_index))


# --------------------------------------------------------------------------- the release


def mdlm_config(cfg: Mapping[str, Any]) -> MDLMConfig:
    """The :class:`MDLMConfig` of a released (or saved) ``config.json`` dict; a missing
    size is refused by name."""
    for key in _REQUIRED:
        if cfg.get(key) is None:
            raise ValueError(f"MDLM config has no {key!r}: it is required to build the model")
    hidden, heads = int(cfg["hidden_dim"]), int(cfg["n_heads"])
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"MDLM config: hidden_dim {hidden} must split into {heads} even heads")
    extras = {k: cfg[k] for k in ("mask_token_id", "eos_token_id") if cfg.get(k) is not None}
    return MDLMConfig(
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


class MDLMCodec:
    """The :class:`~tiltmatch.models.codecs.PromptCodec` of MDLM's GPT-2 tokenizer.

    MDLM trained on OpenWebText rows wrapped as ``<|endoftext|> document <|endoftext|> ...``
    (BOS and EOS are both GPT-2's ``<|endoftext|>``). An empty prompt is unconditional
    generation (no token given, as the released sampler); a text prompt is the start of a
    document: ``<|endoftext|>`` then its tokens. A response is read as one document: a
    leading ``<|endoftext|>`` is skipped and the text ends at the next one. ``vocab_size``
    is the model's (GPT-2's 50257 plus the mask, the last id).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("MDLM's tokenizer has no end-of-text token (GPT-2's <|endoftext|>)")
        mask = tokenizer.mask_token_id if tokenizer.mask_token is not None else len(tokenizer)
        if mask != vocab_size - 1:
            raise ValueError(
                f"MDLM's mask token is the id after GPT-2's vocabulary ({mask}), but the "
                f"model has {vocab_size} ids: the tokenizer does not belong to this model"
            )
        self.tokenizer = tokenizer
        self.mask_token_id, self.eos_token_id, self.pad_token_id = int(mask), int(eos), int(eos)
        self.vocab_size = int(vocab_size)

    def encode_prompt(self, prompt: str) -> list[int]:
        """``[]`` for an empty prompt, else ``<|endoftext|>`` and the prompt's tokens."""
        if not prompt:
            return []
        return [self.eos_token_id, *self.tokenizer.encode(prompt, add_special_tokens=False)]

    def decode_response(self, ids: Sequence[int]) -> str:
        """The first document of a response (a leading ``<|endoftext|>`` skipped)."""
        kept, started = [], False
        for i in map(int, ids):
            if i == self.eos_token_id:
                if started:
                    break
                continue
            started = True
            if i != self.mask_token_id:
                kept.append(i)
        return str(self.tokenizer.decode(kept, skip_special_tokens=True))


def load_gpt2_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer from the folder's files (MDLM's releases name it, not ship it)."""
    if not any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        raise FileNotFoundError(
            f"{folder} has no tokenizer: MDLM uses GPT-2's; put GPT-2's tokenizer files "
            "(vocab.json and merges.txt, or tokenizer.json) in the folder"
        )
    return GPT2Tokenizer.from_pretrained(str(folder))


def load_dit_folder(
    path: str | Path,
    name: str,
    spec: FamilySpec,
    build: Callable[[dict[str, Any]], Any],
    codec: type[MDLMCodec],
    dtype: torch.dtype,
    device: str | torch.device,
) -> tuple[Any, Any]:
    """A DiT folder of ``spec``'s family (MDLM's, BD3-LM's) as model and codec: its
    ``config.json`` recognised (else a ``ValueError`` naming ``name``), the model ``build``
    from it on the meta device and filled strictly (every stored tensor used, every
    parameter and stored buffer present), in eval mode. The folder needs GPT-2's tokenizer."""
    folder = resolve_folder(path)
    tokenizer = load_gpt2_tokenizer(folder)
    cfg = read_json(folder / CONFIG_FILE)
    if not spec.recognises(cfg):
        raise ValueError(f"{folder / CONFIG_FILE} is not {name} config")
    with torch.device("meta"):
        model = build(cfg)
    expected = set(model.state_dict())
    stream_weights(
        model, folder, lambda k: k if k in expected else None, dtype, torch.device(device)
    )
    model.eval()
    return model, codec(tokenizer, model.config.vocab_size)


def load_mdlm(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[MDLMDenoiser, MDLMCodec]:
    """An MDLM folder (released, or saved from this class) as model and codec
    (:func:`load_dit_folder`; the rotary buffer is stored too)."""
    return load_dit_folder(
        path,
        "an MDLM",
        FAMILY,
        lambda cfg: MDLMDenoiser(mdlm_config(cfg)),
        MDLMCodec,
        dtype,
        device,
    )


def load_mdlm_folder(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[MDLMDenoiser, MDLMCodec]:
    """``FAMILY.load``: :func:`load_mdlm` on the CPU."""
    return load_mdlm(path, dtype=dtype)


def tiny_mdlm_config(vocab_size: int, spec: TinyModelSpec) -> MDLMConfig:
    """A tiny MDLM (``FAMILY.tiny_config``), time conditioning off as released; the mask is
    the vocabulary's mask id 1 of the character tokenizer, recorded in the config."""
    return MDLMConfig(
        vocab_size=vocab_size,
        model_length=spec.max_positions,
        hidden_dim=spec.hidden_size,
        cond_dim=max(2, spec.hidden_size // 4),
        n_blocks=spec.num_layers,
        n_heads=spec.num_heads,
        dropout=0.0,
        mask_token_id=1,
    )


AutoConfig.register(MODEL_TYPE, MDLMConfig, exist_ok=True)
AutoModelForCausalLM.register(MDLMConfig, MDLMDenoiser, exist_ok=True)

#: MDLM in the family registry: its own DiT class, bidirectional, the common sampler
FAMILY = FamilySpec(
    name=NAME,
    label="MDLM (DiT, SUBS)",
    architecture=MODEL_TYPE,
    model_class=MDLMDenoiser,
    load=load_mdlm_folder,
    tiny_config=tiny_mdlm_config,
    model_types=RELEASED_MODEL_TYPES,
    architectures=RELEASED_ARCHITECTURES,
    lora_targets=LORA_TARGETS,
)
