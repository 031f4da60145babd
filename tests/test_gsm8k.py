"""GSM8K task: loaders (shared copy, files, hub names), references, extraction, reward."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_shared_data

from tiltmatch.data import DatasetError
from tiltmatch.tasks import get_task
from tiltmatch.tasks.gsm8k import (
    GSM8KTask,
    extract_number,
    last_number,
    parse_number,
    reference_answer,
)
from tiltmatch.tasks.reasoning import REASONING_INSTRUCTION, subset_indices

needs_data = needs_shared_data("gsm8k/test.jsonl")


@pytest.fixture(scope="module")
def task() -> GSM8KTask:
    return GSM8KTask()


@pytest.fixture(scope="module")
def test_set(task: GSM8KTask) -> list:
    return task.examples("test")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class _FakeHub:
    """Stands in for ``datasets.load_dataset``: records calls, never touches the network."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, fail: bool = False) -> None:
        self.rows = rows or []
        self.fail = fail
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((args, kwargs))
        if self.fail:
            raise ConnectionError("no network")
        return self.rows


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> _FakeHub:
    datasets = pytest.importorskip("datasets")
    fake = _FakeHub([{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}])
    monkeypatch.setattr(datasets, "load_dataset", fake)
    return fake


def test_registry_builds_the_task() -> None:
    task = get_task("gsm8k")
    assert isinstance(task, GSM8KTask)
    assert task.name == "gsm8k"
    assert task.response_length == 256
    assert get_task("gsm8k", response_length=512).response_length == 512


@needs_data
def test_shared_test_set_loads_in_file_order(test_set: list) -> None:
    assert len(test_set) == 1319
    first = test_set[0]
    assert first.uid == "gsm8k/test/0"
    assert first.reference == "18"
    assert first.data["question"].startswith("Janet")
    assert first.data["solution"].endswith("#### 18")
    assert len({e.uid for e in test_set}) == 1319


@needs_data
def test_prompt_is_instruction_then_question(test_set: list) -> None:
    prompt = test_set[0].prompt
    assert prompt.startswith(REASONING_INSTRUCTION)
    assert prompt.endswith(test_set[0].data["question"])
    for marker in ("<reasoning>", "</reasoning>", "<answer>", "</answer>", "\\boxed{"):
        assert marker in prompt


@needs_data
def test_seeded_subset_is_deterministic_nested_and_in_file_order(task: GSM8KTask) -> None:
    a = task.examples("test", n=50, seed=3)
    b = task.examples("test", n=50, seed=3)
    assert [e.uid for e in a] == [e.uid for e in b]
    indices = [e.data["index"] for e in a]
    assert indices == sorted(indices) and len(set(indices)) == 50
    assert [e.uid for e in task.examples("test", n=50, seed=4)] != [e.uid for e in a]
    # A smaller n with the same seed takes a subset of the larger one.
    assert set(subset_indices(1319, 20, 3)) <= set(indices)
    assert len(task.examples("test", n=5000)) == 1319
    assert task.examples("test", n=0) == []
    with pytest.raises(ValueError):
        task.examples("test", n=-1)


@needs_data
def test_reference_parsing_on_real_rows(test_set: list) -> None:
    by_index = {e.data["index"]: e.reference for e in test_set}
    assert by_index[0] == "18"
    assert by_index[1] == "3"
    assert by_index[2] == "70000"
    # Thousands commas are stripped, negatives kept.
    assert "2125" in by_index.values() and "-10" in by_index.values()
    assert all(parse_number(ref) is not None for ref in by_index.values())
    assert reference_answer("a\nb\n#### 1,450,000") == "1450000"
    with pytest.raises(ValueError):
        reference_answer("no final line")


def test_local_jsonl_path(tmp_path: Path, task: GSM8KTask) -> None:
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"question": "q0", "answer": "#### 7"},
            {"question": "q1", "answer": "x\n#### 1,000"},
        ],
    )
    examples = task.examples(str(path))
    assert [e.reference for e in examples] == ["7", "1000"]
    assert [e.uid for e in examples] == ["gsm8k/mine.jsonl/0", "gsm8k/mine.jsonl/1"]


def test_missing_field_names_file_line_and_field(tmp_path: Path, task: GSM8KTask) -> None:
    path = _write_jsonl(
        tmp_path / "bad.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q"}]
    )
    with pytest.raises(DatasetError) as err:
        task.examples(str(path))
    message = str(err.value)
    assert "bad.jsonl:2" in message and "'answer'" in message


def test_answer_without_final_number_is_a_dataset_error(tmp_path: Path, task: GSM8KTask) -> None:
    path = _write_jsonl(tmp_path / "nofinal.jsonl", [{"question": "q", "answer": "just text"}])
    with pytest.raises(DatasetError, match="'answer'"):
        task.examples(str(path))


def test_missing_path_is_not_sent_to_the_hub(
    tmp_path: Path, task: GSM8KTask, hub: _FakeHub
) -> None:
    with pytest.raises(DatasetError, match="not found"):
        task.examples(str(tmp_path / "nowhere.jsonl"))
    assert hub.calls == []


