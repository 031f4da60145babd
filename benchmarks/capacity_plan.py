"""Capacity plan for LLaDA-8B without a GPU: peak memory and FLOPs of one update, simulated.

Builds LLaDA-8B-Instruct's exact architecture (a bidirectional ``LlamaForCausalLM`` from
:func:`tiltmatch.models.llada.llada_config_to_llama`: vocabulary 126464, hidden 4096,
MLP 12288, 32 heads) on the meta device and materialises it as PyTorch fake tensors
(``FakeTensorMode``) on the CPU: every tensor has its shape, dtype and storage size but
no data, so an 8B update "runs" in seconds on a laptop. Through the package's own code
(:class:`tiltmatch.training.lora.LoRAPair`, the objectives of ``tiltmatch.dtm.objective``
and ``tiltmatch.baselines`` (diffu-GRPO; SPG, ESPO and coupled-GRPO with their published
defaults) built by ``make_objective``, and the trainer's one update
:func:`tiltmatch.training.update.optimizer_update`) it measures, for one update:

- **peak memory per GPU**: a ``TorchDispatchMode`` (:class:`DeviceMemory`) sees every
  tensor an operator returns, counts each storage once while it is alive (weak
  references), rounds it as the CUDA caching allocator does (512-byte blocks; the
  "reserved" estimate also rounds to its 2 MiB / 20 MiB segments) and records the
  peak. PyTorch's own ``MemTracker`` rounds only for ``device.type == "cuda"`` and
  fake CUDA tensors fail here (CPU-only torch), so this is a CUDA-free equivalent;
- **FLOPs** with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and the
  attention kernels; elementwise work is not counted).

What CUDA would do differently is forced: attention runs the kernels CUDA's SDPA
picks for bf16 with head dim 128 (flash attention without a mask, memory-efficient
attention with one) through their ATen ops, whose fake implementations allocate what
the kernels return (output and log-sum-exp, no ``[B, H, T, T]`` score tensor); AdamW
is the fused kernel (no foreach temporaries). Data-dependent steps keep real values:
rollouts, masks and states are small real CPU tensors (they would be on the GPU too,
and are counted), so boolean indexing by the SAR loss mask gives the true number of
loss positions; only reading a scalar out of a fake tensor (a logged loss) returns 0.

The sampler (:func:`simulate_sampler`) runs the package's ``generate`` as it runs, default
lean noise, with the model fake and its control tensors real (canvas, open positions), so
its vocabulary work is sized by the true number of open positions; what fake values decide
(a boolean selection by them, a truth value) is taken at its upper bound
(:class:`SamplerMemory`). It is simulated at every ``generate`` batch the LLaDA recipes make
(:func:`recipe_generate_calls`), in each fixed-step mode; compatible noise's float64
``rows x L x V`` draw on a GPU is added by arithmetic (:func:`compatible_noise_bytes`).

Layers are identical, so the model is simulated at 1 and 2 decoder layers and every
figure is extrapolated linearly to 32 (``fixed + 32 x per-layer``); ``--check-layers 32``
runs one configuration at full depth to check the extrapolation.

Not simulated (say so wherever the numbers are used): bitsandbytes' 4-bit kernels
(the 4-bit rows model the NF4 storage only: 0.5 byte per weight plus the double
quantisation constants, and one dequantised weight as transient), the attention
kernels' internal workspace, NCCL buffers, the CUDA context, fragmentation beyond the
segment rounding, and FSDP's collectives (the FSDP rows are per-rank shard arithmetic
plus simulated activations).

    python benchmarks/capacity_plan.py --out runs/capacity/plan.json   # the full plan
    python benchmarks/capacity_plan.py --tiny --out /tmp/plan.json     # the code path, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from tiltmatch.batch import RolloutBatch
from tiltmatch.config import RunConfig
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.llada import LLADA_8B_INSTRUCT_CONFIG, llada_config_to_llama
from tiltmatch.models.llada2 import LORA_TARGETS as LLADA2_FAMILY_TARGETS
from tiltmatch.models.llada2 import LLaDA2MoeDenoiser, LLaDA2SparseMoe, llada2_config
from tiltmatch.objective import Phase
from tiltmatch.sampling.sampler import SamplingConfig, generate
from tiltmatch.training.lora import LoRAPair
from tiltmatch.training.pair import CopiedPair
from tiltmatch.training.runner import make_objective
from tiltmatch.training.update import optimizer_update

GIB = 2**30
MIB = 2**20
H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM bf16 dense tensor-core peak
H100_MEMORY_GIB = 79.6  # what an "80 GB" H100 offers (nvidia-smi: 81559 MiB)
FIT_FRACTION = 0.9  # a peak fits when at most 90% of it: context, NCCL, fragmentation

# LLaDA-8B-Instruct's config.json, the keys that decide the architecture (checked and
# mapped by llada_config_to_llama to a LlamaConfig with is_causal=False): a copy of the
# package's tiltmatch.models.llada.LLADA_8B_INSTRUCT_CONFIG.
LLADA_8B: dict[str, Any] = dict(LLADA_8B_INSTRUCT_CONFIG)
# The same code path at a toy size (the CPU test).
TINY = LLADA_8B | {
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 4,
    "mlp_hidden_size": 192,
    "vocab_size": 512,
    "embedding_size": 512,
    "mask_token_id": 500,
    "eos_token_id": 501,
    "pad_token_id": 501,
}


# ----- the device memory model ----------------------------------------------------------------


def allocator_block(nbytes: int) -> int:
    """Bytes the CUDA caching allocator hands out for a request: a multiple of 512, at least 512."""
    return max(512, -(-nbytes // 512) * 512)


def segment_class(block: int) -> str:
    """The allocator's pool for a block: small (<= 1 MiB, 2 MiB segments), mid (<= 10 MiB,
    20 MiB segments) or large (its own segment, rounded to 2 MiB)."""
    if block <= MIB:
        return "small"
    return "mid" if block <= 10 * MIB else "large"


def reserved_estimate(small: int, mid: int, large: int) -> int:
    """Segments the allocator would hold for these live blocks, without fragmentation:
    the small pool packed into 2 MiB segments, the mid pool into 20 MiB ones, each large
    block in its own segment (already rounded to 2 MiB in ``large``)."""
    return -(-small // (2 * MIB)) * 2 * MIB + -(-mid // (20 * MIB)) * 20 * MIB + large


def _is_real_bool(t: object) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor) and t.dtype == torch.bool


def _expand_bool_indices(indices: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Real boolean indices as the long indices they select (their values are known)."""
    out: list[torch.Tensor | None] = []
    for index in indices:
        if _is_real_bool(index):
            assert index is not None
            out.extend(index.nonzero().unbind(1))
        else:
            out.append(index)
    return out


