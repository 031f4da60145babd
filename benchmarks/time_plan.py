"""Time plan for the LLaDA recipes without a GPU: simulated FLOPs of a whole run, in hours.

Beside ``benchmarks/capacity_plan.py`` (memory), from the same simulation: LLaDA-8B's
architecture as fake tensors, the package's own code. For every recipe in
``configs/llada/*.yaml``:

- **a rollout** (one completion): the FLOPs of the package's ``generate`` at the recipe's
  sampler (steps, block, response length) in each fixed-step mode, ``exact``, ``cached
  prefix`` and ``cached dual`` (:data:`capacity_plan.SAMPLER_MODES`; the parallel modes take
  as many steps as their confidences decide, at most the block length per block: a trained
  model's count is measured by ``benchmarks/sampler_speed.py``, not simulated here);
- **an update**: the FLOPs of one optimiser update of the recipe's method at its
  micro-batch and accumulation (``capacity_plan.simulate_update``: forwards, backward,
  checkpointing recomputation);
- **the run**, per process, as the trainer schedules it (``training/trainer.py``): DTM
  stages of ``steps_per_h`` updates, ``ceil(a_end / h)`` of them (adaptive ``h``: at least
  ``ceil(a_end / h_max)``, a lower bound), each rebuilding the buffer
  (``buffer_prompts x num_generations`` rollouts) and refreshing ``refresh_prompts`` of it
  every ``refresh_every`` updates; the baselines' stages of ``num_iterations`` updates on a
  fresh batch, until ``total_stages`` or ``max_rollouts`` (counted over the 8 processes);
  held-out evaluation (``eval.examples x samples_per_example`` rollouts, shared by the
  processes) after every stage or at the end (``eval.every_stage``).

FLOPs become hours at a stated fraction (``--utilisation``, default 0.4) of the H100's bf16
dense peak (989 TFLOP/s), the same for the sampler and the updates (the sampler's cached
steps run small windows, typically at a lower utilisation than the updates: the measured
fraction of the dual cache's FLOP bound is ``benchmarks/sampler_speed.py cache``). "8
GPUs" is the published job (8 processes, each the recipe's per-process batches); "1 GPU"
does that job's whole work on one (the recipe's batches x 8: the same updates, the same
number of samples); "1 GPU, as written" runs the recipe file unchanged on one GPU (an eighth
of the samples). Not counted: the reward (under 0.01% of a run, measured), the start-of-run
reward calibration, checkpointing, data loading, communication.

    python benchmarks/time_plan.py --out runs/capacity/time_plan.json   # every recipe
    python benchmarks/time_plan.py --recipes countdown                  # one
    python benchmarks/time_plan.py --tiny --out /tmp/time.json          # the code path
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capacity_plan as plan
import yaml

from tiltmatch.config import RunConfig
from tiltmatch.tasks import get_task

DAY_HOURS = 24.0
PUBLISHED_GPUS = 8


def load_recipe(path: Path) -> RunConfig:
    """A recipe file as the run config it validates to."""
    return RunConfig.model_validate(yaml.safe_load(path.read_text()))


def schedule(config: RunConfig, world: int = PUBLISHED_GPUS) -> dict[str, Any]:
    """What one process does in the whole run: updates, rollouts, evaluations."""
    tc, ev, dc = config.train, config.eval, config.dtm
    group = tc.num_generations
    if config.method == "dtm":
        h = dc.h_max if dc.schedule == "adaptive" else dc.h
        stages = 1 if dc.schedule == "none" else math.ceil(dc.a_end / h - 1e-9)
        per_stage = dc.steps_per_h
        refreshes = (per_stage - 1) // tc.refresh_every if tc.refresh_prompts else 0
        rollouts_per_stage = tc.buffer_prompts * group + refreshes * tc.refresh_prompts * group
        bound = "at least" if dc.schedule == "adaptive" else "exactly"
    else:
        options = config.method_options
        per_stage = int(options.get("num_iterations", 1))
        rollouts_per_stage = tc.buffer_prompts * group
        if options.get("total_stages"):
            stages = int(options["total_stages"])
        elif options.get("max_rollouts"):
            stages = math.ceil(int(options["max_rollouts"]) / (world * rollouts_per_stage))
        else:
            raise ValueError(f"{config.method}: neither total_stages nor max_rollouts is set")
        bound = "exactly"
    evaluations = stages if ev.every_stage else 1
    return {
        "stages": stages,
        "stages_bound": bound,
        "updates": stages * per_stage,
        "rollouts": stages * rollouts_per_stage,
        "evaluations": evaluations,
        "evaluation_rollouts": evaluations * ev.examples * ev.samples_per_example,
    }


def update_case(config: RunConfig, prompt: int, response: int) -> plan.Case:
    """The capacity plan's update case of a recipe: its micro-batch and accumulation."""
    tc = config.train
    if tc.micro_batch == "completions":
        assert tc.per_device_train_batch_size is not None
        rows, group = tc.per_device_train_batch_size, 1
    else:
        rows, group = tc.prompts_per_batch * tc.num_generations, tc.num_generations
    ema = config.method == "dtm" and config.dtm.teacher_update == "ema"
    return plan.Case(
        config.method, config.method, "lora-bf16", rows, group,
        tc.gradient_accumulation_steps, True, ema, prompt, response,
    )  # fmt: skip


