"""4x4 Sudoku: the grid enumeration, unique puzzles, grid-disjoint splits, rewards, shared data."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import needs_shared_data

from tiltmatch.data import DatasetError, read_csv, shared_data_dir
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.tasks import Example, get_task
from tiltmatch.tasks.sudoku import (
    PUBLISHED_TEST_GRIDS,
    SudokuTask,
    all_grids,
    few_shot_examples,
    has_unique_solution,
    is_held_out_grid,
    is_valid_grid,
    random_puzzle,
    singles_trace,
    solutions,
    split_grids,
)

SOLUTION = "1234341221434321"
PUZZLE = "1030040201400300"  # 9 blanks


needs_data = needs_shared_data("sudoku/test_split_new.csv")


def _example(puzzle: str = PUZZLE, solution: str = SOLUTION) -> Example:
    blanks = tuple(i for i, ch in enumerate(puzzle) if ch == "0")
    return Example(prompt=puzzle, data={"puzzle": puzzle, "solution": solution, "blanks": blanks})


def test_there_are_288_valid_grids() -> None:
    grids = all_grids()
    assert len(grids) == 288 == len(set(grids))
    assert all(is_valid_grid(g) for g in grids)
    assert is_valid_grid(SOLUTION)
    assert not is_valid_grid("1234123412341234")  # columns repeat
    assert not is_valid_grid("1234214334122143")  # boxes repeat
    assert not is_valid_grid("123434122143432")  # too short


def test_solver() -> None:
    assert solutions(PUZZLE) == [SOLUTION]
    assert has_unique_solution(PUZZLE)
    assert len(solutions("0" * 16)) == 288
    assert not has_unique_solution("1000000000000000")
    assert solutions("1100000000000000") == []  # contradictory givens
    with pytest.raises(ValueError, match="16 digits"):
        solutions("12")


def test_generated_puzzles_are_unique_and_match_their_grid() -> None:
    rng = random.Random(0)
    for blanks in range(1, 13):
        grid = rng.choice(all_grids())
        puzzle = random_puzzle(grid, blanks, rng)
        assert puzzle.count("0") == blanks
        assert solutions(puzzle) == [grid]
    for e in SudokuTask().examples("train", 200, seed=0):
        assert solutions(e.data["puzzle"]) == [e.data["solution"]]
        assert 6 <= len(e.data["blanks"]) <= 12


def test_splits_are_disjoint_by_grid_and_avoid_the_published_test_grids() -> None:
    train, test = set(split_grids("train")), set(split_grids("test"))
    assert not train & test
    assert not train & PUBLISHED_TEST_GRIDS
    assert all(is_held_out_grid(g) for g in test)
    assert len(PUBLISHED_TEST_GRIDS) == 88
    assert len(test) == 74 and len(train) == 151  # fixed by the stable hash

    task = SudokuTask()
    train_ex = task.examples("train", 400, seed=0)
    test_ex = task.examples("test", 200, seed=0)
    assert {e.data["solution"] for e in train_ex} <= train
    assert {e.data["solution"] for e in test_ex} <= test
    assert len({e.data["puzzle"] for e in train_ex}) == 400  # distinct puzzles
    assert task.examples("train", 400, seed=0) == train_ex  # seeded
    assert task.examples("train", 100, seed=0) == train_ex[:100]
    assert task.examples("train", 100, seed=1) != train_ex[:100]


@needs_data
def test_embedded_published_grids_match_the_file() -> None:
    rows = read_csv(shared_data_dir() / "sudoku" / "test_split_new.csv")
    assert {r["Solution"] for r in rows} == PUBLISHED_TEST_GRIDS


@needs_data
@pytest.mark.parametrize(("split", "count"), [("test_split_new", 256), ("test_d1", 500)])
def test_published_sets_load_and_the_solution_scores_one(split: str, count: int) -> None:
    task = SudokuTask()
    examples = task.examples(split)
    assert len(examples) == count
    assert task.metrics([e.data["solution"] for e in examples], examples) == {
        "cell_accuracy": 1.0,
        "solved": 1.0,
        "reward": 1.0,
    }
    assert task.examples(split, n=5) == examples[:5]
    # Echoing the puzzle gets every blank wrong.
    assert task.metrics([e.data["puzzle"] for e in examples], examples)["cell_accuracy"] == 0.0


def test_csv_path_and_malformed_rows(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text(f"Puzzle,Solution\n{PUZZLE},{SOLUTION}\n")
    (example,) = SudokuTask().examples(str(good))
    assert example.prompt == PUZZLE and example.reference == SOLUTION

    missing = tmp_path / "missing.csv"
    missing.write_text(f"Puzzle,Solution\n{PUZZLE},{SOLUTION}\n{PUZZLE},\n")
    with pytest.raises(DatasetError, match="'Solution'"):
        SudokuTask().examples(str(missing))
    no_column = tmp_path / "no_column.csv"
    no_column.write_text(f"Solution\n{SOLUTION}\n")
    with pytest.raises(DatasetError, match="'Puzzle'"):
        SudokuTask().examples(str(no_column))
    mismatch = tmp_path / "mismatch.csv"
    mismatch.write_text(f"Puzzle,Solution\n2030040201400300,{SOLUTION}\n")
    with pytest.raises(DatasetError, match="does not match"):
        SudokuTask().examples(str(mismatch))
    invalid = tmp_path / "invalid.csv"
    invalid.write_text("Puzzle,Solution\n1234123412341234,1234123412341234\n")
    with pytest.raises(DatasetError, match="not a valid"):
        SudokuTask().examples(str(invalid))
    with pytest.raises(ValueError, match="unknown sudoku split"):
        SudokuTask().examples("validation")


def test_char_reward_is_cell_accuracy_over_blanks() -> None:
    task, ex = SudokuTask(), _example()
    blanks = ex.data["blanks"]
    assert task.reward(SOLUTION, ex) == 1.0
    assert task.reward(PUZZLE, ex) == 0.0  # zeros in every blank
    one_wrong = list(SOLUTION)
    one_wrong[blanks[0]] = "4" if SOLUTION[blanks[0]] != "4" else "3"
    assert task.reward("".join(one_wrong), ex) == pytest.approx(8 / 9)
    # Given cells do not count: changing one leaves the reward at 1.
    assert task.reward("4" + SOLUTION[1:], ex) == 1.0
    # Missing cells are wrong; a short answer is scored position by position.
    assert task.reward(SOLUTION[:8], ex) == pytest.approx(sum(i < 8 for i in blanks) / len(blanks))
    assert task.reward("", ex) == 0.0
    assert task.reward("?" * 16, ex) == 0.0
    assert task.reward(SOLUTION + "9999", ex) == 1.0  # only the first 16 cells are read


def test_chat_reward_reads_the_first_16_digits_of_the_last_answer_tag() -> None:
    task, ex = SudokuTask(format="chat"), _example()
    assert task.reward(f"<reasoning>easy</reasoning>\n<answer>\n{SOLUTION}\n</answer>", ex) == 1.0
    spaced = " ".join(SOLUTION[i : i + 4] for i in range(0, 16, 4))
    assert task.reward(f"<answer>{spaced}</answer>", ex) == 1.0
    assert task.reward(f"<answer>{PUZZLE}</answer><answer>{SOLUTION}</answer>", ex) == 1.0
    assert task.reward(f"<answer>{SOLUTION}</answer><answer>{PUZZLE}</answer>", ex) == 0.0
    assert task.reward(f"<answer>{SOLUTION}1111</answer>", ex) == 1.0
    assert task.reward(SOLUTION, ex) == 1.0  # no tag: a grid outside the tags counts
    assert SudokuTask(format="chat", grid_outside_tags=False).reward(SOLUTION, ex) == 0.0
    assert task.reward("<answer>no idea</answer>", ex) == 0.0


def test_metrics_micro_average_over_blank_cells() -> None:
    task = SudokuTask()
    a = _example()  # 9 blanks
    b_puzzle = "1234341221434320"  # 1 blank
    b = _example(b_puzzle)
    out = task.metrics([SOLUTION, b_puzzle], [a, b])
    # Micro: 9 right of 10 blanks; the per-puzzle mean (the reward) is (1 + 0) / 2.
    assert out["cell_accuracy"] == pytest.approx(9 / 10)
    assert out["solved"] == pytest.approx(0.5)
    assert out["reward"] == pytest.approx(0.5)


def test_demonstrations_encode_and_have_moderate_reward() -> None:
    task = SudokuTask()
    tokenizer = CharTokenizer(task.alphabet or "")
    examples = task.examples("train", 300, seed=0)
    rng = random.Random(0)
    demos = [task.demonstration(e, rng) for e in examples]
    for e, d in zip(examples, demos, strict=True):
        assert len(d) == 16 and set(d) <= set("1234")
        assert len(tokenizer.encode_response(d, task.response_length)) == task.response_length
        tokenizer.encode_prompt(e.prompt)
    m = task.metrics(demos, examples)
    assert m["cell_accuracy"] == pytest.approx(0.7, abs=0.05)  # demo_error_rate = 0.3
    assert len(set(demos)) > 250  # several different answers, not one per grid
    perfect = SudokuTask(demo_error_rate=0.0)
    assert all(perfect.demonstration(e, rng) == e.data["solution"] for e in examples[:20])
    with pytest.raises(NotImplementedError):
        SudokuTask(format="chat").demonstration(examples[0], rng)


def test_chat_prompt_has_three_worked_training_examples() -> None:
    shots = few_shot_examples()
    assert len(shots) == 3
    train = set(split_grids("train"))
    for shot in shots:
        assert shot.solution in train
        assert solutions(shot.puzzle) == [shot.solution]
        assert singles_trace(shot.puzzle) is not None
    example = SudokuTask(format="chat").examples("test", 1)[0]
    assert example.prompt.endswith(f"Puzzle: {example.data['puzzle']}")
    assert example.prompt.count("<answer>") >= 3
    assert all(shot.puzzle in example.prompt for shot in shots)


def test_registry_and_option_validation() -> None:
    task = get_task("sudoku", blanks=[7, 9])
    assert isinstance(task, SudokuTask) and task.blanks == (7, 9)
    assert all(7 <= len(e.data["blanks"]) <= 9 for e in task.examples("train", 50))
    assert task.response_length == 16
    assert get_task("sudoku", format="chat").response_length == 256
    for options, name in [
        ({"format": "grid"}, "format"),
        ({"blanks": (6, 13)}, "blanks"),
        ({"blanks": (9, 8)}, "blanks"),
        ({"blanks": (0, 8)}, "blanks"),
        ({"blanks": (8,)}, "blanks"),
        ({"demo_error_rate": -0.1}, "demo_error_rate"),
        ({"response_length": 12}, "response_length"),
    ]:
        with pytest.raises(ValueError, match=name):
            get_task("sudoku", **options)
