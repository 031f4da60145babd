"""Capacity plan for LLaDA-8B-Instruct without a GPU: peak memory, FLOPs and time per update.

Builds LLaDA-8B-Instruct's exact architecture (``gpu_check.MODELS["llada-8b"]``: the
bidirectional ``LlamaForCausalLM`` that :func:`tiltmatch.models.llada.llada_config_to_llama`
makes of LLaDA's config) under PyTorch's fake tensors
(``torch._subclasses.fake_tensor.FakeTensorMode``): every tensor has its shape, dtype and
storage size but no data, so the 8B model "exists" on this CPU box in no memory and a
forward costs only the Python dispatch. The fake tensors live on the CPU (a fake CUDA
device fails at weight initialisation and in backward with a CPU-only torch), and what
CUDA does differently is forced:

- attention: every layer's attention runs through a custom op whose fake kernel allocates
  what PyTorch's CUDA memory-efficient / flash kernels allocate (output ``[B, H, T, D]``
  and a float32 logsumexp ``[B, H, T]`` saved for backward; ``dq, dk, dv`` in backward;
  never the ``[B, H, T, T]`` score matrix the CPU math path would hold), with FLOPs
  ``4 B H T^2 D`` forward and ``10 B H T^2 D`` backward (the backward recomputes the
  scores: 5 matmuls of the forward's 2);
- the allocator: MemTracker rounds each storage up to 512 B (the CUDA caching allocator's
  block size) as it does for CUDA tensors; segment rounding (2 MiB / 20 MiB segments) and
  fragmentation are not modelled (see ``FIT_FRACTION``);
- the optimiser: AdamW with ``fused=True`` (the CUDA default choice: no per-tensor
  temporaries), its two float32 moments per trainable parameter.

One update of each recipe runs through the project's own code: a
:class:`~tiltmatch.training.lora.LoRAPair` (student and teacher adapters, r = 128, on a
bf16 base) and the objective of :func:`tiltmatch.training.methods.make_objective`
(c-DTM with SAR states, c = 1; diffu-GRPO with its current / old / reference passes), one
micro-batch forward and backward, ``clip_grad_norm_`` and the AdamW step, under
``torch.distributed._tools.mem_tracker.MemTracker`` (peak bytes by kind: parameters,
gradients, optimiser states, activations, temporaries) and
``torch.utils.flop_counter.FlopCounterMode``. An update of ``k`` accumulation steps costs
``k`` times the micro-step's FLOPs; its peak is the micro-step's (the gradients persist
across micro-steps and are counted in it).

What cannot be simulated, and is computed instead (stated in the output):

- 4-bit (NF4) bases: bitsandbytes' kernels are CUDA-only and have no fake-tensor
  support. The 4-bit figure is the bf16 figure with the base weights' bytes replaced by
  NF4's (0.5 byte per weight + 1 byte absmax per 64 weights, double-quantised to about
  0.127 bit per weight) plus one dequantised bf16 weight of the largest projection
  (bitsandbytes dequantises one matrix at a time in forward and backward).
- Full fine-tuning under FSDP on 8 ranks: per-rank shard arithmetic. Parameters,
  gradients and AdamW moments of the student (and the full-copy teacher of
  :class:`~tiltmatch.training.pair.CopiedPair`, parameters only) divided by 8, plus two
  unsharded layers (the one computing and the one prefetched) and their gradients before
  the reduce-scatter, plus the activations of one rank's micro-batch measured here on an
  unsharded model whose weights require gradients.

Time per update = FLOPs / (989 TFLOP/s, an H100 SXM's dense bf16 peak, x the assumed
model FLOP utilisation ``--mfu``, 0.4 by default: an assumption, not a measurement).

    PYTHONPATH=src python benchmarks/capacity.py --out runs/capacity.json   # BENCHMARKS.md
    PYTHONPATH=src python benchmarks/capacity.py --layers 2 --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools import mem_tracker as mem_tracker_module
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import MODELS, RECIPE_TRAIN, build_base

from tiltmatch.baselines import group_advantages
from tiltmatch.baselines.diffu_grpo import clipped_surrogate, k3_kl
from tiltmatch.baselines.likelihood import draw_prompt_mask, one_pass_token_log_probs
from tiltmatch.config import RunConfig
from tiltmatch.dtm.loss import ctilt_target
from tiltmatch.dtm.states import sar_states
from tiltmatch.dtm.weights import tilt_weights
from tiltmatch.sampling.rollouts import RolloutBatch
from tiltmatch.sampling.sampler import left_pad
from tiltmatch.training.lora import LoRAPair

GIB = 2**30
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM5 dense bf16 (no sparsity)
H100_MEMORY = 80e9  # bytes of an "80 GB" card (74.5 GiB; nvidia-smi shows 81,559 MiB)
#: A plan "fits" when the simulated peak is at most this share of the card: the rest is
#: for the CUDA context (~0.5 GiB), the allocator's segment rounding and fragmentation.
FIT_FRACTION = 0.9
CUDA_BLOCK = 512  # the caching allocator's allocation granularity, bytes


# ----- CUDA-like attention: memory and FLOPs of the fused kernels ------------------------------


@torch.library.custom_op("tiltmatch_capacity::attention", mutates_args=())
def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention ``softmax(q k^T * scale + mask) v`` and its float32 logsumexp (real path:
    the math, for checks on small real tensors)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf"))
            if mask.dtype == torch.bool
            else (scores + mask.float())
        )
    lse = torch.logsumexp(scores, dim=-1)
    out = (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)
    return out, lse


@fused_attention.register_fake
def _(q, k, v, mask, scale):
    batch, heads, length, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, heads, length), dtype=torch.float32)


@torch.library.custom_op("tiltmatch_capacity::attention_backward", mutates_args=())
def fused_attention_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``dq, dk, dv`` (real path: the softmax-attention gradient written out, for checks)."""
    qf, kf, vf, g = q.float(), k.float(), v.float(), grad.float()
    scores = (qf @ kf.transpose(-1, -2)) * scale
    if mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf"))
            if mask.dtype == torch.bool
            else (scores + mask.float())
        )
    p = torch.softmax(scores, dim=-1)
    o = p @ vf
    dv = p.transpose(-1, -2) @ g
    dp = g @ vf.transpose(-1, -2)
    ds = p * (dp - (g * o).sum(-1, keepdim=True))
    dq = (ds @ kf) * scale
    dk = (ds.transpose(-1, -2) @ qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@fused_attention_backward.register_fake
def _(grad, q, k, v, mask, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, mask, out, lse)  # what the CUDA kernels save
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, mask, out, lse = ctx.saved_tensors
    dq, dk, dv = fused_attention_backward(grad_out, q, k, v, mask, out, lse, ctx.scale)
    return dq, dk, dv, None, None


fused_attention.register_autograd(_backward, setup_context=_setup)


def _attention_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    batch, heads, length, dim = q_shape
    return 4 * batch * heads * length * k_shape[2] * dim  # q k^T and p v, 2 FLOPs per MAC


def _attention_backward_flops(grad_shape, q_shape, k_shape, *args, out_shape=None, **kw) -> int:
    batch, heads, length, dim = q_shape
    return 10 * batch * heads * length * k_shape[2] * dim  # recomputed scores + 4 matmuls


FLOP_FORMULAS = {
    torch.ops.tiltmatch_capacity.attention: _attention_flops,
    torch.ops.tiltmatch_capacity.attention_backward: _attention_backward_flops,
}


def cuda_like_attention(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """A transformers attention function (``AttentionInterface``) calling the fused op."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped kv heads (not LLaDA-8B's 32/32; kept general)
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, _ = fused_attention(query, key, value, attention_mask, float(scale))
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    name = "tiltmatch_cuda_like"
    AttentionInterface.register(name, cuda_like_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)
    return name


# ----- the allocator: 512-byte blocks as on CUDA ------------------------------------------------


@contextlib.contextmanager
def cuda_block_rounding() -> Iterator[None]:
    """MemTracker rounds storages to 512 B only for CUDA tensors; ours are fake CPU ones."""
    info = mem_tracker_module._WeakRefInfo
    original = info._calculate_mem_consumed

    def rounded(self) -> int:
        size = self.size * self.element_size
        return math.ceil(size / CUDA_BLOCK) * CUDA_BLOCK

    info._calculate_mem_consumed = rounded  # type: ignore[method-assign]
    try:
        yield
    finally:
        info._calculate_mem_consumed = original  # type: ignore[method-assign]


@contextlib.contextmanager
def _adapters_created_in_place() -> Iterator[None]:
    """PEFT moves each new adapter with ``Module.to(device[, dtype])``; on fake parameters
    ``Module.to`` always swaps tensors, which fails. Every tensor here is already on the
    (fake) CPU and PEFT asks for the dtype it has, so a move that changes nothing is
    skipped (any real change still goes through ``Module.to``)."""
    original = torch.nn.Module.to
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # new adapters are made in the base's dtype

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        tensors = [*self.parameters(), *self.buffers()]
        same = all(
            (device is None or t.device == device)
            and (dtype is None or not t.is_floating_point() or t.dtype == dtype)
            for t in tensors
        )
        return self if same else original(self, *args, **kwargs)

    torch.nn.Module.to = to  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.to = original  # type: ignore[method-assign]
        torch.set_default_dtype(previous)


class _NoHandle:
    def remove(self) -> None:
        pass


@contextlib.contextmanager
def frozen_parameters_tolerated() -> Iterator[None]:
    """MemTracker hooks every parameter of a module for its gradient, which raises on a frozen
    one (the base, the teacher adapter): a frozen parameter gets a handle that does nothing."""
    hook, post = torch.Tensor.register_hook, torch.Tensor.register_post_accumulate_grad_hook

    def register_hook(self, fn):
        return hook(self, fn) if self.requires_grad else _NoHandle()

    def register_post(self, fn):
        return post(self, fn) if self.requires_grad else _NoHandle()

    torch.Tensor.register_hook = register_hook  # type: ignore[method-assign]
    torch.Tensor.register_post_accumulate_grad_hook = register_post  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.register_hook = hook  # type: ignore[method-assign]
        torch.Tensor.register_post_accumulate_grad_hook = post  # type: ignore[method-assign]


# ----- one simulated update ---------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One simulated update: method, micro-batch rows, lengths, checkpointing, training mode."""

    method: str  # "dtm" or "diffu-grpo"
    rows: int  # completions per micro-batch
    prompt_length: int
    gen_length: int
    checkpointing: bool
    mode: str = "lora"  # "lora" (adapters on a frozen base) or "full" (every weight trains)
    group: int = 1  # completions per prompt inside the micro-batch (diffu-GRPO needs >= 2)


def _run_config(case: Case, lora_r: int) -> RunConfig:
    return RunConfig.model_validate(
        {
            "method": case.method,
            "model": {"dtype": "bfloat16", "gradient_checkpointing": case.checkpointing},
            "lora": {"r": lora_r},
            "dtm": {"c": 1.0, "states": "sar", "sar_block_length": 32, "h": 6.0},
            "train": RECIPE_TRAIN
            | {
                "num_generations": case.group,
                "prompts_per_batch": case.rows // case.group,
                "buffer_prompts": case.rows // case.group,
                "refresh_prompts": 0,
            },
        }
    )


def dtm_micro_step(
    student: Any, teacher: Any, batch: RolloutBatch, states: Any, covered: torch.Tensor
) -> torch.Tensor:
    """The c-DTM loss of one micro-batch as :meth:`DTMObjective.loss` and
    :func:`tiltmatch.dtm.loss.dtm_loss` compute it (c = 1, b = 0, SAR states), with the
    covered positions selected by precomputed indices instead of a boolean mask."""
    rows, length = batch.responses.shape
    w = tilt_weights(batch.grouped_rewards, 6.0).reshape(-1)
    z = states.z
    student_logits = student.response_logits(batch.prompt_ids, batch.prompt_mask, z)
    with torch.no_grad():
        teacher_logits = teacher.response_logits(batch.prompt_ids, batch.prompt_mask, z)
    vocab = student_logits.shape[-1]
    logp = F.log_softmax(student_logits.reshape(-1, vocab).index_select(0, covered).float(), -1)
    tokens = batch.responses.reshape(-1).index_select(0, covered)
    weights = w[:, None].expand(rows, length).reshape(-1).index_select(0, covered).float()
    position_weight = states.position_weight.reshape(-1).index_select(0, covered).float()
    teacher_rows = teacher_logits.reshape(-1, vocab).index_select(0, covered)
    teacher_probs = F.softmax(teacher_rows.float(), -1)
    target, _ = ctilt_target(teacher_probs, tokens, weights, 1.0)
    return (position_weight * -(target * logp).sum(-1)).sum() / rows


def grpo_micro_step(
    student: Any, teacher: Any, reference: Any, batch: RolloutBatch, mask_token_id: int
) -> torch.Tensor:
    """The diffu-GRPO loss of one micro-batch as :meth:`DiffuGRPOObjective.loss` computes it
    (current, old and reference one-pass log-probabilities; clipped ratio, k3 KL)."""
    prompt_masked = draw_prompt_mask(batch.prompt_mask, 0.15, torch.Generator())
    logp = one_pass_token_log_probs(student, batch, prompt_masked, mask_token_id)
    with torch.no_grad():
        logp_old = one_pass_token_log_probs(teacher, batch, prompt_masked, mask_token_id)
        logp_ref = one_pass_token_log_probs(reference, batch, prompt_masked, mask_token_id)
    adv = group_advantages(batch.grouped_rewards).reshape(-1)[:, None]
    ratio = (logp - logp_old).exp()
    per_token = clipped_surrogate(ratio, adv, 0.5) - 0.04 * k3_kl(logp, logp_ref)
    return -per_token.mean(dim=1).mean()


def simulate(case: Case, layers: int, lora_r: int) -> dict[str, Any]:
    """Peak memory (by kind) and FLOPs of one update of ``case`` on fake tensors."""
    spec = MODELS["llada-8b"]
    if layers != spec.sizes["n_layers"]:
        spec = replace(spec, sizes={**spec.sizes, "n_layers": layers})
    attention = _register_attention()
    config = _run_config(case, lora_r)
    started = time.time()
    # The SAR states are drawn on real tensors first: which positions a row covers decides
    # the loss's shapes (data-dependent, which fake tensors cannot answer).
    states = sar_states(
        torch.zeros((case.rows, case.gen_length), dtype=torch.long),
        spec.mask_token_id,
        32,
        torch.Generator().manual_seed(0),
    )
    covered = states.loss_mask.reshape(-1).nonzero().squeeze(1)  # flat indices of covered
    with FakeTensorMode(allow_non_fake_inputs=True), cuda_block_rounding():
        base = build_base(spec, torch.device("cpu"), torch.bfloat16)
        base.config._attn_implementation = attention
        if case.mode == "lora":
            with _adapters_created_in_place():
                pair = LoRAPair.from_config(config, base, spec.mask_token_id, spec.pad_token_id)
            student, teacher, params = pair.student, pair.teacher, list(pair.trainable_parameters())
            reference = pair.reference()
        else:
            from tiltmatch.models.denoiser import MaskedDenoiser
            from tiltmatch.training.lora import enable_activation_checkpointing

            base.requires_grad_(True)
            if case.checkpointing:
                enable_activation_checkpointing(base)
            student = MaskedDenoiser(base, spec.mask_token_id, spec.pad_token_id)

            # Frozen full copies for the teacher (c-DTM, diffu-GRPO's old policy) and the
            # reference, as CopiedPair holds them (their bytes here are unsharded; the
            # per-rank figure takes only activations from this run, the rest by arithmetic).
            def frozen() -> MaskedDenoiser:
                copy = build_base(spec, torch.device("cpu"), torch.bfloat16)
                copy.config._attn_implementation = attention
                return MaskedDenoiser(copy, spec.mask_token_id, spec.pad_token_id).eval()

            teacher = frozen()
            reference = frozen() if case.method != "dtm" else teacher
            params = list(base.parameters())
        prompts = [[5] * case.prompt_length for _ in range(case.rows)]
        prompt_ids, prompt_mask = left_pad(prompts, spec.pad_token_id, torch.device("cpu"))
        responses = torch.zeros((case.rows, case.gen_length), dtype=torch.long)
        batch = RolloutBatch(prompt_ids, prompt_mask, responses, torch.ones(case.rows), case.group)
        optimizer = torch.optim.AdamW(params, lr=1e-6, betas=(0.9, 0.99), fused=True)
        tracker = MemTracker()
        tracker.track_external(student, optimizer)
        counter = FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS)
        with frozen_parameters_tolerated(), tracker, counter as flops:
            student.train()
            optimizer.zero_grad(set_to_none=True)
            if case.method == "dtm":
                loss = dtm_micro_step(student, teacher, batch, states, covered)
            else:
                loss = grpo_micro_step(student, teacher, reference, batch, spec.mask_token_id)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
            optimizer.step()
        peak = tracker.get_tracker_snapshot("peak")
    per_device = next(iter(peak.values()))
    kinds = {str(k).split(".")[-1].lower(): int(v) for k, v in per_device.items()}
    trainable = sum(p.numel() for p in params)
    total_params = sum(p.numel() for p in base.parameters())
    return {
        "case": case.__dict__,
        "layers": layers,
        "peak_bytes": kinds.pop("total"),
        "peak_by_kind_bytes": kinds,
        "flops": int(flops.get_total_flops()),
        "trainable_parameters": trainable,
        "parameters": total_params,
        "simulation_seconds": time.time() - started,
    }


def rollout_flops(prompt_length: int, gen_length: int, steps: int, layers: int) -> dict[str, Any]:
    """FLOPs of the sampler generating one response: ``steps`` full forwards (no KV cache)."""
    spec = MODELS["llada-8b"]
    if layers != spec.sizes["n_layers"]:
        spec = replace(spec, sizes={**spec.sizes, "n_layers": layers})
    attention = _register_attention()
    with FakeTensorMode(allow_non_fake_inputs=True):
        base = build_base(spec, torch.device("cpu"), torch.bfloat16)
        base.config._attn_implementation = attention
        ids = torch.zeros((1, prompt_length + gen_length), dtype=torch.long)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FLOP_FORMULAS) as f:
            base(input_ids=ids, logits_to_keep=gen_length)
    per_forward = int(f.get_total_flops())
    return {
        "per_forward": per_forward,
        "per_response": per_forward * steps,
        "per_token": per_forward * steps / gen_length,
    }


