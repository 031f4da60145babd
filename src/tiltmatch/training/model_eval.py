"""``tiltmatch eval``: the published evaluation protocol, on one task or the whole suite.

A model that records the task it was trained on (``tiltmatch train``'s ``final/``, the API's
``save_model()``, the shipped bases: :mod:`tiltmatch.generation.record`) is evaluated on that
task with its own options and sampler unless a flag says otherwise. Otherwise the defaults
are the published protocol (d1 lineage, which DTM follows; see the shared data README):
semi-autoregressive blocks of 32 tokens, ``gen_length / 2`` sampler steps (two tokens per
step), low-confidence remasking, temperature 0, and the published test sets (Sudoku
``test_split_new``, the shared Countdown file, GSM8K's and MATH-500's test splits). The
device is the accelerator when one is visible. ``--suite published`` evaluates a model on all four
tasks at 128 / 256 / 512 tokens and writes the tasks x lengths table (markdown and
JSON) in the layout of the published one.

Every argument is checked before the model is loaded; a bad one is one line naming
it (the CLI exits 2), never a silent replacement by a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from tiltmatch.destination import Destination
from tiltmatch.generation.pretrained import default_device
from tiltmatch.generation.record import PUBLISHED_SAMPLER, GenerationRecord, read_record
from tiltmatch.model_checks import check_finite_weights, check_model_meta
from tiltmatch.models.codecs import PromptCodec
from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.folders import folder_family
from tiltmatch.models.loading import load_model_folder, resolve_model_path
from tiltmatch.preflight import (
    Heartbeat,
    ModelShape,
    cache_need,
    forward_need,
    keeps_a_cache,
    model_need,
    noise_need,
    refuse_over,
    rows_need,
)
from tiltmatch.sampling.registry import SamplerRefused, strategy_for
from tiltmatch.sampling.sampler import SamplingConfig, generate
from tiltmatch.settings import ConfigError, parse_task_options
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example, Task
from tiltmatch.training.config import speak_names

#: The published protocol (METHOD.md section 6; shared/data/README.md).
PUBLISHED_BLOCK_LENGTH = 32
PUBLISHED_LENGTHS = (128, 256, 512)
#: Each task of the published table: its test split, task options, and headline metric.
PUBLISHED_TASKS: dict[str, tuple[str, dict[str, Any], str]] = {
    "sudoku": ("test_split_new", {"format": "chat"}, "cell_accuracy"),
    "countdown": ("published", {"format": "chat"}, "accuracy"),
    "gsm8k": ("test", {}, "accuracy"),
    "math500": ("test", {}, "accuracy"),
}
#: The published figures of DTM on LLaDA-8B-Instruct (METHOD.md section 6), in %.
PUBLISHED_DTM: dict[str, dict[int | str, float]] = {
    "sudoku": {256: 99.2, 512: 99.4},
    "countdown": {256: 81.3, 512: 78.9},
    "gsm8k": {"best": 83.2},
    "math500": {"best": 40.2},
}
SUITES = ("published",)


class EvalArgumentError(ValueError):
    """An ``eval`` argument that cannot be used (the message names it)."""


@dataclass(frozen=True)
class Protocol:
    """How responses are generated: the response length and the whole sampler."""

    gen_length: int
    sampler: SamplingConfig

    @property
    def block_length(self) -> int:
        return self.sampler.block_length

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @property
    def remasking(self) -> str:
        return self.sampler.remasking

    @property
    def temperature(self) -> float:
        return self.sampler.temperature

    @property
    def mode(self) -> str:
        return self.sampler.mode

    def sampling(self) -> SamplingConfig:
        """The sampler settings."""
        return self.sampler


#: how eval's errors name the sampler's settings (record and sampler names -> flags)
EVAL_FLAGS = {
    "max_new_tokens": "--gen-length",
    "block_length": "--block-length",
    "steps": "--steps",
    "mode=": "--sampler=",
}


def sampler_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler settings given on the command line (the others come from the model's
    record or the published protocol)."""
    given = {
        "block_length": args.block_length,
        "steps": args.steps,
        "remasking": args.remasking,
        "temperature": args.temperature,
        "mode": getattr(args, "sampler", None),
    }
    return {k: v for k, v in given.items() if v is not None}


def _positive(args: argparse.Namespace, name: str, flag: str) -> None:
    value = getattr(args, name, None)
    if value is not None and value < 1:
        raise EvalArgumentError(f"{flag} must be at least 1, got {value}")


