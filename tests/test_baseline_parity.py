"""Parity of SPG, ESPO and coupled-GRPO with their authors' released loss code.

For each method, on a tiny float64 denoiser and fixed inputs (prompts, completions,
rewards, and the masks our objective draws from a seeded generator), the package's
loss and its gradient must equal the authors' computation to float precision.
The authors' computation is written out below by hand, one completion and one
masked state at a time, from the equations of their code at these commits (read,
not copied, and not imported):

- SPG: facebookresearch/SPG @ a1c712091aee3fde759bbf73b7850546265cd52d,
  ``spg/spg_trainer.py`` (``SPGTrainer.forward_process`` with ``forward_type=
  block_random``, ``_get_per_seq_logps``, ``compute_loss``);
- ESPO: ML-GSAI/ESPO @ b5f2dac4c54073a2f36c00bb28bc754a99730159,
  ``espo/espo_trainer.py`` (``forward_process``, ``ESPOTrainer._get_elbo`` with
  ``reduce_var``, ``_get_elbo_mc``, ``compute_loss``, ``compute_approx_kl`` k2, the
  leave-one-out advantages of ``_generate_and_score_completions``);
- coupled-GRPO: apple/ml-diffucoder @ f735e01376b752b70356efe45192f31499bf30dc,
  ``src/open_r1/coupled_grpo.py`` (``forward_process``, ``selective_log_softmax``,
  ``compute_loss``, the leave-one-out advantages).

Each test prints ``max |loss diff|`` and ``max |grad diff|`` (``pytest -s``); the
figures are recorded in BENCHMARKS.md. Where the reference masks differ by design
(the package never masks prompt padding; its responses are fixed-length, so the
completion mask is all ones in the objectives) the inputs here have no padding,
and a second check runs the loss functions with a ragged completion mask.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from tiltmatch.baselines import group_advantages, leave_one_out_advantages
from tiltmatch.baselines.coupled_grpo import (
    CoupledGRPOObjective,
    CoupledGRPOOptions,
    coupled_masks,
)
from tiltmatch.baselines.diffu_grpo import clip_active
from tiltmatch.baselines.espo import ESPOObjective, ESPOOptions, espo_states
from tiltmatch.baselines.spg import (
    SPGObjective,
    SPGOptions,
    block_states,
    sandwiched_scores,
    spg_loss,
    state_log_probs,
)
from tiltmatch.batch import RolloutBatch
from tiltmatch.models.denoiser import MaskedDenoiser, TinyModelSpec, tiny_denoiser
from tiltmatch.objective import LossInputs, Phase

PAD, MASK, VOCAB = 0, 1, 13
PROMPT, LENGTH = 5, 8
REWARDS = [[1.0, 0.0, 0.5], [0.2, 0.9, 0.2]]  # both signs of A, no flat group
SEED = 11  # the loss's generator: the masks it draws


def tiny(seed: int = 0, family: str = "llada", jitter: float = 0.0) -> PreTrainedModel:
    """A float64 tiny denoiser; ``jitter`` moves every weight by that much noise (another
    policy near this one, so ratios are near 1 but not equal)."""
    spec = TinyModelSpec(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64
    )
    spec = TinyModelSpec(**{**spec.__dict__, "family": family})
    model = tiny_denoiser(VOCAB, spec, seed=0).double()
    if jitter:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(jitter * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def fixed_batch(rewards: list[list[float]] = REWARDS) -> RolloutBatch:
    """Groups of completions of equal-length prompts (no padding), rows prompt by prompt."""
    g = torch.Generator().manual_seed(3)
    groups, size = len(rewards), len(rewards[0])
    prompts = torch.randint(2, VOCAB, (groups, PROMPT), generator=g).repeat_interleave(size, 0)
    responses = torch.randint(2, VOCAB, (groups * size, LENGTH), generator=g)
    flat = torch.tensor(rewards, dtype=torch.float64).reshape(-1)
    return RolloutBatch(prompts, torch.ones_like(prompts), responses, flat, size)


def denoiser(model: PreTrainedModel) -> MaskedDenoiser:
    return MaskedDenoiser(model, MASK, PAD)


def our_loss_and_grads(
    objective, student: PreTrainedModel, teacher=None, reference=None, batch=None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The objective's loss on the fixed batch (masks from ``SEED``) and its gradient."""
    batch = batch or fixed_batch()
    inputs = LossInputs(
        denoiser(student),
        denoiser(teacher if teacher is not None else student),
        batch,
        Phase(),
        torch.Generator().manual_seed(SEED),
        denoiser(reference) if reference is not None else None,
    )
    loss, _ = objective.loss(inputs)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in student.parameters()]


