"""benchmarks/capacity.py: its CUDA-like attention op and its arithmetic (not the plan itself)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "capacity.py"


@pytest.fixture(scope="module")
def capacity() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("tiltmatch_capacity", SCRIPT)
    assert spec is not None and spec.loader is not None
    if spec.name in sys.modules:  # its custom ops can be registered once per process
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_fused_attention_is_attention_with_its_gradients(capacity) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :, :2] = False  # left padding of row 0
    out, lse = capacity.fused_attention(q, k, v, mask, 0.5)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)
    assert torch.allclose(out, want, atol=1e-6)
    assert lse.shape == (2, 3, 5) and lse.dtype == torch.float32
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    wants = torch.autograd.grad(want.sum(), (q, k, v))
    for a, b in zip(grads, wants, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_fake_attention_allocates_what_the_cuda_kernels_keep(capacity) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    with FakeTensorMode():
        q = torch.empty(2, 4, 64, 8, dtype=torch.bfloat16, requires_grad=True)
        k, v = torch.empty_like(q), torch.empty_like(q)
        with FlopCounterMode(display=False, custom_mapping=capacity.FLOP_FORMULAS) as flops:
            out, lse = capacity.fused_attention(q, k, v, None, 0.1)
            out.sum().backward()
    assert out.shape == q.shape and lse.shape == (2, 4, 64) and lse.dtype == torch.float32
    # 4 B H T^2 D forward, 10 B H T^2 D backward (the scores recomputed), plus the sum.
    assert flops.get_total_flops() == 14 * 2 * 4 * 64 * 64 * 8


def test_shard_and_quantisation_arithmetic(capacity) -> None:
    layers = 32
    per_layer = capacity.layer_linear_parameters()
    assert per_layer == 4 * 4096 * 4096 + 3 * 4096 * 12288  # 218.1M weights a layer
    record = {
        "peak_bytes": 70 * 2**30,
        "parameters": 8_000_000_000,
        "peak_by_kind_bytes": {"act": 3 * 2**30, "temp": 2**30},
    }
    nf4 = capacity.four_bit(record, layers)
    saved = layers * per_layer * (2 - capacity.NF4_BYTES_PER_WEIGHT)
    assert nf4["peak_bytes"] == int(70 * 2**30 - saved + 2 * 4096 * 12288 * 2)
    fsdp = capacity.fsdp_per_rank(record, 8, layers, copies=1)
    assert fsdp["sharded_state_bytes"] == int(8e9 * 10 / 8)  # bf16 p, g, 2 moments + teacher
    assert fsdp["peak_bytes"] == int(8e9 * 10 / 8 + 4 * per_layer * 2 + 4 * 2**30)
    assert capacity.fits(0.9 * 80e9) and not capacity.fits(0.9 * 80e9 + 1)
