"""MATH-500: competition problems with LaTeX answers, scored two ways.

The answer of a response is the last ``\\boxed{}`` in it, else the content of its
``<answer>`` tag (:func:`extract_math_answer`). It is scored by

- mathematical equivalence under ``math_verify`` (the reward and ``accuracy``):
  ``0.5`` matches ``\\frac{1}{2}``, ``(1, 2]`` matches ``(1,2]``, ``x=5`` matches
  ``5``;
- equality after the string normalisation of the MATH benchmark, which the
  published d1 / DTM tables report (``accuracy_string``):
  :func:`normalize_math_answer`.

math-verify and threads. ``math_verify.parse`` and ``math_verify.verify`` bound
their own run time with ``signal.alarm`` (5 s by default). Python lets only
the main thread install a signal handler, so called from any other thread
(a thread pool scoring rewards, an async server) both raise ``ValueError``
instead of answering; a blanket ``except`` around them would then turn every
reward into 0 without a word. :func:`verify_equivalent` therefore passes the
timeouts only on the main thread, and none elsewhere; there the length cap on
answers is the guard against sympy running away on a pathological string.
Timeouts themselves raise ``math_verify.errors.TimeoutException``, a
``BaseException``; math-verify catches its own, and this module also catches it
in case an alarm fires after the library's handler returned.
"""

from __future__ import annotations

import functools
import logging
import random
import re
import threading
from collections.abc import Sequence
from typing import Any

from tiltmatch.tasks.base import Example, Task
from tiltmatch.tasks.extraction import extract_answer_tag, extract_boxed
from tiltmatch.tasks.reasoning import (
    load_rows,
    reasoning_prompt,
    reasoning_response,
    subset_indices,
)

HUB_NAME = "HuggingFaceH4/MATH-500"
REQUIRED = ("problem", "answer")
OPTIONAL = ("solution", "subject", "level", "unique_id")
# Seconds math-verify may spend parsing or comparing one answer (main thread only).
TIMEOUT_S = 5
# Answers longer than this are never real MATH answers (the longest gold answer
# of MATH-500 is well under 100 characters); refusing them bounds sympy's work
# where no timeout can be set.
MAX_ANSWER_CHARS = 1000

logger = logging.getLogger(__name__)

_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")


def extract_math_answer(response: str) -> str | None:
    """The answer of a response: the last ``\\boxed{}``, else the ``<answer>`` tag content."""
    boxed = extract_boxed(response)
    if boxed:
        return boxed
    tag = extract_answer_tag(response)
    return tag or None


# ---------------------------------------------------------------------------
# Equivalence by math-verify (the reward).


def _math_verify_timeout() -> int | None:
    # signal.alarm works only on the main thread; elsewhere math-verify would
    # raise ValueError, so run it there without a timeout (see module docstring).
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(latex: str) -> list[Any]:
    from math_verify import parse
    from math_verify.errors import TimeoutException

    if len(latex) > MAX_ANSWER_CHARS:
        return []
    # A bare answer is wrapped in \boxed{} so that math-verify reads all of it as
    # one LaTeX expression: unwrapped, "1,-2" parses as 1 and "6 - 5i" as 6.
    # Text with its own math delimiters ($...$, not an escaped \$) is left to
    # math-verify's extractor.
    text = latex if _MATH_DELIMITER.search(latex) else f"\\boxed{{{latex}}}"
    try:
        return parse(text, parsing_timeout=_math_verify_timeout())
    except (Exception, TimeoutException) as err:
        logger.debug("math-verify could not parse %r: %s", latex, err)
        return []


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> list[Any]:
    # Gold answers repeat across every rollout of a prompt: parse each once.
    return _parse(answer)