def check_args(args: argparse.Namespace) -> None:
    """Refuse unusable arguments with one line naming the flag (before any loading)."""
    if args.suite is None and args.task is None:
        raise EvalArgumentError("give --task NAME, or --suite published for the whole table")
    if args.suite is not None and args.task is not None:
        raise EvalArgumentError("--task and --suite exclude each other")
    temperature = args.temperature
    if temperature is not None and (not math.isfinite(temperature) or temperature < 0):
        raise EvalArgumentError(f"--temperature must be a finite number >= 0, got {temperature}")
    for name, flag in (
        ("samples", "--samples"),
        ("gen_length", "--gen-length"),
        ("steps", "--steps"),
        ("block_length", "--block-length"),
        ("batch_size", "--batch-size"),
        ("limit", "--limit"),
    ):
        _positive(args, name, flag)
    if args.suite is not None and args.gen_length is not None:
        raise EvalArgumentError("--gen-length is for one task; with --suite use --lengths")
    for length in args.lengths or ():
        if length < 1:
            raise EvalArgumentError(f"--lengths must hold positive lengths, got {length}")
    # The sampler's own checks (a mode that needs low_confidence remasking, ...), before loading.
    _flag_sampling(GenerationRecord(), 1, {**sampler_flags(args), "block_length": 1, "steps": 1})
    if args.device is not None:
        check_device(args.device)


def eval_device(args: argparse.Namespace) -> torch.device:
    """``--device``, else the accelerator when one is visible (CUDA, MPS), else the CPU."""
    return check_device(args.device) if args.device is not None else default_device()


def check_device(name: str) -> torch.device:
    """``name`` as a device this PyTorch build and machine can use."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EvalArgumentError(f"--device {name!r} is not a device name") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise EvalArgumentError(
                f"--device {name}: this PyTorch build has no CUDA support (use --device cpu)"
            )
        if not torch.cuda.is_available():
            raise EvalArgumentError(f"--device {name}: no CUDA device is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EvalArgumentError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise EvalArgumentError(f"--device {name}: MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise EvalArgumentError(f"--device {name}: unsupported device type {device.type!r}")
    return device


def response_length(task: Task, gen_length: int | None) -> int:
    """``--gen-length``, else the task's own response length; at least one token."""
    length = gen_length if gen_length is not None else task.response_length
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise EvalArgumentError(
            f"task {task.name}: the response length must be at least 1 token, got {length!r} "
            "(its response_length option, or --gen-length)"
        )
    return length


def _flag_sampling(
    record: GenerationRecord, length: int, settings: dict[str, Any]
) -> SamplingConfig:
    """``record.sampling`` with its refusals in eval's flags (one line)."""
    try:
        return record.sampling(length, settings)
    except ConfigError as err:
        raise EvalArgumentError(speak_names(str(err), EVAL_FLAGS)) from None


def resolve_protocol(
    args: argparse.Namespace,
    task: Task,
    gen_length: int | None,
    max_positions: int | None,
    record: GenerationRecord | None = None,
) -> Protocol:
    """The protocol for ``task``: the flags given, else the model's recorded sampler (a
    ``record`` of this task), else the published protocol (blocks of 32, ``gen_length / 2``
    steps, low-confidence remasking, temperature 0); an unset block length and step count
    are derived from the length (:mod:`tiltmatch.generation.geometry`)."""
    length = response_length(task, gen_length)
    if max_positions is not None and length > max_positions:
        raise EvalArgumentError(
            f"--gen-length {length} exceeds the model's {max_positions} positions"
        )
    own = record if record is not None and record.task == task.name else GenerationRecord()
    return Protocol(length, _flag_sampling(own, length, sampler_flags(args)))


def _max_positions(model: Any) -> int | None:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def generate_responses(
    denoiser: MaskedDenoiser,
    codec: PromptCodec,
    examples: Sequence[Example],
    samples: int,
    protocol: Protocol,
    batch_size: int,
    seed: int,
    device: torch.device,
    desc: str,
) -> tuple[list[tuple[Example, int]], list[str]]:
    """``samples`` responses to each example, batched, with a progress bar."""
    rows = [(e, k) for e in examples for k in range(samples)]
    generator = torch.Generator(device=device).manual_seed(seed)
    forbidden = sorted({codec.pad_token_id} - {codec.eos_token_id})
    sampling = protocol.sampling()
    responses: list[str] = []
    for lo in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        chunk = rows[lo : lo + batch_size]
        prompts = [codec.encode_prompt(e.prompt) for e, _ in chunk]
        out = generate(
            denoiser,
            prompts,
            protocol.gen_length,
            sampling,
            generator,
            forbidden_token_ids=forbidden,
        )
        responses += [codec.decode_response(r.tolist()) for r in out.responses.cpu()]
    return rows, responses


