"""The package's argument checks: one function per kind of value, one message per kind of mistake.

Each returns the value (normalised) or raises `InvalidArgumentError` (or the error type given,
e.g. `ConfigError` for settings). Booleans are never accepted as numbers.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from langchain_kd_memory.errors import ConfigError, InvalidArgumentError, KDMemoryError

_T = TypeVar("_T")


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" in [{low}, {high}]"
    if low is not None:
        return f" >= {low}"
    return f" <= {high}" if high is not None else ""


def check_int(
    name: str,
    value: object,
    *,
    low: int | None = None,
    high: int | None = None,
    error: type[KDMemoryError] = InvalidArgumentError,
) -> int:
    """`value` as an int within [low, high]; numpy integers are accepted, bools are not."""
    number = None if isinstance(value, bool) or not isinstance(value, numbers.Integral) else (
        int(value)
    )
    if number is None or (low is not None and number < low) or (
        high is not None and number > high
    ):
        raise error(f"{name} must be an int{_bounds(low, high)}, got {value!r}")
    return number


def check_number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    error: type[KDMemoryError] = InvalidArgumentError,
) -> float:
    """`value` as a finite float within [low, high]; bools are not numbers."""
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int with hundreds of digits
            number = None
    if number is None or not math.isfinite(number) or (low is not None and number < low) or (
        high is not None and number > high
    ):
        raise error(f"{name} must be a finite number{_bounds(low, high)}, got {value!r}")
    return number


def check_str(
    name: str, value: object, *, error: type[KDMemoryError] = InvalidArgumentError
) -> str:
    """`value` if it is a non-blank str."""
    if not isinstance(value, str) or not value.strip():
        raise error(f"{name} must be a non-empty str, got {value!r}")
    return value


def check_callable(
    name: str, value: _T | None, *, error: type[KDMemoryError] = InvalidArgumentError
) -> _T | None:
    """`value` if it is callable or None."""
    if value is not None and not callable(value):
        raise error(f"{name} must be callable or None, got {value!r}")
    return value


def optional(check: Callable[..., _T], name: str, value: object, **kwargs: Any) -> _T | None:
    """`check(name, value, **kwargs)`, or None when `value` is None."""
    return None if value is None else check(name, value, **kwargs)


def check_known(owner: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Refuse (`ConfigError`) argument names `owner` does not take, suggesting the closest."""
    names = list(known)
    unknown = [name for name in given if name not in names]
    if not unknown:
        return
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1)
        described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"{owner} got unknown argument(s): {', '.join(described)}")
