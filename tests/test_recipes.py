"""Parity of configs/llada with the published DTM recipes (METHOD.md section 6).

Each recipe is checked against a statement of the published recipe written out by
hand below (not derived from our code): the table's values, the target formula
``target = c mu_ref + (e^{h r} - c) e_x`` with ``b = 0``, the reward values, and the
shape of a micro-batch (single completions drawn without replacement across the
accumulation window). The scorers are checked on hand-written tricky outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import needs_shared_data

from tiltmatch.batch import RolloutBatch
from tiltmatch.config import ConfigError, build_config
from tiltmatch.dtm.loss import dtm_loss
from tiltmatch.dtm.objective import DTMObjective
from tiltmatch.dtm.states import sar_states
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example
from tiltmatch.training.rollouts import PromptPool, ReplayBuffer
from tiltmatch.training.runner import build_trainer

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "llada"

# -- the published recipes, written out by hand from METHOD.md section 6 --------------------

COMMON = {
    "lora": {"r": 128, "alpha": 64.0, "dropout": 0.05},
    "model": {"dtype": "bfloat16", "load_in_4bit": True},
    "dtm": {"c": 1.0, "baseline": "none", "states": "sar", "sar_block_length": 32},
    "sampler": {"steps": 128, "block_length": 32, "remasking": "low_confidence"},
    "train": {"adam_beta1": 0.9, "adam_beta2": 0.99, "weight_decay": 0.1},
}
PUBLISHED = {
    "sudoku": {
        "dtm": {"h": 5.0, "a_end": 100.0, "steps_per_h": 256, "teacher_update": "student"},
        "train": {
            "learning_rate": 3e-6,
            "final_learning_rate": 1e-6,
            "warmup_ratio": 0.05,
            "decay_fraction": 0.1,
            "num_generations": 1,
            "buffer_prompts": 80,
            "refresh_prompts": 20,
            "refresh_every": 32,
            "micro_batch": "completions",
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 16,
            "max_grad_norm": 1.0,
            "reward_scale": 2.0,  # 2 x cell accuracy over blanks
        },
        "sampler": {"temperature": 0.0},
        "eval_split": "test_split_new",
    },
    "countdown": {
        "dtm": {
            "h": 6.0,
            "a_end": 100.0,
            "steps_per_h": 1200,
            "teacher_update": "ema",
            "ema_decay": 0.95,
            "ema_student": True,
        },
        "train": {
            "learning_rate": 4e-6,
            "final_learning_rate": 2e-6,
            "warmup_ratio": 0.05,
            "decay_fraction": 0.1,
            "num_generations": 6,
            "buffer_prompts": 40,
            "refresh_prompts": 10,
            "refresh_every": 25,
            "micro_batch": "completions",
            "per_device_train_batch_size": 12,
            "gradient_accumulation_steps": 8,
            "max_grad_norm": 2.0,
            "reward_scale": 1.0,
        },
        "sampler": {"temperature": 1.0},
        "eval_split": "published",
    },
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_recipe_matches_the_published_table(name: str) -> None:
    config = build_config(RECIPES / f"{name}.yaml")
    want = PUBLISHED[name]
    assert config.lora is not None
    for section in ("lora", "model", "dtm", "sampler", "train"):
        got = getattr(config, section)
        expected = {**COMMON.get(section, {}), **want.get(section, {})}
        for key, value in expected.items():
            assert getattr(got, key) == value, f"{name}: {section}.{key}"
    assert config.dtm.schedule == "fixed"
    assert config.eval.split == want["eval_split"] and config.eval.temperature == 0.0
    task = get_task(config.task, **config.task_options)
    assert task.response_length == 256


def test_every_llada_recipe_draws_single_completions() -> None:
    for path in sorted(RECIPES.glob("*.yaml")):
        config = build_config(path)
        if config.method != "dtm":  # a baseline's advantages need whole groups
            continue
        assert config.train.micro_batch == "completions", path.name
        assert config.train.per_device_train_batch_size is not None, path.name


# -- rewards -----------------------------------------------------------------------------------

CD = Example(prompt="", data={"numbers": (3, 5, 7), "target": 22})


def test_countdown_recipe_reward_values() -> None:
    """Published: 1.0 correct; 0.1 tag present but wrong / wrong numbers / not evaluable;
    0.0 without a tag. Accuracy stays 0/1."""
    config = build_config(RECIPES / "countdown.yaml")
    task = get_task(config.task, **config.task_options)
    cases = {
        "<reasoning>15+7</reasoning><answer>3*5+7</answer>": 1.0,
        "<answer>7 + 5 \\times 3 = 22</answer>": 1.0,
        "<answer>3+5+7</answer>": 0.1,  # right numbers, wrong value
        "<answer>3*5+8</answer>": 0.1,  # wrong numbers
        "<answer>3*5*7*1</answer>": 0.1,  # an extra number
        "<answer>7/(5-5)</answer>": 0.1,  # not evaluable (and wrong numbers)
        "<answer>I cannot solve it</answer>": 0.1,  # not an expression at all
        "<answer></answer>": 0.1,  # an empty tag is still a tag
        "<answer>3*5+7": 1.0,  # an unclosed final tag counts
        "3*5+7": 0.0,  # no tag
        "<reasoning>3*5+7 = 22</reasoning>": 0.0,
        "": 0.0,
    }
    for response, reward in cases.items():
        assert task.reward(response, CD) == reward, response
    metrics = task.metrics(list(cases), [CD] * len(cases))
    assert metrics["accuracy"] == pytest.approx(3 / len(cases))
    # The task's default (d1's) scheme is unchanged: wrong numbers 0, right numbers 0.1.
    d1 = get_task("countdown", format="chat")
    assert d1.reward("<answer>3*5+8</answer>", CD) == 0.0
    assert d1.reward("<answer>3+5+7</answer>", CD) == 0.1
    with pytest.raises(ValueError, match="tag_reward"):
        get_task("countdown", format="char", tag_reward=0.1)
    with pytest.raises(ValueError, match="tag_reward"):
        get_task("countdown", format="chat", tag_reward=1.0)


def test_countdown_scorer_reads_latex_and_typographic_operators() -> None:
    task = get_task("countdown", format="chat")
    ex = Example(prompt="", data={"numbers": (6, 4, 3), "target": 8})  # 6 * 4 / 3
    for answer in (
        "6*4/3",
        "6 \\times 4 \\div 3",
        "$6 \\times 4 \\div 3$",
        "6 \\cdot 4 / 3 = 8",
        "6 × 4 ÷ 3",
        "6·4÷3",
        "(6\\times4)\\div3",
    ):
        assert task.reward(f"<answer>{answer}</answer>", ex) == 1.0, answer
    for answer, reward in (
        ("6 \\times 4 \\div 2", 0.0),  # 2 is not one of the numbers
        ("6 \\times 4 + 3", 0.1),  # right numbers, 27
        ("6 x 4 / 3", 0.0),  # a letter x is not an operator
        ("6 ** 4 / 3", 0.0),
    ):
        assert task.reward(f"<answer>{answer}</answer>", ex) == reward, answer


def test_sudoku_scorer_reads_a_grid_outside_the_tags() -> None:
    task = get_task("sudoku", format="chat")
    puzzle, solution = "1030040201400300", "1234341221434321"
    blanks = tuple(i for i, ch in enumerate(puzzle) if ch == "0")
    ex = Example(prompt=puzzle, data={"puzzle": puzzle, "solution": solution, "blanks": blanks})
    rows = "\n".join(solution[i : i + 4] for i in range(0, 16, 4))
    cases = {
        f"<answer>{solution}</answer>": 1.0,
        f"The grid is {solution}.": 1.0,  # no tag at all
        f"<answer>\n</answer>\n{solution}": 1.0,  # written after an empty tag
        f"<answer>see below</answer> {solution}": 1.0,  # the tag holds no digit
        f"Solved:\n{rows}\n": 1.0,  # four rows of four
        f"puzzle {puzzle}, solution {solution}": 1.0,  # the last grid counts
        f"solution {solution}, puzzle {puzzle}": 0.0,  # ... so the puzzle itself scores 0
        f"<answer>{puzzle}</answer> {solution}": 0.0,  # a tag with digits wins
        f"{solution}1": 0.0,  # 17 digits are not a grid
        "no grid here 1234": 0.0,
    }
    for response, reward in cases.items():
        assert task.reward(response, ex) == reward, response
    strict = get_task("sudoku", format="chat", grid_outside_tags=False)
    assert strict.reward(f"The grid is {solution}.", ex) == 0.0
    with pytest.raises(ValueError, match="grid_outside_tags"):
        get_task("sudoku", grid_outside_tags="yes")


# -- the target formula -----------------------------------------------------------------------


def _published_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    x: torch.Tensor,
    covered: torch.Tensor,
    rewards: torch.Tensor,
    h: float,
    c: float,
) -> torch.Tensor:
    """The published c-DTM loss of a micro-batch, written from its statement.

    target = c * softmax(teacher) + (exp(h r) - c) * onehot(x) (b = 0); loss per
    covered position = -sum_v target_v log softmax(student)_v; each row's covered
    positions are averaged, then rows are averaged.
    """
    total = torch.zeros((), dtype=torch.float64)
    for b in range(x.shape[0]):
        row = torch.zeros((), dtype=torch.float64)
        count = 0
        for i in range(x.shape[1]):
            if not covered[b, i]:
                continue
            teacher = torch.softmax(teacher_logits[b, i], -1)
            onehot = torch.zeros_like(teacher)
            onehot[x[b, i]] = 1.0
            target = c * teacher + (math.exp(h * float(rewards[b])) - c) * onehot
            row = row - (target * torch.log_softmax(student_logits[b, i], -1)).sum()
            count += 1
        total = total + row / count
    return total / x.shape[0]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_target_formula_matches_the_published_one(name: str) -> None:
    config = build_config(RECIPES / f"{name}.yaml")
    g = torch.Generator().manual_seed(0)
    batch, length, vocab = 6, 64, 7
    x = torch.randint(0, vocab - 1, (batch, length), generator=g)
    # Rewards as the recipe's task produces them: cell accuracy x 2, or {1, 0.1, 0}.
    if name == "sudoku":
        rewards = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.0]) * config.train.reward_scale
    else:
        rewards = torch.tensor([1.0, 0.1, 0.0, 1.0, 0.1, 0.1])
    objective = DTMObjective(config.dtm, mask_token_id=vocab - 1)
    h = config.dtm.h
    weights = objective.sample_weights(rewards, rewards.view(-1, 1), h)
    assert torch.allclose(weights, torch.exp(h * rewards))  # b = 0: no baseline
    states = sar_states(x, vocab - 1, config.dtm.sar_block_length, g)
    student = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64)
    teacher = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64)
    ours, stats = dtm_loss(student, x, states, weights.double(), config.dtm.c, teacher)
    published = _published_loss(student, teacher, x, states.loss_mask, rewards, h, config.dtm.c)
    assert torch.allclose(ours, published, rtol=1e-6)  # weights are float32
    assert stats.clamp_rate == 0.0  # c = 1, b = 0, r >= 0: no coefficient is negative
    # Only positions of the active block are covered (SAR-aligned states, block 32).
    for b in range(batch):
        blocks = {int(i) // 32 for i in states.loss_mask[b].nonzero().flatten()}
        assert len(blocks) == 1


# -- the micro-batch ------------------------------------------------------------------------------


def _buffer(prompts: int, group: int) -> ReplayBuffer:
    from tiltmatch.tasks.maze.task import MazeTask

    pool = PromptPool(MazeTask().examples("train", 32, 0), seed=0)
    buffer = ReplayBuffer(pool, prompts, group, pad_token_id=0)

    def fill(examples: list[Example]) -> RolloutBatch:
        n = len(examples) * group
        ids = torch.arange(n).view(-1, 1) + 1  # one prompt token naming the row
        responses = torch.arange(n).view(-1, 1).repeat(1, 4)
        return RolloutBatch(ids, torch.ones_like(ids), responses, torch.rand(n), group)

    buffer.rebuild(fill)
    return buffer


def test_completion_micro_batches_are_drawn_without_replacement_across_the_window() -> None:
    """The countdown shape: 40 prompts x 6 completions; 8 micro-batches of 12 rows."""
    buffer = _buffer(40, 6)
    batches = buffer.sample_completions(12, 8, torch.Generator().manual_seed(1))
    assert len(batches) == 8
    rows = [int(r) for b in batches for r in b.responses[:, 0]]
    assert all(b.responses.shape == (12, 4) for b in batches)
    # Each row carries its whole group's rewards (a baseline never sees a group of one).
    whole = buffer.data.grouped_rewards
    for b in batches:
        assert torch.equal(b.group_rewards(), whole[b.responses[:, 0] // 6])
    assert len(set(rows)) == 96  # no completion twice in one accumulation window
    # Single completions, not whole groups: some prompt's group is split across micro-batches
    # and some micro-batch holds completions of more than two prompts.
    groups = [{r // 6 for r in b.responses[:, 0].tolist()} for b in batches]
    assert max(len(gs) for gs in groups) > 2
    owners = {}
    for k, gs in enumerate(groups):
        for prompt in gs:
            owners.setdefault(prompt, set()).add(k)
    assert any(len(ks) > 1 for ks in owners.values())
    # The prompt rows travel with their completions.
    for b in batches:
        assert torch.equal(b.prompt_ids[:, -1] - 1, b.responses[:, 0])
    with pytest.raises(ValueError, match="distinct rows"):
        buffer.sample_completions(31, 8, torch.Generator())


def test_trainer_micro_batches_follow_the_config(tiny_overrides, tmp_path) -> None:
    completions = [
        *tiny_overrides,
        "train.num_generations=3",
        "train.micro_batch=completions",
        "train.per_device_train_batch_size=5",
        "train.gradient_accumulation_steps=2",
    ]
    trainer, _, _ = build_trainer(build_config(overrides=completions), tmp_path / "c")
    trainer.buffer.rebuild(trainer.teacher_rollouts)
    batches = list(trainer._micro_batches())
    assert [b.responses.shape[0] for b in batches] == [5, 5]
    # The default ("prompts") draws whole groups one micro-batch at a time, with exactly the
    # generator calls it always made (the benchmarks' and the demo's figures depend on it).
    prompts = [*tiny_overrides, "train.gradient_accumulation_steps=2"]
    trainer, _, _ = build_trainer(build_config(overrides=prompts), tmp_path / "p")
    trainer.buffer.rebuild(trainer.teacher_rollouts)
    state = trainer.generator.get_state()
    got = [b.responses for b in trainer._micro_batches()]
    trainer.generator.set_state(state)
    old = [trainer.buffer.sample(2, trainer.generator).responses for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(got, old, strict=True))
    assert all(b.shape[0] == 2 * trainer.config.train.num_generations for b in got)


def test_micro_batch_config_refusals(tiny_overrides) -> None:
    base = [*tiny_overrides, "train.micro_batch=completions"]
    cases = {
        "needs per_device_train_batch_size": [],
        "exceeds the buffer": ["train.per_device_train_batch_size=9"],  # 9 > 4 x 2
        "method dtm only": ["train.per_device_train_batch_size=2", "method=diffu-grpo"],
        "leave_one_out needs": [
            "train.per_device_train_batch_size=2",
            "train.num_generations=1",
            "dtm.baseline=leave_one_out",
        ],
    }
    for message, extra in cases.items():
        with pytest.raises(ConfigError, match=message):
            build_config(overrides=[*base, *extra])
    # Per-group DTM statistics read each row's whole group, so completions take every one.
    for extra in ("dtm.baseline=mean", "dtm.baseline=leave_one_out", "dtm.self_normalise=true"):
        build_config(overrides=[*base, "train.per_device_train_batch_size=2", extra])
    # With whole prompt groups, per_device_train_batch_size still counts completions (TRL's
    # meaning, issue 22): it fixes prompts_per_batch, and must agree with one that is set.
    with pytest.raises(ConfigError, match="prompts_per_batch 2 and per_device_train_batch_size"):
        build_config(overrides=[*tiny_overrides, "train.per_device_train_batch_size=2"])
    with pytest.raises(ConfigError, match="3 is not a multiple of num_generations 2"):
        build_config(overrides=[*tiny_overrides, "train.per_device_train_batch_size=3"])
    fits = build_config(overrides=[*tiny_overrides, "train.per_device_train_batch_size=4"])
    assert fits.train.prompts_per_batch == 2
    with pytest.raises(ConfigError, match="ema_student needs"):
        build_config(overrides=[*tiny_overrides, "dtm.ema_student=true"])


# -- EMA at the phase boundary -------------------------------------------------------------------


@pytest.mark.parametrize("ema_student", [False, True])
def test_ema_phase_boundary(tiny_overrides, tmp_path, ema_student: bool) -> None:
    """Published Countdown: at a boundary student and teacher both take the EMA weights."""
    overrides = [
        *tiny_overrides,
        "dtm.teacher_update=ema",
        "dtm.ema_decay=0.5",
        f"dtm.ema_student={str(ema_student).lower()}",
        "dtm.a_end=2",  # one stage of 4 updates
    ]
    trainer, _, _ = build_trainer(build_config(overrides=overrides), tmp_path)
    start = {k: v.clone() for k, v in trainer.pair.student.state_dict().items()}
    trajectory = []
    original = trainer.pair.after_update

    def record() -> None:
        trajectory.append({k: v.clone() for k, v in trainer.pair.student.state_dict().items()})
        original()

    trainer.pair.after_update = record  # type: ignore[method-assign]
    trainer.train()
    assert len(trajectory) == 4
    ema = {k: v.clone() for k, v in start.items()}
    for weights in trajectory:  # EMA of the student, update by update, from the stage start
        for k in ema:
            if ema[k].is_floating_point():
                ema[k] = 0.5 * ema[k] + 0.5 * weights[k]
    teacher = trainer.pair.teacher.state_dict()
    student = trainer.pair.student.state_dict()
    for k, v in ema.items():
        if v.is_floating_point():
            assert torch.allclose(teacher[k], v, atol=1e-6), k
            expected = v if ema_student else trajectory[-1][k]
            assert torch.allclose(student[k], expected, atol=1e-6), k


def test_lora_pair_ema_student() -> None:
    pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiltmatch.training.lora import STUDENT, TEACHER, LoRAPair

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    cfg.is_causal = False
    from tiltmatch.config import LoRAConfig

    settings = LoRAConfig(r=2, alpha=4.0, dropout=0.0)
    for ema_student in (False, True):
        pair = LoRAPair(
            LlamaForCausalLM(cfg), 31, 0, settings, ema_decay=0.5, ema_student=ema_student
        )
        with torch.no_grad():
            for p in pair.trainable_parameters():
                p.add_(1.0)
        pair.after_update()  # EMA = 0.5 * start + 0.5 * (start + 1)
        expected = {k: v.detach().clone() - 0.5 for k, v in pair._params[STUDENT].items()}
        pair.refresh_teacher()
        for k, v in expected.items():
            assert torch.allclose(pair._params[TEACHER][k], v)
            want = v if ema_student else v + 0.5
            assert torch.allclose(pair._params[STUDENT][k].detach(), want)


# -- training data ---------------------------------------------------------------------------------


@needs_shared_data("countdown/test.jsonl")
def test_countdown_training_prompts_follow_the_published_distribution() -> None:
    from tiltmatch.data import shared_data_dir

    rows = [
        json.loads(line)
        for line in (shared_data_dir() / "countdown/test.jsonl").read_text().splitlines()
    ]
    numbers = [[int(v) for v in r["input"].split(",")] for r in rows]
    targets = [int(r["output"]) for r in rows]
    # The published test file: three numbers in 1..100, targets in 1..100.
    assert {len(n) for n in numbers} == {3}
    assert min(min(n) for n in numbers) == 1 and max(max(n) for n in numbers) == 100
    assert min(targets) >= 1 and max(targets) == 100
    config = build_config(RECIPES / "countdown.yaml")
    task = get_task(config.task, **config.task_options)
    train = task.examples(config.train.train_split, 500, config.seed)
    assert all(len(e.data["numbers"]) == 3 for e in train)
    assert all(1 <= v <= 100 for e in train for v in e.data["numbers"])
    assert all(1 <= e.data["target"] <= 100 for e in train)
    assert max(e.data["target"] for e in train) > 90  # the whole range is used
    assert all(e.reference is not None for e in train)  # every target is reachable


def test_small_benchmark_countdown_options_are_pinned() -> None:
    """The benchmark's countdown keeps single-digit numbers and targets <= 100 (its figures
    in BENCHMARKS.md were made with them), whatever the task defaults."""
    from tiltmatch.experiments.base_models import RECIPES as BASES

    options = BASES["countdown"].task_options
    assert options == {"format": "char", "max_number": 9, "max_target": 100, "response_length": 12}
    task = get_task("countdown", **options)
    assert (task.min_number, task.max_number, task.max_target) == (1, 9, 100)
    assert task.tag_reward is None and task.right_numbers_reward == 0.1
