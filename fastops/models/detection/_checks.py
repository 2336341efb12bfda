"""Constructor-argument checks shared by the detectors: each raises
``ValueError`` naming the argument and the model."""

from __future__ import annotations

import math
from collections.abc import Sequence


def positive_int(value, name: str, api: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{api}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def number_in(
    value, name: str, api: str, low: float, high: float, *, low_open: bool = False
) -> float:
    """A finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{api}: {name} must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{api}: {name} must be in {bracket}{low}, {high}], got {value}")
    return float(value)


def int_sequence(value, name: str, api: str, length: int) -> tuple[int, ...]:
    """``length`` positive ints."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != length:
        raise ValueError(f"{api}: {name} must be a sequence of {length} ints, got {value!r}")
    for v in value:
        positive_int(v, name, api)
    return tuple(value)


def one_of(value, name: str, api: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{api}: {name} must be one of {list(choices)}, got {value!r}")
    return value