def compare(
    name: str, ours: tuple[torch.Tensor, list[torch.Tensor]], model: PreTrainedModel, ref_loss
) -> None:
    """Backpropagate the reference loss through its own copy of the student, then print and
    check the largest differences of loss and gradient."""
    ref_loss.backward()
    ref_grads = [p.grad for p in model.parameters()]
    loss, grads = ours
    loss_diff = float((loss - ref_loss.detach()).abs())
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(grads, ref_grads, strict=True))
    grad_scale = max(float(b.abs().max()) for b in ref_grads)
    print(
        f"\nparity {name}: max |loss diff| = {loss_diff:.2e}, max |grad diff| = "
        f"{grad_diff:.2e} (loss {float(loss):+.6f}, max |grad| {grad_scale:.2e})"
    )
    assert grad_scale > 1e-6  # a gradient that is there to compare
    assert loss_diff <= 1e-12 * max(1.0, abs(float(loss)))
    assert grad_diff <= 1e-10 * grad_scale


def logits_at_completion(model: PreTrainedModel, prompt, completion, shifted: bool = False):
    """The model's logits at the completion's positions for one prompt + canvas row, as the
    authors' trainers read them (the full sequence through the model, then the last L
    columns; DiffuCoder's Dream-family model reads column c's logits from column c - 1)."""
    seq = torch.cat([prompt, completion])[None]
    logits = model(seq, attention_mask=torch.ones_like(seq)).logits[0]
    if shifted:
        logits = logits[:-1]
    return logits[-completion.shape[0] :]


# ----- SPG ----------------------------------------------------------------------------------


def reference_spg_scores(
    model, batch, prompt_masked, masked, completion_mask, advantages, bound, beta, weight
):
    """SPG's per-completion log-likelihood stand-in, one completion and state at a time.

    Per state: log p and p of each completion token under the state; the ELBO term is
    the mean log p over masked completion tokens (within the completion mask); the
    empirical mask ratio is their count over the completion length. The EUBO: per token,
    the mean over states of ``p^beta 1{masked} / ratio``, then the mean of its log over
    tokens where it is positive, over beta. Positive advantage: the ELBO; otherwise the
    bound (mix: ``w EUBO + (1 - w) ELBO``).
    """
    rows, states, length = masked.shape
    scores = []
    for n in range(rows):
        tokens = batch.responses[n]
        cm = completion_mask[n].double()
        elbo_terms, eubo_inner = [], torch.zeros(length, dtype=torch.float64)
        for j in range(states):
            prompt = batch.prompt_ids[n].masked_fill(prompt_masked[n, j], MASK)
            canvas = tokens.masked_fill(masked[n, j], MASK)
            logits = logits_at_completion(model, prompt, canvas)
            logp = -F.cross_entropy(logits, tokens, reduction="none")
            prob = F.softmax(logits, dim=-1)[torch.arange(length), tokens]
            hit = (canvas == MASK).double() * cm
            elbo_terms.append((logp * hit).sum() / hit.sum())
            ratio = hit.sum() / cm.sum()
            eubo_inner = eubo_inner + prob.pow(beta) * hit / ratio / states
        elbo = torch.stack(elbo_terms).mean()
        support = eubo_inner > 0
        eubo = eubo_inner[support].log().sum() / support.sum() / beta
        negative = {"elbo": elbo, "eubo": eubo, "mix": weight * eubo + (1 - weight) * elbo}
        scores.append(elbo if advantages[n] > 0 else negative[bound])
    return torch.stack(scores)


def reference_spg_loss(scores, advantages, completion_mask):
    """``-sum_o A(o) score(o) |o| / sum_o |o|`` (``|o|``: the completion mask's length)."""
    length = completion_mask.double().sum(dim=1)
    return -(advantages * scores * length).sum() / length.sum()


