"""The ``tiltmatch`` command: demo, pretrain, train, eval, generate, convert-llada, bench."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tiltmatch import __version__
from tiltmatch.config import ConfigError, parse_task_options
from tiltmatch.sampling.config import SAMPLER_MODES
from tiltmatch.training.config import speak_names


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
    from tiltmatch.training.runner import check_resumable, run_training

    out = Path(args.out)
    if args.allow_change and not args.resume:
        raise ConfigError("--allow-change applies to --resume only")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if args.resume:
        check_resumable(out)
        saved = out / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: no config.yaml in {out}")
        # The stored config plus the overrides (or a whole --config); run_training refuses
        # any field that differs from the stored one unless --allow-change names it.
        source = args.config if args.config else saved
        config = build_config(source, _overrides(args), base=_task_base(args))
    else:
        config = build_config(args.config, _overrides(args), base=_task_base(args))
    result = run_training(
        config,
        out,
        resume=args.resume,
        quiet=args.quiet,
        allow_change=[f for item in args.allow_change for f in item.split(",") if f],
        overwrite=args.overwrite,
    )
    print(json.dumps(result["final"], indent=2))
    return 0


def _task_base(args: argparse.Namespace) -> dict[str, Any]:
    base: dict[str, Any] = {"task": args.task} if getattr(args, "task", None) else {}
    if getattr(args, "model", None):  # with --task or --dataset alike
        base["model"] = {"base": args.model}
    dataset = getattr(args, "dataset", None)
    rewards = [*getattr(args, "reward", []), *getattr(args, "reward_model", [])]
    if dataset is None:
        if rewards or getattr(args, "eval_dataset", None):
            raise ConfigError("--reward, --reward-model and --eval-dataset need --dataset")
        return base
    if getattr(args, "task", None):
        raise ConfigError("--dataset and --task are exclusive (a dataset is its own task)")
    if not rewards:
        raise ConfigError(
            "--dataset needs at least one --reward FILE.py:FUNCTION or --reward-model"
        )
    options: dict[str, Any] = {"train": dataset, "rewards": rewards}
    if args.eval_dataset:
        options["eval"] = args.eval_dataset
    if args.reward_weight:
        options["reward_weights"] = args.reward_weight
    if args.alphabet:
        options["alphabet"] = args.alphabet
    base.update(task="dataset", task_options=options)
    return base


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Masked-diffusion SFT of a tiny base model on a synthetic task's demonstrations."""
    from tiltmatch.destination import Destination
    from tiltmatch.models.denoiser import TinyModelSpec
    from tiltmatch.tasks import get_task
    from tiltmatch.training.plan import pretrain_estimate
    from tiltmatch.training.pretrain import PretrainConfig, preflight_pretrain, pretrain

    _check_pretrain_args(args)
    options = parse_task_options(args.task_option)
    destination = Destination(
        args.out, what="model", overwrite=args.overwrite, sources=_paths(options), staged=True
    )
    destination.check()
    task = get_task(args.task, **options)
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
    preflight_pretrain(task, spec, config)
    if not args.quiet and (estimate := pretrain_estimate(task, spec, args.steps, args.batch_size)):
        print(estimate, file=sys.stderr)
    with destination as folder:
        _, summary = pretrain(task, spec, config, out_dir=folder, quiet=args.quiet)
    print(json.dumps(summary, indent=2))
    return 0


def _paths(options: dict[str, Any]) -> list[Path]:
    """The option values that name existing files or folders (a command's sources)."""
    return [
        Path(v).expanduser()
        for v in options.values()
        if isinstance(v, str) and v and Path(v).expanduser().exists()
    ]


