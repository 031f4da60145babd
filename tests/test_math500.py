"""MATH-500 task: loaders, answer extraction, math-verify equivalence (threads included),
string normalisation, reward and metrics."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import needs_shared_data

from tiltmatch.data import DatasetError
from tiltmatch.tasks import get_task
from tiltmatch.tasks.base import Example
from tiltmatch.tasks.math500 import (
    TIMEOUT_S,
    Math500Task,
    extract_math_answer,
    normalize_math_answer,
    string_equivalent,
    verify_equivalent,
)
from tiltmatch.tasks.reasoning import REASONING_INSTRUCTION

pytest.importorskip("math_verify")


needs_data = needs_shared_data("math500/test.jsonl")


@pytest.fixture(scope="module")
def task() -> Math500Task:
    return Math500Task()


@pytest.fixture(scope="module")
def test_set(task: Math500Task) -> list[Example]:
    return task.examples("test")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_registry_builds_the_task() -> None:
    task = get_task("math500")
    assert isinstance(task, Math500Task)
    assert task.name == "math500"
    assert task.response_length == 256


@needs_data
def test_shared_test_set(test_set: list[Example]) -> None:
    assert len(test_set) == 500
    first = test_set[0]
    assert first.uid == "math500/test/0"
    assert first.reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert set(first.data) >= {"problem", "answer", "solution", "subject", "level", "index"}
    assert first.data["subject"] == "Precalculus" and first.data["level"] == 2
    assert first.prompt.startswith(REASONING_INSTRUCTION)
    assert first.prompt.endswith(first.data["problem"].strip())


@needs_data
def test_seeded_subset(task: Math500Task) -> None:
    a = [e.uid for e in task.examples("test", n=30, seed=1)]
    assert a == [e.uid for e in task.examples("test", n=30, seed=1)]
    assert a != [e.uid for e in task.examples("test", n=30, seed=2)]
    assert len(set(a)) == 30


def test_local_file_and_missing_field(tmp_path: Path, task: Math500Task) -> None:
    good = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": "2"}])
    (example,) = task.examples(str(good))
    assert example.reference == "2" and "solution" not in example.data
    bad = _write_jsonl(
        tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "p", "solution": "s"}]
    )
    with pytest.raises(DatasetError) as err:
        task.examples(str(bad))
    assert "bad.jsonl:2" in str(err.value) and "'answer'" in str(err.value)


def test_hub_name_only_when_no_such_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: Math500Task
) -> None:
    datasets = pytest.importorskip("datasets")
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_load_dataset(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((args, kwargs))
        return [{"problem": "p", "answer": "3", "unique_id": "test/x/1.json"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    (example,) = task.examples("HuggingFaceH4/MATH-500")
    assert calls == [(("HuggingFaceH4/MATH-500",), {"split": "test"})]
    assert example.data["unique_id"] == "test/x/1.json"
    # The same name as an existing local file reads the file instead.
    (tmp_path / "HuggingFaceH4").mkdir()
    _write_jsonl(tmp_path / "HuggingFaceH4" / "MATH-500", [{"problem": "p", "answer": "4"}])
    (example,) = task.examples("HuggingFaceH4/MATH-500")
    assert example.reference == "4" and len(calls) == 1


def test_hub_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, task: Math500Task) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError, match="could not load hub dataset 'someone/math'"):
        task.examples("someone/math")


def test_no_train_split(task: Math500Task) -> None:
    with pytest.raises(ValueError, match="only a test split"):
        task.examples("train")


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("<answer>\\boxed{\\frac{1}{\\sqrt{2}}}</answer>", "\\frac{1}{\\sqrt{2}}"),
        ("first \\boxed{1} then \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        (
            "<reasoning>r</reasoning>\n<answer>\n\\left(3, \\frac{\\pi}{2}\\right)\n</answer>",
            "\\left(3, \\frac{\\pi}{2}\\right)",
        ),
        ("<answer>42", "42"),
        ("no answer here", None),
        ("<answer>  </answer>", None),
    ],
)
def test_extract_math_answer(response: str, answer: str | None) -> None:
    assert extract_math_answer(response) == answer


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{\\sqrt3}{2}", "\\dfrac{\\sqrt{3}}{2}"),
        ("(1,2]", "(1, 2]"),
        ("[-2, 7]", "[-2,7]"),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("-2, 1", "1,-2"),
        ("5", "x=5"),
        ("90", "90^\\circ"),
        ("11\\sqrt{2}", "11\\sqrt2"),
        ("6-5i", "6 - 5i"),
        ("32348", "\\$32,\\!348"),
        ("The answer is $\\frac{1}{2}$.", "0.5"),
    ],
)
def test_math_verify_equivalences(predicted: str, gold: str) -> None:
    assert verify_equivalent(predicted, gold)


@pytest.mark.parametrize(
    ("predicted", "gold"),
    [("3", "2"), ("(1,2)", "(1,2]"), ("4.6667", "\\frac{14}{3}"), ("", "1"), ("x" * 2000, "1")],
)
def test_math_verify_rejects(predicted: str, gold: str) -> None:
    assert not verify_equivalent(predicted, gold)


def test_math_verify_works_off_the_main_thread() -> None:
    # math-verify's signal-based timeout raises ValueError off the main thread;
    # a reward computed in a worker thread must still be right, not silently 0.
    results: dict[str, bool] = {}

    def worker() -> None:
        results["equal"] = verify_equivalent("0.25", "\\frac{1}{4}\\quad")
        results["different"] = verify_equivalent("0.26", "\\frac{1}{4}\\quad")

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results == {"equal": True, "different": False}


def test_timeouts_are_passed_on_the_main_thread_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify

    seen: list[Any] = []
    real_parse = math_verify.parse

    def spy(text: str, **kwargs: Any) -> Any:
        seen.append(kwargs.get("parsing_timeout"))
        return real_parse(text, **kwargs)

    monkeypatch.setattr(math_verify, "parse", spy)
    verify_equivalent("7", "7\\quad\\quad")
    thread = threading.Thread(target=verify_equivalent, args=("7", "7\\quad\\quad\\quad"))
    thread.start()
    thread.join()
    assert seen[0] == TIMEOUT_S and seen[-1] is None


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}"),
        ("\\tfrac12", "\\frac{1}{2}"),
        ("\\frac{\\sqrt3}2", "\\frac{\\sqrt{3}}{2}"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("5\\text{ cm}", "5"),
        ("\\text{Evelyn}", "Evelyn"),
        ("\\text{(C)}", "(C)"),
        ("x = 5", "5"),
        ("a_1=3", "3"),
        ("\\$32,\\!348", "32348"),
        ("10\\%", "10"),
        ("18.", "18"),
        ("0.5", "\\frac{1}{2}"),
        (".5", "\\frac{1}{2}"),
        ("3/4", "\\frac{3}{4}"),
        ("1,-2", "1,-2"),
        ("y = 2x + 3", "2x+3"),
    ],
)
def test_normalize_math_answer(raw: str, normalised: str) -> None:
    assert normalize_math_answer(raw) == normalised


def test_string_equivalence() -> None:
    assert string_equivalent("\\frac{\\sqrt3}{2}", "\\dfrac{\\sqrt{3}}{2}")
    assert string_equivalent("(3,\\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)")
    # The string metric does no algebra: equal values written differently differ.
    assert not string_equivalent("-2,1", "1,-2")
    assert not string_equivalent("\\frac{2}{4}", "\\frac{1}{2}")


@needs_data
def test_true_solutions_score_one(task: Math500Task, test_set: list[Example]) -> None:
    rng = random.Random(0)
    for example in test_set[:20]:
        solution = example.data["solution"]
        assert task.reward(solution, example) == 1.0, example.uid
        assert task.reward(task.demonstration(example, rng), example) == 1.0, example.uid
        assert string_equivalent(extract_math_answer(solution) or "", example.reference or "")


@needs_data
def test_reward_and_metrics(task: Math500Task, test_set: list[Example]) -> None:
    example = test_set[0]  # \left( 3, \frac{\pi}{2} \right)
    assert task.reward("<answer>\\boxed{(3, \\pi/2)}</answer>", example) == 1.0
    assert task.reward("<answer>\\boxed{(3, \\pi)}</answer>", example) == 0.0
    assert task.reward("nothing", example) == 0.0
    responses = [
        "<answer>\\boxed{\\left(3,\\frac{\\pi}{2}\\right)}</answer>",  # both metrics
        "<answer>\\boxed{(3, \\pi/2)}</answer>",  # math-verify only
        "<answer>\\boxed{(2, 0)}</answer>",  # neither
        "no answer",
    ]
    metrics = task.metrics(responses, [example] * 4)
    assert metrics == {"accuracy": 0.5, "accuracy_string": 0.25, "reward": 0.5}
