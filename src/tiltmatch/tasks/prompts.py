"""Prompts of the chat (LLaDA-8B-Instruct) setting for Sudoku and Countdown.

These follow the published d1 / DTM format: the user message states the task
and asks for reasoning inside ``<reasoning>...</reasoning>`` followed by the
final answer inside ``<answer>...</answer>``; the reward reads the last answer
tag. The wording is this project's own. The strings returned here are the user
message's content; the model adapter wraps them in the model's chat template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RESPONSE_FORMAT = (
    "Reply in exactly this layout:\n"
    "<reasoning>\n"
    "your step-by-step thinking\n"
    "</reasoning>\n"
    "<answer>\n"
    "your final answer only\n"
    "</answer>"
)


def chat_response(reasoning: str, answer: str) -> str:
    """A response in the layout of :data:`RESPONSE_FORMAT` (used by worked examples)."""
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"


# --- Sudoku 4x4 (3-shot) --------------------------------------------------------------------

SUDOKU_INSTRUCTIONS = (
    "Solve the 4x4 Sudoku puzzle below. The grid is written as a single string of 16 digits, "
    "row by row from the top-left cell to the bottom-right cell, and 0 marks an empty cell.\n"
    "\n"
    "Rules:\n"
    "- put a digit from 1 to 4 in every empty cell and keep the given digits;\n"
    "- every row, every column and each of the four 2x2 boxes must hold 1, 2, 3 and 4 "
    "exactly once.\n"
    "\n"
    "Work it out inside the reasoning tags, then write the whole solved grid inside the "
    "answer tags as one string of 16 digits (1-4 only, no spaces or separators)."
)


@dataclass(frozen=True)
class SudokuShot:
    """A worked example of the few-shot Sudoku prompt."""

    puzzle: str
    reasoning: str
    solution: str


def sudoku_chat_prompt(puzzle: str, shots: Sequence[SudokuShot]) -> str:
    """The few-shot chat prompt for a 16-digit ``puzzle`` (0 = blank)."""
    parts = [SUDOKU_INSTRUCTIONS, RESPONSE_FORMAT]
    if shots:
        parts.append(f"Here are {len(shots)} solved examples.")
        for i, shot in enumerate(shots, 1):
            response = chat_response(shot.reasoning, shot.solution)
            parts.append(f"Example {i}\nPuzzle: {shot.puzzle}\n{response}")
    parts.append(f"Now solve this puzzle.\nPuzzle: {puzzle}")
    return "\n\n".join(parts)


# --- Countdown (3 numbers) ------------------------------------------------------------------


def countdown_chat_prompt(numbers: Sequence[int], target: int) -> str:
    """The chat prompt for reaching ``target`` from ``numbers``."""
    listed = ", ".join(str(n) for n in numbers)
    return "\n\n".join(
        [
            f"Using the numbers [{listed}], write an arithmetic expression whose value is "
            f"exactly {target}. Use every number in the list exactly once and no other "
            "numbers; combine them with +, -, * and /, with parentheses as needed.",
            RESPONSE_FORMAT,
            "Inside the answer tags put only the expression: no '=' sign and no target. "
            "For instance, with the numbers [2, 3, 4] and the target 5, a correct answer is "
            "<answer>(4-2)+3</answer>.",
        ]
    )