def _fake_operand(args: tuple[Any, ...]) -> bool:
    # index(self, indices) and index_put(self, indices, values): self or values is fake
    return any(isinstance(a, FakeTensor) for a in (args[0], *args[2:3]))


_INDEX_OPS = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}
_REAL_LIMIT = 256 * MIB  # no real tensor this large may appear: it would be an 8B-sized one


class DeviceMemory(TorchDispatchMode):
    """Live device memory of every storage created while active, with allocator rounding.

    Storages are counted once (views share them), from the operator that creates them
    until their last reference goes (a weak-reference finaliser). ``register`` adds
    tensors that existed before (weights, inputs). Also lets the package's code run on
    fake tensors: a real boolean index (a loss mask) becomes the long indices it selects,
    and reading a fake scalar gives 0 (``True`` for a boolean: a checked loss is finite).
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[int, str]] = {}
        self.live = {"small": 0, "mid": 0, "large": 0}
        self.peak = 0
        self.peak_reserved = 0
        self.marks: dict[str, int] = {}

    # -- accounting
    @property
    def allocated(self) -> int:
        """Bytes in live blocks now."""
        return sum(self.live.values())

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        block = allocator_block(storage.nbytes())
        if not isinstance(t, FakeTensor) and block > _REAL_LIMIT:
            raise RuntimeError(f"a real tensor of {block / GIB:.1f} GiB escaped the fake mode")
        kind = segment_class(block)
        if kind == "large":
            block = -(-block // (2 * MIB)) * 2 * MIB
        self._live[key] = (block, kind)
        self.live[kind] += block
        weakref.finalize(storage, self._free, key)
        self._update_peak()

    def _free(self, key: int) -> None:
        block, kind = self._live.pop(key)
        self.live[kind] -= block

    def _update_peak(self) -> None:
        self.peak = max(self.peak, self.allocated)
        self.peak_reserved = max(
            self.peak_reserved,
            reserved_estimate(self.live["small"], self.live["mid"], self.live["large"]),
        )

    def register(self, tensors: Iterator[torch.Tensor] | list[torch.Tensor]) -> None:
        """Count tensors that already exist (weights, buffers, inputs)."""
        for t in tensors:
            self._track(t)

    def reset_peak(self) -> None:
        """Start a new peak from what is live now."""
        self.peak = self.allocated
        self.peak_reserved = reserved_estimate(
            self.live["small"], self.live["mid"], self.live["large"]
        )

    # -- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _INDEX_OPS and _fake_operand(args) and any(_is_real_bool(i) for i in args[1]):
            args = (args[0], _expand_bool_indices(list(args[1])), *args[2:])
        if func is torch.ops.aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
            return True if args[0].dtype == torch.bool else 0
        out = func(*args, **kwargs)
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t)
        return out


# ----- attention as CUDA runs it --------------------------------------------------------------


KERNELS = {"flash": 0, "memory-efficient": 0}  # calls of each, for the record


def cuda_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``scaled_dot_product_attention`` through the kernel CUDA's SDPA would pick.

    bf16, head dim 128, no dropout: flash attention when there is no mask, the
    memory-efficient kernel (additive bias) with one. Their fake implementations
    allocate the output and the log-sum-exp only, as the kernels do; the CPU's math
    path would instead keep the ``[B, H, T, T]`` scores.
    """
    KERNELS["flash" if attn_mask is None else "memory-efficient"] += 1
    if enable_gqa or dropout_p:
        raise NotImplementedError("the capacity model covers LLaDA's attention only")
    if attn_mask is None:
        out = torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, 0.0, is_causal, False, scale=scale
        )
        return out[0]
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        attn_mask = bias.masked_fill(~attn_mask, float("-inf"))
    out = torch.ops.aten._scaled_dot_product_efficient_attention(
        query,
        key,
        value,
        attn_mask.expand(-1, query.shape[1], -1, -1),
        True,
        0.0,
        is_causal,
        scale=scale,
    )
    return out[0]


@contextlib.contextmanager
def cuda_attention() -> Iterator[None]:
    """Route transformers' SDPA attention to :func:`cuda_sdpa` for the duration."""
    original = torch.nn.functional.scaled_dot_product_attention
    torch.nn.functional.scaled_dot_product_attention = cuda_sdpa  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


# ----- building -------------------------------------------------------------------------------


def llama_config(arch: dict[str, Any], layers: int) -> LlamaConfig:
    """The bidirectional Llama config of ``arch`` with ``layers`` decoder layers."""
    config = llada_config_to_llama(arch | {"n_layers": layers})
    config._attn_implementation = "sdpa"
    return config


def meta_model(config: LlamaConfig, dtype: torch.dtype) -> LlamaForCausalLM:
    """The model on the meta device in ``dtype``, frozen, in eval mode (no storage yet)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to(dtype=dtype)  # type: ignore[call-arg]
    model.requires_grad_(False)
    model.eval()
    return model


# ----- LLaDA2-mini: a mixture of experts -------------------------------------------------------

#: LLaDA2.0-mini's config.json (inclusionAI), the keys that decide the architecture, and the
#: special ids of its tokenizer (mask 156895, end of text / pad 156892)
LLADA2_MINI: dict[str, Any] = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "intermediate_size": 5120,
    "num_hidden_layers": 20,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "first_k_dense_replace": 1,
    "moe_intermediate_size": 512,
    "num_experts": 256,
    "num_shared_experts": 1,
    "num_experts_per_tok": 8,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "partial_rotary_factor": 0.5,
    "rope_theta": 600000,
    "rms_norm_eps": 1e-06,
    "use_qk_norm": True,
    "use_qkv_bias": False,
    "use_bias": False,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
    "attention_dropout": 0.0,
    "mask_token_id": 156895,
    "pad_token_id": 156892,
}
# The same code path at a toy size (the CPU test).
LLADA2_TINY = LLADA2_MINI | {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "moe_intermediate_size": 32,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "mask_token_id": 500,
    "pad_token_id": 501,
}
LLADA2_LORA_TARGETS = LLADA2_FAMILY_TARGETS


def build_model(case: Case, arch: dict[str, Any], layers: int) -> Any:
    """The case's model on the meta device, bf16, frozen, in eval mode, ``layers`` deep."""
    if case.family == "llada2":
        config = llada2_config(arch | {"num_hidden_layers": layers})
        with torch.device("meta"):
            model = LLaDA2MoeDenoiser(config)
        model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]
        model.requires_grad_(False)
        model.eval()
        return model
    return meta_model(llama_config(arch, layers), torch.bfloat16)


