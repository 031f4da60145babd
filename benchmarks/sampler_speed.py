"""Sampler speed and fidelity: exact vs cached / parallel decoding (issue 10).

Three parts, each printing a table and writing JSON (``--out``):

- ``share``: the sampler's own share of ``generate`` (everything but the denoiser's
  forwards) on a LLaDA-vocabulary model (V = 126464, mask id 126336), for the
  compatible noise (same tokens as before lean logits) and the lean noise.
- ``speed``: tokens per second of each mode on a LLaDA-shaped model (its vocabulary
  and mask id; random weights, so its confidences are near uniform and parallel
  decoding falls back to one token per step: see ``maze`` for parallel on a trained
  model), side by side in one process, with the number of denoiser forwards.
- ``maze``: on the shipped maze base, each mode's samples against the exact
  sampler's: TV between their per-maze outcome distributions against the noise
  floor (TV between two exact samples of the same size, dtm/exact_target.py), the
  task accuracy over seeds, forwards per response and wall time.

    PYTHONPATH=src python benchmarks/sampler_speed.py share speed maze --out runs/sampler
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tiltmatch.dtm.exact_target import empirical_distribution, maze_outcome, total_variation
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.sampling.sampler import SamplingConfig, generate

LLADA_VOCAB, LLADA_MASK = 126_464, 126_336


class CountingDenoiser(MaskedDenoiser):
    """A denoiser that counts and times its forwards (the model's share of ``generate``)."""

    def __init__(self, inner: MaskedDenoiser) -> None:
        super().__init__(inner.model, inner.mask_token_id, inner.pad_token_id)
        self.forwards, self.seconds = 0, 0.0

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The inner forward, counted and timed."""
        start = time.perf_counter()
        out = super().forward(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.forwards += 1
        return out


def llada_shaped(hidden: int, layers: int) -> CountingDenoiser:
    """A randomly initialised bidirectional Llama with LLaDA's vocabulary and mask id."""
    spec = TinyModelSpec(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=max(hidden // 64, 2),
        intermediate_size=3 * hidden,
        max_positions=1024,
    )
    model = tiny_denoiser(LLADA_VOCAB, spec, seed=0)
    return CountingDenoiser(MaskedDenoiser(model, LLADA_MASK, 0).eval())


def timed_generate(
    denoiser: CountingDenoiser,
    prompts: list[list[int]],
    length: int,
    config: SamplingConfig,
    seed: int,
) -> dict[str, Any]:
    """One ``generate`` call: wall seconds, the forwards' seconds and count."""
    denoiser.forwards, denoiser.seconds = 0, 0.0
    start = time.perf_counter()
    out = generate(denoiser, prompts, length, config, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    tokens = out.responses.numel()
    return {
        "seconds": seconds,
        "forward_seconds": denoiser.seconds,
        "sampler_share": (seconds - denoiser.seconds) / seconds,
        "forwards": denoiser.forwards,
        "tokens_per_second": tokens / seconds,
    }


def part_share(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The sampler's own share at the issue's setting (2 x 256, B 4, L 128, 64 steps)."""
    denoiser = llada_shaped(256, 2)
    prompts = [list(range(100, 132))] * 4
    rows = []
    for noise in ("lean", "compatible"):
        config = SamplingConfig(steps=64, block_length=32, temperature=1.0, noise=noise)
        row = {"part": "share", "noise": noise, **timed_generate(denoiser, prompts, 128, config, 0)}
        print(
            f"share  noise={noise:<10} total {row['seconds']:7.1f}s  forwards "
            f"{row['forward_seconds']:6.1f}s  sampler share {100 * row['sampler_share']:4.0f}%",
            flush=True,
        )
        rows.append(row)
    return rows


# Parallel modes are left out here: with random weights every confidence is about 1 / V, so
# they commit one token per step (exact at steps = L, twice the exact sampler's steps); their
# speed on a trained model is measured in the maze part.
SPEED_MODES: list[tuple[str, dict[str, Any]]] = [
    ("exact (compatible noise)", {"mode": "exact", "noise": "compatible"}),
    ("exact (lean)", {"mode": "exact"}),
    ("cached prefix", {"mode": "cached", "cache": "prefix"}),
    ("cached dual", {"mode": "cached", "cache": "dual"}),
]


def part_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Tokens per second of each mode, lengths x batch sizes, one process."""
    denoiser = llada_shaped(args.hidden, args.layers)
    rows = []
    for length in args.lengths:
        for batch in args.batches:
            prompts = [list(range(100, 100 + args.prompt_length))] * batch
            baseline = None
            for name, fields in SPEED_MODES:
                if name.startswith("exact (compatible") and (length, batch) != (
                    args.lengths[0],
                    args.batches[0],
                ):
                    continue  # the slow one, once: its cost is the full-width noise draw
                fields = {"noise": "lean", **fields}
                config = SamplingConfig(
                    steps=length // 2, block_length=32, temperature=1.0, **fields
                )
                row = timed_generate(denoiser, prompts, length, config, 0)
                if name == "exact (lean)":
                    baseline = row["tokens_per_second"]
                row.update({"part": "speed", "mode": name, "length": length, "batch": batch})
                row["speedup_vs_lean_exact"] = (
                    row["tokens_per_second"] / baseline if baseline else None
                )
                print(
                    f"speed  L={length} B={batch:<3} {name:<26} {row['tokens_per_second']:8.1f}"
                    f" tok/s  forwards {row['forwards']:4d}  sampler share "
                    f"{100 * row['sampler_share']:3.0f}%  x{row['speedup_vs_lean_exact'] or 0:.2f}",
                    flush=True,
                )
                rows.append(row)
    return rows


MAZE_MODES: list[tuple[str, dict[str, Any]]] = [
    ("exact", {}),
    ("cached prefix", {"mode": "cached", "cache": "prefix"}),
    ("cached dual", {"mode": "cached", "cache": "dual"}),
    ("cached dual, refresh every 2", {"mode": "cached", "cache": "dual", "refresh_every": 2}),
    ("parallel 0.9", {"mode": "parallel", "threshold": 0.9}),
    ("parallel 0.7", {"mode": "parallel", "threshold": 0.7}),
    ("parallel factor 1", {"mode": "parallel", "factor": 1.0}),
    ("cached dual+parallel 0.9", {"mode": "cached+parallel", "threshold": 0.9}),
]


def part_maze(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each mode vs exact on the shipped maze base: TV against the noise floor, accuracy."""
    from tiltmatch.models.loading import load_model_folder, resolve_model_path
    from tiltmatch.tasks.maze.task import MazeTask

    task = MazeTask()
    model, codec = load_model_folder(resolve_model_path("shipped:maze"), task)
    denoiser = CountingDenoiser(MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id))
    examples = task.examples("test", args.mazes, 0)
    prompts = [codec.encode_prompt(e.prompt) for e in examples]
    forbidden = sorted({codec.pad_token_id} - {codec.eos_token_id})
    rows = []
    for remasking, block in args.maze_settings:
        base = {
            "steps": task.response_length,
            "block_length": block,
            "remasking": remasking,
            "temperature": 1.0,
        }

        def draw(
            fields: dict[str, Any], seed: int, base: dict[str, Any] = base
        ) -> tuple[list[list[str]], dict[str, Any]]:
            config = SamplingConfig(**base, **fields)
            repeated = [p for p in prompts for _ in range(args.samples)]
            denoiser.forwards, denoiser.seconds = 0, 0.0
            start = time.perf_counter()
            out = generate(
                denoiser,
                repeated,
                task.response_length,
                config,
                torch.Generator().manual_seed(seed),
                forbidden_token_ids=forbidden,
                eos_token_id=codec.eos_token_id,
            )
            stats = {"seconds": time.perf_counter() - start, "forwards": denoiser.forwards}
            texts = [codec.decode_response(r.tolist()) for r in out.responses]
            k = args.samples
            return [texts[i * k : (i + 1) * k] for i in range(len(examples))], stats

        def tv(a: list[list[str]], b: list[list[str]]) -> float:
            per_maze = [
                total_variation(
                    empirical_distribution([maze_outcome(r, e) for r in x]),
                    empirical_distribution([maze_outcome(r, e) for r in y]),
                )
                for e, x, y in zip(examples, a, b, strict=True)
            ]
            return statistics.fmean(per_maze)

        def accuracy(samples: list[list[str]]) -> float:
            return statistics.fmean(
                task.checked_reward(r, e)
                for e, rs in zip(examples, samples, strict=True)
                for r in rs
            )

        reference, _ = draw({}, 10_000)
        for name, fields in MAZE_MODES:
            if args.maze_modes and not any(m in name for m in args.maze_modes):
                continue
            if remasking != "low_confidence" and ("parallel" in name or "prefix" in name):
                continue
            seeds = []
            for seed in range(args.seeds):
                samples, stats = draw(fields, seed)
                seeds.append(
                    {"tv_to_exact": tv(samples, reference), "accuracy": accuracy(samples), **stats}
                )
            row = {
                "part": "maze",
                "mode": name,
                "remasking": remasking,
                "block_length": block,
                "tv_to_exact": statistics.fmean(s["tv_to_exact"] for s in seeds),
                "tv_spread": statistics.pstdev(s["tv_to_exact"] for s in seeds),
                "accuracy": statistics.fmean(s["accuracy"] for s in seeds),
                "accuracy_spread": statistics.pstdev(s["accuracy"] for s in seeds),
                "forwards_per_batch": statistics.fmean(s["forwards"] for s in seeds),
                "seconds": statistics.fmean(s["seconds"] for s in seeds),
                "seeds": seeds,
            }
            print(
                f"maze   {remasking:<14} block {block}  {name:<26} TV to exact "
                f"{row['tv_to_exact']:.3f} +- {row['tv_spread']:.3f}  accuracy "
                f"{row['accuracy']:.3f} +- {row['accuracy_spread']:.3f}  forwards "
                f"{row['forwards_per_batch']:.1f}  {row['seconds']:.1f}s",
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts; print each table and write ``sampler_speed.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["share", "speed", "maze"])
    parser.add_argument("--out", default="runs/sampler")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--mazes", type=int, default=50)
    parser.add_argument("--samples", type=int, default=100, help="samples per maze")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--maze-modes", nargs="*", default=[], help="maze part: only modes whose name has one"
    )
    parser.add_argument(
        "--maze-settings",
        nargs="*",
        default=["random:8", "low_confidence:4"],
        help="maze part: REMASKING:BLOCK pairs (default: the demo's sampler; low-confidence)",
    )
    args = parser.parse_args(argv)
    args.maze_settings = [
        (text.split(":")[0], int(text.split(":")[1])) for text in args.maze_settings
    ]
    torch.set_num_threads(args.threads)
    parts = {"share": part_share, "speed": part_speed, "maze": part_maze}
    rows: list[dict[str, Any]] = []
    for part in args.parts:
        rows += parts[part](args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "parts"}
    record = {
        "settings": settings,
        "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    path = out / f"sampler_speed_{'_'.join(args.parts)}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
