"""Checks of numbers where they enter the library (configs, function arguments, command-line flags): one wording for
every range, NaN and infinities refused, booleans not taken for numbers."""

from __future__ import annotations

import math
import numbers


def out_of_range(value, lo=None, hi=None, *, integer: bool = False, lo_open: bool = False,
                 hi_open: bool = False) -> str | None:
    """Why ``value`` is not a number in the range, as ``"must be ..."`` (None when it is). Booleans are not
    numbers here, and NaN and infinities are outside every range."""
    if lo is not None and hi is not None:
        where = f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        where = f" {'>' if lo_open else '>='} {lo}"
    elif hi is not None:
        where = f" {'<' if hi_open else '<='} {hi}"
    else:
        where = ""
    if integer and hi is None and lo == 1 and not lo_open:
        need = "must be a positive integer (>= 1)"
    else:
        need = f"must be {'an integer' if integer else 'a finite number'}{where}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        return need
    if not integer and not math.isfinite(value):
        return need
    if (lo is not None and (value <= lo if lo_open else value < lo)) or \
            (hi is not None and (value >= hi if hi_open else value > hi)):
        return need
    return None


def check_range(name: str, value, lo=None, hi=None, *, note: str = "", **kw) -> None:
    """Raise ``ValueError("name=value must be ...")`` unless ``value`` is in the range (see ``out_of_range``)."""
    problem = out_of_range(value, lo, hi, **kw)
    if problem:
        raise ValueError(f"{name}={value!r} {problem}{note}")