def _check_pretrain_args(args: argparse.Namespace) -> None:
    """Refuse pretrain sizes that cannot work (or would run without end), naming the flag."""
    import math

    from tiltmatch.config import MAX_EXAMPLES

    for flag, value in (
        ("--steps", args.steps),
        ("--batch-size", args.batch_size),
        ("--hidden-size", args.hidden_size),
        ("--num-layers", args.num_layers),
        ("--num-heads", args.num_heads),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    if args.intermediate_size < 0:
        raise ConfigError(
            f"--intermediate-size must be at least 1 (or 0: 3 x --hidden-size), got "
            f"{args.intermediate_size}"
        )
    if not 1 <= args.train_examples <= MAX_EXAMPLES:
        raise ConfigError(
            f"--train-examples must be in 1..{MAX_EXAMPLES}, got {args.train_examples}"
        )
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ConfigError(f"--learning-rate must be a finite number > 0, got {args.learning_rate}")
    if args.hidden_size % args.num_heads:
        raise ConfigError(
            f"--hidden-size {args.hidden_size} is not divisible by --num-heads {args.num_heads}"
        )


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a model on a task's published test set, or the whole published suite."""
    from tiltmatch.training.model_eval import run_eval

    result = run_eval(args)
    if args.suite is not None:
        print(result["markdown"], end="")
        print(f"table: {Path(args.out) / 'suite.md'} and suite.json")
    else:
        print(json.dumps(result, indent=2))
    return 0


#: the generate command's flags, by the Python names its errors use
GENERATE_FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "num_return_sequences": "--num-return-sequences",
    "block_length": "--block-length",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "mode=": "--sampler=",
}


