"""A safe parser and exact evaluator for the arithmetic a Countdown answer may use.

Grammar (whitespace between tokens is ignored)::

    expression := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := "-" unary | primary
    primary    := INTEGER | "(" expression ")"

- ``INTEGER`` is a non-negative decimal literal without leading zeros ("0" is
  fine, "07" is not): a Countdown number is written the one way, so the multiset
  of literals is unambiguous.
- Unary minus is allowed. It never lets an answer reach a target that the
  binary operators cannot (``-(a-b)`` is ``b-a``), and the published checkers,
  which evaluate any string of digits, operators and parentheses, accept it too.
  Unary plus is rejected.
- Anything else (names, ``**``, decimals, ``%``, ``//``, brackets, text) raises
  :class:`ArithmeticParseError`. Input is limited to :data:`MAX_EXPRESSION_LENGTH`
  characters and :data:`MAX_NESTING` levels, so a pathological answer costs
  nothing.

Parsing builds a small tree first and evaluates it afterwards with
:class:`~fractions.Fraction`, so an expression that is well formed but divides
by zero still reports the numbers it used (Countdown's reward needs both).
Python's ``eval`` is never involved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

MAX_EXPRESSION_LENGTH = 200
MAX_NESTING = 50

_WHITESPACE = frozenset(" \t\r\n")
_OPERATORS = frozenset("+-*/()")


class ArithmeticParseError(ValueError):
    """Text that is not an expression of this grammar, or whose value is undefined."""


class DivisionByZeroError(ArithmeticParseError, ZeroDivisionError):
    """A well-formed expression that divides by zero somewhere."""


# --- the expression tree ----------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """An integer literal."""

    value: int

    def evaluate(self) -> Fraction:
        """The literal as a fraction."""
        return Fraction(self.value)

    def numbers(self) -> list[int]:
        """The literal, as a one-element list."""
        return [self.value]


@dataclass(frozen=True)
class Negate:
    """Unary minus applied to an operand."""

    operand: Node

    def evaluate(self) -> Fraction:
        """Minus the operand's value."""
        return -self.operand.evaluate()

    def numbers(self) -> list[int]:
        """The operand's literals."""
        return self.operand.numbers()


@dataclass(frozen=True)
class BinaryOp:
    """``left op right`` for ``op`` in ``+ - * /``."""

    op: str
    left: Node
    right: Node

    def evaluate(self) -> Fraction:
        """The exact value; :class:`DivisionByZeroError` when a divisor is zero."""
        a, b = self.left.evaluate(), self.right.evaluate()
        if self.op == "+":
            return a + b
        if self.op == "-":
            return a - b
        if self.op == "*":
            return a * b
        if b == 0:
            raise DivisionByZeroError("division by zero")
        return a / b

    def numbers(self) -> list[int]:
        """The literals of both operands, left to right."""
        return self.left.numbers() + self.right.numbers()


Node = Number | Negate | BinaryOp


# --- tokenizer and recursive-descent parser ---------------------------------------------------


def _tokenize(text: str) -> list[str]:
    """Integer literals and single-character operators; anything else is an error."""
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in _WHITESPACE:
            i += 1
        elif ch in _OPERATORS:
            tokens.append(ch)
            i += 1
        elif "0" <= ch <= "9":  # ASCII only: str.isdigit would admit other scripts' digits
            j = i
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            literal = text[i:j]
            if len(literal) > 1 and literal[0] == "0":
                raise ArithmeticParseError(f"integer with a leading zero: {literal!r}")
            tokens.append(literal)
            i = j
        else:
            raise ArithmeticParseError(f"unexpected character {ch!r} at position {i}")
    return tokens


class _Parser:
    """One pass over the token list; each method parses one rule of the grammar."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ArithmeticParseError("unexpected end of expression")
        self.pos += 1
        return token

    def expression(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = BinaryOp(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            node = BinaryOp(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek() == "-":
            self.take()
            with self.nested():
                return Negate(self.unary())
        return self.primary()

    def primary(self) -> Node:
        token = self.take()
        if token == "(":
            with self.nested():
                node = self.expression()
            if self.take() != ")":
                raise ArithmeticParseError("expected ')'")
            return node
        if token.isdigit():
            return Number(int(token))
        raise ArithmeticParseError(f"unexpected token {token!r}")

    @contextmanager
    def nested(self) -> Iterator[None]:
        # Counting levels makes deep input fail cleanly instead of exhausting the stack.
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ArithmeticParseError(f"expression nested deeper than {MAX_NESTING} levels")
        try:
            yield
        finally:
            self.depth -= 1


def parse_expression(text: str) -> Node:
    """The expression tree of ``text``; :class:`ArithmeticParseError` if it is not one."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ArithmeticParseError(
            f"expression longer than {MAX_EXPRESSION_LENGTH} characters ({len(text)})"
        )
    tokens = _tokenize(text)
    if not tokens:
        raise ArithmeticParseError("empty expression")
    parser = _Parser(tokens)
    node = parser.expression()
    if parser.pos != len(tokens):
        raise ArithmeticParseError(f"unexpected token {tokens[parser.pos]!r} after the expression")
    return node


class Evaluation(NamedTuple):
    """The exact value of an expression and its integer literals in order of appearance."""

    value: Fraction
    numbers: list[int]


def evaluate_expression(text: str) -> Evaluation:
    """Parse and evaluate ``text`` exactly.

    Raises :class:`ArithmeticParseError` for text outside the grammar and its
    subclass :class:`DivisionByZeroError` when the value is undefined.
    """
    node = parse_expression(text)
    return Evaluation(node.evaluate(), node.numbers())
