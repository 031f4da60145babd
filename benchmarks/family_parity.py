"""Parity of the LLaDA2 and MDLM families with the released modeling code itself.

The tests (``tests/test_llada2.py``, ``tests/test_mdlm.py``) compare the package's models
with transcriptions of the released equations, written in the tests. This script runs the
released code: it writes the tests' tiny checkpoints in the released formats, imports the
released modeling files from folders the user names (nothing of them is copied into this
repository), loads the same weights into them strictly, and compares

- logits: max |logit difference| on the response columns, one unpadded row and a
  left-padded batch (the released forwards take the mask and positions they are given);
- generation at temperature 0: tokens equal / total against the released ``generate``
  (LLaDA2: threshold decoding as released; the comparison stops at the released output's
  end, its first end-of-text token), both sides in float32 and both in bfloat16. The
  released generate builds its block mask (0 / -inf) in bfloat16, which SDPA refuses
  beside float32 queries; for the float32 runs the mask is handed to SDPA in the queries'
  dtype, which changes no value (``mask_in_query_dtype``).

MDLM: the released DiT's logits (each row unpadded: its forward takes no padding) against
the package's on the same rows (left-padded there), and the released ``Diffusion._sample``
(``ddpm_cache`` predictor, loglinear schedule, noise removal) against the package's
ancestral sampler, both drawing the same uniforms (the global generator seeded there, a
``torch.Generator`` seeded alike here): tokens equal / total. ``_sample`` runs without
Lightning or Hydra: the few methods it calls are compiled from the checkout's own
``diffusion.py`` and bound to a plain object (``released_sampler``).

Where the released code needs another transformers than this package's, ``--reference-python``
names an interpreter with that version (and torch, safetensors); the released side runs in
it as a subprocess and never imports tiltmatch; ``--reference-path DIR`` is put on that
subprocess's ``PYTHONPATH`` only (MDLM's ``dit.py`` imports einops and omegaconf, which
this package does not install). Usage::

    python benchmarks/family_parity.py --llada2 DIR [--reference-python PY] [--out FILE]
    python benchmarks/family_parity.py --mdlm DIR [--device cpu --flash-attn-shim]
        [--reference-path DIR] [--out FILE]

``--llada2 DIR``: a folder holding the released ``modeling_llada2_moe.py`` and
``configuration_llada2_moe.py`` (from the inclusionAI/LLaDA2.0-mini model repository, or a
mirror of it). ``--mdlm DIR``: a checkout of kuleshov-group/mdlm; its ``models/dit.py``
imports flash-attn, which needs CUDA: on a GPU it runs as released (under its bfloat16
autocast); on the CPU ``--flash-attn-shim`` stands the two flash-attn functions it calls
in with plain-torch versions of their documented semantics (``benchmarks/
flash_attn_shim.py`` says what that proves and what it does not), and CUDA's autocast is
off, so the released DiT runs in float32. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
LLADA2_PROMPTS = (5, 37, 20)
LLADA2_GEN_LENGTH = 40
#: (threshold, output-head scale of the tiny checkpoint): a sharp head makes threshold
#: decoding commit several tokens in one step
LLADA2_DECODES = ((0.95, 1.0), (0.95, 12.0), (0.6, 12.0))
DTYPES = ("float32", "bfloat16")
LOGIT_CASES = {"unpadded": [40], "left-padded": [37, 29, 44]}
RESPONSE = 12
#: MDLM's unconditional sampling: (rows, tokens per row, seed), at each number of steps
MDLM_SAMPLE = (3, 24, 7)
MDLM_SAMPLE_STEPS = (4, 16, 40)


def import_package_file(directory: Path, module: str, package: str) -> types.ModuleType:
    """``directory/module.py`` imported as ``package.module`` (its relative imports work)."""
    if package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = [str(directory)]
        sys.modules[package] = pkg
    spec = importlib.util.spec_from_file_location(f"{package}.{module}", directory / f"{module}.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no {module}.py in {directory}")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def batch(lengths: list[int], response: int, vocab: int, seed: int = 0) -> dict[str, list]:
    """Left-padded random ids, their real-token mask and positions (a JSON-ready case)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width + response, dtype=torch.long)
    real = torch.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n :] = torch.randint(0, vocab - 8, (n + response,), generator=g)
        real[r, width - n :] = 1
    return {"ids": ids.tolist(), "real": real.tolist()}


# --------------------------------------------------------------------------- released side


