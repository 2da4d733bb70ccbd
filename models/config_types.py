"""Config values coerced to the type of their default, for every variant (the CORE variants'
registry and the kNN baselines' own spec alike)."""

from __future__ import annotations

import numbers

import numpy as np


def coerce(key: str, value: object, default: object) -> object:
    """``value`` converted to the type of ``default`` (ints accepted for floats, numpy scalars
    for Python ones).

    Args:
        key: the config key (for the message).
        value: the value given.
        default: the key's default value (bool, int, float or str).

    Returns:
        The value as a bool, int, float or str (the default's type).

    Raises:
        TypeError: a value of another type, naming the key.
    """
    if isinstance(default, bool):
        ok = isinstance(value, bool | np.bool_)
        kind = bool
    elif isinstance(default, int):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        kind = int
    elif isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        kind = float
    else:
        ok, kind = isinstance(value, str), str
    if not ok:
        raise TypeError(f"config key {key!r} expects {kind.__name__}, got {value!r}")
    return kind(value)
