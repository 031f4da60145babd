"""Side by side with NVlabs/Fast-dLLM's LLaDA sampler: the same weights, tokens and speed.

Fast-dLLM's code is not part of this repository: give the path of a checkout of it
(``--fast-dllm PATH``, the folder holding ``llada/generate.py`` and ``llada/model/``); it is
imported from there at run time (its model needs ``einops``: ``pip install einops``). Its
``LLaDAModelLM`` is built at a small size with LLaDA-8B-Instruct's architecture and
vocabulary (random weights), its state dict renamed into this package's bidirectional
Llama (:func:`tiltmatch.models.llada.convert_llada_state_dict`, as ``tiltmatch
convert-llada`` does), and one forward of both is compared. Then, for each mode (no cache:
``generate`` against mode ``exact``; ``generate_with_prefix_cache`` against ``cached`` with
the prefix cache; ``generate_with_dual_cache`` against ``cached`` with the dual cache), at
each response length, both samplers decode the same prompt at temperature 0 with
low-confidence remasking (Fast-dLLM's default): the tokens are compared position by position,
and each call is timed in process CPU seconds, the two interleaved, ``--repeats`` times
(median). Fast-dLLM's samplers take one prompt at a time; this package's takes a batch
(``--batch``: the same prompt repeated, both sides decoding it that many times).

    PYTHONPATH=src python benchmarks/fast_dllm_side_by_side.py --fast-dllm ../Fast-dLLM \\
        --hidden 256 --layers 2 --lengths 256 512 1024 --out runs/fast_dllm
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformers import LlamaForCausalLM

from tiltmatch.models.denoiser import MaskedDenoiser
from tiltmatch.models.llada import (
    LLADA_8B_INSTRUCT_CONFIG,
    convert_llada_state_dict,
    llada_config_to_llama,
)
from tiltmatch.sampling.sampler import SamplingConfig, generate

#: Fast-dLLM's function for each mode, and this package's sampler settings for it
MODES: dict[str, tuple[str, dict[str, Any]]] = {
    "no cache": ("generate", {"mode": "exact"}),
    "prefix cache": ("generate_with_prefix_cache", {"mode": "cached", "cache": "prefix"}),
    "dual cache": ("generate_with_dual_cache", {"mode": "cached", "cache": "dual"}),
}


class SetupError(RuntimeError):
    """A Fast-dLLM checkout that cannot be used; one line, exit status 2."""


def import_fast_dllm(path: Path) -> tuple[ModuleType, type, type]:
    """Fast-dLLM's ``generate`` module, ``LLaDAModelLM`` and ``LLaDAConfig`` from ``path``."""
    llada = path / "llada"
    if not (llada / "generate.py").is_file() or not (llada / "model").is_dir():
        raise SetupError(f"{path} holds no llada/generate.py and llada/model/: not Fast-dLLM")
    try:
        importlib.import_module("einops")
    except ImportError:
        raise SetupError("Fast-dLLM's model imports einops: pip install einops") from None
    sys.path.insert(0, str(llada))
    try:
        module = importlib.import_module("generate")
        modeling = importlib.import_module("model.modeling_llada")
        configuration = importlib.import_module("model.configuration_llada")
    finally:
        sys.path.remove(str(llada))
    return module, modeling.LLaDAModelLM, configuration.LLaDAConfig