def block_mask_additive(real: torch.Tensor, block: int) -> torch.Tensor:
    """The released generate's additive block mask (0 / -inf) over real-token positions;
    a padded query row sees only itself (kept finite, never read)."""
    pos = (real.cumsum(-1) - 1).clamp(min=0)
    blk = pos // block
    allowed = real.bool()[:, None, :] & (blk[:, None, :] <= blk[:, :, None])
    allowed |= torch.eye(real.shape[1], dtype=torch.bool)[None] & ~real.bool()[:, :, None]
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))[:, None]


def released_llada2(module_dir: Path, folders: dict[str, str], cases: dict) -> dict[str, Any]:
    """Logits and generations of the released LLaDA2 code on the tiny checkpoints."""
    from safetensors.torch import load_file

    cfg_mod = import_package_file(module_dir, "configuration_llada2_moe", "llada2_release")
    modeling = import_package_file(module_dir, "modeling_llada2_moe", "llada2_release")
    out: dict[str, Any] = {"logits": {}, "generate": {}}
    models = {}
    for name, folder in folders.items():
        cfg = json.loads((Path(folder) / "config.json").read_text())
        config = cfg_mod.LLaDA2MoeConfig(**{k: v for k, v in cfg.items() if k != "auto_map"})
        config._attn_implementation = "sdpa"
        model = modeling.LLaDA2MoeModelLM(config).float()
        state = {}
        for shard in sorted(Path(folder).glob("model-*.safetensors")):
            state |= load_file(str(shard))
        model.load_state_dict(state, strict=True)
        models[name] = model.eval()
        models[f"{name}-bf16"] = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        for case, data in cases["logits"].items():
            ids, real = torch.tensor(data["ids"]), torch.tensor(data["real"])
            positions = (real.cumsum(-1) - 1).clamp(min=0)
            mask = block_mask_additive(real, 32)
            logits = models["sharp-1.0"](ids, attention_mask=mask, position_ids=positions).logits
            out["logits"][case] = logits[:, -RESPONSE:].tolist()
        for key, job in cases["generate"].items():
            rows = []
            model = models[job["folder"] + ("-bf16" if job["dtype"] == "bfloat16" else "")]
            for prompt in job["prompts"]:
                got = model.generate(
                    inputs=torch.tensor([prompt]),
                    temperature=0.0,
                    block_length=32,
                    steps=32,
                    gen_length=job["gen_length"],
                    threshold=job["threshold"],
                    eos_id=job["eos"],
                    mask_id=job["mask"],
                )
                rows.append(got[0].tolist())
            out["generate"][key] = rows
    return out


def mask_in_query_dtype() -> None:
    """Let SDPA take the released generate's bfloat16 block mask with float32 queries.

    The mask holds 0 and -inf only, exact in every float dtype, so casting it to the
    queries' dtype changes no value; without the cast torch refuses the call, and the
    released ``generate`` runs in bfloat16 only.
    """
    from transformers import modeling_utils

    stock = modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"]

    def sdpa(module, query, key, value, attention_mask, **kwargs):  # type: ignore[no-untyped-def]
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(query.dtype)
        return stock(module, query, key, value, attention_mask, **kwargs)

    modeling_utils.ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa


def released_dit(checkout: Path, folder: str, device: str) -> Any:
    """The released MDLM DiT (``models/dit.py`` of a kuleshov-group/mdlm checkout, imported
    alone: the package's ``__init__`` also imports the Mamba backbone) with the tiny
    checkpoint's weights loaded strictly, in eval mode."""
    from safetensors.torch import load_file

    dit = import_package_file(checkout / "models", "dit", "mdlm_release_models")
    cfg = json.loads((Path(folder) / "config.json").read_text())
    model_cfg = {
        "hidden_size": cfg["hidden_dim"],
        "cond_dim": cfg["cond_dim"],
        "length": cfg["model_length"],
        "n_blocks": cfg["n_blocks"],
        "n_heads": cfg["n_heads"],
        "dropout": cfg["dropout"],
        "scale_by_sigma": True,
    }
    model = dit.DIT({"model": model_cfg}, vocab_size=cfg["vocab_size"])
    state = load_file(str(Path(folder) / "model.safetensors"))
    model.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()}, strict=True)
    return model.to(device).eval()


#: the methods of the released ``Diffusion`` (diffusion.py) that its ``_sample`` runs with
#: the ``ddpm_cache`` predictor and the SUBS parameterisation, and the module function
MDLM_SAMPLE_FUNCTIONS = ("_sample_categorical",)
MDLM_SAMPLE_METHODS = (
    "_sample",
    "_sample_prior",
    "_ddpm_caching_update",
    "forward",
    "_process_sigma",
    "_subs_parameterization",
)