def _warn_long_prompts(
    codec: PromptCodec, examples: Sequence[Example], length: int, max_positions: int | None
) -> None:
    if max_positions is None or not examples:
        return
    longest = max(len(codec.encode_prompt(e.prompt)) for e in examples)
    if longest + length > max_positions:
        print(
            f"tiltmatch eval: warning: prompts of up to {longest} tokens + {length} response "
            f"tokens exceed the model's {max_positions} positions",
            file=sys.stderr,
        )


def _write_outputs(
    out_dir: Path,
    task: Task,
    rows: list[tuple[Example, int]],
    responses: list[str],
    metrics: dict[str, Any],
) -> None:
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


def _destination(args: argparse.Namespace, model_path: Path) -> Destination | None:
    """Where ``--out`` puts the results: checked now, written in one piece at the end."""
    if args.out is None:
        return None
    sources = [model_path]
    for value in [args.split, *parse_task_options(args.task_option).values()]:
        if isinstance(value, str) and Path(value).expanduser().exists():
            sources.append(Path(value))
    destination = Destination(
        args.out, what="evaluation", overwrite=args.overwrite, sources=sources, staged=True
    )
    destination.check()
    return destination


def check_sampler_decodes(path: Path, args: argparse.Namespace) -> None:
    """Refuse, before any weight is loaded, a ``--sampler`` the model's family cannot honour
    (one line naming both: :func:`tiltmatch.sampling.registry.strategy_for`)."""
    try:
        family = folder_family(path)
    except (OSError, ValueError):
        return  # loading the folder says what is wrong with it
    flags = {**sampler_flags(args), "block_length": 1, "steps": 1}
    sampling = _flag_sampling(GenerationRecord(), 1, flags)
    try:
        strategy_for(family, sampling, "--sampler", "--")
    except SamplerRefused as err:
        raise EvalArgumentError(str(err)) from None


def _load(args: argparse.Namespace, task: Task | None) -> tuple[MaskedDenoiser, PromptCodec, Path]:
    path = resolve_model_path(args.model)
    check_sampler_decodes(path, args)
    check_model_meta(path)
    device = eval_device(args)
    shape = _folder_shape(path)
    if shape is not None:  # float32 weights (load_model_folder's dtype), before loading
        refuse_over([model_need(shape, f"--model {args.model}", 4.0, 1.0)], device)
    with Heartbeat("loading the model"):
        model, codec = load_model_folder(path, task)
    check_finite_weights(model, f"the model in {path}")
    model.to(device)  # type: ignore[arg-type]
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    return denoiser, codec, path


def _folder_shape(path: Path) -> ModelShape | None:
    try:
        return ModelShape.from_config(json.loads((path / "config.json").read_text("utf-8")))
    except (OSError, ValueError):
        return None  # the loader names the file and the cause


def preflight_eval(
    args: argparse.Namespace,
    denoiser: MaskedDenoiser,
    codec: PromptCodec,
    examples: Sequence[Example],
    protocol: Protocol,
) -> None:
    """Refuse ``--samples`` / ``--batch-size`` (with the prompts' and responses' lengths)
    whose memory exceeds the device's, before the first forward."""
    rows = len(examples) * args.samples
    batch = min(args.batch_size, rows)
    tokens = max(len(codec.encode_prompt(e.prompt)) for e in examples) + protocol.gen_length
    shape = ModelShape.from_config(denoiser.model.config)
    first = next(iter(denoiser.parameters()))
    width = float(first.element_size())
    batch_knob = f"--batch-size {args.batch_size}"
    needs = [
        model_need(shape, f"--model {args.model}", width, 1.0),
        forward_need(
            "one sampling forward",
            batch_knob,
            batch,
            tokens,
            batch * protocol.block_length,
            shape,
            width,
        ),
        rows_need(
            "the responses", f"--samples {args.samples} x {len(examples)} examples", rows, tokens
        ),
    ]
    sampler = protocol.sampling()
    if first.device.type != "cpu" and sampler.noise == "compatible" and sampler.temperature > 0:
        noise = noise_need(batch_knob, batch, protocol.gen_length, shape.vocab)
        needs.append(dataclasses.replace(noise, fix="lower --batch-size"))
    if keeps_a_cache(sampler):
        cache = cache_need(
            f"{batch_knob} with --sampler {sampler.mode}", batch, tokens, shape, width
        )
        needs.append(dataclasses.replace(cache, fix="lower --batch-size"))
    refuse_over(
        needs,
        first.device,
    )