def scaled(case: Case, layers: int, lora_r: int) -> dict[str, Any]:
    """``case`` on the full 32 layers, from exact simulations of 1 and 2 layers.

    The layers are identical, so every figure (bytes by kind at the peak, FLOPs, trainable
    parameters) is ``v(1) + (n - 1) (v(2) - v(1))``; the full model on fake tensors takes
    more than ten minutes per case on this shared 2-core machine, two small ones seconds.
    """
    one, two = simulate(case, 1, lora_r), simulate(case, 2, lora_r)

    def extrapolate(a: float, b: float) -> int:
        return int(a + (layers - 1) * (b - a))

    kinds = {
        k: extrapolate(one["peak_by_kind_bytes"][k], two["peak_by_kind_bytes"][k])
        for k in one["peak_by_kind_bytes"]
    }
    return {
        "case": case.__dict__,
        "layers": layers,
        "peak_bytes": extrapolate(one["peak_bytes"], two["peak_bytes"]),
        "peak_by_kind_bytes": kinds,
        "flops": extrapolate(one["flops"], two["flops"]),
        "trainable_parameters": extrapolate(
            one["trainable_parameters"], two["trainable_parameters"]
        ),
        "parameters": extrapolate(one["parameters"], two["parameters"]),
        "simulation_seconds": one["simulation_seconds"] + two["simulation_seconds"],
    }


