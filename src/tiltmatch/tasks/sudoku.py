"""4x4 Sudoku (2x2 boxes): puzzles with a unique solution, scored by cell accuracy.

There are only 288 valid 4x4 grids, so they are enumerated once and every
question about a puzzle (its solutions, whether it is unique) is answered by
filtering that list: a complete solver in a few lines.

Splits are made by solution grid, so that no held-out grid is ever seen in
training: a grid is held out ("test") iff a stable hash of it is 0 mod 4, and
the 88 grids of the published test set ``sudoku/test_split_new.csv`` are never
used for training either.

Formats (option ``format``):

- ``"char"``: prompt = the puzzle as 16 digits (0 = blank); response = the 16
  solved digits, for the project's :class:`~tiltmatch.models.codecs.CharTokenizer`.
- ``"chat"``: the published 3-shot prompt for LLaDA-8B-Instruct
  (:func:`~tiltmatch.tasks.prompts.sudoku_chat_prompt`); the answer is the first
  16 digits inside the last ``<answer>`` tag. When there is no tag or it holds no
  digit, a grid written outside the tags counts, as in the published (d1 / DTM)
  evaluation scorer: the last run of 16 digits (optionally as four rows of four
  separated by whitespace) anywhere in the response. Option ``grid_outside_tags``
  (default true) turns that fallback off.

Reward: the fraction of the originally blank cells answered right (the
published cell accuracy, per puzzle), in [0, 1].
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Sequence
from pathlib import Path

from tiltmatch.data import DatasetError, read_csv, shared_data_dir
from tiltmatch.tasks.base import Example, Task
from tiltmatch.tasks.extraction import extract_answer_tag
from tiltmatch.tasks.prompts import SudokuShot, sudoku_chat_prompt

CELLS = 16
DIGITS = "1234"
BLANK = "0"
FORMATS = ("char", "chat")
PUBLISHED_SPLITS = {"test_split_new": "sudoku/test_split_new.csv", "test_d1": "sudoku/test_d1.csv"}
DEFAULT_GENERATED_SIZE = 1000  # examples of a generated split when ``n`` is not given
HELD_OUT_MODULUS = 4  # a grid is held out iff its stable hash is 0 mod this

# The solution grids of the published ``sudoku/test_split_new.csv`` (88 grids). Kept in the
# code so the train split never depends on whether the data folder is found; the file's
# grids are added when it is (a test checks the two agree).
_PUBLISHED_TEST_GRIDS_TEXT = """
    1234342143122143 1234432124133142 1243341221344321 1243341243212134 1324241332414132
    1324241342313142 1324421324313142 1324421331422431 1324423121433412 1324423124133142
    1324423134122143 1342421324313124 1342423131242413 1423231431424231 1423321441322341
    1423324121344312 1423324123144132 1432321423414123 1432324141232314 2134342112434312
    2134342113424213 2134431232411423 2134432112433412 2143341242311324 2143342143121234
    2143431234211234 2143432132141432 2314142342313142 2314143241233241 2314412314323241
    2314413212433421 2314413214233241 2314413234211243 2341143231244213 2341143232144123
    2341412312343412 2341412332141432 2341413214233214 2413132432414132 2413314243211234
    2431132431424213 2431132442133142 2431134231244213 2431134232144123 2431134242133124
    2431312412434312 3124243112434312 3124243143121243 3124421314322341 3124421323411432
    3124421324311342 3142241312344321 3142241313244231 3142421324311324 3142423113242413
    3142423123141423 3142423124131324 3214412313422431 3241142343122134 3241412314322314
    3241413213242413 3241413223141423 3412123421434321 3412123443212143 3412124343212134
    3412214312344321 3412214343211234 3421123443122143 3421214312344312 4123231414323241
    4123231432411432 4123234114323214 4123234132141432 4123234134121234 4123321413422431
    4123321423411432 4132231414233241 4132321414232341 4132324113242413 4132324123141423
    4213134224313124 4213134234212134 4231132424133142 4231134224133124 4312123434212143
    4312213434211243 4312214312343421 4321123421433412
