"""Update cost of c-DTM, diffu-GRPO and wd1: time and peak memory of one optimiser update.

Each method's update (``training/update.py``, the trainer's own: forwards, backward, clip,
AdamW step) on one micro-batch of random rollouts, through LoRA adapters
(:class:`~tiltmatch.training.lora.LoRAPair`, activation checkpointing) on a randomly
initialised bidirectional Llama with LLaDA's vocabulary (126,464 entries), in two ways:

- ``projected`` (now): the objectives project onto the vocabulary only where their loss reads
  (c-DTM with SAR states: the active block's masked positions, at most ``block`` of the
  response; ``logits_at``, METHOD.md section 6);
- ``full`` (before issue 23's item 1): every response position is projected and the loss's
  positions picked out afterwards (the same loss and gradient).

diffu-GRPO and wd1 read every response position, so their two ways coincide (a check). The
variants run interleaved in one process, ``--repeats`` times, each from the same adapter
weights and generator seed (a fresh AdamW each time); time is process CPU seconds (on a
GPU: synchronised wall seconds) and peak memory is a separate, untimed run per variant: on
the CPU a dispatch mode that counts every live storage (weights and optimiser state
included), on a GPU ``torch.cuda.max_memory_allocated``. It prints a table (medians) and
writes JSON (``--out``); the c-DTM row gives the ratios the issue's goal reads (projected /
full time at most 0.55, at equal loss).

    PYTHONPATH=src python benchmarks/update_cost.py --out runs/update_cost   # 4 x 1024, r 32
    PYTHONPATH=src python benchmarks/update_cost.py --hidden 64 --layers 1 --lora-r 4 \\
        --response-length 32 --block 8 --repeats 1 --out /tmp/uc            # the code path
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiltmatch.batch import RolloutBatch
from tiltmatch.config import RunConfig
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.models.llada import LLADA_8B_INSTRUCT_CONFIG
from tiltmatch.objective import Phase
from tiltmatch.training.lora import LoRAPair
from tiltmatch.training.runner import make_objective
from tiltmatch.training.update import optimizer_update

VOCAB = LLADA_8B_INSTRUCT_CONFIG["vocab_size"]
MASK = LLADA_8B_INSTRUCT_CONFIG["mask_token_id"]
PAD = 0
METHODS = ("dtm", "diffu-grpo", "wd1")
WAYS = ("projected", "full")


class LiveBytes(TorchDispatchMode):
    """Bytes of every storage alive while active (each counted once), and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self.allocated = 0
        self.peak = 0

    def track(self, t: torch.Tensor) -> None:
        """Count ``t``'s storage until its last reference goes."""
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.allocated += storage.nbytes()
        self.peak = max(self.peak, self.allocated)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.allocated -= self._live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.track(t)
        return out


@contextlib.contextmanager
def full_logits() -> Iterator[None]:
    """The denoiser as before issue 23's item 1: asked for logits at some positions, it
    projects every response position and picks those out (same values, full cost)."""
    original = MaskedDenoiser.response_logits

    def wide(self: MaskedDenoiser, prompt_ids, prompt_mask, canvas, cache=None,
             logits_at=None, columns=None):  # type: ignore[no-untyped-def]  # fmt: skip
        if logits_at is None or cache is not None or columns is not None:
            return original(self, prompt_ids, prompt_mask, canvas, cache, logits_at, columns)
        return original(self, prompt_ids, prompt_mask, canvas)[logits_at]

    MaskedDenoiser.response_logits = wide  # type: ignore[method-assign]
    try:
        yield
    finally:
        MaskedDenoiser.response_logits = original  # type: ignore[method-assign]


def run_config(method: str, args: argparse.Namespace) -> RunConfig:
    """The measured update's configuration (c-DTM: c = 1, SAR states of ``--block``)."""
    prompts = args.batch // args.group
    return RunConfig.model_validate(
        {
            "method": method,
            "seed": 0,
            "model": {"gradient_checkpointing": True},
            "lora": {"r": args.lora_r},
            # the dtm section is DTM's alone (a baseline refuses one)
            "dtm": {"c": 1.0, "states": "sar", "sar_block_length": args.block}
            if method == "dtm"
            else {},
            "train": {
                "num_generations": args.group,
                "prompts_per_batch": prompts,
                "buffer_prompts": prompts,
                "refresh_prompts": 0,
                "gradient_accumulation_steps": 1,
            },
        }
    )


