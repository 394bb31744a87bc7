"""The one warn-once helper: a warning that would repeat every batch or every fit is given once
per process, keyed by what it is about (a step's name, a loader's reason, a module's cause)."""

from __future__ import annotations

import warnings

_given: set = set()


def warn_once(key, message: str, stacklevel: int = 2) -> None:
    """``warnings.warn(message)`` the first time ``key`` is seen; ``stacklevel`` counts from the
    caller of ``warn_once``, as ``warnings.warn``'s does from its caller."""
    if key in _given:
        return
    _given.add(key)
    warnings.warn(message, stacklevel=stacklevel + 1)


def forget(key=None) -> None:
    """Gives ``key``'s warning again next time (every warning's when ``key`` is None)."""
    if key is None:
        _given.clear()
    else:
        _given.discard(key)
