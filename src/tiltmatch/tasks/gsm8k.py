"""GSM8K: grade-school word problems with a single numeric answer.

The reference is the number after ``####`` in a row's worked solution. A
response is scored by extracting one number from it (:func:`extract_number`)
and comparing values, so ``1,000``, ``$1000.00`` and ``\\boxed{1000}`` all match
a reference of 1000. Reward 1 for a match, else 0 (METHOD.md section 1).
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

from tiltmatch.data import DatasetError
from tiltmatch.tasks.base import Example, Task
from tiltmatch.tasks.extraction import extract_answer_tag, extract_boxed
from tiltmatch.tasks.reasoning import (
    load_hub_rows,
    load_rows,
    reasoning_prompt,
    reasoning_response,
    subset_indices,
)

HUB_NAME = "openai/gsm8k"
HUB_CONFIG = "main"
REQUIRED = ("question", "answer")
TOLERANCE = 1e-6

# An unsigned number: thousands groups ("1,000"), plain digits, decimals, ".5".
_UNSIGNED = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A minus sign counts only when it is not a subtraction: "16-3" is 16 and 3.
_SIGNED = rf"(?:(?<![\w)\]}}])-)?(?:{_UNSIGNED})"
# One number as it appears in running text: a LaTeX fraction, "a/b", or a number.
_NUMBER_IN_TEXT = re.compile(
    rf"(?P<sign>(?<![\w)\]}}])-)?\\[dt]?frac\{{(?P<fn>-?(?:{_UNSIGNED}))\}}\{{(?P<fd>{_UNSIGNED})\}}"
    rf"|(?P<num>{_SIGNED})(?:/(?P<den>{_UNSIGNED}))?"
)
# Decorations around a number that carry no value: currency, percent, LaTeX spacing.
_DECORATIONS = ("\\$", "$", "\\%", "%", "\\!", "\\,", "\\;", "\\ ", "{,}")
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{[^{}]*\}")


# A model may write any number of digits; Fraction() of 5,000 digits hits Python's int-string
# limit (ValueError) and float() of 400 overflows. A number this long is never a GSM8K answer.
MAX_DIGITS = 100


class _TooLong(Exception):
    """A number with more than :data:`MAX_DIGITS` digits: it matches no reference."""


def _value(number: str) -> Fraction:
    digits = number.replace(",", "")
    if len(digits) > MAX_DIGITS:
        raise _TooLong
    return Fraction(digits)


def _match_value(m: re.Match[str]) -> float | None:
    try:
        if m.group("fn") is not None:
            num, den = _value(m.group("fn")), _value(m.group("fd"))
            sign = -1 if m.group("sign") else 1
        else:
            num = _value(m.group("num"))
            den = _value(m.group("den")) if m.group("den") is not None else Fraction(1)
            sign = 1
    except _TooLong:
        return math.nan  # a number, but one equal to nothing (nan compares unequal)
    if den == 0:
        return None
    try:
        return float(sign * num / den)
    except OverflowError:
        return math.nan


def parse_number(text: str) -> float | None:
    """The value of ``text`` when the whole of it is one number, else None.

    Accepts thousands commas (``1,000``), currency and percent signs, a trailing
    period, unit words in ``\\text{}``, fractions ``3/4`` and ``\\frac{3}{4}``,
    and a Unicode minus.
    """
    s = _TEXT_MACRO.sub("", text.replace("\u2212", "-"))
    for token in _DECORATIONS:
        s = s.replace(token, "")
    s = s.strip().rstrip(".").strip()
    m = _NUMBER_IN_TEXT.fullmatch(s)
    return _match_value(m) if m else None


def last_number(text: str) -> float | None:
    """The value of the last number written anywhere in ``text``, or None."""
    s = text.replace("\u2212", "-").replace("{,}", "")
    found = list(_NUMBER_IN_TEXT.finditer(s))
    return _match_value(found[-1]) if found else None


def _number_in(candidate: str) -> float | None:
    whole = parse_number(candidate)
    return whole if whole is not None else last_number(candidate)


def extract_number(response: str) -> float | None:
    """The numeric answer of a response, or None when it has none.

    In order of preference: a ``\\boxed{}`` inside the ``<answer>`` tag, the
    answer tag's content, a ``\\boxed{}`` anywhere, the last number in the text.
    Within a candidate the whole candidate is tried as one number first, then
    its last number ("18 dollars" gives 18). The first rule that yields a
    number wins, so a response that drops the format still gets scored.
    """
    tag = extract_answer_tag(response)
    candidates = []
    if tag is not None:
        candidates += [extract_boxed(tag), tag]
    candidates.append(extract_boxed(response))
    for candidate in candidates:
        if candidate:
            value = _number_in(candidate)
            if value is not None:
                return value
    return last_number(response)


def reference_answer(solution: str) -> str:
    """The final answer of a GSM8K worked solution: the text after ``####``, commas removed."""
    if "####" not in solution:
        raise ValueError("the solution has no '#### <number>' final answer")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    value = parse_number(answer)
    if value is None or math.isnan(value):
        raise ValueError(f"the final answer {answer!r} after '####' is not a number")
    return answer