def build(args: argparse.Namespace, device: torch.device) -> tuple[LoRAPair, RolloutBatch]:
    """The LoRA pair on a random LLaDA-vocabulary model, and a micro-batch of random rollouts."""
    spec = TinyModelSpec(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=max(args.hidden // 64, 2),
        intermediate_size=3 * args.hidden,
        max_positions=args.prompt_length + args.response_length,
    )
    model = tiny_denoiser(VOCAB, spec, seed=0).to(device)
    pair = LoRAPair.from_config(run_config("dtm", args), model, MASK, PAD)
    g = torch.Generator().manual_seed(1)
    rows = args.batch
    prompts = torch.randint(1, MASK, (rows, args.prompt_length), generator=g)
    responses = torch.randint(1, MASK, (rows, args.response_length), generator=g)
    rewards = torch.rand(rows, generator=g)
    batch = RolloutBatch(
        prompts.to(device),
        torch.ones_like(prompts).to(device),
        responses.to(device),
        rewards.to(device),
        args.group,
    )
    return pair, batch


def one_update(
    method: str, way: str, pair: LoRAPair, batch: RolloutBatch, args: argparse.Namespace,
    start: dict[str, torch.Tensor], memory: LiveBytes | None,
) -> dict[str, float]:  # fmt: skip
    """One update of ``method`` the ``way`` given, from the adapter weights ``start``."""
    device = batch.responses.device
    config = run_config(method, args)
    params = list(pair.trainable_parameters())
    with torch.no_grad():
        for p, saved in zip(params, start.values(), strict=True):
            p.copy_(saved)
    objective = make_objective(config, MASK)
    phase = Phase(a=0.0, h=args.h, begun=True)
    objective.prepare(phase, 0.0, lambda: batch.grouped_rewards)
    objective.begin_stage(phase, batch.grouped_rewards)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    generator = torch.Generator(device=device).manual_seed(7)
    cuda = device.type == "cuda"
    context = full_logits() if way == "full" else contextlib.nullcontext()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = time.perf_counter(), time.process_time()
    with context, memory if memory is not None else contextlib.nullcontext():
        if memory is not None:
            memory.peak = memory.allocated
        result = optimizer_update(objective, pair, optimizer, lambda: batch, phase, generator, 1.0)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - wall if cuda else time.process_time() - cpu
    out = {"seconds": seconds, "loss": float(result.loss)}
    if cuda:
        out["peak_bytes"] = float(torch.cuda.max_memory_allocated(device))
    elif memory is not None:
        out["peak_bytes"] = float(memory.peak)
    return out


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every method both ways, interleaved, ``repeats`` times; then one memory run each."""
    pair, batch = build(args, device)
    start = {str(i): p.detach().clone() for i, p in enumerate(pair.trainable_parameters())}
    times: dict[str, dict[str, list[float]]] = {m: {w: [] for w in WAYS} for m in args.methods}
    losses: dict[str, dict[str, float]] = {m: {} for m in args.methods}
    for _ in range(args.repeats):
        for method in args.methods:
            for way in WAYS:
                r = one_update(method, way, pair, batch, args, start, None)
                times[method][way].append(r["seconds"])
                losses[method][way] = r["loss"]
    peaks: dict[str, dict[str, float]] = {m: {} for m in args.methods}
    for method in args.methods:
        for way in WAYS:
            memory = None
            if device.type != "cuda":
                memory = LiveBytes()
                # what is resident before the update: the model, both adapters, the batch
                for t in (*pair.peft_model.parameters(), *pair.peft_model.buffers()):
                    memory.track(t)
                for t in (batch.prompt_ids, batch.prompt_mask, batch.responses, batch.rewards):
                    memory.track(t)
            r = one_update(method, way, pair, batch, args, start, memory)
            peaks[method][way] = r["peak_bytes"]
    rows = []
    for method in args.methods:
        t = {w: statistics.median(times[method][w]) for w in WAYS}
        rows.append(
            {
                "method": method,
                "seconds": t,
                "seconds_all": times[method],
                "loss": losses[method],
                "peak_mib": {w: peaks[method][w] / 2**20 for w in WAYS},
                "time_ratio": t["projected"] / t["full"],
            }
        )
    dtm = next((r for r in rows if r["method"] == "dtm"), None)
    if dtm is not None:
        for r in rows:
            r["vs_dtm_projected"] = dtm["seconds"]["projected"] / r["seconds"]["projected"]
    return {"rows": rows}


def markdown(record: dict[str, Any]) -> str:
    """The table."""
    s = record["settings"]
    lines = [
        f"One update, {s['layers']} x {s['hidden']} model (vocabulary {VOCAB}), LoRA r "
        f"{s['lora_r']}, checkpointing, {s['batch']} rows x ({s['prompt_length']} + "
        f"{s['response_length']}) tokens, SAR block {s['block']}; {record['device']}; median "
        f"of {s['repeats']} ({'wall' if record['device_type'] == 'cuda' else 'process CPU'} s).",
        "",
        "| method | s, projected | s, full logits | projected / full | loss, projected "
        "| loss, full | peak MiB, projected | peak MiB, full | c-DTM / method (projected) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['method']} | {r['seconds']['projected']:.2f} | {r['seconds']['full']:.2f} "
            f"| {r['time_ratio']:.2f} | {r['loss']['projected']:.6g} | {r['loss']['full']:.6g} "
            f"| {r['peak_mib']['projected']:.0f} | {r['peak_mib']['full']:.0f} "
            f"| {r.get('vs_dtm_projected', float('nan')):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write ``update_cost.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/update_cost")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lora-r", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--group", type=int, default=2)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--response-length", type=int, default=256)
    parser.add_argument("--block", type=int, default=32, help="SAR block of c-DTM's states")
    parser.add_argument("--h", type=float, default=2.0, help="the stage's tilt increment")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args(argv)
    if args.batch % args.group or args.response_length % args.block:
        parser.error("--batch must be a multiple of --group, --response-length of --block")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("update_cost: --device cuda asked for, but torch sees no GPU", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    record: dict[str, Any] = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "device_type": device.type,
        **measure(args, device),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "update_cost.json").write_text(json.dumps(record, indent=2))
    print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