def _prompts(args: argparse.Namespace) -> list[Any]:
    """The prompts of ``--prompt`` (in order) and ``--prompts-file`` (a .txt file: one per
    line; .jsonl/.json/.csv/.parquet: the ``prompt`` column)."""
    prompts: list[Any] = list(args.prompt)
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if path.suffix == ".txt":
            text = path.read_text(encoding="utf-8")
            prompts += [line for line in text.split("\n") if line.strip()]
        else:
            from tiltmatch.tasks.dataset import load_prompt_rows

            rows, label = load_prompt_rows(path)
            for i, row in enumerate(rows):
                if row.get("prompt") is None:
                    raise ConfigError(
                        f"{label}, row {i}: no 'prompt' column (columns: {sorted(row)})"
                    )
                prompts.append(row["prompt"])
    if not prompts:
        raise ConfigError("give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    """Sample completions from a saved model with its recorded sampler (JSON lines)."""
    from tiltmatch.destination import Destination
    from tiltmatch.generation.record import read_record
    from tiltmatch.models.folders import resolve_model_path

    prompts = _prompts(args)
    settings = {
        k: v
        for k, v in (
            ("temperature", args.temperature),
            ("steps", args.steps),
            ("block_length", args.block_length),
            ("remasking", args.remasking),
            ("mode", args.sampler),
        )
        if v is not None
    }
    for flag, value in (
        ("--num-return-sequences", args.num_return_sequences),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    path = resolve_model_path(args.model)
    try:  # every setting checked against the model's record before its weights are read
        record = read_record(path)
        record.sampling(record.length(args.max_new_tokens), settings)
    except ConfigError as err:
        raise ConfigError(speak_names(str(err), GENERATE_FLAGS)) from None
    destination = None
    if args.out is not None:
        destination = Destination(
            args.out, what="generations", overwrite=args.overwrite, sources=[path], staged=True
        )
        destination.check()
    try:
        from tiltmatch.generation.pretrained import load_pretrained

        model = load_pretrained(path, device=args.device, dtype=args.dtype, base=args.base)
        completions = model.generate(
            prompts,
            args.max_new_tokens,
            args.num_return_sequences,
            args.seed,
            args.batch_size,
            **settings,
        )
    except ConfigError as err:
        raise ConfigError(speak_names(str(err), GENERATE_FLAGS)) from None
    n = args.num_return_sequences
    records = [
        {"prompt": prompts[i // n], "sample": i % n, "completion": text}
        for i, text in enumerate(completions)
    ]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    print(lines, end="")
    if destination is not None:
        with destination as folder:
            (folder / "generations.jsonl").write_text(lines, encoding="utf-8")
    return 0


#: run-config fields the Python API sets otherwise than by a DTMArguments argument
ELSEWHERE_IN_API = {
    "task": "DTMTrainer(task=) or train_dataset",
    "task_options": "a Task's own options (response_length: max_completion_length)",
    "method": "method (or the baseline's trainer class)",
    "method_options": "method_options",
    "seed": "seed",
    "model.base": "DTMTrainer(model=)",
    "model": "model_init_kwargs",
    "lora": "DTMTrainer(peft_config=)",
}


def cmd_config(args: argparse.Namespace) -> int:
    """``--list``: every run-config field with its default, its Python-API argument and what it
    does; otherwise the resolved config of ``--config`` and ``--set`` as YAML."""
    from tiltmatch.config import build_config

    if not args.list:
        print(build_config(args.config, _overrides(args)).to_yaml(), end="")
        return 0
    if args.config or args.overrides or args.seed is not None:
        raise ConfigError("--list lists the fields; --config and --set resolve a config")
    from tiltmatch.api import API_NAMES
    from tiltmatch.training.config import RENAMED, config_fields

    earlier = {new: old for old, new in RENAMED.items()}
    rows = [("field (YAML, --set)", "default", "Python API", "what it does")]
    for path, default, description in config_fields():
        section = path.partition(".")[0]
        argument = API_NAMES.get(path) or ELSEWHERE_IN_API.get(path)
        argument = argument or ELSEWHERE_IN_API.get(section, "run_overrides")
        if path not in ELSEWHERE_IN_API and "." in path and section in ("model", "lora"):
            argument = f"{ELSEWHERE_IN_API[section]}: {path.partition('.')[2]}"
        note = description
        if path in earlier or any(path in k.split(", ") for k in earlier):
            old = next(old for new, old in earlier.items() if path in new.split(", "))
            note = f"{note} [earlier name: {old}, read for one release]".strip()
        shown = json.dumps(default)
        rows.append((path, shown if len(shown) <= 24 else shown[:21] + "...", argument, note))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], width, strict=True)), row[3])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The CPU demo: DTM on the maze from the shipped base model, with a report."""
    from tiltmatch.destination import Destination
    from tiltmatch.experiments.demo import HEADLINE_KEYS, TINY_OVERRIDES, TINY_PROBE, run_demo

    destination = Destination(args.out, what="demo run", overwrite=args.overwrite)
    overrides = [*TINY_OVERRIDES, *_overrides(args)] if args.tiny else _overrides(args)
    report = run_demo(
        Path(args.out),
        config_path=args.config,
        overrides=overrides,
        quiet=args.quiet,
        destination=destination,
        **(TINY_PROBE if args.tiny else {}),
    )
    print(json.dumps({k: report[k] for k in HEADLINE_KEYS}, indent=2))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The side-by-side benchmark of DTM and the baselines."""
    from tiltmatch.experiments.bench import main as bench_main

    return bench_main(args.rest)


def _add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``eval`` subcommand's arguments (the published protocol as defaults)."""
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a task, or on the published suite (tasks x lengths)",
        description="A model that records its task (tiltmatch train's final/, save_model(), "
        "the shipped bases) is evaluated with its own task options and sampler unless a flag "
        "says otherwise; otherwise the defaults are the published protocol: blocks of 32, "
        "gen_length / 2 steps, low-confidence remasking, temperature 0, the published test "
        "sets. The device defaults to the accelerator when one is visible.",
    )
    p.add_argument("--model", required=True, help="model folder, or shipped:maze")
    p.add_argument("--task", help="one task (or --suite)")
    p.add_argument(
        "--suite",
        choices=["published"],
        help="published: sudoku, countdown, gsm8k, math500 x lengths",
    )
    p.add_argument(
        "--tasks", type=lambda s: [t for t in s.split(",") if t], help="suite: subset of tasks"
    )
    p.add_argument(
        "--lengths",
        type=lambda s: [int(t) for t in s.split(",") if t],
        help="suite: response lengths (default 128,256,512)",
    )
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--split", default=None, help="default: the published test set (else the task's 'test')"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many examples")
    p.add_argument(
        "--gen-length",
        "--max-new-tokens",
        dest="gen_length",
        type=int,
        default=None,
        help="response tokens (default: the model's recorded task's, else the task's)",
    )
    p.add_argument(
        "--block-length", type=int, default=None, help="default: recorded, else 32 (derived)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="sampler steps (default: derived: gen_length/2)"
    )
    p.add_argument("--temperature", type=float, default=None, help="default: recorded, else 0")
    p.add_argument(
        "--remasking",
        choices=["low_confidence", "random"],
        default=None,
        help="default: recorded, else low_confidence",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLER_MODES,
        default=None,
        help="exact (the model's own distribution; the default unless recorded otherwise) or "
        "a faster approximation (docs/sampling.md)",
    )
    p.add_argument("--samples", type=int, default=1, help="samples per example")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device", default=None, help="default: the accelerator when one is visible, else cpu"
    )
    p.add_argument("--out", default=None, help="folder for outputs.jsonl and metrics.json")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    return p