def released_sampler(checkout: Path, backbone: Any, cfg: dict, job: dict, device: str) -> Any:
    """The released ``Diffusion._sample`` without Lightning or Hydra: the methods it runs
    (:data:`MDLM_SAMPLE_METHODS`) and ``_sample_categorical``, compiled from the checkout's
    own ``diffusion.py`` (found by name in its syntax tree; nothing of the file is copied
    here) and bound to a plain object carrying the attributes the released ``__init__``
    would set for this run: the DiT, the loglinear schedule of ``noise_schedule.py``, the
    mask index (the id after the tokenizer's vocabulary, the model's last), ``-1e6`` as
    ``neg_infinity``, SUBS, the ``ddpm_cache`` predictor, noise removal on."""
    source_path = checkout / "diffusion.py"
    tree = ast.parse(source_path.read_text())
    wanted: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in MDLM_SAMPLE_FUNCTIONS:
            wanted[node.name] = node
        if isinstance(node, ast.ClassDef) and node.name == "Diffusion":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name in MDLM_SAMPLE_METHODS:
                    wanted[item.name] = item
    missing = set(MDLM_SAMPLE_FUNCTIONS + MDLM_SAMPLE_METHODS) - set(wanted)
    if missing:
        raise LookupError(f"{source_path} defines no {sorted(missing)}")
    namespace: dict[str, Any] = {"torch": torch, "F": torch.nn.functional, "math": math}
    module = ast.Module(body=list(wanted.values()), type_ignores=[])
    exec(compile(module, str(source_path), "exec"), namespace)  # the released source
    noise = import_package_file(checkout, "noise_schedule", "mdlm_release")
    released = type("ReleasedDiffusion", (), {m: namespace[m] for m in MDLM_SAMPLE_METHODS})()
    ns = types.SimpleNamespace
    released.config = ns(
        loader=ns(eval_batch_size=job["rows"]),
        model=ns(length=job["length"]),
        sampling=ns(steps=job["steps"], noise_removal=True, predictor="ddpm_cache"),
        noise=ns(type="loglinear"),
    )
    released.__dict__.update(
        backbone=backbone,
        noise=noise.LogLinearNoise(),
        mask_index=cfg["vocab_size"] - 1,
        neg_infinity=-1000000.0,
        parameterization="subs",
        sampler="ddpm_cache",
        time_conditioning=cfg["time_conditioning"],
        device=torch.device(device),
    )
    return released


def released_mdlm(checkout: Path, folder: str, cases: dict, device: str) -> dict[str, Any]:
    """Logits of the released MDLM DiT on each row alone (its forward takes no padding, so
    a padded case's rows are run unpadded), and its ``_sample`` (``ddpm_cache``) from the
    global generator seeded as the case says. On CUDA the DiT runs under its own bfloat16
    autocast; on the CPU that autocast (CUDA's) is off and it runs in float32."""
    model = released_dit(checkout, folder, device)
    cfg = json.loads((Path(folder) / "config.json").read_text())
    out: dict[str, Any] = {"logits": {}, "sample": {}}
    with torch.no_grad():
        for case, data in cases["logits"].items():
            rows = []
            for ids, real in zip(data["ids"], data["real"], strict=True):
                row = torch.tensor(
                    [[i for i, r in zip(ids, real, strict=True) if r]], device=device
                )
                sigma = torch.zeros(1, device=device)
                rows.append(model(row, sigma)[0, -RESPONSE:].float().cpu().tolist())
            out["logits"][case] = rows
    for case, job in cases["sample"].items():
        sampler = released_sampler(checkout, model, cfg, job, device)
        torch.manual_seed(job["seed"])  # _sample_categorical draws with torch.rand_like
        out["sample"][case] = sampler._sample(num_steps=job["steps"]).cpu().tolist()
    return out


def released_side(args: argparse.Namespace) -> int:
    """Subprocess entry: run the released code on the cases, write its outputs as JSON."""
    cases = json.loads(Path(args.cases).read_text())
    if args.flash_attn_shim:
        import flash_attn_shim  # beside this script

        flash_attn_shim.install()
    if args.mdlm:
        result = released_mdlm(Path(args.mdlm), cases["folder"], cases, args.device)
    else:
        mask_in_query_dtype()
        result = released_llada2(Path(args.llada2), cases["folders"], cases)
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- this package