def _examples(args: argparse.Namespace, task: Task, split: str) -> list[Example]:
    """The examples evaluated; none at all is an error naming the split (a headerless CSV,
    an empty file), never a metric over nothing."""
    with Heartbeat(f"reading {task.name} {split}"):
        examples = task.examples(split, args.limit, args.seed)
    if not examples:
        raise EvalArgumentError(
            f"task {task.name}: split {split!r} has no examples to evaluate (an empty file, "
            "or a CSV without its header row?)"
        )
    return examples


def _evaluate(
    args: argparse.Namespace,
    task: Task,
    split: str,
    examples: list[Example],
    denoiser: MaskedDenoiser,
    codec: PromptCodec,
    protocol: Protocol,
    model_path: Path,
) -> tuple[dict[str, Any], list[tuple[Example, int]], list[str]]:
    """Metrics, rows and responses of one task at one protocol."""
    device = eval_device(args)
    _warn_long_prompts(codec, examples, protocol.gen_length, _max_positions(denoiser.model))
    preflight_eval(args, denoiser, codec, examples, protocol)
    started = time.time()
    with torch.no_grad():
        rows, responses = generate_responses(
            denoiser,
            codec,
            examples,
            args.samples,
            protocol,
            args.batch_size,
            args.seed,
            device,
            f"eval {task.name} @{protocol.gen_length}",
        )
    metrics: dict[str, Any] = dict(task.metrics(responses, [e for e, _ in rows]))
    metrics.update(
        {
            "task": task.name,
            "split": split,
            "model": str(model_path),
            "examples": len(examples),
            "samples_per_example": args.samples,
            "gen_length": protocol.gen_length,
            "block_length": protocol.block_length,
            "steps": protocol.steps,
            "remasking": protocol.remasking,
            "sampler": protocol.mode,
            "temperature": protocol.temperature,
            "seconds": time.time() - started,
        }
    )
    return metrics, rows, responses


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate ``args.model`` on ``args.task``; write ``outputs.jsonl`` and ``metrics.json``."""
    check_args(args)
    if args.suite is not None:
        return run_suite(args)
    record = read_record(resolve_model_path(args.model))
    options = task_options(args, record)
    task = get_task(args.task, **options)
    split = args.split or default_split(task.name, options)
    response_length(task, args.gen_length)  # before any file is read
    resolve_protocol(args, task, args.gen_length, None, record)  # every flag, before loading
    destination = _destination(args, resolve_model_path(args.model))
    examples = _examples(args, task, split)
    denoiser, codec, path = _load(args, task)
    max_positions = _max_positions(denoiser.model)
    protocol = resolve_protocol(args, task, args.gen_length, max_positions, record)
    metrics, rows, responses = _evaluate(
        args, task, split, examples, denoiser, codec, protocol, path
    )
    metrics["task_options"] = options
    if destination is not None:
        with destination as folder:
            _write_outputs(folder, task, rows, responses, metrics)
    return metrics


def task_options(args: argparse.Namespace, record: GenerationRecord) -> dict[str, Any]:
    """The ``--task-option`` values over the model's recorded options for the same task
    (the shipped countdown base's ``format: char``, ``max_number: 9``, ...), so that a
    model is evaluated on the task it was trained on unless told otherwise. A dataset task's
    recorded options name its training files and rewards: they are not reused."""
    given = parse_task_options(args.task_option)
    if record.task != args.task or record.task == "dataset":
        return given
    return {**record.task_options, **given}


def default_split(name: str, options: dict[str, Any]) -> str:
    """The published test set where the task's options are the published ones (the chat
    format), else the task's own held-out split ``test``."""
    published = PUBLISHED_TASKS.get(name)
    if published is None:
        return "test"
    split, wanted, _ = published
    return split if all(options.get(k, v) == v for k, v in wanted.items()) else "test"


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    """All four published tasks at each length; the tasks x lengths table as JSON and markdown."""
    if args.suite not in SUITES:
        raise EvalArgumentError(f"--suite must be one of {SUITES}, got {args.suite!r}")
    if args.split is not None or args.task_option:
        raise EvalArgumentError("--split and --task-option are for one task, not --suite")
    lengths = tuple(args.lengths or PUBLISHED_LENGTHS)
    names = tuple(args.tasks or PUBLISHED_TASKS)
    unknown = [n for n in names if n not in PUBLISHED_TASKS]
    if unknown:
        raise EvalArgumentError(
            f"--tasks: {', '.join(unknown)} not in the published suite "
            f"({', '.join(PUBLISHED_TASKS)})"
        )
    if args.out is None:
        raise EvalArgumentError("--suite needs --out (a folder for the table and the outputs)")
    destination = _destination(args, resolve_model_path(args.model))
    assert destination is not None
    denoiser, codec, path = _load(args, None)
    max_positions = _max_positions(denoiser.model)
    # Every cell's protocol is checked before the first generation (no failure an hour in).
    plan = []
    for name in names:
        split, options, metric = PUBLISHED_TASKS[name]
        for length in lengths:
            task = get_task(name, **options, response_length=length)
            plan.append((name, length, task, split, metric))
            resolve_protocol(args, task, length, max_positions)
    cells: dict[str, dict[str, Any]] = {}
    with destination as out:
        for name, length, task, split, metric in plan:
            protocol = resolve_protocol(args, task, length, max_positions)
            examples = _examples(args, task, split)
            metrics, rows, responses = _evaluate(
                args, task, split, examples, denoiser, codec, protocol, path
            )
            _write_outputs(out / f"{name}-{length}", task, rows, responses, metrics)
            cells.setdefault(name, {})[str(length)] = {"metric": metric, **metrics}
        table = _suite_table(args, path, lengths, names, cells)
        markdown = suite_markdown(table)
        (out / "suite.json").write_text(json.dumps(table, indent=2))
        (out / "suite.md").write_text(markdown)
    table["markdown"] = markdown
    return table


