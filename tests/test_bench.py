"""Smoke test of the side-by-side benchmark's machinery on a micro setting (not the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

from tiltmatch.experiments.ablation import SIZES as ABLATION_SIZES
from tiltmatch.experiments.bench import (
    METHODS,
    SIZES,
    TASKS,
    dtm_prompts_per_stage,
    main,
    rollouts_to_reach,
)

REQUIRED = ("task", "method", "seed", "rollouts", "heldout_accuracy", "curve")
SIZE_MICRO = ABLATION_SIZES["micro"]


def test_micro_benchmark_writes_every_task_and_method(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    assert main(["--size", "micro", "--out", str(out), "--bases", str(tmp_path), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert isinstance(results, list)
    assert {(r["task"], r["method"]) for r in results} == {(t, m) for t in TASKS for m in METHODS}
    # DTM, the three baselines of METHOD.md section 8 and the three it is published beside
    seven = {"dtm", "diffu-grpo", "wd1", "rejection", "spg", "espo", "coupled-grpo"}
    assert seven <= set(METHODS)
    assert all(r["updates"] >= 2 for r in results if r["method"] in seven)
    budget = SIZES["micro"].budget
    for r in results:
        for key in REQUIRED:
            assert key in r, key
        assert r["rollouts"] == budget  # the same rollout budget for every method
        assert 0.0 <= r["heldout_accuracy"] <= 1.0
        curve = r["curve"]
        assert curve[0]["rollouts"] == 0 and curve[-1]["rollouts"] == budget
        assert [p["rollouts"] for p in curve] == sorted(p["rollouts"] for p in curve)
        assert r["peak_rss_mb"] > 0 and r["seconds_per_rollout"] > 0
        if r["task"] == "maze":
            # Micro's untrained models never draw a valid path (no sample earns a reward), so
            # every sample is the one "<invalid>" outcome and the TV estimator must read
            # exactly 0: invalid responses are lumped into one key, not spread over rare
            # strings (experiments/maze_target.maze_outcome), which would read as a TV near 1.
            assert r["model_expected_reward"] == 0.0 and r["target_expected_reward"] == 0.0
            assert r["tv_to_target"] == r["tv_noise_floor"] == r["tv_to_path"] == 0.0
            # The per-prompt accuracies are the final evaluation's own draws.
            per_prompt = r["per_prompt_accuracy"]
            assert len(per_prompt) == SIZES["micro"].eval_examples
            assert sum(per_prompt) / len(per_prompt) == pytest.approx(r["heldout_accuracy"])
    assert (out / "accuracy_vs_rollouts.png").is_file()
    report = (out / "report.md").read_text()
    assert "Goal check" in report and "Paired differences" in report
    summary = json.loads((out / "summary.json").read_text())
    pairs = summary["tasks"]["maze"]["comparisons"]
    assert len(pairs) == len(METHODS) * (len(METHODS) - 1) // 2
    # Rerunning reuses the cached runs; a run whose cache key no longer matches reruns.
    cached = sorted((out / "runs").rglob("result.json"))
    before = {path: path.stat().st_mtime_ns for path in cached}
    stale = cached[0]
    record = json.loads(stale.read_text())
    key = record["cache_key"]
    stale.write_text(json.dumps({**record, "cache_key": "from an older config"}))
    before[stale] = stale.stat().st_mtime_ns
    assert main(["--size", "micro", "--out", str(out), "--bases", str(tmp_path), "--quiet"]) == 0
    after = {path: path.stat().st_mtime_ns for path in cached}
    assert [p for p in cached if after[p] != before[p]] == [stale]
    assert json.loads(stale.read_text())["cache_key"] == key


def test_dtm_buffer_matches_the_budget() -> None:
    for name in ("quick", "default"):
        size = SIZES[name]
        assert dtm_prompts_per_stage(size) * size.dtm_stages * size.num_generations == size.budget


def test_rollouts_to_reach_interpolates() -> None:
    curve = [{"x": 0.0, "mean": 0.2}, {"x": 100.0, "mean": 0.4}, {"x": 200.0, "mean": 0.8}]
    assert rollouts_to_reach(curve, 0.6) == 150.0
    assert rollouts_to_reach(curve, 0.1) == 0.0
    assert rollouts_to_reach(curve, 0.9) is None


def test_micro_maze_ablation_runs(tmp_path: Path) -> None:
    from tiltmatch.experiments.ablation import SIZES as ABLATION_SIZES
    from tiltmatch.experiments.ablation import main as ablation_main

    out = tmp_path / "ablation"
    argv = ["--size", "micro", "--out", str(out), "--schedules", "fixed", "adaptive", "--quiet"]
    assert ablation_main([*argv, "--c", "1", "--states", "random", "trajectory"]) == 0
    records = json.loads((out / "ablation.json").read_text())
    assert {r["variant"] for r in records} == {
        f"{schedule}/c1/{states}"
        for schedule in ("fixed", "adaptive")
        for states in ("random", "trajectory")
    }
    for r in records:
        assert r["history"] and "grad_norm_var" in r["history"][0]
        # TVs are distances between distributions, in [0, 1]. Micro's base is the shipped
        # maze base, whose two independent samples differ: a zero floor would mean the probe
        # compared one sample with itself.
        assert 0.0 <= r["tv_to_target"] <= 1.0 and 0.0 < r["tv_noise_floor"] <= 1.0
        # The floor depends on the base samples and beta only: the last stage's probe (at
        # a_end) and the final one, on other model samples, read the same floor.
        assert r["a_reached"] == ABLATION_SIZES["micro"].a_end
        assert r["history"][-1]["tv_noise_floor"] == r["tv_noise_floor"]
        # the base finds shortest paths; no maze yields more distinct ones than its samples
        samples = ABLATION_SIZES["micro"].target_samples
        assert 0 < r["distinct_optimal_paths_base"] <= samples
        assert 0 <= r["distinct_optimal_paths"] <= samples
        # The ruler: the training mazes, probed after every stage; they are the pool.
        assert r["train_mazes"] == SIZE_MICRO.train_mazes
        assert all(0.0 <= h["train_tv_to_target"] <= 1.0 for h in r["history"])
        assert r["history"][-1]["train_rollouts_on_mazes"] == r["rollouts"]
    assert (out / "ablation.png").stat().st_size > 1000
    # A cached run of an older protocol reruns from an empty folder: its stage log holds
    # the new run's stages only, nothing of the old run.
    (stale,) = (out / "runs").rglob("fixed/c1/random/seed0/result.json")
    record = json.loads(stale.read_text())
    stale.write_text(json.dumps({**record, "overrides": ["an older protocol"]}))
    (stale.parent / "left-over").write_text("old")
    assert ablation_main([*argv[:-3], "fixed", "--quiet", "--c", "1", "--states", "random"]) == 0
    assert not (stale.parent / "left-over").exists()
    rerun = json.loads(stale.read_text())
    assert rerun["overrides"] == record["overrides"]
    stages = (stale.parent / "stages.jsonl").read_text().splitlines()
    assert len(stages) == len(rerun["history"])


def test_micro_ablation_baselines_share_the_mazes_and_the_budget(tmp_path: Path) -> None:
    from tiltmatch.experiments.ablation import fixed_budget
    from tiltmatch.experiments.ablation import main as ablation_main

    out = tmp_path / "ablation"
    argv = ["--size", "micro", "--out", str(out), "--schedules", "fixed", "--c", "1"]
    argv += ["--states", "random", "--baselines", "rejection", "--quiet"]
    assert ablation_main(argv) == 0
    records = {r["variant"]: r for r in json.loads((out / "ablation.json").read_text())}
    dtm, rejection = records["fixed/c1/random"], records["baseline/rejection"]
    assert dtm["rollouts"] == rejection["rollouts"] == fixed_budget(SIZE_MICRO)
    # Probed at the first stage end at or past each of fixed-h DTM's stage boundaries (in
    # rollouts; a baseline's stage is one batch of prompts x G), against p_{a_end}.
    probed = [h["rollouts"] for h in rejection["history"] if h["train_tv_to_target"] is not None]
    batch = SIZE_MICRO.prompts_per_batch * SIZE_MICRO.num_generations
    boundaries = [h["rollouts"] for h in dtm["history"]]
    assert len(probed) == len(boundaries)
    assert all(b <= p < b + batch for p, b in zip(probed, boundaries, strict=True))
    assert rejection["train_target_expected_reward"] == pytest.approx(
        dtm["train_target_expected_reward"]
    )
    text = (out / "ablation.md").read_text()
    assert "At matched expected reward" in text and "baseline/rejection" in text


def test_cli_passes_bench_options_through() -> None:
    from tiltmatch.cli import build_parser

    args = build_parser().parse_args(["bench", "--quick", "--out", "x", "--seeds", "2"])
    assert args.rest == ["--quick", "--out", "x", "--seeds", "2"]


def test_diagnostic_overrides_change_the_runs(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = ["--size", "micro", "--out", str(out), "--bases", str(tmp_path), "--quiet"]
    argv += ["--tasks", "countdown", "--methods", "dtm", "--remasking", "random"]
    assert main([*argv, "--budget", "32", "--learning-rates", "1e-3"]) == 0
    (record,) = json.loads((out / "results.json").read_text())
    assert record["rollouts"] == 32 and record["learning_rate"] == 1e-3
    assert record["config"]["sampler"]["remasking"] == "random"
    assert (out / "runs" / "micro-budget32").is_dir()  # cached apart from the size's own runs
    with pytest.raises(ValueError, match="budget 30"):
        main([*argv, "--budget", "30"])


def test_rollout_sampler_changes_the_rollouts_not_the_evaluation(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = ["--size", "micro", "--out", str(out), "--bases", str(tmp_path), "--quiet"]
    argv += ["--tasks", "sudoku", "--methods", "dtm", "--learning-rates", "1e-3"]
    assert main([*argv, "--rollout-sampler", "parallel"]) == 0
    (record,) = json.loads((out / "results.json").read_text())
    sampler, evaluation = record["config"]["sampler"], record["config"]["eval"]["sampler"]
    assert sampler["mode"] == "parallel" and evaluation["mode"] == "exact"
    assert {**sampler, "mode": "exact"} == evaluation  # only the mode differs
    # The maze's random-order sampler cannot decode in parallel: one line, exit 2.
    maze = [*argv[:6], "--tasks", "maze", "--rollout-sampler", "parallel"]
    assert main(maze) == 2


def test_fast_rollouts_comparison_reads_every_mode_with_the_exact_sampler(tmp_path: Path) -> None:
    module = load_benchmark("fast_rollouts", "tiltmatch_fast_rollouts_in_test")
    out = tmp_path / "fast"
    argv = ["--size", "micro", "--seeds", "2", "--modes", "parallel", "--out", str(out)]
    assert module.main(argv) == 0
    rows = json.loads((out / "fast_rollouts.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["exact", "parallel"]
    assert [r["sampler"]["mode"] for r in rows] == ["exact", "parallel"]
    for mode in ("exact", "parallel"):
        for record in json.loads((out / mode / "results.json").read_text()):
            evaluation = record["config"]["eval"]["sampler"]  # none: the rollouts' (exact)
            assert (evaluation or record["config"]["sampler"])["mode"] == "exact"
    exact = rows[0]
    assert exact["accuracy_minus_exact"].startswith("+0.0000")
    # the exact run reaches its own final accuracy within its own training time
    assert all(0.0 <= f <= 1.0 for f in exact["time_to_match_exact"])
    assert "| parallel |" in (out / "fast_rollouts.md").read_text()


def test_ablation_paired_comparisons_claim_only_what_the_seeds_separate() -> None:
    from tiltmatch.experiments.ablation import paired_comparisons, paired_table

    def record(schedule: str, c: float, seed: int, tv: float, reward: float) -> dict:
        return {
            "method": "dtm",
            "variant": f"{schedule}/c{c:g}/random",
            "schedule": schedule,
            "c": c,
            "states": "random",
            "seed": seed,
            "train_tv_ratio": tv,
            "train_expected_reward": reward,
            "final_reward": reward,
            "grad_norm_var_mean": 10.0 ** (8 if schedule == "none" else 3),
        }

    records = []
    for seed in range(3):
        # c = 1 is better by 0.1 in reward on every seed (consistent): separated. Its TV
        # differs by +-0.2 around 0 from seed to seed: not separated.
        records.append(record("fixed", 1.0, seed, 1.5 + 0.2 * (-1) ** seed, 0.9 + 0.01 * seed))
        records.append(record("fixed", 0.0, seed, 1.5, 0.8 + 0.01 * seed))
        records.append(record("none", 1.0, seed, 1.6, 0.85 + 0.01 * seed))
    records.append(record("adaptive", 1.0, 0, 1.5, 0.9))  # one seed only: no row
    for seed in range(3):  # a baseline: one update per batch, so no gradient-norm variance
        baseline = record("fixed", 1.0, seed, 1.9, 0.7)
        baseline.update(method="rejection", variant="baseline/rejection", grad_norm_var_mean=0)
        records.append(baseline)
    rows = {(r["a"], r["b"]): r for r in paired_comparisons(records)}
    cv = rows[("fixed/c1/random", "fixed/c0/random")]
    assert cv["seeds"] == 3
    assert cv["train_expected_reward"]["mean"] == pytest.approx(0.1)
    assert cv["train_expected_reward"]["a_better"] == ">"
    assert cv["train_tv_ratio"]["a_better"] == "~"
    annealing = rows[("fixed/c1/random", "none/c1/random")]
    # five orders of magnitude less gradient-norm variance: lower is better, so A is
    assert annealing["grad_norm_var_mean"]["mean"] == pytest.approx(-5.0)
    assert annealing["grad_norm_var_mean"]["a_better"] == ">"
    assert not any("adaptive" in a for a, _ in rows)
    versus = rows[("fixed/c1/random", "baseline/rejection")]
    assert versus["train_expected_reward"]["mean"] == pytest.approx(0.21)
    assert "grad_norm_var_mean" not in versus  # not compared: the baseline has none
    text = paired_table(list(rows.values()))
    assert "A better" in text and "not separated" in text


def test_more_seeds_rerun_only_the_new_seeds(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = ["--size", "micro", "--out", str(out), "--bases", str(tmp_path), "--quiet"]
    argv += ["--tasks", "countdown", "--methods", "dtm", "--learning-rates", "1e-3"]
    assert main([*argv, "--seeds", "1"]) == 0
    (first,) = sorted((out / "runs").rglob("result.json"))
    before = first.stat().st_mtime_ns
    assert main([*argv, "--seeds", "2"]) == 0
    results = sorted((out / "runs").rglob("result.json"))
    assert [p.parent.name for p in results] == ["seed0", "seed1"]
    assert first.stat().st_mtime_ns == before  # seed 0 was reused, not rerun
    assert [r["seed"] for r in json.loads((out / "results.json").read_text())] == [0, 1]
