"""LLaDA2 (inclusionAI LLaDA2.0-mini / -flash, LLaDA2.1-mini): a mixture-of-experts block
diffusion model, in this package's own implementation (no remote code is run).

LLaDA2 ships as remote code (``modeling_llada2_moe.py``, class ``LLaDA2MoeModelLM``,
``model_type`` "llada2_moe"); transformers has no native class for it, so the family brings
its own: :class:`LLaDA2MoeDenoiser`, a transformers ``PreTrainedModel`` whose module names
are the release's, so the released safetensors load by name alone, strictly (every stored
tensor used, every parameter stored, shapes equal). What the released forward does, and
what is written here from it:

- Embedding ``model.word_embeddings``; ``num_hidden_layers`` pre-norm blocks (RMSNorm in
  float32 times a weight), each attention then an MLP, residual adds; final ``model.norm``;
  an untied ``lm_head`` (no bias).
- Attention: one fused ``query_key_value`` projection holding, per position, the
  ``num_attention_heads`` query heads, then the ``num_key_value_heads`` key heads, then as
  many value heads (``head_dim`` each); with ``use_qk_norm`` an RMSNorm over each head's
  query (``query_layernorm``) and key (``key_layernorm``) before RoPE; **partial** RoPE:
  only the first ``head_dim * partial_rotary_factor`` dimensions of a head are rotated
  (contiguous halves of that part, theta ``rope_theta``), the rest pass through; grouped
  kv heads, scale ``head_dim ** -0.5``; output projection ``dense``.
- MLP: the first ``first_k_dense_replace`` layers are dense SiLU-gated MLPs
  (``gate_proj``, ``up_proj``, ``down_proj``; ``intermediate_size``); every later layer is
  a mixture of ``num_experts`` such experts (``moe_intermediate_size``) plus a shared
  expert of ``moe_intermediate_size * num_shared_experts`` that every token goes through.
- Routing (:class:`LLaDA2Router`), in float32: scores ``s = sigmoid(W x)``; experts are
  chosen on ``s + expert_bias`` (a stored buffer; the auxiliary-loss-free balancing bias),
  group-limited: the experts are cut into ``n_group`` groups, each group scored by the sum
  of its two best biased scores, only the ``topk_group`` best groups stay eligible, and
  the ``num_experts_per_tok`` best eligible experts are taken (the others at ``-inf``).
  Their weights are the **unbiased** ``s`` of the chosen experts, normalised to sum to 1
  (when more than one is chosen) and multiplied by ``routed_scaling_factor``. The
  weighted sum of the chosen experts' outputs is formed in float32.
- Attention is block-causal when decoding: bidirectional inside blocks of 32 positions
  counted from the first prompt token, causal across blocks (the released ``generate``'s
  mask; the block size is the release's, recorded here as ``dllm_block_size``). The
  adapter hands that mask over (:mod:`tiltmatch.models.family`), so finished blocks are
  cached exactly by the block decoder.

Settings of the released config that this forward does not carry are refused by name
(:func:`llada2_config`): RoPE scaling, another routing score function, unnormalised
top-k weights, sliding windows. Keys the released modeling code declares but never reads
(``norm_head``, ``norm_softmax``, ``use_rmsnorm``, ``router_dtype``, ``embedding_dropout``,
``output_dropout``, ``rotary_dim``, ``max_window_layers``, ...) are not read here either.
The embedding gets no ``padding_idx`` (the release's would freeze the row of its pad
token, which is also its end-of-text token, in full fine-tuning).

Decoding as released (``LLaDA2MoeModelLM.generate``): blocks of 32, ``steps`` (32) per
block with the linear quota, every masked token above ``threshold`` (0.95) committed when
they are at least the step's quota, greedy at temperature 0: the block decoder's
``parallel`` mode (:class:`tiltmatch.sampling.families.BlockParallelSampler`) with
``threshold: 0.95`` and ``steps`` equal to the response length. LLaDA2.1 has the same
architecture and weights layout; its token-editing decoder (revising committed tokens
above an editing threshold) is not reproduced.

Public names: :data:`FAMILY`, :class:`LLaDA2MoeConfig`, :class:`LLaDA2MoeDenoiser`,
:func:`llada2_config`, :func:`load_llada2`, :data:`LORA_TARGETS`.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from tiltmatch.models.codecs import ChatCodec
from tiltmatch.models.denoiser import TinyModelSpec
from tiltmatch.models.registry import BLOCK_SIZE_KEY, FAMILY_KEY, FamilySpec
from tiltmatch.models.released import load_native_checkpoint
from tiltmatch.models.special_ids import SpecialIds, read_special_ids

NAME = "llada2"
#: the ``model_type`` of this package's LLaDA2 classes (not the release's, so transformers'
#: Auto classes can hold them beside a future native "llada2_moe")
MODEL_TYPE = "tiltmatch_llada2_moe"
#: the released ``model_type`` and architecture
RELEASED_MODEL_TYPES = ("llada2_moe",)
RELEASED_ARCHITECTURES = ("LLaDA2MoeModelLM",)
MASK_TOKEN = "<|mask|>"
END_OF_TURN_TOKEN = "<|role_end|>"
#: the released decoder's block length (``generate(block_length=32)``; SGLang's and
#: dFactory's block size too): the model's attention blocks
BLOCK_LENGTH = 32
#: the released decoder's confidence threshold and denoising steps per block
RELEASED_THRESHOLD = 0.95
RELEASED_STEPS_PER_BLOCK = 32
#: LoRA targets: attention (fused qkv and output), the dense layers' MLP and the shared
#: experts; the router and the routed experts stay frozen (docs/families.md says why)
LORA_TARGETS = (
    "query_key_value",
    "dense",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "shared_experts.gate_proj",
    "shared_experts.up_proj",
    "shared_experts.down_proj",
)

# The released LLaDA2MoeConfig's defaults for the keys that decide the forward: a
# config.json that omits one of them means this value.
_RELEASED_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_bias": True,
    "use_qk_norm": False,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "attention_dropout": 0.1,
    "max_position_embeddings": 16384,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "num_experts": 16,
    "num_shared_experts": 0,
    "num_experts_per_tok": 2,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 0,
    "partial_rotary_factor": 0.5,
    "score_function": "sigmoid",
    "norm_topk_prob": True,
    "use_sliding_window": False,
}
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


class LLaDA2MoeConfig(PretrainedConfig):
    """The settings of :class:`LLaDA2MoeDenoiser`, under the released config's key names
    (so a saved model's ``config.json`` reads like the release's), plus the package's
    ``is_causal`` (always False), ``dllm_family`` and ``dllm_block_size``."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 64,
        hidden_size: int = 32,
        intermediate_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 4,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_bias: bool = False,
        use_qk_norm: bool = True,
        rms_norm_eps: float = 1e-6,
        attention_dropout: float = 0.0,
        max_position_embeddings: int = 16384,
        rope_theta: float = 600000.0,
        partial_rotary_factor: float = 0.5,
        num_experts: int | None = 4,
        num_shared_experts: int | None = 1,
        num_experts_per_tok: int = 2,
        n_group: int = 2,
        topk_group: int = 1,
        routed_scaling_factor: float = 2.5,
        moe_intermediate_size: int = 16,
        first_k_dense_replace: int = 1,
        is_causal: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.use_qkv_bias = use_qkv_bias
        self.use_bias = use_bias
        self.use_qk_norm = use_qk_norm
        self.rms_norm_eps = rms_norm_eps
        self.attention_dropout = attention_dropout
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.is_causal = is_causal
        kwargs.setdefault(FAMILY_KEY, NAME)
        kwargs.setdefault(BLOCK_SIZE_KEY, BLOCK_LENGTH)
        kwargs.setdefault("tie_word_embeddings", False)
        # No pad id: it would be read as the embedding's padding_idx (see the module doc).
        kwargs["pad_token_id"] = None
        super().__init__(**kwargs)

    @property
    def rope_dim(self) -> int:
        """How many leading dimensions of each head RoPE rotates."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` is a mixture of experts (else a dense MLP)."""
        return self.num_experts is not None and layer >= self.first_k_dense_replace