"""
PUBLISHED_TEST_GRIDS = frozenset(_PUBLISHED_TEST_GRIDS_TEXT.split())


# --- grids and the solver -------------------------------------------------------------------


def _peers(cell: int) -> frozenset[int]:
    """The cells sharing a row, column or 2x2 box with ``cell`` (itself excluded)."""
    r, c = divmod(cell, 4)
    return frozenset(
        j
        for j in range(CELLS)
        if j != cell
        and (j // 4 == r or j % 4 == c or (j // 4 // 2 == r // 2 and j % 4 // 2 == c // 2))
    )


PEERS: tuple[frozenset[int], ...] = tuple(_peers(i) for i in range(CELLS))


@functools.cache
def all_grids() -> tuple[str, ...]:
    """Every valid 4x4 grid as a 16-digit string, in lexicographic order (288 of them)."""
    grids: list[str] = []
    cells = [""] * CELLS

    def fill(i: int) -> None:
        if i == CELLS:
            grids.append("".join(cells))
            return
        used = {cells[j] for j in PEERS[i] if j < i}
        for d in DIGITS:
            if d not in used:
                cells[i] = d
                fill(i + 1)
        cells[i] = ""

    fill(0)
    return tuple(grids)


@functools.cache
def _grid_bitsets() -> tuple[tuple[int, ...], ...]:
    """``bits[cell][d]``: the set of grids (as bits of an int) with digit ``d + 1`` at ``cell``."""
    bits = [[0] * 4 for _ in range(CELLS)]
    for k, grid in enumerate(all_grids()):
        for cell, ch in enumerate(grid):
            bits[cell][int(ch) - 1] |= 1 << k
    return tuple(tuple(row) for row in bits)


def _consistent(puzzle: str) -> int:
    """The grids that agree with every given digit of ``puzzle``, as a bitset."""
    if len(puzzle) != CELLS or any(ch not in "01234" for ch in puzzle):
        raise ValueError(f"a puzzle is 16 digits 0-4 (0 = blank), got {puzzle!r}")
    bits = _grid_bitsets()
    found = (1 << len(all_grids())) - 1
    for cell, ch in enumerate(puzzle):
        if ch != BLANK:
            found &= bits[cell][int(ch) - 1]
    return found


def solutions(puzzle: str) -> list[str]:
    """All valid grids that complete ``puzzle`` (16 digits, 0 = blank)."""
    found = _consistent(puzzle)
    return [g for k, g in enumerate(all_grids()) if found >> k & 1]


def has_unique_solution(puzzle: str) -> bool:
    """Whether exactly one valid grid completes ``puzzle``."""
    return _consistent(puzzle).bit_count() == 1


def is_valid_grid(grid: str) -> bool:
    """Whether ``grid`` is a complete, valid 4x4 Sudoku grid."""
    return len(grid) == CELLS and all(
        ch in DIGITS and all(grid[j] != ch for j in PEERS[i]) for i, ch in enumerate(grid)
    )


def is_held_out_grid(grid: str) -> bool:
    """Whether ``grid`` belongs to the generated test split (a fixed, stable hash partition)."""
    digest = hashlib.sha256(f"sudoku-grid:{grid}".encode()).hexdigest()
    return int(digest, 16) % HELD_OUT_MODULUS == 0


def published_test_grids() -> frozenset[str]:
    """Grids of the published test split: the embedded list, plus the file's when it is found."""
    try:
        path = shared_data_dir() / PUBLISHED_SPLITS["test_split_new"]
    except DatasetError:
        return PUBLISHED_TEST_GRIDS
    if not path.is_file():
        return PUBLISHED_TEST_GRIDS
    rows = read_csv(path, required=("Puzzle", "Solution"))
    return PUBLISHED_TEST_GRIDS | {row["Solution"] for row in rows}


@functools.cache
def split_grids(split: str) -> tuple[str, ...]:
    """Solution grids of the generated ``"train"`` or ``"test"`` split (disjoint)."""
    if split == "test":
        return tuple(g for g in all_grids() if is_held_out_grid(g))
    if split == "train":
        excluded = published_test_grids()
        return tuple(g for g in all_grids() if not is_held_out_grid(g) and g not in excluded)
    raise ValueError(f"generated splits are 'train' and 'test', got {split!r}")


def random_puzzle(grid: str, blanks: int, rng: random.Random, max_tries: int = 10_000) -> str:
    """``grid`` with ``blanks`` random cells blanked, redrawn until the solution is unique.

    Rejection sampling keeps the puzzle uniform over the unique ``blanks``-cell masks
    of the grid (about 1 in 20 masks is unique at 12 blanks, nearly all at 6).
    """
    for _ in range(max_tries):
        hidden = set(rng.sample(range(CELLS), blanks))
        puzzle = "".join(BLANK if i in hidden else ch for i, ch in enumerate(grid))
        if has_unique_solution(puzzle):
            return puzzle
    raise ValueError(f"no puzzle with {blanks} blanks and a unique solution found for {grid}")


