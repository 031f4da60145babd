"""Recipes that pretrain the benchmark's base models and measure their held-out accuracy.

Each base is a tiny bidirectional Llama trained by masked-diffusion SFT
(:func:`tiltmatch.training.pretrain.pretrain`) on the task's *imperfect* demonstrations,
so that it answers in the task's format, is right only part of the time and
has several answers per prompt: room for reward fine-tuning to move it.

    python benchmarks/base_models.py --out runs/bases            # sudoku and countdown
    python benchmarks/base_models.py --out runs/bases --task maze  # maze fallback
    python -m tiltmatch.experiments.base_models --task maze \
        --folder src/tiltmatch/assets/maze-base --overwrite       # make base-maze

A base is cached as ``<out>/<task>/`` (a loadable denoiser folder) with
``base_metrics.json`` beside it (the recipe, the pretraining summary and the
measured held-out metrics); an existing folder is reused, never retrained.
``tiltmatch bench`` reads the same cache. The maze base normally ships with the
package (``src/tiltmatch/assets/maze-base``); the maze recipe here is the one
that made it (the only maze recipe: the demo, ``make base-maze`` and the
benchmark's fallback all read it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec
from tiltmatch.models.loading import load_model_folder
from tiltmatch.sampling.sampler import SamplingConfig
from tiltmatch.tasks import get_task
from tiltmatch.training.evaluation import evaluate
from tiltmatch.training.pretrain import PretrainConfig, pretrain
from tiltmatch.training.rollouts import RolloutWorker

METRICS_FILE = "base_metrics.json"


@dataclass(frozen=True)
class BaseRecipe:
    """How one benchmark base model is made and sampled."""

    task: str
    task_options: dict[str, Any]
    spec: TinyModelSpec
    pretrain: PretrainConfig
    sampler: dict[str, Any] = field(default_factory=dict)
    eval_examples: int = 128
    eval_samples: int = 4


#: The documented recipes (a few minutes each on one CPU core).
RECIPES: dict[str, BaseRecipe] = {
    # Demonstrations get each blank cell wrong with probability 0.3 (the task default).
    "sudoku": BaseRecipe(
        task="sudoku",
        task_options={"format": "char"},
        spec=TinyModelSpec(
            hidden_size=96, num_layers=3, num_heads=4, intermediate_size=288, max_positions=64
        ),
        pretrain=PretrainConfig(steps=700, batch_size=64, learning_rate=1e-3, train_examples=5000),
        sampler={"steps": 8, "block_length": 16, "remasking": "low_confidence", "temperature": 1.0},
    ),
    # Demonstrations are correct with probability 0.35 (the task default). Single-digit
    # numbers: a tiny model learns to copy them within minutes (with numbers up to 30 it
    # had not after 700 steps: 0.4% accuracy), and responses fit in 12 characters.
    "countdown": BaseRecipe(
        task="countdown",
        task_options={"format": "char", "max_number": 9, "max_target": 100, "response_length": 12},
        spec=TinyModelSpec(
            hidden_size=96, num_layers=3, num_heads=4, intermediate_size=288, max_positions=64
        ),
        pretrain=PretrainConfig(steps=1200, batch_size=64, learning_rate=1e-3, train_examples=1000),
        sampler={
            "steps": 8,
            "block_length": 12,
            "remasking": "low_confidence",
            "temperature": 1.0,
        },
    ),
    # The shipped maze base (src/tiltmatch/assets/maze-base; its tiltmatch.json records this
    # recipe, and a test checks the two agree): the task's and the demo's default options,
    # 4x4 grids with answers of at most 8 moves. ``make base-maze`` rebuilds it from here;
    # the demo and the benchmark pretrain it from here only when the package lacks it
    # (about 30 CPU-minutes). Measured with the demo's random-order sampler.
    "maze": BaseRecipe(
        task="maze",
        task_options={},
        spec=TinyModelSpec(hidden_size=96, num_layers=4, num_heads=4, intermediate_size=288),
        pretrain=PretrainConfig(
            steps=6000,
            batch_size=128,
            learning_rate=1e-3,
            final_learning_rate=5e-5,
            warmup_steps=100,
            weight_decay=0.01,
            train_examples=20000,
            seed=0,
        ),
        sampler={"steps": 8, "block_length": 8, "remasking": "random", "temperature": 1.0},
    ),
}


def measure(folder: Path, recipe: BaseRecipe, seed: int = 12345) -> dict[str, float]:
    """Held-out metrics of the base model in ``folder`` with the recipe's sampler."""
    task = get_task(recipe.task, **recipe.task_options)
    model, codec = load_model_folder(folder, task)
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    sampling = SamplingConfig(**recipe.sampler)
    worker = RolloutWorker(task, codec, task.response_length, sampling)
    examples = task.examples("test", recipe.eval_examples, 12345)
    with torch.no_grad():
        return evaluate(worker, denoiser, examples, recipe.eval_samples, sampling.temperature, seed)