def ours_llada2(folders: dict[str, Path], cases: dict) -> dict[str, Any]:
    """The package's logits and generations on the same cases."""
    from tiltmatch.models.denoiser import MaskedDenoiser
    from tiltmatch.models.loading import load_model_folder
    from tiltmatch.sampling.config import SamplingConfig
    from tiltmatch.sampling.sampler import generate

    out: dict[str, Any] = {"logits": {}, "generate": {}}
    loaded = {name: load_model_folder(folder) for name, folder in folders.items()}
    bf16 = {n: load_model_folder(f, None, torch.bfloat16) for n, f in folders.items()}
    with torch.no_grad():
        model, codec = loaded["sharp-1.0"]
        denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
        for case, data in cases["logits"].items():
            ids, real = torch.tensor(data["ids"]), torch.tensor(data["real"])
            out["logits"][case] = denoiser(ids, real, RESPONSE).tolist()
        for key, job in cases["generate"].items():
            model, codec = (bf16 if job["dtype"] == "bfloat16" else loaded)[job["folder"]]
            denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id)
            config = SamplingConfig(
                mode="parallel",
                steps=job["gen_length"],
                threshold=job["threshold"],
                temperature=0.0,
            )
            got = generate(denoiser, job["prompts"], job["gen_length"], config, torch.Generator())
            out["generate"][key] = got.responses.tolist()
    return out


def llada2_cases(tmp: Path) -> tuple[dict[str, Path], dict]:
    """The tiny LLaDA2 checkpoints (tests/llada2_fixture.py) and the cases run on them."""
    sys.path.insert(0, str(ROOT / "tests"))
    from llada2_fixture import write_tiny_llada2

    folders, cases = {}, {"logits": {}, "generate": {}}
    for scale in sorted({s for _t, s in LLADA2_DECODES}):
        fam = write_tiny_llada2(tmp / f"llada2-{scale}", seed=3, head_scale=scale)
        folders[f"sharp-{scale}"] = fam.folder
    vocab = fam.config["vocab_size"]
    for case, lengths in LOGIT_CASES.items():
        cases["logits"][case] = batch(lengths, RESPONSE, vocab)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 250, (n,), generator=g).tolist() for n in LLADA2_PROMPTS]
    for (threshold, scale), dtype in itertools.product(LLADA2_DECODES, DTYPES):
        cases["generate"][f"threshold {threshold}, head x{scale}, {dtype}"] = {
            "dtype": dtype,
            "folder": f"sharp-{scale}",
            "prompts": prompts,
            "gen_length": LLADA2_GEN_LENGTH,
            "threshold": threshold,
            "eos": fam.eos_id,
            "mask": fam.mask_id,
        }
    return folders, cases


def compare(ours: dict, released: dict, cases: dict) -> list[dict[str, Any]]:
    """One row per case: max |logit difference| or tokens equal / total."""
    rows = []
    for case, data in cases["logits"].items():
        real = torch.tensor(data["real"])
        a, b = torch.tensor(ours["logits"][case]), torch.tensor(released["logits"][case])
        rows.append({"case": f"logits, {case}", "max_abs_diff": float((a - b).abs().max())})
        assert bool(real[:, -RESPONSE:].all())
    for key in cases["generate"]:
        equal, total = tokens_equal(ours["generate"][key], released["generate"][key])
        rows.append({"case": f"generate, {key}", "tokens_equal": equal, "tokens_total": total})
    # How far bfloat16 rounding alone moves each side's own decoding (float32 as reference).
    for key in cases["generate"]:
        if key.endswith("bfloat16"):
            key32 = key.replace("bfloat16", "float32")
            for side, out in (("released", released), ("ours", ours)):
                equal, total = tokens_equal(out["generate"][key], out["generate"][key32])
                case = f"{side} bfloat16 vs its float32, {key.rsplit(',', 1)[0]}"
                rows.append({"case": case, "tokens_equal": equal, "tokens_total": total})
    return rows


def tokens_equal(mine: list[list[int]], theirs: list[list[int]]) -> tuple[int, int]:
    """Tokens equal and total over ``theirs`` (each row up to its own end)."""
    equal = total = 0
    for a, b in zip(mine, theirs, strict=True):
        equal += sum(int(x == y) for x, y in zip(a, b, strict=False))
        total += len(b)
    return equal, total