def depth(case: Case, arch: dict[str, Any]) -> tuple[int, int]:
    """The model's depth, and the first of the two depths simulated: 1 for LLaDA (identical
    layers), one past the dense layers for LLaDA2 (its mixture-of-experts layers repeat)."""
    if case.family == "llada2":
        return arch["num_hidden_layers"], arch["first_k_dense_replace"] + 1
    return arch["n_layers"], 1


def _balanced_moe_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``LLaDA2SparseMoe.forward`` with every expert given an equal share of the token
    slots (a real assignment): the router runs as it is, but which expert a slot goes to
    is data, which fake tensors do not hold. The saved activations of the routed experts
    total ``tokens x top-k`` rows whatever the assignment; only the largest expert's
    transient buffers depend on it (the balancing bias drives it toward equal shares)."""
    flat = x.reshape(-1, x.shape[-1])
    chosen, weights = self.gate(flat)
    slots = chosen.shape[0] * chosen.shape[1]
    index = torch.arange(slots, device=flat.device)
    rows, slot, expert_of = (
        index // chosen.shape[1],
        index % chosen.shape[1],
        index % len(self.experts),
    )
    out = torch.zeros(flat.shape, dtype=torch.float32, device=flat.device)
    for expert, module in enumerate(self.experts):
        take = expert_of == expert
        r, k = rows[take], slot[take]
        out.index_add_(0, r, module(flat[r]).float() * weights[r, k, None])
    routed = out.to(x.dtype).view_as(x)
    return routed if self.shared_experts is None else routed + self.shared_experts(x)


@contextlib.contextmanager
def balanced_routing() -> Iterator[None]:
    """Route LLaDA2's experts by :func:`_balanced_moe_forward` for the duration."""
    original = LLaDA2SparseMoe.forward
    LLaDA2SparseMoe.forward = _balanced_moe_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        LLaDA2SparseMoe.forward = original  # type: ignore[method-assign]


def llada2_params(arch: dict[str, Any]) -> dict[str, int]:
    """Parameters of the whole model and those one token uses (its top-k experts, the
    shared expert, attention, the dense layers, embedding and head), from the meta model."""
    with torch.device("meta"):
        model = LLaDA2MoeDenoiser(llada2_config(arch))
    total = sum(p.numel() for p in model.parameters())
    per_expert = 3 * arch["hidden_size"] * arch["moe_intermediate_size"]
    moe_layers = arch["num_hidden_layers"] - arch["first_k_dense_replace"]
    idle = moe_layers * (arch["num_experts"] - arch["num_experts_per_tok"]) * per_expert
    return {"total": total, "active_per_token": total - idle}


def llada2_cases() -> list[Case]:
    """The LLaDA2-mini rows: c-DTM with block states (LoRA on a bf16 base) at the
    configs/llada2 recipes' micro-batches: Countdown 12 x 8 with the EMA teacher (with and
    without checkpointing), Sudoku 4 x 16."""
    return [
        Case("Countdown", "dtm", "lora-bf16", 12, 1, 8, True, True, family="llada2"),
        Case("Countdown", "dtm", "lora-bf16", 12, 1, 8, False, True, family="llada2"),
        Case("Sudoku", "dtm", "lora-bf16", 4, 1, 16, True, False, family="llada2"),
    ]


@dataclass(frozen=True)
class Case:
    """One simulated update: method, parameter setup and micro-batch."""

    name: str
    method: str  # "dtm" (c-DTM, SAR states, block 32) or a baseline's registry name
    setup: str  # "lora-bf16", "lora-4bit" (storage model) or "fsdp8-full"
    rows: int  # completions per micro-batch
    group: int  # completions per prompt in the micro-batch (1: single completions)
    accumulation: int  # micro-batches per optimiser update
    checkpointing: bool = True
    ema: bool = False  # the Countdown recipe's EMA teacher (a float32 copy of the adapter)
    prompt_length: int = 200
    response_length: int = 256
    family: str = "llada"  # "llada2": LLaDA2-mini, block states, its LoRA targets


def run_config(case: Case, lora_r: int) -> RunConfig:
    """The run configuration the package builds its objective from."""
    lora: dict[str, Any] = {"r": lora_r}  # alpha 64, dropout 0.05, all projections: defaults
    dtm: dict[str, Any] = {"c": 1.0, "states": "sar", "sar_block_length": 32}
    if case.family == "llada2":  # block states in the model's blocks of 32; its targets
        lora["target_modules"] = list(LLADA2_LORA_TARGETS)
        dtm = {"c": 1.0, "states": "block"}
    return RunConfig.model_validate(
        {
            "method": case.method,
            "seed": 0,
            "model": {"dtype": "bfloat16", "gradient_checkpointing": case.checkpointing},
            "lora": lora,
            "dtm": dtm if case.method == "dtm" else {},  # DTM's section alone
            "train": {
                "learning_rate": 3e-6,
                "adam_beta1": 0.9,
                "adam_beta2": 0.99,
                "weight_decay": 0.1,
                "num_generations": case.group,
                "prompts_per_batch": case.rows // case.group,
                "buffer_prompts": case.rows // case.group,
                "refresh_prompts": 0,
                "gradient_accumulation_steps": case.accumulation,
            },
        }
    )


def rollout_batch(case: Case, arch: dict[str, Any], seed: int = 0) -> RolloutBatch:
    """Real random rollouts: prompts of ``prompt_length`` tokens, responses, rewards."""
    generator = torch.Generator().manual_seed(seed)
    vocab = min(arch["mask_token_id"], arch["pad_token_id"])
    ids = torch.randint(0, vocab, (case.rows, case.prompt_length), generator=generator)
    responses = torch.randint(0, vocab, (case.rows, case.response_length), generator=generator)
    rewards = torch.rand(case.rows, generator=generator)
    return RolloutBatch(ids, torch.ones_like(ids), responses, rewards, case.group)


@dataclass
class Measured:
    """What one simulation at a given depth measured."""

    layers: int
    peak_bytes: int
    peak_reserved_bytes: int
    static_bytes: int  # weights, adapters, optimiser state before the update
    flops_micro: int  # FLOPs of one micro-batch (forwards and backward)
    seconds: float


