"""The capacity plan's code path (benchmarks/capacity_plan.py) on a toy config, on the CPU.

What is checked is what the 8B figures rest on: the memory model counts storages
once and frees them, rounds as the CUDA allocator does, and sees no ``[B, H, T, T]``
score tensor in attention; the FLOP count of a forward equals the hand count of its
matrix products; the 1/2-layer extrapolation predicts a deeper model's peak; and the
script runs end to end, writing its JSON record and table.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import load_benchmark
from torch._subclasses.fake_tensor import FakeTensorMode

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def plan() -> ModuleType:
    return load_benchmark("capacity_plan", "tiltmatch_capacity_plan")


def test_allocator_rounding(plan: ModuleType) -> None:
    assert plan.allocator_block(1) == 512
    assert plan.allocator_block(512) == 512
    assert plan.allocator_block(513) == 1024
    assert plan.segment_class(2**20) == "small"
    assert plan.segment_class(2**20 + 512) == "mid"
    assert plan.segment_class(11 * 2**20) == "large"
    mib = 2**20
    # 3 MiB of small blocks need two 2 MiB segments, 5 MiB of mid ones one 20 MiB segment.
    assert plan.reserved_estimate(3 * mib, 5 * mib, 12 * mib) == (4 + 20 + 12) * mib


def test_memory_counts_storages_once_and_frees_them(plan: ModuleType) -> None:
    mode = FakeTensorMode()
    memory = plan.DeviceMemory()
    with memory, mode:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B -> 4096
        view = a[10:20]  # same storage: not counted again
        b = torch.empty(2**20, dtype=torch.bfloat16)  # 2 MiB: a mid-pool block
        assert memory.allocated == 4096 + 2 * 2**20
        del a, view
        assert memory.allocated == 2 * 2**20
        del b
        assert memory.allocated == 0
    assert memory.peak == 4096 + 2 * 2**20


def test_attention_keeps_no_score_tensor(plan: ModuleType) -> None:
    mode = FakeTensorMode()
    memory = plan.DeviceMemory()
    b, h, t, d = 2, 16, 512, 64
    with memory, mode, plan.cuda_attention():
        q = torch.empty(b, h, t, d, dtype=torch.bfloat16)
        start = memory.allocated
        memory.reset_peak()
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        flash = memory.peak - start
        mask = torch.ones(b, 1, t, t, dtype=torch.bool)
        start = memory.allocated
        memory.reset_peak()
        masked = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        efficient = memory.peak - start
    assert out.shape == masked.shape == q.shape
    scores = b * h * t * t * 2  # what the math path would keep, in bf16
    # flash: the output and the float32 log-sum-exp (and a few scalars: the RNG seed and
    # offset), nothing of size T x T
    assert q.numel() * 2 + b * h * t * 4 <= flash <= q.numel() * 2 + b * h * t * 4 + 4 * 512
    # memory-efficient with a mask: the additive bias is [B, 1, T, T], not one per head
    assert efficient < q.numel() * 2 + scores / h * 3


def test_forward_flops_equal_the_hand_count(plan: ModuleType) -> None:
    arch = plan.TINY
    rows, prompt, response = 3, 20, 64
    out = plan.simulate_sampler(arch, 2, rows, prompt, response, 16, count_flops=True)
    d, m, v, layers = arch["d_model"], arch["mlp_hidden_size"], arch["embedding_size"], 2
    t = prompt + response
    linear = rows * t * 2 * (4 * d * d + 3 * d * m)  # q, k, v, o and the gated MLP
    attention = 4 * rows * t * t * d  # scores and the weighted sum, all heads
    logits = 2 * rows * response * d * v  # only the response positions reach the vocabulary
    assert out["flops_forward"] == layers * (linear + attention) + logits


@pytest.mark.slow
def test_extrapolation_predicts_a_deeper_model(plan: ModuleType) -> None:
    arch = plan.TINY | {"n_layers": 3}
    for setup in ("lora-bf16", "fsdp8-full"):
        case = plan.Case("t", "dtm", setup, 4, 1, 2, True, False, 20, 64)
        one, two, three = (plan.simulate_update(case, arch, n, 4) for n in (1, 2, 3))
        predicted = plan.extrapolate(one.peak_bytes, two.peak_bytes, 3)["total"]
        assert one.peak_bytes < two.peak_bytes < three.peak_bytes
        # identical layers: linear up to the allocator's 512-byte rounding
        assert abs(predicted - three.peak_bytes) <= 4 * 512
        assert three.peak_bytes > three.static_bytes


def test_fsdp_and_four_bit_arithmetic(plan: ModuleType) -> None:
    arch = plan.LLADA_8B
    n = plan.total_params(arch)
    assert 8.0e9 < n < 8.1e9  # LLaDA-8B
    shards = plan.fsdp_rank_bytes(arch, 8, needs_reference=True, ema=False)
    assert shards["student_shard"] == 8 * n / 8
    assert shards["frozen_shards"] == 2 * 2 * n / 8  # teacher and reference
    adj = plan.four_bit_adjustment(arch)
    assert adj["nf4_linear_bytes"] / adj["bf16_linear_bytes"] == pytest.approx(0.2578, abs=1e-3)


@pytest.mark.slow
def test_script_end_to_end(
    plan: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    argv = [
        "--tiny",
        "--only",
        "Sudoku",
        "--methods",
        "dtm",
        "--no-sweep",
        "--sampler-steps",
        "8",
        "--out",
        str(out),
    ]
    assert plan.main(argv) == 0
    record = json.loads(out.read_text())
    rows = [r for entry in record["cases"] for r in entry["rows"]]
    setups = {(r["case"]["method"], r["case"]["setup"], r["case"]["checkpointing"]) for r in rows}
    assert setups == {
        ("dtm", "lora-bf16", True),
        ("dtm", "lora-4bit", True),
        ("dtm", "lora-bf16", False),
        ("dtm", "fsdp8-full", True),
    }
    for r in rows:
        assert r["gpu_peak_bytes"] > 0 and r["flops_per_update"] > 0
        assert r["flops_per_update"] == r["flops_per_micro_batch"] * r["case"]["accumulation"]
    # The sampler as it runs (lean selection at its upper bound), in every fixed-step mode.
    peaks = record["sampler"]["peaks"]["4"]
    assert set(peaks) == {"exact", "cached prefix", "cached dual"}
    for p in peaks.values():
        assert 0 < p["peak_forward_gib"] < p["peak_step_gib"] < p["peak_step_compatible_gib"]
    flops = record["sampler"]["flops"]
    exact = flops["exact"]["tflops_rollout_per_row"]
    assert flops["cached dual"]["tflops_rollout_per_row"] < exact
    assert flops["cached prefix"]["tflops_rollout_per_row"] < exact
    table = capsys.readouterr().out
    assert "| 4 | cached dual |" in table
    assert "| c-DTM (SAR, block 32) | Sudoku: 4 x 16 |" in table


def test_sampler_simulation_sizes_the_vocabulary_work_by_the_open_positions(
    plan: ModuleType,
) -> None:
    """The simulated sampler runs the package's lean step: its vocabulary work is the open
    positions of one block, far below a rows x L x V tensor; compatible noise on a GPU adds
    exactly that tensor in float64; the cached modes hold keys and values for every column."""
    arch = plan.TINY | {"embedding_size": 8192, "vocab_size": 8192, "mask_token_id": 8000,
                        "eos_token_id": 8001, "pad_token_id": 8001}  # fmt: skip
    rows, prompt, response, block = 8, 20, 64, 16
    peak = {
        name: plan.simulate_sampler(arch, 1, rows, prompt, response, block, sampler=fields)
        for name, fields in plan.SAMPLER_MODES.items()
    }
    full_width = rows * response * 8192 * 4  # float32 logits of every response position
    open_block = rows * block * 8192 * 4
    for p in peak.values():
        growth = p["peak_step_bytes"] - p["static_bytes"]
        assert open_block < growth < full_width
    kv = 2 * 1 * rows * (prompt + response) * arch["d_model"] * 2  # keys + values, bf16, 1 layer
    assert peak["cached dual"]["peak_step_bytes"] >= peak["exact"]["peak_step_bytes"] - 2**20
    assert plan.compatible_noise_bytes(rows, response, 8192) == rows * response * 8192 * 8
    assert kv > 0


def test_recipes_generate_calls(plan: ModuleType) -> None:
    """The batches the LLaDA recipes hand one generate call: Countdown's and GSM8K's buffer
    rebuild is 40 prompts x 6 = 240 rows; evaluation goes in chunks of 256."""
    calls = {(c["recipe"], c["purpose"]): c for c in plan.recipe_generate_calls()}
    assert calls[("countdown", "buffer rebuild")]["rows"] == 240
    assert calls[("gsm8k", "buffer rebuild")]["rows"] == 240
    gsm_eval = calls[("gsm8k", "evaluation")]
    assert (gsm_eval["rows"], gsm_eval["calls"]) == (256, 6)  # 1319 test problems
    assert calls[("math500", "buffer rebuild")]["response_length"] == 512


def test_bad_utilisation_is_one_line(plan: ModuleType) -> None:
    with pytest.raises(SystemExit) as exit_info:
        plan.main(["--tiny", "--utilisation", "2"])
    assert exit_info.value.code == 2


def test_baselines_beside_dtm_cost_what_their_passes_say(plan: ModuleType) -> None:
    """SPG, ESPO and coupled-GRPO rows: their recipes' updates are whole groups (their
    advantages are per group), and a micro-batch's FLOPs follow from the passes each
    makes. With checkpointing a pass with gradient costs about 3 forwards (forward,
    recomputation, backward to the activations of the frozen base), one without 1:
    SPG 2 states x 12 rows with gradient; ESPO 2 estimates x 2 coupled halves x 12 rows
    with gradient and as many for the teacher and for the reference each; coupled-GRPO
    3 versions x 10 rows with gradient, and as many for the teacher and the reference."""
    from dataclasses import replace

    beside = ("spg", "espo", "coupled-grpo")
    cases = {c.method: c for c in plan.recipe_cases() if c.method in beside}
    assert set(cases) == set(beside)
    assert all(c.group >= 2 and c.rows % c.group == 0 for c in cases.values())
    flops = {
        m: plan.simulate_update(
            replace(c, prompt_length=20, response_length=64), plan.TINY, 1, 4, count_flops=True
        ).flops_micro
        for m, c in cases.items()
    }
    forwards = {"spg": 24 * 3, "espo": 48 * 3 + 2 * 48, "coupled-grpo": 30 * 3 + 2 * 30}
    for method in ("espo", "coupled-grpo"):
        ratio = flops[method] / flops["spg"]
        assert ratio == pytest.approx(forwards[method] / forwards["spg"], rel=0.03), method


def test_llada2_mini_parameters_total_and_active(plan: ModuleType) -> None:
    """LLaDA2.0-mini as its card states it: 16B parameters, 1.4B active per token."""
    counts = plan.llada2_params(plan.LLADA2_MINI)
    assert 16.0e9 < counts["total"] < 16.5e9
    assert 1.3e9 < counts["active_per_token"] < 1.5e9


@pytest.mark.slow
def test_llada2_update_runs_on_fake_tensors_with_balanced_routing(plan: ModuleType) -> None:
    """The LLaDA2 path: the MoE layers dispatch every token's top-k slots (balanced, real
    indices) through fake experts; the peak extrapolates from the MoE layers on."""
    case = plan.Case("t", "dtm", "lora-bf16", 4, 1, 2, True, False, 20, 64, family="llada2")
    arch = plan.LLADA2_TINY
    layers, first = plan.depth(case, arch)
    assert (layers, first) == (3, 2)  # one dense layer, then MoE layers
    two, three = (plan.simulate_update(case, arch, n, 4) for n in (first, first + 1))
    assert two.peak_bytes < three.peak_bytes and two.peak_bytes > two.static_bytes
    predicted = plan.extrapolate(two.peak_bytes, three.peak_bytes, 3, first)["total"]
    assert predicted == pytest.approx(three.peak_bytes)