def _worked_steps(solution: str) -> str:
    # The dataset's calculator annotations ("<<16-3-4=9>>") are tool calls of
    # its original annotators, not text a model should learn to write.
    return re.sub(r"<<[^>]*>>", "", solution.rsplit("####", 1)[0]).strip()


class GSM8KTask(Task):
    """GSM8K in the published reasoning format; reward 1 on a numerically equal answer.

    Splits: ``"test"`` (the shipped 1319-row copy), ``"train"`` (the hub's
    ``openai/gsm8k`` train split; there is no local copy), a local JSONL path
    with ``question`` and ``answer`` fields, or a hub dataset name
    (``"name"`` or ``"name:split"``).
    """

    name = "gsm8k"

    def __init__(self, response_length: int = 256) -> None:
        self.response_length = response_length

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """Examples of ``split``: all rows in file order, or a seeded subset of ``n``."""
        if split == "train":
            # Only the hub has it: say so if loading fails, rather than a bare network error.
            try:
                rows = load_hub_rows(HUB_NAME, HUB_CONFIG, "train", REQUIRED)
            except DatasetError as err:
                raise DatasetError(
                    f"GSM8K 'train' is the hub split {HUB_NAME} (config {HUB_CONFIG!r}); "
                    f"there is no local copy of it. {err}"
                ) from err
            label = "train"
        else:
            rows, label = load_rows(
                split,
                shared_file="gsm8k/test.jsonl",
                hub_name=HUB_NAME,
                hub_config=HUB_CONFIG,
                required=REQUIRED,
            )
        examples = []
        for i in subset_indices(len(rows), n, seed):
            row = rows[i]
            try:
                reference = reference_answer(str(row["answer"]))
            except ValueError as err:
                raise DatasetError(
                    f"GSM8K source {split!r}, row {i}, field 'answer': {err}"
                ) from None
            examples.append(
                Example(
                    prompt=reasoning_prompt(str(row["question"])),
                    reference=reference,
                    data={"question": row["question"], "solution": row["answer"], "index": i},
                    uid=f"gsm8k/{label}/{i}",
                )
            )
        return examples

    def reward(self, response: str, example: Example) -> float:
        """1.0 when the extracted number equals the reference (within 1e-6), else 0.0."""
        if example.reference is None:
            raise ValueError(f"example {example.uid!r} has no reference answer")
        reference = parse_number(example.reference)
        predicted = extract_number(response)
        if reference is None or predicted is None:
            return 0.0
        return float(abs(predicted - reference) < TOLERANCE)

    def demonstration(self, example: Example, rng: random.Random) -> str:
        """The dataset's worked solution, in the reasoning format (for SFT); ``rng`` is unused."""
        return reasoning_response(
            _worked_steps(str(example.data["solution"])), str(example.reference)
        )
