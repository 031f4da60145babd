"""Countdown: hand-checked rewards, the solver, splits, shared data and demonstrations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import needs_shared_data

from tiltmatch.data import DatasetError
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.tasks import Example, get_task
from tiltmatch.tasks.arith import evaluate_expression
from tiltmatch.tasks.countdown import (
    CountdownTask,
    all_expressions,
    instance_key,
    is_held_out,
    random_instance,
    solve,
)


def _example(numbers: tuple[int, ...], target: int) -> Example:
    return Example(prompt="", data={"numbers": numbers, "target": target})


needs_data = needs_shared_data("countdown/test.jsonl")

EX = _example((3, 5, 7), 22)  # 3*5+7 = 22


@pytest.mark.parametrize(
    ("response", "reward"),
    [
        ("3*5+7", 1.0),
        ("7+5*3", 1.0),
        ("(7+5)*3-14", 0.0),  # an extra number
        ("3*5+7+0", 0.0),  # an extra zero is still an extra number
        ("3+5+7", 0.1),  # right numbers, wrong value
        ("7/(5-5)", 0.0),  # wrong multiset even though it divides by zero
        ("3*7+1", 0.0),  # wrong numbers, right value
        ("15+7", 0.0),  # 3*5 folded into a literal: wrong numbers
        ("3*5", 0.0),  # a number missing
        ("3*5+7)", 0.0),  # unparseable
        ("3**5+7", 0.0),
        ("hello", 0.0),
        ("", 0.0),
        ("3*5+?", 0.0),  # a mask left in the response decodes as '?'
        ("-(3-5)*7+8", 0.0),  # 8 is not given
        ("-3+5*7-10", 0.0),
    ],
)
def test_char_rewards(response: str, reward: float) -> None:
    assert CountdownTask().reward(response, EX) == reward


def test_division_by_zero_with_the_right_numbers_scores_the_format_reward() -> None:
    ex = _example((4, 4, 9), 1)
    assert CountdownTask().reward("9/(4-4)", ex) == 0.1
    assert CountdownTask().reward("(9-4)/4", ex) == 0.1  # 5/4: not the target
    assert CountdownTask().reward("4/4", ex) == 0.0  # 9 unused


def test_repeated_numbers_count_as_a_multiset() -> None:
    ex = _example((6, 6, 2), 18)
    task = CountdownTask()
    assert task.reward("6+6*2", ex) == 1.0
    assert task.reward("6*2+6", ex) == 1.0
    assert task.reward("6*6/2", ex) == 1.0
    assert task.reward("6+2*2", ex) == 0.0  # 6 once, 2 twice


def test_fractional_intermediate_values_count() -> None:
    ex = _example((3, 4, 6), 8)  # 6/(3/4) = 8 passes through the fraction 3/4
    assert CountdownTask().reward("6/(3/4)", ex) == 1.0
    assert CountdownTask().reward("6/3/4", ex) == 0.1  # 1/2: precedence matters


def test_chat_rewards_read_the_last_answer_tag() -> None:
    task = CountdownTask(format="chat")
    assert task.reward("<reasoning>3*5 is 15, plus 7</reasoning>\n<answer>3*5+7</answer>", EX) == 1
    assert task.reward("<answer>3+5+7</answer> then <answer> 3*5+7 = 22 </answer>", EX) == 1.0
    assert task.reward("<answer>3*5+7=22</answer>", EX) == 1.0
    assert task.reward("<answer>(3*5)+7</answer>", EX) == 1.0
    assert task.reward("<answer>3*5+7</answer><answer>3+5+7</answer>", EX) == 0.1
    assert task.reward("<reasoning>3*5+7</reasoning>", EX) == 0.0  # no answer tag
    assert task.reward("3*5+7", EX) == 0.0
    assert task.reward("<answer>3 × 5 + 7</answer>", EX) == 1.0  # typographic operators read
    assert task.reward("<answer>x = 3*5+7</answer>", EX) == 0.0


def test_metrics() -> None:
    task = CountdownTask()
    out = task.metrics(["3*5+7", "3+5+7", "junk", "7+3*5"], [EX] * 4)
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["reward"] == pytest.approx((1 + 0.1 + 0 + 1) / 4)


def test_solver_finds_every_rendering_and_each_one_checks() -> None:
    found = solve((3, 5, 7), 22)
    assert "3*5+7" in found and "7+5*3" in found
    assert found == sorted(found, key=lambda t: (len(t), t))  # shortest first
    for text in found:
        value, numbers = evaluate_expression(text)
        assert value == 22 and sorted(numbers) == [3, 5, 7]
    assert solve((1, 1, 1), 100) == []
    # Every expression over the numbers renders to a string that evaluates to its value.
    for text, value in all_expressions((2, 3, 9)).items():
        result = evaluate_expression(text)
        assert result.value == value and sorted(result.numbers) == [2, 3, 9]


def test_solver_handles_fractional_intermediates() -> None:
    assert "6/(3/4)" in solve((3, 4, 6), 8)
    assert "6/(1-3/4)" in solve((6, 1, 3, 4), 24)  # the enumeration is not limited to three


@needs_data
def test_published_set_loads_and_every_row_is_solvable() -> None:
    task = CountdownTask()
    examples = task.examples("published")
    assert len(examples) == 256
    assert examples[0].prompt == "30,100,93=23" and examples[0].data["target"] == 23
    unsolvable = [e.prompt for e in examples if e.reference is None]
    assert unsolvable == []
    for e in examples:
        assert task.reward(e.reference or "", e) == 1.0
    assert task.examples("published", n=10) == examples[:10]


def test_jsonl_path_and_missing_field(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"input": "3,5,7", "output": "22"}\n{"input": "2,4,6", "output": 48}\n')
    examples = CountdownTask().examples(str(good))
    assert [e.data["target"] for e in examples] == [22, 48]
    assert examples[1].data["numbers"] == (2, 4, 6)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "3,5,7", "output": "22"}\n{"input": "2,4,6"}\n')
    with pytest.raises(DatasetError, match="'output'"):
        CountdownTask().examples(str(bad))
    junk = tmp_path / "junk.jsonl"
    junk.write_text(json.dumps({"input": "3,five,7", "output": "22"}) + "\n")
    with pytest.raises(DatasetError, match="'input'"):
        CountdownTask().examples(str(junk))
    with pytest.raises(DatasetError, match="not found"):
        CountdownTask().examples(str(tmp_path / "absent.jsonl"))
    with pytest.raises(ValueError, match="unknown countdown split"):
        CountdownTask().examples("validation")


def test_generated_instances_are_reachable_and_in_range() -> None:
    rng = random.Random(0)
    for _ in range(200):
        numbers, target = random_instance(rng)
        assert len(numbers) == 3 and all(1 <= n <= 100 for n in numbers)
        assert 1 <= target <= 100
        assert solve(numbers, target)


def test_splits_are_disjoint_seeded_and_distinct() -> None:
    task = CountdownTask()
    train = task.examples("train", 300, seed=1)
    test = task.examples("test", 100, seed=1)
    train_keys = {instance_key(e.data["numbers"], e.data["target"]) for e in train}
    test_keys = {instance_key(e.data["numbers"], e.data["target"]) for e in test}
    assert len(train_keys) == 300 and len(test_keys) == 100
    assert not train_keys & test_keys
    assert all(is_held_out(e.data["numbers"], e.data["target"]) for e in test)
    assert not any(is_held_out(e.data["numbers"], e.data["target"]) for e in train)
    assert task.examples("train", 300, seed=1) == train
    assert task.examples("train", 50, seed=1) == train[:50]
    assert task.examples("train", 50, seed=2) != train[:50]
    # The held-out share of random instances is about one in ten.
    rng = random.Random(3)
    share = sum(is_held_out(*random_instance(rng)) for _ in range(2000)) / 2000
    assert 0.07 < share < 0.13


def test_demonstrations_encode_and_have_moderate_reward() -> None:
    task = CountdownTask()
    tokenizer = CharTokenizer(task.alphabet or "")
    examples = task.examples("train", 300, seed=0)
    rng = random.Random(0)
    demos = [task.demonstration(e, rng) for e in examples]
    for e, d in zip(examples, demos, strict=True):
        assert len(tokenizer.encode_response(d, task.response_length)) == task.response_length
        tokenizer.encode_prompt(e.prompt)
    m = task.metrics(demos, examples)
    assert 0.25 < m["accuracy"] < 0.45  # demo_correct_prob = 0.35
    assert m["reward"] == pytest.approx(m["accuracy"] + 0.1 * (1 - m["accuracy"]))
    # Several distinct correct answers per prompt are on offer.
    assert sum(len(solve(e.data["numbers"], e.data["target"])) >= 2 for e in examples) > 200


def test_demonstration_probability_extremes() -> None:
    examples = CountdownTask().examples("train", 50, seed=0)
    rng = random.Random(0)
    always = CountdownTask(demo_correct_prob=1.0)
    never = CountdownTask(demo_correct_prob=0.0)
    assert all(always.reward(always.demonstration(e, rng), e) == 1.0 for e in examples)
    assert all(never.reward(never.demonstration(e, rng), e) == 0.1 for e in examples)
    with pytest.raises(NotImplementedError):
        CountdownTask(format="chat").demonstration(examples[0], rng)


def test_chat_prompt() -> None:
    example = CountdownTask(format="chat").examples("train", 1)[0]
    numbers, target = example.data["numbers"], example.data["target"]
    assert f"[{', '.join(map(str, numbers))}]" in example.prompt
    assert f"exactly {target}" in example.prompt
    assert "<answer>" in example.prompt and "<reasoning>" in example.prompt


def test_registry_and_option_validation() -> None:
    task = get_task("countdown", max_number=50)
    assert isinstance(task, CountdownTask) and task.max_number == 50
    assert task.response_length == 16
    assert get_task("countdown", format="chat").response_length == 256
    for options, name in [
        ({"format": "json"}, "format"),
        ({"min_number": 0}, "min_number"),
        ({"max_number": 999, "response_length": 12}, "response_length"),
        ({"max_target": 0}, "max_target"),
        ({"demo_correct_prob": 1.5}, "demo_correct_prob"),
    ]:
        with pytest.raises(ValueError, match=name):
            get_task("countdown", **options)
    with pytest.raises(ValueError, match="bad options"):
        get_task("countdown", colour="red")