class Simulations:
    """The simulated FLOPs, each computed once (at 1 and 2 layers, extrapolated)."""

    def __init__(self, arch: dict[str, Any], lora_r: int, progress: Any) -> None:
        self.arch, self.lora_r, self.progress = arch, lora_r, progress
        self._cache: dict[Any, float] = {}

    def update(self, case: plan.Case) -> float:
        """FLOPs of one optimiser update of ``case``."""
        key = ("update", case)
        if key not in self._cache:
            flops = [
                plan.simulate_update(case, self.arch, n, self.lora_r, count_flops=True).flops_micro
                for n in (1, 2)
            ]
            micro = plan.extrapolate(flops[0], flops[1], self.arch["n_layers"])["total"]
            self._cache[key] = micro * case.accumulation
            self.progress(f"update {case.method} {case.rows} x {case.accumulation}: done")
        return self._cache[key]

    def rollout(self, prompt: int, response: int, block: int, steps: int, mode: str) -> float:
        """FLOPs of one completion by ``generate`` in ``mode`` (two rows, per row)."""
        key = ("rollout", prompt, response, block, steps, mode)
        if key not in self._cache:
            fields = plan.SAMPLER_MODES[mode]
            flops = [
                plan.simulate_sampler(
                    self.arch, n, 2, prompt, response, block, True, steps, fields
                )["flops_generate"]
                for n in (1, 2)
            ]
            self._cache[key] = (
                plan.extrapolate(flops[0], flops[1], self.arch["n_layers"])["total"] / 2
            )
            self.progress(f"rollout L={response} steps={steps} {mode}: done")
        return self._cache[key]


def recipe_plan(
    name: str, config: RunConfig, sims: Simulations, prompt: int, utilisation: float
) -> dict[str, Any]:
    """FLOPs and hours of one recipe in each sampler mode."""
    task = get_task(config.task, **config.task_options)
    response = task.response_length
    sampler = config.sampler
    evaluation = config.eval.sampler or sampler
    work = schedule(config)
    update = sims.update(update_case(config, prompt, response))
    rate = plan.H100_BF16_DENSE_FLOPS * utilisation
    modes = {}
    for mode in plan.SAMPLER_MODES:
        rollout = sims.rollout(prompt, response, sampler.block_length, sampler.steps, mode)
        eval_rollout = sims.rollout(
            prompt, response, evaluation.block_length, evaluation.steps, mode
        )
        per_process = {
            "rollouts": work["rollouts"] * rollout,
            "updates": work["updates"] * update,
        }
        # Evaluation is shared out over the processes: one job-wide amount.
        job_eval = work["evaluation_rollouts"] * eval_rollout
        job = PUBLISHED_GPUS * sum(per_process.values()) + job_eval
        hours_8 = job / (PUBLISHED_GPUS * rate) / 3600
        hours_1 = job / rate / 3600
        as_written = (sum(per_process.values()) + job_eval) / rate / 3600
        modes[mode] = {
            "tflop_per_rollout": rollout / 1e12,
            "tflop_per_evaluation": work["evaluation_rollouts"]
            / work["evaluations"]
            * eval_rollout
            / 1e12,
            "job_flops": job,
            "share": {
                "rollouts": PUBLISHED_GPUS * per_process["rollouts"] / job,
                "updates": PUBLISHED_GPUS * per_process["updates"] / job,
                "evaluation": job_eval / job,
            },
            "hours_8_gpus": hours_8,
            "hours_1_gpu": hours_1,
            "hours_1_gpu_as_written": as_written,
            "fits_24h_1_gpu": hours_1 <= DAY_HOURS,
            # the utilisation at which the whole job would take 24 hours on one GPU
            "utilisation_for_24h_1_gpu": job / (plan.H100_BF16_DENSE_FLOPS * DAY_HOURS * 3600),
        }
    return {
        "recipe": name,
        "method": config.method,
        "response_length": response,
        "sampler": {"steps": sampler.steps, "block_length": sampler.block_length},
        "schedule": work,
        "tflop_per_update": update / 1e12,
        "modes": modes,
    }


def countdown_memory(arch: dict[str, Any], prompt: int) -> dict[str, Any]:
    """The sampler's peak at the Countdown recipe's buffer rebuild (240 rows; one GPU doing
    the published job's work calls it in chunks of 256) in each mode, at full depth."""
    out = {}
    for mode, fields in plan.SAMPLER_MODES.items():
        sims = [
            plan.simulate_sampler(arch, n, 240, prompt, 256, 32, sampler=fields) for n in (1, 2)
        ]
        peak = plan.extrapolate(
            sims[0]["peak_step_bytes"], sims[1]["peak_step_bytes"], arch["n_layers"]
        )["total"]
        out[mode] = {"rows": 240, "peak_gib_bf16_base": peak / plan.GIB}
    return out