def layer_linear_parameters() -> int:
    """Weights of one layer's seven projections (what NF4 quantises)."""
    sizes = MODELS["llada-8b"].sizes
    d, f = sizes["d_model"], sizes["mlp_hidden_size"]
    return 4 * d * d + 3 * d * f


NF4_BYTES_PER_WEIGHT = 0.5 + 0.127 / 8  # 4 bits + double-quantised absmax (~0.127 bit)


def four_bit(record: dict[str, Any], layers: int) -> dict[str, Any]:
    """The bf16 LoRA record with the projections' bf16 bytes replaced by NF4's (arithmetic)."""
    sizes = MODELS["llada-8b"].sizes
    linear = layers * layer_linear_parameters()
    saved = linear * (2 - NF4_BYTES_PER_WEIGHT)
    dequantised = 2 * sizes["d_model"] * sizes["mlp_hidden_size"] * 2  # two bf16 weights alive
    peak = int(record["peak_bytes"] - saved + dequantised)
    return {**record, "peak_bytes": peak, "base": "nf4 (arithmetic on the bf16 simulation)"}


def fsdp_per_rank(record: dict[str, Any], ranks: int, layers: int, copies: int) -> dict[str, Any]:
    """Full fine-tuning sharded over ``ranks``: per-rank bytes by shard arithmetic.

    ``record`` is a full-mode simulation (every weight trains, unsharded): its activations
    and temporaries are one rank's. Sharded: bf16 parameters, bf16 gradients and the two
    AdamW moments (bf16, the parameters' dtype) of the student, and ``copies`` more frozen
    bf16 copies (c-DTM's teacher; diffu-GRPO's old policy and reference), each / ranks;
    unsharded: two layers' parameters and gradients (computing + prefetched).
    """
    params = record["parameters"]
    sharded = params * (2 + 2 + 4 + 2 * copies) / ranks
    layer = layer_linear_parameters() * 2
    unsharded = 2 * layer * 2
    kinds = record["peak_by_kind_bytes"]
    live = kinds["act"] + kinds["temp"]
    return {
        **record,
        "peak_bytes": int(sharded + unsharded + live),
        "sharded_state_bytes": int(sharded),
        "unsharded_layer_bytes": int(unsharded),
        "activation_bytes": int(live),
        "ranks": ranks,
    }