# --------------------------------------------------------------------------- the network


class LLaDA2RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back, then times the weight (the release's)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised ``x`` over its last dimension."""
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class LLaDA2RotaryEmbedding(nn.Module):
    """Cosines and sines of partial RoPE: ``rope_dim`` rotated dimensions, computed in
    float32 from the positions and cast to the activations' dtype."""

    inv_freq: torch.Tensor

    def __init__(self, config: LLaDA2MoeConfig, device: torch.device | None = None) -> None:
        super().__init__()
        dim = config.rope_dim
        steps = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
        inv_freq = 1.0 / (float(config.rope_theta) ** steps)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(cos, sin)``, each ``[B, T, rope_dim]``."""
        inv = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        freqs = (inv.to(x.device) @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dimensions of each head of ``x`` ``[B, H, T, D]``."""
    cos, sin = cos[:, None], sin[:, None]
    width = cos.shape[-1]
    rot, rest = x[..., :width], x[..., width:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


class LLaDA2Attention(nn.Module):
    """Fused-qkv grouped attention with per-head q/k norms and partial RoPE; the mask is
    boolean (True: may attend); keys and values go through a transformers ``Cache``."""

    def __init__(self, config: LLaDA2MoeConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = float(config.attention_dropout)
        width = (self.heads + 2 * self.kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, width, bias=config.use_qkv_bias)
        if config.use_qk_norm:
            self.query_layernorm = LLaDA2RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = LLaDA2RMSNorm(self.head_dim, config.rms_norm_eps)
        self.use_qk_norm = bool(config.use_qk_norm)
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: Cache | None,
    ) -> torch.Tensor:
        """Attention output ``[B, T, hidden]``; ``mask``: boolean ``[B, 1, T, K]`` or None."""
        b, t, _ = x.shape
        qkv = self.query_key_value(x).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = apply_partial_rope(q, *rope), apply_partial_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.head_dim**-0.5,
        )
        return self.dense(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class LLaDA2MLP(nn.Module):
    """The gated MLP of the dense layers, of each expert and of the shared expert."""

    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) * up(x))``."""
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2Router(nn.Module):
    """Sigmoid scores, group-limited top-k on the bias-corrected scores, normalised and
    scaled weights (the module docstring's routing), all in float32."""

    expert_bias: torch.Tensor

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        assert config.num_experts is not None
        self.experts, self.top_k = config.num_experts, config.num_experts_per_tok
        self.groups, self.top_groups = config.n_group, config.topk_group
        self.scale = float(config.routed_scaling_factor)
        self.weight = nn.Parameter(torch.empty(self.experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(self.experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen experts ``[N, k]`` and their weights ``[N, k]`` (float32) for ``x`` ``[N, H]``."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        biased = scores + self.expert_bias
        n = biased.shape[0]
        group_scores = biased.view(n, self.groups, -1).topk(2, dim=-1).values.sum(-1)
        best_groups = group_scores.topk(self.top_groups, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        keep = keep[:, :, None].expand(n, self.groups, self.experts // self.groups)
        eligible = biased.masked_fill(~keep.reshape(n, -1), float("-inf"))
        chosen = eligible.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return chosen, weights * self.scale


class LLaDA2SparseMoe(nn.Module):
    """Routed experts plus the shared expert every token goes through."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        assert config.num_experts is not None
        size = config.moe_intermediate_size
        self.experts = nn.ModuleList(LLaDA2MLP(config, size) for _ in range(config.num_experts))
        self.gate = LLaDA2Router(config)
        self.shared_experts: LLaDA2MLP | None = None
        if config.num_shared_experts is not None:
            self.shared_experts = LLaDA2MLP(config, size * config.num_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each token's weighted sum of its chosen experts (float32), plus the shared expert."""
        flat = x.reshape(-1, x.shape[-1])
        chosen, weights = self.gate(flat)
        out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
        for expert in chosen.unique().tolist():
            rows, slot = (chosen == expert).nonzero(as_tuple=True)
            y = self.experts[expert](flat[rows]).float() * weights[rows, slot, None]
            out.index_add_(0, rows, y)
        routed = out.to(x.dtype).view_as(x)
        return routed if self.shared_experts is None else routed + self.shared_experts(x)


class LLaDA2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm attention then a dense MLP or a mixture of experts, residual adds."""

    def __init__(self, config: LLaDA2MoeConfig, layer: int) -> None:
        super().__init__()
        self.attention = LLaDA2Attention(config, layer)
        self.mlp: nn.Module = (
            LLaDA2SparseMoe(config)
            if config.is_moe_layer(layer)
            else LLaDA2MLP(config, config.intermediate_size)
        )
        self.input_layernorm = LLaDA2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LLaDA2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """The layer's output ``[B, T, hidden]``."""
        x = x + self.attention(self.input_layernorm(x), rope, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2PreTrainedModel(PreTrainedModel):
    """What transformers needs of the LLaDA2 classes: config, layer class, initialisation."""

    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDA2DecoderLayer"]  # noqa: RUF012 - transformers reads it
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02))
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
        elif isinstance(module, LLaDA2RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, LLaDA2Router):
            module.weight.normal_(0.0, std)
            module.expert_bias.zero_()
        elif isinstance(module, LLaDA2RotaryEmbedding):
            assert isinstance(self.config, LLaDA2MoeConfig)
            fresh = LLaDA2RotaryEmbedding(self.config, module.inv_freq.device)
            module.inv_freq.copy_(fresh.inv_freq)


def attention_mask_4d(
    mask: torch.Tensor | None, queries: int, keys: int, device: torch.device
) -> torch.Tensor | None:
    """A boolean ``[B, 1, Q, K]`` mask (True: may attend) from a 2-D padding mask over the
    keys (bidirectional: every query sees every real key) or a 4-D boolean one; None: all."""
    if mask is None:
        return None
    if mask.dim() == 2:
        if mask.shape[1] != keys:
            raise ValueError(f"a 2-D attention mask needs {keys} columns, got {mask.shape[1]}")
        return mask.bool().to(device)[:, None, None, :].expand(-1, 1, queries, keys)
    if mask.dim() == 4 and mask.dtype == torch.bool:
        return mask.to(device)
    raise ValueError("the attention mask must be 2-D (padding) or a 4-D boolean mask")


class LLaDA2MoeModel(LLaDA2PreTrainedModel):
    """The backbone: embedding, decoder layers, final norm, RoPE."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            LLaDA2DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = LLaDA2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LLaDA2RotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding."""
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding."""
        self.word_embeddings = value  # type: ignore[assignment]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        """Final hidden states ``[B, T, hidden]``."""
        x = self.word_embeddings(input_ids)
        held = cache.get_seq_length() if cache is not None else 0
        mask = attention_mask_4d(attention_mask, x.shape[1], held + x.shape[1], x.device)
        rope = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, rope, mask=mask, cache=cache)
        return self.norm(x)


class LLaDA2MoeDenoiser(LLaDA2PreTrainedModel):
    """LLaDA2 with its output head: the released ``LLaDA2MoeModelLM``'s forward, no loss.

    ``forward(input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep)``
    as transformers' causal LMs take them (``past_key_values`` is accepted as the cache's
    older name); ``attention_mask``: a 2-D padding mask (bidirectional) or a 4-D boolean one
    (the adapter's block-causal mask); positions default to the columns, after the cache.
    """

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}  # noqa: RUF012

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding."""
        return self.model.word_embeddings

    def get_output_embeddings(self) -> nn.Module:
        """The output head."""
        return self.lm_head

    def get_decoder(self) -> LLaDA2MoeModel:
        """The backbone (it holds RoPE)."""
        return self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits of the kept columns (``logits_to_keep``, as transformers slices them)."""
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)} for {type(self).__name__}")
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        if position_ids is None:
            held = cache.get_seq_length() if cache is not None else 0
            columns = torch.arange(held, held + input_ids.shape[1], device=input_ids.device)
            position_ids = columns[None].expand(input_ids.shape[0], -1)
        hidden = self.model(input_ids, attention_mask, position_ids, cache)
        logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
        return CausalLMOutputWithPast(logits=logits)


# --------------------------------------------------------------------------- the release


def _setting(cfg: Mapping[str, Any], key: str) -> Any:
    return cfg[key] if key in cfg else _RELEASED_DEFAULTS.get(key)


def _check_released(cfg: Mapping[str, Any]) -> None:
    """Refuse, by name, settings the released forward would honour and this one does not."""
    for key in _REQUIRED:
        if cfg.get(key) is None:
            raise ValueError(f"LLaDA2 config has no {key!r}: it is required to build the model")
    refusals = (
        ("rope_scaling", None, "RoPE scaling is not implemented here"),
        ("score_function", "sigmoid", "routing scores are sigmoids in the released forward"),
        ("norm_topk_prob", True, "the released forward always normalises the top-k weights"),
        ("use_sliding_window", False, "the released forward has no sliding window"),
    )
    for key, supported, why in refusals:
        value = _setting(cfg, key)
        if value != supported and not (supported is None and not value):
            raise ValueError(
                f"LLaDA2 config {key}={value!r} is not supported (need {supported!r}): {why}"
            )
    experts = _setting(cfg, "num_experts")
    if experts is not None:
        groups, k = int(_setting(cfg, "n_group")), int(_setting(cfg, "num_experts_per_tok"))
        if int(experts) % groups or int(experts) // groups < 2:
            raise ValueError(
                f"LLaDA2 config: num_experts {experts} must split into n_group {groups} "
                "groups of at least 2 experts (a group is scored by its two best)"
            )
        if not 1 <= int(_setting(cfg, "topk_group")) <= groups:
            raise ValueError(f"LLaDA2 config: topk_group must be in 1..n_group ({groups})")
        if cfg.get("moe_intermediate_size") is None or k < 1:
            raise ValueError(
                "LLaDA2 config: a mixture of experts needs moe_intermediate_size and "
                "num_experts_per_tok >= 1"
            )


def llada2_config(cfg: Mapping[str, Any]) -> LLaDA2MoeConfig:
    """The :class:`LLaDA2MoeConfig` of a released (or saved) ``config.json`` dict.

    Missing keys take the released config class's defaults; settings this forward does not
    carry are refused by name; the block size is the release's (32) unless the dict records
    one (``dllm_block_size``, a saved model's).
    """
    _check_released(cfg)
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise ValueError(f"LLaDA2 config: {heads} heads do not group into {kv_heads} kv heads")
    experts = _setting(cfg, "num_experts")
    shared = _setting(cfg, "num_shared_experts")
    extras: dict[str, Any] = {
        BLOCK_SIZE_KEY: int(cfg.get(BLOCK_SIZE_KEY) or BLOCK_LENGTH),
        "mask_token_id": cfg.get("mask_token_id"),  # for the record; see read_special_ids
    }
    return LLaDA2MoeConfig(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg.get("intermediate_size") or 0),
        num_hidden_layers=int(cfg["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=cfg.get("head_dim"),
        hidden_act=str(_setting(cfg, "hidden_act")),
        use_qkv_bias=bool(_setting(cfg, "use_qkv_bias")),
        use_bias=bool(_setting(cfg, "use_bias")),
        use_qk_norm=bool(_setting(cfg, "use_qk_norm")),
        rms_norm_eps=float(_setting(cfg, "rms_norm_eps")),
        attention_dropout=float(_setting(cfg, "attention_dropout") or 0.0),
        max_position_embeddings=int(_setting(cfg, "max_position_embeddings")),
        rope_theta=float(_setting(cfg, "rope_theta")),
        partial_rotary_factor=float(_setting(cfg, "partial_rotary_factor")),
        num_experts=None if experts is None else int(experts),
        num_shared_experts=None if shared is None else int(shared),
        num_experts_per_tok=int(_setting(cfg, "num_experts_per_tok")),
        n_group=int(_setting(cfg, "n_group")),
        topk_group=int(_setting(cfg, "topk_group")),
        routed_scaling_factor=float(_setting(cfg, "routed_scaling_factor")),
        moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0),
        first_k_dense_replace=int(_setting(cfg, "first_k_dense_replace")),
        tie_word_embeddings=bool(_setting(cfg, "tie_word_embeddings")),
        eos_token_id=cfg.get("eos_token_id"),
        **extras,
    )


def read_llada2_special_ids(
    folder: Path, tokenizer: PreTrainedTokenizerBase | None = None
) -> SpecialIds:
    """LLaDA2's mask (``<|mask|>``), EOS / pad (``<|endoftext|>``) and end-of-turn
    (``<|role_end|>``) ids, read from its files."""
    return read_special_ids(
        folder, tokenizer, mask_token=MASK_TOKEN, end_of_turn_token=END_OF_TURN_TOKEN
    )


def load_llada2(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> tuple[LLaDA2MoeDenoiser, PreTrainedTokenizerBase, SpecialIds]:
    """A LLaDA2 folder (released, or saved from this class) as model, tokenizer and ids.

    Built on the meta device and filled shard by shard, strictly, in eval mode.
    """
    model, tokenizer, folder = load_native_checkpoint(
        path,
        FAMILY.recognises,
        llada2_config,
        LLaDA2MoeDenoiser,
        "a LLaDA2",
        dtype,
        device,
        "sdpa",
    )
    assert isinstance(model, LLaDA2MoeDenoiser)
    return model, tokenizer, read_llada2_special_ids(folder, tokenizer)


def load_llada2_folder(
    path: Path, dtype: torch.dtype = torch.float32
) -> tuple[LLaDA2MoeDenoiser, ChatCodec]:
    """A LLaDA2 folder as model and prompt codec (its chat template; ``FAMILY.load``)."""
    model, tokenizer, ids = load_llada2(path, dtype=dtype)
    return model, ChatCodec(tokenizer, ids, model.config.vocab_size)


def tiny_llada2_config(vocab_size: int, spec: TinyModelSpec) -> LLaDA2MoeConfig:
    """A tiny LLaDA2 (``FAMILY.tiny_config``): 4 experts in 2 groups, 2 chosen from the best
    group, a shared expert, the first layer dense when there are several, q/k norms, half
    of each head rotated, blocks of ``spec.block_size``."""
    extras: dict[str, Any] = {BLOCK_SIZE_KEY: spec.block_size}
    return LLaDA2MoeConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        moe_intermediate_size=max(1, spec.intermediate_size // 4),
        first_k_dense_replace=min(1, spec.num_layers - 1),
        **extras,
    )


AutoConfig.register(MODEL_TYPE, LLaDA2MoeConfig, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeDenoiser, exist_ok=True)

#: LLaDA2 in the family registry: its own MoE class, block-causal, the block decoder
FAMILY = FamilySpec(
    name=NAME,
    label="LLaDA2 (MoE block diffusion)",
    architecture=MODEL_TYPE,
    model_class=LLaDA2MoeDenoiser,
    load=load_llada2_folder,
    tiny_config=tiny_llada2_config,
    block_causal=True,
    model_types=RELEASED_MODEL_TYPES,
    architectures=RELEASED_ARCHITECTURES,
    mask_token=MASK_TOKEN,
    end_of_turn_token=END_OF_TURN_TOKEN,
    decoders={"exact": "block", "parallel": "block+parallel"},
    lora_targets=LORA_TARGETS,
)