@pytest.mark.parametrize("bound", ["mix", "eubo", "elbo"])
def test_spg_matches_the_authors_loss(bound: str) -> None:
    beta = {} if bound == "elbo" else {"eubo_beta": 1.5}  # no EUBO, no beta to set
    options = SPGOptions(negative_bound=bound, num_t=2, block_length=4, p_mask_prompt=0.3, **beta)
    student = tiny()
    ours = our_loss_and_grads(SPGObjective(options, MASK), student)
    batch = fixed_batch()
    prompt_masked, masked = block_states(
        batch.prompt_mask, LENGTH, 2, 4, 0.3, torch.Generator().manual_seed(SEED)
    )
    assert prompt_masked.any() and masked.any() and not masked.all()
    model = copy.deepcopy(student)
    model.zero_grad(set_to_none=True)
    advantages = group_advantages(batch.grouped_rewards).reshape(-1)
    full = torch.ones_like(batch.responses, dtype=torch.bool)
    scores = reference_spg_scores(
        model, batch, prompt_masked, masked, full, advantages, bound, 1.5, 0.5
    )
    compare(f"SPG ({bound})", ours, model, reference_spg_loss(scores, advantages, full))


def test_spg_functions_match_the_authors_with_ragged_completions() -> None:
    """With the authors' completion mask (tokens up to the first EOS) and their masking of
    every position after it, the bounds and the length weighting still agree."""
    batch = fixed_batch()
    student = tiny()
    g = torch.Generator().manual_seed(SEED)
    ends = [8, 5, 3, 8, 6, 4]  # completion lengths, EOS included
    completion_mask = torch.arange(LENGTH)[None, :] < torch.tensor(ends)[:, None]
    # The authors' blocks are the completion's (its last one cut at the EOS), and every
    # position after the EOS is masked: the package's states of each row's own length.
    prompts, states = [], []
    for n, end in enumerate(ends):
        prompt, completion = block_states(batch.prompt_mask[n : n + 1], end, 2, 4, 0.15, g)
        prompts.append(prompt)
        states.append(F.pad(completion, (0, LENGTH - end), value=True))
    prompt_masked, masked = torch.cat(prompts), torch.cat(states)
    advantages = group_advantages(batch.grouped_rewards).reshape(-1)
    logp = state_log_probs(denoiser(student), batch, prompt_masked, masked, MASK)
    scores = sandwiched_scores(logp, masked, completion_mask, advantages > 0, "mix", 0.5, 1.0)
    loss = spg_loss(scores, advantages, completion_mask.sum(dim=1))
    loss.backward()
    ours = (loss.detach(), [p.grad.clone() for p in student.parameters()])
    model = copy.deepcopy(student)
    model.zero_grad(set_to_none=True)
    ref = reference_spg_scores(
        model, batch, prompt_masked, masked, completion_mask, advantages, "mix", 1.0, 0.5
    )
    compare(
        "SPG (mix, ragged completions)",
        ours,
        model,
        reference_spg_loss(ref, advantages, completion_mask),
    )


# ----- ESPO ---------------------------------------------------------------------------------


def reference_espo_elbo(model, batch, masked, counts, coupled: bool):
    """ESPO's ELBO of each completion from one masked state: each masked token's
    cross-entropy over the mask ratio ``x / (L + 1)``; with the coupling, each other token's
    cross-entropy (its own pass, the complement masked) over ``L / (L + 1) - x / (L + 1)``,
    and the per-token losses halved; the ELBO is minus their sum."""
    rows, length = masked.shape
    out = []
    for n in range(rows):
        tokens, m = batch.responses[n], masked[n]
        ratio = float(counts[n]) / (length + 1)
        per_token = torch.zeros(length, dtype=torch.float64)
        ce = F.cross_entropy(
            logits_at_completion(model, batch.prompt_ids[n], tokens.masked_fill(m, MASK)),
            tokens,
            reduction="none",
        )
        per_token[m] = ce[m] / ratio
        if coupled:
            ce2 = F.cross_entropy(
                logits_at_completion(model, batch.prompt_ids[n], tokens.masked_fill(~m, MASK)),
                tokens,
                reduction="none",
            )
            per_token[~m] = ce2[~m] / (length / (length + 1) - ratio)
            per_token = per_token / 2
        out.append(-per_token.sum())
    return torch.stack(out)