def simulate_update(
    case: Case, arch: dict[str, Any], layers: int, lora_r: int, count_flops: bool = False
) -> Measured:
    """One update of ``case`` (two micro-batches, so the peak sees accumulated gradients).

    Memory and FLOPs come from separate runs (``count_flops``): ``FlopCounterMode`` keeps
    references to tensors saved under activation checkpointing, which would inflate the
    memory figure.
    """
    start = time.perf_counter()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    run = run_config(case, lora_r)
    mask_id, pad_id = arch["mask_token_id"], arch["pad_token_id"]
    objective = make_objective(run, mask_id)
    memory = DeviceMemory()
    full = case.setup == "fsdp8-full"
    model = build_model(case, arch, layers)
    if full:  # the full model gets its fake storage before the pair copies it
        with mode:
            model.to_empty(device="cpu")
    if full:
        model.requires_grad_(True)
        if case.checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        with mode:
            pair: Any = CopiedPair(
                MaskedDenoiser(model, mask_id, pad_id), keep_reference=objective.needs_reference
            )
        # FSDP reduce-scatters each layer's gradient during backward and frees the
        # unsharded one: drop it as soon as it is accumulated (the shard is arithmetic).
        for p in pair.student.parameters():
            p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    else:
        # PEFT injects the adapters on the meta device; the pair's own sharding hook then
        # gives the one PEFT model (base and both adapters) its fake storage.
        with torch.device("meta"):
            pair = LoRAPair(
                model,
                mask_id,
                pad_id,
                run.lora,
                ema_decay=0.95 if case.ema else None,
                gradient_checkpointing=case.checkpointing,
            )
        with mode:
            pair.apply_sharding(lambda m: m.to_empty(device="cpu"))
    params = list(pair.trainable_parameters())
    with mode:
        optimizer = torch.optim.AdamW(
            params, lr=3e-6, betas=(0.9, 0.99), weight_decay=0.1, fused=True
        )
        if not full:  # the moments exist from the first update on: make them now
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    models = [pair.student.model, pair.teacher.model]
    if objective.needs_reference:
        models.append(pair.reference().model)
    batch = rollout_batch(case, arch)
    phase = Phase(a=0.0, h=5.0, begun=True)
    # The recipes' rewards are task rewards in [0, 1]: the baseline is their bound, 0.
    objective.prepare(phase, 0.0, lambda: batch.grouped_rewards)
    objective.begin_stage(phase, batch.grouped_rewards)
    generator = torch.Generator().manual_seed(1)
    flops = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    with memory, cuda_attention(), balanced_routing():
        for m in models:
            memory.register(m.parameters())
            memory.register(m.buffers())
        memory.register([batch.prompt_ids, batch.prompt_mask, batch.responses, batch.rewards])
        if case.ema and not full:
            memory.register(list(pair.state_dict()["ema"].values()))
        for state in optimizer.state.values():
            memory.register([t for t in state.values() if isinstance(t, torch.Tensor)])
        static = memory.allocated
        memory.reset_peak()
        with flops:
            optimizer_update(
                objective,
                pair,
                optimizer,
                lambda: batch,
                phase,
                generator,
                1.0,
                accumulation_steps=2,
            )
    return Measured(
        layers=layers,
        peak_bytes=memory.peak,
        peak_reserved_bytes=memory.peak_reserved,
        static_bytes=static,
        flops_micro=flops.get_total_flops() // 2 if isinstance(flops, FlopCounterMode) else 0,
        seconds=time.perf_counter() - start,
    )


def _upper_bound_indices(index: torch.Tensor) -> list[torch.Tensor]:
    """A fake boolean index as long indices selecting every element: the largest shape the
    data-dependent selection can take (its values are unknown)."""
    assert isinstance(index, FakeTensor)
    with index.fake_mode:
        return [torch.zeros(index.numel(), dtype=torch.long) for _ in range(index.dim())]


def _fake_bool(t: object) -> bool:
    return isinstance(t, FakeTensor) and t.dtype == torch.bool


class SamplerMemory(DeviceMemory):
    """:class:`DeviceMemory` for the sampler, whose control tensors stay real.

    The model is fake; the canvas, the open positions and the committed ones are real CPU
    tensors (small: they would be on the GPU too, and are counted), so the vocabulary work
    is sized by the true number of open positions. What the fake values decide instead
    (the lean draw's rare correction of an index of weight 0, a confidence rule) is taken
    at its upper bound: a boolean selection by a fake mask selects every element, a fake
    truth value is True. Tokens drawn from fake values are never committed (writing fake
    values into a real canvas changes nothing), so every step of a block sees all of its
    positions open: the largest step, every time.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func is torch.ops.aten.nonzero.default and _fake_bool(args[0]):
            with args[0].fake_mode:
                out = torch.zeros((args[0].numel(), args[0].dim()), dtype=torch.long)
            self._track(out)
            return out
        if func in _INDEX_OPS and any(_fake_bool(i) for i in args[1]):
            indices: list[torch.Tensor | None] = []
            for index in args[1]:
                indices.extend(_upper_bound_indices(index) if _fake_bool(index) else [index])
            args = (args[0], indices, *args[2:])
        return super().__torch_dispatch__(func, types, args, kwargs)


#: the sampler settings whose step is simulated (the fixed-step modes; a parallel mode's
#: step is its fixed-step mode's, its number of steps follows the confidences)
SAMPLER_MODES: dict[str, dict[str, Any]] = {
    "exact": {"mode": "exact"},
    "cached prefix": {"mode": "cached", "cache": "prefix"},
    "cached dual": {"mode": "cached", "cache": "dual"},
}


def fake_denoiser(arch: dict[str, Any], layers: int) -> MaskedDenoiser:
    """The bare bf16 base of ``arch`` at ``layers`` decoder layers, as fake tensors."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = meta_model(llama_config(arch, layers), torch.bfloat16)
    with mode:
        model.to_empty(device="cpu")
    return MaskedDenoiser(model, arch["mask_token_id"], arch["pad_token_id"])