def markdown(record: dict[str, Any]) -> str:
    """The plan as Markdown tables, and the answer for the published Countdown run."""
    s = record["settings"]
    lines = [
        f"Time plan ({record['model']}): prompts of {s['prompt_length']} tokens; hours at "
        f"{s['utilisation']:.0%} of {plan.H100_BF16_DENSE_FLOPS / 1e12:.0f} TFLOP/s (H100 "
        "bf16 dense) for every FLOP; 8 GPUs = the published job; 1 GPU = the same job's work "
        "on one; as written = the recipe file unchanged on one GPU (an eighth of the samples).",
        "",
        "| recipe | stages (updates) | sampler mode | TFLOP / rollout | TFLOP / update "
        "| TFLOP / evaluation | rollouts / updates / eval share | hours on 8 | hours on 1 "
        "| as written, 1 GPU | utilisation for 24 h on 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in record["recipes"]:
        w = r["schedule"]
        for mode, m in r["modes"].items():
            sh = m["share"]
            bound = "" if w["stages_bound"] == "exactly" else ">= "
            lines.append(
                f"| {r['recipe']} | {bound}{w['stages']} ({bound}{w['updates']}) | {mode} "
                f"| {m['tflop_per_rollout']:.1f} | {r['tflop_per_update']:.0f} "
                f"| {m['tflop_per_evaluation']:.0f} "
                f"| {sh['rollouts']:.0%} / {sh['updates']:.0%} / {sh['evaluation']:.0%} "
                f"| {m['hours_8_gpus']:.1f} | {m['hours_1_gpu']:.1f} "
                f"| {m['hours_1_gpu_as_written']:.1f} | {m['utilisation_for_24h_1_gpu']:.0%} |"
            )
    answer = record.get("countdown_answer")
    if answer:
        lines += ["", answer]
    return "\n".join(lines)


def countdown_answer(record: dict[str, Any]) -> str | None:
    """Does the published Countdown run fit in 24 hours on one 80 GB GPU, and how?"""
    entry = next((r for r in record["recipes"] if r["recipe"] == "countdown"), None)
    if entry is None:
        return None
    memory = record.get("countdown_memory", {})
    parts = []
    for mode, m in entry["modes"].items():
        peak = memory.get(mode, {}).get("peak_gib_bf16_base")
        fits = "" if peak is None else f", sampler peak {peak:.0f} GiB at 240 rows (bf16 base)"
        parts.append(
            f"{mode}: {m['hours_1_gpu']:.0f} h on one GPU "
            f"({'fits' if m['fits_24h_1_gpu'] else 'does not fit'} 24 h; it would at "
            f"{m['utilisation_for_24h_1_gpu']:.0%} utilisation{fits})"
        )
    return (
        "Published Countdown run (17 stages x 1200 updates, 96 completions per update on each "
        "of 8 processes) on one 80 GB GPU at the stated utilisation: " + "; ".join(parts) + "."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="JSON record to write")
    parser.add_argument("--tiny", action="store_true", help="the toy model (the CPU test)")
    parser.add_argument("--utilisation", type=float, default=0.4, help="of the bf16 peak")
    parser.add_argument("--prompt-length", type=int, default=200)
    parser.add_argument("--recipes", nargs="*", default=None, help="recipe names (file stems)")
    parser.add_argument("--folder", type=Path, default=plan.RECIPES)
    parser.add_argument("--no-memory", action="store_true", help="skip Countdown's sampler peak")
    args = parser.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        parser.error(f"--utilisation must be in (0, 1], got {args.utilisation}")
    if args.prompt_length < 1:
        parser.error(f"--prompt-length must be at least 1, got {args.prompt_length}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = sorted(args.folder.glob("*.yaml"))
    if args.recipes is not None:
        known = {p.stem for p in paths}
        if unknown := sorted(set(args.recipes) - known):
            print(
                f"time_plan: unknown recipe(s) {unknown}; known: {sorted(known)}", file=sys.stderr
            )
            return 2
        paths = [p for p in paths if p.stem in args.recipes]
    arch = plan.TINY if args.tiny else plan.LLADA_8B
    lora_r = 4 if args.tiny else 128

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    started = time.perf_counter()
    sims = Simulations(arch, lora_r, progress)
    prompt = args.prompt_length if not args.tiny else 20
    record: dict[str, Any] = {
        "model": "toy" if args.tiny else "LLaDA-8B-Instruct architecture",
        "settings": {
            "prompt_length": prompt,
            "utilisation": args.utilisation,
            "h100_bf16_flops": plan.H100_BF16_DENSE_FLOPS,
            "published_gpus": PUBLISHED_GPUS,
        },
        "recipes": [
            recipe_plan(p.stem, load_recipe(p), sims, prompt, args.utilisation) for p in paths
        ],
    }
    if not args.no_memory and not args.tiny and any(p.stem == "countdown" for p in paths):
        record["countdown_memory"] = countdown_memory(arch, prompt)
    record["countdown_answer"] = countdown_answer(record)
    record["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    record["wall_seconds"] = time.perf_counter() - started
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
