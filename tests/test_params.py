"""Options typed from text: what the command line's `-p` / `-b` and a study file's values become,
and what is refused rather than guessed."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from bench.errors import ConfigError
from bench.params import build_params, coerce, params_to_dict


@pytest.mark.parametrize("tp,value,expected", [
    (bool, "yes", True), (bool, "No", False), (bool, "TRUE", True), (bool, "0", False), (bool, False, False),
    (int, "12", 12), (int, 3.0, 3), (int, -2, -2),
    (float, "2.5e-3", 0.0025), (float, 3, 3.0),
    (tuple[float, ...], "1, 2,", (1.0, 2.0)),  # spaces and a trailing comma, as people type lists
    (tuple[str, ...], "cut, color", ("cut", "color")),
    (tuple[int, ...], [1, "2"], (1, 2)),
    (int | None, None, None), (int | None, "7", 7),
    (str, "toy", "toy"),
])
def test_text_and_numbers_become_the_options_type(tp, value, expected):
    result = coerce(tp, value, "option")
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("tp,value,expected", [
    (bool, "maybe", "expected true or false"),  # not False: a typo must not turn an option off
    (bool, 1, "expected true or false"),
    (int, 2.5, "expected an integer"),  # not 2: the fraction would be lost without a word
    (int, True, "expected an integer"),
    (int, 2 ** 63, "expected an integer of at most 64 bits (below 9,223,372,036,854,775,808 in size)"),
    (float, True, "expected a number"),
    (float, "fast", "expected a number"),
    (str, 3, "expected a string"),
    (int | None, "x", "expected an integer or nothing"),
    (tuple[float, ...], 3, "expected a list of numbers"),
])
def test_a_value_of_another_type_is_refused_with_the_type_expected(tp, value, expected):
    with pytest.raises(ConfigError, match=f"^option: {re.escape(expected)}, got "):
        coerce(tp, value, "option")


@dataclass(frozen=True)
class Options:
    rate: float = 0.1
    sizes: tuple[int, ...] = (4, 4)


def test_options_are_built_by_name_and_written_back_as_json_would_read_them():
    options = build_params(Options, {"rate": "0.5", "sizes": "8,2"})
    assert options == Options(0.5, (8, 2))
    written = params_to_dict(options)
    assert written == {"rate": 0.5, "sizes": [8, 2]} and type(written["sizes"]) is list  # as stored and read back
    with pytest.raises(ConfigError, match="^size: expected one of the options rate, sizes; did you mean 'sizes'"):
        build_params(Options, {"size": "8"})
