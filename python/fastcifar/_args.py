"""The one check of an integer argument (a count, an index, a number of steps), used wherever
Python checks one before the core sees it."""

from __future__ import annotations

import numbers


def whole(name: str, v, lo: int | None, *, owner: str | None = None, unit: str = "") -> int:
    """``v`` as an int of at least ``lo``. A bool, a float or a string is refused: torch's own
    arguments take ints, and the core could not tell True from 1. ``lo=None`` where the core checks
    the range itself (the loader's counts: ``batch_size: -4 must not be negative``), so that each
    rule is checked in one place. The message names the argument as the caller wrote it:
    ``owner(name=v)``."""
    where = f"{owner}({name}={v!r})" if owner else f"{name}={v!r}"
    need = "an int" if lo is None else f"an int >= {lo}"
    hint = f" ({unit})" if unit else ""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (lo is not None and int(v) < lo):
        raise ValueError(f"{where}: expected {need}{hint}")
    n = int(v)  # typeshed's Integral declares no comparisons: compare its int value
    if not -(2**63) <= n < 2**63:
        raise ValueError(f"{where}: does not fit in 64 bits")
    return n
