"""The Countdown expression parser: precedence, parentheses, exact values, and what it rejects."""

from __future__ import annotations

from fractions import Fraction

import pytest

from tiltmatch.tasks.arith import (
    MAX_EXPRESSION_LENGTH,
    ArithmeticParseError,
    DivisionByZeroError,
    evaluate_expression,
    parse_expression,
)


@pytest.mark.parametrize(
    ("text", "value", "numbers"),
    [
        ("1+2*3", 7, [1, 2, 3]),
        ("(1+2)*3", 9, [1, 2, 3]),
        ("2*3+4", 10, [2, 3, 4]),
        ("8-2-2", 4, [8, 2, 2]),  # left-associative
        ("8-(2-2)", 8, [8, 2, 2]),
        ("8/2/2", 2, [8, 2, 2]),  # left-associative
        ("8/(2/2)", 8, [8, 2, 2]),
        ("1/3+1/3+1/3", 1, [1, 3, 1, 3, 1, 3]),  # exact: no float rounding
        (" ( 12 + 3 ) / 5 ", 3, [12, 3, 5]),
        ("\t7\n*\n6", 42, [7, 6]),
        ("((((5))))", 5, [5]),
        ("0", 0, [0]),
    ],
)
def test_values_and_literals(text: str, value: int, numbers: list[int]) -> None:
    result = evaluate_expression(text)
    assert result.value == value
    assert isinstance(result.value, Fraction)
    assert result.numbers == numbers


def test_fractional_value_is_exact() -> None:
    assert evaluate_expression("7/2").value == Fraction(7, 2)
    assert evaluate_expression("1/3*3").value == 1


def test_unary_minus_is_allowed() -> None:
    assert evaluate_expression("-3+4") == (1, [3, 4])
    assert evaluate_expression("2*-3").value == -6
    assert evaluate_expression("-(5-8)").value == 3
    assert evaluate_expression("--5").value == 5


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "2**3",
        "x+1",
        "abs(3)",
        "1.5+2",
        "07+1",  # leading zero: one way to write each number
        "+3",  # unary plus is not part of the grammar
        "3//2",
        "3%2",
        "3^2",
        "[1]",
        "(1+2",
        "1+2)",
        "1+",
        "*2",
        "1 2",
        "()",
        "",
        "   ",
        "1+2=3",
        "٣+1",  # a non-ASCII digit
    ],
)
def test_rejects(text: str) -> None:
    with pytest.raises(ArithmeticParseError):
        evaluate_expression(text)


def test_too_long_and_too_deep() -> None:
    ok = "+".join(["1"] * (MAX_EXPRESSION_LENGTH // 2))  # 199 characters
    assert evaluate_expression(ok).value == MAX_EXPRESSION_LENGTH // 2
    with pytest.raises(ArithmeticParseError, match="longer than"):
        evaluate_expression(ok + "+1")
    with pytest.raises(ArithmeticParseError, match="nested"):
        evaluate_expression("(" * 60 + "1" + ")" * 60)
    with pytest.raises(ArithmeticParseError, match="nested"):
        evaluate_expression("-" * 150 + "1")


def test_division_by_zero_is_a_specific_error_after_parsing() -> None:
    with pytest.raises(DivisionByZeroError):
        evaluate_expression("5/(3-3)")
    with pytest.raises(ArithmeticParseError):  # it is also a parse-family error
        evaluate_expression("1/0")
    # Parsing alone succeeds, so the literals of an undefined expression are still known.
    assert parse_expression("5/(3-3)").numbers() == [5, 3, 3]