def reference_espo_loss(elbo, old, ref, rewards, length, eps_low, eps_high, beta):
    """Leave-one-out advantages; ratio ``exp((ELBO - ELBO_old) / L)`` clipped to
    ``[1 - eps_low, 1 + eps_high]``; minus the mean of ``min(ratio A, clipped A)``; plus
    ``beta`` times the k2 KL ``(ELBO - ELBO_ref)^2 / 2`` summed and divided by ``N L``."""
    size = rewards.shape[1]
    baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (size - 1)
    adv = (rewards - baseline).reshape(-1)
    rows = adv.shape[0]
    coef = torch.exp((elbo - old) / length)
    clipped = torch.clamp(coef, 1 - eps_low, 1 + eps_high)
    loss = -torch.min(coef * adv, clipped * adv).sum() / rows
    if beta:
        loss = loss + beta * ((elbo - ref) ** 2 / 2).sum() / (rows * length)
    return loss, coef, adv


@pytest.mark.parametrize(
    ("coupled", "eps", "beta", "jitter"),
    [
        (True, 0.2, 0.01, 0.1),  # the authors' defaults, teacher != student
        (False, 0.2, 0.0, 0.1),  # no coupling, no KL
        (True, 0.0, 3e-3, 0.0),  # the Countdown recipe: eps 0, ratio exactly 1 (ties)
    ],
)
def test_espo_matches_the_authors_loss(coupled: bool, eps: float, beta: float, jitter: float):
    options = ESPOOptions(num_mc=2, coupled=coupled, clip_epsilon=eps, beta_kl=beta)
    student = tiny()
    teacher = tiny(seed=5, jitter=jitter) if jitter else student
    reference = tiny(seed=6, jitter=0.1)
    objective = ESPOObjective(options, MASK)
    ours = our_loss_and_grads(objective, student, teacher, reference if beta else None)
    batch = fixed_batch()
    g = torch.Generator().manual_seed(SEED)
    states = [espo_states(batch.responses.shape[0], LENGTH, g) for _ in range(2)]
    model = copy.deepcopy(student)
    model.zero_grad(set_to_none=True)

    def mc_elbo(m):
        return torch.stack([reference_espo_elbo(m, batch, s, x, coupled) for s, x in states]).mean(
            0
        )

    elbo = mc_elbo(model)
    with torch.no_grad():
        old = mc_elbo(teacher)
        ref = mc_elbo(reference) if beta else None
    loss, coef, adv = reference_espo_loss(
        elbo, old, ref, batch.grouped_rewards, LENGTH, eps, eps, beta
    )
    if jitter:  # both branches of the clip are exercised
        clipped = clip_active(coef.detach(), adv, eps)
        assert clipped.any() and not clipped.all()
    compare(f"ESPO (coupled={coupled}, eps={eps}, beta_kl={beta})", ours, model, loss)


# ----- coupled-GRPO -------------------------------------------------------------------------


def reference_coupled_logps(model, batch, masked, t: float, shifted: bool):
    """DiffuCoder's token log-probabilities: three versions of each completion (all masked;
    the drawn positions masked; the others masked); per token, half the sum of the first
    version's log p and, where drawn, the second's times ``1/t``, else the third's times
    ``1/(1-t)``."""
    rows, length = masked.shape
    out = []
    for n in range(rows):
        tokens, m = batch.responses[n], masked[n]
        versions = [torch.ones_like(m), m, ~m]
        logps = [
            F.log_softmax(
                logits_at_completion(
                    model, batch.prompt_ids[n], tokens.masked_fill(v, MASK), shifted
                ),
                dim=-1,
            )[torch.arange(length), tokens]
            for v in versions
        ]
        weighted = torch.where(m, logps[1] * (1 / t), logps[2] * (1 / (1 - t)))
        out.append((logps[0] + weighted) / 2)
    return torch.stack(out)