def singles_trace(puzzle: str) -> list[str] | None:
    """Steps that solve ``puzzle`` by naked singles, one line per cell; None if they stall.

    Used to write the reasoning of the few-shot examples.
    """
    cells = list(puzzle)
    steps: list[str] = []
    while BLANK in cells:
        for i, ch in enumerate(cells):
            if ch != BLANK:
                continue
            seen = sorted({cells[j] for j in PEERS[i]} - {BLANK})
            left = [d for d in DIGITS if d not in seen]
            if len(left) == 1:
                r, c = divmod(i, 4)
                steps.append(
                    f"Row {r + 1}, column {c + 1}: its row, column and box already hold "
                    f"{', '.join(seen)}, so it must be {left[0]}."
                )
                cells[i] = left[0]
                break
        else:
            return None
    return steps


@functools.cache
def few_shot_examples(k: int = 3) -> tuple[SudokuShot, ...]:
    """The fixed worked examples of the chat prompt: puzzles of distinct training grids."""
    rng = random.Random("sudoku:few-shot")
    grids = list(split_grids("train"))
    rng.shuffle(grids)
    shots: list[SudokuShot] = []
    for grid in grids:
        puzzle = random_puzzle(grid, 8, rng)
        steps = singles_trace(puzzle)
        if steps is None:  # keep examples whose reasoning is a plain chain of deductions
            continue
        steps.append(f"Reading the rows in order gives {grid}.")
        shots.append(SudokuShot(puzzle=puzzle, reasoning="\n".join(steps), solution=grid))
        if len(shots) == k:
            break
    return tuple(shots)


# --- the task -------------------------------------------------------------------------------

_DIGIT = re.compile(r"[0-9]")
# A whole grid outside the tags: 16 digits, or four rows of four split by whitespace.
_LOOSE_GRID = re.compile(r"(?<![0-9])[0-9]{4}(?:\s*[0-9]{4}){3}(?![0-9])")