def _suite_table(
    args: argparse.Namespace,
    path: Path,
    lengths: Sequence[int],
    names: Sequence[str],
    cells: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "suite": args.suite,
        "model": str(path),
        "lengths": list(lengths),
        "tasks": list(names),
        "protocol": {
            "block_length": args.block_length or PUBLISHED_BLOCK_LENGTH,
            "steps": "gen_length / 2" if args.steps is None else args.steps,
            "remasking": args.remasking or PUBLISHED_SAMPLER["remasking"],
            "temperature": (
                args.temperature
                if args.temperature is not None
                else PUBLISHED_SAMPLER["temperature"]
            ),
            "samples_per_example": args.samples,
            "limit": args.limit,
        },
        "accuracy_percent": {
            name: {k: 100.0 * float(v[v["metric"]]) for k, v in by_length.items()}
            for name, by_length in cells.items()
        },
        "cells": cells,
        "published_dtm_percent": {
            name: {str(k): v for k, v in PUBLISHED_DTM[name].items()} for name in names
        },
    }


def suite_markdown(table: dict[str, Any]) -> str:
    """The tasks x lengths table (accuracy %, the published DTM figure beside each row)."""
    lengths = [str(n) for n in table["lengths"]]
    head = "| task (metric) | " + " | ".join(lengths) + " | published DTM (LLaDA-8B) |"
    rule = "| --- | " + " | ".join("---:" for _ in lengths) + " | --- |"
    lines = [head, rule]
    for name in table["tasks"]:
        cells = table["cells"][name]
        metric = next(iter(cells.values()))["metric"]
        values = [f"{table['accuracy_percent'][name][n]:.1f}" for n in lengths]
        published = ", ".join(
            f"{v} ({k})" if k == "best" else f"{v} @{k}"
            for k, v in table["published_dtm_percent"][name].items()
        )
        lines.append(f"| {name} ({metric}) | " + " | ".join(values) + f" | {published} |")
    p = table["protocol"]
    examples = {next(iter(c.values()))["examples"] for c in table["cells"].values()}
    lines.append("")
    lines.append(
        f"Model {table['model']}; block {p['block_length']}, steps {p['steps']}, "
        f"{p['remasking']} remasking, temperature {p['temperature']}, "
        f"{p['samples_per_example']} sample(s) per example, examples per task: "
        f"{', '.join(str(n) for n in sorted(examples))}"
        + (" (limited by --limit)" if p["limit"] else " (the whole test sets)")
        + "."
    )
    return "\n".join(lines) + "\n"