_OVERWRITE_HELP = "replace what --out already holds (refused without it)"


def _add_generate_parser(sub: Any) -> argparse.ArgumentParser:
    """The ``generate`` subcommand: a saved model's recorded sampler unless a flag is given."""
    p = sub.add_parser(
        "generate",
        help="sample completions from a saved model (its recorded length and sampler)",
        description="Prints one JSON line per completion: prompt, sample, completion. Every "
        "sampler setting defaults to the one recorded with the model (tiltmatch.json); the "
        "block length and steps are derived from the response length unless given.",
    )
    p.add_argument("--model", required=True, help="model folder (train's final/), shipped:NAME")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument(
        "--prompts-file",
        help="prompts: a .txt file (one per line) or a .jsonl/.json/.csv/.parquet with a "
        "prompt column",
    )
    p.add_argument("--max-new-tokens", type=int, help="response tokens (default: recorded)")
    p.add_argument("--num-return-sequences", type=int, default=1, help="completions per prompt")
    p.add_argument("--temperature", type=float, help="default: recorded")
    p.add_argument("--steps", type=int, help="sampler steps (default: derived)")
    p.add_argument("--block-length", type=int, help="block length (default: derived)")
    p.add_argument("--remasking", choices=["low_confidence", "random"], help="default: recorded")
    p.add_argument("--sampler", choices=SAMPLER_MODES, help="sampler mode (default: recorded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="default: the accelerator when one is visible, else cpu")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16", "float16"], help="default: the model's"
    )
    p.add_argument("--base", help="a LoRA adapter's base model folder (default: the one it names)")
    p.add_argument("--out", help="also write generations.jsonl into this folder")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    return p


def _add_convert_parser(sub: Any) -> None:
    """``convert-llada SRC DST``, declared here so that ``--help`` imports neither torch nor
    transformers (the conversion, :func:`tiltmatch.models.llada.convert_llada`, does)."""
    from tiltmatch.models.dtypes import DTYPE_NAMES

    p = sub.add_parser(
        "convert-llada",
        help="convert a LLaDA checkpoint to a Llama-format (bidirectional) checkpoint",
        description="Write SRC (a LLaDA checkpoint) to DST in Llama format: sharded safetensors, "
        "config.json, the tokenizer files and tiltmatch.json with the special ids; no remote "
        "code is run.",
    )
    p.add_argument("src", help="LLaDA checkpoint folder (or hub id where a network exists)")
    p.add_argument("dst", help="output folder (must be empty or absent)")
    p.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bfloat16")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty DST (refused without it)"
    )
    p.set_defaults(func=cmd_convert_llada)


