r"""Countdown with three numbers: combine them with + - * / to hit a target.

An instance is a list of numbers (three, each in ``min_number..max_number``)
and an integer target in ``1..max_target`` that some expression using each
number exactly once reaches. The defaults (numbers 1..100, targets 1..100) are
the published distribution: measured on the shared ``countdown/test.jsonl``
(256 rows, three numbers each, numbers 1..100, targets 1..100), which is also
the range of the published training problems (METHOD.md section 6).
Generation draws a random expression tree over the numbers and evaluates it
exactly (:class:`~fractions.Fraction`), so intermediate results may be
fractions; only integer targets in range are kept.

Splits: "train" and "test" are generated and disjoint (an instance is held out
iff a stable hash of its sorted numbers and target is 0 mod 10); "published"
is the shared ``countdown/test.jsonl`` (fields ``input`` = "a,b,c" and
``output`` = the target); any other split is a path to such a JSONL file.

Formats (option ``format``):

- ``"char"``: prompt = the numbers, comma-separated, then ``=`` and the target,
  e.g. ``"12,34,56=78"``; response = the expression, e.g. ``"(56-34)*12"``,
  padded to ``response_length`` by the end symbol.
- ``"chat"``: the published prompt for LLaDA-8B-Instruct
  (:func:`~tiltmatch.tasks.prompts.countdown_chat_prompt`); the expression is the
  last ``<answer>`` tag, with a trailing ``= <number>`` removed; LaTeX and
  typographic operators (``\times``, ``\cdot``, ``\div``, ``×``, ``·``, ``÷``) and
  ``$`` signs are read as ``*``, ``*``, ``/`` as the published evaluation does.

Reward (the published d1 scheme): 1.0 when the expression uses exactly the
given numbers (as a multiset) and evaluates to the target within 1e-5; 0.1 when
it uses exactly the given numbers but misses the target or divides by zero;
0.0 otherwise (unparseable, or other numbers). Option ``right_numbers_reward``
changes the 0.1. Option ``tag_reward`` (chat format only) switches to the DTM
release's training reward: 1.0 correct, ``tag_reward`` (0.1 in the published
Countdown recipe) for any other response with an ``<answer>`` tag (wrong value,
wrong numbers or not evaluable), 0.0 without a tag. Evaluation accuracy is the
fraction of correct answers (reward 1) under either scheme.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

from tiltmatch.data import DatasetError, read_jsonl, shared_data_dir
from tiltmatch.tasks.arith import ArithmeticParseError, DivisionByZeroError, parse_expression
from tiltmatch.tasks.base import Example, Task
from tiltmatch.tasks.extraction import extract_answer_tag
from tiltmatch.tasks.prompts import countdown_chat_prompt

FORMATS = ("char", "chat")
OPERATORS = "+-*/"
PUBLISHED_FILE = "countdown/test.jsonl"
DEFAULT_GENERATED_SIZE = 1000  # examples of a generated split when ``n`` is not given
HELD_OUT_MODULUS = 10  # an instance is held out iff its stable hash is 0 mod this
TOLERANCE = 1e-5  # the published checker's tolerance on the value
# The solver enumerates every expression: 168 for 3 numbers, 5,846 for 4 (0.2 s), about 10^5
# for 5 (3 s a row) and 10^7 for 6 (a hang). Rows with more numbers than this get no reference
# solution (the reward does not need one: it evaluates the response's expression).
MAX_SOLVED_NUMBERS = 4
CORRECT_REWARD, RIGHT_NUMBERS_REWARD, WRONG_REWARD = 1.0, 0.1, 0.0

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # precedence of a number: never needs parentheses
_TRAILING_RESULT = re.compile(r"\s*=\s*-?\d+(?:\.\d+)?\s*$")
# Operators a model may write in LaTeX or typography, read as the ASCII ones (the published
# evaluation does the same for \div, \times and \cdot); ``$`` delimiters are dropped.
_OPERATOR_SPELLINGS = (
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\\div", "/"),
    ("×", "*"),
    ("·", "*"),
    ("÷", "/"),
    ("$", ""),
)


# --- instances, the split and the solver ----------------------------------------------------


def instance_key(numbers: Sequence[int], target: int) -> str:
    """A canonical key of an instance: sorted numbers and target, e.g. ``"12,34,56=78"``."""
    return ",".join(str(n) for n in sorted(numbers)) + f"={target}"


def is_held_out(numbers: Sequence[int], target: int) -> bool:
    """Whether an instance belongs to the generated test split (stable hash, 1 in 10)."""
    digest = hashlib.sha256(f"countdown:{instance_key(numbers, target)}".encode()).hexdigest()
    return int(digest, 16) % HELD_OUT_MODULUS == 0


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    """``a op b`` exactly; None when dividing by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