def reference_coupled_loss(logp, old, ref, rewards, completion_mask, eps, beta):
    """Leave-one-out advantages; per token ``-min(ratio A, clip(ratio) A)`` plus ``beta``
    times the k3 KL; the sum over completion tokens over their count."""
    size = rewards.shape[1]
    adv = (rewards - (rewards.sum(1, keepdim=True) - rewards) / (size - 1)).reshape(-1, 1)
    coef = torch.exp(logp - old)
    per_token = -torch.min(coef * adv, torch.clamp(coef, 1 - eps, 1 + eps) * adv)
    if beta:
        per_token = per_token + beta * (torch.exp(ref - logp) - (ref - logp) - 1)
    cm = completion_mask.double()
    return (per_token * cm).sum() / cm.sum().clamp(min=1.0), coef, adv


@pytest.mark.parametrize(("family", "beta"), [("llada", 0.01), ("llada", 0.0), ("dream", 0.01)])
def test_coupled_grpo_matches_the_authors_loss(family: str, beta: float) -> None:
    options = CoupledGRPOOptions(clip_epsilon=0.5, beta_kl=beta)
    student = tiny(family=family)
    teacher = tiny(seed=5, family=family, jitter=0.1)
    reference = tiny(seed=6, family=family, jitter=0.1)
    objective = CoupledGRPOObjective(options, MASK)
    ours = our_loss_and_grads(objective, student, teacher, reference if beta else None)
    batch = fixed_batch()
    rows = batch.responses.shape[0]
    masked, t = coupled_masks(rows, LENGTH, 0.2, 0.8, torch.Generator().manual_seed(SEED))
    assert 0.2 <= float(t) <= 0.8 and masked.any() and not masked.all()
    shifted = family == "dream"  # DiffuCoder (a Dream model) reads logits one column back
    model = copy.deepcopy(student)
    model.zero_grad(set_to_none=True)
    logp = reference_coupled_logps(model, batch, masked, float(t), shifted)
    with torch.no_grad():
        old = reference_coupled_logps(teacher, batch, masked, float(t), shifted)
        ref = reference_coupled_logps(reference, batch, masked, float(t), shifted)
    full = torch.ones_like(batch.responses, dtype=torch.bool)
    loss, coef, adv = reference_coupled_loss(logp, old, ref, batch.grouped_rewards, full, 0.5, beta)
    clipped = clip_active(coef.detach(), adv.expand_as(coef), 0.5)
    assert clipped.any() and not clipped.all()
    compare(f"coupled-GRPO ({family}, beta_kl={beta})", ours, model, loss)


def test_leave_one_out_is_the_authors_baseline() -> None:
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    size = rewards.shape[1]
    theirs = rewards - (rewards.sum(1, keepdim=True) - rewards) / (size - 1)
    torch.testing.assert_close(leave_one_out_advantages(rewards), theirs, rtol=0, atol=1e-15)
    torch.testing.assert_close(
        leave_one_out_advantages(rewards), group_advantages(rewards) * size / (size - 1)
    )
    with pytest.raises(ValueError, match="at least 2 completions per prompt"):
        leave_one_out_advantages(rewards[:, :1])


# ----- benchmarks/baseline_parity.py: the authors' own code, from checkouts the user names -----


def test_reference_runner_imports_under_inert_stand_ins(tmp_path, capsys) -> None:
    """The runner imports the authors' modules with inert ``trl`` / ``wandb`` names and puts
    the real modules back; without a checkout it says what to pass."""
    import sys

    from conftest import load_benchmark

    runner = load_benchmark("baseline_parity", "tiltmatch_baseline_parity")
    module = tmp_path / "their_trainer.py"
    module.write_text(
        "import wandb\n"
        "from trl.trainer.grpo_trainer import GRPOTrainer, nanmax\n"
        "from trl.extras.profiling import profiling_decorator\n"
        "class Theirs(GRPOTrainer):\n"
        "    @profiling_decorator\n"
        "    def top(self, t):\n"
        "        return nanmax(t)\n"
    )
    before = sys.modules.get("trl")
    loaded = runner.load_reference(module, "their_trainer")
    assert sys.modules.get("trl") is before
    nan = float("nan")
    assert float(loaded.Theirs().top(torch.tensor([1.0, nan, 3.0]))) == 3.0
    with pytest.raises(SystemExit) as no_checkout:
        runner.main([])
    assert no_checkout.value.code == 2
    with pytest.raises(SystemExit) as missing:
        runner.main(["--spg", str(tmp_path)])
    assert missing.value.code == 2
    assert "--spg: no reference module at" in capsys.readouterr().err
