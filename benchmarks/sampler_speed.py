"""Sampler speed and fidelity: exact vs cached / parallel decoding (issue 10).

Three parts, each printing a table and writing JSON (``--out``):

- ``share``: the sampler's own share of ``generate`` (everything but the denoiser's
  forwards) on a LLaDA-vocabulary model (V = 126464, mask id 126336; ``--share-model``
  LAYERSxHIDDEN, 2x256 by default), for the lean noise (the default) and the compatible
  noise (same tokens as before lean logits).
- ``cache``: the dual cache against the exact sampler at ``--cache-length`` (1024) and
  ``--cache-batch`` (1) on a LLaDA-vocabulary model (``--hidden``, ``--layers``): process CPU
  seconds of each (default noise), the FLOPs of each (``FlopCounterMode`` over a second,
  untimed call), and the fraction of its FLOP bound the cache reaches: (exact seconds /
  dual seconds) / (exact FLOPs / dual FLOPs).
- ``speed``: tokens per second of each mode on a LLaDA-shaped model (its vocabulary
  and mask id; random weights, so its confidences are near uniform and parallel
  decoding falls back to one token per step: see ``maze`` for parallel on a trained
  model), side by side in one process, with the number of denoiser forwards.
- ``maze``: on the shipped maze base, each mode's samples against the exact
  sampler's: TV between their per-maze outcome distributions against the noise
  floor (TV between two exact samples of the same size, dtm/exact_target.py), the
  task accuracy over seeds, forwards per response and wall time.
- ``tasks``: on the sudoku and countdown bases (shipped, else ``--bases``), each mode's
  task accuracy against the exact sampler's over seeds: the difference with an
  approximate 95% interval (two standard errors over the seeds).

    PYTHONPATH=src python benchmarks/sampler_speed.py share speed maze tasks --out runs/sampler
    PYTHONPATH=src python benchmarks/sampler_speed.py share --share-model 4x1024 --out runs/sampler
    PYTHONPATH=src python benchmarks/sampler_speed.py cache --hidden 1024 --layers 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from tiltmatch.dtm.exact_target import empirical_distribution, total_variation
from tiltmatch.experiments.maze_target import maze_outcome
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.models.llada import LLADA_8B_INSTRUCT_CONFIG
from tiltmatch.sampling.sampler import SamplingConfig, generate

LLADA_VOCAB = LLADA_8B_INSTRUCT_CONFIG["vocab_size"]
LLADA_MASK = LLADA_8B_INSTRUCT_CONFIG["mask_token_id"]


class CountingDenoiser(MaskedDenoiser):
    """A denoiser that counts and times its forwards (the model's share of ``generate``), and
    times its vocabulary projection apart (``head_seconds``, ``head_flops``: the head reads
    its whole ``V x hidden`` matrix whatever the number of rows it projects)."""

    def __init__(self, inner: MaskedDenoiser) -> None:
        super().__init__(inner.model, inner.mask_token_id, inner.pad_token_id)
        self.forwards, self.seconds = 0, 0.0
        self.head_seconds, self.head_flops, self._head_start = 0.0, 0, 0.0
        head = inner.model.get_output_embeddings()
        head.register_forward_pre_hook(self._head_enter)
        head.register_forward_hook(self._head_leave)

    def _head_enter(self, module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
        self._head_start = time.perf_counter()

    def _head_leave(self, module: torch.nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        self.head_seconds += time.perf_counter() - self._head_start
        self.head_flops += 2 * inputs[0].numel() * out.shape[-1]

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
        max_positions=2048,  # RoPE has no weights: the cache part's 64 + 1024 columns
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
    denoiser.head_seconds, denoiser.head_flops = 0.0, 0
    start, cpu = time.perf_counter(), time.process_time()
    out = generate(denoiser, prompts, length, config, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    tokens = out.responses.numel()
    return {
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "forward_seconds": denoiser.seconds,
        "sampler_share": (seconds - denoiser.seconds) / seconds,
        "forwards": denoiser.forwards,
        "tokens_per_second": tokens / seconds,
        "head_seconds": denoiser.head_seconds,
        "head_flops": denoiser.head_flops,
    }


def part_share(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The sampler's own share (B 4, L 128, 64 steps, block 32) on a ``--share-model`` model:
    the default configuration (lean noise) and compatible noise."""
    layers, hidden = (int(v) for v in args.share_model.lower().split("x"))
    denoiser = llada_shaped(hidden, layers)
    prompts = [list(range(100, 132))] * 4
    rows = []
    for noise in ("lean", "compatible"):
        if noise == "compatible" and args.skip_compatible:
            continue
        config = SamplingConfig(steps=64, block_length=32, temperature=1.0, noise=noise)
        row = {
            "part": "share",
            "model": f"{layers}x{hidden}",
            "noise": noise,
            **timed_generate(denoiser, prompts, 128, config, 0),
        }
        print(
            f"share  {layers}x{hidden} noise={noise:<10} total {row['seconds']:7.1f}s  forwards "
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
                if name.startswith("exact (compatible") and (
                    args.skip_compatible or (length, batch) != (args.lengths[0], args.batches[0])
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


def counted_flops(
    denoiser: CountingDenoiser, prompts: list[list[int]], length: int, config: SamplingConfig
) -> int:
    """FLOPs of one ``generate`` call (matrix products and attention; untimed)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as flops:
        generate(denoiser, prompts, length, config, torch.Generator().manual_seed(0))
    return int(flops.get_total_flops())


def part_cache(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The dual cache against exact decoding at one length and batch: CPU seconds, FLOPs, and
    the fraction of its FLOP bound the speedup reaches (goal: at least 0.8)."""
    denoiser = llada_shaped(args.hidden, args.layers)
    length, batch = args.cache_length, args.cache_batch
    prompts = [list(range(100, 100 + args.prompt_length))] * batch
    timed: dict[str, dict[str, Any]] = {}
    for name, fields in (("exact", {}), ("cached dual", {"mode": "cached", "cache": "dual"})):
        config = SamplingConfig(steps=length // 2, block_length=32, temperature=1.0, **fields)
        row = timed_generate(denoiser, prompts, length, config, 0)
        row["flops"] = (
            counted_flops(denoiser, prompts, length, config) if args.count_flops else None
        )
        timed[name] = row
    exact, dual = timed["exact"], timed["cached dual"]
    speedup = exact["cpu_seconds"] / dual["cpu_seconds"]
    bound = exact["flops"] / dual["flops"] if exact["flops"] and dual["flops"] else None
    row = {
        "part": "cache",
        "model": f"{args.layers}x{args.hidden}",
        "length": length,
        "batch": batch,
        "exact": exact,
        "dual": dual,
        "speedup": speedup,
        "flop_bound": bound,
        "fraction_of_bound": speedup / bound if bound else None,
        **body_rates(exact, dual),
    }
    print(
        f"cache  {args.layers}x{args.hidden} L={length} B={batch}  exact "
        f"{exact['cpu_seconds']:.1f} CPU-s, dual {dual['cpu_seconds']:.1f} CPU-s: x{speedup:.2f}"
        + (f" of a FLOP bound x{bound:.2f} = {speedup / bound:.2f}" if bound else ""),
        flush=True,
    )
    if bound:
        print(
            f"       head (vocabulary projection) {exact['head_seconds']:.1f} / "
            f"{dual['head_seconds']:.1f} s of exact / dual at {row['head_gflops_per_s']:.0f} "
            f"GFLOP/s; the rest at {row['body_gflops_per_s_exact']:.0f} / "
            f"{row['body_gflops_per_s_dual']:.0f} GFLOP/s: without the head, "
            f"x{row['body_speedup']:.2f} of x{row['body_flop_bound']:.2f} = "
            f"{row['body_fraction_of_bound']:.2f}",
            flush=True,
        )
    return [row]


def body_rates(exact: dict[str, Any], dual: dict[str, Any]) -> dict[str, float]:
    """Where the cache's gap to its FLOP bound lies: the vocabulary projection's rate (the
    same rows projected in both modes) and the rate of everything else in each mode.

    Wall seconds of the head's forwards, split from the process CPU seconds in proportion
    (one thread: the two agree to a fraction of a percent)."""
    if not exact["flops"] or not dual["flops"]:
        return {}
    rates: dict[str, float] = {}
    body: dict[str, tuple[float, int]] = {}
    for name, row in (("exact", exact), ("dual", dual)):
        head_cpu = row["cpu_seconds"] * row["head_seconds"] / row["seconds"]
        body[name] = (row["cpu_seconds"] - head_cpu, row["flops"] - row["head_flops"])
        rates[f"body_gflops_per_s_{name}"] = body[name][1] / body[name][0] / 1e9
    head_seconds = exact["head_seconds"] + dual["head_seconds"]
    rates["head_gflops_per_s"] = (exact["head_flops"] + dual["head_flops"]) / head_seconds / 1e9
    rates["body_speedup"] = body["exact"][0] / body["dual"][0]
    rates["body_flop_bound"] = body["exact"][1] / body["dual"][1]
    rates["body_fraction_of_bound"] = rates["body_speedup"] / rates["body_flop_bound"]
    return rates


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


def sample_groups(
    task: Any,
    codec: Any,
    denoiser: CountingDenoiser,
    examples: list[Any],
    samples: int,
    config: SamplingConfig,
    seed: int,
) -> tuple[list[list[str]], dict[str, Any]]:
    """``samples`` decoded responses per example in one ``generate`` call (the package's
    own :func:`~tiltmatch.training.evaluation.sample_texts`), with the draw's wall seconds
    and denoiser forwards."""
    from tiltmatch.training.evaluation import sample_texts
    from tiltmatch.training.rollouts import RolloutWorker

    one_call = len(examples) * samples
    worker = RolloutWorker(task, codec, task.response_length, config, chunk_size=one_call)
    denoiser.forwards, denoiser.seconds = 0, 0.0
    start = time.perf_counter()
    groups = sample_texts(worker, denoiser, examples, samples, config.temperature, seed)
    return groups, {"seconds": time.perf_counter() - start, "forwards": denoiser.forwards}


def over_seeds(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A mode's accuracy (mean and population spread), forwards and seconds over seeds."""
    return {
        "accuracy": statistics.fmean(s["accuracy"] for s in seeds),
        "accuracy_spread": statistics.pstdev(s["accuracy"] for s in seeds),
        "forwards_per_batch": statistics.fmean(s["forwards"] for s in seeds),
        "seconds": statistics.fmean(s["seconds"] for s in seeds),
        "seeds": seeds,
    }


def part_maze(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each mode vs exact on the shipped maze base: TV against the noise floor, accuracy."""
    from tiltmatch.models.loading import load_model_folder, resolve_model_path
    from tiltmatch.tasks.maze.task import MazeTask

    task = MazeTask()
    model, codec = load_model_folder(resolve_model_path("shipped:maze"), task)
    denoiser = CountingDenoiser(MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id))
    examples = task.examples("test", args.mazes, 0)
    rows = []
    for remasking, block in args.maze_settings:
        base = {
            "steps": task.response_length,
            "block_length": block,
            "remasking": remasking,
            "temperature": 1.0,
            "noise": "compatible",  # the recorded figures' draws (docs/sampling.md)
        }

        def draw(
            fields: dict[str, Any], seed: int, base: dict[str, Any] = base
        ) -> tuple[list[list[str]], dict[str, Any]]:
            config = SamplingConfig(**base, **fields)
            return sample_groups(task, codec, denoiser, examples, args.samples, config, seed)

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
                **over_seeds(seeds),
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


# The tasks' own sampler is low-confidence with one block over the whole response, so the
# prefix cache holds the prompt and a dual cache has no suffix to keep: one cached row.
TASK_MODES: list[tuple[str, dict[str, Any]]] = [
    ("exact", {}),
    ("cached prefix", {"mode": "cached", "cache": "prefix"}),
    ("parallel 0.9", {"mode": "parallel", "threshold": 0.9}),
    ("parallel 0.7", {"mode": "parallel", "threshold": 0.7}),
    ("parallel factor 1", {"mode": "parallel", "factor": 1.0}),
    ("cached prefix+parallel 0.9", {"mode": "cached+parallel", "cache": "prefix"}),
]


def task_base(name: str, bases: Path) -> Path:
    """The base of a benchmark task: the shipped one, else ``bases/<task>`` (pretrained by
    ``benchmarks/base_models.py``)."""
    from tiltmatch.experiments.base_models import shipped_base

    folder = shipped_base(name) or bases / name
    if not (folder / "config.json").is_file():
        raise SystemExit(
            f"sampler_speed: no {name} base (none shipped, none in {bases}); run "
            f"python benchmarks/base_models.py --out {bases}"
        )
    return folder


def difference(mode: list[float], exact: list[float]) -> tuple[float, float]:
    """Mean difference of two modes' per-seed accuracies and two standard errors of it."""
    diff = statistics.fmean(mode) - statistics.fmean(exact)
    if len(mode) < 2:
        return diff, float("nan")
    se = (statistics.variance(mode) / len(mode) + statistics.variance(exact) / len(exact)) ** 0.5
    return diff, 2 * se


def part_tasks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each mode's accuracy against the exact sampler's on the sudoku and countdown bases."""
    from tiltmatch.experiments.base_models import RECIPES
    from tiltmatch.experiments.bench import ACCURACY_METRIC
    from tiltmatch.models.loading import load_model_folder
    from tiltmatch.tasks import get_task

    rows = []
    for name in args.tasks:
        recipe = RECIPES[name]
        task = get_task(recipe.task, **recipe.task_options)
        folder = task_base(name, Path(args.bases))
        model, codec = load_model_folder(folder, task)
        denoiser = CountingDenoiser(
            MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
        )
        examples = task.examples("test", args.prompts, 0)
        flat_examples = [e for e in examples for _ in range(args.samples)]
        metric = ACCURACY_METRIC[name]
        exact: list[float] = []
        for mode, fields in TASK_MODES:
            seeds = []
            for seed in range(args.seeds):
                config = SamplingConfig(**{**recipe.sampler, **fields})
                with torch.no_grad():
                    groups, stats = sample_groups(
                        task, codec, denoiser, examples, args.samples, config, seed
                    )
                texts = [t for group in groups for t in group]
                accuracy = float(task.metrics(texts, flat_examples)[metric])
                seeds.append({"accuracy": accuracy, **stats})
            accuracies = [s["accuracy"] for s in seeds]
            if mode == "exact":
                exact = accuracies
            diff, interval = difference(accuracies, exact)
            row = {
                "part": "tasks",
                "task": name,
                "base": str(folder),
                "metric": metric,
                "mode": mode,
                "difference_to_exact": diff,
                "difference_interval": interval,
                **over_seeds(seeds),
            }
            print(
                f"tasks  {name:<10} {mode:<28} {metric} {row['accuracy']:.4f} +- "
                f"{row['accuracy_spread']:.4f}  minus exact {diff:+.4f} +- {interval:.4f}  "
                f"forwards {row['forwards_per_batch']:.1f}  {row['seconds']:.1f}s",
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts; print each table and write ``sampler_speed.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=["share", "speed", "cache", "maze", "tasks"])
    parser.add_argument("--out", default="runs/sampler")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument(
        "--skip-compatible",
        action="store_true",
        help="speed part: leave out the compatible-noise row (minutes per step at batch 16)",
    )
    parser.add_argument(
        "--share-model", default="2x256", help="share part: LAYERSxHIDDEN of the model"
    )
    parser.add_argument("--cache-length", type=int, default=1024, help="cache part: L")
    parser.add_argument("--cache-batch", type=int, default=1, help="cache part: rows")
    parser.add_argument(
        "--no-count-flops",
        dest="count_flops",
        action="store_false",
        help="cache part: skip the FLOP-counting calls (no fraction of the bound then)",
    )
    parser.add_argument("--mazes", type=int, default=50)
    parser.add_argument("--samples", type=int, default=100, help="samples per maze")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--tasks", nargs="+", choices=["sudoku", "countdown"], default=["sudoku", "countdown"]
    )
    parser.add_argument("--prompts", type=int, default=128, help="tasks part: held-out prompts")
    parser.add_argument("--bases", default="runs/bases", help="tasks part: unshipped bases")
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
    parts = {
        "share": part_share,
        "speed": part_speed,
        "cache": part_cache,
        "maze": part_maze,
        "tasks": part_tasks,
    }
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