def simulate_sampler(
    arch: dict[str, Any],
    layers: int,
    rows: int,
    prompt_length: int,
    response_length: int,
    block_length: int,
    count_flops: bool = False,
    steps: int | None = None,
    sampler: dict[str, Any] | None = None,
) -> dict[str, int]:
    """The package's sampler (:func:`generate`, as it runs: lean noise, the default) on the
    bare bf16 base, the model fake, one call of ``rows`` prompts.

    Memory (``count_flops`` False): the peak of one denoiser forward alone
    (``peak_forward_bytes``) and of the whole call (``peak_step_bytes``: every step with all
    of its block open, the cache of the cached modes included), with two steps per block
    unless ``steps`` says (the peak of a step does not depend on how many there are).
    FLOPs (``count_flops``): of one full forward (``flops_forward``) and of the whole call
    at ``steps`` steps (``flops_generate``). ``sampler``: :data:`SAMPLER_MODES` fields.
    """
    denoiser = fake_denoiser(arch, layers)
    vocab = min(arch["mask_token_id"], arch["pad_token_id"])
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, vocab, (rows, prompt_length), generator=generator).tolist()
    blocks = response_length // block_length
    config = SamplingConfig(
        steps=steps or 2 * blocks,
        block_length=block_length,
        temperature=1.0,
        **(sampler or {}),
    )
    memory = SamplerMemory()
    out: dict[str, int] = {}
    with memory, cuda_attention(), torch.no_grad():
        memory.register(denoiser.parameters())
        memory.register(denoiser.buffers())
        out["static_bytes"] = memory.allocated
        ids = torch.zeros((rows, prompt_length + response_length), dtype=torch.long)
        if count_flops:
            with FlopCounterMode(display=False) as flops:
                denoiser(ids, torch.ones_like(ids), response_length)
            out["flops_forward"] = flops.get_total_flops()
            with FlopCounterMode(display=False) as flops:
                generate(denoiser, prompts, response_length, config, generator)
            out["flops_generate"] = flops.get_total_flops()
            return out
        memory.reset_peak()
        denoiser(ids, torch.ones_like(ids), response_length)
        out["peak_forward_bytes"] = memory.peak
        del ids
        memory.reset_peak()
        generate(denoiser, prompts, response_length, config, generator)
        out["peak_step_bytes"] = memory.peak
    return out


def compatible_noise_bytes(rows: int, response_length: int, vocab: int) -> int:
    """What ``noise: compatible`` adds to a step on a GPU: its float64 uniform draw of every
    response position and vocabulary entry (a CUDA generator fills it in a device-specific
    order, so it is made whole; on the CPU it is stepped over, so the simulation, which
    runs a CPU generator, cannot see it: arithmetic)."""
    return allocator_block(rows * response_length * vocab * 8)


# ----- depth extrapolation and arithmetic -----------------------------------------------------


def extrapolate(one: float, two: float, layers: int, first: int = 1) -> dict[str, float]:
    """``fixed + layers x per_layer`` from the values at ``first`` and ``first + 1`` layers
    (the layers from ``first`` on identical; what differs before them is in ``fixed``)."""
    per_layer = two - one
    fixed = one - first * per_layer
    return {"fixed": fixed, "per_layer": per_layer, "total": fixed + layers * per_layer}


def decoder_layer_params(arch: dict[str, Any]) -> dict[str, int]:
    """Parameter counts of one decoder layer (linear weights, norms) and of the rest."""
    d, m, heads, kv = arch["d_model"], arch["mlp_hidden_size"], arch["n_heads"], arch["n_kv_heads"]
    head_dim = d // heads
    linear = 2 * d * d + 2 * d * kv * head_dim + 3 * d * m
    vocab = arch["embedding_size"]
    return {"linear": linear, "norms": 2 * d, "embedding": vocab * d, "lm_head": vocab * d}


def total_params(arch: dict[str, Any]) -> int:
    """Parameters of the whole model."""
    p = decoder_layer_params(arch)
    return (
        arch["n_layers"] * (p["linear"] + p["norms"])
        + p["embedding"]
        + p["lm_head"]
        + arch["d_model"]
    )


# NF4 with double quantisation: 4 bits per weight, one 8-bit absmax per 64 weights and
# one float32 second-level constant per 256 absmax blocks (bitsandbytes' layout).
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)


def four_bit_adjustment(arch: dict[str, Any]) -> dict[str, float]:
    """Bytes a 4-bit base saves against bf16: decoder linear weights to NF4 (embedding and
    output projection stay bf16, as transformers leaves them), plus one dequantised
    weight (the largest) alive at a time as bitsandbytes' matmul makes it."""
    p = decoder_layer_params(arch)
    linear = arch["n_layers"] * p["linear"]
    largest = arch["d_model"] * arch["mlp_hidden_size"]
    return {
        "bf16_linear_bytes": 2.0 * linear,
        "nf4_linear_bytes": NF4_BYTES_PER_PARAM * linear,
        "dequantised_transient_bytes": 2.0 * largest,
    }


def fsdp_rank_bytes(
    arch: dict[str, Any], ranks: int, needs_reference: bool, ema: bool
) -> dict[str, float]:
    """Per-rank static bytes of full fine-tuning under FSDP (``fully_shard`` per layer).

    As the package shards (``tiltmatch.training.parallel.Sharded``: no mixed-precision
    policy, parameters in the load dtype, bf16): the student's parameters, gradients
    and both AdamW moments, 8 bytes per parameter, the teacher's (and the reference's,
    the EMA's) 2 bytes, each over ``ranks``; plus the unsharded working set: the root
    unit (embedding, output projection) and two decoder layers (the one running and
    the one prefetched), all-gathered in bf16.
    """
    n = total_params(arch)
    p = decoder_layer_params(arch)
    copies = 1 + int(needs_reference) + int(ema)
    return {
        "student_shard": 8.0 * n / ranks,
        "frozen_shards": 2.0 * copies * n / ranks,
        "unsharded_root": 2.0 * (p["embedding"] + p["lm_head"]),
        "unsharded_layers": 2.0 * 2 * (p["linear"] + p["norms"]),
    }


# ----- the plan -------------------------------------------------------------------------------


# The baselines DTM is published beside, each at its configs/llada Countdown recipe's update
# (per process): whole groups of 6 (SPG, ESPO) or 10 (coupled-GRPO) completions.
BESIDE = [
    ("spg", "Countdown", 12, 6, 1),  # 2 prompts x 6, num_t = 2 block-wise states each
    ("espo", "Countdown", 12, 6, 1),  # 2 prompts x 6, num_mc = 2 coupled ELBO estimates
    ("coupled-grpo", "Countdown", 10, 10, 1),  # 1 prompt x 10, three passes per model
]


#: methods whose largest micro-batch of single completions is searched (the group-relative
#: baselines beside DTM need whole groups: their rows are their recipes' updates only)
SWEPT = ("dtm", "diffu-grpo")


def recipe_cases() -> list[Case]:
    """The measured updates: each recipe's micro-batch, the old 72-row one, DTM and
    diffu-GRPO, LoRA on bf16 with and without checkpointing, LoRA on 4-bit, full
    fine-tuning on 8; and SPG, ESPO and coupled-GRPO at their recipes' update (LoRA on
    bf16 with checkpointing, and on 4-bit)."""
    batches = [
        ("Sudoku", 4, 1, 16, False),  # 4 single completions, 16 micro-batches per update
        ("Countdown", 12, 1, 8, True),  # 12 single completions, 8 micro-batches, EMA teacher
        ("old 12x6", 72, 6, 1, True),  # 12 prompts x 6 completions as one micro-batch
    ]
    cases = []
    for method in ("dtm", "diffu-grpo"):
        for label, rows, group, accumulation, ema in batches:
            ema = ema and method == "dtm"  # diffu-GRPO's old policy is the previous model
            for setup, ckpt in (("lora-bf16", True), ("lora-bf16", False), ("fsdp8-full", True)):
                cases.append(Case(f"{label}", method, setup, rows, group, accumulation, ckpt, ema))
    for method, label, rows, group, accumulation in BESIDE:
        cases.append(Case(label, method, "lora-bf16", rows, group, accumulation, True))
    return cases


