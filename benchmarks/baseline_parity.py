"""SPG, ESPO and coupled-GRPO against their authors' own code, run on the CPU.

``tests/test_baseline_parity.py`` compares the package's losses with hand
transcriptions of the authors' equations. This script goes one step further:
it imports the authors' trainer modules from checkouts the user names (nothing
of theirs is vendored here), calls their own loss methods on a tiny float32
denoiser (their masks from their own seeded ``forward_process``), computes the
package's loss on the same masks, and prints the largest loss and gradient
differences. Their modules import TRL, accelerate and wandb at the top, written
against older TRL releases; every ``trl`` and ``wandb`` name they import is
replaced by an inert stand-in for the import (none is used by the code run here:
the loss methods, ``forward_process`` and ``get_logits``), then removed again.

    git clone https://github.com/facebookresearch/SPG && git clone https://github.com/ML-GSAI/ESPO
    git clone https://github.com/apple/ml-diffucoder
    python benchmarks/baseline_parity.py --spg SPG --espo ESPO --diffucoder ml-diffucoder \\
        --out runs/baseline-parity.json

Compared (each at the reference's defaults for the recipes in configs/llada): SPG's
``compute_loss`` (``forward_type=block_random``, ``logp_estimation`` mix / eubo / elbo,
a ragged completion mask); ESPO's ``compute_loss`` (``num_mc`` 2, ``reduce_var``, k2 KL,
old policy and reference from ``_get_elbo_mc``); DiffuCoder's ``compute_loss`` (three
versions per token, k3 KL) on a Dream-family model (theirs reads logits one column
back, as the package's Dream hook does).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import subprocess
import sys
import types
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tiltmatch.baselines import group_advantages, leave_one_out_advantages
from tiltmatch.baselines.coupled_grpo import coupled_token_log_probs
from tiltmatch.baselines.diffu_grpo import grpo_token_loss
from tiltmatch.baselines.espo import ESPOOptions, elbo_estimate, espo_loss
from tiltmatch.baselines.spg import sandwiched_scores, spg_loss, state_log_probs
from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser

PAD, MASK, VOCAB = 0, 1, 13
PROMPT, LENGTH = 5, 8
REWARDS = [[1.0, 0.0, 0.5], [0.2, 0.9, 0.2]]
STUBBED = (
    "trl",
    "trl.trainer",
    "trl.trainer.grpo_trainer",
    "trl.trainer.grpo_config",
    "trl.trainer.utils",
    "trl.extras",
    "trl.extras.profiling",
    "trl.import_utils",
    "trl.data_utils",
    "trl.models",
    "wandb",
)


def _nan_reduce(reduce: Any) -> Any:
    return lambda t: reduce(t[~torch.isnan(t)]) if (~torch.isnan(t)).any() else t.new_tensor(0.0)


class _InertModule(types.ModuleType):
    """A module whose every name is an inert stand-in: a class for capitalised names, the
    identity for decorators, the real NaN-skipping min / max TRL's trainers log with, and a
    function returning False otherwise."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value: Any
        if name == "profiling_decorator":
            value = lambda function: function  # noqa: E731
        elif name in ("nanmin", "nanmax"):
            value = _nan_reduce(torch.min if name == "nanmin" else torch.max)
        elif name[:1].isupper():
            value = type(name, (), {})
        else:
            value = lambda *args, **kwargs: False  # noqa: E731
        setattr(self, name, value)
        return value


