"""The ``tiltmatch`` command: demo, pretrain, train, eval, convert-llada, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tiltmatch.config import ConfigError, parse_task_options


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run configuration")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set dtm.h=2 (repeatable)",
    )
    p.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if getattr(args, "seed", None) is not None:
        out.append(f"seed={args.seed}")
    return out


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune with the configured method; ``--resume`` continues a killed run."""
    from tiltmatch.config import build_config
    from tiltmatch.training.runner import run_training

    out = Path(args.out)
    if args.resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: no config.yaml in {out}")
        config = build_config(saved, _overrides(args))
    else:
        config = build_config(args.config, _overrides(args), base=_task_base(args))
    result = run_training(config, out, resume=args.resume, quiet=args.quiet)
    print(json.dumps(result["final"], indent=2))
    return 0


def _task_base(args: argparse.Namespace) -> dict[str, Any]:
    return {"task": args.task} if getattr(args, "task", None) else {}


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Masked-diffusion SFT of a tiny base model on a synthetic task's demonstrations."""
    from tiltmatch.models.denoiser import TinyModelSpec
    from tiltmatch.tasks import get_task
    from tiltmatch.training.pretrain import PretrainConfig, pretrain

    task = get_task(args.task, **parse_task_options(args.task_option))
    spec = TinyModelSpec(
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size or 3 * args.hidden_size,
    )
    config = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        train_examples=args.train_examples,
    )
    _, summary = pretrain(task, spec, config, out_dir=args.out, quiet=args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a model on a task's held-out split; writes per-example outputs and metrics."""
    from tiltmatch.training.model_eval import run_eval

    metrics = run_eval(args)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The CPU demo: DTM on the maze from the shipped base model, with a report."""
    from tiltmatch.experiments.demo import HEADLINE_KEYS, TINY_OVERRIDES, TINY_PROBE, run_demo

    overrides = [*TINY_OVERRIDES, *_overrides(args)] if args.tiny else _overrides(args)
    report = run_demo(
        Path(args.out),
        config_path=args.config,
        overrides=overrides,
        quiet=args.quiet,
        **(TINY_PROBE if args.tiny else {}),
    )
    print(json.dumps({k: report[k] for k in HEADLINE_KEYS}, indent=2))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The side-by-side benchmark of DTM and the baselines."""
    from tiltmatch.experiments.bench import main as bench_main

    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tiltmatch`` command."""
    parser = argparse.ArgumentParser(
        prog="tiltmatch",
        description="Discrete Tilt Matching: reward fine-tuning of masked diffusion LMs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fine-tune the maze base model with DTM and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (report.md, report.json)")
    _add_config_args(p)
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="the same pipeline at a toy size, in seconds (checks an installation; the "
        "numbers mean nothing)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="masked-diffusion SFT of a tiny base model on a task")
    p.add_argument("--task", default="maze")
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="folder to save the base model in")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=0)
    p.add_argument("--train-examples", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="fine-tune a model with DTM or a baseline")
    p.add_argument("--out", required=True, help="run folder (checkpoint, logs, final model)")
    p.add_argument("--task", help="task name (same as --set task=NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_config_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on a task")
    p.add_argument("--model", required=True, help="model folder, or shipped:maze")
    p.add_argument("--task", required=True)
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many examples")
    p.add_argument("--gen-length", type=int, default=None, help="response tokens")
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="sampler steps")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    p.add_argument("--samples", type=int, default=1, help="samples per example")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="folder for outputs.jsonl and metrics.json")
    p.set_defaults(func=cmd_eval)

    try:
        from tiltmatch.models.llada import add_convert_parser

        add_convert_parser(sub)
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass

    # Every argument goes to tiltmatch.experiments.bench (its own --help): with "+" as the only
    # prefix, this parser takes "--quick" and friends as plain words instead of rejecting them.
    p = sub.add_parser(
        "bench",
        help="side-by-side benchmark of DTM and the baselines",
        prefix_chars="+",
        add_help=False,
    )
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="arguments of tiltmatch.experiments.bench"
    )
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, run, and turn known errors into one clear line and exit code 2."""
    from tiltmatch.data import DatasetError
    from tiltmatch.tasks import UnknownTaskError
    from tiltmatch.tasks.base import RewardError
    from tiltmatch.training.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (
        ConfigError,
        CheckpointError,
        DatasetError,
        UnknownTaskError,
        RewardError,
        FileNotFoundError,
        FileExistsError,
        ValueError,
    ) as err:
        print(f"tiltmatch {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