def test_hub_name_loads_through_datasets(task: GSM8KTask, hub: _FakeHub) -> None:
    examples = task.examples("openai/gsm8k")
    assert hub.calls == [(("openai/gsm8k", "main"), {"split": "test"})]
    assert examples[0].reference == "4"
    assert examples[0].uid == "gsm8k/openai/gsm8k:test/0"
    task.examples("openai/gsm8k:train")
    assert hub.calls[-1] == (("openai/gsm8k", "main"), {"split": "train"})
    # Another hub dataset gets no config of its own.
    task.examples("someone/gsm8k-mirror")
    assert hub.calls[-1] == (("someone/gsm8k-mirror",), {"split": "test"})


def test_train_split_is_the_hub_train_split(task: GSM8KTask, hub: _FakeHub) -> None:
    examples = task.examples("train")
    assert hub.calls == [(("openai/gsm8k", "main"), {"split": "train"})]
    assert examples[0].uid == "gsm8k/train/0"


def test_hub_failure_says_there_is_no_local_copy(
    monkeypatch: pytest.MonkeyPatch, task: GSM8KTask
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", _FakeHub(fail=True))
    with pytest.raises(DatasetError, match="no local copy"):
        task.examples("train")
    with pytest.raises(DatasetError, match="local JSONL path"):
        task.examples("openai/gsm8k")


def test_hub_row_without_field_is_a_dataset_error(
    monkeypatch: pytest.MonkeyPatch, task: GSM8KTask
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", _FakeHub([{"question": "q"}]))
    with pytest.raises(DatasetError, match=r"row 0.*'answer'"):
        task.examples("openai/gsm8k")


def test_an_existing_file_wins_over_a_hub_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: GSM8KTask, hub: _FakeHub
) -> None:
    _write_jsonl(tmp_path / "openai" / "gsm8k", [{"question": "q", "answer": "#### 5"}])
    monkeypatch.chdir(tmp_path)
    examples = task.examples("openai/gsm8k")
    assert hub.calls == []
    assert examples[0].reference == "5"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("18", 18.0),
        ("1,000", 1000.0),
        ("$1,000.00", 1000.0),
        ("\\$18", 18.0),
        ("-10", -10.0),
        ("\u22127", -7.0),
        ("3.25", 3.25),
        (".5", 0.5),
        ("3/4", 0.75),
        ("\\frac{3}{4}", 0.75),
        ("\\dfrac{3}{4}", 0.75),
        ("-\\frac{3}{4}", -0.75),
        ("25%", 25.0),
        ("18.", 18.0),
        ("18\\text{ dollars}", 18.0),
        ("1{,}000", 1000.0),
        ("18 dollars", None),
        ("1/0", None),
        ("", None),
    ],
)
def test_parse_number(text: str, value: float | None) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize(
    ("response", "value"),
    [
        # The boxed answer inside the answer tag wins over everything else.
        ("<reasoning>16-3-4=9; 9*2=18</reasoning>\n<answer>\\boxed{18}</answer>", 18.0),
        ("<reasoning>7</reasoning>\n<answer>\\boxed{\\frac{1}{2}}</answer> 9", 0.5),
        # Nested braces inside \boxed{}.
        ("<answer>\\boxed{\\frac{1}{4}}</answer>", 0.25),
        # The answer tag's content, then its last number.
        ("<reasoning>3 4</reasoning><answer>1,250</answer>", 1250.0),
        ("<answer>The total is $1,250.</answer> 7", 1250.0),
        ("<answer>-3</answer>", -3.0),
        ("<answer>2.50</answer>", 2.5),
        # An unclosed final answer tag (a response cut at the length limit).
        ("<reasoning>x</reasoning><answer>42", 42.0),
        # No answer tag: a boxed answer anywhere, then the last number in the text.
        ("so \\boxed{42}, and 7 more", 42.0),
        ("He has 16-3 = 13 apples left.", 13.0),
        ("The difference is 16-3", 3.0),
        ("It costs $-4.50 in the end", -4.5),
        # An empty answer tag falls back to the text.
        ("<answer></answer> result 7", 7.0),
        ("no number at all", None),
    ],
)
def test_extract_number(response: str, value: float | None) -> None:
    assert extract_number(response) == value


def test_last_number() -> None:
    assert last_number("from 1,000 to 2,500.") == 2500.0
    assert last_number("nothing") is None


@needs_data
def test_reward(task: GSM8KTask, test_set: list) -> None:
    example = test_set[0]  # reference 18
    assert task.reward("<answer>\\boxed{18}</answer>", example) == 1.0
    assert task.reward("<answer>18.0</answer>", example) == 1.0
    assert task.reward("<answer>$18</answer>", example) == 1.0
    assert task.reward("<answer>\\boxed{17}</answer> 18", example) == 0.0
    assert task.reward("<answer>18.001</answer>", example) == 0.0
    assert task.reward("", example) == 0.0


@needs_data
def test_true_solutions_score_one(task: GSM8KTask, test_set: list) -> None:
    rng = random.Random(0)
    for example in test_set[:20]:
        # The dataset's own worked solution, and the same in the reasoning format.
        assert task.reward(example.data["solution"], example) == 1.0
        demo = task.demonstration(example, rng)
        assert demo.startswith("<reasoning>\n") and "<<" not in demo
        assert task.reward(demo, example) == 1.0


@needs_data
def test_metrics(task: GSM8KTask, test_set: list) -> None:
    examples = test_set[:4]
    responses = [f"<answer>{e.reference}</answer>" for e in examples[:3]] + ["<answer>x</answer>"]
    metrics = task.metrics(responses, examples)
    assert metrics == {"reward": 0.75, "accuracy": 0.75}
