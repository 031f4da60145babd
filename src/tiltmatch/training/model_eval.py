"""``tiltmatch eval``: batched generation on a task's split, per-example outputs and metrics."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from tqdm.auto import tqdm

from tiltmatch.config import parse_task_options
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.loading import load_model_folder, resolve_model_path
from tiltmatch.sampling.sampler import SamplingConfig, generate
from tiltmatch.tasks import get_task


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``args.model`` on ``args.task``; write ``outputs.jsonl`` and ``metrics.json``."""
    task = get_task(args.task, **parse_task_options(args.task_option))
    path = resolve_model_path(args.model)
    gen_length = args.gen_length or task.response_length
    block = args.block_length or gen_length
    steps = args.steps or gen_length
    try:
        sampling = SamplingConfig(
            steps=steps,
            block_length=block,
            remasking=args.remasking,
            temperature=args.temperature,
            mode=getattr(args, "sampler", "exact"),
        )
    except ValidationError as err:  # one line for the CLI, not pydantic's report
        messages = (str(e["msg"]).removeprefix("Value error, ") for e in err.errors())
        raise ValueError("; ".join(messages)) from None
    model, codec = load_model_folder(path, task)  # after the settings are known to be usable
    model.to(args.device)
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    examples = task.examples(args.split, args.limit, args.seed)
    rows = [(e, k) for e in examples for k in range(args.samples)]
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    forbidden = sorted({codec.pad_token_id} - {codec.eos_token_id})
    responses: list[str] = []
    started = time.time()
    for lo in tqdm(range(0, len(rows), args.batch_size), desc=f"eval {task.name}", unit="batch"):
        chunk = rows[lo : lo + args.batch_size]
        prompts = [codec.encode_prompt(e.prompt) for e, _ in chunk]
        out = generate(
            denoiser,
            prompts,
            gen_length,
            sampling,
            generator,
            forbidden_token_ids=forbidden,
            eos_token_id=codec.eos_token_id,
        )
        responses += [codec.decode_response(r.tolist()) for r in out.responses.cpu()]
    seconds = time.time() - started
    flat_examples = [e for e, _ in rows]
    metrics: dict[str, Any] = dict(task.metrics(responses, flat_examples))
    metrics.update(
        {
            "task": task.name,
            "split": args.split,
            "model": str(path),
            "examples": len(examples),
            "samples_per_example": args.samples,
            "gen_length": gen_length,
            "block_length": block,
            "steps": steps,
            "temperature": args.temperature,
            "sampler": sampling.mode,
            "seconds": seconds,
        }
    )
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        with (out_dir / "outputs.jsonl").open("w") as fh:
            for (example, k), text in zip(rows, responses, strict=True):
                record = {
                    "uid": example.uid,
                    "sample": k,
                    "prompt": example.prompt,
                    "reference": example.reference,
                    "response": text,
                    "reward": task.checked_reward(text, example),
                }
                fh.write(json.dumps(record) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