@dataclass(frozen=True)
class _Expr:
    """An expression with its rendering, exact value and top-level precedence."""

    text: str
    value: Fraction
    precedence: int


def _combine(op: str, left: _Expr, right: _Expr) -> _Expr | None:
    """``left op right`` with only the parentheses the value needs; None if undefined."""
    value = _apply(op, left.value, right.value)
    if value is None:
        return None
    prec = _PRECEDENCE[op]
    lhs = left.text if left.precedence >= prec else f"({left.text})"
    # A right operand of equal precedence needs parentheses only after - and /:
    # a+(b-c) = a+b-c and a*(b/c) = a*b/c have the same exact value.
    right_needs = right.precedence < prec or (right.precedence == prec and op in "-/")
    rhs = f"({right.text})" if right_needs else right.text
    return _Expr(f"{lhs}{op}{rhs}", value, prec)


@functools.lru_cache(maxsize=4096)
def all_expressions(numbers: tuple[int, ...]) -> Mapping[str, Fraction]:
    """Every expression using each number exactly once, rendered, with its value.

    Enumerates all binary trees over every ordering of the numbers and every
    operator (expressions whose value is undefined are left out); different
    trees that render the same string appear once.
    """
    count = len(numbers)
    if count == 0:
        return MappingProxyType({})
    # Subsets of positions as bitmasks, built up from single numbers.
    table: dict[int, dict[str, _Expr]] = {}
    for i, n in enumerate(numbers):
        table[1 << i] = {str(n): _Expr(str(n), Fraction(n), _ATOM)}
    for mask in range(1, 1 << count):
        if mask in table:
            continue
        exprs: dict[str, _Expr] = {}
        sub = (mask - 1) & mask
        while sub:
            for left in table[sub].values():
                for right in table[mask ^ sub].values():
                    for op in OPERATORS:
                        expr = _combine(op, left, right)
                        if expr is not None:
                            exprs.setdefault(expr.text, expr)
            sub = (sub - 1) & mask
        table[mask] = exprs
    # Read-only: the result is cached and shared between callers.
    return MappingProxyType({text: e.value for text, e in table[(1 << count) - 1].items()})


def solve(numbers: Sequence[int], target: int) -> list[str]:
    """All expressions (from :func:`all_expressions`) reaching ``target``, shortest first.

    At most :data:`MAX_SOLVED_NUMBERS` numbers: the enumeration grows super-exponentially.
    """
    if len(numbers) > MAX_SOLVED_NUMBERS:
        raise ValueError(
            f"the countdown solver takes at most {MAX_SOLVED_NUMBERS} numbers, got {len(numbers)}"
        )
    found = [
        text
        for text, value in all_expressions(tuple(numbers)).items()
        if abs(value - target) < TOLERANCE
    ]
    return sorted(found, key=lambda s: (len(s), s))


def random_instance(
    rng: random.Random,
    count: int = 3,
    min_number: int = 1,
    max_number: int = 100,
    max_target: int = 100,
) -> tuple[tuple[int, ...], int]:
    """Numbers and a reachable integer target in ``1..max_target``, from a random expression tree.

    Numbers are drawn independently (repeats allowed). The tree is built by
    joining two random subtrees at a time with a random operator; draws whose
    value is undefined, fractional or out of range are redrawn.
    """
    while True:
        numbers = tuple(rng.randint(min_number, max_number) for _ in range(count))
        values: list[Fraction | None] = [Fraction(n) for n in numbers]
        while len(values) > 1:
            i, j = rng.sample(range(len(values)), 2)  # ordered: a-b and b-a both occur
            a, b = values[i], values[j]
            joined = None if a is None or b is None else _apply(rng.choice(OPERATORS), a, b)
            values = [v for k, v in enumerate(values) if k not in (i, j)] + [joined]
        value = values[0]
        if value is not None and value.denominator == 1 and 1 <= value <= max_target:
            return numbers, int(value)


# --- the task -------------------------------------------------------------------------------