def rollout_flops_scaled(prompt: int, gen: int, steps: int, layers: int) -> dict[str, Any]:
    """:func:`rollout_flops` of the full model from 1 and 2 layers (exact: identical layers)."""
    one, two = rollout_flops(prompt, gen, steps, 1), rollout_flops(prompt, gen, steps, 2)
    return {k: one[k] + (layers - 1) * (two[k] - one[k]) for k in one}


def fits(peak: float) -> bool:
    """Whether a peak leaves the margin of ``FIT_FRACTION`` on one 80 GB card."""
    return peak <= FIT_FRACTION * H100_MEMORY


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every case of the plan: LoRA bf16 / NF4 and full FSDP, both methods, checkpointing,
    micro-batch sizes; FLOPs and time per update."""
    layers, prompt, gen, accum = args.layers, args.prompt_length, args.gen_length, args.accumulation
    cases: list[tuple[str, Case]] = [
        ("c-DTM, LoRA, ckpt", Case("dtm", 12, prompt, gen, True)),
        ("c-DTM, LoRA, no ckpt", Case("dtm", 12, prompt, gen, False)),
        ("diffu-GRPO, LoRA, ckpt", Case("diffu-grpo", 12, prompt, gen, True, group=6)),
        ("diffu-GRPO, LoRA, no ckpt", Case("diffu-grpo", 12, prompt, gen, False, group=6)),
        ("c-DTM, LoRA, ckpt, 72 rows (12 prompts x 6)", Case("dtm", 72, prompt, gen, True)),
        ("c-DTM, LoRA, ckpt, 1 row", Case("dtm", 1, prompt, gen, True)),
        ("diffu-GRPO, LoRA, ckpt, 2 rows", Case("diffu-grpo", 2, prompt, gen, True, group=2)),
        ("c-DTM, full, ckpt", Case("dtm", 12, prompt, gen, True, mode="full")),
        ("diffu-GRPO, full, ckpt", Case("diffu-grpo", 12, prompt, gen, True, "full", 6)),
    ]
    if args.quick:
        cases = cases[:1] + cases[-2:-1]
    rows: list[dict[str, Any]] = []
    seconds_per_flop = 1.0 / (H100_BF16_DENSE * args.mfu)
    for label, case in cases:
        print(f"simulating {label} ...", file=sys.stderr, flush=True)
        record = scaled(case, layers, args.lora_r)
        variants = []
        if case.mode == "lora":
            variants.append((f"{label}, bf16 base", "1 GPU", record))
            variants.append((f"{label}, NF4 base", "1 GPU", four_bit(record, layers)))
        else:
            copies = 1 if case.method == "dtm" else 2
            variants.append(
                (
                    f"{label}, FSDP 8 ranks",
                    "per rank of 8",
                    fsdp_per_rank(record, 8, layers, copies),
                )
            )
        for name, where, r in variants:
            update_flops = r["flops"] * accum
            rows.append(
                {
                    "name": name,
                    "where": where,
                    "rows_per_micro_batch": case.rows,
                    "peak_gib": r["peak_bytes"] / GIB,
                    "fits_one_80gb": fits(r["peak_bytes"]),
                    "flops_per_micro_step": r["flops"],
                    "flops_per_update": update_flops,
                    "seconds_per_update": update_flops * seconds_per_flop,
                    "record": r,
                }
            )
    # Largest micro-batch that fits: peak is affine in the rows (activations grow with them).
    largest = {}
    for method, small, big in (("dtm", 1, 12), ("diffu-grpo", 2, 12)):
        for base in ("bf16 base", "NF4 base"):
            pick = {
                r["rows_per_micro_batch"]: r["peak_gib"] * GIB
                for r in rows
                if r["name"].startswith("c-DTM" if method == "dtm" else "diffu-GRPO")
                and ", LoRA, ckpt" in r["name"]
                and r["name"].endswith(base)
            }
            if small in pick and big in pick:
                slope = (pick[big] - pick[small]) / (big - small)
                fixed = pick[small] - slope * small
                largest[f"{method}, LoRA, ckpt, {base}"] = int(
                    (FIT_FRACTION * H100_MEMORY - fixed) // slope
                )
    rollout = rollout_flops_scaled(prompt, gen, args.steps, layers)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "settings": vars(args),
        "fit_rule": f"peak <= {FIT_FRACTION} x 80e9 bytes = {FIT_FRACTION * H100_MEMORY / GIB:.1f}"
        " GiB",
        "rows": rows,
        "largest_micro_batch_fitting": largest,
        "rollout_flops": rollout,
        "rollout_seconds_per_response": rollout["per_response"] * seconds_per_flop,
    }


def markdown(result: dict[str, Any]) -> str:
    """The capacity table for BENCHMARKS.md."""
    s = result["settings"]
    lines = [
        f"| update (micro-batch {s['prompt_length']} + {s['gen_length']} tokens a row, "
        f"{s['accumulation']} accumulation steps) | where | rows | peak GiB | fits 80 GB "
        f"| TFLOP / update | s / update at {s['mfu']:.0%} of 989 TFLOP/s |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['where']} | {r['rows_per_micro_batch']} | {r['peak_gib']:.1f} | "
            f"{'yes' if r['fits_one_80gb'] else 'no'} | {r['flops_per_update'] / 1e12:.0f} | "
            f"{r['seconds_per_update']:.2f} |"
        )
    ro = result["rollout_flops"]
    lines += [
        "",
        f"Rollouts: {ro['per_forward'] / 1e12:.2f} TFLOP per sampler forward of one row, "
        f"{s['steps']} forwards per {s['gen_length']}-token response: "
        f"{ro['per_token'] / 1e9:.0f} GFLOP per generated token, "
        f"{result['rollout_seconds_per_response']:.2f} s per response at the same utilisation.",
        "Largest micro-batch fitting one 80 GB card (rows, affine fit through two sizes): "
        + ", ".join(f"{k}: {v}" for k, v in result["largest_micro_batch_fitting"].items())
        + ".",
        f"Fit rule: {result['fit_rule']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the plan and print / write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=32, help="layers of the plan (LLaDA: 32)")
    parser.add_argument("--prompt-length", type=int, default=200)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=128, help="sampler steps per response")
    parser.add_argument("--accumulation", type=int, default=8, help="micro-steps per update")
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed FLOP utilisation")
    parser.add_argument("--quick", action="store_true", help="two cases only (a smoke run)")
    parser.add_argument("--out", default=None, help="JSON record")
    args = parser.parse_args(argv)
    if not 0 < args.mfu <= 1 or args.layers < 1:
        print("capacity: error: --mfu must be in (0, 1] and --layers >= 1", file=sys.stderr)
        return 2
    result = plan(args)
    table = markdown(result)
    result["markdown"] = table
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