def fits(peak_bytes: float) -> bool:
    """Whether a peak fits one 80 GB H100 with 10% left for context, NCCL and fragmentation."""
    return peak_bytes <= FIT_FRACTION * H100_MEMORY_GIB * GIB


def plan_case(
    case: Case,
    arch: dict[str, Any],
    lora_r: int,
    utilisation: float,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every figure of one case at full depth, from the 1- and 2-layer simulations."""
    layers, first = depth(case, arch)
    mem = [simulate_update(case, arch, n, lora_r) for n in (first, first + 1)]
    flo = [simulate_update(case, arch, n, lora_r, count_flops=True) for n in (first, first + 1)]
    peak = extrapolate(mem[0].peak_bytes, mem[1].peak_bytes, layers, first)
    reserved = extrapolate(mem[0].peak_reserved_bytes, mem[1].peak_reserved_bytes, layers, first)
    static = extrapolate(mem[0].static_bytes, mem[1].static_bytes, layers, first)
    flops_micro = extrapolate(flo[0].flops_micro, flo[1].flops_micro, layers, first)["total"]
    flops_update = flops_micro * case.accumulation
    rows: list[dict[str, Any]] = []
    base = {
        "case": asdict(case),
        "peak_bytes": peak,
        "peak_reserved_bytes": reserved,
        "static_bytes": static,
        "flops_per_micro_batch": flops_micro,
        "flops_per_update": flops_update,
        "seconds_per_update": flops_update / (H100_BF16_DENSE_FLOPS * utilisation),
        "simulation_seconds": sum(m.seconds for m in mem + flo),
    }
    if case.setup == "fsdp8-full":
        objective_reference = make_objective(run_config(case, lora_r), 0).needs_reference
        shards = fsdp_rank_bytes(arch, 8, objective_reference, case.ema)
        activations = peak["total"] - static["total"]
        base["fsdp_rank_bytes"] = shards | {"activations": activations}
        base["gpu_peak_bytes"] = activations + sum(shards.values())
        base["gpus"] = 8
        rows.append(base)
    else:
        base["gpu_peak_bytes"] = peak["total"]
        base["gpus"] = 1
        rows.append(base)
        if case.checkpointing and case.family == "llada":  # on a 4-bit base (storage model)
            adj = four_bit_adjustment(arch)
            saved = adj["bf16_linear_bytes"] - adj["nf4_linear_bytes"]
            four = dict(base)
            four["case"] = asdict(replace(case, setup="lora-4bit"))
            four["gpu_peak_bytes"] = peak["total"] - saved + adj["dequantised_transient_bytes"]
            four["four_bit"] = adj
            rows.append(four)
    for r in rows:
        r["fits_one_80gb"] = fits(r["gpu_peak_bytes"])
    c = case
    progress(
        f"{c.method} {c.name} {c.setup} ckpt={c.checkpointing}: "
        f"{base['gpu_peak_bytes'] / GIB:.1f} GiB, {flops_update / 1e12:.0f} TFLOP/update"
    )
    return {"rows": rows}


def largest_fitting(
    method: str, arch: dict[str, Any], lora_r: int, checkpointing: bool, limit: int
) -> dict[str, Any]:
    """The largest micro-batch (single completions) of a LoRA bf16 update that fits,
    by bisection on the extrapolated peak."""
    layers = arch["n_layers"]

    def peak(rows: int) -> float:
        case = Case("sweep", method, "lora-bf16", rows, 1, 1, checkpointing)
        one, two = (simulate_update(case, arch, n, lora_r).peak_bytes for n in (1, 2))
        return extrapolate(one, two, layers)["total"]

    # The peak is linear in the rows (every tensor that grows has a row dimension): predict
    # the largest fitting micro-batch from two probes, then walk to it one row at a time.
    seen = {rows: peak(rows) for rows in (4, 16)}
    slope = (seen[16] - seen[4]) / 12
    budget = FIT_FRACTION * H100_MEMORY_GIB * GIB
    guess = max(1, min(limit, int((budget - seen[4]) / slope) + 4))
    seen.setdefault(guess, peak(guess))
    while fits(seen[guess]) and guess < limit:
        guess += 1
        seen.setdefault(guess, peak(guess))
    while not fits(seen[guess]) and guess > 1:
        guess -= 1
        seen.setdefault(guess, peak(guess))
    lo = guess if fits(seen[guess]) else 0
    if lo + 1 not in seen and lo < limit:
        seen[lo + 1] = peak(lo + 1)
    return {
        "method": method,
        "checkpointing": checkpointing,
        "largest_rows": lo,
        "peak_gib_at_largest": seen.get(lo, 0.0) / GIB,
        "peak_gib_one_more": seen.get(lo + 1, float("nan")) / GIB,
        "probed": {str(k): v / GIB for k, v in sorted(seen.items())},
    }


def check_depth(case: Case, arch: dict[str, Any], lora_r: int) -> dict[str, Any]:
    """One case simulated at full depth against its 1/2-layer extrapolation."""
    one, two = (simulate_update(case, arch, n, lora_r) for n in (1, 2))
    full = simulate_update(case, arch, arch["n_layers"], lora_r)
    predicted = extrapolate(one.peak_bytes, two.peak_bytes, arch["n_layers"])["total"]
    return {
        "case": asdict(case),
        "layers": arch["n_layers"],
        "simulated_peak_gib": full.peak_bytes / GIB,
        "extrapolated_peak_gib": predicted / GIB,
        "simulated_static_gib": full.static_bytes / GIB,
        "seconds": full.seconds,
    }


# ----- reporting ------------------------------------------------------------------------------

_SETUPS = {
    "lora-bf16": "LoRA r=128, bf16 base",
    "lora-4bit": "LoRA r=128, 4-bit base (storage model)",
    "fsdp8-full": "full FT, FSDP 8 ranks (per rank)",
}
_METHODS = {
    "dtm": "c-DTM (SAR, block 32)",
    "diffu-grpo": "diffu-GRPO (beta_KL 0.04)",
    "spg": "SPG mix (num_t 2, block 32)",
    "espo": "ESPO (num_mc 2, coupled, beta_KL 0.01)",
    "coupled-grpo": "coupled-GRPO (3 passes, beta_KL 0.01)",
}


def method_label(case: dict[str, Any]) -> str:
    """How the tables name a case's method (and model, for LLaDA2-mini)."""
    if case.get("family") == "llada2":
        return "LLaDA2-mini: c-DTM (block states, block 32)"
    return _METHODS[case["method"]]


def markdown(record: dict[str, Any]) -> str:
    """The plan as Markdown tables."""
    s = record["settings"]
    lines = [
        f"Updates: prompt {s['prompt_length']} + response {s['response_length']} tokens; "
        f"peak per GPU in GiB (allocated, 512 B blocks); fits = at most "
        f"{FIT_FRACTION:.0%} of {H100_MEMORY_GIB} GiB; time at {s['utilisation']:.0%} of "
        f"{H100_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s.",
        "",
        "| method | micro-batch (rows x accumulation) | setup | checkpointing | peak GiB/GPU "
        "| reserved GiB (est.) | fits one 80 GB | GPUs | TFLOP / micro-batch | TFLOP / update "
        "| s / update |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for entry in record["cases"]:
        for r in entry["rows"]:
            c = r["case"]
            reserved = "-"
            if c["setup"] == "lora-bf16":  # the 4-bit and FSDP rows are partly arithmetic
                reserved = f"{r['peak_reserved_bytes']['total'] / GIB:.1f}"
            lines.append(
                f"| {method_label(c)} | {c['name']}: {c['rows']} x {c['accumulation']} "
                f"| {_SETUPS[c['setup']]} | {'on' if c['checkpointing'] else 'off'} "
                f"| {r['gpu_peak_bytes'] / GIB:.1f} | {reserved} "
                f"| {'yes' if r['fits_one_80gb'] else 'no'} "
                f"| {r['gpus']} | {r['flops_per_micro_batch'] / 1e12:.0f} "
                f"| {r['flops_per_update'] / 1e12:.0f} | {r['seconds_per_update']:.1f} |"
            )
    if record.get("sweep"):
        lines += [
            "",
            "| method (LoRA bf16) | checkpointing | largest micro-batch that fits | peak GiB "
            "| peak GiB with one more row |",
            "| --- | --- | --- | --- | --- |",
        ]
        for w in record["sweep"]:
            lines.append(
                f"| {_METHODS[w['method']]} | {'on' if w['checkpointing'] else 'off'} "
                f"| {w['largest_rows']} | {w['peak_gib_at_largest']:.1f} "
                f"| {w['peak_gib_one_more']:.1f} |"
            )
    if record.get("sampler"):
        lines += ["", sampler_markdown(record["sampler"], s)]
    for chk in record.get("depth_checks", []):
        c = chk["case"]
        lines.append(
            f"\nDepth check ({c['method']}, {c['rows']} rows, {c['setup']}, checkpointing "
            f"{'on' if c['checkpointing'] else 'off'}): simulated at {chk['layers']} layers "
            f"{chk['simulated_peak_gib']:.2f} GiB, extrapolated from 1 and 2 layers "
            f"{chk['extrapolated_peak_gib']:.2f} GiB."
        )
    return "\n".join(lines)


#: RolloutWorker's default chunk: the most rows one ``generate`` call gets
GENERATE_CHUNK = 256
RECIPES = Path(__file__).resolve().parents[1] / "configs" / "llada"


def recipe_generate_calls(folder: Path = RECIPES) -> list[dict[str, Any]]:
    """Per LLaDA recipe (``configs/llada/*.yaml``), the ``generate`` calls of one process: the
    buffer rebuild (``buffer_prompts x num_generations`` rows), a refresh, and held-out
    evaluation, each in chunks of at most :data:`GENERATE_CHUNK` rows, with the sampler
    settings they run."""
    import yaml

    from tiltmatch.tasks import get_task

    calls = []
    for path in sorted(folder.glob("*.yaml")):
        config = RunConfig.model_validate(yaml.safe_load(path.read_text()))
        task = get_task(config.task, **config.task_options)
        tc, ev = config.train, config.eval
        sampler = config.sampler if ev.sampler is None else ev.sampler
        for purpose, rows, settings in (
            ("buffer rebuild", tc.buffer_prompts * tc.num_generations, config.sampler),
            ("refresh", tc.refresh_prompts * tc.num_generations, config.sampler),
            ("evaluation", ev.examples * ev.samples_per_example, sampler),
        ):
            if rows:
                calls.append(
                    {
                        "recipe": path.stem,
                        "purpose": purpose,
                        "rows": min(rows, GENERATE_CHUNK),
                        "calls": -(-rows // GENERATE_CHUNK),
                        "response_length": task.response_length,
                        "steps": settings.steps,
                        "block_length": settings.block_length,
                    }
                )
    return calls


def sampler_record(
    arch: dict[str, Any], args: argparse.Namespace, prompt: int, response: int, block: int
) -> dict[str, Any]:
    """Per sampler mode (:data:`SAMPLER_MODES`, lean noise): the peak of one ``generate`` call
    at each batch the recipes hand it (``--sampler-rows``: these instead), with what
    compatible noise would add on a GPU; and the FLOPs of a rollout (per completion)."""
    layers = arch["n_layers"]
    calls = [c for c in recipe_generate_calls() if c["response_length"] == response]
    batches = args.sampler_rows or sorted({c["rows"] for c in calls})
    if args.tiny and not args.sampler_rows:
        batches = [4]
    vocab = arch["embedding_size"]
    peaks: dict[str, dict[str, dict[str, float]]] = {}
    for rows in batches:
        per_mode = {}
        for name, fields in SAMPLER_MODES.items():
            sims = [
                simulate_sampler(arch, n, rows, prompt, response, block, sampler=fields)
                for n in (1, 2)
            ]
            forward, step = (
                extrapolate(sims[0][key], sims[1][key], layers)["total"] / GIB
                for key in ("peak_forward_bytes", "peak_step_bytes")
            )
            extra = compatible_noise_bytes(rows, response, vocab) / GIB
            per_mode[name] = {
                "peak_forward_gib": forward,
                "peak_step_gib": step,
                "peak_step_compatible_gib": step + extra,
                "fits_one_80gb": fits(step * GIB),
            }
        peaks[str(rows)] = per_mode
    flops: dict[str, dict[str, float]] = {}
    rows = 2  # FLOPs are linear in the rows: a rollout's, per completion
    for name, fields in SAMPLER_MODES.items():
        sims = [
            simulate_sampler(
                arch, n, rows, prompt, response, block, True, args.sampler_steps, fields
            )
            for n in (1, 2)
        ]
        forward = extrapolate(sims[0]["flops_forward"], sims[1]["flops_forward"], layers)
        rollout = extrapolate(sims[0]["flops_generate"], sims[1]["flops_generate"], layers)
        flops[name] = {
            "tflops_forward_per_row": forward["total"] / rows / 1e12,
            "tflops_rollout_per_row": rollout["total"] / rows / 1e12,
            "seconds_per_rollout_row": rollout["total"]
            / rows
            / (H100_BF16_DENSE_FLOPS * args.utilisation),
        }
    return {
        "steps": args.sampler_steps,
        "block_length": block,
        "noise": "lean",
        "generate_calls": calls,
        "peaks": peaks,
        "flops": flops,
    }


def sampler_markdown(smp: dict[str, Any], s: dict[str, Any]) -> str:
    """The sampler part of the plan as Markdown."""
    lines = [
        f"Sampler: the package's `generate` as it runs (default lean noise; every step with "
        f"its whole block open, the upper bound of the data-dependent selection), bare bf16 "
        f"base, prompts of {s['prompt_length']} + {s['response_length']} tokens, block "
        f"{smp['block_length']}. Peak GiB of one call; compatible noise on a GPU adds its "
        f"float64 draw of rows x L x V.",
        "",
        "| rows in one call | mode | forward peak | call peak (lean) | fits one 80 GB "
        "| call peak, compatible noise |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for rows, per_mode in smp["peaks"].items():
        for name, p in per_mode.items():
            lines.append(
                f"| {rows} | {name} | {p['peak_forward_gib']:.1f} | {p['peak_step_gib']:.1f} "
                f"| {'yes' if p['fits_one_80gb'] else 'no'} "
                f"| {p['peak_step_compatible_gib']:.1f} |"
            )
    lines += [
        "",
        f"A rollout of {s['response_length']} tokens in {smp['steps']} steps, per completion:",
        "",
        "| mode | TFLOP per completion | vs exact | s per completion at the stated utilisation |",
        "| --- | --- | --- | --- |",
    ]
    exact = smp["flops"]["exact"]["tflops_rollout_per_row"]
    for name, f in smp["flops"].items():
        lines.append(
            f"| {name} | {f['tflops_rollout_per_row']:.2f} "
            f"| {f['tflops_rollout_per_row'] / exact:.2f} | {f['seconds_per_rollout_row']:.3f} |"
        )
    calls = [c for c in smp["generate_calls"] if c["purpose"] != "refresh"]
    if calls:
        lines += [
            "",
            "The recipes' calls (per process): "
            + "; ".join(
                f"{c['recipe']} {c['purpose']} {c['calls']} x {c['rows']} rows" for c in calls
            )
            + ".",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON record to write")
    parser.add_argument("--tiny", action="store_true", help="the toy model (the CPU test)")
    parser.add_argument(
        "--model",
        choices=("llada-8b", "llada2-mini"),
        default="llada-8b",
        help="LLaDA-8B (every row) or LLaDA2-mini (its c-DTM LoRA rows; no sweep or sampler)",
    )
    parser.add_argument("--utilisation", type=float, default=0.4, help="of the bf16 peak")
    parser.add_argument(
        "--sampler-rows",
        type=int,
        nargs="*",
        default=None,
        help="rows of the simulated generate calls (default: the LLaDA recipes' batches)",
    )
    parser.add_argument("--sampler-steps", type=int, default=128)
    parser.add_argument("--no-sweep", action="store_true", help="skip the largest-batch sweep")
    parser.add_argument("--no-sampler", action="store_true", help="skip the sampler step")
    parser.add_argument("--sweep-limit", type=int, default=512)
    parser.add_argument(
        "--check-layers", action="store_true", help="check the extrapolation at full depth once"
    )
    parser.add_argument("--only", nargs="*", default=None, help="case names to run (e.g. Sudoku)")
    parser.add_argument("--methods", nargs="*", choices=sorted(_METHODS), default=sorted(_METHODS))
    parser.add_argument(
        "--table-from",
        type=Path,
        nargs="+",
        help="print the tables of JSON records written by --out (sweeps of later ones added)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        parser.error(f"--utilisation must be in (0, 1], got {args.utilisation}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table_from:
        first, *more = (json.loads(path.read_text()) for path in args.table_from)
        for other in more:
            first.setdefault("sweep", []).extend(other.get("sweep", []))
            first.setdefault("depth_checks", []).extend(other.get("depth_checks", []))
        print(markdown(first))
        return 0
    llada2 = args.model == "llada2-mini"
    if llada2:
        arch = LLADA2_TINY if args.tiny else LLADA2_MINI
        args.no_sweep = args.no_sampler = True
    else:
        arch = TINY if args.tiny else LLADA_8B
    lora_r = 4 if args.tiny else 128
    prompt, response, block = (20, 64, 16) if args.tiny else (200, 256, 32)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    cases = [
        replace(c, prompt_length=prompt, response_length=response)
        for c in (llada2_cases() if llada2 else recipe_cases())
        if (args.only is None or c.name in args.only) and c.method in args.methods
    ]
    name = "LLaDA2.0-mini architecture" if llada2 else "LLaDA-8B-Instruct architecture"
    record: dict[str, Any] = {
        "model": f"toy ({name})" if args.tiny else name,
        "architecture": arch,
        "total_params": llada2_params(arch) if llada2 else total_params(arch),
        "settings": {
            "prompt_length": prompt,
            "response_length": response,
            "lora_r": lora_r,
            "lora_alpha": 64,
            "utilisation": args.utilisation,
            "h100_bf16_flops": H100_BF16_DENSE_FLOPS,
            "h100_memory_gib": H100_MEMORY_GIB,
            "fit_fraction": FIT_FRACTION,
        },
        "cases": [plan_case(c, arch, lora_r, args.utilisation, progress) for c in cases],
    }
    if not args.no_sampler:
        record["sampler"] = sampler_record(arch, args, prompt, response, block)
        progress(f"sampler: {record['sampler']}")
    if args.out:  # what is done so far, in case a later part fails
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    if not args.no_sweep:
        record["sweep"] = [
            largest_fitting(m, arch, lora_r, ck, args.sweep_limit)
            for m in args.methods
            if m in SWEPT
            for ck in (True, False)
        ]
    if args.check_layers:
        chk = Case("Countdown", "dtm", "lora-bf16", 12, 1, 8, True, True, prompt, response)
        record["depth_checks"] = [check_depth(chk, arch, lora_r)]
    record["attention_kernel_calls"] = dict(KERNELS)
    record["machine"] = f"{platform.machine()} CPU, torch {torch.__version__}, no GPU"
    record["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    record["wall_seconds"] = time.perf_counter() - started
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
