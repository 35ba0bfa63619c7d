"""The package's argument checks: one message per kind of mistake, never a foreign error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from langchain_kd_memory._validate import (
    check_callable,
    check_int,
    check_number,
    check_str,
    optional,
)
from langchain_kd_memory.errors import ConfigError, InvalidArgumentError


@pytest.mark.parametrize("value", [3, np.int64(3), 1, 5])
def test_ints_within_bounds_pass_as_python_ints(value: object) -> None:
    result = check_int("n", value, low=1, high=5)
    assert result == int(value) and type(result) is int  # type: ignore[call-overload]


@pytest.mark.parametrize("value", [True, 3.0, "3", None, 0, 6, 10**400])
def test_ints_out_of_bounds_or_of_another_type_are_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"n must be an int in \[1, 5\], got"):
        check_int("n", value, low=1, high=5)


@pytest.mark.parametrize("value", [0.5, 0, 1, np.float32(0.25)])
def test_numbers_within_bounds_pass_as_floats(value: object) -> None:
    assert check_number("w", value, low=0, high=1) == float(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.1, 1.5, False, "0.5", 10**400, None])
def test_numbers_that_are_not_finite_or_out_of_bounds_are_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"w must be a finite number in \[0, 1\]"):
        check_number("w", value, low=0, high=1)


def test_the_error_type_can_be_chosen() -> None:
    with pytest.raises(ConfigError, match="patience must be an int >= 1"):
        check_int("patience", 0, low=1, error=ConfigError)


def test_text_callable_and_optional() -> None:
    assert check_str("host", "localhost") == "localhost"
    for bad in ("", "  ", None, 7):
        with pytest.raises(InvalidArgumentError, match="host must be a non-empty str"):
            check_str("host", bad)
    assert check_callable("fn", None) is None and check_callable("fn", len) is len
    with pytest.raises(InvalidArgumentError, match="fn must be callable or None"):
        check_callable("fn", 3)
    assert optional(check_int, "limit", None, low=1) is None
    assert optional(check_int, "limit", 2, low=1) == 2
    with pytest.raises(InvalidArgumentError, match="limit must be an int >= 1"):
        optional(check_int, "limit", 0, low=1)
