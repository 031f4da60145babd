"""Parity of the BD3-LM family with the released modeling code itself (kuleshov-group/bd3lms).

``tests/test_bd3lm.py`` compares the package's model with a transcription of the released
equations written in the test. This script runs the released file: it writes the tests'
tiny checkpoints in the released format (``tests/bd3lm_fixture.py``; with and without
adaLN), imports ``models/hf/modeling_bd3lm.py`` and ``configuration_bd3lm.py`` from a
checkout the user names (nothing of them is copied into this repository), loads the same
weights into the released ``BD3LM`` class strictly, and compares

- logits: max |logit difference| of the raw DiT logits (before SUBS) over every real
  column, the released inference forward (``sample_mode=True``, no KV cache, SDPA) against
  the package's class, for one unpadded batch and a left-padded one (the released code has
  no padding: each row runs there unpadded, alone);
- generation: tokens equal / total. The released sampler (``_semi_ar_sampler``) is a method
  of the Lightning module in ``diffusion.py`` (hydra, lightning; its KV cache is allocated
  on CUDA) and draws from torch's global generator, so it is not run. What is compared is
  greedy block decoding (one token per step, the most confident masked position of the
  active block, whole blocks from position 0) written out here around the released
  forward, recomputing the whole sequence every step, against the package's block decoder
  (``sampler.mode: exact``, temperature 0, finished blocks in its KV cache).

The released code needs ``einops`` (``pip install einops``) and runs on the CPU with plain
torch when its ``attn_backend`` is ``sdpa``, which its own sampling path sets (its
``diffusion.py`` switches a ``flex`` checkpoint to SDPA; the released forward asserts SDPA
in sampling mode). ``--reference-python`` names another interpreter for the released
side, which never imports tiltmatch. Usage::

    python benchmarks/bd3lm_parity.py CHECKOUT [--reference-python PY] [--out FILE]

Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 4
#: prompt lengths per batch (a left-padded batch mixes them; each row starts with BOS)
LOGIT_CASES = {"unpadded": [20, 20], "left-padded": [20, 7, 13]}
RESPONSE = 16
#: generation: prompt lengths (1: unconditional, BOS alone) and response length
GEN_PROMPTS = (1, 6, 11, 3)
GEN_LENGTH = 30


# --------------------------------------------------------------------------- released side


def import_release(checkout: Path) -> types.ModuleType:
    """``models/hf/modeling_bd3lm.py`` of a checkout, as a package module (its relative
    import of ``configuration_bd3lm`` works)."""
    directory = checkout / "models" / "hf"
    if not (directory / "modeling_bd3lm.py").is_file():
        raise FileNotFoundError(f"no models/hf/modeling_bd3lm.py in {checkout}")
    package = types.ModuleType("bd3lm_release")
    package.__path__ = [str(directory)]
    sys.modules["bd3lm_release"] = package
    return importlib.import_module("bd3lm_release.modeling_bd3lm")


def released_model(module: types.ModuleType, folder: Path) -> Any:
    """The released ``BD3LM`` on a folder's weights, loaded strictly, SDPA, eval mode."""
    from safetensors.torch import load_file

    config = module.BD3LMConfig.from_pretrained(str(folder))
    config.attn_backend = "sdpa"  # as the release's diffusion.py does before sampling
    model = module.BD3LM(config)
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


def released_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """The raw DiT logits of unpadded rows in the released sampling forward."""
    sigma = torch.zeros(ids.shape[0])
    with torch.no_grad():
        out = model(input_ids=ids, timesteps=sigma, sample_mode=True, return_dict=True)
    return out.logits.float()


def subs_probs(logits: torch.Tensor, ids: torch.Tensor, mask_id: int) -> torch.Tensor:
    """diffusion.py's SUBS parameterisation, as probabilities (mask logit -1e6, softmax;
    visible tokens carried over)."""
    logits = logits.clone()
    logits[..., mask_id] += -1_000_000.0
    probs = logits.softmax(-1)
    visible = ids != mask_id
    probs[visible] = torch.nn.functional.one_hot(ids[visible], probs.shape[-1]).float()
    return probs


def released_greedy(model: Any, prompt: list[int], length: int, mask_id: int) -> list[int]:
    """Greedy block decoding around the released forward (see the module docstring)."""
    start = len(prompt)
    total = start + length + (-(start + length)) % BLOCK
    x = torch.tensor([prompt + [mask_id] * (total - start)])
    for lo in range(start - start % BLOCK, total, BLOCK):
        while bool((x[0, lo : lo + BLOCK] == mask_id).any()):
            probs = subs_probs(released_logits(model, x), x, mask_id)[0]
            conf, tok = probs.max(-1)
            open_ = x[0] == mask_id
            open_[:lo] = False
            open_[lo + BLOCK :] = False
            j = int(torch.where(open_, conf, torch.full_like(conf, -1.0)).argmax())
            x[0, j] = tok[j]
    return x[0, start : start + length].tolist()