def ensure_base(
    task_name: str,
    out: str | Path,
    quiet: bool = True,
    family: str = "llada",
    steps: int | None = None,
) -> Path:
    """The cached base of ``task_name`` under ``out``; pretrain and measure it if absent.

    ``family``: the recipe's model size with that family's architecture, cached
    as ``<task>-<family>`` (the default family keeps the plain ``<task>`` folder);
    ``steps``: pretraining steps instead of the recipe's (``...-steps<N>``).
    """
    recipe = RECIPES[task_name]
    folder = Path(out) / task_name
    if family != "llada":
        recipe = dataclasses.replace(recipe, spec=dataclasses.replace(recipe.spec, family=family))
        folder = Path(out) / f"{task_name}-{family}"
    if steps is not None:  # a shorter (or longer) pretraining, cached apart
        pretraining = dataclasses.replace(recipe.pretrain, steps=steps)
        recipe = dataclasses.replace(recipe, pretrain=pretraining)
        folder = folder.with_name(f"{folder.name}-steps{steps}")
    task = get_task(recipe.task, **recipe.task_options)
    options = _resolved_options(task)
    if (folder / "config.json").is_file() and (folder / METRICS_FILE).is_file():
        cached = json.loads((folder / METRICS_FILE).read_text())
        if cached.get("resolved_task_options") == options:
            return folder
        # The task's defaults changed since this base was trained: it would be tested on
        # prompts it never saw. Keep it aside and train a new one.
        stale = folder.with_name(folder.name + ".stale")
        shutil.rmtree(stale, ignore_errors=True)
        folder.rename(stale)
    started = time.time()
    _, summary = pretrain(task, recipe.spec, recipe.pretrain, out_dir=folder, quiet=quiet)
    metrics = measure(folder, recipe)
    record = {
        "task": recipe.task,
        "task_options": recipe.task_options,
        "resolved_task_options": options,
        "spec": asdict(recipe.spec),
        "pretrain": asdict(recipe.pretrain),
        "sampler": recipe.sampler,
        "summary": summary,
        "heldout": metrics,
        "seconds": time.time() - started,
    }
    (folder / METRICS_FILE).write_text(json.dumps(record, indent=2))
    return folder


def shipped_base(task_name: str) -> Path | None:
    """The package's shipped base of ``task_name`` if it was made by today's task options.

    Pretraining is not bit-reproducible across machines (BENCHMARKS.md), so the
    benchmark's sudoku and countdown bases ship with the package like the maze's; a
    shipped base whose recorded task options no longer match the task's defaults
    would be tested on prompts it never saw, and is not used.
    """
    from tiltmatch.models.loading import shipped_model_dir

    folder = shipped_model_dir(task_name)
    metrics = folder / METRICS_FILE
    if not (folder / "config.json").is_file() or not metrics.is_file():
        return None
    recipe = RECIPES[task_name]
    task = get_task(recipe.task, **recipe.task_options)
    recorded = json.loads(metrics.read_text()).get("resolved_task_options")
    return folder if recorded == _resolved_options(task) else None


def _resolved_options(task: Any) -> dict[str, Any]:
    """Every option of a task with its value, defaults included (to detect stale bases)."""
    if hasattr(task, "describe"):
        return json.loads(json.dumps(task.describe()))
    names = (
        "format",
        "blanks",
        "demo_error_rate",
        "min_number",
        "max_number",
        "max_target",
        "demo_correct_prob",
        "response_length",
    )
    return json.loads(json.dumps({n: getattr(task, n) for n in names if hasattr(task, n)}))


def main(argv: list[str] | None = None) -> int:
    """Pretrain (or reuse) the requested bases and print their held-out metrics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bases", help="cache folder of the bases")
    parser.add_argument(
        "--task",
        action="append",
        choices=sorted(RECIPES),
        help="task(s) to build (default: sudoku and countdown)",
    )
    parser.add_argument(
        "--folder",
        help="pretrain one --task into exactly this model folder (no metrics file), e.g. "
        "the shipped asset",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="with --folder: replace a model already there"
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.folder is not None:
        if not args.task or len(args.task) != 1:
            parser.error("--folder needs exactly one --task")
        folder = Path(args.folder)
        if (folder / "config.json").is_file() and not args.overwrite:
            parser.error(f"{folder} already holds a model; pass --overwrite to replace it")
        recipe = RECIPES[args.task[0]]
        task = get_task(recipe.task, **recipe.task_options)
        _, summary = pretrain(
            task, recipe.spec, recipe.pretrain, out_dir=folder, quiet=not args.verbose
        )
        print(f"{args.task[0]}: {folder}  {json.dumps(summary)}")
        return 0
    for name in args.task or ["sudoku", "countdown"]:
        folder = ensure_base(name, args.out, quiet=not args.verbose)
        record = json.loads((folder / METRICS_FILE).read_text())
        print(
            f"{name}: {folder}  held-out {json.dumps(record['heldout'])}  "
            f"({record['seconds']:.0f} s to build)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
