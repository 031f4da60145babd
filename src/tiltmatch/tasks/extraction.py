"""Answer extraction for the published reasoning prompt format.

Responses follow ``<reasoning>...</reasoning><answer>...</answer>``; math answers
may sit inside ``\\boxed{...}`` (nested braces allowed).
"""

from __future__ import annotations

import re

_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)


def extract_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>`` tag (an unclosed final tag counts), stripped."""
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text``, with balanced nested braces."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None