@contextlib.contextmanager
def inert_imports() -> Iterator[None]:
    """The ``trl`` and ``wandb`` modules replaced by inert ones for the duration."""
    saved = {name: sys.modules.get(name) for name in STUBBED}
    sys.modules.update({name: _InertModule(name) for name in STUBBED})
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def load_reference(path: Path, name: str) -> types.ModuleType:
    """The authors' module at ``path``, imported under the inert stand-ins."""
    if not path.is_file():
        raise FileNotFoundError(f"no reference module at {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        with inert_imports():
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def commit_of(root: Path) -> str:
    """The checkout's commit, or "unknown" when it is not a git checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


# ----- shared pieces ------------------------------------------------------------------------


def tiny(family: str = "llada", jitter: float = 0.0, seed: int = 0) -> Any:
    """A float32 tiny denoiser (``jitter``: every weight moved by that much seeded noise)."""
    spec = TinyModelSpec(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64
    )
    model = tiny_denoiser(VOCAB, TinyModelSpec(**{**spec.__dict__, "family": family}), seed=0)
    if jitter:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(jitter * torch.randn(p.shape, generator=g))
    return model


def fixed_batch() -> RolloutBatch:
    """Groups of completions of equal-length prompts (no padding), rows prompt by prompt."""
    g = torch.Generator().manual_seed(3)
    groups, size = len(REWARDS), len(REWARDS[0])
    prompts = torch.randint(2, VOCAB, (groups, PROMPT), generator=g).repeat_interleave(size, 0)
    responses = torch.randint(2, VOCAB, (groups * size, LENGTH), generator=g)
    rewards = torch.tensor(REWARDS).reshape(-1)
    return RolloutBatch(prompts, torch.ones_like(prompts), responses, rewards, size)


def fake_trainer(cls: type, methods: tuple[str, ...], **attributes: Any) -> Any:
    """A stand-in ``self`` for the authors' trainer: the attributes their loss reads, and
    their own methods bound to it."""
    fake = types.SimpleNamespace(
        control=types.SimpleNamespace(should_evaluate=False),
        accelerator=types.SimpleNamespace(gather_for_metrics=lambda t: t),
        _metrics=defaultdict(lambda: defaultdict(list)),
        **attributes,
    )
    for method in methods:
        setattr(fake, method, types.MethodType(getattr(cls, method), fake))
    return fake


def differences(name: str, ours: torch.Tensor, theirs: torch.Tensor, a: Any, b: Any) -> dict:
    """Backpropagate both losses (through two copies of one model) and compare."""
    ours.backward()
    theirs.backward()
    grads = [
        float((p.grad - q.grad).abs().max())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    ]
    scale = max(float(q.grad.abs().max()) for q in b.parameters())
    row = {
        "comparison": name,
        "loss": float(theirs.detach()),
        "max_abs_loss_diff": float((ours.detach() - theirs.detach()).abs()),
        "max_abs_grad_diff": max(grads),
        "max_abs_grad": scale,
    }
    print(
        f"{name}: max |loss diff| {row['max_abs_loss_diff']:.2e}, max |grad diff| "
        f"{row['max_abs_grad_diff']:.2e} (loss {row['loss']:+.6f}, max |grad| {scale:.2e})"
    )
    return row


def joined(batch: RolloutBatch) -> torch.Tensor:
    """Prompt and completion as one row each, the authors' input layout."""
    return torch.cat([batch.prompt_ids, batch.responses], dim=1)


# ----- SPG ----------------------------------------------------------------------------------


def spg_rows(module: types.ModuleType) -> list[dict]:
    """SPG's compute_loss against the package's, for each bound, and with ragged completions."""
    cls = module.SPGTrainer
    batch, rows = fixed_batch(), []
    advantages = group_advantages(batch.grouped_rewards).reshape(-1)
    ragged = torch.arange(LENGTH)[None, :] < torch.tensor([8, 5, 3, 8, 6, 4])[:, None]
    cases = [("mix", 1.5, True), ("eubo", 1.5, True), ("elbo", 1.5, True), ("mix", 1.0, False)]
    for bound, beta, full in cases:
        completion_mask = torch.ones_like(ragged) if full else ragged
        args = types.SimpleNamespace(
            num_iterations=1, forward_type="block_random", num_t=2, min_t=0, max_t=1,
            block_length=4, use_mask_prompt=True, p_mask_prompt=0.15, mask_id=MASK,
            cfg_scale=0.0, logp_estimation=bound, eubo_beta=beta, mix_weight=0.5,
        )  # fmt: skip
        fake = fake_trainer(
            cls,
            ("forward_process", "get_logits", "_get_per_seq_logps"),
            args=args,
            _step=0,
            beta=0.0,
        )
        student = tiny()
        theirs_model = copy.deepcopy(student)
        inputs = {
            "prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
            "completion_ids": batch.responses, "completion_mask": completion_mask.int(),
            "mask_seeds": [7], "advantages": advantages, "reward_mask": advantages > 0,
        }  # fmt: skip
        theirs = cls.compute_loss(fake, theirs_model, inputs)
        prompt_index = torch.arange(PROMPT + LENGTH) < PROMPT
        noisy, _ = fake.forward_process(joined(batch), prompt_index, MASK, 7, completion_mask.int())
        is_mask = noisy == MASK
        prompt_masked, masked = is_mask[..., :PROMPT], is_mask[..., PROMPT:]
        logp = state_log_probs(
            MaskedDenoiser(student, MASK, PAD), batch, prompt_masked, masked, MASK
        )
        scores = sandwiched_scores(logp, masked, completion_mask, advantages > 0, bound, 0.5, beta)
        ours = spg_loss(scores, advantages, completion_mask.sum(1))
        label = f"SPG ({bound}, beta {beta}{'' if full else ', ragged completions'})"
        rows.append(differences(label, ours, theirs, student, theirs_model))
    return rows


# ----- ESPO ---------------------------------------------------------------------------------


def our_mean_elbo(model: Any, batch: RolloutBatch, states: list) -> torch.Tensor:
    """The package's ELBO estimate averaged over the given (masked, counts) states."""
    den = MaskedDenoiser(model, MASK, PAD)
    return torch.stack([elbo_estimate(den, batch, m, x, MASK, True) for m, x in states]).mean(0)


def espo_rows(module: types.ModuleType) -> list[dict]:
    """ESPO's compute_loss against the package's: teacher != student, KL on and off."""
    cls, batch, rows = module.ESPOTrainer, fixed_batch(), []
    advantages = leave_one_out_advantages(batch.grouped_rewards).reshape(-1)
    seeds = torch.tensor([[[11, 12], [13, 14]]])  # [accumulation chunk, iteration, mc]
    for eps, beta in ((0.2, 0.01), (0.0, 3e-3), (0.2, 0.0)):
        fake = fake_trainer(
            cls,
            ("get_logits", "_get_elbo", "_get_elbo_mc"),
            args=types.SimpleNamespace(num_iterations=2, gradient_accumulation_steps=1),
            num_iterations=2, num_mc=2, epsilon_low=eps, epsilon_high=eps, beta=beta, _step=1,
            processing_class=types.SimpleNamespace(mask_token_id=MASK),
            model=types.SimpleNamespace(config=types.SimpleNamespace(name_or_path="LLaDA-tiny")),
        )  # fmt: skip
        student, teacher, reference = tiny(), tiny(jitter=0.1, seed=5), tiny(jitter=0.1, seed=6)
        theirs_model = copy.deepcopy(student)
        ids = joined(batch)[None]
        with torch.no_grad():
            old = fake._get_elbo_mc(teacher, ids, LENGTH, seeds[0][0:1], num_mc=2)
            ref = fake._get_elbo_mc(reference, ids, LENGTH, seeds[0][0:1], num_mc=2)
        inputs = {
            "prompt_ids": batch.prompt_ids, "completion_ids": batch.responses,
            "mask_seeds": seeds, "advantages": advantages,
            "old_per_token_logps": old.repeat(1, 2), "ref_per_token_logps": ref.repeat(1, 2),
        }  # fmt: skip
        theirs = cls.compute_loss(fake, theirs_model, inputs)
        prompt_index = torch.arange(PROMPT + LENGTH) < PROMPT
        states = []
        for seed in seeds[0, 0]:
            noisy, _ = module.forward_process(joined(batch), prompt_index, MASK, seed=seed)
            masked = noisy[:, PROMPT:] == MASK
            states.append((masked, masked.sum(1)))
        elbo = our_mean_elbo(student, batch, states)
        with torch.no_grad():
            ours_old = our_mean_elbo(teacher, batch, states)
            ours_ref = our_mean_elbo(reference, batch, states)
        options = ESPOOptions(clip_epsilon=eps, beta_kl=beta)
        ours, _ = espo_loss(elbo, ours_old, ours_ref, advantages, LENGTH, options)
        label = f"ESPO (eps {eps}, beta_kl {beta})"
        rows.append(differences(label, ours, theirs, student, theirs_model))
    return rows


# ----- coupled-GRPO -------------------------------------------------------------------------


def our_coupled_logps(
    model: Any, batch: RolloutBatch, masked: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The package's coupled token log-probabilities on the given mask."""
    return coupled_token_log_probs(MaskedDenoiser(model, MASK, PAD), batch, masked, t, MASK)


def coupled_rows(module: types.ModuleType) -> list[dict]:
    """DiffuCoder's compute_loss against the package's, on a Dream-family model."""
    cls, batch, rows = module.DiffuGRPOTrainer, fixed_batch(), []
    advantages = leave_one_out_advantages(batch.grouped_rewards).reshape(-1)
    for beta in (0.01, 0.0):
        fake = fake_trainer(
            cls,
            ("forward_process", "get_logits", "_get_per_token_logps"),
            args=types.SimpleNamespace(num_iterations=2, gradient_accumulation_steps=1),
            num_iterations=2, epsilon_low=0.5, epsilon_high=0.5, beta=beta, _step=0,
            processing_class=types.SimpleNamespace(mask_token_id=MASK),
        )  # fmt: skip
        student = tiny("dream")
        teacher, reference = tiny("dream", 0.1, 5), tiny("dream", 0.1, 6)
        theirs_model = copy.deepcopy(student)
        ids, seeds = joined(batch)[None], [21, 22]
        with torch.no_grad():
            old = fake._get_per_token_logps(teacher, ids, LENGTH, seeds[:1])
            ref = fake._get_per_token_logps(reference, ids, LENGTH, seeds[:1])
        inputs = {
            "prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
            "completion_ids": batch.responses,
            "completion_mask": torch.ones_like(batch.responses), "mask_seeds": seeds,
            "advantages": advantages, "old_per_token_logps": old.repeat(1, 2, 1),
            "ref_per_token_logps": ref.repeat(1, 2, 1),
        }  # fmt: skip
        theirs = cls.compute_loss(fake, theirs_model, inputs)
        prompt_index = torch.arange(PROMPT + LENGTH) < PROMPT
        _, weights, drawn = fake.forward_process(joined(batch), prompt_index, MASK, seed=seeds[0])
        masked, t = drawn[:, PROMPT:], torch.tensor(1.0 / weights[1])
        logp = our_coupled_logps(student, batch, masked, t)
        with torch.no_grad():
            ours_old = our_coupled_logps(teacher, batch, masked, t)
            ours_ref = our_coupled_logps(reference, batch, masked, t)
        full = torch.ones_like(batch.responses, dtype=torch.bool)
        ours, _ = grpo_token_loss(logp, ours_old, ours_ref, advantages, full, 0.5, beta, True)
        label = f"coupled-GRPO (Dream family, beta_kl {beta})"
        rows.append(differences(label, ours, theirs, student, theirs_model))
    return rows


# ----- main ---------------------------------------------------------------------------------

REFERENCES = {
    "spg": (Path("spg/spg_trainer.py"), "spg_trainer", spg_rows),
    "espo": (Path("espo/espo_trainer.py"), "espo_trainer", espo_rows),
    "diffucoder": (Path("src/open_r1/coupled_grpo.py"), "coupled_grpo", coupled_rows),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spg", type=Path, help="a checkout of facebookresearch/SPG")
    parser.add_argument("--espo", type=Path, help="a checkout of ML-GSAI/ESPO")
    parser.add_argument("--diffucoder", type=Path, help="a checkout of apple/ml-diffucoder")
    parser.add_argument("--out", type=Path, help="JSON record to write")
    args = parser.parse_args(argv)
    chosen = {k: getattr(args, k) for k in REFERENCES if getattr(args, k) is not None}
    if not chosen:
        parser.error("name at least one checkout: --spg, --espo or --diffucoder")
    torch.manual_seed(0)
    record: dict[str, Any] = {"torch": torch.__version__, "references": {}}
    for key, root in chosen.items():
        relative, name, rows = REFERENCES[key]
        try:
            module = load_reference(root / relative, name)
        except FileNotFoundError as err:
            parser.error(f"--{key}: {err} (is {root} a checkout of it?)")
        record["references"][key] = {
            "path": str(root / relative),
            "commit": commit_of(root),
            "rows": rows(module),
        }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