def released_side(args: argparse.Namespace) -> int:
    """Run the released code on the cases file; write its logits and generations."""
    module = import_release(Path(args.checkout))
    cases = json.loads(Path(args.cases).read_text())
    result: dict[str, Any] = {}
    for variant, data in cases.items():
        model = released_model(module, Path(data["folder"]))
        logits = {}
        for case, rows in data["logits"].items():
            logits[case] = [released_logits(model, torch.tensor([r]))[0].tolist() for r in rows]
        mask_id = data["mask_id"]
        gens = [released_greedy(model, p, GEN_LENGTH, mask_id) for p in data["prompts"]]
        result[variant] = {"logits": logits, "generations": gens}
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- our side


def masked_row(
    n: int, response: int, vocab: int, bos: int, mask_id: int, g: torch.Generator
) -> list[int]:
    """``<|endoftext|>``, ``n - 1`` random tokens and a half-masked response of random ones."""
    ids = torch.randint(0, vocab - 1, (n + response,), generator=g)
    ids[0] = bos
    masked = torch.rand(n + response, generator=g) < 0.5
    masked[:n] = False
    ids[masked] = mask_id
    return [int(i) for i in ids]


def write_cases(tmp: Path) -> dict[str, Any]:
    """The tiny checkpoints (adaLN on and off) and the rows both sides run."""
    sys.path.insert(0, str(ROOT / "tests"))
    from bd3lm_fixture import write_tiny_bd3lm

    g = torch.Generator().manual_seed(0)
    cases: dict[str, Any] = {}
    for adaln in (True, False):
        fam = write_tiny_bd3lm(tmp / f"adaln-{adaln}", seed=1, block_size=BLOCK, adaln=adaln)
        vocab, mask_id = fam.config["vocab_size"], fam.specials["mask"]
        bos = fam.specials["<|endoftext|>"]

        logits = {
            c: [masked_row(n, RESPONSE, vocab, bos, mask_id, g) for n in ns]
            for c, ns in LOGIT_CASES.items()
        }
        prompts = [
            [bos, *torch.randint(0, vocab - 1, (n - 1,), generator=g).tolist()] for n in GEN_PROMPTS
        ]
        cases[f"adaln={adaln}"] = {
            "folder": str(fam.folder),
            "mask_id": mask_id,
            "logits": logits,
            "prompts": prompts,
        }
    return cases


def ours(cases: dict[str, Any]) -> dict[str, Any]:
    """The package's logits (each case as one left-padded batch) and block decoding."""
    from tiltmatch.models.denoiser import MaskedDenoiser
    from tiltmatch.models.loading import load_model_folder
    from tiltmatch.sampling.config import SamplingConfig
    from tiltmatch.sampling.sampler import generate

    result: dict[str, Any] = {}
    for variant, data in cases.items():
        model, codec = load_model_folder(Path(data["folder"]))
        logits = {}
        for case, rows in data["logits"].items():
            width = max(len(r) for r in rows)
            ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
            real = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            with torch.no_grad():
                out = model(ids, attention_mask=real, raw=True).logits
            logits[case] = [out[i, width - len(r) :].tolist() for i, r in enumerate(rows)]
        denoiser = MaskedDenoiser(model, codec.mask_token_id, codec.pad_token_id).eval()
        greedy = SamplingConfig(steps=GEN_LENGTH, block_length=GEN_LENGTH, temperature=0.0)
        out = generate(denoiser, data["prompts"], GEN_LENGTH, greedy, torch.Generator())
        result[variant] = {"logits": logits, "generations": out.responses.tolist()}
    return result


def compare(mine: dict[str, Any], theirs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant and logits case, and one per variant for generation."""
    rows: list[dict[str, Any]] = []
    for variant in mine:
        for case, ours_rows in mine[variant]["logits"].items():
            diff = max(
                float((torch.tensor(a) - torch.tensor(b)).abs().max())
                for a, b in zip(ours_rows, theirs[variant]["logits"][case], strict=True)
            )
            rows.append({"case": f"BD3-LM {variant}, logits, {case}", "max_abs_diff": diff})
        a, b = mine[variant]["generations"], theirs[variant]["generations"]
        pairs = (pair for ra, rb in zip(a, b, strict=True) for pair in zip(ra, rb, strict=True))
        equal = sum(int(x == y) for x, y in pairs)
        rows.append(
            {
                "case": f"BD3-LM {variant}, greedy block decoding (cache vs none)",
                "tokens_equal": equal,
                "tokens_total": sum(len(r) for r in b),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkout", help="a kuleshov-group/bd3lms checkout (models/hf/)")
    p.add_argument("--reference-python", default=sys.executable, help="interpreter for it")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--released-side", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cases", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.released_side:
        return released_side(args)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cases = write_cases(tmp)
        (tmp / "cases.json").write_text(json.dumps(cases))
        command = [args.reference_python, str(Path(__file__).resolve()), args.checkout]
        command += ["--released-side", "--cases", str(tmp / "cases.json")]
        subprocess.run([*command, "--result", str(tmp / "released.json")], check=True)
        theirs = json.loads((tmp / "released.json").read_text())
        rows = compare(ours(cases), theirs)
    print(f"{'case':<64} {'max |logit diff|':>18} {'tokens equal / total':>22}")
    for row in rows:
        diff = f"{row['max_abs_diff']:.2e}" if "max_abs_diff" in row else ""
        tokens = f"{row['tokens_equal']} / {row['tokens_total']}" if "tokens_total" in row else ""
        print(f"{row['case']:<64} {diff:>18} {tokens:>22}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
