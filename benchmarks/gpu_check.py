"""GPU check of the LLaDA issue: sampler throughput, one c-DTM and one diffu-GRPO update.

Builds a model with LLaDA-8B-Instruct's exact architecture, a bidirectional
``LlamaForCausalLM`` from :func:`tiltmatch.models.llada.llada_config_to_llama`, with
random bfloat16 weights made directly on the GPU (no checkpoint is read: the
numbers below depend on the shapes, not on the values), puts the student and
teacher LoRA adapters of :class:`tiltmatch.training.lora.LoRAPair` on it (r = 128, the
recipes' alpha, dropout and target modules, activation checkpointing) and
measures, in one process:

(a) the sampler: :func:`tiltmatch.sampling.sampler.generate` with low-confidence
    remasking, through a :class:`~tiltmatch.models.denoiser.MaskedDenoiser` on the bare
    base (before the adapters exist) and through the teacher adapter (the
    rollout policy, as the trainer samples): seconds and generated tokens per
    second, each after a warm-up of one step per block at the same shapes;
(b) one c-DTM update (METHOD.md section 6; c = 1, random-masking states): from
    ``zero_grad`` through the teacher's and the student's forward, backward,
    ``clip_grad_norm_`` and the AdamW step: seconds and peak GPU memory;
(c) one diffu-GRPO update (METHOD.md section 8) with the same pair: current
    policy = student, old policy = teacher, reference = the base with its
    adapters disabled; the objective comes from ``tiltmatch.training.runner.make_objective``;
(d) the sampler's settings on the bare base (issue 23): exact decoding with lean noise (the
    default) and with compatible noise (its float64 draw of rows x L x V per step), the
    prefix and the dual cache: seconds and peak memory of one ``generate`` call each, after
    a warm-up (a setting that runs out of memory is recorded as such);
(e) one c-DTM update with the recipes' SAR states (block ``--block-length``) with the
    vocabulary projected only where the loss reads (now) and at every response position
    (before issue 23's item 1, ``benchmarks/update_cost.py``'s ``full_logits``).

Each update is timed twice on the same micro-batch: the first includes AdamW
allocating its moments, the repeat does not. The checksums of the student
adapter, the teacher adapter and the base before and after the first update
are compared (only the student may change).

The batch: ``--batch`` B rows are B // G distinct prompts x G completions
(``--group``), grouped prompt by prompt as ``RolloutWorker.rollout`` makes them,
i.e. ``train.prompts_per_batch = B // G`` and ``train.num_generations = G``, so
the sampler's batch and the updates' micro-batch are the same B rows. Prompts
are random token ids of lengths spread over ``--prompt-lengths`` (64..128 by
default, so left padding is exercised); the updates' responses and rewards are
random too.

    python benchmarks/gpu_check.py                    # one H100/H200: LLaDA-8B, B = 8, G = 2
    python benchmarks/gpu_check.py --parts a          # the sampler only
    python benchmarks/gpu_check.py --parts abcde      # issue 23's check, about 5 minutes
    python benchmarks/gpu_check.py --model tiny --device cpu --gen-length 16 --steps 8 \\
        --block-length 8 --batch 4 --lora-r 4        # the same code path on a CPU, seconds

Run from the repository root with the package installed (``pip install -e
'.[llm]'``) or with ``PYTHONPATH=src``. Writes a JSON record (``--out``) and prints
a Markdown table for BENCHMARKS.md on stdout (progress goes to stderr). A CUDA
device asked for but missing is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))  # update_cost, for part (e)

from tiltmatch.batch import RolloutBatch
from tiltmatch.config import RunConfig
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.dtypes import dtype_name
from tiltmatch.models.llada import LLADA_8B_INSTRUCT_CONFIG, llada_config_to_llama
from tiltmatch.objective import Phase
from tiltmatch.sampling.sampler import SamplingConfig, generate, left_pad
from tiltmatch.training.lora import LoRAPair
from tiltmatch.training.runner import make_objective
from tiltmatch.training.update import UpdateResult, optimizer_update

T = TypeVar("T")

PARTS = {
    "a": "sampler",
    "b": "c-DTM update",
    "c": "diffu-GRPO update",
    "d": "sampler modes",
    "e": "c-DTM update, SAR states",
}
#: part (d): the sampler settings compared on the bare base (the default first)
SAMPLER_MODES: list[tuple[str, dict[str, Any]]] = [
    ("exact, lean noise (default)", {}),
    ("exact, compatible noise", {"noise": "compatible"}),
    ("cached prefix", {"mode": "cached", "cache": "prefix"}),
    ("cached dual", {"mode": "cached", "cache": "dual"}),
]

# The keys of LLaDA's own config.json that decide the model are the package's
# LLADA_8B_INSTRUCT_CONFIG (as LLaDA-8B-Instruct's file sets them); llada_config_to_llama
# checks every one and maps it to a LlamaConfig with is_causal=False (bidirectional
# attention), SiLU, RMSNorm, untied embeddings, no bias. A ModelSpec gives the sizes
# (SIZE_KEYS) and the special ids (ID_KEYS); the rest is the architecture, shared by all.
SIZE_KEYS = (
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "mlp_hidden_size",
    "vocab_size",
    "embedding_size",
    "max_sequence_length",
    "rope_theta",
)
ID_KEYS = ("mask_token_id", "eos_token_id", "pad_token_id")
LLADA_ARCHITECTURE: dict[str, Any] = {
    key: value
    for key, value in LLADA_8B_INSTRUCT_CONFIG.items()
    if key not in SIZE_KEYS and key not in ID_KEYS
}


@dataclass(frozen=True)
class ModelSpec:
    """A denoiser to build: LLaDA config sizes and the special token ids."""

    description: str
    sizes: dict[str, Any]
    # With random weights the ids are just numbers. Real runs never hard-code them: they
    # read them from the checkpoint (tiltmatch.models.llada.read_special_ids).
    mask_token_id: int
    pad_token_id: int  # LLaDA pads with its EOS token

    def llada_config(self) -> dict[str, Any]:
        """The LLaDA ``config.json`` dict of this model."""
        ids = {
            "mask_token_id": self.mask_token_id,
            "eos_token_id": self.pad_token_id,
            "pad_token_id": self.pad_token_id,
        }
        return LLADA_ARCHITECTURE | self.sizes | ids

    @property
    def ordinary_tokens(self) -> int:
        """Random prompt and response tokens are drawn below every special id."""
        return min(self.mask_token_id, self.pad_token_id)


MODELS: dict[str, ModelSpec] = {
    "llada-8b": ModelSpec(
        description="LLaDA-8B-Instruct architecture",
        sizes={key: LLADA_8B_INSTRUCT_CONFIG[key] for key in SIZE_KEYS},
        mask_token_id=LLADA_8B_INSTRUCT_CONFIG["mask_token_id"],
        pad_token_id=LLADA_8B_INSTRUCT_CONFIG["pad_token_id"],
    ),
    # About 1M parameters: the same code path, for the CPU smoke test.
    "tiny": ModelSpec(
        description="tiny Llama (the 8B code path at ~1M parameters)",
        sizes={
            "d_model": 128,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 4,
            "mlp_hidden_size": 384,
            "vocab_size": 2048,
            "embedding_size": 2048,
            "max_sequence_length": 1024,
            "rope_theta": 500000.0,
        },
        mask_token_id=2040,
        pad_token_id=2041,
    ),
}

# The LLaDA recipes' optimiser (configs/llada/*.yaml); the numbers do not depend on them.
RECIPE_TRAIN = {
    "learning_rate": 3.0e-6,
    "final_learning_rate": 1.0e-6,
    "adam_beta1": 0.9,
    "adam_beta2": 0.99,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
}


#: what a baseline's optimiser reads of RECIPE_TRAIN (one constant learning rate)
CONSTANT_LR = {"learning_rate", "adam_beta1", "adam_beta2", "weight_decay", "max_grad_norm"}


class UsageError(ValueError):
    """Settings this script cannot run with; reported as one line, exit status 2."""


# ----- building -------------------------------------------------------------------------------


def build_base(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """A bidirectional ``LlamaForCausalLM`` of ``spec`` with random weights, frozen, in eval mode.

    The weights are created directly in ``dtype`` on ``device`` by transformers'
    own initialisation (normal(0, 0.02) matrices, unit norms: finite), so the
    8B model never exists in float32 or on the CPU.
    """
    config = llada_config_to_llama(spec.llada_config())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.requires_grad_(False)
    model.eval()
    return model


def run_config(
    method: str, args: argparse.Namespace, dtype: torch.dtype, states: str = "random"
) -> RunConfig:
    """The run configuration of the measured updates: LoRA, batch, sampler and optimiser
    (``states``: c-DTM's, random masking or the recipes' SAR states of ``--block-length``)."""
    prompts = args.batch // args.group
    return RunConfig.model_validate(
        {
            "method": method,
            "seed": args.seed,
            "model": {"dtype": dtype_name(dtype), "gradient_checkpointing": True},
            # alpha, dropout and target modules: LoRAConfig's defaults, the LLaDA recipes' values
            "lora": {"r": args.lora_r},
            "sampler": {
                "steps": args.steps,
                "block_length": args.block_length,
                "remasking": "low_confidence",
                "temperature": 1.0,
            },
            # the dtm section and the per-stage schedule are DTM's alone (a baseline refuses them)
            "dtm": {"c": 1.0, "states": states, "sar_block_length": args.block_length}
            if method == "dtm"
            else {},
            "train": {k: v for k, v in RECIPE_TRAIN.items() if method == "dtm" or k in CONSTANT_LR}
            | {
                "num_generations": args.group,
                "prompts_per_batch": prompts,
                "buffer_prompts": prompts,
                "refresh_prompts": 0,
                "gradient_accumulation_steps": 1,
            },
        }
    )


def make_prompts(
    num_prompts: int, group: int, lengths: tuple[int, int], vocab: int, seed: int
) -> list[list[int]]:
    """``num_prompts`` random prompts of lengths spread over ``lengths``, each repeated ``group``
    times (rows grouped prompt by prompt)."""
    generator = torch.Generator().manual_seed(seed)
    lo, hi = lengths
    rows: list[list[int]] = []
    for k in range(num_prompts):
        length = lo + round((hi - lo) * k / max(num_prompts - 1, 1))
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        rows.extend([ids] * group)
    return rows


def random_rollouts(
    prompts: list[list[int]], spec: ModelSpec, args: argparse.Namespace, device: torch.device
) -> RolloutBatch:
    """The B rows as a :class:`RolloutBatch` with random responses and rewards in [0, 1]."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    prompt_ids, prompt_mask = left_pad(prompts, spec.pad_token_id, device)
    shape = (len(prompts), args.gen_length)
    responses = torch.randint(0, spec.ordinary_tokens, shape, generator=generator)
    rewards = torch.rand(len(prompts), generator=generator)
    return RolloutBatch(
        prompt_ids, prompt_mask, responses.to(device), rewards.to(device), args.group
    )


