"""Checks of setting values given through the Python API: each returns the
value or raises :class:`~microgpt_c.errors.ConfigError` naming the setting.
(The command lines parse their text with the argparse types of ``cli.py``.)"""
from __future__ import annotations

import math
from typing import Any, Optional

from .errors import ConfigError


def is_int(value: Any, minimum: Optional[int] = None) -> bool:
    """``value`` is an int (not a bool), and at least ``minimum`` if given."""
    return (isinstance(value, int) and not isinstance(value, bool)
            and (minimum is None or value >= minimum))


def is_number(value: Any) -> bool:
    """``value`` is an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any, name: str, minimum: int = 1,
                 maximum: Optional[int] = None) -> int:
    """An integer in [minimum, maximum] (``minimum`` 1: "a positive integer")."""
    if not is_int(value, minimum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def optional_positive_int(value: Any, name: str, maximum: Optional[int] = None) -> Optional[int]:
    """None, or a positive integer (at most ``maximum``)."""
    return None if value is None else positive_int(value, name, maximum=maximum)


def integer(value: Any, name: str) -> int:
    """Any integer (e.g. a seed)."""
    if not is_int(value):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return value


def positive_float(value: Any, name: str) -> float:
    """A finite number > 0."""
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return value