class SudokuTask(Task):
    """4x4 Sudoku with unique solutions; reward = cell accuracy over the blank cells.

    Options: ``format`` ("char" or "chat"), ``blanks`` (inclusive range of blank
    cells of generated puzzles, within 1..12), ``demo_error_rate`` (probability a
    demonstration gets a blank cell wrong), ``response_length`` (tokens; 16 for
    "char", 256 for "chat" by default), ``grid_outside_tags`` (chat: read a
    grid written outside the tags when the tags hold none; default true).

    Splits: "train" and "test" (generated, disjoint by solution grid),
    "test_split_new" and "test_d1" (the shared CSVs), or a path to a CSV with
    ``Puzzle`` and ``Solution`` columns.
    """

    name = "sudoku"
    alphabet = "01234"

    def __init__(
        self,
        format: str = "char",
        blanks: Sequence[int] = (6, 12),
        demo_error_rate: float = 0.3,
        response_length: int | None = None,
        grid_outside_tags: bool = True,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"option 'format' must be one of {FORMATS}, got {format!r}")
        if (
            len(blanks) != 2
            or not all(isinstance(b, int) for b in blanks)
            or not 1 <= blanks[0] <= blanks[1] <= 12
        ):
            # 12 is the ceiling: a 4x4 puzzle needs at least 4 givens to be unique.
            raise ValueError(
                f"option 'blanks' must be a range (low, high) with 1 <= low <= high <= 12, "
                f"got {blanks!r}"
            )
        if not 0.0 <= demo_error_rate <= 1.0:
            raise ValueError(f"option 'demo_error_rate' must be in [0, 1], got {demo_error_rate!r}")
        if response_length is None:
            response_length = CELLS if format == "char" else 256
        if response_length < CELLS:
            raise ValueError(
                f"option 'response_length' must be at least {CELLS}, got {response_length!r}"
            )
        self.format = format
        self.blanks = (blanks[0], blanks[1])
        self.demo_error_rate = demo_error_rate
        self.response_length = response_length
        if not isinstance(grid_outside_tags, bool):
            raise ValueError(
                f"option 'grid_outside_tags' must be true or false, got {grid_outside_tags!r}"
            )
        self.grid_outside_tags = grid_outside_tags

    # --- examples ---

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """Examples of ``split``: generated ones seeded by ``seed``, a file's in file order."""
        if split in ("train", "test"):
            return self._generate(split, DEFAULT_GENERATED_SIZE if n is None else n, seed)
        if split in PUBLISHED_SPLITS:
            path = shared_data_dir() / PUBLISHED_SPLITS[split]
        elif split.endswith(".csv") or Path(split).exists():
            path = Path(split)
        else:
            known = ", ".join(["train", "test", *PUBLISHED_SPLITS])
            raise ValueError(f"unknown sudoku split {split!r}: use one of {known} or a CSV path")
        examples = self._load(path, split)
        return examples if n is None else examples[:n]

    def _generate(self, split: str, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"sudoku:{split}:{seed}")
        grids = split_grids(split)
        out: list[Example] = []
        seen: set[str] = set()
        for _ in range(100 * n + 1000):
            if len(out) >= n:
                break
            grid = rng.choice(grids)
            puzzle = random_puzzle(grid, rng.randint(*self.blanks), rng)
            if puzzle not in seen:  # distinct puzzles, so no prompt dominates a split
                seen.add(puzzle)
                out.append(self._example(puzzle, grid, f"sudoku:{split}:{puzzle}"))
        if len(out) < n:
            raise ValueError(f"could not generate {n} distinct {split!r} puzzles")
        return out

    def _load(self, path: Path, split: str) -> list[Example]:
        out = []
        for lineno, row in enumerate(read_csv(path, required=("Puzzle", "Solution")), 2):
            puzzle, solution = row["Puzzle"].strip(), row["Solution"].strip()
            where = f"{path}:{lineno}"
            if not is_valid_grid(solution):
                raise DatasetError(f"{where}: 'Solution' is not a valid 4x4 grid: {solution!r}")
            if len(puzzle) != CELLS or any(
                ch != BLANK and ch != s for ch, s in zip(puzzle, solution, strict=True)
            ):
                raise DatasetError(
                    f"{where}: 'Puzzle' {puzzle!r} does not match its solution {solution!r}"
                )
            out.append(self._example(puzzle, solution, f"sudoku:{split}:{lineno - 2}"))
        return out

    def _example(self, puzzle: str, solution: str, uid: str) -> Example:
        if self.format == "char":
            prompt = puzzle
        else:
            prompt = sudoku_chat_prompt(puzzle, few_shot_examples())
        blanks = tuple(i for i, ch in enumerate(puzzle) if ch == BLANK)
        return Example(
            prompt=prompt,
            reference=solution,
            data={"puzzle": puzzle, "solution": solution, "blanks": blanks},
            uid=uid,
        )

    # --- scoring ---

    def answer_grid(self, response: str) -> str:
        """The answered grid as the reward reads it (may be short or hold non-digits).

        "char": the response's first 16 characters, position by position. "chat":
        the first 16 digits inside the last ``<answer>`` tag; without a tag or a digit in
        it, the last 16-digit grid outside the tags (``grid_outside_tags``); else "".
        """
        if self.format == "char":
            return response[:CELLS]
        answer = extract_answer_tag(response)
        digits = "" if answer is None else "".join(_DIGIT.findall(answer))[:CELLS]
        if digits or not self.grid_outside_tags:
            return digits
        grids = _LOOSE_GRID.findall(response)
        return "".join(_DIGIT.findall(grids[-1])) if grids else ""

    def blank_cells_correct(self, response: str, example: Example) -> tuple[int, int]:
        """(right, total) over the example's originally blank cells; missing cells are wrong."""
        answer = self.answer_grid(response)
        solution = example.data["solution"]
        blanks = example.data["blanks"]
        right = sum(i < len(answer) and answer[i] == solution[i] for i in blanks)
        return right, len(blanks)

    def reward(self, response: str, example: Example) -> float:
        """Cell accuracy of ``response`` over the blank cells of ``example``, in [0, 1]."""
        right, total = self.blank_cells_correct(response, example)
        return right / total if total else 1.0

    def metrics(self, responses: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """``cell_accuracy`` (micro-averaged over all blank cells), ``solved``, ``reward``."""
        right = total = solved = 0
        rewards = []
        for response, example in zip(responses, examples, strict=True):
            r, t = self.blank_cells_correct(response, example)
            right, total, solved = right + r, total + t, solved + (r == t)
            rewards.append(self.checked_reward(response, example))
        n = max(len(rewards), 1)
        return {
            "cell_accuracy": right / total if total else 0.0,
            "solved": solved / n,
            "reward": sum(rewards) / n,
        }

    def demonstration(self, example: Example, rng: random.Random) -> str:
        """The solution with each blank cell made wrong with probability ``demo_error_rate``.

        Always 16 digits 1-4 (right in form), so a base model trained on these is
        imperfect but answers in the task's format, with several answers per prompt.
        """
        if self.format != "char":
            raise NotImplementedError("sudoku demonstrations exist for the 'char' format only")
        cells = list(example.data["solution"])
        for i in example.data["blanks"]:
            if rng.random() < self.demo_error_rate:
                cells[i] = rng.choice([d for d in DIGITS if d != cells[i]])
        return "".join(cells)
