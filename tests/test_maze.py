"""The maze task: rewards on hand-made mazes, path enumeration, splits, demonstrations."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from tiltmatch.experiments.maze_figure import before_after_figure
from tiltmatch.models.codecs import CharTokenizer
from tiltmatch.tasks import get_task
from tiltmatch.tasks.maze.task import (
    Maze,
    MazeTask,
    count_shortest_paths,
    enumerate_paths,
    maze_split,
    shortest_paths,
    valid_moves,
)

# S at the top left, G at the bottom right, one wall at (1, 1); shortest length 6.
HAND = Maze(grid=("....", ".#..", "....", "...."), start=(0, 0), goal=(3, 3))


@pytest.fixture(scope="module")
def task() -> MazeTask:
    return MazeTask()


@pytest.fixture(scope="module")
def hand_example(task: MazeTask):
    return task.make_example(HAND)


@pytest.fixture(scope="module")
def train_examples(task: MazeTask):
    return task.examples("train", 2000, seed=0)


def open_grid(n: int, goal: tuple[int, int]) -> Maze:
    return Maze(grid=tuple("." * n for _ in range(n)), start=(0, 0), goal=goal)


# ----- the maze itself ---------------------------------------------------------------------


def test_text_round_trip_and_alphabet() -> None:
    assert HAND.text() == "S....#.........G"
    assert Maze.from_text(HAND.text()) == HAND
    assert set(HAND.text()) <= set(MazeTask.alphabet)
    assert sorted(MazeTask.alphabet) == sorted("#.SGUDLR")
    assert valid_moves(HAND, (0, 0)) == "DR"
    assert valid_moves(HAND, (0, 1)) == "LR"  # down is the wall


def test_bad_mazes_are_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        Maze(grid=("...", ".."), start=(0, 0), goal=(1, 1))
    with pytest.raises(ValueError, match="start"):
        Maze(grid=("#..", "...", "..."), start=(0, 0), goal=(2, 2))
    with pytest.raises(ValueError, match="same cell"):
        Maze(grid=("...", "...", "..."), start=(1, 1), goal=(1, 1))


# ----- reward ------------------------------------------------------------------------------


def test_shortest_path_scores_one(task: MazeTask, hand_example) -> None:
    assert hand_example.data["shortest_length"] == 6
    for path in hand_example.data["shortest_paths"]:
        assert task.reward(path, hand_example) == 1.0
    assert task.reward("RRRDDD", hand_example) == 1.0


def test_detour_scores_ratio_squared(task: MazeTask, hand_example) -> None:
    # Passes through G, steps off and comes back: only the final cell matters.
    assert task.reward("RRRDDDLR", hand_example) == pytest.approx((6 / 8) ** 2)
    # Revisiting cells is allowed too.
    assert task.reward("RLRRRDDD", hand_example) == pytest.approx((6 / 8) ** 2)
    assert task.reward("DDRRRUDD", hand_example) == pytest.approx((6 / 8) ** 2)
    power3 = MazeTask(reward_power=3.0)
    assert power3.reward("RRRDDDLR", hand_example) == pytest.approx((6 / 8) ** 3)


@pytest.mark.parametrize(
    "response, why",
    [
        ("DRRRDD", "enters the wall at (1, 1)"),
        ("URRRDDD", "leaves the grid upwards"),
        ("RRRRDDD", "leaves the grid to the right"),
        ("RRRDD", "ends next to the goal"),
        ("RRR?DDD", "a masked token left in the response"),
        ("rrrddd", "lower-case is not a move"),
        ("RRRDDD.", "a grid character is not a move"),
        ("", "the empty response"),
        ("RRRDDDLRLRLRLR", "longer than the response length"),
    ],
)
def test_invalid_responses_score_zero(task: MazeTask, hand_example, response, why) -> None:
    assert task.reward(response, hand_example) == 0.0, why


def test_reward_needs_only_the_prompt(task: MazeTask, hand_example) -> None:
    from tiltmatch.tasks.base import Example

    bare = Example(prompt=hand_example.prompt)
    assert task.reward("RRRDDDLR", bare) == task.reward("RRRDDDLR", hand_example)


def test_metrics(task: MazeTask, hand_example) -> None:
    responses = ["RRRDDD", "DDDRRR", "RRRDDD", "RRRDDDLR", "DRRRDD"]
    m = task.metrics(responses, [hand_example] * len(responses))
    assert m["reward"] == pytest.approx((3 + (6 / 8) ** 2) / 5)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["valid"] == pytest.approx(4 / 5)
    assert m["distinct_optimal_paths"] == pytest.approx(2.0)
    # Per distinct example, then averaged: one example with 2 distinct, one with 0.
    other = task.make_example(open_grid(3, (2, 2)))
    m = task.metrics(["RRRDDD", "DDDRRR", "RR"], [hand_example, hand_example, other])
    assert m["distinct_optimal_paths"] == pytest.approx((2 + 0) / 2)


# ----- path enumeration --------------------------------------------------------------------


@pytest.mark.parametrize("n, goal", [(3, (2, 2)), (4, (3, 3)), (5, (4, 4)), (5, (2, 4))])
def test_shortest_paths_on_open_grid_are_binomial(n: int, goal: tuple[int, int]) -> None:
    maze = open_grid(n, goal)
    down, right = goal
    expected = math.comb(down + right, down)
    paths = shortest_paths(maze)
    assert len(paths) == len(set(paths)) == expected
    assert count_shortest_paths(maze) == expected
    assert all(sorted(p) == sorted("D" * down + "R" * right) for p in paths)


def test_shortest_paths_around_a_wall() -> None:
    # 20 monotone paths on the open 4x4 grid, 2 * 6 of them through (1, 1).
    assert len(shortest_paths(HAND)) == count_shortest_paths(HAND) == 8


def brute_force(maze: Maze, max_length: int, simple: bool) -> set[str]:
    found = set()
    for length in range(1, max_length + 1):
        for letters in itertools.product("UDLR", repeat=length):
            cells = maze.cells("".join(letters))
            if cells is None or cells[-1] != maze.goal:
                continue
            if simple and len(set(cells)) != len(cells):
                continue
            found.add("".join(letters))
    return found


@pytest.mark.parametrize("simple", [True, False])
def test_enumerate_paths_matches_brute_force(simple: bool) -> None:
    maze = Maze(grid=("...", ".#.", "..."), start=(0, 0), goal=(2, 2))
    got = enumerate_paths(maze, 8, simple=simple)
    assert len(got) == len(set(got))
    assert set(got) == brute_force(maze, 8, simple)
    assert got == sorted(got, key=lambda p: (len(p), p))


def test_enumerate_paths_simple_on_hand_maze() -> None:
    got = enumerate_paths(HAND, 8)
    assert set(got) == brute_force(HAND, 8, simple=True)
    assert {len(p) for p in got} == {6, 8}  # a grid path has the parity of the shortest one


# ----- dataset -----------------------------------------------------------------------------


def test_examples_pass_the_filter(task: MazeTask, train_examples) -> None:
    assert len(train_examples) == 2000
    assert len({e.uid for e in train_examples}) == 2000
    for e in train_examples[:300]:
        maze = e.data["maze"]
        s = e.data["shortest_length"]
        assert e.uid == e.prompt == maze.text() and len(e.prompt) == task.size**2 == 16
        assert 3 <= s <= 6
        assert len(e.data["shortest_paths"]) >= 2
        assert e.data["shortest_paths"] == frozenset(shortest_paths(maze))
        assert e.reference in e.data["shortest_paths"]
        assert task.reward(e.reference, e) == 1.0


def test_splits_are_disjoint(task: MazeTask, train_examples) -> None:
    test = task.examples("test", 200, seed=0)
    more_train = task.examples("train", 500, seed=1)
    test_prompts = {e.prompt for e in test}
    assert len(test_prompts) == 200
    assert not test_prompts & {e.prompt for e in train_examples}
    assert not test_prompts & {e.prompt for e in more_train}
    assert all(maze_split(e.prompt) == "test" for e in test)
    assert all(maze_split(e.prompt) == "train" for e in train_examples)


def test_examples_are_deterministic(task: MazeTask, train_examples) -> None:
    again = MazeTask().examples("train", 50, seed=0)
    assert [e.prompt for e in again] == [e.prompt for e in train_examples[:50]]
    other = task.examples("train", 50, seed=7)
    assert [e.prompt for e in other] != [e.prompt for e in again]


def test_unknown_split(task: MazeTask) -> None:
    with pytest.raises(ValueError, match="split"):
        task.examples("validation", 3)


def test_infeasible_options_fail_loudly() -> None:
    # A 2x2 grid has no shortest path of length 4 or more.
    tiny = MazeTask(size=2, min_distance=4, max_distance=4, response_length=4)
    with pytest.raises(RuntimeError, match="min_distance"):
        tiny.examples("train", 1)


# ----- demonstrations ----------------------------------------------------------------------


def test_demonstrations_are_valid_paths(task: MazeTask, train_examples) -> None:
    tokenizer = CharTokenizer(MazeTask.alphabet)
    rng = random.Random(0)
    extras = Counter()
    rewards = []
    for e in train_examples[:400]:
        demo = task.demonstration(e, rng)
        assert 0 < len(demo) <= task.response_length
        assert set(demo) <= set("UDLR")
        ids = tokenizer.encode_response(demo, task.response_length)
        assert tokenizer.decode_response(ids) == demo
        r = task.reward(demo, e)
        assert r > 0
        rewards.append(r)
        extras[len(demo) - e.data["shortest_length"]] += 1
        if len(demo) > e.data["shortest_length"]:
            cells = e.data["maze"].cells(demo)
            assert len(set(cells)) == len(cells)  # detours are simple paths
    assert set(extras) <= {0, 2, 4}
    assert 0.4 < extras[0] / 400 < 0.65  # half shortest, plus the rare fallbacks
    assert 0.6 < sum(rewards) / len(rewards) < 0.9  # moderate: room for the tilt to act


def test_demonstrations_cover_several_modes(task: MazeTask, hand_example) -> None:
    rng = random.Random(1)
    demos = Counter(task.demonstration(hand_example, rng) for _ in range(400))
    optimal = {p for p in demos if len(p) == 6}
    assert optimal == set(hand_example.data["shortest_paths"])  # all 8 appear
    assert {len(p) for p in demos} == {6, 8}


def test_demonstrations_are_deterministic(task: MazeTask, train_examples) -> None:
    a = [task.demonstration(e, random.Random(3)) for e in train_examples[:30]]
    b = [task.demonstration(e, random.Random(3)) for e in train_examples[:30]]
    assert a == b


def test_demonstration_probability_extremes(hand_example) -> None:
    rng = random.Random(2)
    always = MazeTask(demo_shortest_prob=1.0)
    assert all(len(always.demonstration(hand_example, rng)) == 6 for _ in range(50))
    never = MazeTask(demo_shortest_prob=0.0)
    assert all(len(never.demonstration(hand_example, rng)) == 8 for _ in range(50))
    # No room for a detour: falls back to a shortest path.
    tight = MazeTask(demo_shortest_prob=0.0, max_distance=6, response_length=6)
    assert all(len(tight.demonstration(hand_example, rng)) == 6 for _ in range(20))


# ----- options and registry ----------------------------------------------------------------


@pytest.mark.parametrize(
    "options, option",
    [
        ({"size": 1}, "size"),
        ({"size": 4.5}, "size"),
        ({"wall_density": 1.0}, "wall_density"),
        ({"wall_density": -0.1}, "wall_density"),
        ({"min_distance": 0}, "min_distance"),
        ({"min_distance": 6, "max_distance": 5}, "max_distance"),
        ({"min_shortest_paths": 0}, "min_shortest_paths"),
        ({"response_length": 5}, "response_length"),
        ({"reward_power": 0.0}, "reward_power"),
        ({"demo_shortest_prob": 1.5}, "demo_shortest_prob"),
    ],
)
def test_option_validation(options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        MazeTask(**options)
    with pytest.raises(ValueError, match=option):
        get_task("maze", **options)


def test_registry() -> None:
    task = get_task("maze", size=6, response_length=14)
    assert isinstance(task, MazeTask)
    assert task.name == "maze"
    assert task.size == 6 and task.response_length == 14
    with pytest.raises(ValueError, match="bad options"):
        get_task("maze", colour="red")


# ----- figure ------------------------------------------------------------------------------


def test_before_after_figure_writes_png(tmp_path, hand_example) -> None:
    base = Counter({"RRRDDD": 30, "DDDRRR": 20, "RRRDDDLR": 10, "<invalid>": 5})
    final = Counter({"RRRDDD": 60})
    out = tmp_path / "figs" / "maze.png"
    before_after_figure(HAND, base, final, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
