"""How numbers are written for people, the same in the terminal's tables and the report's."""

from __future__ import annotations


def format_number(value: float | None, digits: int = 4, exponent_digits: int | None = None) -> str:
    """`digits` significant digits, trailing zeros kept (2.700, not 2.7) so that a column's
    decimals line up; outside [1e-3, 1e5) scientific notation with `exponent_digits`
    significant digits (default `digits`); "-" for None or NaN.

    >>> format_number(2.7), format_number(1234.56), format_number(-3.3e5, 2), format_number(None)
    ('2.700', '1235', '-3.3e+05', '-')
    """
    if value is None or value != value:
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{max(0, (exponent_digits or digits) - 1)}e}"
    return f"{value:#.{digits}g}".rstrip(".")


def count(n: int, noun: str) -> str:
    """
    >>> count(1, "run"), count(2, "run"), count(0, "seed"), count(2, "training process")
    ('1 run', '2 runs', '0 seeds', '2 training processes')
    """
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}es" if noun.endswith(("s", "x", "ch", "sh")) else f"{n} {noun}s"


def join_words(words: list[str], conjunction: str = "and") -> str:
    """
    >>> join_words(["task1"]), join_words(["task1", "task2"]), join_words(["task1", "task2", "task3"])
    ('task1', 'task1 and task2', 'task1, task2 and task3')
    >>> join_words(["grid", "equal"], "or")
    'grid or equal'
    """
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" {conjunction} " + words[-1]
