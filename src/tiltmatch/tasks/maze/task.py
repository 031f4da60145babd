"""The maze task: walk from S to G on a small grid; shorter valid paths score higher.

This is the task of the core demo and of METHOD.md section 7's exact-target
check. Its answers are enumerable (every simple path from S to G on a 5x5 grid
can be listed), so the reward-tilted target ``p_beta ∝ p_0 e^{beta r}``
(METHOD.md section 2) is computable from a base model's own path frequencies.
Mazes are kept only if they have several shortest paths, so a fine-tuned model
that keeps one of them has measurably collapsed.

Prompt: the grid row-major with S and G drawn in, no separators (``n*n``
characters). Response: a move string over U/D/L/R (U = row-1, D = row+1,
L = col-1, R = col+1). Reward: 0 unless every character is a move, no move
leaves the grid or enters a wall, the walk ends on G and fits the response
length; else ``(s / len) ** reward_power`` with ``s`` the shortest length,
so exactly 1 for a shortest path.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, ClassVar

from tiltmatch.tasks.base import Example, Task

Cell = tuple[int, int]

WALL, OPEN, START, GOAL = "#", ".", "S", "G"

# Move letter -> (row step, column step); U is row - 1 (up on the printed grid).
MOVES: dict[str, Cell] = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}

# One maze in TEST_MODULUS goes to the test split (by a hash of its prompt text).
TEST_MODULUS = 10


@dataclass(frozen=True)
class Maze:
    """An ``n x n`` grid of open cells '.' and walls '#' with a start and a goal.

    ``grid`` holds the rows without S and G (their cells are open); ``start``
    and ``goal`` are ``(row, column)``. Frozen and hashable, so path
    enumerations can be cached per maze.
    """

    grid: tuple[str, ...]
    start: Cell
    goal: Cell

    def __post_init__(self) -> None:
        # Accept lists (e.g. read back from JSON) but store tuples, so a maze stays hashable.
        object.__setattr__(self, "grid", tuple(self.grid))
        object.__setattr__(self, "start", (int(self.start[0]), int(self.start[1])))
        object.__setattr__(self, "goal", (int(self.goal[0]), int(self.goal[1])))
        n = len(self.grid)
        if n == 0 or any(len(row) != n for row in self.grid):
            raise ValueError(f"maze grid must be square and non-empty, got rows {self.grid!r}")
        if any(ch not in (WALL, OPEN) for row in self.grid for ch in row):
            raise ValueError(f"maze grid rows may hold only '#' and '.', got {self.grid!r}")
        for name, cell in (("start", self.start), ("goal", self.goal)):
            if not self.is_open(cell):
                raise ValueError(f"maze {name} {cell} is not an open cell of the grid")
        if self.start == self.goal:
            raise ValueError(f"maze start and goal are the same cell {self.start}")

    @cached_property
    def _adjacency(self) -> dict[Cell, tuple[tuple[str, Cell], ...]]:
        # The move graph, built on first use: every search walks it many times. A cached
        # property, not a field, so equality and hashing stay those of (grid, start, goal).
        flat = "".join(self.grid)
        return {
            cell: tuple([(move, nxt) for move, nxt, i in steps if flat[i] == OPEN])
            for cell, index, steps in _grid_steps(self.size)
            if flat[index] == OPEN
        }

    @property
    def size(self) -> int:
        """Side length ``n`` of the grid."""
        return len(self.grid)

    def in_grid(self, cell: Cell) -> bool:
        """Whether ``cell`` lies inside the grid."""
        r, c = cell
        return 0 <= r < self.size and 0 <= c < self.size

    def is_open(self, cell: Cell) -> bool:
        """Whether ``cell`` is inside the grid and not a wall."""
        return self.in_grid(cell) and self.grid[cell[0]][cell[1]] == OPEN

    def step(self, cell: Cell, move: str) -> Cell | None:
        """The cell one ``move`` from ``cell``; None if it leaves the grid, enters a wall, or
        ``move`` is not one of U/D/L/R."""
        delta = MOVES.get(move)
        if delta is None:
            return None
        nxt = (cell[0] + delta[0], cell[1] + delta[1])
        return nxt if self.is_open(nxt) else None

    def neighbours(self, cell: Cell) -> tuple[tuple[str, Cell], ...]:
        """The ``(move, cell)`` pairs reachable in one move from open ``cell``, in U/D/L/R
        order (empty for a wall or a cell outside the grid)."""
        return self._adjacency.get(cell, ())

    def cells(self, moves: str) -> list[Cell] | None:
        """The cells visited by ``moves`` from the start (start included); None if any
        character is not a move or any move leaves the grid or enters a wall."""
        cell = self.start
        out = [cell]
        for move in moves:
            nxt = self.step(cell, move)
            if nxt is None:
                return None
            cell = nxt
            out.append(cell)
        return out

    def distances(self, source: Cell) -> dict[Cell, int]:
        """Breadth-first move distance from ``source`` to every open cell reachable from it."""
        dist = {source: 0}
        queue = deque([source])
        while queue:
            cell = queue.popleft()
            for _, nxt in self.neighbours(cell):
                if nxt not in dist:
                    dist[nxt] = dist[cell] + 1
                    queue.append(nxt)
        return dist

    def shortest_length(self) -> int | None:
        """Length of a shortest path from S to G; None if G is unreachable."""
        return self.distances(self.start).get(self.goal)

    def text(self) -> str:
        """The prompt text: rows concatenated, S and G drawn in (``n*n`` characters)."""
        rows = [list(row) for row in self.grid]
        rows[self.start[0]][self.start[1]] = START
        rows[self.goal[0]][self.goal[1]] = GOAL
        return "".join("".join(row) for row in rows)

    @classmethod
    def from_text(cls, text: str) -> Maze:
        """Parse a prompt made by :meth:`text` (exactly one S and one G, square length)."""
        n = round(len(text) ** 0.5)
        if n * n != len(text) or n == 0:
            raise ValueError(f"maze text of length {len(text)} is not a square grid")
        if text.count(START) != 1 or text.count(GOAL) != 1:
            raise ValueError(f"maze text must hold exactly one S and one G: {text!r}")
        s, g = text.index(START), text.index(GOAL)
        plain = text.replace(START, OPEN).replace(GOAL, OPEN)
        grid = tuple(plain[i * n : (i + 1) * n] for i in range(n))
        return cls(grid=grid, start=divmod(s, n), goal=divmod(g, n))

    def pretty(self) -> str:
        """The grid with S and G, one row per line (for people, not the model)."""
        t = self.text()
        return "\n".join(t[i * self.size : (i + 1) * self.size] for i in range(self.size))


@lru_cache(maxsize=64)
def _grid_steps(n: int) -> tuple[tuple[Cell, int, tuple[tuple[str, Cell, int], ...]], ...]:
    """For every cell of an ``n x n`` grid: the cell, its row-major index, and its in-grid
    ``(move, neighbour, neighbour index)`` steps in U/D/L/R order (walls not yet removed)."""
    out = []
    for r in range(n):
        for c in range(n):
            steps = tuple(
                (move, (r + dr, c + dc), (r + dr) * n + c + dc)
                for move, (dr, dc) in MOVES.items()
                if 0 <= r + dr < n and 0 <= c + dc < n
            )
            out.append(((r, c), r * n + c, steps))
    return tuple(out)


def valid_moves(maze: Maze, cell: Cell) -> str:
    """The move letters allowed from ``cell`` (in U/D/L/R order)."""
    return "".join(move for move, _ in maze.neighbours(cell))


def path_length(maze: Maze, moves: str) -> int | None:
    """``len(moves)`` if ``moves`` is a valid path from S ending on G, else None.

    Revisiting cells, and passing through G before the end, are allowed: only
    the final cell matters. The empty string is never a valid path (S != G).
    """
    cells = maze.cells(moves)
    if cells is None or cells[-1] != maze.goal:
        return None
    return len(moves)


def enumerate_paths(maze: Maze, max_length: int, simple: bool = True) -> list[str]:
    """All paths from S to G of at most ``max_length`` moves, sorted by (length, text).

    ``simple=True``: paths that visit no cell twice (they end at their first
    visit of G). ``simple=False``: every walk that ends on G, revisits and
    earlier passes through G included; the count grows exponentially with
    ``max_length``. Depth-first search, pruned by the distance to G.
    """
    return list(_enumerate_paths(maze, max_length, simple))


@lru_cache(maxsize=1 << 14)
def _enumerate_paths(maze: Maze, max_length: int, simple: bool) -> tuple[str, ...]:
    to_goal = maze.distances(maze.goal)
    out: list[str] = []
    if maze.start not in to_goal or to_goal[maze.start] > max_length:
        return ()
    moves: list[str] = []
    on_path = {maze.start}  # used only for simple paths

    def visit(cell: Cell) -> None:
        if cell == maze.goal:
            out.append("".join(moves))
            if simple:
                return  # going on would have to come back to G: not simple
        for move, nxt in maze.neighbours(cell):
            if simple and nxt in on_path:
                continue
            # A path that cannot reach G within the budget is cut here.
            if len(moves) + 1 + to_goal.get(nxt, max_length + 1) > max_length:
                continue
            moves.append(move)
            if simple:
                on_path.add(nxt)
            visit(nxt)
            moves.pop()
            if simple:
                on_path.discard(nxt)

    visit(maze.start)
    out.sort(key=lambda p: (len(p), p))
    return tuple(out)


def shortest_paths(maze: Maze) -> list[str]:
    """All shortest paths from S to G, sorted; empty if G is unreachable."""
    s = maze.shortest_length()
    return [] if s is None else enumerate_paths(maze, s)


def simple_paths_of_length(maze: Maze, length: int) -> list[str]:
    """All simple paths from S to G of exactly ``length`` moves, sorted."""
    return [p for p in enumerate_paths(maze, length) if len(p) == length]


def count_shortest_paths(maze: Maze) -> int:
    """Number of distinct shortest paths from S to G (0 if G is unreachable)."""
    return shortest_stats(maze)[1]


def shortest_stats(maze: Maze) -> tuple[int | None, int]:
    """``(shortest length, number of shortest paths)`` from S to G; ``(None, 0)`` if G is
    unreachable.

    One breadth-first pass that also counts the ways to reach each cell by a
    shortest path: cheap enough for the generation filter.
    """
    dist = {maze.start: 0}
    ways = {maze.start: 1}
    queue = deque([maze.start])
    while queue:
        cell = queue.popleft()
        if cell == maze.goal:
            # Breadth-first order: every predecessor of G on a shortest path is already done.
            return dist[cell], ways[cell]
        d = dist[cell] + 1
        for _, nxt in maze.neighbours(cell):
            if nxt not in dist:
                dist[nxt] = d
                ways[nxt] = ways[cell]
                queue.append(nxt)
            elif dist[nxt] == d:
                ways[nxt] += ways[cell]
    return None, 0


def random_maze(rng: random.Random, size: int, wall_density: float) -> Maze | None:
    """Independent walls with probability ``wall_density``; S and G two distinct open cells
    drawn uniformly. None if fewer than two cells are open (no filtering here)."""
    grid = tuple(
        "".join(WALL if rng.random() < wall_density else OPEN for _ in range(size))
        for _ in range(size)
    )
    open_cells = [(r, c) for r in range(size) for c in range(size) if grid[r][c] == OPEN]
    if len(open_cells) < 2:
        return None
    start, goal = rng.sample(open_cells, 2)
    return Maze(grid=grid, start=start, goal=goal)


def maze_split(prompt: str) -> str:
    """The split a maze prompt belongs to: "test" iff its sha256 is 0 mod 10, else "train".

    A split by content, stable across runs and machines (Python's ``hash`` is
    salted), so no test maze can ever be drawn for training.
    """
    digest = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest(), "big")
    return "test" if digest % TEST_MODULUS == 0 else "train"


def maze_of(example: Example) -> Maze:
    """The :class:`Maze` of an example (its data, else parsed from the prompt)."""
    maze = example.data.get("maze")
    return maze if isinstance(maze, Maze) else Maze.from_text(example.prompt)


def _shortest_length_of(example: Example, maze: Maze) -> int | None:
    s = example.data.get("shortest_length")
    return s if isinstance(s, int) else maze.shortest_length()


class MazeTask(Task):
    """Shortest-path mazes: the demo task whose tilted target is computable exactly.

    Options (keyword only): ``size`` (grid side, default 4), ``wall_density``
    (probability of a wall per cell, 0.2), ``min_distance`` / ``max_distance``
    (bounds on the shortest path length, 3 and 6), ``min_shortest_paths``
    (at least this many distinct shortest paths, 2), ``response_length``
    (most moves a response may hold, 8), ``reward_power`` (exponent of
    ``s / len``, 2), ``demo_shortest_prob`` (probability that a demonstration
    is a shortest path rather than a detour, 0.5).
    """

    # The defaults are the shipped base model's: 4x4 grids keep a 0.5M-parameter
    # denoiser's paths mostly valid after minutes of CPU pretraining (5x5 grids with
    # 12-move answers gave a third valid paths after 1,500 steps of a 0.86M model).
    name: ClassVar[str] = "maze"
    alphabet: ClassVar[str | None] = "#.SGUDLR"

    # Examples returned when ``n`` is None: the source is an endless generator.
    DEFAULT_COUNTS: ClassVar[dict[str, int]] = {"train": 2000, "test": 200}

    def __init__(
        self,
        *,
        size: int = 4,
        wall_density: float = 0.2,
        min_distance: int = 3,
        max_distance: int = 6,
        min_shortest_paths: int = 2,
        response_length: int = 8,
        reward_power: float = 2.0,
        demo_shortest_prob: float = 0.5,
    ) -> None:
        _check_int("size", size, low=2)
        _check_int("min_distance", min_distance, low=1)
        _check_int("max_distance", max_distance, low=min_distance, low_name="min_distance")
        _check_int("min_shortest_paths", min_shortest_paths, low=1)
        # A shortest path must fit in a response, or the best reward is unreachable.
        _check_int("response_length", response_length, low=max_distance, low_name="max_distance")
        if not 0.0 <= wall_density < 1.0:
            raise ValueError(f"option wall_density must be in [0, 1), got {wall_density!r}")
        if not reward_power > 0.0:
            raise ValueError(f"option reward_power must be > 0, got {reward_power!r}")
        if not 0.0 <= demo_shortest_prob <= 1.0:
            raise ValueError(
                f"option demo_shortest_prob must be in [0, 1], got {demo_shortest_prob!r}"
            )
        self.size = size
        self.wall_density = float(wall_density)
        self.min_distance = min_distance
        self.max_distance = max_distance
        self.min_shortest_paths = min_shortest_paths
        self.response_length = response_length
        self.reward_power = float(reward_power)
        self.demo_shortest_prob = float(demo_shortest_prob)

    # ----- dataset -----------------------------------------------------------------------

    def accepts(self, maze: Maze) -> bool:
        """Whether a maze passes the filter: G reachable, shortest length in
        ``[min_distance, max_distance]``, at least ``min_shortest_paths`` shortest paths."""
        s, count = shortest_stats(maze)
        return (
            s is not None
            and self.min_distance <= s <= self.max_distance
            and count >= self.min_shortest_paths
        )

    def make_example(self, maze: Maze) -> Example:
        """The :class:`Example` of a maze (no filtering, no split check)."""
        paths = shortest_paths(maze)
        if not paths:
            raise ValueError(f"goal is unreachable in maze {maze.text()!r}")
        prompt = maze.text()
        return Example(
            prompt=prompt,
            reference=paths[0],
            data={
                "maze": maze,
                "shortest_length": len(paths[0]),
                "shortest_paths": frozenset(paths),
            },
            uid=prompt,
        )

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """``n`` distinct random mazes of ``split`` ("train" or "test"), drawn with ``seed``.

        Mazes are drawn from one stream and kept when they pass the filter and
        their prompt hashes to ``split`` (:func:`maze_split`); so the splits are
        disjoint whatever the seeds. ``n=None`` gives ``DEFAULT_COUNTS[split]``.
        """
        if split not in self.DEFAULT_COUNTS:
            raise ValueError(f"unknown split {split!r} for task 'maze'; use 'train' or 'test'")
        if n is None:
            n = self.DEFAULT_COUNTS[split]
        if n < 0:
            raise ValueError(f"number of examples must be >= 0, got {n}")
        rng = random.Random(seed)
        seen: set[str] = set()
        out: list[Example] = []
        attempts = accepted = 0
        # Generous caps so an infeasible option set fails loudly instead of spinning.
        max_attempts = 2_000 * (n + 10)
        while len(out) < n:
            attempts += 1
            if attempts > max_attempts or (accepted == 0 and attempts > 20_000):
                raise RuntimeError(
                    f"maze generation found only {len(out)} of {n} {split} mazes in {attempts - 1} "
                    f"draws ({accepted} passed the filter); relax size / wall_density / "
                    "min_distance / max_distance / min_shortest_paths"
                )
            maze = random_maze(rng, self.size, self.wall_density)
            if maze is None:
                continue
            prompt = maze.text()
            # The split check is cheaper than the filter, and the filter's outcome does not
            # depend on it, so check it first.
            if prompt in seen or maze_split(prompt) != split:
                continue
            if not self.accepts(maze):
                continue
            accepted += 1
            seen.add(prompt)
            out.append(self.make_example(maze))
        return out

    # ----- reward ------------------------------------------------------------------------

    def path_length(self, response: str, example: Example) -> int | None:
        """Length of ``response`` if it is a valid path of this example within the response
        length, else None."""
        if len(response) > self.response_length:
            return None  # the model cannot produce it; keep reward and demonstrations consistent
        return path_length(maze_of(example), response)

    def reward(self, response: str, example: Example) -> float:
        """``(s / len) ** reward_power`` for a valid path, 0 otherwise (see module docstring)."""
        length = self.path_length(response, example)
        if length is None:
            return 0.0
        s = _shortest_length_of(example, maze_of(example))
        assert s is not None  # a valid path exists, so G is reachable
        return (s / length) ** self.reward_power

    def metrics(self, responses: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """Mean ``reward``; ``accuracy`` (fraction of shortest paths); ``valid`` (fraction of
        valid paths); ``distinct_optimal_paths`` (mean over distinct examples of the number of
        distinct shortest paths among that example's responses)."""
        if len(responses) != len(examples):
            raise ValueError(f"{len(responses)} responses for {len(examples)} examples")
        n = max(len(responses), 1)
        total = valid = optimal = 0.0
        optimal_by_uid: dict[str, set[str]] = {}
        for response, example in zip(responses, examples, strict=True):
            total += self.checked_reward(response, example)
            key = example.uid or example.prompt
            found = optimal_by_uid.setdefault(key, set())
            length = self.path_length(response, example)
            if length is None:
                continue
            valid += 1
            if length == _shortest_length_of(example, maze_of(example)):
                optimal += 1
                found.add(response)
        distinct = sum(len(v) for v in optimal_by_uid.values()) / max(len(optimal_by_uid), 1)
        return {
            "reward": total / n,
            "accuracy": optimal / n,
            "valid": valid / n,
            "distinct_optimal_paths": distinct,
        }

    # ----- demonstrations ----------------------------------------------------------------

    def demonstration(self, example: Example, rng: random.Random) -> str:
        """A path for SFT of the base model: with probability ``demo_shortest_prob`` a uniform
        shortest path, else a uniform simple path of length ``s + 2`` (falling back to
        ``s + 4``, then to a shortest path), always within ``response_length``.

        The mixture gives the base model a moderate reward and several modes to
        tilt between (METHOD.md section 7). Paths on a grid have the parity of
        ``s``, so ``s + 1`` never exists.
        """
        maze = maze_of(example)
        shortest = example.data.get("shortest_paths")
        # Sort: frozenset order follows the salted string hash, and demonstrations must be
        # reproducible from the seed alone.
        pool = sorted(shortest) if shortest else shortest_paths(maze)
        if not pool:
            raise ValueError(f"goal is unreachable in maze {example.prompt!r}")
        s = len(pool[0])
        if rng.random() >= self.demo_shortest_prob:
            for extra in (2, 4):
                if s + extra > self.response_length:
                    break
                detours = simple_paths_of_length(maze, s + extra)
                if detours:
                    return rng.choice(detours)
        return rng.choice(pool)

    def describe(self) -> dict[str, Any]:
        """The resolved options, for writing next to a run's outputs."""
        return {
            "name": self.name,
            "size": self.size,
            "wall_density": self.wall_density,
            "min_distance": self.min_distance,
            "max_distance": self.max_distance,
            "min_shortest_paths": self.min_shortest_paths,
            "response_length": self.response_length,
            "reward_power": self.reward_power,
            "demo_shortest_prob": self.demo_shortest_prob,
        }


def _check_int(option: str, value: object, low: int, low_name: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"option {option} must be an integer, got {value!r}")
    if value < low:
        bound = f"{low_name} = {low}" if low_name else str(low)
        raise ValueError(f"option {option} must be >= {bound}, got {value}")