def verify_equivalent(predicted: str, gold: str) -> bool:
    """Whether math-verify judges the answer ``predicted`` equivalent to the gold ``gold``.

    Both are bare answers (the content of a ``\\boxed{}``). Any failure inside
    math-verify (a parse error, a timeout) counts as not equivalent.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    gold_parsed = _parse_gold(gold)
    predicted_parsed = _parse(predicted)
    if not gold_parsed or not predicted_parsed:
        return False
    try:
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=_math_verify_timeout()))
    except (Exception, TimeoutException) as err:
        logger.debug("math-verify failed on %r vs %r: %s", predicted, gold, err)
        return False


# ---------------------------------------------------------------------------
# Equality after string normalisation (the published metric).

_UNIT_TEXT = re.compile(r"\\(?:text|mbox|textrm|mathrm)\{[^{}]*\}$")
_TEXT = re.compile(r"\\(?:text|mbox|textrm|textbf|mathrm|mathbf)\{([^{}]*)\}")
_SQRT_BARE = re.compile(r"\\sqrt(\w)")
_FRAC_BARE = re.compile(r"\\frac(?:(\d)(\d)|(\d)(\\[a-zA-Z]+|\w)|\{([^{}]*)\}(\w))")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]\w?(?:_\w)?=")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_INT_SLASH = re.compile(r"^(-?\d+)/(\d+)$")


def _fix_frac(m: re.Match[str]) -> str:
    if m.group(1) is not None:  # \frac12
        return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    if m.group(3) is not None:  # \frac1b or \frac1\pi
        return f"\\frac{{{m.group(3)}}}{{{m.group(4)}}}"
    return f"\\frac{{{m.group(5)}}}{{{m.group(6)}}}"  # \frac{a}2


def normalize_math_answer(answer: str) -> str:
    """A canonical string for a MATH answer, in the spirit of the MATH benchmark's normaliser.

    Steps, in order: drop line breaks, LaTeX spacing (``\\!``, ``\\,``, ``\\;``,
    ``\\:``), ``\\left``/``\\right`` and ``\\displaystyle``; ``\\dfrac``/``\\tfrac``
    become ``\\frac``; degrees (``^\\circ``), dollar signs and percent signs go; a
    trailing ``\\text{...}`` after a value is a unit and goes, other
    ``\\text{...}`` is unwrapped; a trailing period goes; a leading short
    assignment (``x=``, ``k =``, ``a_1=``) goes; ``\\frac12`` becomes ``\\frac{1}{2}``
    and ``\\sqrt3`` becomes ``\\sqrt{3}``; ``a/b`` of integers becomes
    ``\\frac{a}{b}``; ``0.5`` becomes ``\\frac{1}{2}`` (the benchmark's one special
    case); thousands commas in a lone number go; a leading ``.5`` gains its 0;
    finally all spaces go. It does no algebra: that is math-verify's job.
    """
    s = answer.strip().replace("\n", "")
    for token in ("\\!", "\\,", "\\;", "\\:", "\\displaystyle"):
        s = s.replace(token, "")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("dfrac", "frac").replace("tfrac", "frac")
    for degree in ("^{\\circ}", "^\\circ", "\\circ", "\\degree"):
        s = s.replace(degree, "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.strip()
    # A unit is text after a value ("5\text{ cm}"); text alone is the answer ("\text{Evelyn}").
    unit = _UNIT_TEXT.search(s)
    if unit and s[: unit.start()].strip():
        s = s[: unit.start()]
    s = _TEXT.sub(r"\1", s).strip()
    s = s.rstrip(".").strip()
    s = _ASSIGNMENT.sub("", s.replace(" =", "=").replace("= ", "="), count=1)
    s = _FRAC_BARE.sub(_fix_frac, s)
    s = _SQRT_BARE.sub(r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if m := _INT_SLASH.match(s):
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    if s.startswith("."):
        s = "0" + s
    s = s.replace("{.", "{0.")
    if s == "0.5":
        s = "\\frac{1}{2}"
    return s


def string_equivalent(predicted: str, gold: str) -> bool:
    """Whether two answers are equal after :func:`normalize_math_answer`."""
    return normalize_math_answer(predicted) == normalize_math_answer(gold)


# ---------------------------------------------------------------------------


class Math500Task(Task):
    """MATH-500 in the published reasoning format; reward 1 when math-verify accepts the answer.

    Splits: ``"test"`` (the shipped 500-row copy), a local JSONL path with
    ``problem`` and ``answer`` fields, or a hub dataset name (``"name"`` or
    ``"name:split"``, e.g. ``HuggingFaceH4/MATH-500``). MATH-500 has no train split.
    """

    name = "math500"

    def __init__(self, response_length: int = 256) -> None:
        self.response_length = response_length

    def examples(self, split: str, n: int | None = None, seed: int = 0) -> list[Example]:
        """Examples of ``split``: all rows in file order, or a seeded subset of ``n``."""
        if split == "train":
            raise ValueError(
                "MATH-500 has only a test split; to train on MATH problems pass a local JSONL "
                "path or a hub dataset name ('name:split') whose rows have 'problem' and 'answer'"
            )
        rows, label = load_rows(
            split,
            shared_file="math500/test.jsonl",
            hub_name=HUB_NAME,
            hub_config=None,
            required=REQUIRED,
        )
        examples = []
        for i in subset_indices(len(rows), n, seed):
            row = rows[i]
            data = {key: row[key] for key in (*REQUIRED, *OPTIONAL) if key in row}
            data["index"] = i
            examples.append(
                Example(
                    prompt=reasoning_prompt(str(row["problem"])),
                    reference=str(row["answer"]),
                    data=data,
                    uid=f"math500/{label}/{i}",
                )
            )
        return examples

    def reward(self, response: str, example: Example) -> float:
        """1.0 when math-verify judges the extracted answer equal to the reference, else 0.0."""
        if example.reference is None:
            raise ValueError(f"example {example.uid!r} has no reference answer")
        predicted = extract_math_answer(response)
        if predicted is None:
            return 0.0
        return float(verify_equivalent(predicted, example.reference))

    def metrics(self, responses: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        """``accuracy`` (math-verify), ``accuracy_string`` (normalised strings) and ``reward``."""
        rewards = [self.checked_reward(r, e) for r, e in zip(responses, examples, strict=True)]
        strings = []
        for response, example in zip(responses, examples, strict=True):
            predicted = extract_math_answer(response)
            strings.append(
                predicted is not None
                and example.reference is not None
                and string_equivalent(predicted, example.reference)
            )
        n = max(len(rewards), 1)
        return {
            "accuracy": sum(r >= 1.0 for r in rewards) / n,
            "accuracy_string": sum(strings) / n,
            "reward": sum(rewards) / n,
        }

    def demonstration(self, example: Example, rng: random.Random) -> str:
        """The dataset's worked solution, in the reasoning format (for SFT); ``rng`` is unused."""
        solution = example.data.get("solution")
        if not solution:
            raise ValueError(f"example {example.uid!r} has no worked solution to demonstrate")
        return reasoning_response(str(solution), str(example.reference))