# ----- measuring ------------------------------------------------------------------------------


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float, float | None]:
    """``fn()``, its wall seconds (the device synchronised) and its peak memory in GiB.

    The peak is ``torch.cuda.max_memory_allocated`` since a reset just before
    ``fn``, so it counts everything alive (base, adapters, optimiser state) plus
    ``fn``'s own transient tensors; None on a CPU.
    """
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return out, seconds, peak


def release(device: torch.device) -> None:
    """Free what the last part left behind (reference cycles, the allocator's cached blocks)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def checksums(tensors: Iterable[torch.Tensor]) -> list[int]:
    """Per tensor, the sum of its elements' raw bits: a changed tensor (almost surely) changes it.

    Exact, unlike a float sum, and needs no copy of the 16 GB base to compare against.
    """
    sums = [t.detach().view(_BITS[t.element_size()]).sum(dtype=torch.int64) for t in tensors]
    return torch.stack(sums).tolist()


def weight_checksums(pair: LoRAPair) -> dict[str, list[int]]:
    """Checksums of the student adapter, the teacher adapter and the frozen base."""
    groups = pair.state_dict()
    base = (p for name, p in pair.peft_model.named_parameters() if "lora_" not in name)
    return {
        "student": checksums(groups["student"].values()),
        "teacher": checksums(groups["teacher"].values()),
        "base": checksums(base),
    }


def measure_sampler(
    denoiser: MaskedDenoiser,
    prompts: list[list[int]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """(a): one ``generate`` call through ``denoiser``, after a warm-up."""
    num_blocks = args.gen_length // args.block_length
    config = SamplingConfig(steps=args.steps, block_length=args.block_length)
    # One step per block: every shape of the timed call, a fraction of its forwards.
    warmup = SamplingConfig(steps=num_blocks, block_length=args.block_length)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def sample(sampling: SamplingConfig) -> Callable[[], torch.Tensor]:
        return lambda: generate(denoiser, prompts, args.gen_length, sampling, generator).responses

    _, warmup_seconds, _ = timed(sample(warmup), device)
    responses, seconds, peak = timed(sample(config), device)
    tokens = responses.numel()
    return {
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_memory_gib": peak,
        "generated_tokens": tokens,
        "forward_passes": args.steps,
        "seconds_per_step": seconds / args.steps,
        "warmup_seconds": warmup_seconds,
        "all_positions_unmasked": bool((responses != denoiser.mask_token_id).all()),
    }


def measure_modes(
    denoiser: MaskedDenoiser,
    prompts: list[list[int]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """(d): one ``generate`` call per sampler setting of :data:`SAMPLER_MODES`."""
    num_blocks = args.gen_length // args.block_length
    out: dict[str, Any] = {}
    for name, fields in SAMPLER_MODES:
        config = SamplingConfig(steps=args.steps, block_length=args.block_length, **fields)
        warmup = SamplingConfig(steps=2 * num_blocks, block_length=args.block_length, **fields)
        generator = torch.Generator(device=device).manual_seed(args.seed)

        def sample(c: SamplingConfig, g: torch.Generator = generator) -> torch.Tensor:
            return generate(denoiser, prompts, args.gen_length, c, g).responses

        try:
            timed(lambda c=warmup: sample(c), device)
            responses, seconds, peak = timed(lambda c=config: sample(c), device)
        except torch.cuda.OutOfMemoryError as err:
            out[name] = {"out_of_memory": str(err).splitlines()[0]}
        else:
            out[name] = {
                "seconds": seconds,
                "tokens_per_second": responses.numel() / seconds,
                "peak_memory_gib": peak,
                "seconds_per_step": seconds / args.steps,
            }
        release(device)
    return out


def measure_update(
    part: str,
    pair: LoRAPair,
    config: RunConfig,
    batch: RolloutBatch,
    device: torch.device,
) -> dict[str, Any]:
    """(b) or (c): the first update and a repeat on the same micro-batch, timed."""
    objective = make_objective(config, pair.mask_token_id)
    phase = Phase()
    objective.prepare(phase, 0.0, lambda: batch.grouped_rewards)  # task rewards: b = bound 0
    stage = objective.begin_stage(phase, batch.grouped_rewards)  # DTM: h and the ESS
    phase.begun = True
    tc = config.train
    optimizer = torch.optim.AdamW(
        list(pair.trainable_parameters()),
        lr=tc.learning_rate,
        betas=tc.adam_betas,
        weight_decay=tc.weight_decay,
    )
    generator = torch.Generator(device=device).manual_seed(config.seed)

    def step() -> UpdateResult:
        # The trainer's own update on one micro-batch (no LR schedule: one update is timed).
        return optimizer_update(
            objective, pair, optimizer, lambda: batch, phase, generator, tc.max_grad_norm
        )

    before = weight_checksums(pair)
    first, seconds, peak = timed(step, device)
    after = weight_checksums(pair)
    repeat, repeat_seconds, repeat_peak = timed(step, device)
    optimizer.zero_grad(set_to_none=True)  # the moments go when this function returns
    tokens = batch.responses.numel()
    return {
        "name": PARTS[part],
        "objective": type(objective).__name__,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "peak_memory_gib": peak,
        "repeat_seconds": repeat_seconds,
        "repeat_tokens_per_second": tokens / repeat_seconds,
        "repeat_peak_memory_gib": repeat_peak,
        "loss": first.loss,
        "repeat_loss": repeat.loss,
        "grad_norm": first.grad_norm,
        "stage": stage,
        **{f"{group}_changed": before[group] != after[group] for group in before},
    }


# ----- reporting ------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    """The versions the numbers were measured with."""
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    out["cuda"] = torch.version.cuda
    for package in ("transformers", "peft", "tiltmatch"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def device_name(device: torch.device) -> str:
    """``torch.cuda.get_device_name``, or the CPU's description."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, torch threads: {torch.get_num_threads()})"


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(record: dict[str, Any]) -> str:
    """The record as a Markdown table (with a heading line) for BENCHMARKS.md."""
    s, v = record["settings"], record["versions"]
    heading = (
        f"{s['description']}, random {s['dtype']} weights, on {record['device']} "
        f"(torch {v['torch']}, CUDA {v['cuda']}, transformers {v['transformers']}, "
        f"peft {v['peft']}). Batch: {s['batch']} rows = {s['prompts']} prompts x G = "
        f"{s['group']} (prompts {s['prompt_lengths'][0]}-{s['prompt_lengths'][-1]} tokens), "
        f"{s['gen_length']} response tokens; sampler {s['steps']} steps, block "
        f"{s['block_length']}, {s['remasking']}; LoRA r = {s['lora']['r']}, alpha = "
        f"{s['lora']['alpha']:g}, activation checkpointing, AdamW."
    )
    lines = [
        heading,
        "",
        "| Part | Seconds | Repeat (s) | Tokens/s | Peak memory (GiB) | Repeat peak (GiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = []
    lines_oom: list[str] = []
    for key, part in record["parts"].items():
        if key == "a":
            rows.append(("(a) sampler, bare base", part))
            rows.append(("(a) sampler, teacher adapter", part["teacher"]))
        elif key == "d":
            for name, mode in part["modes"].items():
                if "out_of_memory" in mode:
                    lines_oom.append(f"(d) {name}: out of memory ({mode['out_of_memory']})")
                else:
                    rows.append((f"(d) sampler, {name}", mode))
        elif key == "e":
            rows.append(("(e) c-DTM update, SAR states, logits where the loss reads", part))
            rows.append(("(e) c-DTM update, SAR states, full logits", part["full_logits"]))
        else:
            rows.append((f"({key}) {part['name']}", part))
    for label, part in rows:
        lines.append(
            f"| {label} | {_number(part['seconds'])} | "
            f"{_number(part.get('repeat_seconds'))} | {_number(part['tokens_per_second'], 1)} | "
            f"{_number(part['peak_memory_gib'])} | {_number(part.get('repeat_peak_memory_gib'))} |"
        )
    lines += [
        "",
        "(a): one generate call through a MaskedDenoiser on the bare base, and through the "
        "teacher adapter as rollouts are sampled (LoRA matmuls; the adapter is held for the call). "
        "Tokens/s: generated tokens per second for (a); response tokens of the micro-batch "
        "per second of the first update for (b) and (c). Repeat: the same update again, "
        "AdamW's moments already allocated. Peak: torch.cuda.max_memory_allocated, everything "
        "resident included.",
        *lines_oom,
    ]
    return "\n".join(lines)


# ----- entry point ----------------------------------------------------------------------------


def resolve_device(name: str | None, model: str) -> torch.device:
    """The device asked for (default: CUDA when available); a clear UsageError otherwise."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {name} asked for a CUDA GPU but torch {torch.__version__} sees none "
            "(torch.cuda.is_available() is False)"
        )
    if model == "llada-8b" and device.type != "cuda":
        raise UsageError(
            "--model llada-8b needs a CUDA GPU (16 GB of bfloat16 weights); "
            "use --model tiny on a CPU"
        )
    return device


def check_settings(args: argparse.Namespace) -> None:
    """Reject sizes the sampler or the grouping cannot take, before building anything."""
    if min(args.batch, args.group, args.gen_length, args.steps, args.block_length) < 1:
        raise UsageError("--batch, --group, --gen-length, --steps and --block-length must be >= 1")
    if args.batch % args.group:
        raise UsageError(f"--batch {args.batch} is not a multiple of --group {args.group}")
    if args.gen_length % args.block_length:
        raise UsageError(
            f"--gen-length {args.gen_length} is not a multiple of --block-length "
            f"{args.block_length}"
        )
    blocks = args.gen_length // args.block_length
    if args.steps % blocks:
        raise UsageError(f"--steps {args.steps} is not a multiple of the {blocks} blocks")
    lo, hi = args.prompt_lengths
    if not 1 <= lo <= hi:
        raise UsageError(f"--prompt-lengths {lo} {hi}: need 1 <= MIN <= MAX")
    if not args.parts or set(args.parts) - set(PARTS):
        raise UsageError(
            f"--parts {args.parts!r}: choose among a, b, c, d, e (e.g. 'abc' or 'a,c')"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="llada-8b")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batch", type=int, default=8, help="rows B (prompts x completions)")
    parser.add_argument("--group", type=int, default=2, help="completions per prompt G")
    parser.add_argument("--gen-length", type=int, default=256, help="response tokens")
    parser.add_argument("--steps", type=int, default=128, help="sampler steps")
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument(
        "--prompt-lengths", type=int, nargs=2, default=(64, 128), metavar=("MIN", "MAX")
    )
    parser.add_argument("--parts", default="abc", help="which of a, b, c to run (e.g. 'ab')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check/gpu_check.json"))
    args = parser.parse_args(argv)
    args.parts = "".join(sorted(args.parts.replace(",", "").replace(" ", "")))
    return args


def run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Build the model and the pair, measure the chosen parts; the JSON record."""
    started = time.perf_counter()
    spec = MODELS[args.model]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(args.seed)
    dtm_config = run_config("dtm", args, dtype)

    def progress(text: str) -> None:
        print(f"[gpu_check {time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr)

    model, build_seconds, _ = timed(lambda: build_base(spec, device, dtype), device)
    progress(f"built {spec.description} in {build_seconds:.1f} s")
    prompts = make_prompts(
        args.batch // args.group, args.group, args.prompt_lengths, spec.ordinary_tokens, args.seed
    )
    sampler: dict[str, Any] = {}
    # The bare base first: PEFT injects the adapters into this very model below.
    bare = MaskedDenoiser(model, spec.mask_token_id, spec.pad_token_id)
    if "a" in args.parts:
        sampler["base"] = measure_sampler(bare, prompts, args, device)
        release(device)
        progress(f"(a) sampler, bare base: {sampler['base']['seconds']:.2f} s")
    modes = measure_modes(bare, prompts, args, device) if "d" in args.parts else None
    if modes is not None:
        progress(f"(d) sampler modes: {sorted(modes)}")
    pair, pair_seconds, _ = timed(
        lambda: LoRAPair.from_config(dtm_config, model, spec.mask_token_id, spec.pad_token_id),
        device,
    )
    progress(f"added the student and teacher adapters in {pair_seconds:.1f} s")
    lora = dtm_config.lora
    assert lora is not None
    settings = {
        "model": args.model,
        "description": spec.description,
        "dtype": dtype_name(dtype),
        "attn_implementation": model.config._attn_implementation,
        "base_parameters": sum(
            p.numel() for name, p in pair.peft_model.named_parameters() if "lora_" not in name
        ),
        "adapter_parameters": sum(p.numel() for p in pair.state_dict()["student"].values()),
        "mask_token_id": spec.mask_token_id,
        "pad_token_id": spec.pad_token_id,
        "batch": args.batch,
        "group": args.group,
        "prompts": args.batch // args.group,
        "prompt_lengths": sorted({len(p) for p in prompts}),
        "gen_length": args.gen_length,
        "steps": args.steps,
        "block_length": args.block_length,
        "remasking": "low_confidence",
        "temperature": 1.0,
        "lora": lora.model_dump(),
        # As transformers reports it on the decoder layers (set by LoRAPair), not as asked.
        "gradient_checkpointing": any(
            getattr(m, "gradient_checkpointing", False) for m in model.modules()
        ),
        "optimizer": "AdamW",
        "seed": args.seed,
        "parts": args.parts,
    }
    record: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "versions": versions(),
        "settings": settings,
        "build_seconds": {"base": build_seconds, "adapters": pair_seconds},
        "parts": {},
    }
    if "a" in args.parts:
        # Rollouts go through the teacher adapter: its LoRA matmuls (and one adapter switch in
        # and out per generate call, tiltmatch.training.lora.AdapterDenoiser.session) are what
        # training
        # pays on top of the bare base.
        sampler["teacher"] = measure_sampler(pair.teacher, prompts, args, device)
        release(device)
        progress(f"(a) sampler, teacher adapter: {sampler['teacher']['seconds']:.2f} s")
        # The part's own numbers are the bare base's; the rollout path's sit under "teacher".
        record["parts"]["a"] = {"name": PARTS["a"], **sampler["base"]}
        record["parts"]["a"]["teacher"] = sampler["teacher"]
    if modes is not None:
        record["parts"]["d"] = {"name": PARTS["d"], "modes": modes}
    batch = random_rollouts(prompts, spec, args, device)
    configs = {"b": dtm_config, "c": run_config("diffu-grpo", args, dtype)}
    for part in "bc":
        if part in args.parts:
            record["parts"][part] = measure_update(part, pair, configs[part], batch, device)
            release(device)
            progress(f"({part}) {PARTS[part]}: {record['parts'][part]['seconds']:.2f} s")
    if "e" in args.parts:
        from update_cost import full_logits  # benchmarks/update_cost.py, beside this script

        sar = run_config("dtm", args, dtype, states="sar")
        start = [p.detach().clone() for p in pair.trainable_parameters()]
        projected = measure_update("e", pair, sar, batch, device)
        release(device)
        with torch.no_grad():  # both ways from the same adapter weights: the same loss
            for p, saved in zip(pair.trainable_parameters(), start, strict=True):
                p.copy_(saved)
        del start
        with full_logits():
            full = measure_update("e", pair, sar, batch, device)
        release(device)
        record["parts"]["e"] = {**projected, "full_logits": full}
        progress(f"(e) {PARTS['e']}: {projected['seconds']:.2f} s, full {full['seconds']:.2f} s")
    # The sections the measured code reads (the model section's sizes are the tiny default's).
    sections: dict[str, Any] = {
        "method": True,
        "method_options": True,
        "model": {"dtype", "gradient_checkpointing"},
        "lora": True,
        "sampler": True,
        "dtm": True,
        "train": True,
    }
    record["run_configs"] = {
        config.method: config.model_dump(mode="json", include=sections)
        for config in configs.values()
    }
    record["total_seconds"] = time.perf_counter() - started
    return record


def main(argv: list[str] | None = None) -> int:
    """Parse, measure, write the JSON and print the table; 2 with one line on a usage error."""
    args = parse_args(argv)
    try:
        device = resolve_device(args.device, args.model)
        check_settings(args)
    except UsageError as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    record = run(args, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(markdown_table(record))
    print(f"\nwritten: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