class CountdownTask(Task):
    """Countdown over three numbers; reward 1 / 0.1 / 0 as in the published checker.

    Options: ``format`` ("char" or "chat"), ``min_number`` and ``max_number``
    (range of the generated numbers, default 1..100), ``max_target`` (generated
    targets lie in 1..max_target, default 100), ``demo_correct_prob``
    (probability a demonstration is correct, default 0.35), ``response_length``
    (tokens; 16 for "char", 256 for "chat" by default), ``right_numbers_reward``
    (reward of the right numbers missing the target, default 0.1 as in d1),
    ``tag_reward`` (None; a number switches to the tag scheme of the module docstring).
    """

    name = "countdown"
    alphabet = "0123456789+-*/(),="

    def __init__(
        self,
        format: str = "char",
        min_number: int = 1,
        max_number: int = 100,
        max_target: int = 100,
        demo_correct_prob: float = 0.35,
        response_length: int | None = None,
        right_numbers_reward: float = RIGHT_NUMBERS_REWARD,
        tag_reward: float | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"option 'format' must be one of {FORMATS}, got {format!r}")
        if not 1 <= min_number <= max_number:
            raise ValueError(
                f"options 'min_number' and 'max_number' must satisfy 1 <= min_number <= "
                f"max_number, got {min_number!r} and {max_number!r}"
            )
        if max_target < 1:
            raise ValueError(f"option 'max_target' must be at least 1, got {max_target!r}")
        if not 0.0 <= demo_correct_prob <= 1.0:
            raise ValueError(
                f"option 'demo_correct_prob' must be in [0, 1], got {demo_correct_prob!r}"
            )
        # Longest demonstration: three numbers, two operators and one pair of parentheses.
        longest = 3 * len(str(max_number)) + 4
        if response_length is None:
            response_length = 16 if format == "char" else 256
        if response_length < longest:
            raise ValueError(
                f"option 'response_length' must be at least {longest} for numbers up to "
                f"{max_number}, got {response_length!r}"
            )
        self.format = format
        self.min_number = min_number
        self.max_number = max_number
        self.max_target = max_target
        self.demo_correct_prob = demo_correct_prob
        if not 0.0 <= right_numbers_reward < CORRECT_REWARD:
            raise ValueError(
                f"option 'right_numbers_reward' must be in [0, 1), got {right_numbers_reward!r}"
            )
        self.response_length = response_length
        self.right_numbers_reward = float(right_numbers_reward)
        if tag_reward is not None:
            if format != "chat":
                raise ValueError("option 'tag_reward' needs format 'chat' (answers in tags)")
            if isinstance(tag_reward, bool) or not 0.0 <= float(tag_reward) < CORRECT_REWARD:
                raise ValueError(f"option 'tag_reward' must be in [0, 1), got {tag_reward!r}")
            tag_reward = float(tag_reward)
        self.tag_reward = tag_reward

    # --- examples ---

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """Examples of ``split``: generated ones seeded by ``seed``, a file's in file order."""
        if split in ("train", "test"):
            return self._generate(split, DEFAULT_GENERATED_SIZE if n is None else n, seed)
        if split == "published":
            path = shared_data_dir() / PUBLISHED_FILE
        elif split.endswith(".jsonl") or Path(split).exists():
            path = Path(split)
        else:
            raise ValueError(
                f"unknown countdown split {split!r}: use train, test, published or a JSONL path"
            )
        examples = self._load(path, split)
        return examples if n is None else examples[:n]

    def _generate(self, split: str, n: int, seed: int) -> list[Example]:
        rng = random.Random(f"countdown:{split}:{seed}")
        want_held_out = split == "test"
        out: list[Example] = []
        seen: set[str] = set()
        for _ in range(200 * n + 1000):
            if len(out) >= n:
                break
            numbers, target = random_instance(
                rng, 3, self.min_number, self.max_number, self.max_target
            )
            key = instance_key(numbers, target)
            if is_held_out(numbers, target) == want_held_out and key not in seen:
                seen.add(key)  # distinct instances, so no prompt dominates a split
                out.append(self._example(numbers, target, f"countdown:{split}:{key}"))
        if len(out) < n:
            raise ValueError(f"could not generate {n} distinct {split!r} instances")
        return out

    def _load(self, path: Path, split: str) -> list[Example]:
        out = []
        for i, row in enumerate(read_jsonl(path, required=("input", "output"))):
            where = f"{path}, row {i + 1}"
            for field in ("input", "output"):
                _check_digits(str(row[field]), field, where)
            try:
                numbers = tuple(int(x) for x in str(row["input"]).split(","))
            except ValueError:
                raise DatasetError(
                    f"{where}: field 'input' is not comma-separated integers: {row['input']!r}"
                ) from None
            try:
                target = int(str(row["output"]).strip())
            except ValueError:
                raise DatasetError(
                    f"{where}: field 'output' is not an integer: {row['output']!r}"
                ) from None
            if negative := [n for n in numbers if n < 0]:
                # The answer parser reads unsigned numbers only: no response could use them.
                raise DatasetError(
                    f"{where}: field 'input' has negative number {negative[0]}; countdown "
                    "numbers are non-negative"
                )
            out.append(self._example(numbers, target, f"countdown:{split}:{i}"))
        return out

    def _example(self, numbers: tuple[int, ...], target: int, uid: str) -> Example:
        if self.format == "char":
            prompt = ",".join(str(x) for x in numbers) + f"={target}"
        else:
            prompt = countdown_chat_prompt(numbers, target)
        # Bounded work per row: no reference for rows the solver cannot enumerate quickly.
        found = solve(numbers, target) if len(numbers) <= MAX_SOLVED_NUMBERS else []
        return Example(
            prompt=prompt,
            reference=found[0] if found else None,
            data={"numbers": numbers, "target": target},
            uid=uid,
        )

    # --- scoring ---

    def answer_expression(self, response: str) -> str | None:
        """The expression the reward reads: the response ("char") or its last answer tag."""
        if self.format == "char":
            return response
        answer = extract_answer_tag(response)
        if answer is None:
            return None
        for spelling, ascii_op in _OPERATOR_SPELLINGS:
            answer = answer.replace(spelling, ascii_op)
        return _TRAILING_RESULT.sub("", answer.strip())

    def reward(self, response: str, example: Example) -> float:
        """1.0 right numbers and target; ``right_numbers_reward`` (0.1) for right numbers only
        (or an undefined value); else 0.0. With ``tag_reward``: 1.0 correct, ``tag_reward``
        for any other tagged answer, 0.0 without a tag."""
        expression = self.answer_expression(response)
        if expression is None:
            return WRONG_REWARD
        if self.tag_reward is not None:
            return CORRECT_REWARD if self.is_correct(expression, example) else self.tag_reward
        try:
            tree = parse_expression(expression)
        except ArithmeticParseError:
            return WRONG_REWARD
        if sorted(tree.numbers()) != sorted(example.data["numbers"]):
            return WRONG_REWARD
        try:
            value = tree.evaluate()
        except DivisionByZeroError:
            return self.right_numbers_reward
        hit = abs(value - example.data["target"]) < TOLERANCE
        return CORRECT_REWARD if hit else self.right_numbers_reward

    def is_correct(self, expression: str | None, example: Example) -> bool:
        """Whether ``expression`` uses exactly the example's numbers and hits its target."""
        if expression is None:
            return False
        try:
            tree = parse_expression(expression)
            if sorted(tree.numbers()) != sorted(example.data["numbers"]):
                return False
            return abs(tree.evaluate() - example.data["target"]) < TOLERANCE
        except ArithmeticParseError:  # DivisionByZeroError included
            return False

    def metrics(self, responses: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """``accuracy`` (fraction correct: 0/1 whatever the reward scheme) and mean ``reward``."""
        rewards = [self.checked_reward(r, e) for r, e in zip(responses, examples, strict=True)]
        n = max(len(rewards), 1)
        return {
            "accuracy": sum(r >= CORRECT_REWARD for r in rewards) / n,
            "reward": sum(rewards) / n,
        }

    def demonstration(self, example: Example, rng: random.Random) -> str:
        """A correct expression with probability ``demo_correct_prob``, else one that misses.

        Both kinds use exactly the example's numbers, drawn uniformly from the
        solver's distinct renderings, so the base model sees several answers per
        prompt and scores a moderate reward (about 0.35 + 0.65 * 0.1 by default).
        """
        if self.format != "char":
            raise NotImplementedError("countdown demonstrations exist for the 'char' format only")
        numbers, target = tuple(example.data["numbers"]), example.data["target"]
        if len(numbers) > MAX_SOLVED_NUMBERS:
            raise ValueError(
                f"countdown demonstrations take at most {MAX_SOLVED_NUMBERS} numbers "
                f"(example {example.uid!r} has {len(numbers)})"
            )
        exprs = all_expressions(numbers)
        correct = [t for t, v in exprs.items() if abs(v - target) < TOLERANCE]
        wrong = [t for t, v in exprs.items() if abs(v - target) >= TOLERANCE]
        pool = (
            correct if (rng.random() < self.demo_correct_prob and correct) or not wrong else wrong
        )
        return rng.choice(pool)


#: digits a countdown number of a data file may have (a problem's numbers are small; a
#: longer one is a damaged row, and past 4300 digits Python would refuse to read it)
MAX_NUMBER_DIGITS = 18


def _check_digits(text: str, field: str, where: str) -> None:
    """Refuse a number too long to be a countdown number, saying so (not "bad format")."""
    for piece in text.split(","):
        digits = piece.strip().lstrip("+-")
        if digits.isdigit() and len(digits) > MAX_NUMBER_DIGITS:
            raise DatasetError(
                f"{where}: field {field!r} has a {len(digits)}-digit number; countdown numbers "
                f"have at most {MAX_NUMBER_DIGITS} digits"
            )