def cmd_convert_llada(args: argparse.Namespace) -> int:
    """Convert a LLaDA checkpoint (torch and transformers imported only now)."""
    from tiltmatch.models.dtypes import torch_dtype
    from tiltmatch.models.llada import convert_llada

    out = convert_llada(
        args.src,
        args.dst,
        dtype=torch_dtype(args.dtype),
        max_shard_size=args.max_shard_size,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tiltmatch`` command."""
    parser = argparse.ArgumentParser(
        prog="tiltmatch",
        description="Discrete Tilt Matching: reward fine-tuning of masked diffusion LMs.",
    )
    parser.add_argument("--version", action="version", version=f"tiltmatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="fine-tune the maze base model with DTM and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (report.md, report.json)")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
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
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="fine-tune a model with DTM or a baseline")
    p.add_argument("--out", required=True, help="run folder (checkpoint, logs, final model)")
    p.add_argument(
        "--task", help="task name, or module:Class / file.py:Class (same as --set task=NAME)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="FIELD",
        help="with --resume: a config field (or section, e.g. train) the resumed run may "
        "change on purpose (repeatable or comma-separated); any other change is refused",
    )
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.add_argument(
        "--dataset", help="prompt dataset: a .jsonl/.csv/.parquet file or a hub name (online)"
    )
    p.add_argument("--eval-dataset", help="held-out prompts (default: the first training ones)")
    p.add_argument(
        "--reward",
        action="append",
        default=[],
        metavar="FILE.py:FN",
        help="reward function f(prompts, completions, **columns) -> list[float] (repeatable)",
    )
    p.add_argument(
        "--reward-model",
        action="append",
        default=[],
        metavar="PATH",
        help="folder of a sequence-classification reward model (repeatable)",
    )
    p.add_argument(
        "--reward-weight",
        action="append",
        type=float,
        default=[],
        metavar="W",
        help="weight of each reward, in order: --reward ones first, then --reward-model ones",
    )
    p.add_argument("--model", help="model folder or shipped:NAME (same as --set model.base=...)")
    p.add_argument(
        "--alphabet",
        help="characters of a fresh character-level model ('auto': the prompts' characters)",
    )
    _add_config_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = _add_eval_parser(sub)
    p.set_defaults(func=cmd_eval)

    p = _add_generate_parser(sub)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "config",
        help="list the run config's fields (--list), or print a resolved config",
        description="--list: every field of a run config (the YAML/--set path), its default, "
        "its name as a Python-API argument (DTMArguments) and what it does. Without --list: "
        "the config that --config and --set resolve to, as YAML (what train would run).",
    )
    p.add_argument("--list", action="store_true", help="list every field")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    _add_convert_parser(sub)

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
    args = build_parser().parse_args(argv)  # --help and --version end here, without torch
    from tiltmatch.data import DatasetError
    from tiltmatch.tasks import UnknownTaskError
    from tiltmatch.tasks.base import RewardError
    from tiltmatch.training.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (
        ConfigError,
        CheckpointError,
        DatasetError,
        UnknownTaskError,
        RewardError,
        OSError,  # a missing file, a read-only folder, a full disk
        FloatingPointError,  # a diverging run, stopped before it wrote anything
        ValueError,
    ) as err:
        message = _describe_error(err)
        if args.command == "train" and getattr(args, "dataset", None):
            message = speak_names(message, DATASET_FLAGS)
        print(f"tiltmatch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # an optional dependency a setting needs
        print(
            f"tiltmatch {args.command}: error: {err}: an optional dependency; the extras are "
            "llm, quant, rlhf, trackers (pip install 'tiltmatch[llm]')",
            file=sys.stderr,
        )
        return 2


#: how ``train --dataset``'s errors name what its flags set (the run config's words -> flags)
DATASET_FLAGS = {
    "set model.base": "give --model FOLDER",
    "model.base": "--model",
    "the task's alphabet option": "--alphabet auto",
    "task_options.alphabet": "--alphabet",
    "task_options.train": "--dataset",
    "task_options.eval": "--eval-dataset",
    "task_options.rewards": "--reward",
    "reward_weights": "--reward-weight values",
}


def _describe_error(err: BaseException) -> str:
    """The message of a refused command: the error's own text, or the OS's with the file."""
    if isinstance(err, OSError) and err.strerror and type(err).__str__ is OSError.__str__:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror}{where}"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