def build_pair(
    model_class: type, config_class: type, hidden: int, layers: int, seed: int
) -> tuple[Any, MaskedDenoiser, float]:
    """Fast-dLLM's model with random weights, this package's denoiser with the same weights,
    and the largest difference between their logits on one random sequence."""
    sizes = {
        "d_model": hidden,
        "n_layers": layers,
        "n_heads": max(hidden // 64, 2),
        "n_kv_heads": max(hidden // 64, 2),
        "mlp_hidden_size": 3 * hidden,
    }
    llada = dict(LLADA_8B_INSTRUCT_CONFIG) | sizes
    torch.manual_seed(seed)
    config = config_class(**llada)
    # transformers 5 no longer keeps ``use_cache`` on a config; Fast-dLLM's forward reads it
    if not hasattr(config, "use_cache"):
        config.use_cache = False
    theirs = model_class(config, init_params=True).float().eval()
    ours = LlamaForCausalLM(llada_config_to_llama(llada))
    ours.load_state_dict(convert_llada_state_dict(theirs.state_dict()), strict=True)
    denoiser = MaskedDenoiser(ours.float().eval(), llada["mask_token_id"], llada["pad_token_id"])
    ids = torch.randint(0, llada["mask_token_id"], (1, 48), generator=torch.Generator())
    with torch.no_grad():
        a = theirs(ids).logits
        b = denoiser(ids, torch.ones_like(ids), ids.shape[1])
    return theirs, denoiser, float((a - b).abs().max())


def cpu_seconds(fn: Any) -> tuple[Any, float]:
    """``fn()`` and the process CPU seconds it took."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


def compare(
    fast: ModuleType, theirs: Any, denoiser: MaskedDenoiser, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every mode at every length: tokens equal, CPU seconds of both, the speed ratio."""
    prompt = torch.randint(
        0, denoiser.mask_token_id, (1, args.prompt_length), generator=torch.Generator()
    )
    rows = []
    for length in args.lengths:
        steps = length // args.tokens_per_step
        for name, (function, fields) in MODES.items():
            config = SamplingConfig(
                steps=steps, block_length=args.block_length, temperature=0.0, **fields
            )

            def run_theirs(
                function: str = function, steps: int = steps, length: int = length
            ) -> torch.Tensor:
                outs = []
                for _ in range(args.batch):
                    x, _ = getattr(fast, function)(
                        theirs, prompt, steps=steps, gen_length=length,
                        block_length=args.block_length, temperature=0.0,
                        remasking="low_confidence", mask_id=denoiser.mask_token_id,
                    )  # fmt: skip
                    outs.append(x[:, args.prompt_length :])
                return torch.cat(outs)

            def run_ours(config: SamplingConfig = config, length: int = length) -> torch.Tensor:
                prompts = [prompt[0].tolist()] * args.batch
                g = torch.Generator().manual_seed(0)
                return generate(denoiser, prompts, length, config, g).responses

            times: dict[str, list[float]] = {"fast-dllm": [], "tiltmatch": []}
            for _ in range(args.repeats):
                with torch.no_grad():
                    a, t_a = cpu_seconds(run_theirs)
                    b, t_b = cpu_seconds(run_ours)
                times["fast-dllm"].append(t_a)
                times["tiltmatch"].append(t_b)
            median = {k: statistics.median(v) for k, v in times.items()}
            row = {
                "mode": name,
                "length": length,
                "batch": args.batch,
                "steps": steps,
                "same_tokens": int((a == b).sum()),
                "tokens": a.numel(),
                "cpu_seconds": median,
                "cpu_seconds_all": times,
                "speed_ratio": median["fast-dllm"] / median["tiltmatch"],
            }
            print(
                f"{name:<13} L={length:<5} B={args.batch}  same tokens {row['same_tokens']}/"
                f"{row['tokens']}  Fast-dLLM {median['fast-dllm']:.1f} CPU-s, tiltmatch "
                f"{median['tiltmatch']:.1f} CPU-s: x{row['speed_ratio']:.2f} tokens per CPU-s",
                flush=True,
            )
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Build, compare, print and write ``fast_dllm_side_by_side.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast-dllm", type=Path, required=True, help="a Fast-dLLM checkout")
    parser.add_argument("--out", default="runs/fast_dllm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[256])
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--tokens-per-step", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any(length % args.block_length for length in args.lengths):
        parser.error("every --lengths must be a multiple of --block-length")
    torch.set_num_threads(args.threads)
    try:
        fast, model_class, config_class = import_fast_dllm(args.fast_dllm.resolve())
    except SetupError as err:
        print(f"fast_dllm_side_by_side: {err}", file=sys.stderr)
        return 2
    theirs, denoiser, difference = build_pair(
        model_class, config_class, args.hidden, args.layers, args.seed
    )
    print(f"one forward: largest logit difference {difference:.3g}", flush=True)
    rows = compare(fast, theirs, denoiser, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "forward_difference": difference,
        "rows": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    (out / "fast_dllm_side_by_side.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