def mdlm_parity(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """The released MDLM DiT and ``_sample`` against the package's raw logits (same rows,
    unpadded there) and its ancestral sampler (same seed: the same uniforms)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mdlm_fixture import write_tiny_mdlm

    from tiltmatch.models.denoiser import MaskedDenoiser
    from tiltmatch.models.loading import load_model_folder
    from tiltmatch.sampling.config import SamplingConfig
    from tiltmatch.sampling.sampler import generate

    fam = write_tiny_mdlm(tmp / "mdlm")
    rows, length, seed = MDLM_SAMPLE
    cases = {
        "logits": {k: batch(v, RESPONSE, fam.config["vocab_size"]) for k, v in LOGIT_CASES.items()},
        # The same uniforms need the same generator: the released _sample draws from the
        # global one of its device, ours from a CPU generator, so only a CPU run compares.
        "sample": {
            f"{steps} steps": {"rows": rows, "length": length, "steps": steps, "seed": seed}
            for steps in MDLM_SAMPLE_STEPS
            if args.device == "cpu"
        },
    }
    (tmp / "mdlm-cases.json").write_text(json.dumps({**cases, "folder": str(fam.folder)}))
    command = [args.reference_python, str(Path(__file__).resolve()), "--released-side"]
    command += ["--mdlm", args.mdlm, "--device", args.device]
    command += ["--cases", str(tmp / "mdlm-cases.json")]
    command += ["--result", str(tmp / "mdlm-released.json")]
    if args.flash_attn_shim:
        command.append("--flash-attn-shim")
    env = None
    if args.reference_path:  # the released side's extra packages, kept from this side
        env = os.environ | {"PYTHONPATH": args.reference_path}
    subprocess.run(command, check=True, env=env)
    released = json.loads((tmp / "mdlm-released.json").read_text())
    model, codec = load_model_folder(fam.folder)
    numerics = "float32" if args.device == "cpu" else "bfloat16 autocast"
    kernels = "flash-attn shim" if args.flash_attn_shim else "flash-attn"
    out = []
    for case, data in cases["logits"].items():
        ids, real = torch.tensor(data["ids"]), torch.tensor(data["real"])
        positions = MaskedDenoiser.position_ids(real)
        with torch.no_grad():
            ours = model(ids, attention_mask=real, position_ids=positions, raw=True).logits
        theirs = torch.tensor(released["logits"][case])
        diff = float((ours[:, -RESPONSE:] - theirs).abs().max())
        label = f"MDLM logits, {case} (released: {numerics}, {kernels})"
        out.append({"case": label, "max_abs_diff": diff})
    denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
    for case, job in cases["sample"].items():
        config = SamplingConfig(mode="ancestral", steps=job["steps"])
        generator = torch.Generator().manual_seed(job["seed"])
        with torch.no_grad():
            got = generate(denoiser, [[]] * job["rows"], job["length"], config, generator)
        equal, total = tokens_equal(got.responses.tolist(), released["sample"][case])
        label = f"MDLM _sample (ddpm_cache) vs ancestral, {case}, same uniforms"
        out.append({"case": label, "tokens_equal": equal, "tokens_total": total})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llada2", help="folder with the released modeling_llada2_moe.py")
    p.add_argument("--mdlm", help="a kuleshov-group/mdlm checkout (models/dit.py; flash-attn)")
    p.add_argument("--device", default="cuda", help="where the released MDLM DiT runs")
    p.add_argument(
        "--flash-attn-shim",
        action="store_true",
        help="MDLM: flash-attn's two kernels from benchmarks/flash_attn_shim.py (plain torch)",
    )
    p.add_argument("--reference-python", default=sys.executable, help="interpreter for it")
    p.add_argument(
        "--reference-path", default=None, help="PYTHONPATH of the released side only (MDLM)"
    )
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--released-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cases", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.released_side:
        return released_side(args)
    if not args.llada2 and not args.mdlm:
        p.error("name the released code: --llada2 DIR and/or --mdlm DIR")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.llada2:
            rows += llada2_parity(args, tmp)
        if args.mdlm:
            rows += mdlm_parity(args, tmp)
    print(f"{'case':<64} {'max |logit diff|':>18} {'tokens equal / total':>22}")
    for row in rows:
        diff = f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else ""
        tokens = f"{row['tokens_equal']} / {row['tokens_total']}" if "tokens_total" in row else ""
        print(f"{row['case']:<64} {diff:>18} {tokens:>22}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


def llada2_parity(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """The released LLaDA2 code (in ``--reference-python``) against the package."""
    folders, cases = llada2_cases(tmp)
    payload = {**cases, "folders": {k: str(v) for k, v in folders.items()}}
    (tmp / "cases.json").write_text(json.dumps(payload))
    command = [args.reference_python, str(Path(__file__).resolve()), "--released-side"]
    command += ["--llada2", args.llada2, "--cases", str(tmp / "cases.json")]
    command += ["--result", str(tmp / "released.json")]
    subprocess.run(command, check=True)
    released = json.loads((tmp / "released.json").read_text())
    return compare(ours_llada2(folders, cases), released, cases)


if __name__ == "__main__":
    sys.exit(main())
